"""Code written for PyTorch-VAE runs unchanged on vaekit, and PyTorch-VAE's weights load.

The specification is tests/pytorch_vae_reference.py: PyTorch-VAE's VQVAE re-implemented, and the
calls its run.py / experiment.py make on a model. The model configs below are the ``model_params``
and ``exp_params`` of PyTorch-VAE's configs/vae.yaml and configs/vq_vae.yaml (master).
"""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import vaekit
from pytorch_vae_reference import (
    REFERENCE_MODELS,
    RefVQVAE,
    build_model,
    configure_optimizers,
    sample_images,
    training_step,
    validation_step,
)
from seed_reference import SeedVanillaVAE
from vaekit import VQVAE, VanillaVAE
from vaekit.models.pytorch_vae import (
    VAE_MODEL_NAMES,
    convert_vqvae_state_dict,
    strip_experiment_prefix,
    vqvae_kwargs_from_state_dict,
)

VAE_YAML = {
    "model_params": {"name": "VanillaVAE", "in_channels": 3, "latent_dim": 128},
    "exp_params": {
        "LR": 0.005,
        "weight_decay": 0.0,
        "scheduler_gamma": 0.95,
        "kld_weight": 0.00025,
        "manual_seed": 1265,
    },
}
VQ_VAE_YAML = {
    "model_params": {
        "name": "VQVAE",
        "in_channels": 3,
        "embedding_dim": 64,
        "num_embeddings": 512,
        "img_size": 64,
        "beta": 0.25,
    },
    "exp_params": {
        "LR": 0.005,
        "weight_decay": 0.0,
        "scheduler_gamma": 0.0,
        "kld_weight": 0.00025,
        "manual_seed": 1265,
    },
}
#: The same configs with small networks (only keys PyTorch-VAE's constructors take), for training.
SMALL_VAE = {"name": "VanillaVAE", "in_channels": 3, "latent_dim": 8, "hidden_dims": [8, 16, 32, 64, 128]}
SMALL_VQ_VAE = {
    **VQ_VAE_YAML["model_params"],
    "embedding_dim": 8,
    "num_embeddings": 32,
    "hidden_dims": [16, 32],
    "img_size": 32,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def celeba_batch(batch_size, size):
    """What PyTorch-VAE's data module yields: ToTensor images in [0, 1] and 40 CelebA attributes."""
    return torch.rand(batch_size, 3, size, size), torch.randint(0, 2, (batch_size, 40))


def vaekit_vqvae_for(state_dict, image_size):
    """vaekit's VQVAE shaped like PyTorch-VAE's (what ``from_pytorch_vae`` builds, step by step)."""
    kwargs = vqvae_kwargs_from_state_dict(state_dict)
    return VQVAE(**kwargs, image_size=image_size, final_encoder_activation=True)


# --- the reference itself ---------------------------------------------------------------------------


def test_reference_vqvae_has_pytorch_vae_weight_count():
    # VQVAE(3, 64, 512), hidden_dims [128, 256], counted by hand from PyTorch-VAE's layers:
    # encoder 4×4 convs 6,272 + 524,544; 3×3 conv 590,080; 6 residual layers 6·655,360; 1×1 conv
    # 16,448; codebook 32,768; decoder 3×3 conv 147,712; 6·655,360; transposed convs 524,416 + 6,147
    assert n_params(RefVQVAE(3, 64, 512)) == 9_712_707


def test_experiment_port_runs_pytorch_vaes_own_models():
    # the port itself, on PyTorch-VAE's models: its VQVAE's sample() raises Warning, which is caught
    vq_params = {**SMALL_VQ_VAE}
    vae_params = {**SMALL_VAE, "hidden_dims": [8, 16, 32, 64, 512]}  # its decoder needs 512 at 64×64
    for model_params, size, sampled in ((vq_params, 32, False), (vae_params, 64, True)):
        model = build_model({"model_params": model_params}, REFERENCE_MODELS)
        batch = celeba_batch(2, size)
        training_step(model, batch, VQ_VAE_YAML["exp_params"])["loss"].backward()
        logged = validation_step(model.eval(), batch, VQ_VAE_YAML["exp_params"])
        assert set(logged) >= {"val_loss", "val_Reconstruction_Loss"}
        recons, samples = sample_images(model, *batch)
        assert recons.shape == batch[0].shape
        assert (samples is not None) == sampled


def test_pytorch_vae_vq_config_zeroes_the_learning_rate_after_one_epoch():
    # documents a PyTorch-VAE quirk the docs mention: scheduler_gamma 0.0 is "not None"
    optimizer, scheduler = configure_optimizers(nn.Linear(2, 2), VQ_VAE_YAML["exp_params"])
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0


# --- the state-dict converter ---------------------------------------------------------------------


def test_vae_model_names():
    assert VAE_MODEL_NAMES == {"VanillaVAE": "vanilla_vae", "VQVAE": "vqvae"}


def test_converter_key_correspondence_for_the_default_layout():
    state_dict = RefVQVAE(3, 64, 512).state_dict()
    converted = convert_vqvae_state_dict(state_dict)
    expected = {  # n = 2 hidden dims, R = 6 residual layers
        "encoder.0.0.weight": "encoder.0.weight",
        "encoder.1.0.bias": "encoder.2.bias",
        "encoder.2.0.weight": "encoder.4.weight",  # 3×3 conv
        "encoder.3.resblock.0.weight": "encoder.6.block.0.weight",
        "encoder.8.resblock.2.weight": "encoder.11.block.2.weight",
        "encoder.10.0.bias": "encoder.13.bias",  # 1×1 conv (encoder.9 is a LeakyReLU)
        "vq_layer.embedding.weight": "vq_layer.embedding.weight",
        "decoder.0.0.weight": "decoder.0.weight",
        "decoder.1.resblock.0.weight": "decoder.2.block.0.weight",
        "decoder.6.resblock.2.weight": "decoder.7.block.2.weight",
        "decoder.8.0.weight": "decoder.9.weight",  # decoder.7 is a LeakyReLU
        "decoder.9.0.bias": "decoder.11.bias",  # the last transposed conv, to 3 channels
    }
    for source, target in expected.items():
        assert converted[target] is state_dict[source]
    assert len(converted) == len(state_dict) == 2 * 2 + 2 + 2 * 6 + 2 + 1 + 2 + 2 * 6 + 2 * 2


@pytest.mark.parametrize(
    ("hidden_dims", "kwargs"),
    [
        (None, {"hidden_dims": [128, 256]}),
        ([8, 16, 32], {"hidden_dims": [8, 16, 32]}),
    ],
)
def test_constructor_arguments_are_read_from_the_state_dict(hidden_dims, kwargs):
    state_dict = RefVQVAE(3, 16, 40, hidden_dims=hidden_dims).state_dict()
    assert vqvae_kwargs_from_state_dict(state_dict) == {
        "in_channels": 3,
        "embedding_dim": 16,
        "num_embeddings": 40,
        "num_residual_layers": 6,
        **kwargs,
    }


@pytest.mark.parametrize(("hidden_dims", "size"), [(None, 32), ([8, 16, 32], 24)])
def test_converted_weights_give_the_references_outputs_and_gradients(hidden_dims, size):
    torch.manual_seed(0)
    reference = RefVQVAE(3, 16, 64, hidden_dims=hidden_dims, img_size=size)
    model = vaekit_vqvae_for(reference.state_dict(), size)
    model.load_state_dict(convert_vqvae_state_dict(reference.state_dict()), strict=True)
    x = torch.rand(3, 3, size, size) * 2 - 1

    reference.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x)[0], reference.encode(x)[0])
        expected, got = reference(x), model(x)
    torch.testing.assert_close(got[0], expected[0])  # recons
    torch.testing.assert_close(got[2], expected[2])  # vq_loss

    # training mode (no BatchNorm, so the same function): PyTorch-VAE's objective and its gradients
    reference.train(), model.train()
    expected_loss = reference.loss_function(*reference(x))["loss"]
    got_loss = model.loss_function(*model(x), M_N=0.00025)["loss"]
    torch.testing.assert_close(got_loss, expected_loss)
    expected_loss.backward()
    got_loss.backward()
    reference_grads = {name: p.grad for name, p in reference.named_parameters()}
    for name, grad in convert_vqvae_state_dict(reference_grads).items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)


def test_lightning_checkpoint_prefix_is_removed():
    state_dict = RefVQVAE(3, 8, 16, hidden_dims=[8, 16]).state_dict()
    checkpoint_state = {f"model.{key}": value for key, value in state_dict.items()}  # VAEXperiment.model
    assert strip_experiment_prefix(checkpoint_state).keys() == state_dict.keys()
    assert convert_vqvae_state_dict(checkpoint_state).keys() == convert_vqvae_state_dict(state_dict).keys()
    assert vqvae_kwargs_from_state_dict(checkpoint_state)["hidden_dims"] == [8, 16]


def test_converter_names_the_key_that_does_not_fit():
    state_dict = RefVQVAE(3, 8, 16, hidden_dims=[8, 16]).state_dict()
    # PyTorch-VAE's older VQVAE had BatchNorm after each conv
    with pytest.raises(ValueError, match=r"unexpected key 'encoder\.0\.1\.weight'"):
        convert_vqvae_state_dict({**state_dict, "encoder.0.1.weight": torch.ones(8)})
    incomplete = {key: value for key, value in state_dict.items() if key != "decoder.3.resblock.2.weight"}
    with pytest.raises(ValueError, match=r"missing key 'decoder\.3\.resblock\.2\.weight'"):
        convert_vqvae_state_dict(incomplete)
    with pytest.raises(ValueError, match=r"encoder\.0\.0\.weight"):  # 3×3 convs: a VanillaVAE
        convert_vqvae_state_dict(SeedVanillaVAE(3, 8).state_dict())
    with pytest.raises(ValueError, match=r"encoder\.0\.0\.weight"):
        vqvae_kwargs_from_state_dict({"fc.weight": torch.ones(2, 2)})


def test_a_one_channel_pytorch_vae_vqvae_is_refused_with_the_reason():
    # PyTorch-VAE's decoder ends in 3 channels whatever in_channels is; vaekit's ends in in_channels
    state_dict = RefVQVAE(1, 8, 16, hidden_dims=[8, 16]).state_dict()
    assert len(convert_vqvae_state_dict(state_dict)) == len(state_dict)
    with pytest.raises(ValueError, match=r"decoder\.9\.0\.weight.*3 channels"):
        vqvae_kwargs_from_state_dict(state_dict)


# --- PyTorch-VAE's VanillaVAE weights load as they are ---------------------------------------------


def test_pytorch_vae_vanilla_vae_state_dict_loads_strictly():
    # tests/seed_reference.py's SeedVanillaVAE is PyTorch-VAE's VanillaVAE (test_models.py checks the
    # outputs and loss in detail); here: a Lightning checkpoint's state dict, prefix removed, loads
    torch.manual_seed(0)
    seed = SeedVanillaVAE(3, 128).eval()
    checkpoint_state = {f"model.{key}": value for key, value in seed.state_dict().items()}
    model = VanillaVAE(3, 128).eval()
    model.load_state_dict(strip_experiment_prefix(checkpoint_state), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(model.encode(x), seed.encode(x), strict=True):
            torch.testing.assert_close(got, expected)


# --- vaekit's side of the compatibility (API: vaekit.vae_models, NoPriorError, from_pytorch_vae) ----


def test_vae_models_has_pytorch_vaes_names():
    from vaekit import vae_models

    assert set(vae_models) == set(VAE_MODEL_NAMES)
    assert vae_models["VanillaVAE"] is VanillaVAE and vae_models["VQVAE"] is VQVAE


def test_pytorch_vae_configs_build_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vae = build_model(VAE_YAML)  # 'name' goes to the constructor too, and is ignored silently
        vq_vae = build_model(VQ_VAE_YAML)
        vq_vae_32 = build_model({"model_params": {**VQ_VAE_YAML["model_params"], "img_size": 32}})
    assert isinstance(vae, VanillaVAE) and isinstance(vq_vae, VQVAE)
    assert vae.input_shape == (3, 64, 64) and n_params(vae) == 3_937_635  # PyTorch-VAE's count
    assert vq_vae.input_shape == (3, 64, 64) and vq_vae_32.input_shape[1:] == (32, 32)  # img_size
    assert n_params(vq_vae) == n_params(RefVQVAE(**VQ_VAE_YAML["model_params"]))


@pytest.mark.parametrize(
    ("model_params", "key"),
    [
        ({**SMALL_VAE, "latnt_dim": 4}, "latnt_dim"),
        ({**SMALL_VQ_VAE, "kld_weight": 0.00025}, "kld_weight"),
    ],
)
def test_an_unknown_constructor_keyword_warns_naming_it(model_params, key):
    from vaekit import vae_models

    with pytest.warns(UserWarning, match=key):
        model = vae_models[model_params["name"]](**model_params)
    assert isinstance(model, vae_models[model_params["name"]])


@pytest.mark.parametrize(("model_params", "size"), [(SMALL_VAE, 64), (SMALL_VQ_VAE, 32)])
def test_an_unknown_loss_keyword_warns_naming_it(model_params, size):
    model = build_model({"model_params": model_params}).eval()
    x, _ = celeba_batch(2, size)
    with torch.no_grad():
        results = model(x)
    expected = model.loss_function(*results, M_N=0.00025)
    with pytest.warns(UserWarning, match="kld_weight"):
        terms = model.loss_function(*results, M_N=0.00025, kld_weight=0.1)
    torch.testing.assert_close(terms["loss"], expected["loss"])


@pytest.mark.parametrize(("model_params", "size"), [(SMALL_VAE, 64), (SMALL_VQ_VAE, 32)])
def test_the_experiments_keywords_do_not_warn(model_params, size):
    from vaekit.errors import NoPriorError

    model = build_model({"model_params": model_params})
    x, labels = celeba_batch(2, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = model(x, labels=labels)
        model.loss_function(*results, M_N=0.00025, optimizer_idx=0, batch_idx=3)
        assert model.generate(x, labels=labels).shape == x.shape
        if isinstance(model, VQVAE):
            with pytest.raises(NoPriorError):
                model.sample(4, "cpu", labels=labels)
        else:
            assert model.sample(4, "cpu", labels=labels).shape == (4, *x.shape[1:])


@pytest.mark.parametrize(("model_params", "size"), [(SMALL_VAE, 64), (SMALL_VQ_VAE, 32)])
def test_pytorch_vaes_experiment_trains_vaekit_models(model_params, size):
    torch.manual_seed(0)
    exp_params = {**VQ_VAE_YAML["exp_params"], "LR": 1e-3}
    model = build_model({"model_params": model_params})
    optimizer, _ = configure_optimizers(model, exp_params)
    batch = celeba_batch(4, size)

    train_loss = training_step(model, batch, exp_params)
    assert "loss" in train_loss and train_loss["loss"].dim() == 0 and train_loss["loss"].requires_grad
    optimizer.zero_grad()
    train_loss["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))

    model.eval()
    logged = validation_step(model, batch, exp_params)
    assert "val_loss" in logged and all(isinstance(v, float) and v == v for v in logged.values())
    assert not model.training

    recons, samples = sample_images(model, *batch)
    assert recons.shape == batch[0].shape
    if isinstance(model, VQVAE):
        assert samples is None  # sample() raised a Warning, which the experiment skips
    else:
        assert samples.shape == (144, *batch[0].shape[1:])


def test_vqvae_sample_raises_a_warning_that_mentions_a_prior():
    from vaekit.errors import NoPriorError, VaekitError

    assert issubclass(NoPriorError, Warning) and issubclass(NoPriorError, VaekitError)
    model = build_model({"model_params": SMALL_VQ_VAE})
    with pytest.raises(NoPriorError, match="prior"):
        model.sample(144, "cpu", labels=torch.zeros(4, 40))


def _vae_output():
    return VanillaVAE(3, 4, hidden_dims=[4, 8], image_size=16)(torch.rand(2, 3, 16, 16)), ("recons", "mu")


def _vqvae_output():
    return VQVAE(3, 4, 8, hidden_dims=[4, 8], image_size=16)(torch.rand(2, 3, 16, 16)), ("recons", "indices")


def _quantizer_output():
    return vaekit.VectorQuantizer(8, 4)(torch.randn(2, 4, 3, 3)), ("quantized", "indices")


@pytest.mark.parametrize("make", [_vae_output, _vqvae_output, _quantizer_output])
def test_outputs_survive_deepcopy_pickle_and_gather(make):
    torch.manual_seed(0)
    out, fields = make()
    gathered = type(out)(iter(out))  # what torch.nn.parallel.gather does with a model's outputs
    assert type(gathered) is type(out)
    assert len(gathered) == len(out) and all(torch.equal(a, b) for a, b in zip(gathered, out, strict=True))
    assert torch.equal(getattr(gathered, fields[0]), getattr(out, fields[0]))

    with torch.no_grad():
        out, fields = make()  # deepcopy and pickle take graph leaves only
    for copied in (copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
        assert type(copied) is type(out)
        assert len(copied) == len(out) and all(torch.equal(a, b) for a, b in zip(copied, out, strict=True))
        for field in fields:
            assert torch.equal(getattr(copied, field), getattr(out, field)), field


def test_from_pytorch_vae_gives_the_references_outputs():
    torch.manual_seed(0)
    reference = RefVQVAE(3, 64, 512, img_size=32).eval()  # PyTorch-VAE's defaults: hidden_dims [128, 256]
    model = VQVAE.from_pytorch_vae(reference.state_dict(), image_size=32).eval()
    assert model.input_shape == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x)[0], reference.encode(x)[0])
        expected, got = reference(x), model(x)
        torch.testing.assert_close(got.recons, expected[0])
        torch.testing.assert_close(got.vq_loss, expected[2])
        torch.testing.assert_close(
            model.loss_function(*got, M_N=0.00025)["loss"], reference.loss_function(*expected)["loss"]
        )


def test_from_pytorch_vae_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    reference = RefVQVAE(3, 8, 16, hidden_dims=[8, 16]).eval()
    checkpoint_state = {f"model.{key}": value for key, value in reference.state_dict().items()}
    model = VQVAE.from_pytorch_vae(checkpoint_state, image_size=16).eval()
    model.save_pretrained(tmp_path)
    reloaded = VQVAE.from_pretrained(tmp_path).eval()  # keeps the final LeakyReLU via its config
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode(x)[0], reference.encode(x)[0])
        torch.testing.assert_close(reloaded(x).recons, reference(x)[0])
