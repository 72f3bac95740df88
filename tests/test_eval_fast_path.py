"""The evaluator's fast path for log p(x): BatchNorm folded into convolutions, calls sized by the
widest activation, and a VQ-VAE's bound scored once — each the same numbers as the plain path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit import MLPVAE, VQVAE, ConvVAE, VanillaVAE
from vaekit.evaluate import (
    ACTIVATION_BUDGET,
    auto_chunk,
    batch_generators,
    fold_batchnorm,
    inference_copy,
    likelihood_metrics,
    widest_activation,
)
from vaekit.models import GatedPixelCNN
from vaekit.nn import ConvTranspose2d, permute_pixels


def _vanilla_with_statistics() -> VanillaVAE:
    """A VanillaVAE whose BatchNorms hold non-trivial running statistics and affine weights."""
    torch.manual_seed(0)
    model = VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=12, likelihood="bernoulli")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return model.eval()


def test_folding_batchnorm_keeps_the_function_and_the_original():
    model = _vanilla_with_statistics()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4  # 2 encoder, 2 decoder
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(5, 1, 12, 12)
    z = torch.randn(5, 4)
    with torch.no_grad():
        for a, b in zip(model.encode(x), folded.encode(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded.decode(z), model.decode(z), rtol=1e-5, atol=1e-5)
    # the check can fail: folding with the wrong axis for the transposed convolutions changes it
    wrong = fold_batchnorm(model)
    with torch.no_grad():
        for m in wrong.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(torch.linspace(0.5, 1.5, m.weight.shape[0]).view(-1, 1, 1, 1))
        assert not torch.allclose(wrong.decode(z), model.decode(z), rtol=1e-3, atol=1e-3)


def test_the_inference_copy_moves_activations_into_the_transposed_convs_before_them():
    """fuse_activations: a ReLU / LeakyReLU right after a transposed conv (past the Identity a folded
    BatchNorm leaves) becomes the conv's ``activation``; others stay; the function stays."""
    model = _vanilla_with_statistics()
    copy = inference_copy(model)
    assert [type(m) for m in copy.final_layer] == [
        ConvTranspose2d,
        nn.Identity,
        nn.Identity,
        type(copy.final_layer[3]),
        nn.Identity,
    ]
    assert [type(m) for m in copy.decoder[0]] == [ConvTranspose2d, nn.Identity, nn.Identity]
    assert isinstance(copy.decoder[0][0].activation, nn.LeakyReLU)
    assert [type(m) for m in copy.encoder[0]] == [
        type(model.encoder[0][0]),
        nn.Identity,
        nn.LeakyReLU,
    ]  # a Conv2d's
    assert [type(m) for m in model.decoder[0]] == [ConvTranspose2d, nn.BatchNorm2d, nn.LeakyReLU]  # untouched
    assert model.decoder[0][0].activation is None
    z = torch.randn(5, 4)
    with torch.no_grad():
        expected = model.decode(z)
        torch.testing.assert_close(copy.decode(z), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(copy.decode(z).detach(), expected, rtol=1e-5, atol=1e-5)  # with autograd
    conv = inference_copy(ConvVAE(1, 8, hidden_dims=[8, 16], fc_dim=20, image_size=12))
    assert isinstance(conv.decoder[0].activation, nn.ReLU) and type(conv.decoder[1]) is nn.Identity
    assert type(conv.decoder_input[1]) is nn.ReLU  # after a Linear: stays


def test_the_fast_path_gives_the_plain_estimate():
    """likelihood_metrics (folded copy, inference mode, its own chunk) against log_px of the model
    as it is, with the same seed and chunk: the same draws, so equal up to float rounding."""
    model = _vanilla_with_statistics()
    x = torch.bernoulli(torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(1)))
    k = 40
    chunk = auto_chunk(x, k, widest_activation(model, x))
    res = likelihood_metrics(model, [x], iw_samples=k, seed=3)
    assert res["chunk_size"] == chunk
    generator = next(batch_generators(3, x.device))  # the first batch's, as likelihood_metrics draws
    with torch.no_grad():
        log_px, stderr = model.log_px(x, k, chunk, generator)
        elbo = model.elbo(x, generator=generator)
    assert res["nll_nats"] == pytest.approx(float(-log_px.double().mean()), abs=1e-4)
    assert res["elbo_nats"] == pytest.approx(float(elbo.double().mean()), abs=1e-4)
    assert res["nll_stderr"] == pytest.approx(float(stderr.double().pow(2).sum().sqrt() / 6), rel=1e-3)
    assert res["nll_stderr"] > 1e-4  # the tolerance above is far below the Monte-Carlo error


@pytest.mark.parametrize(
    ("model", "widest"),
    [
        (MLPVAE(1, 8, hidden_dims=[20], image_size=12), 144),  # the output image
        (ConvVAE(1, 8, hidden_dims=[4, 6], fc_dim=50, image_size=12), 4 * 6 * 6),  # the first conv's map
        (VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=12), 8 * 12 * 12),  # the last transposed conv
        (MLPVAE(1, 8, hidden_dims=[30], image_size=12, prior="vamp", num_pseudo_inputs=50), 144),
    ],
)
def test_calls_are_sized_by_the_widest_activation_of_one_sample(model, widest):
    x = torch.rand(10, 1, 12, 12)
    state = torch.random.get_rng_state()
    assert widest_activation(model.eval(), x) == widest  # the VampPrior's [50, 30] is not per sample
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe leaves the RNG alone
    chunk = auto_chunk(x, 10**9, widest)
    floats = max(widest, 2 * 144)  # a sample counts at least the likelihood's two image-sized buffers
    assert chunk * len(x) * floats <= ACTIVATION_BUDGET["cpu"] < (chunk + 1) * len(x) * floats
    assert auto_chunk(x, 7, widest) == 7


def test_the_likelihood_buffers_bind_only_where_the_output_is_widest():
    x = torch.rand(100, 1, 28, 28)
    assert auto_chunk(x, 10**9, 784) == ACTIVATION_BUDGET["cpu"] // (100 * 2 * 784)  # an MLP VAE: 25
    assert auto_chunk(x, 10**9, 3136) == ACTIVATION_BUDGET["cpu"] // (100 * 3136)  # a conv map: 12
    assert auto_chunk(x, 10**9) == auto_chunk(x, 10**9, 784)


def test_a_vq_vae_bound_is_scored_once_per_batch():
    torch.manual_seed(0)
    vq = VQVAE(1, 4, 8, hidden_dims=[8], image_size=8, num_residual_layers=1, sigma=0.5).eval()
    prior = GatedPixelCNN(image_size=4, num_embeddings=8, hidden_channels=8, num_layers=2)
    vq.attach_prior(prior)
    calls = []
    original = GatedPixelCNN.log_prob

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    x = torch.rand(6, 1, 8, 8) * 2 - 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GatedPixelCNN, "log_prob", counted)
        res = likelihood_metrics(vq, x.split(3), iw_samples=50)
    assert calls == [3, 3]  # once per batch (it was three times: log_px, elbo, and codebook metrics)
    with torch.no_grad():
        bound = vq.elbo(x).double().mean()
        log_px, stderr = vq.log_px(x, 50)
    # the shortcut holds only while log_px is the bound itself
    assert torch.equal(log_px, vq.elbo(x).detach()) and not stderr.any()
    assert res["elbo_nats"] == pytest.approx(float(bound), rel=1e-6)
    assert res["nll_nats"] == pytest.approx(-float(bound), rel=1e-6)
    assert res["nll_stderr"] == 0.0


@pytest.mark.parametrize("name", ["conv_vae", "vanilla"])
def test_the_per_sample_scoring_traces_into_one_graph(name):
    """What compile_scoring compiles, on the evaluator's copy, has no graph break: a break splits the
    compiled work into several graphs with eager code between them (a oneDNN availability check
    inside a layer's forward once did, and the VanillaVAE's scoring was 15% slower for it)."""
    torch.manual_seed(0)
    if name == "conv_vae":  # the sub-pixel middle layer, the last layer by phases
        model = ConvVAE(1, 4, hidden_dims=[8, 16], fc_dim=20, image_size=12).eval()
    else:  # BatchNorm folded, activations moved into the transposed convs
        model = _vanilla_with_statistics().to(memory_format=torch.channels_last)
    copy = inference_copy(model)
    x = torch.bernoulli(torch.rand(3, 1, 12, 12))
    with torch.inference_mode():
        mu, log_var = copy.encode(x)
        order = copy.scoring_pixel_order()
        x_scored = x if order is None else permute_pixels(x, order)
        explanation = torch._dynamo.explain(copy._log_weights)(
            x_scored, mu, log_var, torch.randn(2, 3, 4), None
        )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def _has_cpp_compiler() -> bool:
    import shutil

    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile on a CPU needs a C++ compiler")
@pytest.mark.parametrize("name", ["mlp", "vanilla", "vqvae"])
def test_compiled_scoring_gives_the_eager_numbers(name):
    torch.manual_seed(0)
    if name == "mlp":  # compile_scoring compiles the log-weights: decoder, likelihood, prior, proposal
        model = MLPVAE(1, 8, hidden_dims=[32], image_size=16).eval()  # 16 pixels per lane: grouped products
        x = torch.bernoulli(torch.rand(20, 1, 16, 16))
    elif name == "vanilla":  # with BatchNorm folded, channels last, a one-channel last layer
        model = _vanilla_with_statistics().to(memory_format=torch.channels_last)
        x = torch.bernoulli(torch.rand(20, 1, 12, 12))
    else:  # the default: the decoder alone, which the VQ-VAE's bound decodes with
        model = VQVAE(1, 4, 16, hidden_dims=[8, 16], image_size=12, num_residual_layers=1).eval()
        model.attach_prior(GatedPixelCNN(image_size=3, num_embeddings=16, hidden_channels=8, num_layers=2))
        x = torch.rand(20, 1, 12, 12) * 2 - 1
    batches = list(x.split(10))
    # eager in the calling thread, compiled by two threads: the graphs are made at one intra-op thread
    common = {"iw_samples": 30, "chunk_size": 16, "seed": 3}
    eager = likelihood_metrics(model, batches, **common, workers=1)
    compiled = likelihood_metrics(model, batches, **common, compile=True, workers=2)
    assert compiled.keys() == eager.keys() and compiled["workers"] == 2
    for key in ("elbo_nats", "nll_nats", "nll_stderr"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-4), key
    # the model itself is left as it was: only the evaluator's copy is compiled
    assert "decode" not in vars(model) and "_log_weights" not in vars(model)
    assert getattr(model, "likelihood", None) is None or not model.likelihood.grouped_products
