"""p(x|z): the decoder likelihoods of vaekit's image models, Bernoulli and Gaussian."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaekit.data.ranges import LIKELIHOODS
from vaekit.losses import bernoulli_log_likelihood, bernoulli_log_likelihood_grouped, gaussian_log_likelihood


class DecoderLikelihood(nn.Module):
    """p(x|z) of a factorised decoder: Bernoulli from logits, or Gaussian with fixed/learned σ.

    For a Gaussian the decoder's output is the mean (in [-1, 1] behind a Tanh, like the seed);
    ``log σ`` is a fixed buffer, or a learned parameter of shape ``scale_shape`` (one per channel).
    ``kind`` also names the data's value range (:data:`vaekit.data.ranges.DATA_RANGE`).
    """

    def __init__(self, kind: str, sigma: float, learn_sigma: bool, scale_shape: Sequence[int]) -> None:
        super().__init__()
        if kind not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {kind!r}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.kind = kind
        #: Bernoulli: sum the softplus terms as logs of grouped products
        #: (:func:`vaekit.losses.bernoulli_log_likelihood_grouped`); set by ``compile_scoring``.
        self.grouped_products = False
        log_sigma = torch.full(tuple(scale_shape), math.log(sigma))
        if kind == "gaussian" and learn_sigma:
            self.log_scale = nn.Parameter(log_sigma)
        else:
            # fixed σ comes from the config, so it stays out of the state dict: a seed (PyTorch-VAE)
            # state dict loads strictly
            self.register_buffer("log_scale", log_sigma, persistent=False)

    def log_prob(self, x: Tensor, recons: Tensor) -> Tensor:
        """log p(x|z) per example ``[B]`` (see :mod:`vaekit.losses`)."""
        if self.kind == "bernoulli":
            if self.grouped_products:
                return bernoulli_log_likelihood_grouped(x, recons)
            return bernoulli_log_likelihood(x, recons)
        return gaussian_log_likelihood(x, recons, self.log_scale)

    def mean(self, recons: Tensor) -> Tensor:
        """E[x|z]: the image the decoder stands for."""
        return torch.sigmoid(recons) if self.kind == "bernoulli" else recons
