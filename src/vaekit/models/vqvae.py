"""The VQ-VAE of van den Oord et al. (2017), laid out like PyTorch-VAE's ``VQVAE``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.errors import NoPriorError
from vaekit.models.base import (
    LABELS,
    PYTORCH_VAE_LOSS_KEYWORDS,
    AutoEncoder,
    Model,
    capture_config,
    check_input,
    image_shape,
    warn_ignored,
)
from vaekit.models.likelihood import DecoderLikelihood
from vaekit.models.pytorch_vae import convert_vqvae_state_dict, vqvae_kwargs_from_state_dict
from vaekit.nn import ResidualLayer, check_min_size, halving_sizes, upsampling_conv
from vaekit.outputs import NamedOutput
from vaekit.quantize import VectorQuantizer, perplexity


class VQVAEOutput(NamedOutput):
    """What ``VQVAE.forward`` returns. Its first three elements are PyTorch-VAE's ``recons, input,
    vq_loss``; the rest are what ``loss_function`` needs for the objective in nats and its statistics,
    kept in the tuple so that ``model.loss_function(*model(x))`` and DataParallel's gather see them."""

    recons: Tensor  # decoder output: Gaussian mean or Bernoulli logits, like input
    input: Tensor
    vq_loss: Tensor  # 0-dim: the seed's element mean β·mse(sg[e], z_e) + mse(e, sg[z_e])
    vq_loss_per_example: Tensor  # [B]: the same terms summed over each latent map
    indices: Tensor  # [B, h, w] long: the code chosen at every latent position

    @property
    def perplexity(self) -> Tensor:
        """exp(entropy) of the batch's code use (0-dim)."""
        return perplexity(torch.bincount(self.indices.flatten()))


class VQVAE(AutoEncoder):
    """Encoder → vector quantizer → decoder, any channels and image size.

    Encoder: per hidden dim a 4×4 stride-2 conv + LeakyReLU, a 3×3 conv, ``num_residual_layers``
    residual blocks, a 1×1 conv to ``embedding_dim``. Decoder: the mirror image, ending in Tanh
    (``likelihood="gaussian"``, data in [-1, 1]) or logits (``"bernoulli"``, data in [0, 1]).
    Unlike PyTorch-VAE, no LeakyReLU follows the last 1×1 conv: it would confine the codes to a
    half-space for no benefit. ``final_encoder_activation=True`` puts it back (it has no weights),
    which :meth:`from_pytorch_vae` uses to reproduce a PyTorch-VAE model.

    Objective (paper eq. 3, per example): ``−log p(x|z_q) + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖²``,
    both norms summed over the latent map (:func:`vaekit.losses.vq_latent_loss`).
    ``loss_function(..., M_N=w)`` gives PyTorch-VAE's objective instead (pixel-mean MSE +
    element-mean VQ loss), kept for compatibility.

    Without a prior over its codes a VQ-VAE cannot sample: :meth:`sample` raises
    :class:`~vaekit.errors.NoPriorError` (also a ``Warning``, which PyTorch-VAE's experiment catches).
    """

    registry_name = "vqvae"
    latent_type: ClassVar[str] = "discrete"
    no_prior_message: ClassVar[str] = (
        "VQVAE has no prior over its codes to sample from: a VQ-VAE samples by decoding code maps "
        "drawn from a prior fitted to the codes of the training data — train one with `vaekit "
        "train-prior RUN` (a gated PixelCNN) and load the run, or attach_prior() one; until then use "
        "reconstruct(), interpolation, or decode_indices() with chosen codes"
    )
    log_px_note: ClassVar[str | None] = (
        "a VQ-VAE's q(z|x) is one code map, so importance sampling returns the bound "
        "log p(x|z_q) + log p(z_q) of the VQ-VAE paper whatever k is (standard error 0)"
    )

    @capture_config
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
        dead_code_window: int | None = 100,
        final_encoder_activation: bool = False,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims) if hidden_dims is not None else [128, 256]
        channels, height, width = image_shape(in_channels, image_size)
        num_layers = len(hidden_dims)
        check_min_size("VQVAE", height, width, 2**num_layers, f"{num_layers} stride-2 layers")
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
        if final_encoder_activation:  # PyTorch-VAE's layout
            layers.append(nn.LeakyReLU())
        self.encoder = nn.Sequential(*layers)

        self.vq_layer = VectorQuantizer(
            num_embeddings,
            embedding_dim,
            beta,
            ema=ema,
            decay=decay,
            kmeans_init=kmeans_init,
            restart_dead_codes=restart_dead_codes,
            dead_code_window=dead_code_window,
        )

        def up(c_from: int, c_to: int, level: int) -> nn.ConvTranspose2d:  # level+1 -> level
            target, source = (heights[level], widths[level]), (heights[level + 1], widths[level + 1])
            return upsampling_conv(c_from, c_to, 4, target, source)

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
        warn_ignored(self, "forward", kwargs, silently=LABELS)
        quantized = self.vq_layer(self.encode(input)[0])
        return VQVAEOutput(
            self.decode(quantized.quantized),
            input,
            quantized.loss,
            quantized.loss_per_example,
            quantized.indices,
        )

    def loss_function(
        self, *args: Tensor, M_N: float | None = None, beta: float = 1.0, **kwargs: Any
    ) -> dict[str, Tensor]:
        """``'loss'``, ``'Reconstruction_Loss'``, ``'VQ_Loss'`` and the batch's code statistics
        (``'perplexity'``, ``'codebook_usage'``: the fraction of the K codes used) from ``forward``'s
        outputs, computed in float32.

        Without ``M_N``: nats per example — ``−log p(x|z_q)`` summed over pixels plus
        ``vq_loss_per_example``, averaged over the batch. With ``M_N`` (passed by PyTorch-VAE's
        experiment to every model, unused by its VQ-VAE): PyTorch-VAE's ``mse_loss(recons, input) +
        vq_loss`` with element means. ``beta`` would weigh a KL term: under a uniform prior over
        deterministic codes KL(q(z|x) ‖ p(z)) is the constant h·w·log K, left out, so β changes nothing.
        """
        warn_ignored(self, "loss_function", kwargs, silently=PYTORCH_VAE_LOSS_KEYWORDS)
        recons, input, vq_loss = (t.float() for t in args[:3])
        if M_N is not None:
            recons_loss = F.mse_loss(self.likelihood.mean(recons), input)
        elif len(args) < 5:
            raise ValueError(
                "VQVAE.loss_function needs all of forward's outputs for the objective in nats — call "
                "model.loss_function(*model(x)) — or M_N=… for PyTorch-VAE's element-mean objective"
            )
        else:
            recons_loss = -self.likelihood.log_prob(input, recons).mean()
            vq_loss = args[3].float().mean()
        terms = {
            "loss": recons_loss + vq_loss,
            "Reconstruction_Loss": recons_loss.detach(),
            "VQ_Loss": vq_loss.detach(),
        }
        if len(args) >= 5:
            counts = torch.bincount(args[4].flatten(), minlength=self.num_embeddings)  # [K]
            terms["perplexity"] = perplexity(counts)
            terms["codebook_usage"] = (counts > 0).float().mean()
        return terms

    # -- codes -------------------------------------------------------------------------------------
    def quantize_indices(self, z_e: Tensor) -> Tensor:
        """The nearest code at every latent position: ``[B, D, h, w] -> [B, h, w]`` (long)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)  # [B·h·w, D]
        return self.vq_layer.nearest_codes(flat).view(z_e.shape[0], *z_e.shape[2:])

    def encode_indices(self, x: Tensor) -> Tensor:
        """The code index of every latent position: ``[B, C, H, W] -> [B, h, w]`` (long)."""
        return self.quantize_indices(self.latent(x))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images from code indices: ``[B, h, w] -> [B, C, H, W]`` (the decoder's mean)."""
        return self.likelihood.mean(self.decode(self.vq_layer.codes_to_latents(indices)))

    # -- the autoencoder contract ----------------------------------------------------------------
    def decode_latent(self, z: Tensor) -> Tensor:
        """Images from encoder outputs z_e ``[B, D, h, w]``, each position replaced by its nearest
        code first (so every frame of an interpolation is made of real codes)."""
        return self.decode_indices(self.quantize_indices(z))

    def encode_latents(self, x: Tensor) -> dict[str, Tensor]:
        """The code indices, ``[B, h, w]``."""
        return {"indices": self.encode_indices(x)}

    # -- the prior over codes ------------------------------------------------------------------------
    @property
    def code_prior(self) -> Model | None:
        """The model of code maps that :meth:`sample` draws from (:meth:`attach_prior`), or None."""
        return self.__dict__.get("_code_prior")

    def attach_prior(self, prior: Model | None) -> VQVAE:
        """Sample, and bound log p(x), with ``prior``: a model of this VQ-VAE's code maps, e.g. the
        gated PixelCNN ``vaekit train-prior`` trains (``input_kind == "codes"``, this codebook size
        and latent grid). None detaches it.

        The prior has its own config and checkpoint (``RUN/prior/``), so it is held beside the
        VQ-VAE rather than inside it: not among its parameters, nor in its state dict or config
        (``save_pretrained`` writes the VQ-VAE alone); it follows it in ``.to()`` and ``.train()``.
        """
        if prior is not None:
            size = prior.config.get("image_size")
            grid = tuple(image_shape(1, size)[1:]) if size is not None else None
            found = (prior.input_kind, prior.config.get("num_embeddings"), grid)
            expected = ("codes", self.num_embeddings, tuple(self.latent_shape[1:]))
            if found != expected:
                raise ValueError(
                    f"a prior for this VQ-VAE models codes of {expected[1]} entries on a {expected[2]} "
                    f"grid; got a {type(prior).__name__} of (input, codes, grid) = {found}"
                )
            prior.to(self._device()).train(self.training)
        object.__setattr__(self, "_code_prior", prior)  # not a submodule: see the docstring
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> VQVAE:
        super()._apply(fn, recurse)
        if self.code_prior is not None:
            self.code_prior._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> VQVAE:
        super().train(mode)
        if self.code_prior is not None:
            self.code_prior.train(mode)
        return self

    @property
    def can_sample(self) -> bool:
        return self.code_prior is not None

    @property
    def estimates_log_px(self) -> bool:  # type: ignore[override]
        return self.code_prior is not None

    @property
    def num_classes(self) -> int:
        return self.code_prior.num_classes if self.code_prior is not None else 0

    def sample(
        self,
        num_samples: int,
        current_device: Any = None,
        *,
        generator: torch.Generator | None = None,
        labels: Tensor | int | None = None,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        """Code maps drawn from the prior, decoded: images ``[n, C, H, W]`` (the decoder's mean).

        ``labels`` go to the prior: a class-conditional one given None cycles through its classes, so
        the samples follow the marginal (1/C) Σ_y p(z|y). Without a prior: :class:`NoPriorError`.
        """
        if self.code_prior is None:
            raise NoPriorError(self.no_prior_message)
        warn_ignored(self, "sample", kwargs)
        codes = self.code_prior.sample(
            num_samples, generator=generator, labels=labels, temperature=temperature
        )
        images = self.decode_indices(codes.to(self._device()))  # [n, h, w] -> [n, C, H, W]
        return images if current_device is None else images.to(current_device)

    def prior_log_prob(self, codes: Tensor) -> Tensor:
        """log p(z) of code maps ``[B, h, w]`` under the prior, ``[B]``; a class-conditional prior is
        marginalised over uniform labels: ``log (1/C) Σ_y p(z|y)``."""
        prior = self.code_prior
        if prior is None:
            raise NoPriorError(self.no_prior_message)
        if not prior.num_classes:
            return prior.log_prob(codes)
        per_class = torch.stack(  # [C, B]
            [
                prior.log_prob(codes, labels=torch.full_like(codes[:, 0, 0], y))
                for y in range(prior.num_classes)
            ]
        )
        return torch.logsumexp(per_class, dim=0) - math.log(prior.num_classes)

    def elbo(
        self, x: Tensor, num_samples: int = 1, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """The bound of the VQ-VAE paper per example, in nats: ``log p(x|z_q) + β log p(z_q)``.

        q(z|x) puts all its mass on the nearest codes z_q, so its entropy is 0 and
        KL(q ‖ p) = −log p(z_q). Needs a prior (:meth:`attach_prior`); ``num_samples`` changes
        nothing, the posterior being one point; nothing is drawn (``generator`` is not used).
        """
        codes = self.encode_indices(x)  # [B, h, w]
        recons = self.decode(self.vq_layer.codes_to_latents(codes))
        return self.likelihood.log_prob(x, recons) + beta * self.prior_log_prob(codes)

    @torch.no_grad()
    def log_px(
        self,
        x: Tensor,
        num_samples: int = 1000,
        chunk_size: int = 500,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`elbo` and a standard error of 0: with q(z|x) a single code map as the proposal,
        every importance weight is p(x, z_q)/1, so the estimate is the bound for any k."""
        bound = self.elbo(x)
        return bound, torch.zeros_like(bound)

    # -- PyTorch-VAE ---------------------------------------------------------------------------------
    @classmethod
    def from_pytorch_vae(
        cls, state_dict: Mapping[str, Tensor], image_size: int | Sequence[int] = 64, **kwargs: Any
    ) -> VQVAE:
        """The model of a PyTorch-VAE ``VQVAE`` state dict, computing what that model computes.

        The architecture (channels, hidden dims, codebook, residual layers) is read off the state
        dict; the image size cannot be and defaults to PyTorch-VAE's 64. The encoder keeps
        PyTorch-VAE's final LeakyReLU (``final_encoder_activation=True``). ``kwargs`` override
        constructor arguments (e.g. ``beta``).
        """
        params = vqvae_kwargs_from_state_dict(state_dict)
        params.update(image_size=image_size, final_encoder_activation=True, **kwargs)
        model = cls(**params)
        model.load_state_dict(convert_vqvae_state_dict(state_dict))
        return model
