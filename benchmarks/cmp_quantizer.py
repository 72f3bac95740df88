"""vaekit's VectorQuantizer, forward + backward, against the seed's (PyTorch-VAE's, executed from the
seed text), vector-quantize-pytorch's ``VectorQuantize``, and the search's own distance matmul.

    python benchmarks/cmp_quantizer.py [--quick]

Latents ``[64, 64, 16, 16]`` (B, D, H, W), K = 512 codes, float32, training mode. Every contender
starts from the same latents and the same codebook (the seed's ``U(−1/K, 1/K)`` initialisation) and
runs ``(quantized.square().mean() + loss).backward()``; timings alternate in one process
(``common.alternate``), so only medians and ratios of the same sitting are reported.

vector-quantize-pytorch is configured for the seed's algorithm as closely as it allows: euclidean
distance, no rotation trick (the plain straight-through estimator), no k-means init, no dead-code
expiry; for the plain quantizer ``ema_update=False, learnable_codebook=True`` (the codebook learns by
gradient) with ``commitment_weight = 1 + β``, which gives the seed's loss value (its one loss term
sends the same weight to the encoder and the codebook, where the seed sends β and 1: the same work);
for the EMA quantizer ``decay=0.99, commitment_weight=β``, vaekit's ``ema=True``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import alternate, profile_top_ops, show_comparison, threads
from seed_code import seed_classes

from vaekit import VectorQuantizer

B, D, H, W, K, BETA = 64, 64, 16, 16, 512, 0.25
THREADS: int | None = 1  # see measure()
COLUMNS = ["contender", "median_ms", "min_ms", "ratio_vs_vaekit", "same_codes_as_seed", "same_codes_as_exact"]


def _vqp(codebook: torch.Tensor, ema: bool) -> torch.nn.Module | None:
    """vector-quantize-pytorch's quantizer holding ``codebook``, or None when it is not installed."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    common = dict(dim=D, codebook_size=K, accept_image_fmap=True, channel_last=False, rotation_trick=False)
    if ema:
        vq = VectorQuantize(**common, decay=0.99, commitment_weight=BETA)
    else:
        vq = VectorQuantize(**common, ema_update=False, learnable_codebook=True, commitment_weight=1 + BETA)
    with torch.no_grad():
        vq._codebook.embed.copy_(codebook[None])  # [1, K, D]
        vq._codebook.embed_avg.copy_(codebook[None])
    return vq.train()


def _outputs(name: str, quantizer: torch.nn.Module, latents: torch.Tensor):
    """``(quantized [B, D, H, W], loss, codes [N] or None)`` of one forward pass, whatever the API."""
    if name.startswith("vector-quantize"):
        quantized, codes, loss = quantizer(latents)
        return quantized, loss, codes.reshape(-1)
    out = quantizer(latents)
    codes = getattr(out, "indices", None)
    return out[0], out[1], None if codes is None else codes.reshape(-1)


def _step(name: str, quantizer: torch.nn.Module, latents: torch.Tensor) -> Callable[[], None]:
    """One timed step: forward, ``(quantized.square().mean() + loss).backward()``."""

    def run() -> None:
        latents.grad = None
        for p in quantizer.parameters():
            p.grad = None
        quantized, loss, _ = _outputs(name, quantizer, latents)
        (quantized.square().mean() + loss).backward()

    return run


def measure(quick: bool) -> dict:
    """Time the contenders (see the module docstring); returns the table, metrics and a profile.

    The table is timed with one intra-op thread (``THREADS``; None would keep torch's default): on
    a shared 2-core machine with GNU OpenMP's default (active, spinning) wait policy, a step's
    parallel regions stall whenever one of their two threads is descheduled, so two-thread times
    measure the other jobs' load as much as the code, and most for code with many short regions such
    as a blocked search (with ``OMP_WAIT_POLICY=PASSIVE`` in the environment they do not). The
    vaekit/seed/matmul ratios at the default thread count are measured too, in a shorter second
    sitting (``*_default_threads``).
    """
    default_threads = torch.get_num_threads()
    sitting_threads = THREADS or default_threads
    torch.manual_seed(0)
    latents = torch.randn(B, D, H, W, requires_grad=True)
    seed = seed_classes()["VectorQuantizer"](K, D, BETA).train()
    codebook = seed.embedding.weight.detach().clone()  # [K, D]
    flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, D)  # [N, D]

    def vaekit(ema: bool) -> VectorQuantizer:
        vq = VectorQuantizer(K, D, BETA, ema=ema)
        with torch.no_grad():
            vq.embedding.weight.copy_(codebook)
            if ema:
                vq.ema_embed_sum.copy_(codebook)
        return vq.train()

    quantizers: dict[str, torch.nn.Module | None] = {
        "seed (PyTorch-VAE)": seed,
        "vector-quantize-pytorch": _vqp(codebook, ema=False),
        "vaekit": vaekit(ema=False),
        "vector-quantize-pytorch, EMA": _vqp(codebook, ema=True),
        "vaekit, ema=True": vaekit(ema=True),
    }
    # the codes each picks for the same latents and codebook (before any EMA step moves the codebook)
    with torch.no_grad():
        seed_codes = (  # the seed's own expression
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(codebook**2, dim=1)
            - 2 * torch.matmul(flat, codebook.t())
        ).argmin(1)
        exact = torch.cdist(flat.double(), codebook.double()).argmin(1)  # float64 brute force
    codes = {"seed (PyTorch-VAE)": seed_codes}
    for name, quantizer in quantizers.items():
        if quantizer is not None and name != "seed (PyTorch-VAE)":
            codes[name] = _outputs(name, quantizer, latents)[2].detach()
            if name.endswith("EMA") or name.endswith("ema=True"):  # undo the step's EMA update
                quantizers[name] = _vqp(codebook, ema=True) if name.endswith("EMA") else vaekit(ema=True)

    steps = {name: _step(name, q, latents) for name, q in quantizers.items() if q is not None}
    cb_t = codebook.T.contiguous()  # [D, K]
    block = torch.empty(flat.shape[0], K)  # [N, K]
    steps["distance matmul alone"] = lambda: flat @ cb_t  # [N, D] @ [D, K], a fresh [N, K] result
    steps["distance matmul, preallocated output"] = lambda: torch.mm(flat, cb_t, out=block)
    with threads(sitting_threads):
        timing = alternate(steps, rounds=4 if quick else 15, warmup=1 if quick else 2)
        profile = profile_top_ops({name: steps[name] for name in ("vaekit", "seed (PyTorch-VAE)")}, repeats=3)
    default_timing = {}
    if sitting_threads != default_threads:
        few = ("seed (PyTorch-VAE)", "vaekit", "distance matmul alone")
        default_timing = alternate({name: steps[name] for name in few}, rounds=2 if quick else 9, warmup=1)

    ours = timing["vaekit"]["median_ms"]
    rows = []
    for name in [*quantizers, "distance matmul alone", "distance matmul, preallocated output"]:
        t = timing.get(name)
        found = codes.get(name)
        rows.append(
            {
                "contender": name
                if quantizers.get(name, steps.get(name)) is not None
                else f"{name} (not installed)",
                "median_ms": None if t is None else round(t["median_ms"], 2),
                "min_ms": None if t is None else round(t["min_ms"], 2),
                "ratio_vs_vaekit": None if t is None else round(t["median_ms"] / ours, 2),
                "same_codes_as_seed": None if found is None else (found == seed_codes).float().mean().item(),
                "same_codes_as_exact": None if found is None else (found == exact).float().mean().item(),
            }
        )

    def ratio(num: str, den: str, times: dict = timing) -> float | None:
        if num not in times or den not in times:
            return None
        return times[num]["median_ms"] / times[den]["median_ms"]

    metrics = {
        "vq_speedup_vs_seed": ratio("seed (PyTorch-VAE)", "vaekit"),
        "vq_speedup_vs_vqp": ratio("vector-quantize-pytorch", "vaekit"),
        "vq_matmul_ratio": ratio("vaekit", "distance matmul alone"),
        "vq_matmul_ratio_preallocated": ratio("vaekit", "distance matmul, preallocated output"),
        "vq_same_codes_as_seed": (codes["vaekit"] == seed_codes).float().mean().item(),
        "vq_same_codes_as_exact": (codes["vaekit"] == exact).float().mean().item(),
        "seed_same_codes_as_exact": (seed_codes == exact).float().mean().item(),
        "vq_ema_speedup_vs_vqp_ema": ratio("vector-quantize-pytorch, EMA", "vaekit, ema=True"),
        "vq_ema_over_plain": ratio("vaekit, ema=True", "vaekit"),
        "threads": sitting_threads,
        "default_threads": default_threads,
        "vq_speedup_vs_seed_default_threads": ratio("seed (PyTorch-VAE)", "vaekit", default_timing),
        "vq_matmul_ratio_default_threads": ratio("vaekit", "distance matmul alone", default_timing),
    }
    fair = (
        "Same latents [64, 64, 16, 16] and codebook (K = 512) for every contender, float32, training "
        "mode, forward + backward of quantized.square().mean() + loss, timed in alternation in one "
        f"process on {sitting_threads} thread(s) (*_default_threads: {default_threads}); the fraction "
        "of codes equal to the seed's (and to a float64 brute-force argmin) is reported, and "
        "vector-quantize-pytorch runs the same algorithm (euclidean, plain straight-through, no "
        "rotation trick, no k-means, no dead-code expiry)."
    )
    return {
        "title": "VectorQuantizer forward + backward, B·H·W = 16384 latents of D = 64, K = 512",
        "fair": fair,
        "columns": COLUMNS,
        "rows": rows,
        "metrics": metrics,
        "profile": profile,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under 45 s)")
    result = measure(parser.parse_args().quick)
    show_comparison("cmp_quantizer", result)


if __name__ == "__main__":
    main()
