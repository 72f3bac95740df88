"""Importance-sampled log p(x): vaekit's estimator (vectorised over the batch, chunked over k)
against a per-example loop (one data point at a time, as pythae's ``get_nll`` does); and the
decoders' importance samples per second in NCHW and channels-last memory layout (what
``vaekit evaluate`` uses).

    python benchmarks/bench_nll.py
"""

from __future__ import annotations

import torch
from common import report, time_call

from vaekit import MLPVAE, ConvVAE, VanillaVAE
from vaekit.evaluate import auto_chunk


@torch.no_grad()
def per_example(model: MLPVAE, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    return torch.cat([model.log_px(x[i : i + 1], num_samples=k, chunk_size=chunk)[0] for i in range(len(x))])


def main() -> None:
    torch.manual_seed(0)
    model = MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28).eval()
    x = torch.bernoulli(torch.rand(100, 1, 28, 28))
    rows = []
    for k in (100, 1000):
        with torch.no_grad():
            batched = time_call(
                lambda k=k: model.log_px(x, num_samples=k, chunk_size=auto_chunk(x, k)), repeats=3
            )
        looped = time_call(lambda k=k: per_example(model, x, k, chunk=k), repeats=1, warmup=0)
        for name, t in ((f"vectorised, chunk {auto_chunk(x, k)}", batched), ("per-example loop", looped)):
            rows.append(
                {
                    "examples": len(x),
                    "k": k,
                    "estimator": name,
                    **t,
                    "examples/s": round(len(x) / (t["median_ms"] / 1000), 1),
                }
            )
    report("nll", rows, ["examples", "k", "estimator", "median_ms", "min_ms", "examples/s"])
    layouts()


def layouts(k: int = 200) -> None:
    """Importance samples per second, k per image for 100 binarized 28×28 images, by memory layout."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(100, 1, 28, 28))
    models = {
        "MLP VAE 2×300 (exemplar-fashion)": MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28),
        "ConvVAE [16, 32] (exemplar-fashion)": ConvVAE(1, 40, hidden_dims=[16, 32], image_size=28),
        "VanillaVAE [32, 64, 128] (default job)": VanillaVAE(
            1, 16, hidden_dims=[32, 64, 128], image_size=28, likelihood="bernoulli"
        ),
    }
    rows = []
    for name, model in models.items():
        model.eval()
        for layout in ("NCHW", "channels-last"):
            if layout == "channels-last":
                model = model.to(memory_format=torch.channels_last)
            chunk = auto_chunk(x, k)
            t = time_call(lambda m=model, c=chunk: m.log_px(x, num_samples=k, chunk_size=c), repeats=3)
            rate = len(x) * k / (t["median_ms"] / 1000)
            rows.append({"model": name, "layout": layout, "k": k, **t, "samples/s": round(rate)})
    report("nll_layout", rows, ["model", "layout", "k", "median_ms", "samples/s"])


if __name__ == "__main__":
    main()
