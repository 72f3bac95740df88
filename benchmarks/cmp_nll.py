"""Importance-sampled log p(x) against the machine's matrix-multiply rate.

How close does ``vaekit evaluate --iw-samples 5000`` come to what this machine can compute? For
each model this counts the FLOPs of one importance sample (the convolutions and matrix products of
the decoder and of the prior and proposal terms, counted by ``torch.utils.flop_counter``; the
encoder runs once per image and is counted apart), times :func:`vaekit.evaluate.likelihood_metrics`
— the evaluator's own path, conv models in channels-last as ``vaekit evaluate`` puts them, its
batches scored by as many threads as torch has intra-op threads — on a subset of two batches per
thread, and compares the rate with the best fp32 matrix product of the same sitting::

    python benchmarks/cmp_nll.py [--quick]

Models: the exemplar-fashion MLP VAE (2×300, 40 latents), its ``ConvVAE`` and the default job's
``VanillaVAE`` [32, 64, 128] (16 latents), all 28×28 Bernoulli, random weights (the cost does not
depend on them). The matmul contenders and the log p(x) calls are timed in turn, round after round
(``common.alternate``), so load from elsewhere hits them alike. Minutes are for the exemplar
protocol, 10,000 test images × k = 5000, from each model timed at two values of k (what a batch
costs once, what each sample adds).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import torch
from common import alternate, machine, report
from torch.utils.flop_counter import FlopCounterMode

from vaekit import MLPVAE, ConvVAE, VanillaVAE
from vaekit.evaluate import (
    auto_chunk,
    inference_copy,
    likelihood_metrics,
    score_likelihood,
    widest_activation,
)
from vaekit.models import AutoEncoder

PROTOCOL_IMAGES, PROTOCOL_K = 10_000, 5000
BATCH = 100  # vaekit evaluate's default batch size

#: Matrix products whose rate is measured: the MLP decoder's calls at the evaluator's chunk, and
#: square ones (the machine's best case).
MATMUL_SIZES = [(1000, 300, 784), (1000, 300, 300), (4000, 300, 784), (1024, 1024, 1024)]


def models() -> dict[str, AutoEncoder]:
    torch.manual_seed(0)
    return {
        "MLP VAE 2×300, 40 latents (exemplar-fashion)": MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28),
        "ConvVAE [16, 32], 300 neck (exemplar-fashion)": ConvVAE(1, 40, hidden_dims=[16, 32], image_size=28),
        "VanillaVAE [32, 64, 128], 16 latents (default job)": VanillaVAE(
            1, 16, hidden_dims=[32, 64, 128], image_size=28, likelihood="bernoulli"
        ),
    }


def matmul_contender(m: int, k: int, n: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """A call doing about 2 GFLOP of ``[m, k] @ [k, n]`` products, and its FLOPs."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    reps = max(1, round(2e9 / (2 * m * k * n)))

    def call() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=out)

    return call, 2.0 * m * k * n * reps


@torch.no_grad()
def flops_per_sample(model: AutoEncoder, x: torch.Tensor) -> tuple[float, float]:
    """(FLOPs of one importance sample, FLOPs of encoding one image) of ``model.log_px``: counted at
    two values of k, the difference is the per-sample part."""
    counts = []
    for k in (4, 8):
        with FlopCounterMode(display=False) as counter:
            model.log_px(x, k, k)
        counts.append(counter.get_total_flops())
    per_sample = (counts[1] - counts[0]) / (4 * len(x))
    per_image = counts[0] / len(x) - 4 * per_sample
    return per_sample, per_image


def sample_counts(k: int, chunk: int) -> tuple[int, int]:
    """The two values of k a model is timed at, whole chunks each: about k, and about k / 4."""
    high = max(2, round(k / chunk)) * chunk
    return max(1, round(high / 4 / chunk)) * chunk, high


def sitting(
    threads: int, ks: list[int], rounds: int, x: torch.Tensor
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One alternated sitting at ``threads`` intra-op threads: the table rows, and the metrics.

    Each call scores ``x``, two batches of 100 images per thread, as the evaluator does: by
    ``threads`` worker threads (:func:`vaekit.evaluate.score_likelihood`). Each model is timed at
    two values of k: a batch costs a + b·k (the encoder and the one-sample ELBO once per batch,
    the decoder and likelihood once per sample), and the protocol's minutes are a + b·5000 per
    batch of images — extrapolating one k linearly would charge the per-batch part 5000 / k times
    over."""
    batches = x[: 2 * threads * BATCH].split(BATCH)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    # the three models share GaussianLatentVAE._log_weights: each model and chunk shape is a
    # graph of that one function, more than dynamo's default limit of 8 (then it runs eager)
    torch._dynamo.config.recompile_limit = 64
    try:
        contenders: dict[str, Callable[[], object]] = {}
        flop_of: dict[str, float] = {}
        for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for m, k, n in MATMUL_SIZES:
                name = f"matmul {label} [{m}, {k}] @ [{k}, {n}]"
                contenders[name], flop_of[name] = matmul_contender(m, k, n, dtype)
        rows_in: list[tuple[str, tuple[int, int], int, float, float]] = []
        for (name, model), k in zip(models().items(), ks, strict=True):
            model = model.eval().to(memory_format=torch.channels_last)  # as vaekit.runs.evaluate_run
            per_sample, per_image = flops_per_sample(model, x[:10])
            x_batch = batches[0]
            # `vaekit evaluate --compile`: compiled once here (the warm-up round), as one evaluation
            # compiles once for all its batches; score_likelihood is likelihood_metrics on the copy
            compiled = inference_copy(model)
            compiled.compile_scoring()
            eager_chunk = auto_chunk(x_batch, PROTOCOL_K, widest_activation(model, x_batch))
            chunk = auto_chunk(x_batch, PROTOCOL_K, widest_activation(compiled, x_batch, compiled=True))
            counts = sample_counts(k, chunk)
            rows_in.append((name, counts, eager_chunk, per_sample, per_image))
            rows_in.append((f"{name}, compiled", counts, chunk, per_sample, per_image))
            for count in counts:
                contenders[f"{name} @ k={count}"] = lambda m=model, k=count: likelihood_metrics(
                    m, batches, iw_samples=k, seed=0
                )
                contenders[f"{name}, compiled @ k={count}"] = lambda m=compiled, k=count: score_likelihood(
                    m, batches, iw_samples=k, seed=0, compiled=True
                )
        times = alternate(contenders, rounds=rounds, warmup=1)
    finally:
        torch.set_num_threads(previous)

    rates = {name: flop_of[name] / (times[name]["median_ms"] / 1000) for name in flop_of}
    peak = max(rate for name, rate in rates.items() if "fp32" in name)
    peak_bf16 = max(rate for name, rate in rates.items() if "bf16" in name)
    rows: list[dict[str, Any]] = []
    for name, rate in rates.items():
        rows.append(
            {"threads": threads, "what": name, "GFLOP/s": rate / 1e9, "fraction of fp32 peak": rate / peak}
        )
    ratios: dict[str, float] = {}
    minutes_of: dict[str, float] = {}
    for name, (k_low, k_high), chunk, per_sample, per_image in rows_in:
        low, high = (times[f"{name} @ k={count}"]["median_ms"] / 1000 for count in (k_low, k_high))
        images = len(batches) * BATCH
        per_sample_s = (high - low) / (k_high - k_low) / images  # b / images: one sample of one image
        per_batch_s = (high - k_high * images * per_sample_s) / len(batches)  # a: encoder, ELBO, calls
        batch_s = per_batch_s + PROTOCOL_K * BATCH * per_sample_s  # one batch of the protocol
        minutes = PROTOCOL_IMAGES / BATCH * batch_s / 60
        flops = PROTOCOL_IMAGES * (PROTOCOL_K * per_sample + per_image)
        at_peak = flops / peak / 60
        ratios[name], minutes_of[name] = minutes / at_peak, minutes
        rows.append(
            {
                "threads": threads,
                "what": f"log p(x), {name}",
                "k timed": f"{k_low}, {k_high}",
                "chunk": chunk,
                "MFLOP/sample": per_sample / 1e6,
                "MFLOP/image (encoder)": per_image / 1e6,
                "µs/sample": per_sample_s * 1e6,
                "ms/batch of 100, once": per_batch_s * 1e3,
                "GFLOP/s": flops / (minutes * 60) / 1e9,
                "fraction of fp32 peak": at_peak / minutes,
                "minutes, 10k × k=5000": minutes,
                "minutes at peak": at_peak,
            }
        )
    # per model: (eager, compiled) FLOP-cost ratios; the headline takes vaekit's faster setting
    eager = [name for name in ratios if not name.endswith(", compiled")]
    best = {name: min(ratios[name], ratios[f"{name}, compiled"]) for name in eager}
    mlp, *convs = eager
    metrics = {
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_bf16_gflops": peak_bf16 / 1e9,
        "nll_fraction_of_matmul_peak": 1.0 / best[mlp],
        "nll_fraction_of_matmul_peak_eager": 1.0 / ratios[mlp],
        "nll_fraction_of_matmul_peak_compiled": 1.0 / ratios[f"{mlp}, compiled"],
        "nll_conv_flop_cost_ratio": max(best[name] for name in convs),
        "nll_conv_flop_cost_ratio_eager": max(ratios[name] for name in convs),
        "nll_minutes_mlp": min(minutes_of[mlp], minutes_of[f"{mlp}, compiled"]),
        **{
            f"nll_flop_cost_ratio_{key}{tag}": ratios[name + suffix]
            for key, name in zip(("mlp", "conv_vae", "vanilla_vae"), eager, strict=True)
            for suffix, tag in (("", ""), (", compiled", "_compiled"))
        },
    }
    return rows, metrics


def measure(quick: bool) -> dict[str, Any]:
    """The rows and metrics (see the module docstring); quick: fewer samples and rounds.

    Two sittings: torch's default thread count (what ``vaekit evaluate`` runs with; the headline
    metrics) and one thread (suffixed ``_1thread``). On a machine shared with other jobs, a
    multi-threaded op waits for its threads to be scheduled, which punishes many small ops far more
    than a few large matmuls. The evaluator's batches on threads of one intra-op thread each do not
    wait so; the matmul rate they are compared with is still one product on all the threads.
    """
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(2 * threads * BATCH, 1, 28, 28, generator=gen), generator=gen)
    # importance samples per image at the larger k timed: calls of 0.8–1.1 s (full) or 0.2–0.6 s
    # (quick) at two threads on a quiet machine
    ks = [100, 50, 20] if quick else [600, 120, 30]
    rounds = 2 if quick else 5
    rows, metrics = sitting(threads, ks, rounds, x)
    if threads > 1:
        rows_1, metrics_1 = sitting(1, ks, rounds, x)  # half the batches: calls about as long
        rows += rows_1
        metrics |= {f"{key}_1thread": value for key, value in metrics_1.items()}
    metrics["threads"] = threads
    metrics["load_average_1min"] = os.getloadavg()[0]
    return {
        "title": "Importance-sampled log p(x) against the machine's fp32 matmul rate",
        "fair": "the evaluator's own likelihood_metrics (k samples of two batches of 100 binarized 28×28 "
        "images per thread, scored by one worker thread per intra-op thread, the evaluator's chunking, "
        "conv models channels-last as vaekit evaluate runs them) alternated "
        "round by round with torch.mm calls of ~2 GFLOP in the same process and threads, at the "
        "default thread count and at one thread; FLOPs counted by torch.utils.flop_counter "
        "(matmuls and convolutions only)",
        "columns": [
            "threads",
            "what",
            "k timed",
            "chunk",
            "MFLOP/sample",
            "MFLOP/image (encoder)",
            "µs/sample",
            "ms/batch of 100, once",
            "GFLOP/s",
            "fraction of fp32 peak",
            "minutes, 10k × k=5000",
            "minutes at peak",
        ],
        "rows": rows,
        "metrics": metrics,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    result = measure(parser.parse_args().quick)
    report("cmp_nll", result["rows"], result["columns"])
    print({key: round(value, 4) for key, value in result["metrics"].items()})


if __name__ == "__main__":
    main()
