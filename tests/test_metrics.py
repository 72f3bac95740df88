"""Tests for vaekit.metrics: hand-computed cases, brute-force references, known limits."""

import itertools
import math

import numpy as np
import pytest
import torch

from vaekit import metrics
from vaekit.errors import VaekitError

# --------------------------------------------------------------------------- PSNR


def test_psnr_constant_error_matches_formula():
    x = torch.rand(3, 1, 8, 8)
    errors = torch.tensor([0.1, 0.05, 0.2])
    y = x + errors.view(3, 1, 1, 1)
    expected = 10 * torch.log10(1.0 / errors.double() ** 2)
    torch.testing.assert_close(metrics.psnr(x, y), expected, rtol=1e-5, atol=1e-5)


def test_psnr_data_range_and_identical_images():
    x = torch.zeros(2, 3, 4, 4)
    y = x + 25.5
    assert metrics.psnr(x, y, data_range=255.0).tolist() == pytest.approx([20.0, 20.0])
    assert metrics.psnr(x, x).tolist() == [100.0, 100.0]  # capped: a finite, JSON-safe number
    assert metrics.psnr(x, x + 1e-6).tolist() == pytest.approx([100.0, 100.0])  # 120 dB, capped


# --------------------------------------------------------------------------- SSIM


def _ssim_bruteforce(x, y, win, sigma=1.5, data_range=1.0, k1=0.01, k2=0.03):
    """SSIM of two 2-D numpy images by explicit loops over every valid window position."""
    c = np.arange(win) - (win - 1) / 2
    g = np.exp(-(c**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_of_image_with_itself_is_one():
    x = torch.rand(4, 3, 28, 28)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(4, dtype=torch.float64))


def test_ssim_decreases_with_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 28, 28, generator=gen)
    noise = torch.randn(1, 1, 28, 28, generator=gen)
    scores = [float(metrics.ssim(x, x + s * noise)) for s in (0.0, 0.05, 0.1, 0.3, 1.0)]
    assert all(a > b for a, b in itertools.pairwise(scores))
    assert scores[-1] < 0.2


@pytest.mark.parametrize("size,window", [(16, 11), (14, 7), (8, 11)])
def test_ssim_matches_bruteforce_reference(size, window):
    # (8, 11): the image is smaller than the window, so the window shrinks to 8 x 8
    rng = np.random.default_rng(size)
    x = rng.random((2, size, size))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    got = metrics.ssim(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], window_size=window)
    win = min(window, size)
    expected = [_ssim_bruteforce(x[b], y[b], win) for b in range(2)]
    assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_ssim_averages_channels():
    rng = np.random.default_rng(1)
    x, y = rng.random((1, 3, 12, 12)), rng.random((1, 3, 12, 12))
    expected = np.mean([_ssim_bruteforce(x[0, c], y[0, c], 11) for c in range(3)])
    assert float(metrics.ssim(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(expected)


def test_ssim_constant_images_give_luminance_formula():
    a, shift = 0.3, 0.2
    c1 = 0.01**2
    x = torch.full((1, 1, 20, 20), a)
    expected = (2 * a * (a + shift) + c1) / (a**2 + (a + shift) ** 2 + c1)
    assert float(metrics.ssim(x, x + shift)) == pytest.approx(expected, rel=1e-6)


def test_ssim_shifted_texture_is_pure_luminance_term():
    # y = x + c: σy = σx and σxy = σx², so the contrast-structure factor is exactly 1
    rng = np.random.default_rng(2)
    x, shift, win = rng.random((15, 15)) * 0.5, 0.25, 11
    c = np.arange(win) - (win - 1) / 2
    g = np.exp(-(c**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    lum = []
    for i in range(15 - win + 1):
        for j in range(15 - win + 1):
            m = (w * x[i : i + win, j : j + win]).sum()
            lum.append((2 * m * (m + shift) + 1e-4) / (m**2 + (m + shift) ** 2 + 1e-4))
    xt = torch.from_numpy(x)[None, None]
    assert float(metrics.ssim(xt, xt + shift)) == pytest.approx(np.mean(lum), rel=1e-9)


# --------------------------------------------------------------------------- Fréchet distance


def _random_spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_set_with_itself_is_zero():
    feats = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_from_stats_mean_shift_is_exact():
    d, delta = 6, 0.7
    cov = _random_spd(d, 1)
    mu = torch.zeros(d, dtype=torch.float64)
    fd = metrics.frechet_distance_from_stats(mu, cov, mu + delta, cov)
    assert fd == pytest.approx(d * delta**2, rel=1e-9)


def test_frechet_from_stats_diagonal_closed_form():
    # commuting diagonal covariances: Tr term is Σ (√a_i − √b_i)²
    va, vb = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + float(((va.sqrt() - vb.sqrt()) ** 2).sum())
    got = metrics.frechet_distance_from_stats(mu_a, torch.diag(va), mu_b, torch.diag(vb))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_mean_shift_from_samples():
    gen = torch.Generator().manual_seed(3)
    d, delta = 4, 1.0
    a = torch.randn(20000, d, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, d, generator=gen, dtype=torch.float64) + delta
    assert metrics.frechet_distance(a, b) == pytest.approx(d * delta**2, rel=0.05)


def test_frechet_against_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    d = 5
    cov_a, cov_b = _random_spd(d, 4), _random_spd(d, 5)
    mu_a = torch.randn(d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mu_b = torch.zeros(d, dtype=torch.float64)
    covmean = linalg.sqrtm(cov_a.numpy() @ cov_b.numpy()).real
    expected = float((mu_a**2).sum()) + float(np.trace(cov_a.numpy() + cov_b.numpy() - 2 * covmean))
    assert metrics.frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_frechet_rejects_mismatched_dims():
    with pytest.raises(VaekitError):
        metrics.frechet_distance(torch.randn(10, 3), torch.randn(10, 4))


# --------------------------------------------------------------------------- KID


def _mmd2_unbiased_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_full_subset_matches_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(12, 3, generator=gen, dtype=torch.float64) + 0.5
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=3, subset_size=12)
    assert mean == pytest.approx(_mmd2_unbiased_loops(a, b), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_same_distribution_near_zero_and_shift_positive():
    means, stds = [], []
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        a, b = torch.randn(400, 16, generator=gen), torch.randn(400, 16, generator=gen)
        mean, std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=200, generator=gen)
        means.append(mean)
        stds.append(std)
    assert abs(np.mean(means)) < 3 * np.mean(stds)
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(400, 16, generator=gen), torch.randn(400, 16, generator=gen) + 1.0
    shifted, shifted_std = metrics.kernel_inception_distance(
        a, b, num_subsets=20, subset_size=200, generator=gen
    )
    assert shifted > 10 * np.mean(stds) and shifted > 10 * shifted_std


def test_kid_estimator_is_unbiased():
    # many tiny draws: the V-statistic (diagonal included) would be biased up by ~2(E k(x,x) − E k(x,y))/m
    gen = torch.Generator().manual_seed(1)
    values = [
        metrics.kernel_inception_distance(
            torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen), num_subsets=1, subset_size=8
        )[0]
        for _ in range(1500)
    ]
    values = np.array(values)
    assert abs(values.mean()) < 4 * values.std() / math.sqrt(len(values))


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(x, x.clone(), k=3, chunk_size=64) == (1.0, 1.0)


def test_precision_recall_disjoint_far_sets():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(100, 3, generator=gen), torch.randn(100, 3, generator=gen) + 100.0
    assert metrics.precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_fake_on_part_of_support():
    gen = torch.Generator().manual_seed(2)
    real = torch.rand(1000, 2, generator=gen)
    fake = torch.rand(1000, 2, generator=gen) * torch.tensor([0.2, 1.0])  # the left fifth of the square
    precision, recall = metrics.precision_recall(real, fake, k=3, chunk_size=128)
    assert precision > 0.9  # holes between the real k-NN balls keep it a little under 1
    assert 0.1 < recall < 0.35


def test_precision_recall_matches_bruteforce():
    gen = torch.Generator().manual_seed(3)
    real, fake = torch.randn(30, 2, generator=gen), torch.randn(25, 2, generator=gen) * 1.5 + 0.5
    k = 2

    def radii(s):
        return [sorted(float((p - q).norm()) for q in s)[k] for p in s]  # index 0 is the self-distance

    def coverage(queries, centres, rad):
        return np.mean(
            [any(float((q - c).norm()) <= r for c, r in zip(centres, rad, strict=True)) for q in queries]
        )

    expected = (coverage(fake, real, radii(real)), coverage(real, fake, radii(fake)))
    assert metrics.precision_recall(real, fake, k=k, chunk_size=7) == pytest.approx(expected)


# --------------------------------------------------------------------------- latent diagnostics


def test_active_units_counts_dead_dimensions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 6, generator=gen)
    mu[:, 1] = 0.7  # constant
    mu[:, 3] = 0.01 * torch.randn(500, generator=gen)  # variance 1e-4
    mu[:, 5] = 0.2 * torch.randn(500, generator=gen)  # variance 0.04: still active
    count, variances = metrics.active_units(mu)
    assert count == 4
    assert variances.shape == (6,)
    assert variances[1] == 0 and variances[3] < 1e-3
    assert metrics.active_units(mu, threshold=0.1)[0] == 3


def test_active_units_of_a_model_with_dead_latent_dimensions():
    from vaekit.evaluate import latent_metrics
    from vaekit.models import LinearGaussianVAE

    torch.manual_seed(0)
    model = LinearGaussianVAE(data_dim=10, latent_dim=6)
    with torch.no_grad():
        model.encoder.weight[[1, 4]] = 0.0  # μ_1, μ_4 ignore x: Var_x μ = 0, dead units
        model.encoder.weight[2] *= 0.01  # Var_x μ_2 ≈ 1e-4 · ‖a_2‖² ≪ 0.01: inactive too
        model.encoder_log_var[[1, 4]] = 0.0  # and their posterior is the prior: KL 0
        model.encoder.bias[[1, 4]] = 0.0
    x = torch.randn(2000, 10)
    res = latent_metrics(model, x.split(500))
    assert res["active_units"] == 3 and res["latent_dim"] == 6
    kl = torch.tensor(res["kl_per_dim"])
    assert kl[1] == pytest.approx(0.0, abs=1e-6) and kl[4] == pytest.approx(0.0, abs=1e-6)
    assert kl[[0, 3, 5]].min() > 0.05  # the active ones carry information
    assert res["kl_nats"] == pytest.approx(float(kl.sum()))


def test_kl_per_dim_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(50, 7, generator=gen), torch.randn(50, 7, generator=gen)
    q = torch.distributions.Normal(mu.double(), (0.5 * log_var.double()).exp())
    p = torch.distributions.Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
    expected = torch.distributions.kl_divergence(q, p).mean(dim=0)
    torch.testing.assert_close(metrics.kl_per_dim(mu, log_var), expected)


# --------------------------------------------------------------------------- codebook statistics


def test_perplexity_uniform_and_one_hot():
    assert metrics.perplexity(torch.full((16,), 5)) == pytest.approx(16.0)
    assert metrics.perplexity(torch.tensor([0, 0, 9, 0])) == pytest.approx(1.0)
    assert metrics.perplexity([5, 5, 0, 0]) == pytest.approx(2.0)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert metrics.perplexity([1, 3]) == pytest.approx(math.exp(entropy))


def test_codebook_usage_and_dead_codes():
    counts = torch.tensor([3, 0, 1, 0, 0, 7, 2, 0])
    assert metrics.codebook_usage(counts) == pytest.approx(0.5)
    assert metrics.dead_codes(counts) == 4
    assert metrics.dead_codes(torch.ones(10)) == 0
    assert metrics.codebook_usage(torch.zeros(5)) == 0.0
    with pytest.raises(VaekitError):
        metrics.perplexity(torch.zeros(5))
