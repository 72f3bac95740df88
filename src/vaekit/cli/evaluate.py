"""``vaekit evaluate``: every metric of a run, as a table and as JSON."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from vaekit.cli.inspect_run import positive_int
from vaekit.evaluate import DEFAULT_BATCH_SIZE, DEFAULT_IW_SAMPLES, PROTOCOLS

_ROWS = [
    ("elbo_nats", "test ELBO (nats/example)"),
    ("nll_nats", "NLL, importance-sampled (nats)"),
    ("bits_per_dim", "bits/dim"),
    ("recon_mse", "reconstruction MSE [0,1]"),
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("kl_nats", "KL (nats/example)"),
    ("active_units", "active units"),
    ("codebook_usage", "codebook usage"),
    ("perplexity", "codebook perplexity"),
    ("dead_codes", "dead codes"),
    ("prior_nll_nats", "prior NLL of the codes (nats/map)"),
    ("prior_bits_per_code", "prior bits/code"),
    ("frechet_distance", "Fréchet distance (floor)"),
    ("kid", "KID (floor)"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("classifier_test_accuracy", "feature classifier accuracy"),
]


def format_table(results: dict[str, Any]) -> str:
    """The results as an aligned two-column table, notes and published numbers below."""
    lines = [
        f"{results['model']} on {results['data']} ({results['split']}, {results['num_examples']} examples)"
    ]
    for key, label in _ROWS:
        if key not in results:
            continue
        value = results[key]
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        if key == "nll_nats" and "nll_note" in results:  # a bound, not an estimate (see the note)
            text = f"{value:.2f}  (the bound: see the note)"
        elif key == "nll_nats":
            text = f"{value:.2f} ± {results['nll_stderr']:.2f}  (k = {results['iw_samples']})"
        elif key == "active_units":
            text += f" / {results['latent_dim']}"
        elif key in ("frechet_distance", "kid"):
            text += f"  ({results[key + '_floor']:.4g})"
        lines.append(f"  {label:<32} {text}")
    for name, nll in results.get("published", {}).items():
        lines.append(f"  {'published: ' + name:<32} {nll:.2f}")
    lines += [
        f"  note: {results[k]}"
        for k in ("nll_note", "data_note", "feature_space_note", "sample_quality_note")
        if k in results
    ]
    return "\n".join(lines)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="likelihood, reconstruction, latent and sample metrics of a run")
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by `vaekit train`")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument(
        "--iw-samples", type=int, metavar="K", help=f"importance samples (default {DEFAULT_IW_SAMPLES})"
    )
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), help="a published protocol (fixes split and k)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of sampling, and of binarization/dequantization unless a protocol fixes the data",
    )
    p.add_argument("--batch-size", type=int, help=f"examples per batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="default RUN/evaluation.json")
    p.add_argument("--no-sample-metrics", dest="sample_metrics", action="store_false", help="no classifier")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the per-sample scoring (faster for large k; needs a C++ compiler)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="CPU: batches scored at once, one thread each (default: torch's thread count)",
    )
    p.set_defaults(run_command=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Run :func:`vaekit.runs.evaluate_run` with the parsed arguments; print the table and where the
    JSON went."""
    from vaekit.runs import evaluate_run

    params = inspect.signature(evaluate_run).parameters
    results = evaluate_run(**{key: value for key, value in vars(args).items() if key in params})
    print(format_table(results))
    print(f"wrote {results['json_path']}")
