"""The speed suite: every comparison of docs/performance.md in one process, with its target.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME ...]

Each comparison is a ``cmp_*.py`` module beside this file with ``measure(quick) -> dict``
(``title``, ``fair``, ``columns``, ``rows``, ``metrics``). Inside a comparison the contenders run
alternately (``common.alternate``): on a shared, noisy machine only ratios measured in one sitting
mean anything. ``--quick`` shrinks budgets (a less strict ELBO target, fewer images and rounds) so
the whole suite finishes in minutes and still measures every ratio.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from common import RESULTS, machine

COMPARISONS = {
    "quantizer": "cmp_quantizer",
    "seed_vae": "cmp_seed_vae",
    "time_to_elbo": "cmp_time_to_elbo",
    "nll": "cmp_nll",
    "data_feed": "cmp_data_feed",
}

# metric: (comparison, "min" | "max", bound, what the bound says)
TARGETS = {
    "vq_speedup_vs_seed": ("quantizer", "min", 5.0, "VQ layer ≥ 5× the seed's VectorQuantizer"),
    "vq_matmul_ratio": ("quantizer", "max", 2.0, "VQ layer within 2× of its own distance matmul"),
    "vae_train_speedup_vs_seed": ("seed_vae", "min", 2.5, "seed VanillaVAE step ≥ 2.5× the seed's class"),
    "time_to_elbo_ratio_vs_pythae": ("time_to_elbo", "max", 1 / 3, "time to the ELBO ≤ 1/3 of pythae's"),
    "nll_fraction_of_matmul_peak": ("nll", "min", 0.6, "MLP log p(x) ≥ 60% of the matmul rate"),
    "nll_conv_flop_cost_ratio": ("nll", "max", 2.0, "conv log p(x) within 2× of its FLOP cost"),
    "data_feed_fraction": ("data_feed", "max", 0.05, "≤ 5% of step time waiting for data"),
}


def markdown_table(columns: list[str], rows: list[dict[str, object]]) -> str:
    """``rows`` as a GitHub markdown table with ``columns`` in order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if 0.99 < abs(value) < 1:  # fractions near one (codes in agreement): keep the digits that differ
            return f"{value:.5f}"
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def bf16_native() -> bool:
    """Whether this CPU advertises native BF16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def target_rows(metrics: dict[str, object]) -> list[dict[str, object]]:
    """One row per target: the measured value and whether it meets the bound."""
    rows = []
    for name, (_, sense, bound, says) in TARGETS.items():
        value = metrics.get(name)
        met = None
        if isinstance(value, (int, float)):
            met = "yes" if (value >= bound if sense == "min" else value <= bound) else "**no**"
        # the comparisons time at one thread count and repeat at the other where threads matter
        other = next(
            (
                f"{metrics[name + suffix]:.3g} ({label})"
                for suffix, label in (("_1thread", "1 thread"), ("_default_threads", "default threads"))
                if isinstance(metrics.get(name + suffix), (int, float))
            ),
            None,
        )
        rows.append(
            {
                "metric": name,
                "target": f"{'≥' if sense == 'min' else '≤'} {bound:.3g}",
                "measured": value,
                "met": met or "not measured",
                "at the other thread count": other,
                "what": says,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller budgets: minutes, every ratio")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (JSON)")
    parser.add_argument("--only", nargs="+", choices=list(COMPARISONS), help="run only these comparisons")
    args = parser.parse_args(argv)
    names = args.only or list(COMPARISONS)
    json_path = args.json or RESULTS / ("run_quick.json" if args.quick else "run.json")

    info = {**machine(), "bf16_native": bf16_native()}
    print(f"# vaekit speed suite ({'quick' if args.quick else 'full'})\n")
    print(
        f"{info['cpu']}, {info['cpus']} CPUs, {info['threads']} torch threads, torch {info['torch']}, "
        f"native BF16: {info['bf16_native']}, CUDA: {info['cuda'] or 'none'}\n"
    )
    results, metrics = {}, {}
    for name in names:
        started = time.perf_counter()
        try:
            module = importlib.import_module(COMPARISONS[name])
            result = module.measure(quick=args.quick)
        except Exception as error:  # one comparison failing must not lose the others' numbers
            traceback.print_exc()
            result = {"title": name, "error": f"{type(error).__name__}: {error}", "metrics": {}}
        result["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = result
        metrics.update(result.get("metrics") or {})
        print(f"## {result.get('title', name)}  ({result['seconds']} s)\n")
        if "error" in result:
            print(f"failed: {result['error']}\n")
            continue
        if result.get("fair"):
            print(f"Fair because: {result['fair']}\n")
        if result.get("rows"):
            print(markdown_table(result["columns"], result["rows"]) + "\n")
        sys.stdout.flush()

    targets = target_rows(metrics)
    print("## Targets\n")
    columns = ["metric", "target", "measured", "met", "at the other thread count", "what"]
    print(markdown_table(columns, targets) + "\n")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "suite": "vaekit speed",
        "quick": args.quick,
        "machine": info,
        "torch_threads": torch.get_num_threads(),
        "metrics": metrics,
        "targets": targets,
        "comparisons": results,
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
