"""Training-step throughput (images/s) of vaekit's models on this machine, as ``vaekit train`` runs them.

python benchmarks/bench_train.py

Per model three settings, timed alternately in one process (``common.alternate``): fp32 with a
contiguous layout (vaekit's default before ``precision: auto``), fp32 channels-last, and bf16 autocast
channels-last — what ``precision: auto`` / ``memory_format: auto`` pick for a conv model on a CPU
with native bf16 (:func:`vaekit.train.resolve_speed_settings`; a model without convolutions stays
contiguous). Every step uses fused Adam and computes the loss in float32, as the trainer does.
"""

from __future__ import annotations

import torch
from common import alternate, report

from vaekit import MLPVAE, VQVAE, VanillaVAE
from vaekit.train import has_2d_convolutions

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
SETTINGS = {  # name -> (bf16 autocast, channels-last)
    "fp32": (False, False),
    "fp32, channels-last": (False, True),
    "bf16, channels-last": (True, True),
}


def _step(build, shape: tuple[int, ...], batch: int, bf16: bool, channels_last: bool):
    model = build()
    x = torch.rand(batch, *shape)
    if model.likelihood.kind == "gaussian":
        x = x * 2 - 1
    if channels_last and has_2d_convolutions(model):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x)
        loss = model.loss_function(*outputs)["loss"]  # computed in float32 by the model
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main(batch: int = 128) -> None:
    torch.manual_seed(0)
    rows = []
    for name, (build, shape) in MODELS.items():
        steps = {setting: _step(build, shape, batch, *flags) for setting, flags in SETTINGS.items()}
        timings = alternate(steps, rounds=5, warmup=2)
        base = timings["fp32"]["median_ms"]
        for setting, t in timings.items():
            rows.append(
                {
                    "model": name,
                    "settings": setting,
                    "batch": batch,
                    "median_ms": t["median_ms"],
                    "images/s": round(batch / (t["median_ms"] / 1000), 1),
                    "vs fp32": round(base / t["median_ms"], 2),
                }
            )
    report("train_step", rows, ["model", "settings", "batch", "median_ms", "images/s", "vs fp32"])


if __name__ == "__main__":
    main()
