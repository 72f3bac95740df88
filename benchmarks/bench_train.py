"""Training-step throughput (images/s) of vaekit's models on this machine, fp32 and bf16 autocast.

python benchmarks/bench_train.py
"""

from __future__ import annotations

import torch
from common import report, time_call

from vaekit import MLPVAE, VQVAE, VanillaVAE

MODELS = {
    "default conv VAE 28×28 (mnist5k job)": (
        lambda: VanillaVAE(1, 16, hidden_dims=[32, 64, 128], image_size=28, likelihood="bernoulli"),
        (1, 28, 28),
    ),
    "MLP VAE 2×300, 40 latents": (lambda: MLPVAE(1, 40, hidden_dims=[300, 300], image_size=28), (1, 28, 28)),
    "seed VanillaVAE(3, 128) 64×64": (lambda: VanillaVAE(3, 128), (3, 64, 64)),
    "VQ-VAE [128,256], 2 res, 32×32": (
        lambda: VQVAE(3, 64, 512, image_size=32, num_residual_layers=2),
        (3, 32, 32),
    ),
}


def main(batch: int = 128) -> None:
    torch.manual_seed(0)
    rows = []
    for name, (build, shape) in MODELS.items():
        for precision in ("fp32", "bf16"):
            model = build()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            x = torch.rand(batch, *shape)
            if model.likelihood.kind == "gaussian":
                x = x * 2 - 1

            def step(model=model, optimizer=optimizer, x=x, precision=precision):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    outputs = model(x)
                loss = model.loss_function(*outputs)["loss"]  # computed in float32 by the model
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            timing = time_call(step, repeats=5, warmup=2)
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "batch": batch,
                    **timing,
                    "images/s": round(batch / (timing["median_ms"] / 1000), 1),
                }
            )
    report("train_step", rows, ["model", "precision", "batch", "median_ms", "images/s"])


if __name__ == "__main__":
    main()
