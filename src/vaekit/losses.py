"""The VAE's math as pure functions.

Convention everywhere: a log-density or divergence is **summed over the dimensions of one
example** and returned per example, shape ``[B]`` (or ``[S, B]`` with a leading sample axis).
Averaging over the batch is the caller's last step. Then β, "nats per example" and bits/dim mean
one thing at every image size and batch size — no magic weight compensates a per-pixel mean.

References: Kingma & Welling 2013 (AEVB, arXiv:1312.6114), Burda et al. 2016 (IWAE,
arXiv:1509.00519), Theis et al. 2016 (dequantization, arXiv:1511.01844).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def _sum_event(elementwise: Tensor, x: Tensor) -> Tensor:
    """Sum over the dimensions of one example of ``x`` (all but its first), keeping any leading
    sample dimensions that broadcasting added: ``[..., B, *event] -> [..., B]``."""
    return elementwise.flatten(start_dim=elementwise.dim() - (x.dim() - 1)).sum(dim=-1)


# --- Divergences --------------------------------------------------------------------------------


def gaussian_kl_elementwise(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) for each coordinate, no reduction.

    The closed form derived in ``docs/theory.md`` (AEVB appendix B)::

        KL = ½ (μ² + σ² − log σ² − 1),   σ² = exp(log_var)
    """
    return 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1.0)


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(q(z|x) ‖ p(z)) per example for a diagonal Gaussian q and p = N(0, I).

    ``KL = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1)``, summed over the latent dimensions.
    ``mu, log_var: [B, D] -> [B]``. Always ≥ 0; the seed's PyTorch-VAE logs its negative.
    """
    return gaussian_kl_elementwise(mu, log_var).sum(dim=-1)


# --- Log-densities ------------------------------------------------------------------------------


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x|z) of a factorised Bernoulli decoder with mean y = sigmoid(logits), per example.

    The seed's formula ``Σ_i x_i log y_i + (1 − x_i) log(1 − y_i)`` evaluated from logits ℓ as
    ``Σ_i x_i ℓ_i − softplus(ℓ_i)`` (equal to it, and finite for any ℓ). Targets x may lie
    anywhere in [0, 1] (the "continuous Bernoulli" use the seed mentions): then the value is a
    cross-entropy, not a normalised log-likelihood. ``x: [B, ...]``; ``logits: [B, ...]``, or
    ``[S, B, ...]`` for S decoder samples per example (x is broadcast, never copied) ``-> [B]``
    or ``[S, B]``.
    """
    return _sum_event(x * logits - F.softplus(logits), x)


#: :func:`bernoulli_log_likelihood_grouped`: products run along 16 lanes (one AVX-512 register of
#: float32) over at most 64 pixels each, so a product stays below 2⁶⁴ (float32 reaches 2¹²⁸).
PRODUCT_LANES, PRODUCT_MAX_FACTORS = 16, 64


def bernoulli_log_likelihood_grouped(x: Tensor, logits: Tensor) -> Tensor:
    """:func:`bernoulli_log_likelihood` with one ``log`` per group of pixels instead of one per pixel.

    With softplus(ℓ) = max(ℓ, 0) + log(1 + e^{−|ℓ|}), the sum of the last terms over a group g is
    the log of a product::

        log p(x|z) = Σ_i (x_i ℓ_i − max(ℓ_i, 0)) − Σ_g log Π_{i∈g} (1 + e^{−|ℓ_i|})

    Each factor lies in (1, 2], so a product of at most 64 stays finite in float32, and its rounding
    (≤ 64 ulp, relative) moves the result by ≤ 4·10⁻⁶ nats per product. Compiled, the whole sum is
    one pass over the logits with one exp per pixel; eager it is slower than the softplus form,
    which is why only :meth:`~vaekit.models.AutoEncoder.compile_scoring` turns it on. Falls back to
    that form when an example's size is not a multiple of 16 or the logits are not float32/float64
    (a product of 64 factors could overflow a half-precision type). Shapes as
    :func:`bernoulli_log_likelihood`.
    """
    size = x[0].numel()
    lanes = size // PRODUCT_LANES  # pixels per lane
    factors = next(f for f in range(PRODUCT_MAX_FACTORS, 0, -1) if lanes % f == 0)  # largest divisor ≤ 64
    if size % PRODUCT_LANES or logits.dtype not in (torch.float32, torch.float64) or factors < 8:
        return bernoulli_log_likelihood(x, logits)
    leading = logits.shape[: logits.dim() - x.dim() + 1]  # [..., B]
    grouped = (-1, factors, PRODUCT_LANES)  # [..., B, groups, factors, lanes]
    ell = logits.reshape(*leading, *grouped)
    target = x.reshape(x.shape[0], *grouped)
    linear = (target * ell - ell.clamp_min(0.0)).sum(dim=-2)  # [..., B, groups, lanes]
    products = (1.0 + torch.exp(-ell.abs())).prod(dim=-2)  # [..., B, groups, lanes], in [1, 2⁶⁴]
    return (linear - torch.log(products)).flatten(start_dim=-2).sum(dim=-1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float = 0.0) -> Tensor:
    """log N(x; mean, σ²) of a factorised Gaussian decoder, per example.

    ``Σ_i −½ log 2π − log σ_i − (x_i − mean_i)² / (2σ_i²)``, with ``log_scale = log σ`` fixed (a
    float) or learned (a tensor broadcastable to x, e.g. one per channel ``[C, 1, 1]``).
    ``x: [B, ...]``; ``mean: [B, ...]`` or ``[S, B, ...]`` ``-> [B]`` or ``[S, B]``.
    """
    log_scale = torch.as_tensor(log_scale, dtype=mean.dtype, device=mean.device)
    z = (x - mean) * torch.exp(-log_scale)
    elementwise = -0.5 * LOG_2PI - log_scale - 0.5 * z.pow(2)
    return _sum_event(elementwise.expand_as(z), x)


def categorical_log_likelihood(codes: Tensor, logits: Tensor) -> Tensor:
    """log p(codes) of a factorised categorical over K classes at every position, per example.

    ``Σ_i log softmax(ℓ_i)[c_i] = Σ_i (ℓ_{i,c_i} − logsumexp_k ℓ_{i,k})``, summed over the positions
    i of one example: the log-likelihood of a code map under an autoregressive prior whose logits at
    position i were computed from the codes before it (a PixelCNN's), in nats. Computed in the
    logits' dtype (pass float32 logits for float32 precision). ``codes: [B, ...]`` long in [0, K),
    ``logits: [B, K, ...]`` ``-> [B]``.
    """
    per_position = -F.cross_entropy(logits, codes, reduction="none")  # [B, ...]
    return per_position.reshape(per_position.shape[0], -1).sum(dim=1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension: ``−½ Σ_j (z_j² + log 2π)``."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def diagonal_gaussian_log_prob(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; μ, diag σ²), summed over the last dimension.

    ``−½ Σ_j (log 2π + log σ_j² + (z_j − μ_j)² / σ_j²)``; broadcasts over leading sample axes.
    """
    return -0.5 * (LOG_2PI + log_var + (z - mu).pow(2) * torch.exp(-log_var)).sum(dim=-1)


def gaussian_mixture_log_prob(z: Tensor, mus: Tensor, log_vars: Tensor) -> Tensor:
    """log p(z) of the equal-weight mixture p(z) = (1/K) Σ_k N(z; μ_k, diag σ_k²).

    ``log p(z) = logsumexp_k [−½ Σ_j (log 2π + log σ_kj² + (z_j − μ_kj)² / σ_kj²)] − log K``.

    The square is expanded, ``(z − μ)²/σ² = z²·σ⁻² − 2z·μσ⁻² + μ²σ⁻²``, so the [N, K] table of
    exponents costs two [N, D] × [D, K] matrix products instead of an [N, K, D] tensor (at
    evaluation N is a batch times a chunk of importance samples). The expansion cancels terms of
    size z²/σ², so it is done in float64 and returned in z's dtype, autocast or not (the tests hold
    it to torch.distributions within 1e-9 nats).
    ``z: [..., D]``; ``mus, log_vars: [K, D]`` ``-> [...]``.
    """
    shape, dtype = z.shape[:-1], z.dtype
    with torch.autocast(z.device.type, enabled=False):
        z64 = z.reshape(-1, z.shape[-1]).double()  # [N, D]
        mus64, log_vars64 = mus.double(), log_vars.double()  # [K, D]
        inv_var = torch.exp(-log_vars64)  # [K, D]
        constant = (mus64.pow(2) * inv_var + log_vars64 + LOG_2PI).sum(dim=-1)  # [K]
        quadratic = z64.pow(2) @ inv_var.T - 2.0 * (z64 @ (mus64 * inv_var).T)  # [N, K]
        log_components = -0.5 * (quadratic + constant)  # [N, K]
        log_p = torch.logsumexp(log_components, dim=-1) - math.log(mus.shape[0])  # [N]
    return log_p.to(dtype).reshape(shape)


def gaussian_entropy(log_var: Tensor) -> Tensor:
    """Entropy of N(μ, diag σ²), summed over the last dimension: ``½ Σ_j (1 + log 2π + log σ_j²)``."""
    return 0.5 * (1.0 + LOG_2PI + log_var).sum(dim=-1)


def monte_carlo_kl(log_var: Tensor, log_prior_z: Tensor) -> Tensor:
    """KL(q(z|x) ‖ p(z)) for a prior with no closed form, estimated from one z ~ q(z|x).

    ``KL = E_q[log q(z|x)] − E_q[log p(z)] ≈ −H[q(z|x)] − log p(z)``: the entropy of the diagonal
    Gaussian q is exact, only the cross term is sampled, so the estimate is unbiased and has less
    variance than ``log q(z) − log p(z)``. It can be negative for one sample; its mean cannot.
    ``log_var: [B, D]``, ``log_prior_z: [B]`` ``-> [B]``.
    """
    return -gaussian_entropy(log_var) - log_prior_z


# --- Vector quantization ------------------------------------------------------------------------


def vq_latent_loss(z_e: Tensor, z_q: Tensor, beta: float, codebook_term: bool = True) -> Tensor:
    """The latent terms of the VQ-VAE objective per example (van den Oord et al. 2017, eq. 3).

    ``‖sg[z_e] − e‖² + β ‖z_e − sg[e]‖²``, each squared norm summed over the latent map of one
    example (z_e the encoder output, e = z_q its nearest codes, sg the stop-gradient). The first,
    codebook term moves the codes toward the encoder outputs; the second, commitment term keeps
    the encoder near its codes. Both have the value ‖z_e − e‖², only their gradients differ. With
    an EMA codebook (the paper's appendix A.1) the codes follow moving averages instead, and only
    the commitment term is a loss (``codebook_term=False``). ``z_e, z_q: [B, ...] -> [B]``.
    """
    commitment = _sum_event((z_e - z_q.detach()).pow(2), z_e)
    if not codebook_term:
        return beta * commitment
    codebook = _sum_event((z_e.detach() - z_q).pow(2), z_e)
    return codebook + beta * commitment


# --- Bounds -------------------------------------------------------------------------------------


def reparameterize(
    mu: Tensor,
    log_var: Tensor,
    num_samples: int | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """z = μ + σ ⊙ ε with ε ~ N(0, I) (AEVB §2.4): a sample of q(z|x) differentiable in μ, σ.

    ``[B, D] -> [B, D]``, or ``[S, B, D]`` with ``num_samples=S``. ``noise``: ε given (drawn
    beforehand, e.g. outside a compiled graph) instead of drawn here, ``[B, D]`` or ``[S, B, D]``;
    ``generator``: the one ε is drawn from (on μ's device), else torch's global one.
    """
    std = torch.exp(0.5 * log_var)
    if noise is None:
        shape = std.shape if num_samples is None else (num_samples, *std.shape)
        noise = torch.randn(shape, dtype=std.dtype, device=std.device, generator=generator)
    return mu + std * noise


def elbo(log_px_given_z: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """The (β-weighted) evidence lower bound per example, in nats (AEVB eq. 10).

    ``L = (1/L) Σ_l log p(x|z⁽ˡ⁾) − β · KL(q(z|x) ‖ p(z))``, z⁽ˡ⁾ ~ q(z|x). ``log_px_given_z`` is
    ``[B]`` (L = 1) or ``[L, B]``; ``kl`` is ``[B]``. β = 1 gives the true bound ≤ log p(x).
    """
    if log_px_given_z.dim() == kl.dim() + 1:
        log_px_given_z = log_px_given_z.mean(dim=0)
    return log_px_given_z - beta * kl


def iwae_bound(log_weights: Tensor) -> Tensor:
    """The importance-weighted bound of Burda et al. (2016, eq. 8), per example.

    ``L_k = log (1/k) Σ_i w_i``, ``log w_i = log p(x, z_i) − log q(z_i|x)``, z_i ~ q(z|x):
    ``[k, B] -> [B]``, via a stable log-sum-exp. L_1 is the ELBO; L_k rises to log p(x) as k → ∞.
    """
    k = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(k)


def estimate_log_px(
    log_weight_fn: Callable[[int], Tensor],
    num_samples: int,
    chunk_size: int = 500,
) -> tuple[Tensor, Tensor]:
    """Importance-sampled estimate of log p(x) and its standard error, per example.

    ``log p̂(x) = log (1/k) Σ_i w_i`` (the IWAE bound with k = ``num_samples``), computed in chunks:
    ``log_weight_fn(n)`` returns ``[n, B]`` log-weights for n fresh samples, so memory is bounded
    by ``chunk_size`` whatever k is. Running sums are kept as log-sum-exps of w and of w².

    Standard error by the delta method: ``se(log p̂) ≈ sd(w) / (√k · mean(w))
    = √((mean(w²) / mean(w)² − 1) / k)``. It measures Monte-Carlo noise only; log p̂ is also
    biased low by O(1/k). Returns ``(log_px [B], stderr [B])``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    lse_w = lse_w2 = None
    done = 0
    while done < num_samples:
        n = min(chunk_size, num_samples - done)
        log_w = log_weight_fn(n).double()  # [n, B]
        chunk_w, chunk_w2 = torch.logsumexp(log_w, dim=0), torch.logsumexp(2.0 * log_w, dim=0)
        if lse_w is None:
            lse_w, lse_w2 = chunk_w, chunk_w2
        else:
            lse_w = torch.logaddexp(lse_w, chunk_w)
            lse_w2 = torch.logaddexp(lse_w2, chunk_w2)
        done += n
    log_k = math.log(num_samples)
    log_px = lse_w - log_k
    # mean(w²) / mean(w)² = exp(lse_w2 − log k − 2 (lse_w − log k)) ≥ 1 (Cauchy–Schwarz)
    ratio = torch.exp(lse_w2 - log_k - 2.0 * log_px)
    stderr = torch.sqrt((ratio - 1.0).clamp_min(0.0) / num_samples)
    return log_px.float(), stderr.float()


# --- Units --------------------------------------------------------------------------------------


def bits_per_dim(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """Convert a negative log-likelihood per example to bits per dimension: ``nll / (D ln 2)``.

    Right as it stands for **binary** data (a discrete likelihood: no offset).
    """
    return nll_nats / (num_dims * math.log(2.0))


def bits_per_dim_8bit(
    nll_nats: Tensor | float, num_dims: int, data_range: tuple[float, float] = (0.0, 1.0)
) -> Tensor | float:
    """Bits/dim of 8-bit data from a continuous density on rescaled, dequantized pixels.

    Pixels v ∈ {0..255} are dequantized, u = v + U(0,1) (Theis et al. 2016), and mapped affinely
    to ``data_range`` [a, b] as y = a + (b − a)·u/256. A density on y gives one on u with
    Jacobian ((b − a)/256)^D, so the discrete NLL is bounded by
    ``−log p(y) + D · log(256 / (b − a))`` nats; divided by D ln 2 that is bits/dim.
    For data in [0, 1] the offset is the familiar log 256 per dimension (8 bits).
    """
    lo, hi = data_range
    offset = num_dims * math.log(256.0 / (hi - lo))
    return (nll_nats + offset) / (num_dims * math.log(2.0))
