"""Evaluate a trained run: likelihood, reconstructions, latent and codebook statistics, sample quality.

**Which data the likelihood is measured on.** A likelihood is only comparable when the data are:

* Bernoulli decoder — the split is binarized **once** with a fixed seed (``x ~ Bernoulli(v/255)``,
  generator seeded by ``seed``), the standard protocol for binarized MNIST-likes. p(x) is then a
  probability of discrete data: bits/dim = NLL / (D ln 2), no offset. A model trained on grey
  levels (``data.binarize: false``) is still evaluated on the binarized split; ``data_note`` says so.
* Gaussian decoder (8-bit pixels v mapped to [-1, 1]) — the split is dequantized once,
  ``x = 2 (v + u)/256 − 1`` with u ~ U(0, 1) from a seeded generator (Theis et al. 2016), and the
  density on x converts to bits/dim of the 8-bit data with the log-256 offset
  (:func:`vaekit.losses.bits_per_dim_8bit` with ``data_range=(-1, 1)``).

log p(x) is the importance-sampled estimate with k samples of q(z|x) (Burda et al. 2016) and its
delta-method standard error; the standard error of the split mean is ``sqrt(Σ se_i²) / N``.
Reconstructions (from μ, or the nearest codes) are scored on the data the model was trained on,
in [0, 1]. Sample quality lives in :mod:`vaekit.features` (not Inception FID).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from vaekit import features, metrics
from vaekit.checkpoint import atomic_write_bytes
from vaekit.data import ImageData, to_model_range, to_unit_range
from vaekit.errors import VaekitError
from vaekit.features import sample_quality  # noqa: F401  (one of the pieces; lives with the features)
from vaekit.losses import bits_per_dim, bits_per_dim_8bit, monte_carlo_kl, reparameterize
from vaekit.models import VAE, VQVAE

DEFAULT_IW_SAMPLES = 1000
DEFAULT_BATCH_SIZE = 100
# Decoder outputs per log_px call. A CPU is fastest with calls that stay in its caches (measured on
# this project's 2-core machine: the MLP VAE scores ~2× more samples per second with ~1000 images of
# 28×28 per call than with 20,000); a GPU wants large calls.
PIXEL_BUDGET = {"cpu": 1000 * 784, "cuda": 50_000 * 784}
DATA_NOTES = {
    "binary": "binary data: no offset; the split binarized once (seed {seed})",
    "8bit": "8-bit data: dequantized once (seed {seed}); bits/dim include the log 256 offset",
}


@dataclass(frozen=True)
class Protocol:
    """A published evaluation protocol: what the run must be, and the numbers to compare with."""

    description: str
    data: str
    likelihood: str
    train_split: str
    binarize: bool  # dynamic binarization while training
    split: str
    iw_samples: int
    valid_split: str  # model selection and early stopping, never on the test split
    data_seed: int = 0  # the test set's one binarization: fixed, whatever --seed samples with
    published: dict[str, float] = field(default_factory=dict)  # test NLL in nats


PROTOCOLS: dict[str, Protocol] = {
    "exemplar-fashion": Protocol(
        "dynamically binarized Fashion-MNIST, 50k train / 10k valid / 10k test, the test set binarized "
        "once with a fixed seed, k = 5000 (as in Norouzi et al. 2020, Exemplar VAE)",
        data="fashion-mnist",
        likelihood="bernoulli",
        train_split="train-50k",
        binarize=True,
        split="test",
        iw_samples=5000,
        valid_split="valid-10k",
        published={"VAE": 228.70, "VampPrior": 227.35, "Exemplar VAE": 226.75, "ConvHVAE": 225.38},
    )
}


# --- the data the numbers are measured on ---------------------------------------------------------


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """uint8 ``[N, ...]`` → float {0, 1}: one Bernoulli(v/255) draw per pixel, generator seeded."""
    return torch.bernoulli(images.float() / 255.0, generator=torch.Generator().manual_seed(seed))


def dequantize(images: Tensor, seed: int) -> Tensor:
    """uint8 ``[N, ...]`` → float32 ``2 (v + u)/256 − 1`` in [-1, 1), u ~ U(0, 1) seeded.

    Computed in float64; rounding to float32 may not reach the next bin's edge, so the value is
    kept strictly below it: every x lies in its own pixel's bin ``[2v/256 − 1, 2(v+1)/256 − 1)``.
    """
    v = images.double()
    u = torch.rand(v.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = ((v + u) / 128.0 - 1.0).float()
    upper = ((v + 1.0) / 128.0 - 1.0).float()  # exact: a multiple of 1/128
    return torch.minimum(x, torch.nextafter(upper, torch.full_like(upper, -2.0)))


def likelihood_data(images: Tensor, kind: str, seed: int) -> tuple[Tensor, str]:
    """The split on which log p(x) is measured, and the bits/dim conversion: "binary" or "8bit"."""
    if kind == "bernoulli":
        return binarize_once(images, seed), "binary"
    return dequantize(images, seed), "8bit"


def to_bits_per_dim(nll_nats: float, num_dims: int, conversion: str) -> float:
    """NLL in nats per example → bits/dim: no offset for binary data, log 256 for 8-bit data in [-1, 1]."""
    if conversion == "binary":
        return float(bits_per_dim(nll_nats, num_dims))
    return float(bits_per_dim_8bit(nll_nats, num_dims, data_range=(-1.0, 1.0)))


# --- the metrics, each from an iterable of batches in the model's range ---------------------------


def auto_chunk(batch: Tensor, num_samples: int) -> int:
    """Samples per decoder call such that batch × chunk outputs stay within the device's
    :data:`PIXEL_BUDGET`."""
    budget = PIXEL_BUDGET.get(batch.device.type, PIXEL_BUDGET["cuda"])
    return max(1, min(num_samples, budget // batch.numel()))


@torch.no_grad()
def likelihood_metrics(
    model: VAE,
    batches: Iterable[Tensor],
    iw_samples: int = DEFAULT_IW_SAMPLES,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean ELBO, importance-sampled NLL (k = ``iw_samples``) and its standard error, in nats.

    Torch's RNG is seeded with ``seed`` for the pass (and restored after), the model is in eval().
    """
    model.eval()
    device = next(model.parameters()).device
    elbo_sum = nll_sum = se2_sum = 0.0
    n, chunk = 0, chunk_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        bar = tqdm(batches, f"log p(x), k={iw_samples}", disable=not progress, leave=False)
        for x in bar:
            x = x.to(device)
            chunk = chunk_size or auto_chunk(x, iw_samples)
            log_px, stderr = model.log_px(x, iw_samples, chunk)  # [B], [B]
            elbo_sum += float(model.elbo(x).double().sum())
            nll_sum -= float(log_px.double().sum())
            se2_sum += float(stderr.double().pow(2).sum())
            n += len(x)
            bar.set_postfix(nll=f"{nll_sum / n:.3f}")
    return {
        "elbo_nats": elbo_sum / n,
        "nll_nats": nll_sum / n,
        "nll_stderr": math.sqrt(se2_sum) / n,
        "iw_samples": iw_samples,
        "chunk_size": chunk,
        "num_examples": n,
    }


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, float]:
    """Mean squared error, PSNR and SSIM of deterministic reconstructions, on images in [0, 1]."""
    model.eval()
    kind, sq_err, psnr, ssim, n = model.likelihood.kind, 0.0, 0.0, 0.0, 0
    for x in batches:
        x = x.to(next(model.parameters()).device)
        target, recon = to_unit_range(x, kind), to_unit_range(model.reconstruct(x), kind)  # [B, C, H, W]
        sq_err += float((recon - target).double().pow(2).flatten(1).mean(1).sum())
        psnr += float(metrics.psnr(recon, target).sum())
        ssim += float(metrics.ssim(recon, target).sum())
        n += len(x)
    return {"recon_mse": sq_err / n, "psnr": psnr / n, "ssim": ssim / n}


@torch.no_grad()
def latent_metrics(
    model: VAE, batches: Iterable[Tensor], threshold: float = 0.01, kl_samples: int = 16, seed: int = 0
) -> dict[str, Any]:
    """KL(q(z|x) ‖ p(z)) (mean over the split) and Burda et al.'s active units.

    Under N(0, I) the KL is exact and also given per latent dimension (``kl_per_dim``). A VampPrior
    does not factorise over dimensions, so only the total is given, a Monte-Carlo estimate from
    ``kl_samples`` draws of z ~ q(z|x) per example (torch's RNG seeded with ``seed``, then restored).
    """
    model.eval()
    device = next(model.parameters()).device
    mus, log_vars = zip(*(model.encode(x.to(device)) for x in batches), strict=True)
    mu, log_var = torch.cat(mus), torch.cat(log_vars)  # [N, D]
    count, _ = metrics.active_units(mu, threshold)
    out: dict[str, Any] = {}
    components = model.prior_components()
    if components is None:
        kl = metrics.kl_per_dim(mu, log_var)
        out |= {"kl_per_dim": kl.tolist(), "kl_nats": float(kl.sum())}
    else:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            z = reparameterize(mu, log_var, kl_samples)  # [S, N, D]
            log_prior = model.prior_log_prob(z, components)  # [S, N]
        kl_per_example = monte_carlo_kl(log_var, log_prior.mean(dim=0))  # [N]
        out |= {"kl_nats": float(kl_per_example.double().mean()), "kl_samples": kl_samples}
    return out | {"active_units": count, "active_unit_threshold": threshold, "latent_dim": mu.shape[1]}


@torch.no_grad()
def codebook_metrics(model: VQVAE, batches: Iterable[Tensor]) -> dict[str, Any]:
    """Fraction of the codes used on the split, perplexity of their use, and dead codes."""
    model.eval()
    counts = torch.zeros(model.num_embeddings, dtype=torch.long)
    for x in batches:
        indices = model.encode_indices(x.to(next(model.parameters()).device))  # [B, h, w]
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.num_embeddings)
    return {
        "codebook_usage": metrics.codebook_usage(counts),
        "perplexity": metrics.perplexity(counts),
        "dead_codes": metrics.dead_codes(counts),
        "num_embeddings": model.num_embeddings,
    }


# --- a whole run ----------------------------------------------------------------------------------


def _split_images(data: ImageData) -> Tensor:
    """All images of a split as one uint8 tensor ``[N, C, H, W]``."""
    if data.images is not None:
        return data.images
    return torch.cat(list(torch.utils.data.DataLoader(data.dataset, batch_size=256)))


def _check_protocol(name: str, cfg: Any, model: nn.Module, split: str, iw_samples: int | None) -> Protocol:
    if name not in PROTOCOLS:
        raise VaekitError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    d = cfg.data
    native = d.image_size is None and d.channels is None  # the published numbers are at 28×28×1
    found = (d.name, model.likelihood.kind, d.train_split, d.valid_split, d.binarize, native)
    if not isinstance(model, VAE) or found != (
        p.data,
        p.likelihood,
        p.train_split,
        p.valid_split,
        p.binarize,
        True,
    ):
        raise VaekitError(
            f"protocol {name} needs a VAE trained on {p.data} at its native size (data.train_split="
            f"{p.train_split}, data.valid_split={p.valid_split}, data.binarize={str(p.binarize).lower()}, "
            f"data.image_size and data.channels null) with a {p.likelihood} likelihood; this run is a "
            f"{type(model).__name__} on {d.name} (train_split={d.train_split}, valid_split="
            f"{d.valid_split}, binarize={str(d.binarize).lower()}, image_size={d.image_size}, "
            f"channels={d.channels}) with a {model.likelihood.kind} likelihood"
        )
    if iw_samples not in (None, p.iw_samples) or split != p.split:
        raise VaekitError(
            f"protocol {name} fixes --split {p.split} and --iw-samples {p.iw_samples}; leave them out"
        )
    return p


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    iw_samples: int | None = None,
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    sample_metrics: bool = True,
    progress: bool = True,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """Every metric that applies to the run's model, also written as JSON (default ``RUN/evaluation.json``).

    ``iw_samples`` defaults to 1000 (a protocol fixes its own); ``batch_size`` to 100.
    """
    from vaekit.runs import load_run  # runs imports train: keep `import vaekit.evaluate` light
    from vaekit.train import load_split

    run_dir = Path(run_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = load_run(run_dir, checkpoint, map_location=device)
    # NHWC convolutions: 1.3-1.6× more importance samples per second for the conv decoders on this
    # CPU (benchmarks/bench_nll.py), the same values up to rounding; models without 4-d weights stay
    model = model.to(memory_format=torch.channels_last)
    proto = _check_protocol(protocol, cfg, model, split, iw_samples) if protocol else None
    k = proto.iw_samples if proto else (iw_samples or DEFAULT_IW_SAMPLES)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if k < 1 or batch_size < 1:
        raise VaekitError(f"--iw-samples and --batch-size must be positive, got {k} and {batch_size}")
    data_seed = proto.data_seed if proto else seed
    data = load_split(cfg, split)
    images, kind = _split_images(data), model.likelihood.kind  # [N, C, H, W] uint8

    res: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "split": split,
        "num_examples": len(images),
        "likelihood": kind,
        "seed": seed,
        "data_seed": data_seed,
        "batch_size": batch_size,
    }
    timings: dict[str, float] = {}
    started = time.perf_counter()
    x_eval, conversion = likelihood_data(images, kind, data_seed)
    x_recon = x_eval if kind == "bernoulli" and cfg.data.binarize else to_model_range(images, kind)
    if isinstance(model, VAE):
        res.update(likelihood_metrics(model, x_eval.split(batch_size), k, seed=seed, progress=progress))
        res["bits_per_dim"] = to_bits_per_dim(res["nll_nats"], images[0].numel(), conversion)
        res["bits_per_dim_conversion"] = conversion
        res["data_note"] = DATA_NOTES[conversion].format(seed=data_seed)
        if kind == "bernoulli" and not cfg.data.binarize:
            res["data_note"] += "; the model was trained on grey levels, evaluated on the binarized split"
        timings["likelihood"] = time.perf_counter() - started
    res.update(reconstruction_metrics(model, x_recon.split(batch_size)))
    stats = latent_metrics if isinstance(model, VAE) else codebook_metrics
    res.update(stats(model, x_recon.split(batch_size)))
    timings["reconstruction_latents"] = time.perf_counter() - started - sum(timings.values())

    if not sample_metrics:
        res["sample_quality_note"] = "skipped (--no-sample-metrics)"
    elif not isinstance(model, VAE):
        res["sample_quality_note"] = "a VQ-VAE has no prior over codes to sample from: no sample metrics"
    elif data.labels is None:
        res["sample_quality_note"] = "unlabelled data: no classifier to define features, no sample metrics"
    else:
        train = load_split(cfg, cfg.data.train_split)
        res.update(features.model_sample_quality(model, train, data, seed, batch_size, progress))
        timings["sample_quality"] = time.perf_counter() - started - sum(timings.values())
    if proto is not None:
        res.update(protocol=protocol, protocol_description=proto.description, published=proto.published)
    res["timings_s"] = {key: round(value, 2) for key, value in timings.items()}
    path = Path(json_path) if json_path is not None else run_dir / "evaluation.json"
    atomic_write_bytes(path, (json.dumps(res, indent=2) + "\n").encode())
    res["json_path"] = str(path)
    return res


# --- output and command line ----------------------------------------------------------------------

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
        if key == "nll_nats":
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
        for k in ("data_note", "feature_space_note", "sample_quality_note")
        if k in results
    ]
    return "\n".join(lines)


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``vaekit evaluate`` to an argparse sub-parser set."""
    p = subparsers.add_parser(
        "evaluate", help="likelihood, reconstruction, latent and sample metrics of a run"
    )
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
    return p


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Run :func:`evaluate_run` with the parsed arguments; print the table and where the JSON went."""
    params = inspect.signature(evaluate_run).parameters
    results = evaluate_run(**{key: value for key, value in vars(args).items() if key in params})
    print(format_table(results))
    print(f"wrote {results['json_path']}")
