"""Pictures from a trained model: prior samples, reconstructions, latent interpolations.

Every function returns images in [0, 1] (``[N, C, H, W]``) ready for :mod:`vaekit.report`; the
model's value range (Bernoulli [0, 1], Gaussian [-1, 1]) is undone by :func:`to_unit_range`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from vaekit.data import to_unit_range
from vaekit.errors import VaekitError
from vaekit.models import VAE, VQVAE
from vaekit.report import save_grid, save_interpolation, save_reconstructions


def _kind(model: nn.Module) -> str:
    return model.likelihood.kind


@torch.no_grad()
def sample_images(model: nn.Module, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Decode z ~ p(z): ``[num_samples, C, H, W]`` in [0, 1]. VQ-VAEs need a prior (none yet)."""
    if isinstance(model, VQVAE):
        raise VaekitError(
            "a VQ-VAE has no prior to sample from yet (it needs one over code indices, e.g. a PixelCNN "
            "fitted to `vaekit encode` output); use `vaekit reconstruct` or `vaekit interpolate`"
        )
    z = model.sample_latent(num_samples, generator=generator)  # [N, D]
    return to_unit_range(model.likelihood.mean(model.decode(z)), _kind(model)).cpu()


@torch.no_grad()
def reconstruct_images(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic reconstructions of x (from μ, or from the nearest codes), in [0, 1]."""
    return to_unit_range(model.reconstruct(x), _kind(model)).cpu()


def _latent(model: nn.Module, x: Tensor) -> Tensor:
    """Where interpolation happens: μ(x) ``[B, D]`` for a VAE, z_e(x) ``[B, D, h, w]`` for a VQ-VAE."""
    return model.encode(x)[0]


def _decode_latent(model: nn.Module, z: Tensor) -> Tensor:
    if isinstance(model, VQVAE):  # quantize every point of the path, so each frame uses real codes
        return model.likelihood.mean(model.decode(model.vq_layer(z).quantized))
    return model.likelihood.mean(model.decode(z))


@torch.no_grad()
def interpolate_images(model: nn.Module, x_from: Tensor, x_to: Tensor, steps: int = 10) -> Tensor:
    """Decode straight lines between the latents of pairs of images: ``[R, steps, C, H, W]`` in [0, 1].

    The end frames are the reconstructions of ``x_from`` and ``x_to`` (R pairs, ``[R, C, H, W]`` each).
    """
    z_from, z_to = _latent(model, x_from), _latent(model, x_to)
    t = torch.linspace(0, 1, steps, device=z_from.device).view(steps, *([1] * z_from.dim()))  # [S, 1, …]
    path = (1 - t) * z_from.unsqueeze(0) + t * z_to.unsqueeze(0)  # [S, R, …]
    frames = _decode_latent(model, path.flatten(0, 1))  # [S·R, C, H, W]
    frames = frames.view(steps, len(x_from), *frames.shape[1:]).transpose(0, 1)  # [R, S, C, H, W]
    return to_unit_range(frames, _kind(model)).cpu()


def write_pictures(
    model: nn.Module, test_batch: Tensor, out_dir: Path, num_samples: int = 64
) -> dict[str, Path]:
    """Write ``samples.png`` (VAEs), ``reconstructions.png``, ``interpolation.png`` and, for a
    VampPrior, ``pseudo_inputs.png`` (its first ``num_samples`` learned pseudo-inputs); return the paths.

    ``test_batch`` holds held-out images in the model's value range, on the model's device. Data
    files are often sorted by class, so the pictures take images spread over the whole batch.
    """
    was_training = model.training
    model.eval()
    paths: dict[str, Path] = {}
    gen = torch.Generator().manual_seed(0)
    if isinstance(model, VAE):
        paths["samples"] = save_grid(sample_images(model, num_samples, gen), out_dir / "samples.png")
        if model.vamp_prior is not None:
            pseudo = to_unit_range(model.vamp_prior.inputs()[:num_samples].detach(), _kind(model)).cpu()
            paths["pseudo-inputs"] = save_grid(pseudo, out_dir / "pseudo_inputs.png")
    shown = test_batch[torch.linspace(0, len(test_batch) - 1, min(32, len(test_batch))).long()]
    originals = to_unit_range(shown, _kind(model)).cpu()
    paths["reconstructions"] = save_reconstructions(
        originals, reconstruct_images(model, shown), out_dir / "reconstructions.png"
    )
    pairs = max(1, min(8, len(test_batch) // 2))
    picks = torch.linspace(0, len(test_batch) - 1, 2 * pairs).long()  # first half -> second half reversed
    frames = interpolate_images(model, test_batch[picks[:pairs]], test_batch[picks[pairs:]].flip(0))
    paths["interpolation"] = save_interpolation(frames, out_dir / "interpolation.png")
    model.train(was_training)
    return paths
