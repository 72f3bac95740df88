"""The VQ-VAE of van den Oord et al. (2017), laid out like PyTorch-VAE's ``VQVAE``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.checkpoint import Pretrained
from vaekit.models.base import LIKELIHOODS, DecoderLikelihood, check_input, image_shape
from vaekit.nn import ResidualLayer, check_min_size, halving_sizes, transpose_output_padding
from vaekit.quantize import VectorQuantizer


class VQVAEOutput(tuple):
    """Unpacks as PyTorch-VAE's ``recons, input, vq_loss``; ``.indices`` ``[B, h, w]`` and
    ``.perplexity`` of the batch's codes by name."""

    recons: Tensor
    input: Tensor
    vq_loss: Tensor
    indices: Tensor
    perplexity: Tensor

    def __new__(cls, recons: Tensor, input: Tensor, vq_loss: Tensor, indices: Tensor, perplexity: Tensor):
        self = super().__new__(cls, (recons, input, vq_loss))
        self.recons, self.input, self.vq_loss = recons, input, vq_loss
        self.indices, self.perplexity = indices, perplexity
        return self


class VQVAE(Pretrained, nn.Module):
    """Encoder → vector quantizer → decoder, any channels and image size.

    Encoder: per hidden dim a 4×4 stride-2 conv + LeakyReLU, a 3×3 conv, ``num_residual_layers``
    residual blocks, a 1×1 conv to ``embedding_dim``. Decoder: the mirror image, ending in Tanh
    (``likelihood="gaussian"``, data in [-1, 1]) or logits (``"bernoulli"``, data in [0, 1]).
    Unlike PyTorch-VAE, no LeakyReLU follows the last 1×1 conv: it would confine the codes to a
    half-space for no benefit. Weight count is unchanged by that.

    Objective (paper eq. 3, per example): ``−log p(x|z_q) + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²``,
    both norms summed over the latent map. ``loss_function(..., M_N=w)`` gives PyTorch-VAE's
    objective instead (pixel-mean MSE + element-mean VQ loss), kept for compatibility.
    """

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int = 64,
        num_embeddings: int = 512,
        hidden_dims: Sequence[int] | None = None,
        beta: float = 0.25,
        image_size: int | Sequence[int] = 64,
        num_residual_layers: int = 6,
        likelihood: str = "gaussian",
        sigma: float = 0.1,
        ema: bool = False,
        decay: float = 0.99,
        kmeans_init: bool = False,
        restart_dead_codes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if "img_size" in kwargs:  # PyTorch-VAE's name for image_size
            image_size = kwargs.pop("img_size")
        unknown = sorted(set(kwargs) - {"name"})
        if unknown:
            raise TypeError(f"VQVAE got unexpected keyword arguments {unknown}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        hidden_dims = list(hidden_dims) if hidden_dims is not None else [128, 256]
        channels, height, width = image_shape(in_channels, image_size)
        num_layers = len(hidden_dims)
        check_min_size("VQVAE", height, width, 2**num_layers, f"{num_layers} stride-2 layers")
        self.config = {
            "in_channels": channels,
            "embedding_dim": embedding_dim,
            "num_embeddings": num_embeddings,
            "hidden_dims": hidden_dims,
            "beta": beta,
            "image_size": [height, width],
            "num_residual_layers": num_residual_layers,
            "likelihood": likelihood,
            "sigma": sigma,
            "ema": ema,
            "decay": decay,
            "kmeans_init": kmeans_init,
            "restart_dead_codes": restart_dead_codes,
        }
        self.embedding_dim, self.num_embeddings, self.beta = embedding_dim, num_embeddings, beta
        self.input_shape = (channels, height, width)
        heights = halving_sizes(height, num_layers, ceil=False)  # 4×4, stride 2, padding 1: n -> ⌊n/2⌋
        widths = halving_sizes(width, num_layers, ceil=False)
        self.latent_shape = (embedding_dim, heights[-1], widths[-1])

        layers: list[nn.Module] = []
        c_in = channels
        for h_dim in hidden_dims:
            layers += [nn.Conv2d(c_in, h_dim, kernel_size=4, stride=2, padding=1), nn.LeakyReLU()]
            c_in = h_dim
        layers += [nn.Conv2d(c_in, c_in, kernel_size=3, padding=1), nn.LeakyReLU()]
        layers += [ResidualLayer(c_in) for _ in range(num_residual_layers)]
        layers += [nn.LeakyReLU(), nn.Conv2d(c_in, embedding_dim, kernel_size=1)]
        self.encoder = nn.Sequential(*layers)

        self.vq_layer = VectorQuantizer(
            num_embeddings,
            embedding_dim,
            beta,
            ema=ema,
            decay=decay,
            kmeans_init=kmeans_init,
            restart_dead_codes=restart_dead_codes,
        )

        def up(c_from: int, c_to: int, level: int) -> nn.ConvTranspose2d:
            pad = tuple(
                transpose_output_padding(sizes[level], sizes[level + 1], kernel=4, padding=1)
                for sizes in (heights, widths)
            )
            return nn.ConvTranspose2d(c_from, c_to, 4, stride=2, padding=1, output_padding=pad)

        top = hidden_dims[-1]
        layers = [nn.Conv2d(embedding_dim, top, kernel_size=3, padding=1), nn.LeakyReLU()]
        layers += [ResidualLayer(top) for _ in range(num_residual_layers)]
        layers.append(nn.LeakyReLU())
        reversed_dims = hidden_dims[::-1]
        for i in range(num_layers - 1):
            layers += [up(reversed_dims[i], reversed_dims[i + 1], num_layers - 1 - i), nn.LeakyReLU()]
        layers.append(up(reversed_dims[-1], channels, 0))
        layers.append(nn.Tanh() if likelihood == "gaussian" else nn.Identity())
        self.decoder = nn.Sequential(*layers)
        self.likelihood = DecoderLikelihood(likelihood, sigma, False, (channels, 1, 1))

    def encode(self, input: Tensor) -> list[Tensor]:
        """``[B, C, H, W] -> [z_e]`` with z_e ``[B, D, h, w]`` (before quantization)."""
        check_input(self, input, self.input_shape)
        return [self.encoder(input)]

    def decode(self, z: Tensor) -> Tensor:
        """``[B, D, h, w] -> [B, C, H, W]``: Gaussian mean or Bernoulli logits."""
        return self.decoder(z)

    def forward(self, input: Tensor, **kwargs: Any) -> VQVAEOutput:
        encoding = self.encode(input)[0]
        quantized = self.vq_layer(encoding)
        return VQVAEOutput(
            self.decode(quantized.quantized), input, quantized.loss, quantized.indices, quantized.perplexity
        )

    def loss_function(self, *args: Tensor, M_N: float | None = None, **kwargs: Any) -> dict:
        """``'loss'``, ``'Reconstruction_Loss'`` and ``'VQ_Loss'`` from ``forward``'s outputs.

        Without ``M_N``: nats per example — ``−log p(x|z_q)`` summed over pixels, plus the
        quantizer's loss summed over the latent map (its element mean × D·h·w). With ``M_N``
        (passed by PyTorch-VAE's experiment to every model, unused by its VQ-VAE): PyTorch-VAE's
        ``mse_loss(recons, input) + vq_loss`` with element means.
        """
        recons, input, vq_loss = args[:3]
        if M_N is not None:
            recons_loss = F.mse_loss(self.likelihood.mean(recons), input)
        else:
            recons_loss = -self.likelihood.log_prob(input, recons).mean()
            latent_elements = self.latent_shape[0] * self.latent_shape[1] * self.latent_shape[2]
            vq_loss = vq_loss * latent_elements
        return {
            "loss": recons_loss + vq_loss,
            "Reconstruction_Loss": recons_loss.detach(),
            "VQ_Loss": vq_loss.detach(),
        }

    def encode_indices(self, x: Tensor) -> Tensor:
        """The code index of every latent position: ``[B, C, H, W] -> [B, h, w]`` (long)."""
        z_e = self.encode(x)[0]  # [B, D, h, w]
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)  # [B·h·w, D]
        return self.vq_layer.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images from code indices: ``[B, h, w] -> [B, C, H, W]`` (the decoder's mean)."""
        return self.likelihood.mean(self.decode(self.vq_layer.codes_to_latents(indices)))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Quantize and decode x: the deterministic reconstruction, as an image."""
        return self.decode_indices(self.encode_indices(x))

    def generate(self, x: Tensor, **kwargs: Any) -> Tensor:
        """The reconstruction of x (quantization is deterministic), as an image."""
        return self.likelihood.mean(self.forward(x)[0])

    def sample(self, num_samples: int, current_device: Any = None, **kwargs: Any) -> Tensor:
        """Not possible yet: a VQ-VAE samples by drawing code maps from a learned prior."""
        raise NotImplementedError(
            "VQVAE.sample needs a prior over code indices (e.g. a PixelCNN fitted to encode_indices "
            "of the training data), and vaekit has none yet; decode chosen codes with decode_indices()"
        )
