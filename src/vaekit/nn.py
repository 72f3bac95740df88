"""Building blocks shared by the models, and the feature-map size arithmetic."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    """An activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def halving_sizes(size: int, num_layers: int, ceil: bool) -> list[int]:
    """Spatial sizes through ``num_layers`` stride-2 convolutions: ``[size, s1, …, s_L]``.

    A 3×3 conv with padding 1 maps n → ⌈n/2⌉ (``ceil=True``); a 4×4 conv with padding 1 maps
    n → ⌊n/2⌋ (``ceil=False``).
    """
    sizes = [size]
    for _ in range(num_layers):
        sizes.append((sizes[-1] + 1) // 2 if ceil else sizes[-1] // 2)
    return sizes


def transpose_output_padding(target: int, source: int, kernel: int, padding: int) -> int:
    """The ``output_padding`` that makes a stride-2 transposed conv map ``source`` back to ``target``.

    A stride-2 ConvTranspose2d gives ``2(source − 1) − 2·padding + kernel + output_padding``; the
    remainder is 0 or 1 when ``source`` came from ``target`` through the mirrored conv, so the
    decoder reproduces odd and non-square sizes exactly (the seed hard-codes 64×64 instead).
    """
    padding_needed = target - (2 * (source - 1) - 2 * padding + kernel)
    if padding_needed not in (0, 1):
        raise ValueError(f"cannot map {source} to {target} with one stride-2 transposed conv")
    return padding_needed


def upsampling_conv(
    c_in: int, c_out: int, kernel: int, target: Sequence[int], source: Sequence[int], padding: int = 1
) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv that maps a ``source`` (h, w) feature map to exactly ``target`` (H, W):
    the decoders' up-sampling step, mirroring a stride-2 conv of the encoder."""
    output_padding = tuple(
        transpose_output_padding(t, s, kernel, padding) for t, s in zip(target, source, strict=True)
    )
    return nn.ConvTranspose2d(c_in, c_out, kernel, stride=2, padding=padding, output_padding=output_padding)


def check_min_size(model_name: str, height: int, width: int, min_size: int, why: str) -> None:
    """Raise a ``ValueError`` if an image side is below what the architecture needs."""
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name}: image size {height}×{width} is too small for {why}; "
            f"need at least {min_size}×{min_size}, or use fewer down-sampling layers"
        )


class ResidualLayer(nn.Module):
    """x + conv1×1(relu(conv3×3(x))): the residual block of the VQ-VAE paper (§4.1)."""

    def __init__(self, channels: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or channels
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def mlp(sizes: Sequence[int], act: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with an activation between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation(act))
    return nn.Sequential(*layers)
