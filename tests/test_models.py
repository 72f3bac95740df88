"""The models: the seed's interface and numbers, shapes, objectives, save/load, bad input."""

import json

import pytest
import torch
import torch.nn.functional as F

from seed_reference import SeedVanillaVAE
from vaekit import MLPVAE, VQVAE, ConvVAE, VanillaVAE, load_model, losses
from vaekit.errors import IgnoredArgumentWarning, NoPriorError

SIZES = [
    (1, 28, 28),
    (3, 28, 28),
    (1, 32, 32),
    (3, 32, 32),
    (1, 64, 64),
    (3, 64, 64),
    (3, 24, 40),
    (1, 27, 33),
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_seed_default_parameter_count():
    assert n_params(VanillaVAE(3, 128)) == 3_937_635
    assert n_params(SeedVanillaVAE(3, 128)) == 3_937_635


def test_seed_weights_load_and_give_the_seeds_outputs_and_loss():
    torch.manual_seed(0)
    seed, ours = SeedVanillaVAE(3, 128).eval(), VanillaVAE(3, 128).eval()
    ours.load_state_dict(seed.state_dict())  # strict: the same module tree as the seed
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    mu_s, lv_s = seed.encode(x)
    mu_o, lv_o = ours.encode(x)
    torch.testing.assert_close(mu_o, mu_s)
    torch.testing.assert_close(lv_o, lv_s)
    z = torch.randn(4, 128)
    torch.testing.assert_close(ours.decode(z), seed.decode(z))
    args = (seed.decode(z), x, mu_s, lv_s)
    expected, got = seed.loss_function(*args, M_N=0.00025), ours.loss_function(*args, M_N=0.00025)
    torch.testing.assert_close(got["loss"], expected["loss"])
    torch.testing.assert_close(got["Reconstruction_Loss"], expected["Reconstruction_Loss"])
    torch.testing.assert_close(got["KLD"], -expected["KLD"])  # vaekit logs the divergence itself, ≥ 0
    assert got["KLD"] > 0


def test_a_script_written_for_the_seed_runs_unchanged():
    # PyTorch-VAE's experiment: model built from a config dict with a 'name' key, trained through
    # forward + loss_function(*results, M_N=...), then sample() and generate() for pictures.
    model_params = {"name": "VanillaVAE", "in_channels": 3, "latent_dim": 128}
    model = VanillaVAE(**model_params)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    real_img = torch.rand(8, 3, 64, 64) * 2 - 1
    results = model(real_img)
    recons, input, mu, log_var = results
    train_loss = model.loss_function(*results, M_N=64 / 10_000, optimizer_idx=0, batch_idx=0)
    optimizer.zero_grad()
    train_loss["loss"].backward()
    optimizer.step()
    assert set(train_loss) == {"loss", "Reconstruction_Loss", "KLD"}
    assert recons.shape == input.shape == real_img.shape and mu.shape == log_var.shape == (8, 128)
    samples = model.sample(16, "cpu")
    assert samples.shape == (16, 3, 64, 64) and samples.abs().max() <= 1
    assert model.generate(real_img).shape == real_img.shape


def test_a_vqvae_script_written_for_pytorch_vae_runs_unchanged():
    # PyTorch-VAE's VQVAE experiment: config keys name/img_size, forward's first three values are its
    # recons, input, vq_loss (two more follow: the per-example VQ loss and the codes, which
    # loss_function(*results) needs), loss_function takes M_N and the experiment's extra keywords,
    # generate() for reconstructions
    model_params = {"name": "VQVAE", "in_channels": 3, "embedding_dim": 64, "num_embeddings": 512}
    model = VQVAE(**model_params, img_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    real_img = torch.rand(4, 3, 32, 32) * 2 - 1
    results = model(real_img)
    recons, input, vq_loss = results[:3]
    assert (recons, input, vq_loss) == (results.recons, results.input, results.vq_loss)
    train_loss = model.loss_function(*results, M_N=0.00025, optimizer_idx=0, batch_idx=0)
    optimizer.zero_grad()
    train_loss["loss"].backward()
    optimizer.step()
    assert set(train_loss) >= {"loss", "Reconstruction_Loss", "VQ_Loss"}
    torch.testing.assert_close(train_loss["loss"], train_loss["Reconstruction_Loss"] + vq_loss.detach())
    assert recons.shape == input.shape == real_img.shape
    assert model.generate(real_img).shape == real_img.shape


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vanilla_vae_shapes(shape, likelihood):
    model = VanillaVAE(shape[0], 8, hidden_dims=[8, 16, 32], image_size=shape[1:], likelihood=likelihood)
    x = torch.rand(2, *shape)
    recons, input, mu, log_var = model(x)
    assert recons.shape == x.shape and mu.shape == log_var.shape == (2, 8)
    assert model.sample(3).shape == (3, *shape)
    assert model.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 30, 50), (3, 64, 64)])
def test_seed_default_architecture_at_other_sizes(shape):
    # the seed's five stride-2 stages, which its hard-coded view(-1, 512, 2, 2) tied to 64×64
    model = VanillaVAE(shape[0], 16, image_size=shape[1:]).eval()
    x = torch.rand(2, *shape) * 2 - 1
    assert model(x).recons.shape == x.shape and model.sample(3).shape == (3, *shape)
    assert model.feature_shape == (512, *(-(-side // 32) for side in shape[1:]))  # ⌈side / 2⁵⌉


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_light_conv_vae_shapes(shape, likelihood):
    model = ConvVAE(shape[0], 8, hidden_dims=[8, 16], fc_dim=32, image_size=shape[1:], likelihood=likelihood)
    x = torch.rand(2, *shape)
    recons, input, mu, log_var = model(x)
    assert recons.shape == x.shape and mu.shape == log_var.shape == (2, 8)
    assert model.feature_shape == (16, shape[1] // 4, shape[2] // 4)  # two ⌊n/2⌋ stages
    samples = model.sample(3)
    assert samples.shape == (3, *shape)
    in_range = (samples.min() >= 0) if likelihood == "bernoulli" else (samples.abs().max() <= 1)
    assert in_range


def test_light_conv_vae_example_likelihood_does_not_depend_on_its_batch():
    # no BatchNorm: an image's ELBO terms are the same alone or among others (DDP = one process)
    torch.manual_seed(0)
    model = ConvVAE(1, 4, hidden_dims=[4, 8], fc_dim=16, image_size=12).train()
    x = torch.bernoulli(torch.full((6, 1, 12, 12), 0.4))
    mu, log_var = model.encode(x)
    mu_one, log_var_one = model.encode(x[2:3])
    torch.testing.assert_close(mu[2:3], mu_one)
    torch.testing.assert_close(log_var[2:3], log_var_one)


@pytest.mark.parametrize("shape", SIZES)
def test_mlp_vae_and_vqvae_shapes(shape):
    x = torch.rand(2, *shape)
    mlp = MLPVAE(shape[0], 4, hidden_dims=[32], image_size=shape[1:])
    assert mlp(x).recons.shape == x.shape and mlp.sample(5).shape == (5, *shape)
    vq = VQVAE(shape[0], 8, 16, hidden_dims=[8, 16], image_size=shape[1:], num_residual_layers=1)
    recons, input, vq_loss = vq(x)[:3]
    assert recons.shape == x.shape and vq_loss.dim() == 0
    indices = vq.encode_indices(x)
    assert indices.shape == (2, shape[1] // 4, shape[2] // 4) and indices.dtype == torch.long
    assert vq.decode_indices(indices).shape == x.shape


def test_bernoulli_head_gives_logits_and_images_in_unit_range():
    torch.manual_seed(0)
    model = VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=28, likelihood="bernoulli")
    with torch.no_grad():
        model.final_layer[3].bias.fill_(5.0)  # push logits past 1
    assert model(torch.rand(2, 1, 28, 28)).recons.max() > 1
    samples = model.sample(4)
    assert samples.min() >= 0 and samples.max() <= 1
    assert isinstance(model.final_layer[-1], torch.nn.Identity)
    assert isinstance(VanillaVAE(1, 4, hidden_dims=[8], image_size=8).final_layer[-1], torch.nn.Tanh)


@pytest.mark.parametrize("model_cls", [VanillaVAE, MLPVAE, ConvVAE])
def test_loss_without_m_n_is_the_negative_elbo_in_nats(model_cls):
    torch.manual_seed(0)
    model = model_cls(1, 6, hidden_dims=[16, 32], image_size=12, likelihood="bernoulli")
    x = torch.bernoulli(torch.full((5, 1, 12, 12), 0.3))
    out = model(x)
    result = model.loss_function(*out)
    log_px_z = losses.bernoulli_log_likelihood(x, out.recons)
    kl = losses.gaussian_kl(out.mu, out.log_var)
    torch.testing.assert_close(result["loss"], (kl - log_px_z).mean())
    torch.testing.assert_close(result["ELBO"], -result["loss"].detach())
    torch.testing.assert_close(result["Reconstruction_Loss"], -log_px_z.mean())
    # β weights only the KL term
    torch.testing.assert_close(model.loss_function(*out, beta=0.5)["loss"], (0.5 * kl - log_px_z).mean())
    result["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gaussian_loss_uses_sigma_and_learned_sigma_trains():
    torch.manual_seed(0)
    model = VanillaVAE(3, 4, hidden_dims=[8, 16], image_size=16, sigma=0.2, learn_sigma=True)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    out = model(x)
    expected = -losses.gaussian_log_likelihood(x, out.recons, torch.log(torch.tensor(0.2)))
    torch.testing.assert_close(model.loss_function(*out)["Reconstruction_Loss"], expected.mean())
    model.loss_function(*out)["loss"].backward()
    assert model.likelihood.log_scale.grad is not None and model.likelihood.log_scale.shape == (3, 1, 1)
    assert n_params(model) == n_params(VanillaVAE(3, 4, hidden_dims=[8, 16], image_size=16)) + 3


def test_vqvae_objectives():
    torch.manual_seed(0)
    model = VQVAE(1, 8, 16, hidden_dims=[8, 16], image_size=16, num_residual_layers=1, sigma=0.5)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    out = model(x)
    recons, _, vq_loss = out[:3]
    pytorch_vae = model.loss_function(*out, M_N=0.1)
    torch.testing.assert_close(pytorch_vae["loss"], F.mse_loss(recons, x) + vq_loss)
    nats = model.loss_function(*out)
    nll = -losses.gaussian_log_likelihood(x, recons, torch.log(torch.tensor(0.5))).mean()
    torch.testing.assert_close(nats["Reconstruction_Loss"], nll)
    torch.testing.assert_close(nats["VQ_Loss"], vq_loss * 8 * 4 * 4)  # summed over the D·h·w latent map
    torch.testing.assert_close(nats["VQ_Loss"], out.vq_loss_per_example.mean())
    torch.testing.assert_close(nats["loss"], nll + out.vq_loss_per_example.mean())
    assert set(nats) == {"loss", "Reconstruction_Loss", "VQ_Loss", "perplexity", "codebook_usage"}
    assert out.indices.shape == (3, 4, 4) and 1 <= out.perplexity <= 16
    assert nats["perplexity"] == out.perplexity
    assert nats["codebook_usage"] == len(out.indices.unique()) / 16
    with pytest.raises(ValueError, match="all of forward's outputs"):  # the nats need the codes too
        model.loss_function(*out[:3])
    model.eval()
    torch.testing.assert_close(model.decode_indices(model.encode_indices(x)), model.generate(x))
    with pytest.raises(NoPriorError, match="prior over its codes"):
        model.sample(4, "cpu")


def _identical_after_reload(model, x, tmp_path):
    model.eval()
    model.save_pretrained(tmp_path / "m")
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header["name"] == type(model).registry_name and header["config"] == model.config
    assert (tmp_path / "m" / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors, not a pickle
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    return loaded


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 24)
    vae = VanillaVAE(3, 5, hidden_dims=[8, 16], image_size=(20, 24), learn_sigma=True)
    vae(x * 2 - 1)  # move BatchNorm running stats off their initial values
    _identical_after_reload(vae, x * 2 - 1, tmp_path / "a")
    _identical_after_reload(MLPVAE(3, 5, hidden_dims=[7], image_size=(20, 24)), x, tmp_path / "b")
    conv = ConvVAE(3, 5, hidden_dims=[4, 8], fc_dim=16, image_size=(21, 24), likelihood="gaussian")
    _identical_after_reload(conv, torch.rand(2, 3, 21, 24), tmp_path / "d")
    vq = VQVAE(3, 4, 8, hidden_dims=[8], image_size=(20, 24), num_residual_layers=1, ema=True)
    vq(x)
    loaded = _identical_after_reload(vq, x, tmp_path / "c")
    assert loaded.vq_layer.ema and isinstance(load_model(tmp_path / "c" / "m"), VQVAE)
    with pytest.raises(ValueError, match="holds a vqvae model, not a vanilla_vae"):
        VanillaVAE.from_pretrained(tmp_path / "c" / "m")


def test_wrong_input_gets_a_clear_value_error():
    model = VanillaVAE(3, 8, hidden_dims=[8, 16], image_size=32)
    with pytest.raises(ValueError, match=r"expects 3 input channels.*got 1"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"4-d input \[B, 3, 32, 32\], got shape \[3, 32, 32\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"built for inputs \[B, 3, 32, 32\], got shape \[2, 3, 28, 28\]"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"too small.*5 stride-2 layers"):
        VanillaVAE(3, 8, image_size=8)
    with pytest.raises(ValueError, match="too small"):
        VQVAE(1, image_size=3, hidden_dims=[8, 16])
    with pytest.raises(ValueError, match="expects 1 input channels"):
        MLPVAE(1, 4, image_size=28)(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"ConvVAE: image size 3×8 is too small.*need at least 4×4"):
        ConvVAE(1, 4, hidden_dims=[4, 8], image_size=(3, 8))
    with pytest.warns(IgnoredArgumentWarning, match="latent_dimm"):  # PyTorch-VAE's run.py passes extras
        VanillaVAE(3, 8, latent_dimm=3)
    with pytest.raises(ValueError, match="likelihood"):
        VanillaVAE(3, 8, likelihood="poisson")


def test_seed_hidden_dims_argument_is_not_mutated():
    dims = [8, 16, 32]
    VanillaVAE(1, 4, hidden_dims=dims, image_size=28)
    assert dims == [8, 16, 32]  # the seed reverses the caller's list in place


def test_sampling_temperature_scales_the_prior():
    model = MLPVAE(1, 8, hidden_dims=[16], image_size=12)
    gen = lambda: torch.Generator().manual_seed(0)
    z = model.sample_latent(20_000, gen())
    torch.testing.assert_close(model.sample_latent(20_000, gen(), temperature=0.5), 0.5 * z)
    assert torch.equal(model.sample(4, generator=gen()), model.sample(4, generator=gen(), temperature=1.0))
    vamp = MLPVAE(1, 8, hidden_dims=[16], image_size=12, prior="vamp", num_pseudo_inputs=1)
    spread = [vamp.sample_latent(20_000, gen(), temperature=t).detach().std(0).mean() for t in (1.0, 0.25)]
    assert spread[1] / spread[0] == pytest.approx(0.25, rel=0.05)  # one component: its σ times T
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.0)
