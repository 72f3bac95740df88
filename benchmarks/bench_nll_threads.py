"""Importance-sampled log p(x) on a CPU: batches scored by one thread each (what ``vaekit evaluate``
does) against one batch at a time on all of torch's intra-op threads (what it did before).

Both contenders run :func:`vaekit.evaluate.score_likelihood` on compiled inference copies of the
exemplar-fashion MLP VAE and ConvVAE and the default job's VanillaVAE (random weights, 28×28
binarized images, two batches of 100 per thread), alternated round by round in one process. With
``--busy`` a second process spins on one core throughout, as another job on a shared host would::

    python benchmarks/bench_nll_threads.py [--busy] [--k-scale F]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
from cmp_nll import BATCH, models
from common import alternate, report

from vaekit.evaluate import inference_copy, score_likelihood

#: importance samples per image, per model in the order of ``cmp_nll.models()``: calls of 0.8–1.1 s
#: on two idle AVX-512 cores
SAMPLES = [600, 120, 30]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", action="store_true", help="spin a second process on one core")
    parser.add_argument("--k-scale", type=float, default=1.0, help="scale the samples per image")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch._dynamo.config.recompile_limit = 64  # the models share one compiled function
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(2 * threads * BATCH, 1, 28, 28, generator=gen), generator=gen)
    batches = x.split(BATCH)
    contenders = {}
    for (name, model), k in zip(models().items(), SAMPLES, strict=True):
        k = max(1, round(k * args.k_scale))
        model = model.eval().to(memory_format=torch.channels_last)
        for workers, how in (
            (threads, "one thread per batch"),
            (1, f"a batch at a time on {threads} threads"),
        ):
            fast = inference_copy(model)
            fast.compile_scoring()
            contenders[f"{name}, k = {k}: {how}"] = lambda f=fast, w=workers, k=k: score_likelihood(
                f, batches, k, compiled=True, workers=w
            )
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        times = alternate(contenders, rounds=args.rounds, warmup=1)
    finally:
        if spinner is not None:
            spinner.kill()
    rows = [
        {
            "threads": threads,
            "busy core": args.busy,
            "what": name,
            "median_ms": t["median_ms"],
            "min_ms": t["min_ms"],
            "ms per batch": t["median_ms"] / len(batches),
        }
        for name, t in times.items()
    ]
    report("nll_threads", rows, ["threads", "busy core", "what", "median_ms", "min_ms", "ms per batch"])


if __name__ == "__main__":
    main()
