"""The math of vaekit.losses against closed forms, torch.distributions and brute force."""

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaekit import LinearGaussianVAE, losses


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_gaussian_kl_matches_torch_distributions(gen):
    mu = torch.randn(16, 7, generator=gen) * 2
    log_var = torch.randn(16, 7, generator=gen)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(losses.gaussian_kl(mu, log_var), expected, rtol=1e-5, atol=1e-5)
    assert losses.gaussian_kl(mu, log_var).shape == (16,)


def test_gaussian_kl_matches_monte_carlo(gen):
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.3, -0.7, 0.1]], dtype=torch.float64)
    n = 200_000
    std = torch.exp(0.5 * log_var)
    z = mu + std * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    log_ratio = losses.diagonal_gaussian_log_prob(z, mu, log_var) - losses.standard_normal_log_prob(z)
    estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
    exact = losses.gaussian_kl(mu, log_var)[0]
    assert abs(estimate - exact) < 4 * stderr


def test_kl_is_zero_only_at_the_prior():
    assert losses.gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    assert losses.gaussian_kl(torch.full((1, 4), 0.1), torch.zeros(1, 4)).item() > 0.0


def test_bernoulli_log_likelihood_matches_the_seed_formula(gen):
    logits = torch.randn(5, 1, 6, 6, generator=gen, dtype=torch.float64) * 3
    y = torch.sigmoid(logits)
    for x in (
        torch.rand(5, 1, 6, 6, generator=gen, dtype=torch.float64),  # targets anywhere in [0, 1]
        torch.bernoulli(torch.full((5, 1, 6, 6), 0.3, dtype=torch.float64), generator=gen),
    ):
        seed = (x * torch.log(y) + (1 - x) * torch.log(1 - y)).sum(dim=(1, 2, 3))
        torch.testing.assert_close(losses.bernoulli_log_likelihood(x, logits), seed)


def test_bernoulli_log_likelihood_is_stable_and_matches_torch():
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    logits = torch.tensor([[200.0, -200.0, -200.0, 200.0]])
    value = losses.bernoulli_log_likelihood(x, logits)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([-400.0]))
    torch.testing.assert_close(value, Bernoulli(logits=logits).log_prob(x).sum(-1))


def test_gaussian_log_likelihood_fixed_and_learned_scale(gen):
    x = torch.randn(3, 2, 4, 4, generator=gen)
    mean = torch.randn(3, 2, 4, 4, generator=gen)
    fixed = losses.gaussian_log_likelihood(x, mean, math.log(0.3))
    torch.testing.assert_close(fixed, Normal(mean, 0.3).log_prob(x).sum(dim=(1, 2, 3)))
    log_scale = torch.tensor([-1.0, 0.5]).view(2, 1, 1)  # one learned σ per channel
    learned = losses.gaussian_log_likelihood(x, mean, log_scale)
    torch.testing.assert_close(learned, Normal(mean, log_scale.exp()).log_prob(x).sum(dim=(1, 2, 3)))


def test_log_probs_match_torch_distributions(gen):
    z = torch.randn(4, 3, 5, generator=gen)
    mu, log_var = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    torch.testing.assert_close(
        losses.diagonal_gaussian_log_prob(z, mu, log_var),
        Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1),
    )
    torch.testing.assert_close(losses.standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_elbo_averages_the_L_samples_and_weights_kl():
    log_px_z = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])  # [L=2, B=2]
    kl = torch.tensor([0.5, 1.0])
    torch.testing.assert_close(losses.elbo(log_px_z, kl), torch.tensor([-2.5, -4.0]))
    torch.testing.assert_close(losses.elbo(log_px_z[0], kl, beta=2.0), torch.tensor([-2.0, -4.0]))


def test_reparameterize_has_the_right_moments(gen):
    torch.manual_seed(0)
    mu, log_var = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    z = losses.reparameterize(mu, log_var, num_samples=100_000)  # [S, 1, 2]
    assert z.shape == (100_000, 1, 2)
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([[1.0, 2.0]]), atol=0.03, rtol=0)


def test_estimate_log_px_chunked_equals_one_shot_and_delta_method(gen):
    log_w = torch.randn(1000, 6, generator=gen, dtype=torch.float64) * 2 - 50  # [k, B]
    position = 0

    def next_chunk(n):
        nonlocal position
        position += n
        return log_w[position - n : position]

    log_px, stderr = losses.estimate_log_px(next_chunk, 1000, chunk_size=64)
    torch.testing.assert_close(log_px, losses.iwae_bound(log_w).float())
    w = torch.exp(log_w + 50)
    expected_se = w.std(dim=0, unbiased=False) / (math.sqrt(1000) * w.mean(dim=0))
    torch.testing.assert_close(stderr, expected_se.float(), rtol=1e-4, atol=1e-6)


def test_bits_per_dim_conversions():
    assert losses.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    # zero NLL on dequantized [0,1] data still costs 8 bits per 8-bit pixel
    assert losses.bits_per_dim_8bit(0.0, 3072) == pytest.approx(8.0)
    # on [-1, 1] the density is 2× more concentrated: 7 bits + the NLL's own share
    assert losses.bits_per_dim_8bit(3072 * math.log(2), 3072, data_range=(-1, 1)) == pytest.approx(8.0)
    assert losses.bits_per_dim_8bit(0.0, 10, data_range=(-1, 1)) == pytest.approx(7.0)


# --- probabilistic PCA: exact log p(x) -----------------------------------------------------------


def _ppca(gen, data_dim=6, latent_dim=3, sigma=0.5):
    model = LinearGaussianVAE(data_dim, latent_dim, sigma=sigma).double()
    with torch.no_grad():
        scales = torch.tensor([2.0, 1.0, 0.5])[:latent_dim]
        model.decoder.weight.copy_(LinearGaussianVAE.orthogonal_weight(data_dim, scales, gen))
        model.decoder.bias.copy_(torch.randn(data_dim, generator=gen))
    model.set_true_posterior()
    x = model.marginal().sample((256,)).to(torch.float64)
    return model, x


def test_elbo_equals_log_px_under_the_true_posterior(gen):
    torch.manual_seed(1)
    model, x = _ppca(gen)
    exact = model.exact_log_px(x).double()
    # every importance weight p(x, z) / q(z|x) equals p(x): even one sample is exact
    torch.testing.assert_close(model.log_px(x, num_samples=1)[0].double(), exact, rtol=0, atol=1e-4)
    torch.testing.assert_close(model.log_px(x, num_samples=7)[0].double(), exact, rtol=0, atol=1e-4)
    # KL(q ‖ p(z|x)) = 0, so the ELBO's expectation is log p(x): only Monte-Carlo noise remains
    gap = (model.elbo(x, num_samples=4000).double() - exact).mean()
    assert abs(gap) < 0.02


def test_elbo_below_log_px_and_iwae_rises_to_it(gen):
    torch.manual_seed(2)
    model, x = _ppca(gen)
    with torch.no_grad():  # a worse q: shifted means, too-wide variances
        model.encoder.bias.add_(0.4)
        model.encoder_log_var.add_(0.8)
    exact = model.exact_log_px(x).double().mean().item()
    elbo = model.elbo(x, num_samples=2000).double().mean().item()
    assert elbo < exact - 0.1
    bounds = [model.log_px(x, num_samples=k)[0].double().mean().item() for k in (1, 4, 16, 64, 5000)]
    assert all(a < b for a, b in itertools.pairwise(bounds)), bounds
    assert bounds[-1] <= exact + 0.01
    assert exact - bounds[-1] < 0.02


def test_importance_sampled_estimate_is_within_three_standard_errors(gen):
    torch.manual_seed(3)
    model, x = _ppca(gen)
    with torch.no_grad():
        model.encoder_log_var.add_(0.5)
    log_px, stderr = model.log_px(x, num_samples=5000, chunk_size=256)
    assert not log_px.requires_grad  # no graph kept across the 20 chunks: memory bounded by one
    error = (log_px.double() - model.exact_log_px(x).double()).mean()
    stderr_of_mean = stderr.double().pow(2).sum().sqrt() / len(x)
    assert stderr_of_mean > 0
    assert abs(error) < 3 * stderr_of_mean + 1e-3
