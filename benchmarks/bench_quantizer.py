"""VectorQuantizer forward+backward: vaekit (chunked search, no one-hot) against the seed's
PyTorch-VAE quantizer (full [N, K] distance matrix and one-hot matmul).

    python benchmarks/bench_quantizer.py
"""

from __future__ import annotations

import torch
from common import report, time_call

from seed_reference import SeedVectorQuantizer
from vaekit import VectorQuantizer


def step(quantizer: torch.nn.Module, latents: torch.Tensor) -> None:
    latents.grad = None
    quantized, loss = quantizer(latents)
    (quantized.square().mean() + loss).backward()


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for batch, side, codes, dim in [(32, 8, 512, 64), (64, 16, 512, 64), (32, 32, 1024, 64)]:
        latents = torch.randn(batch, dim, side, side, requires_grad=True)
        n = batch * side * side
        for name, quantizer in [
            ("seed (one-hot)", SeedVectorQuantizer(codes, dim)),
            ("vaekit", VectorQuantizer(codes, dim)),
        ]:
            timing = time_call(lambda q=quantizer, z=latents: step(q, z), repeats=5)
            rows.append(
                {
                    "N=B·H·W": n,
                    "K": codes,
                    "D": dim,
                    "implementation": name,
                    **timing,
                    "largest [N,K] float32 MB": round(n * codes * 4 / 2**20, 1) if "seed" in name else None,
                }
            )
        # same codebook -> same codes, up to float ties between near-equidistant codes
        seed, ours = SeedVectorQuantizer(codes, dim), VectorQuantizer(codes, dim)
        ours.embedding.weight.data.copy_(seed.embedding.weight.data)
        with torch.no_grad():
            agree = (seed(latents)[0] == ours(latents).quantized).all(dim=1).float().mean().item()
        rows[-1]["same codes as seed"] = agree
        rows[-2]["same codes as seed"] = agree
    report(
        "quantizer",
        rows,
        [
            "N=B·H·W",
            "K",
            "D",
            "implementation",
            "median_ms",
            "min_ms",
            "largest [N,K] float32 MB",
            "same codes as seed",
        ],
    )


if __name__ == "__main__":
    main()
