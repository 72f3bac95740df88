"""A linear-Gaussian VAE (probabilistic PCA), whose log p(x) and true posterior are exact.

Generative model (Tipping & Bishop 1999): z ~ N(0, I_d), x | z ~ N(Wz + b, σ² I_D), so
``p(x) = N(x; b, WWᵀ + σ² I)`` and the posterior is ``N(M⁻¹Wᵀ(x − b), σ² M⁻¹)`` with
``M = WᵀW + σ² I``. It is the reference against which the bounds and estimators are checked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vaekit.models.base import capture_config, check_input
from vaekit.models.gaussian import GaussianLatentVAE
from vaekit.models.likelihood import DecoderLikelihood


class LinearGaussianVAE(GaussianLatentVAE):
    """pPCA as a VAE: linear decoder with fixed σ, linear encoder μ = Ax + c, input-free log σ².

    Inputs are vectors ``[B, data_dim]``. The posterior is diagonal — so q can equal it — when the
    columns of W are orthogonal; :meth:`set_true_posterior` then makes the ELBO equal log p(x).
    """

    registry_name = "linear_gaussian_vae"

    @capture_config
    def __init__(self, data_dim: int, latent_dim: int, sigma: float = 1.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.input_shape = (data_dim,)
        self.decoder = nn.Linear(latent_dim, data_dim)  # weight W [D, d], bias b [D]
        self.encoder = nn.Linear(data_dim, latent_dim)  # A [d, D], c [d]
        self.encoder_log_var = nn.Parameter(torch.zeros(latent_dim))
        self.likelihood = DecoderLikelihood("gaussian", sigma, False, (data_dim,))
        self.sigma = sigma

    def encode(self, input: Tensor) -> list[Tensor]:
        check_input(self, input, self.input_shape)
        mu = self.encoder(input)
        return [mu, self.encoder_log_var.expand_as(mu)]

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x) = N(b, WWᵀ + σ²I), in float64."""
        weight = self.decoder.weight.double()  # [D, d]
        cov = weight @ weight.T + self.sigma**2 * torch.eye(weight.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.decoder.bias.double(), covariance_matrix=cov)

    def exact_log_px(self, x: Tensor) -> Tensor:
        """log p(x) in closed form, ``[B, D] -> [B]``."""
        return self.marginal().log_prob(x.double()).float()

    @torch.no_grad()
    def set_true_posterior(self) -> None:
        """Set the encoder to the exact posterior's mean map and (diagonal of its) variance."""
        weight = self.decoder.weight.double()  # [D, d]
        m = weight.T @ weight + self.sigma**2 * torch.eye(weight.shape[1], dtype=torch.float64)
        m_inv = torch.linalg.inv(m)
        self.encoder.weight.copy_(m_inv @ weight.T)  # A = M⁻¹Wᵀ
        self.encoder.bias.copy_(-(m_inv @ weight.T @ self.decoder.bias.double()))  # c = −A b
        self.encoder_log_var.copy_(torch.log(self.sigma**2 * torch.diagonal(m_inv)))

    @staticmethod
    def orthogonal_weight(data_dim: int, scales: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A ``[D, d]`` matrix with orthogonal columns of the given norms (diagonal posterior)."""
        q, _ = torch.linalg.qr(torch.randn(data_dim, len(scales), generator=generator, dtype=torch.float64))
        return (q * scales.double()).float()
