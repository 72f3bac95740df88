"""Evaluation metrics as pure functions: torch tensors in, python floats or tensors out.

Image fidelity (PSNR, SSIM), distribution distances on feature vectors (Fréchet distance, KID,
improved precision/recall), latent-space diagnostics (active units, KL per dimension) and codebook
statistics for VQ-VAEs (perplexity, usage, dead codes). Reductions run in float64 where round-off
matters. Nothing here needs gradients or a particular feature extractor: callers pass features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaekit.errors import VaekitError

__all__ = [
    "active_units",
    "codebook_usage",
    "dead_codes",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "kl_per_dim",
    "perplexity",
    "precision_recall",
    "psnr",
    "ssim",
]


def _check_same_shape(x: torch.Tensor, y: torch.Tensor, min_dim: int) -> None:
    if x.shape != y.shape or x.dim() < min_dim:
        raise VaekitError(
            f"expected two tensors of one shape with >= {min_dim} dims, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def _check_features(*feats: torch.Tensor) -> None:
    for f in feats:
        if f.dim() != 2 or f.shape[0] < 2:
            raise VaekitError(f"expected features [N, d] with N >= 2, got {tuple(f.shape)}")
    if len({f.shape[1] for f in feats}) != 1:
        raise VaekitError(f"feature sets differ in dimension: {[tuple(f.shape) for f in feats]}")


# --------------------------------------------------------------------------- image fidelity


PSNR_MAX = 100.0  # dB: the PSNR of identical images


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image: ``PSNR = 10 · log10(data_range² / MSE)`` in dB.

    x, y: ``[B, ...]``; the MSE is averaged over everything but the batch dimension. The MSE is
    floored at ``1e-10 · data_range²``, so identical images give :data:`PSNR_MAX` (100 dB) instead
    of ``+inf``, which no mean or JSON file survives. Returns ``[B]`` float64.
    """
    _check_same_shape(x, y, 1)
    diff = x.detach().double() - y.detach().double()
    mse = diff.pow(2).flatten(1).mean(dim=1) if diff.dim() > 1 else diff.pow(2)  # [B]
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(data_range**2 * 10 ** (-PSNR_MAX / 10)))


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``g_i ∝ exp(-(i - (size-1)/2)² / (2σ²))``; ``[size]`` float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-coords.pow(2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 2-D filtering per channel with window ``g ⊗ g``, 'valid' (no padding).

    x: ``[B, C, H, W]`` → ``[B, C, H-k+1, W-k+1]``.
    """
    channels, k = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(channels, 1, k, 1), groups=channels)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(channels, 1, 1, k), groups=channels)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, IEEE TIP 13(4)), per image.

    With local Gaussian-weighted statistics μ, σ², σ_xy (window ``window_size``, std ``sigma``)::

        SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (k1 · data_range)², C2 = (k2 · data_range)²

    As in the authors' reference code, the window is applied without padding ('valid'), the local
    variances are the biased weighted moments ``E_w[x²] - μ²``, and the map is averaged over the
    valid positions; channels are averaged too. If an image side is smaller than ``window_size``
    the window shrinks to ``min(window_size, H, W)`` (same ``sigma``, renormalised), so a single
    position covers the whole image instead of failing.

    x, y: ``[B, C, H, W]``. Returns ``[B]`` float64.
    """
    _check_same_shape(x, y, 4)
    x, y = x.detach().double(), y.detach().double()
    size = min(window_size, x.shape[-2], x.shape[-1])
    g = _gaussian_1d(size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)  # [B, C, H', W']
    var_x = _filter_valid(x * x, g) - mu_x.pow(2)
    var_y = _filter_valid(y * y, g) - mu_y.pow(2)
    cov_xy = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)  # mean over C, H', W' → [B]


# --------------------------------------------------------------------------- distribution distances


def _mean_cov(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean ``[d]`` and unbiased covariance ``[d, d]`` (ddof = 1) in float64."""
    f = feats.detach().double()
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sym_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix via ``A = V diag(λ) Vᵀ`` → ``V diag(√max(λ, 0)) Vᵀ``."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance_from_stats(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein) distance between N(μa, Σa) and N(μb, Σb) (Dowson & Landau 1982;
    used as FID by Heusel et al. 2017)::

        d² = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2})

    ``Tr((Σa Σb)^{1/2})`` is computed stably: Σa Σb = √Σa · (√Σa Σb) has the same eigenvalues as
    ``M = √Σa Σb √Σa``, which is symmetric PSD, so the trace is ``Σ √λ_i(M)`` from a symmetric
    eigendecomposition (tiny negative eigenvalues from round-off are clamped to 0). float64.
    """
    mu_a, mu_b = mu_a.detach().double(), mu_b.detach().double()
    cov_a, cov_b = cov_a.detach().double(), cov_b.detach().double()
    d = mu_a.numel()
    if mu_b.numel() != d or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise VaekitError(
            f"inconsistent statistics: mu {tuple(mu_a.shape)}, {tuple(mu_b.shape)}, "
            f"cov {tuple(cov_a.shape)}, {tuple(cov_b.shape)}"
        )
    sqrt_a = _sym_sqrt(cov_a)
    m = sqrt_a @ cov_b @ sqrt_a  # [d, d], symmetric PSD up to round-off
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (mu_a - mu_b).pow(2).sum()
    return float(mean_term + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[Na, d]``, ``[Nb, d]``
    (mean and unbiased covariance); see :func:`frechet_distance_from_stats`."""
    _check_features(feats_a, feats_b)
    return frechet_distance_from_stats(*_mean_cov(feats_a), *_mean_cov(feats_b))


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``; ``[n, d], [m, d] → [n, m]``."""
    return (a @ b.T / a.shape[1] + 1.0).pow(3)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3), x ``[m, d]``, y ``[n, d]``::

    1/(m(m−1)) Σ_{i≠j} k(xi, xj) + 1/(n(n−1)) Σ_{i≠j} k(yi, yj) − 2/(mn) Σ_{i,j} k(xi, yj)
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy = _poly_kernel(x, x), _poly_kernel(y, y)
    term_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return term_x + term_y - 2 * _poly_kernel(x, y).mean()


def kernel_inception_distance(
    feats_a: torch.Tensor,
    feats_b: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD
    GANs"): the unbiased MMD² with the cubic kernel ``k(x, y) = (xᵀy/d + 1)³``, averaged over
    ``num_subsets`` random subsets of ``min(subset_size, Na, Nb)`` rows from each set (drawn
    without replacement within a subset, with ``generator``). Returns ``(mean, std)`` over the
    subsets, std with ddof = 0. Unbiased: its expectation is exactly 0 when both sets come from
    one distribution, so single values can be negative.
    """
    _check_features(feats_a, feats_b)
    if num_subsets < 1:
        raise VaekitError(f"num_subsets must be >= 1, got {num_subsets}")
    a, b = feats_a.detach().double(), feats_b.detach().double()
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise VaekitError(f"subset_size must be >= 2, got {subset_size}")
    values = torch.empty(num_subsets, dtype=torch.float64)
    for s in range(num_subsets):
        idx_a = torch.randperm(a.shape[0], generator=generator)[:m]
        idx_b = torch.randperm(b.shape[0], generator=generator)[:m]
        values[s] = _mmd2_unbiased(a[idx_a], b[idx_b])
    return float(values.mean()), float(values.std(correction=0))


def _kth_nn_radii(feats: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest neighbour in the same set, self excluded.

    The self-distance 0 is the smallest in each row, so the k-th neighbour is the (k+1)-th
    smallest distance. ``[N, d] → [N]``, computed ``chunk_size`` rows at a time.
    """
    radii = [
        torch.cdist(chunk, feats).kthvalue(k + 1, dim=1).values  # [c, N] → [c]
        for chunk in feats.split(chunk_size)
    ]
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """Fraction of queries inside at least one ball ``B(centre_j, radius_j)``."""
    inside = [
        (torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1)  # [c, M] → [c]
        for chunk in queries.split(chunk_size)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019).

    Each set's manifold is the union of balls around its samples with radius the distance to the
    sample's k-th nearest neighbour in its own set (self excluded)::

        precision = 1/|fake| Σ_f 1[f ∈ manifold(real)]    (are fakes realistic?)
        recall    = 1/|real| Σ_r 1[r ∈ manifold(fake)]    (is the real variety covered?)

    real ``[Nr, d]``, fake ``[Nf, d]``, each with more than ``k`` rows. Distances are Euclidean, in
    float64, ``chunk_size`` query rows at a time (memory ``chunk_size × N``).
    """
    _check_features(real, fake)
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise VaekitError(f"k must satisfy 1 <= k < number of samples per set, got k={k}")
    real, fake = real.detach().double(), fake.detach().double()
    real_radii = _kth_nn_radii(real, k, chunk_size)  # [Nr]
    fake_radii = _kth_nn_radii(fake, k, chunk_size)  # [Nf]
    precision = _coverage(fake, real, real_radii, chunk_size)
    recall = _coverage(real, fake, fake_radii, chunk_size)
    return precision, recall


# --------------------------------------------------------------------------- latent diagnostics


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Active units (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders")::

        A_u = Cov_x( E_{q(z|x)}[z_u] ) > threshold   (threshold 10⁻² in the paper)

    mu: posterior means ``[N, D]`` over a data set. The variance over examples is unbiased
    (ddof = 1). Returns ``(count, variances [D])`` with the variances in float64.
    """
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise VaekitError(f"expected posterior means [N, D] with N >= 2, got {tuple(mu.shape)}")
    variances = mu.detach().double().var(dim=0, correction=1)  # [D]
    return int((variances > threshold).sum()), variances


def kl_per_dim(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per latent dimension, averaged over examples (Kingma & Welling 2014,
    appendix B)::

        KL_u = mean_x ½ (μ_u² + σ_u² − log σ_u² − 1)

    mu, log_var: ``[N, D]``. Returns ``[D]`` in float64.
    """
    _check_same_shape(mu, log_var, 2)
    mu, log_var = mu.detach().double(), log_var.detach().double()
    kl = 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1.0)  # [N, D]
    return kl.mean(dim=0)


# --------------------------------------------------------------------------- codebook statistics


def _as_counts(counts) -> torch.Tensor:
    c = torch.as_tensor(counts).detach().double().flatten()  # [K]
    if c.numel() == 0 or bool((c < 0).any()):
        raise VaekitError("code counts must be a non-empty vector of non-negative numbers")
    return c


def perplexity(counts) -> float:
    """Codebook perplexity ``exp(H(p)) = exp(−Σ_k p_k log p_k)`` with ``p = counts / Σ counts``
    and ``0 log 0 = 0``: the exponentiated entropy of code usage, the usual VQ-VAE codebook
    diagnostic for the codebook of van den Oord, Vinyals & Kavukcuoglu 2017 ("Neural Discrete
    Representation Learning"). Ranges from 1 (one code used) to K (all K codes used equally).
    counts: ``[K]`` (any array-like; flattened)."""
    c = _as_counts(counts)
    total = c.sum()
    if total <= 0:
        raise VaekitError("code counts sum to zero: no code was used")
    p = c / total
    entropy = -(p * torch.log(p.clamp(min=torch.finfo(p.dtype).tiny))).sum()  # p = 0 adds 0
    return math.exp(float(entropy))


def codebook_usage(counts) -> float:
    """Fraction of the K codes that were used at least once: ``|{k : counts_k > 0}| / K``."""
    c = _as_counts(counts)
    return float((c > 0).double().mean())


def dead_codes(counts) -> int:
    """Number of codes never used: ``|{k : counts_k = 0}|``."""
    return int((_as_counts(counts) == 0).sum())
