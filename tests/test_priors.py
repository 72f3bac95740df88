"""The VampPrior: its mixture density, KL estimate, sampling, log p(x) and training, against brute force."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributions as D

from vaekit import MLPVAE, ConvVAE, load_model, losses
from vaekit.evaluate import latent_metrics
from vaekit.priors import VampPrior, sample_mixture
from vaekit.runs import evaluate_run


def mixture(mus, log_vars):
    """The same mixture as a torch.distributions object, the reference."""
    k = mus.shape[0]
    components = D.Independent(D.Normal(mus, torch.exp(0.5 * log_vars)), 1)
    return D.MixtureSameFamily(D.Categorical(logits=torch.zeros(k, dtype=mus.dtype)), components)


def test_mixture_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mus = torch.randn(7, 5, dtype=torch.float64) * 2
    log_vars = torch.randn(7, 5, dtype=torch.float64) - 3  # σ down to ~0.05: z²/σ² up to ~1e4
    z = torch.randn(3, 11, 5, dtype=torch.float64) * 3
    ours = losses.gaussian_mixture_log_prob(z, mus, log_vars)
    assert ours.shape == (3, 11)
    torch.testing.assert_close(ours, mixture(mus, log_vars).log_prob(z), rtol=0, atol=1e-9)


def test_mixture_log_prob_is_exact_in_float32_and_under_autocast():
    """The expanded square cancels large terms; done in float64, float32 inputs lose nothing."""
    torch.manual_seed(1)
    mus = torch.randn(50, 40) * 3
    log_vars = torch.full((50, 40), -8.0)  # σ² = 3e-4: (z − μ)²/σ² expanded has terms ~1e5 per dim
    z = mus[:10] + 0.01 * torch.randn(10, 40)  # near a component, where the cancellation bites
    reference = mixture(mus.double(), log_vars.double()).log_prob(z.double())
    ours = losses.gaussian_mixture_log_prob(z, mus, log_vars)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = losses.gaussian_mixture_log_prob(z, mus, log_vars)
    torch.testing.assert_close(under_autocast, ours)


def test_one_component_mixture_is_that_gaussian():
    torch.manual_seed(2)
    mu, log_var, z = torch.randn(1, 6), torch.randn(1, 6), torch.randn(9, 6)
    one = losses.diagonal_gaussian_log_prob(z, mu[0], log_var[0])
    torch.testing.assert_close(losses.gaussian_mixture_log_prob(z, mu, log_var), one)


def test_entropy_closed_form_matches_torch():
    log_var = torch.randn(4, 3, dtype=torch.float64)
    reference = D.Independent(D.Normal(torch.zeros(4, 3, dtype=torch.float64), torch.exp(0.5 * log_var)), 1)
    torch.testing.assert_close(losses.gaussian_entropy(log_var), reference.entropy())


def test_monte_carlo_kl_is_unbiased():
    """Against N(0, I) as a one-component mixture, the estimate's mean is the closed-form KL (within
    4 standard errors over 200k draws), for every example separately."""
    torch.manual_seed(3)
    mu, log_var = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64) * 0.5
    zero = torch.zeros(1, 4, dtype=torch.float64)
    z = losses.reparameterize(mu, log_var, 200_000)  # [S, 5, 4]
    estimates = losses.monte_carlo_kl(log_var, losses.gaussian_mixture_log_prob(z, zero, zero))  # [S, 5]
    exact = losses.gaussian_kl(mu, log_var)
    stderr = estimates.std(dim=0) / math.sqrt(len(estimates))
    assert ((estimates.mean(dim=0) - exact).abs() < 4 * stderr).all(), (estimates.mean(0), exact)


def test_sample_mixture_has_the_mixture_moments_and_is_repeatable():
    torch.manual_seed(4)
    mus, log_vars = torch.randn(3, 2) * 4, torch.randn(3, 2) * 0.3
    z = sample_mixture(mus, log_vars, 200_000, generator=torch.Generator().manual_seed(0))
    mean = mus.mean(0)
    var = (log_vars.exp() + mus.pow(2)).mean(0) - mean.pow(2)
    torch.testing.assert_close(z.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), var, rtol=0.02, atol=0)
    again = sample_mixture(mus, log_vars, 200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def tiny_vamp(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLPVAE(1, 2, [16], image_size=[2, 2], prior="vamp", num_pseudo_inputs=3, **kwargs).eval()


def by_quadrature(model, x, half_width=9.0, points=1201):
    """log p(x) = log ∫ p(x|z) p(z) dz and the ELBO ∫ q(z|x) log [p(x, z) / q(z|x)] dz on a 2-d grid
    (midpoint rule), float64 throughout: ``([B], [B])``."""
    model = model.double()
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)[:, None, :].expand(-1, len(x), -1)  # [P², B, 2]
    log_cell = 2 * math.log((grid[1] - grid[0]).item())
    with torch.no_grad():
        log_joint = model._log_px_given_z(x.double(), z) + model.prior_log_prob(z)  # [P², B]
        mu, log_var = model.encode(x.double())
        log_q = losses.diagonal_gaussian_log_prob(z, mu, log_var)  # [P², B]
    log_px = torch.logsumexp(log_joint, dim=0) + log_cell
    elbo = (log_q.exp() * (log_joint - log_q)).sum(dim=0) * math.exp(log_cell)
    return log_px, elbo


def test_vamp_log_px_and_elbo_match_quadrature():
    """Under a VampPrior the importance-sampled log p(x) and the Monte-Carlo ELBO agree with numerical
    integration (within 4 standard errors plus the grid's error), and ELBO < log p(x)."""
    model = tiny_vamp()
    with torch.no_grad():  # spread the pseudo-inputs so the three components differ
        levels = torch.tensor([0.0, 0.5, 1.0])[:, None, None, None]  # [3, 1, 1, 1]
        model.vamp_prior.pseudo_inputs.copy_(levels.expand(3, 1, 2, 2))
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32).view(3, 1, 2, 2)
    torch.manual_seed(5)
    estimate, stderr = model.log_px(x, num_samples=20_000)
    with torch.no_grad():
        elbos = torch.stack([model.elbo(x) for _ in range(4000)])  # [S, B]
    true_log_px, true_elbo = (t.float() for t in by_quadrature(model, x))
    assert ((estimate - true_log_px).abs() < 4 * stderr + 1e-3).all(), (estimate, true_log_px, stderr)
    elbo_se = elbos.std(dim=0) / math.sqrt(len(elbos))
    assert ((elbos.mean(dim=0) - true_elbo).abs() < 4 * elbo_se + 1e-3).all(), (elbos.mean(0), true_elbo)
    assert (true_elbo < true_log_px).all()


def test_standard_prior_model_is_unchanged_by_the_prior_option():
    torch.manual_seed(6)
    plain = MLPVAE(1, 4, [8], image_size=4)
    torch.manual_seed(6)
    explicit = MLPVAE(1, 4, [8], image_size=4, prior="standard")
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    assert "prior.pseudo_inputs" not in plain.state_dict() and plain.vamp_prior is None
    mu, log_var = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(plain.kl_divergence(mu, log_var), losses.gaussian_kl(mu, log_var))


def test_bad_prior_is_a_clear_error():
    with pytest.raises(ValueError, match="prior must be one of"):
        MLPVAE(prior="gaussian-mixture")
    with pytest.raises(ValueError, match="at least one pseudo-input"):
        MLPVAE(prior="vamp", num_pseudo_inputs=0)


@pytest.mark.parametrize("likelihood, lo, hi", [("bernoulli", 0.0, 1.0), ("gaussian", -1.0, 1.0)])
def test_pseudo_inputs_stay_in_the_data_range(likelihood, lo, hi):
    model = MLPVAE(1, 4, [8], image_size=4, likelihood=likelihood, prior="vamp", num_pseudo_inputs=5)
    with torch.no_grad():
        model.vamp_prior.pseudo_inputs.mul_(100)
    inputs = model.vamp_prior.inputs()
    assert inputs.shape == (5, 1, 4, 4) and inputs.min() >= lo and inputs.max() <= hi


@pytest.mark.parametrize("cls", [MLPVAE, ConvVAE])
def test_training_step_reaches_the_pseudo_inputs(cls):
    torch.manual_seed(7)
    model = cls(1, 4, image_size=8, prior="vamp", num_pseudo_inputs=6)
    with torch.no_grad():  # inside the hard tanh's range, where it passes gradients
        model.vamp_prior.pseudo_inputs.uniform_(0.2, 0.8)
    x = torch.rand(5, 1, 8, 8).bernoulli()
    terms = model.loss_function(*model(x))
    terms["loss"].backward()
    grad = model.vamp_prior.pseudo_inputs.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.isfinite(terms["loss"]) and terms["ELBO"] == pytest.approx(-terms["loss"].item(), rel=1e-6)


def test_vamp_model_saves_and_loads_exactly(tmp_path):
    model = tiny_vamp(seed=8)
    with torch.no_grad():
        model.vamp_prior.pseudo_inputs.uniform_(0, 1)
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config["prior"] == "vamp" and loaded.vamp_prior.num_components == 3
    z = torch.randn(10, 2)
    torch.testing.assert_close(loaded.prior_log_prob(z), model.prior_log_prob(z))
    gen = lambda: torch.Generator().manual_seed(1)
    assert torch.equal(loaded.sample_latent(4, gen()), model.sample_latent(4, gen()))


def test_samples_come_from_the_mixture_not_the_standard_normal():
    """Pseudo-inputs that all encode far from the origin: prior samples must sit there too."""
    model = tiny_vamp(seed=9)
    with torch.no_grad():
        model.fc_mu.bias.fill_(6.0)
        model.fc_var.bias.fill_(-4.0)
    z = model.sample_latent(1000, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(6.0, abs=0.5)
    assert model.sample(5).shape == (5, 1, 2, 2)


def test_latent_metrics_under_a_vamp_prior_give_the_total_kl():
    """No per-dimension KL (the mixture does not factorise); the total agrees with a long
    Monte-Carlo average of the same estimator, and is deterministic."""
    model = tiny_vamp(seed=10)
    x = torch.rand(64, 1, 2, 2).bernoulli()
    stats = latent_metrics(model, x.split(16), kl_samples=64)
    assert "kl_per_dim" not in stats and stats["kl_samples"] == 64
    assert stats == latent_metrics(model, x.split(16), kl_samples=64)
    with torch.no_grad():
        mu, log_var = model.encode(x)
        long_run = torch.stack([model.kl_divergence(mu, log_var) for _ in range(4000)]).mean()
    assert stats["kl_nats"] == pytest.approx(long_run.item(), abs=0.02)
    assert stats["kl_nats"] > 0


DDP_SCRIPT = textwrap.dedent(
    """
    import os
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from vaekit import MLPVAE

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = MLPVAE(1, 4, [16], image_size=4, prior="vamp", num_pseudo_inputs=5)
    with torch.no_grad():
        model.vamp_prior.pseudo_inputs.uniform_(0.2, 0.8)
    ddp = DistributedDataParallel(model)
    torch.manual_seed(1 + rank)  # different data and noise per rank
    x = torch.rand(8, 1, 4, 4).bernoulli()
    model.loss_function(*ddp(x))["loss"].backward()
    for name, p in model.named_parameters():
        grads = [torch.zeros_like(p.grad) for _ in range(2)]
        dist.all_gather(grads, p.grad)
        assert grads[0].abs().sum() > 0, name
        assert torch.equal(grads[0], grads[1]), name  # averaged over ranks, pseudo-inputs included
    open(f"ok{rank}", "w").close()  # a file each: the ranks' stdout lines can interleave
    dist.barrier()
    dist.destroy_process_group()
    # skip the interpreter's teardown: gloo's threads can abort it ("terminate called without an
    # active exception") when the peer process is already gone, after everything above has passed
    os._exit(0)
    """
)


def test_ddp_averages_the_pseudo_input_gradients(tmp_path):
    """The KL encodes the pseudo-inputs outside DDP's forward; their gradients (and the encoder's,
    reached both ways) must still be averaged across ranks."""
    script = tmp_path / "ddp_vamp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ok0").is_file() and (tmp_path / "ok1").is_file()


def test_vamp_prior_module_alone():
    prior = VampPrior(4, (1, 3, 3), data_range=(-1.0, 1.0))
    assert prior.num_components == 4 and prior.inputs().shape == (4, 1, 3, 3)
    # the paper's initialisation: near the low end of the range, 5 % of the way up
    assert prior.pseudo_inputs.mean().item() == pytest.approx(-0.9, abs=0.05)


def test_train_and_evaluate_a_vamp_run_end_to_end(tmp_path, cli):
    """`vaekit train --set model.prior=vamp` learns the pseudo-inputs, writes prior samples, and
    `evaluate` reports the total KL without a per-dimension split."""
    run = tmp_path / "vamp"
    settings = (
        "model.name=mlp_vae",
        "model.hidden_dims=[64]",
        "model.latent_dim=4",
        "model.likelihood=bernoulli",
        "model.prior=vamp",
        "model.num_pseudo_inputs=20",
        "train.epochs=1",
        "train.batch_size=256",
        "train.lr=0.01",  # 17 steps: enough for Adam to move every pseudo-pixel visibly
        "train.warmup_steps=0",
        "data.num_workers=0",
    )
    result = cli("train", "--out", run, "--no-progress", *[a for s in settings for a in ("--set", s)])
    assert result.rc == 0, result.err
    assert (run / "samples.png").is_file() and (run / "pseudo_inputs.png").is_file()
    assert "Pseudo-inputs" in (run / "report.html").read_text()
    model = load_model(run / "checkpoints" / "best")
    assert model.vamp_prior.num_components == 20
    start = VampPrior(20, (1, 28, 28)).pseudo_inputs  # the initialisation's scale: 0.05 ± 0.01
    assert (model.vamp_prior.pseudo_inputs - 0.05).abs().mean() > 5 * (start - 0.05).abs().mean()
    res = evaluate_run(run, iw_samples=10, sample_metrics=False, progress=False)
    assert "kl_per_dim" not in res and res["kl_nats"] > 0 and res["kl_samples"] == 16
    assert res["nll_nats"] <= -res["elbo_nats"] + 0.5


def test_vamp_loss_under_bf16_autocast_is_close_to_fp32():
    """As the training loop does with train.precision=bf16: the forward pass under autocast, the loss
    (which encodes the pseudo-inputs) in float32. It is the fp32 loss up to bf16's rounding, and its
    gradient still reaches the pseudo-inputs."""
    model = tiny_vamp(seed=11).train()
    with torch.no_grad():
        model.vamp_prior.pseudo_inputs.uniform_(0.2, 0.8)
    x = torch.rand(64, 1, 2, 2).bernoulli()
    torch.manual_seed(0)
    fp32 = model.loss_function(*model(x))["loss"]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
    bf16 = model.loss_function(*[t.float() for t in outputs])["loss"]
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=0.02)
    bf16.backward()
    assert model.vamp_prior.pseudo_inputs.grad.abs().sum() > 0
