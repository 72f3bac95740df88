"""The Gaussian-latent VAEs: the seed's ``VanillaVAE``, a light ``ConvVAE``, the AEVB paper's ``MLPVAE``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaekit.models.base import capture_config, check_input, image_shape
from vaekit.models.gaussian import GaussianLatentVAE
from vaekit.models.likelihood import DecoderLikelihood
from vaekit.nn import (
    CacheTiledSequential,
    Conv2d,
    check_min_size,
    halving_sizes,
    mlp,
    phase_pixel_order,
    upsampling_conv,
)
from vaekit.nn import activation as make_activation


def _min_size_for(num_layers: int) -> int:
    """Smallest side that still gives every stride-2 stage an input of at least 2 pixels."""
    size = 2
    while halving_sizes(size, num_layers - 1, ceil=True)[-1] < 2:
        size += 1
    return size


class VanillaVAE(GaussianLatentVAE):
    """The seed's convolutional VAE (PyTorch-VAE ``VanillaVAE``), for any channels and image size.

    Encoder: per hidden dim a 3×3 stride-2 conv, BatchNorm and LeakyReLU; ``fc_mu``/``fc_var`` on
    the flattened feature map. Decoder: ``decoder_input``, mirrored 3×3 stride-2 transposed convs
    (output padding computed so odd and non-square sizes come back exactly), then ``final_layer``.
    ``likelihood="gaussian"`` ends in Tanh (data in [-1, 1], as the seed); ``"bernoulli"`` ends in
    logits (data in [0, 1]). ``VanillaVAE(3, 128)`` is the seed's model: 64×64, 3,937,635 weights.
    """

    registry_name = "vanilla_vae"

    @capture_config
    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        hidden_dims: Sequence[int] | None = None,
        image_size: int | Sequence[int] = 64,
        likelihood: str = "gaussian",
        sigma: float = 0.1,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims) if hidden_dims is not None else [32, 64, 128, 256, 512]
        if not hidden_dims:
            raise ValueError("hidden_dims needs at least one entry")
        channels, height, width = image_shape(in_channels, image_size)
        num_layers = len(hidden_dims)
        check_min_size(
            type(self).__name__, height, width, _min_size_for(num_layers), f"{num_layers} stride-2 layers"
        )
        self.latent_dim = latent_dim
        self.input_shape = (channels, height, width)
        heights = halving_sizes(height, num_layers, ceil=True)  # [H, H/2, …, h_L]
        widths = halving_sizes(width, num_layers, ceil=True)
        self.feature_shape = (hidden_dims[-1], heights[-1], widths[-1])  # the seed's (512, 2, 2)
        flat = hidden_dims[-1] * heights[-1] * widths[-1]

        stages, c_in = [], channels
        for h_dim in hidden_dims:
            stages.append(
                nn.Sequential(
                    Conv2d(c_in, h_dim, kernel_size=3, stride=2, padding=1),
                    nn.BatchNorm2d(h_dim),
                    nn.LeakyReLU(),
                )
            )
            c_in = h_dim
        self.encoder = nn.Sequential(*stages)
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_var = nn.Linear(flat, latent_dim)

        def up(c_from: int, c_to: int, level: int) -> nn.ConvTranspose2d:  # level+1 -> level
            target, source = (heights[level], widths[level]), (heights[level + 1], widths[level + 1])
            return upsampling_conv(c_from, c_to, 3, target, source)

        self.decoder_input = nn.Linear(latent_dim, flat)
        reversed_dims = hidden_dims[::-1]  # the seed reverses its argument in place; we copy
        stages = []
        for i in range(num_layers - 1):
            level = num_layers - 1 - i
            stages.append(
                nn.Sequential(
                    up(reversed_dims[i], reversed_dims[i + 1], level),
                    nn.BatchNorm2d(reversed_dims[i + 1]),
                    nn.LeakyReLU(),
                )
            )
        self.decoder = nn.Sequential(*stages)
        last = reversed_dims[-1]
        self.final_layer = CacheTiledSequential(
            up(last, last, 0),
            nn.BatchNorm2d(last),
            nn.LeakyReLU(),
            Conv2d(last, channels, kernel_size=3, padding=1),
            nn.Tanh() if likelihood == "gaussian" else nn.Identity(),
            widest=last * height * width,  # the up-sampling's output, for one example
        )
        self.likelihood = DecoderLikelihood(likelihood, sigma, learn_sigma, (channels, 1, 1))

    def encode(self, input: Tensor) -> list[Tensor]:
        """``[B, C, H, W] -> [mu, log_var]``, each ``[B, latent_dim]``."""
        check_input(self, input, self.input_shape)
        result = torch.flatten(self.encoder(input), start_dim=1)  # [B, C_L·h_L·w_L]
        return [self.fc_mu(result), self.fc_var(result)]

    def decode(self, z: Tensor) -> Tensor:
        """``[B, latent_dim] -> [B, C, H, W]``: the Gaussian mean, or the Bernoulli logits."""
        result = self.decoder_input(z).view(-1, *self.feature_shape)  # [B, C_L, h_L, w_L]
        return self.final_layer(self.decoder(result))


class ConvVAE(GaussianLatentVAE):
    """A light convolutional VAE for likelihood work: 4×4 stride-2 convs and a fully connected neck.

    Encoder: per entry of ``hidden_dims`` (channels, as in ``VanillaVAE``) a 4×4 stride-2 conv and
    the activation (n → ⌊n/2⌋), then ``fc_dim`` units and ``fc_mu``/``fc_var``. Decoder: the mirror
    image — two linear layers to the smallest feature map, 4×4 stride-2 transposed convs back to
    the image (output padding computed, so odd sizes come back exactly), ending in logits
    (Bernoulli) or Tanh (Gaussian).

    No BatchNorm, so an example's likelihood does not depend on its batch and data-parallel runs
    match one process. At the defaults on 28×28 the decoder costs about 0.9 M multiply-adds per
    image, which keeps an importance-sampled log p(x) with k = 5000 affordable on a CPU
    (docs/benchmarks.md); ``VanillaVAE`` is the seed's heavier design.
    """

    registry_name = "conv_vae"

    @capture_config
    def __init__(
        self,
        in_channels: int = 1,
        latent_dim: int = 40,
        hidden_dims: Sequence[int] = (16, 32),
        fc_dim: int = 300,
        image_size: int | Sequence[int] = 28,
        likelihood: str = "bernoulli",
        activation: str = "relu",
        sigma: float = 0.1,
        learn_sigma: bool = False,
        prior: str = "standard",
        num_pseudo_inputs: int = 500,
    ) -> None:
        super().__init__()
        channels = list(hidden_dims)
        if not channels:
            raise ValueError("hidden_dims needs at least one entry")
        in_channels, height, width = image_shape(in_channels, image_size)
        num_layers = len(channels)
        check_min_size(type(self).__name__, height, width, 2**num_layers, f"{num_layers} stride-2 layers")
        self.latent_dim = latent_dim
        self.input_shape = (in_channels, height, width)
        heights = halving_sizes(height, num_layers, ceil=False)  # [H, H/2, …, h_L]
        widths = halving_sizes(width, num_layers, ceil=False)
        self.feature_shape = (channels[-1], heights[-1], widths[-1])
        flat = channels[-1] * heights[-1] * widths[-1]

        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), make_activation(activation)]
        layers += [nn.Flatten(), nn.Linear(flat, fc_dim), make_activation(activation)]
        self.encoder = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(fc_dim, latent_dim)
        self.fc_var = nn.Linear(fc_dim, latent_dim)

        self.decoder_input = mlp([latent_dim, fc_dim, flat], activation, final_activation=True)
        layers = []
        ladder = [in_channels, *channels]  # channels at encoder level 0 (the image), 1, …, L
        for level in range(num_layers - 1, -1, -1):  # level+1 -> level
            target, source = (heights[level], widths[level]), (heights[level + 1], widths[level + 1])
            layers.append(upsampling_conv(ladder[level + 1], ladder[level], 4, target, source))
            if level > 0:
                layers.append(make_activation(activation))
        layers.append(nn.Tanh() if likelihood == "gaussian" else nn.Identity())
        self.decoder = nn.Sequential(*layers)
        self.likelihood = DecoderLikelihood(likelihood, sigma, learn_sigma, (in_channels, 1, 1))
        self._init_prior(prior, num_pseudo_inputs)

    def encode(self, input: Tensor) -> list[Tensor]:
        """``[B, C, H, W] -> [mu, log_var]``, each ``[B, latent_dim]``."""
        check_input(self, input, self.input_shape)
        hidden = self.encoder(input)  # [B, fc_dim]
        return [self.fc_mu(hidden), self.fc_var(hidden)]

    def decode(self, z: Tensor) -> Tensor:
        """``[B, latent_dim] -> [B, C, H, W]``: the Bernoulli logits, or the Gaussian mean."""
        result = self.decoder_input(z).view(-1, *self.feature_shape)  # [B, C_L, h_L, w_L]
        return self.decoder(result)

    def scoring_pixel_order(self) -> Tensor:
        """The last transposed conv's phases one after another (:func:`vaekit.nn.phase_pixel_order`):
        on a CPU without autograd that layer computes its phases apart and interleaving them would
        cost as much as the likelihood."""
        last_conv = self.decoder[-2]
        return phase_pixel_order(self.input_shape[1:], last_conv.stride, last_conv.padding, self._device())

    def decode_in_scoring_order(self, z: Tensor) -> Tensor:
        """:meth:`decode`, pixels in :meth:`scoring_pixel_order` (the Tanh after the last conv, if
        any, is elementwise)."""
        hidden = self.decoder[:-2](self.decoder_input(z).view(-1, *self.feature_shape))
        *_, last_conv, output_activation = self.decoder
        return output_activation(last_conv.forward_in_phase_order(hidden))


class MLPVAE(GaussianLatentVAE):
    """The fully connected VAE of the AEVB paper (Kingma & Welling 2013, §5 and appendix C).

    Images ``[B, C, H, W]`` are flattened; the encoder MLP gives μ and log σ², the decoder MLP gives
    Bernoulli logits (data in [0, 1]) or a Gaussian mean behind a Tanh (data in [-1, 1]).
    ``prior="vamp"`` replaces N(0, I) by a VampPrior of ``num_pseudo_inputs`` components, the model
    of Tomczak & Welling (2018) (:mod:`vaekit.priors`).
    """

    registry_name = "mlp_vae"

    @capture_config
    def __init__(
        self,
        in_channels: int = 1,
        latent_dim: int = 40,
        hidden_dims: Sequence[int] = (300, 300),
        image_size: int | Sequence[int] = 28,
        likelihood: str = "bernoulli",
        activation: str = "relu",
        sigma: float = 0.1,
        learn_sigma: bool = False,
        prior: str = "standard",
        num_pseudo_inputs: int = 500,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape(in_channels, image_size)
        hidden_dims = list(hidden_dims)
        self.latent_dim = latent_dim
        self.input_shape = (channels, height, width)
        num_pixels = channels * height * width
        self.encoder = mlp([num_pixels, *hidden_dims], activation, final_activation=True)
        self.fc_mu = nn.Linear(hidden_dims[-1] if hidden_dims else num_pixels, latent_dim)
        self.fc_var = nn.Linear(hidden_dims[-1] if hidden_dims else num_pixels, latent_dim)
        self.decoder = mlp([latent_dim, *hidden_dims[::-1], num_pixels], activation)
        self.output_activation = nn.Tanh() if likelihood == "gaussian" else nn.Identity()
        self.likelihood = DecoderLikelihood(likelihood, sigma, learn_sigma, (channels, 1, 1))
        self._init_prior(prior, num_pseudo_inputs)

    def encode(self, input: Tensor) -> list[Tensor]:
        """``[B, C, H, W] -> [mu, log_var]``, each ``[B, latent_dim]``."""
        check_input(self, input, self.input_shape)
        hidden = self.encoder(input.flatten(start_dim=1))  # [B, C·H·W] -> [B, hidden]
        return [self.fc_mu(hidden), self.fc_var(hidden)]

    def decode(self, z: Tensor) -> Tensor:
        """``[B, latent_dim] -> [B, C, H, W]``."""
        out = self.output_activation(self.decoder(z))  # [B, C·H·W]
        return out.view(-1, *self.input_shape)
