"""The seed's ``VanillaVAE(3, 128)`` training step against vaekit's, on the same weights and batch.

    python benchmarks/cmp_seed_vae.py [--quick]

One Adam step (lr 1e-3) on 64 images of 64×64×3 in [-1, 1]: forward, the seed's objective
``loss_function(*outputs, M_N=64/50000)`` (pixel-mean MSE + M_N · KL: the seed's own loss, which
vaekit keeps under its ``M_N`` keyword), backward, step. The seed's class is executed from the seed
text (``seed_code.py``); vaekit's ``VanillaVAE(3, 128)`` loads the seed model's state dict, so both
start from the same weights. Contenders:

* seed, fp32 — the quoted class with ``torch.optim.Adam``'s defaults;
* vaekit, fp32 — the same step, nothing else changed (vaekit's CPU conv paths, :mod:`vaekit.nn`);
* vaekit, fp32 + channels-last + fused Adam — what ``vaekit train`` does at ``precision: fp32``;
* vaekit, bf16 autocast + channels-last + fused Adam — what ``precision: auto`` picks on a CPU with
  native bf16 (the loss is still computed in float32; the forward pass is rounded to bf16).

Timings alternate in one process (``common.alternate``); only medians and ratios of the same sitting
are reported. The table uses one intra-op thread (see :func:`measure`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from common import alternate, profile_top_ops, show_comparison, threads
from seed_code import seed_classes

from vaekit import VanillaVAE

BATCH, SIZE, LATENT, LR = 64, 64, 128, 1e-3
M_N = BATCH / 50_000  # the seed's kld_weight: batch / training-set size
THREADS = 1
COLUMNS = ["contender", "images_per_s", "median_ms", "min_ms", "ratio_vs_seed", "first_loss_vs_seed"]

#: name -> (vaekit model?, bf16 autocast, channels-last, fused Adam)
CONTENDERS = {
    "seed, fp32": (False, False, False, False),
    "vaekit, fp32": (True, False, False, False),
    "vaekit, fp32 + channels-last + fused Adam": (True, False, True, True),
    "vaekit, bf16 autocast + channels-last + fused Adam": (True, True, True, True),
}
FASTEST = "vaekit, bf16 autocast + channels-last + fused Adam"
BEST_FP32 = "vaekit, fp32 + channels-last + fused Adam"


def _step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, fused: bool) -> Callable[[], torch.Tensor]:
    """One training step of ``model`` on ``x``; returns the loss (no host sync inside)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=fused or None)

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x)
        loss = model.loss_function(*outputs, M_N=M_N)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run


def _build(x: torch.Tensor) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, float]]:
    """Every contender's step on its own copy of the same weights, and its first step's loss."""
    torch.manual_seed(0)
    seed_class = seed_classes()["VanillaVAE"]
    reference = seed_class(3, LATENT).state_dict()
    steps, first = {}, {}
    for name, (ours, bf16, channels_last, fused) in CONTENDERS.items():
        model = VanillaVAE(3, LATENT) if ours else seed_class(3, LATENT)
        model.load_state_dict(reference)
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        steps[name] = _step(model.train(), inputs, bf16, fused)
        torch.manual_seed(1)  # the same reparameterization noise for every first step
        first[name] = steps[name]().item()
    return steps, first


def measure(quick: bool) -> dict[str, Any]:
    """Time the contenders (module docstring); returns the table, the speed-ups and a profile.

    The table is timed with one intra-op thread (``THREADS``): on a shared 2-core machine a step's
    OpenMP regions stall whenever one of their two threads is descheduled, so two-thread times
    measure the other jobs' load as much as the code. Without ``quick``, the seed/fastest ratio at
    the default thread count is measured too, in a shorter second sitting, and the seed's and the
    fastest step are profiled. ``quick`` takes under a minute, the full run under three.
    """
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1  # [B, 3, 64, 64] in the seed's data range
    with threads(THREADS):
        steps, first = _build(x)
        timings = alternate(steps, rounds=3 if quick else 9, warmup=0 if quick else 1)  # _build warmed up
    seed_ms = timings["seed, fp32"]["median_ms"]
    rows = [
        {
            "contender": name,
            "images_per_s": round(BATCH / (t["median_ms"] / 1000), 1),
            "median_ms": round(t["median_ms"], 1),
            "min_ms": round(t["min_ms"], 1),
            "ratio_vs_seed": round(seed_ms / t["median_ms"], 2),
            "first_loss_vs_seed": f"{first[name] / first['seed, fp32'] - 1:+.1e}",
        }
        for name, t in timings.items()
    ]
    metrics: dict[str, Any] = {
        "vae_train_speedup_vs_seed": round(seed_ms / timings[FASTEST]["median_ms"], 3),
        "vae_train_speedup_fp32_vs_seed": round(seed_ms / timings[BEST_FP32]["median_ms"], 3),
        "vaekit_fast_settings": "bf16 autocast (loss in float32), channels-last, fused Adam "
        "(`vaekit train` with precision: auto, memory_format: auto on a CPU with native bf16)",
        "threads": THREADS,
    }
    result: dict[str, Any] = {
        "title": f"Training step of the seed's VanillaVAE(3, {LATENT}), 64×64×3, batch {BATCH}",
        "fair": (
            "Same architecture and weights (vaekit's model loads the seed's state dict), same batch, "
            f"the seed's own loss (M_N={M_N}) and Adam lr={LR} for every contender; first_loss_vs_seed is "
            "the first step's loss against the seed's (same weights and noise): fp32 rows equal to "
            "float32 rounding. Precision differs only in the bf16 row: its forward pass is computed in "
            "bf16 (loss in float32). Alternating timing, one intra-op thread, on a shared machine."
        ),
        "columns": COLUMNS,
        "rows": rows,
        "metrics": metrics,
    }
    if not quick:
        with threads(default_threads):
            pair = {name: steps[name] for name in ("seed, fp32", FASTEST)}
            both = alternate(pair, rounds=4, warmup=1)
        metrics["vae_train_speedup_vs_seed_default_threads"] = round(
            both["seed, fp32"]["median_ms"] / both[FASTEST]["median_ms"], 3
        )
        metrics["default_threads"] = default_threads
        with threads(THREADS):
            profiled = {name: steps[name] for name in ("seed, fp32", FASTEST)}
            result["profile"] = profile_top_ops(profiled, repeats=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no profile (under a minute)")
    args = parser.parse_args()
    result = measure(args.quick)
    show_comparison("cmp_seed_vae", result)


if __name__ == "__main__":
    main()
