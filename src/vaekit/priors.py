"""Priors p(z) over a VAE's latents: the standard normal, and the VampPrior (Tomczak & Welling 2018).

A VampPrior is the mixture of the model's own posteriors at K learned *pseudo-inputs* u_k,

    p(z) = (1/K) Σ_k q(z | u_k),

so it needs the encoder: the module here only owns the pseudo-inputs; the VAE encodes them
(:meth:`vaekit.models.VAE.prior_components`) and evaluates the mixture with
:func:`vaekit.losses.gaussian_mixture_log_prob`. The KL term of the ELBO has no closed form under
a mixture, so the VAE estimates it by Monte Carlo (:func:`vaekit.losses.monte_carlo_kl`).

Reference: Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018 (arXiv:1705.07120).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRIORS = ("standard", "vamp")


class VampPrior(nn.Module):
    """The K learned pseudo-inputs of a VampPrior, ``[K, *input_shape]``, kept inside ``data_range``.

    They are stored unconstrained and clipped by a hard tanh to the data's range when used (as in
    the paper's code), starting near the low end of the range: N(lo + 0.05·(hi − lo), (0.01·(hi − lo))²),
    the paper's initialisation for binary images.
    """

    def __init__(
        self, num_components: int, input_shape: Sequence[int], data_range: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        if num_components < 1:
            raise ValueError(
                f"a VampPrior needs at least one pseudo-input, got num_pseudo_inputs={num_components}"
            )
        lo, hi = data_range
        self.data_range = (float(lo), float(hi))
        init = torch.randn(num_components, *input_shape) * (0.01 * (hi - lo)) + (lo + 0.05 * (hi - lo))
        self.pseudo_inputs = nn.Parameter(init)  # [K, C, H, W]

    @property
    def num_components(self) -> int:
        return self.pseudo_inputs.shape[0]

    def inputs(self) -> Tensor:
        """The pseudo-inputs u_k as images in the data's range: ``[K, C, H, W]``."""
        lo, hi = self.data_range
        return F.hardtanh(self.pseudo_inputs, lo, hi)


def sample_mixture(
    mus: Tensor, log_vars: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw z from (1/K) Σ_k N(μ_k, diag σ_k²): a uniform component, then its Gaussian.

    ``mus, log_vars: [K, D] -> [num_samples, D]``; ``generator`` (on the CPU) makes it repeatable.
    """
    k = torch.randint(mus.shape[0], (num_samples,), generator=generator).to(mus.device)
    eps = torch.randn(num_samples, mus.shape[1], generator=generator).to(mus.device, mus.dtype)
    return mus[k] + torch.exp(0.5 * log_vars[k]) * eps
