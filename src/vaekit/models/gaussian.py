"""The base of the VAEs whose latent is Gaussian: q(z|x) = N(μ(x), diag σ²(x)), p(z) = N(0, I) or a
VampPrior. Subclasses (``VanillaVAE``, ``ConvVAE``, ``MLPVAE``, ``LinearGaussianVAE``) define
``encode``, ``decode`` and ``input_shape``.

What differs from the seed (PyTorch-VAE), on purpose:

* ``loss_function`` without the seed's ``M_N`` keyword returns the negative ELBO in nats per
  example for the model's own likelihood; with ``M_N`` it computes the seed's objective exactly
  (pixel-mean MSE + M_N · batch-mean KL), kept for compatibility.
* ``'KLD'`` is the positive divergence KL(q(z|x) ‖ p(z)); the seed logs its negative.
* ``sample`` and ``generate`` return images (the decoder's mean), also for a Bernoulli decoder
  whose ``decode`` returns logits.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit.compiling import compile_for_scoring
from vaekit.data.ranges import DATA_RANGE
from vaekit.losses import (
    diagonal_gaussian_log_prob,
    elbo,
    estimate_log_px,
    gaussian_kl,
    gaussian_mixture_log_prob,
    monte_carlo_kl,
    reparameterize,
    standard_normal_log_prob,
)
from vaekit.models.base import LABELS, PYTORCH_VAE_LOSS_KEYWORDS, AutoEncoder, warn_ignored
from vaekit.nn import permute_pixels
from vaekit.outputs import NamedOutput
from vaekit.priors import PRIORS, VampPrior, sample_mixture


class VAEOutput(NamedOutput):
    """What a Gaussian-latent VAE's ``forward`` returns; unpacks as the seed's
    ``recons, input, mu, log_var``."""

    recons: Tensor  # decoder output: the mean (Gaussian) or the logits (Bernoulli), like input
    input: Tensor
    mu: Tensor  # [B, latent_dim]
    log_var: Tensor  # [B, latent_dim]


class GaussianLatentVAE(AutoEncoder):
    """A VAE with a diagonal-Gaussian posterior; subclasses define ``encode``, ``decode``, ``input_shape``."""

    latent_type: ClassVar[str] = "gaussian"
    estimates_log_px: ClassVar[bool] = True
    latent_dim: int

    # -- the seed's interface --------------------------------------------------------------------
    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z = μ + σ ⊙ ε, ε ~ N(0, I): ``[B, D] -> [B, D]``."""
        return reparameterize(mu, logvar)

    def forward(self, input: Tensor, **kwargs: Any) -> VAEOutput:
        warn_ignored(self, "forward", kwargs, silently=LABELS)
        mu, log_var = self.encode(input)
        z = self.reparameterize(mu, log_var)
        return VAEOutput(self.decode(z), input, mu, log_var)

    def loss_function(
        self, *args: Tensor, M_N: float | None = None, beta: float = 1.0, **kwargs: Any
    ) -> dict[str, Tensor]:
        """The training objective from ``forward``'s outputs, computed in float32.

        Without ``M_N``: ``loss = mean_b[−log p(x_b|z_b) + β·KL_b]``, the negative (β-)ELBO in nats
        per example; ``'Reconstruction_Loss'`` is the mean −log p(x|z), ``'KLD'`` the mean KL ≥ 0,
        ``'ELBO'`` the mean ELBO (β = 1), all in nats per example. The KL is
        :meth:`kl_divergence`'s: exact under N(0, I), an unbiased one-sample estimate under a
        VampPrior.

        With ``M_N`` (the seed's keyword): the seed's objective, exactly —
        ``mse_loss(mean(recons), input) + M_N · mean_b KL_b`` with a *pixel-mean* MSE, which is
        not a likelihood and makes M_N compensate for the image size. Kept for compatibility.
        """
        warn_ignored(self, "loss_function", kwargs, silently=PYTORCH_VAE_LOSS_KEYWORDS)
        recons, input, mu, log_var = (t.float() for t in args[:4])  # bf16 autocast outputs too
        kl = self.kl_divergence(mu, log_var)  # [B]
        if M_N is not None:
            recons_loss = F.mse_loss(self.likelihood.mean(recons), input)
            kld = kl.mean()
            loss = recons_loss + M_N * kld
            return {"loss": loss, "Reconstruction_Loss": recons_loss.detach(), "KLD": kld.detach()}
        log_px_z = self.likelihood.log_prob(input, recons)  # [B]
        loss = (beta * kl - log_px_z).mean()
        return {
            "loss": loss,
            "Reconstruction_Loss": -log_px_z.mean().detach(),
            "KLD": kl.mean().detach(),
            "ELBO": (log_px_z - kl).mean().detach(),
        }

    @property
    def can_sample(self) -> bool:
        return True

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
        """Decode z ~ p(z) (N(0, I), or the VampPrior) to images (the decoder's mean); ``temperature``
        T draws from the prior with its standard deviations times T. An unconditional model ignores
        ``labels``."""
        warn_ignored(self, "sample", kwargs)
        z = self.sample_latent(num_samples, generator=generator, temperature=temperature)
        if current_device is not None:
            z = z.to(current_device)
        return self.likelihood.mean(self.decode(z))

    # -- the autoencoder contract ----------------------------------------------------------------
    def encode_latents(self, x: Tensor) -> dict[str, Tensor]:
        """μ(x) and log σ²(x), each ``[B, latent_dim]``."""
        mu, log_var = self.encode(x)
        return {"mu": mu, "log_var": log_var}

    def extra_pictures(self, num: int) -> dict[str, Tensor]:
        """A VampPrior's first ``num`` pseudo-inputs; nothing for N(0, I)."""
        if self.vamp_prior is None:
            return {}
        return {"pseudo-inputs": self.vamp_prior.inputs()[:num].detach()}

    def elbo(
        self, x: Tensor, num_samples: int = 1, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-example ELBO in nats, ``[B]``, with the reconstruction term averaged over
        ``num_samples`` draws z⁽ˡ⁾ ~ q(z|x) (AEVB eq. 10); the draws from ``generator`` if given (on
        the model's device), else from torch's global one."""
        mu, log_var = self.encode(x)
        z = reparameterize(mu, log_var, num_samples, generator=generator)  # [L, B, D]
        return elbo(self._log_px_given_z(x, z), self.kl_divergence(mu, log_var, generator), beta)

    @torch.no_grad()
    def log_px(
        self,
        x: Tensor,
        num_samples: int = 1000,
        chunk_size: int = 500,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Importance-sampled log p(x) per example and its standard error, q(z|x) as proposal.

        x is encoded once; the k samples are drawn in chunks (:func:`vaekit.losses.estimate_log_px`),
        from ``generator`` if given (on the model's device), else from torch's global one.
        An estimate, not an objective: no graph is kept, so memory stays bounded by ``chunk_size``
        whatever k is (train on :func:`vaekit.losses.iwae_bound` instead). Put the model in
        ``eval()`` first if it has BatchNorm.
        """
        mu, log_var = self.encode(x)
        components = self.prior_components()  # the VampPrior's mixture, encoded once for all k
        order = self.scoring_pixel_order()
        x_scored = x if order is None else permute_pixels(x, order)  # once for all k

        def log_weights(n: int) -> Tensor:  # [n, B]
            # ε, drawn eagerly
            noise = torch.randn((n, *mu.shape), dtype=mu.dtype, device=mu.device, generator=generator)
            return self._log_weights(x_scored, mu, log_var, noise, components)

        return estimate_log_px(log_weights, num_samples, chunk_size)

    def _log_weights(
        self, x: Tensor, mu: Tensor, log_var: Tensor, noise: Tensor, components: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """The log-weights log p(x|z) + log p(z) − log q(z|x) at z = μ + σ ⊙ ε, ``noise`` ε ``[S, B, D]``
        -> ``[S, B]``; x with its pixels in :meth:`scoring_pixel_order`."""
        z = reparameterize(mu, log_var, noise=noise)  # [S, B, D]
        log_q = diagonal_gaussian_log_prob(z, mu, log_var)
        return self._log_px_given_z(x, z, scoring_order=True) + self.prior_log_prob(z, components) - log_q

    # -- the prior ---------------------------------------------------------------------------------
    def _init_prior(self, prior: str, num_pseudo_inputs: int) -> None:
        """Set up p(z): ``"standard"`` N(0, I), or ``"vamp"`` with ``num_pseudo_inputs`` learned
        pseudo-inputs in the data's range (call after ``self.likelihood`` and ``self.input_shape``)."""
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if prior == "vamp":
            self.prior = VampPrior(num_pseudo_inputs, self.input_shape, DATA_RANGE[self.likelihood.kind])

    @property
    def vamp_prior(self) -> VampPrior | None:
        """The VampPrior's pseudo-inputs, or None for the standard normal prior."""
        return self._modules.get("prior")  # type: ignore[return-value]

    def prior_components(self) -> tuple[Tensor, Tensor] | None:
        """The VampPrior's mixture components ``(μ_k, log σ_k²)``, each ``[K, D]``: the encoder at the
        pseudo-inputs. None for the standard normal prior."""
        if self.vamp_prior is None:
            return None
        mus, log_vars = self.encode(self.vamp_prior.inputs())
        return mus, log_vars

    def prior_log_prob(self, z: Tensor, components: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """log p(z), summed over the last dimension: ``[..., D] -> [...]``. ``components`` (from
        :meth:`prior_components`) saves encoding the pseudo-inputs again."""
        if self.vamp_prior is None:
            return standard_normal_log_prob(z)
        mus, log_vars = components if components is not None else self.prior_components()
        return gaussian_mixture_log_prob(z, mus, log_vars)

    def kl_divergence(self, mu: Tensor, log_var: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """KL(q(z|x) ‖ p(z)) per example, ``[B, D] -> [B]``: the closed form under N(0, I); under
        the VampPrior an unbiased one-sample estimate (:func:`vaekit.losses.monte_carlo_kl`), its
        sample drawn from ``generator`` if given."""
        if self.vamp_prior is None:
            return gaussian_kl(mu, log_var)
        z = reparameterize(mu, log_var, generator=generator)  # [B, D]
        return monte_carlo_kl(log_var, self.prior_log_prob(z))

    def sample_latent(
        self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """z ~ p(z), ``[num_samples, D]`` on the model's device; ``generator`` is a CPU generator.
        ``temperature`` T: N(0, T²I), or each VampPrior component's σ times T."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        device = self._device()
        components = self.prior_components()
        if components is None:
            return (temperature * torch.randn(num_samples, self.latent_dim, generator=generator)).to(device)
        mus, log_vars = components
        return sample_mixture(mus, log_vars + 2.0 * math.log(temperature), num_samples, generator=generator)

    def compile_scoring(self) -> None:
        """Compile all of one chunk's log-weights — decoder, likelihood, prior and proposal — as one
        graph (the normal draws stay outside, so the samples are eager's): on a CPU the elementwise
        passes cost about as much as the MLP decoder's matmuls, and fused they nearly vanish. A
        Bernoulli likelihood switches to its grouped-product form, which fuses into one pass."""
        self.likelihood.grouped_products = True
        self._log_weights = compile_for_scoring(self._log_weights, self._device())  # type: ignore[method-assign]

    def scoring_pixel_order(self) -> Tensor | None:
        """The order, as indices into an image's ``H·W`` pixels, in which :meth:`decode_in_scoring_order`
        gives each channel's pixels, or None for the image's own. log p(x|z) sums over pixels, so
        :meth:`log_px` puts x in this order once and scores every sample in it."""
        return None

    def decode_in_scoring_order(self, z: Tensor) -> Tensor:
        """:meth:`decode` with the pixels in :meth:`scoring_pixel_order`; by default that is decode."""
        return self.decode(z)

    def _log_px_given_z(self, x: Tensor, z: Tensor, scoring_order: bool = False) -> Tensor:
        """log p(x|z) for z ``[S, B, D]`` -> ``[S, B]``, decoding all S·B codes in one batch;
        ``scoring_order``: by :meth:`decode_in_scoring_order`, x already in that order."""
        num_samples, batch = z.shape[:2]
        codes = z.reshape(num_samples * batch, -1)  # [S·B, D]
        recons = self.decode_in_scoring_order(codes) if scoring_order else self.decode(codes)
        recons = recons.view(num_samples, batch, *recons.shape[1:])  # [S, B, ...]
        return self.likelihood.log_prob(x, recons)  # x broadcast over S, not copied: [S, B]
