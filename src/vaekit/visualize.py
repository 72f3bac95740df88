"""Pictures from a trained model: prior samples, reconstructions, latent interpolations.

Every function returns images in [0, 1] (``[N, C, H, W]``) ready for :mod:`vaekit.report`; the
model's value range (Bernoulli [0, 1], Gaussian [-1, 1]) is undone by :func:`to_unit_range`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaekit.data import to_unit_range
from vaekit.models import AutoEncoder
from vaekit.report import save_grid, save_interpolation, save_reconstructions


@torch.no_grad()
def sample_images(
    model: AutoEncoder, num_samples: int, generator: torch.Generator | None = None, **options: Any
) -> Tensor:
    """``model.sample``: ``[num_samples, C, H, W]`` in [0, 1]; ``options`` (``labels``,
    ``temperature``) go to it. A model without a prior raises :class:`~vaekit.errors.NoPriorError`,
    saying what it lacks."""
    images = model.sample(num_samples, generator=generator, **options)
    return to_unit_range(images, model.likelihood.kind).cpu()


@torch.no_grad()
def reconstruct_images(model: AutoEncoder, x: Tensor) -> Tensor:
    """Deterministic reconstructions of x (from μ, or from the nearest codes), in [0, 1]."""
    return to_unit_range(model.reconstruct(x), model.likelihood.kind).cpu()


@torch.no_grad()
def interpolate_images(model: AutoEncoder, x_from: Tensor, x_to: Tensor, steps: int = 10) -> Tensor:
    """Decode straight lines between the latents of pairs of images: ``[R, steps, C, H, W]`` in [0, 1].

    The end frames are the reconstructions of ``x_from`` and ``x_to`` (R pairs, ``[R, C, H, W]`` each).
    """
    z_from, z_to = model.latent(x_from), model.latent(x_to)  # e.g. μ(x) [R, D], or z_e(x) [R, D, h, w]
    t = torch.linspace(0, 1, steps, device=z_from.device).view(steps, *([1] * z_from.dim()))  # [S, 1, …]
    path = (1 - t) * z_from.unsqueeze(0) + t * z_to.unsqueeze(0)  # [S, R, …]
    frames = model.decode_latent(path.flatten(0, 1))  # [S·R, C, H, W]
    frames = frames.view(steps, len(x_from), *frames.shape[1:]).transpose(0, 1)  # [R, S, C, H, W]
    return to_unit_range(frames, model.likelihood.kind).cpu()


def write_pictures(
    model: AutoEncoder, test_batch: Tensor, out_dir: Path, num_samples: int = 64
) -> dict[str, Path]:
    """Write ``samples.png`` (models that can sample), ``reconstructions.png``, ``interpolation.png``
    and the model's own pictures (:meth:`~vaekit.models.AutoEncoder.extra_pictures`, e.g. a
    VampPrior's ``pseudo_inputs.png``); return the paths.

    ``test_batch`` holds held-out images in the model's value range, on the model's device. Data
    files are often sorted by class, so the pictures take images spread over the whole batch.
    """
    was_training = model.training
    model.eval()
    paths: dict[str, Path] = {}
    gen = torch.Generator().manual_seed(0)
    kind = model.likelihood.kind
    if model.can_sample:
        paths["samples"] = save_grid(sample_images(model, num_samples, gen), out_dir / "samples.png")
    for name, images in model.extra_pictures(num_samples).items():
        file = out_dir / f"{name.replace('-', '_')}.png"
        paths[name] = save_grid(to_unit_range(images, kind).cpu(), file)
    shown = test_batch[torch.linspace(0, len(test_batch) - 1, min(32, len(test_batch))).long()]
    originals = to_unit_range(shown, kind).cpu()
    paths["reconstructions"] = save_reconstructions(
        originals, reconstruct_images(model, shown), out_dir / "reconstructions.png"
    )
    pairs = max(1, min(8, len(test_batch) // 2))
    picks = torch.linspace(0, len(test_batch) - 1, 2 * pairs).long()  # first half -> second half reversed
    frames = interpolate_images(model, test_batch[picks[:pairs]], test_batch[picks[pairs:]].flip(0))
    paths["interpolation"] = save_interpolation(frames, out_dir / "interpolation.png")
    model.train(was_training)
    return paths
