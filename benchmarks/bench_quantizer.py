"""VectorQuantizer forward+backward at three sizes: vaekit (blocked search, one autograd node for
the straight-through output and the loss) against the seed's PyTorch-VAE quantizer (full [N, K]
distance matrix and one-hot matmul). The headline comparison, with vector-quantize-pytorch and the
distance matmul, is benchmarks/cmp_quantizer.py.

    python benchmarks/bench_quantizer.py
"""

from __future__ import annotations

import torch
from common import alternate, report

from seed_reference import SeedVectorQuantizer
from vaekit import VectorQuantizer


def step(quantizer: torch.nn.Module, latents: torch.Tensor) -> None:
    latents.grad = None
    for p in quantizer.parameters():
        p.grad = None
    quantized, loss = quantizer(latents)
    (quantized.square().mean() + loss).backward()


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for batch, side, codes, dim in [(32, 8, 512, 64), (64, 16, 512, 64), (32, 32, 1024, 64)]:
        latents = torch.randn(batch, dim, side, side, requires_grad=True)
        n = batch * side * side
        seed = SeedVectorQuantizer(codes, dim)
        ours = VectorQuantizer(codes, dim)
        ours.load_state_dict(seed.state_dict())  # the same codebook
        with torch.no_grad():  # same codebook -> same codes, up to float ties between near-equidistant codes
            agree = (seed(latents)[0] == ours(latents).quantized).all(dim=1).float().mean().item()
        timing = alternate(
            {
                "seed (one-hot)": lambda q=seed, z=latents: step(q, z),
                "vaekit": lambda q=ours, z=latents: step(q, z),
            }
        )
        for name, t in timing.items():
            rows.append(
                {
                    "N=B·H·W": n,
                    "K": codes,
                    "D": dim,
                    "implementation": name,
                    "median_ms": t["median_ms"],
                    "min_ms": t["min_ms"],
                    "speedup": timing["seed (one-hot)"]["median_ms"] / t["median_ms"],
                    "largest [N,K] float32 MB": round(n * codes * 4 / 2**20, 1) if "seed" in name else None,
                    "same codes as seed": agree,
                }
            )
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
            "speedup",
            "largest [N,K] float32 MB",
            "same codes as seed",
        ],
    )


if __name__ == "__main__":
    main()
