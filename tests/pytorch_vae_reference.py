"""PyTorch-VAE (AntixK/PyTorch-VAE, master) re-implemented as the specification the compatibility
tests run against: its ``VQVAE`` and the calls its ``VAEXperiment`` / ``run.py`` make on a model.

Written for these tests, not copied. The classes reproduce PyTorch-VAE's module tree (so their
state dicts have its exact keys and shapes) and its computation; the functions make the same calls
on a model, in the same order and with the same keywords, as PyTorch-VAE's Lightning experiment,
without Lightning, TensorBoard or torchvision. What the original does that the tests do not need
(writing PNG files, logging) is left out and said so where it happens.

Module tree of ``VQVAE`` with ``n = len(hidden_dims)`` (default ``[128, 256]``) and its fixed six
residual layers, ``R = 6``::

    encoder.i            i < n     Sequential(Conv2d 4×4 stride 2 pad 1, LeakyReLU)
    encoder.n                      Sequential(Conv2d 3×3 pad 1, LeakyReLU)
    encoder.n+1 … n+R              ResidualLayer (resblock: Conv 3×3 no bias, ReLU, Conv 1×1 no bias)
    encoder.n+R+1                  LeakyReLU
    encoder.n+R+2                  Sequential(Conv2d 1×1 → embedding_dim, LeakyReLU)
    vq_layer.embedding             Embedding(num_embeddings, embedding_dim)
    decoder.0                      Sequential(Conv2d 3×3 embedding_dim → hidden_dims[-1], LeakyReLU)
    decoder.1 … R                  ResidualLayer
    decoder.R+1                    LeakyReLU
    decoder.R+2+i        i < n−1   Sequential(ConvTranspose2d 4×4 stride 2 pad 1, LeakyReLU)
    decoder.R+n+1                  Sequential(ConvTranspose2d 4×4 stride 2 pad 1 → 3 channels, Tanh)

Two quirks of the original are kept because they change the weights or the outputs: the decoder
always ends in 3 channels whatever ``in_channels`` is, and ``img_size`` is stored but unused. One is
not: the original reverses the caller's ``hidden_dims`` list in place; this copy leaves it alone.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seed_reference import SeedVanillaVAE


class RefResidualLayer(nn.Module):
    """``x + conv1×1(relu(conv3×3(x)))``, both convolutions without bias, under ``resblock``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.resblock = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.resblock(x)


class RefVectorQuantizer(nn.Module):
    """Nearest code by expanded squared distance, picked through a one-hot matrix product.

    Returns ``(z + sg[e − z], β·mse(sg[e], z) + mse(e, sg[z]))`` with the means over all elements.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.K, self.D, self.beta = num_embeddings, embedding_dim, beta
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1 / num_embeddings, 1 / num_embeddings)

    def forward(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        z = latents.permute(0, 2, 3, 1).contiguous()  # [B, H, W, D]
        flat = z.view(-1, self.D)  # [N, D]
        codebook = self.embedding.weight  # [K, D]
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        nearest = distances.argmin(1, keepdim=True)  # [N, 1]
        one_hot = torch.zeros(nearest.shape[0], self.K, device=latents.device).scatter_(1, nearest, 1)
        codes = (one_hot @ codebook).view(z.shape)  # [B, H, W, D]
        vq_loss = self.beta * F.mse_loss(codes.detach(), z) + F.mse_loss(codes, z.detach())
        straight_through = z + (codes - z).detach()
        return straight_through.permute(0, 3, 1, 2).contiguous(), vq_loss  # [B, D, H, W]


def _conv_block(conv: nn.Module, last: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(conv, last if last is not None else nn.LeakyReLU())


class RefVQVAE(nn.Module):
    """PyTorch-VAE's ``VQVAE``: same constructor, module tree, forward, loss and sample."""

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int,
        num_embeddings: int,
        hidden_dims: list[int] | None = None,
        beta: float = 0.25,
        img_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.embedding_dim, self.num_embeddings = embedding_dim, num_embeddings
        self.img_size, self.beta = img_size, beta
        dims = list(hidden_dims) if hidden_dims is not None else [128, 256]
        residual_layers = 6

        encoder: list[nn.Module] = []
        channels = in_channels
        for width in dims:
            encoder.append(_conv_block(nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1)))
            channels = width
        encoder.append(_conv_block(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)))
        encoder += [RefResidualLayer(channels, channels) for _ in range(residual_layers)]
        encoder.append(nn.LeakyReLU())
        encoder.append(_conv_block(nn.Conv2d(channels, embedding_dim, kernel_size=1, stride=1)))
        self.encoder = nn.Sequential(*encoder)

        self.vq_layer = RefVectorQuantizer(num_embeddings, embedding_dim, beta)

        top = dims[-1]
        decoder: list[nn.Module] = [
            _conv_block(nn.Conv2d(embedding_dim, top, kernel_size=3, stride=1, padding=1))
        ]
        decoder += [RefResidualLayer(top, top) for _ in range(residual_layers)]
        decoder.append(nn.LeakyReLU())
        upward = dims[::-1]
        for wide, narrow in itertools.pairwise(upward):
            decoder.append(_conv_block(nn.ConvTranspose2d(wide, narrow, kernel_size=4, stride=2, padding=1)))
        decoder.append(
            _conv_block(nn.ConvTranspose2d(upward[-1], 3, kernel_size=4, stride=2, padding=1), nn.Tanh())
        )
        self.decoder = nn.Sequential(*decoder)

    def encode(self, input: Tensor) -> list[Tensor]:
        return [self.encoder(input)]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, input: Tensor, **kwargs: Any) -> list[Tensor]:
        quantized, vq_loss = self.vq_layer(self.encode(input)[0])
        return [self.decode(quantized), input, vq_loss]

    def loss_function(self, *args: Tensor, **kwargs: Any) -> dict[str, Tensor]:
        """Pixel-mean MSE plus the quantizer's loss; ``M_N`` and every other keyword are ignored."""
        recons, input, vq_loss = args[0], args[1], args[2]
        recons_loss = F.mse_loss(recons, input)
        return {"loss": recons_loss + vq_loss, "Reconstruction_Loss": recons_loss, "VQ_Loss": vq_loss}

    def sample(self, num_samples: int, current_device: Any, **kwargs: Any) -> Tensor:
        raise Warning("VQVAE has no sampler")  # PyTorch-VAE raises the base Warning class here

    def generate(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.forward(x)[0]


class RefVanillaVAE(SeedVanillaVAE):
    """The seed's VanillaVAE (tests/seed_reference.py) with the methods the experiment calls.

    Like PyTorch-VAE's, it takes and ignores any other keyword (``name`` from the config), and it
    works only at 64×64 with ``hidden_dims[-1] == 512`` (its decoder reshapes to ``[-1, 512, 2, 2]``).
    """

    def __init__(
        self, in_channels: int, latent_dim: int, hidden_dims: list[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(in_channels, latent_dim, list(hidden_dims) if hidden_dims is not None else None)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, input: Tensor, **kwargs: Any) -> list[Tensor]:
        mu, log_var = self.encode(input)
        return [self.decode(self.reparameterize(mu, log_var)), input, mu, log_var]

    def sample(self, num_samples: int, current_device: Any, **kwargs: Any) -> Tensor:
        return self.decode(torch.randn(num_samples, self.latent_dim).to(current_device))

    def generate(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.forward(x)[0]


#: PyTorch-VAE's ``vae_models`` restricted to the models re-implemented here.
REFERENCE_MODELS = {"VanillaVAE": RefVanillaVAE, "VQVAE": RefVQVAE}


# --- run.py and experiment.py (VAEXperiment), without Lightning ------------------------------------


def build_model(config: dict[str, Any], registry: dict[str, Any] | None = None) -> nn.Module:
    """run.py: ``vae_models[config['model_params']['name']](**config['model_params'])``.

    The whole ``model_params`` dict, ``name`` included, goes to the constructor. ``registry``
    defaults to ``vaekit.vae_models``; pass :data:`REFERENCE_MODELS` to run PyTorch-VAE's own models.
    """
    if registry is None:
        from vaekit import vae_models as registry
    return registry[config["model_params"]["name"]](**config["model_params"])


def configure_optimizers(model: nn.Module, params: dict[str, Any]) -> tuple[Any, Any]:
    """VAEXperiment.configure_optimizers for one optimizer: Adam(LR, weight_decay) and, when
    ``scheduler_gamma`` is not None, an ExponentialLR stepped once per epoch (None otherwise).

    Note that ``scheduler_gamma: 0.0`` (PyTorch-VAE's vq_vae.yaml) is not None: the learning rate
    becomes 0 after the first epoch.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=params["LR"], weight_decay=params["weight_decay"])
    gamma = params.get("scheduler_gamma")
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma) if gamma is not None else None
    return optimizer, scheduler


def training_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    params: dict[str, Any],
    batch_idx: int = 0,
    optimizer_idx: int = 0,
) -> dict[str, Tensor]:
    """VAEXperiment.training_step; returns the loss dict (Lightning back-propagates its ``'loss'``).

    The experiment logs ``{key: val.item()}`` of every entry, so every value must be a one-element
    tensor; that conversion is done here too, so a model whose loss dict breaks it fails here.
    """
    real_img, labels = batch
    results = model(real_img, labels=labels)
    train_loss = model.loss_function(
        *results, M_N=params["kld_weight"], optimizer_idx=optimizer_idx, batch_idx=batch_idx
    )
    for value in train_loss.values():
        value.item()  # self.log_dict({key: val.item() for key, val in train_loss.items()})
    return train_loss


def validation_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    params: dict[str, Any],
    batch_idx: int = 0,
    optimizer_idx: int = 0,
) -> dict[str, float]:
    """VAEXperiment.validation_step under ``torch.no_grad()`` (as Lightning runs it); ``M_N`` is 1.0
    whatever the config says. Returns what the experiment logs: ``{"val_" + key: float}``
    (``val_loss`` is what its ModelCheckpoint monitors)."""
    real_img, labels = batch
    with torch.no_grad():
        results = model(real_img, labels=labels)
        val_loss = model.loss_function(*results, M_N=1.0, optimizer_idx=optimizer_idx, batch_idx=batch_idx)
    return {f"val_{key}": val.item() for key, val in val_loss.items()}


def sample_images(
    model: nn.Module, test_input: Tensor, test_label: Tensor, params: dict[str, Any] | None = None
) -> tuple[Tensor, Tensor | None]:
    """VAEXperiment.sample_images (run after each validation): ``generate`` for reconstructions,
    then ``sample(144, device, labels=...)`` for a 12×12 grid, skipped when it raises a ``Warning``.

    Returns ``(recons, samples)``, samples None when skipped; the original saves both as PNGs.
    """
    curr_device = test_input.device
    recons = model.generate(test_input, labels=test_label).data
    samples = None
    try:  # noqa: SIM105 -- kept in the form the experiment uses
        samples = model.sample(144, curr_device, labels=test_label).cpu().data
    except Warning:
        pass
    return recons, samples
