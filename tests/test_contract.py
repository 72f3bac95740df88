"""The model contract: every registered model implements it, callers never branch on the family,
and what vaekit 0.1 saved still loads and resumes."""

import ast
import copy
import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaekit import NamedOutput, NoPriorError, load_model
from vaekit.models import MODELS, AutoEncoder, Model, build_model

SRC = Path(__file__).parents[1] / "src" / "vaekit"
FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_checkpoints"
SHAPE = (1, 12, 12)

#: Small constructor arguments for each registered model (image models get their shape from build_model).
SMALL = {
    "vanilla_vae": {"latent_dim": 3, "hidden_dims": [4, 8]},
    "conv_vae": {"latent_dim": 3, "hidden_dims": [4, 8], "fc_dim": 16},
    "mlp_vae": {"latent_dim": 3, "hidden_dims": [8], "prior": "vamp", "num_pseudo_inputs": 5},
    "vqvae": {"embedding_dim": 4, "num_embeddings": 8, "hidden_dims": [4, 8], "num_residual_layers": 1},
    "linear_gaussian_vae": {"data_dim": 6, "latent_dim": 2},
    "pixelcnn_prior": {"num_embeddings": 6, "hidden_channels": 8, "num_layers": 3, "num_classes": 3},
}


def test_every_registered_model_has_small_arguments_here():
    assert set(SMALL) == set(MODELS)


def _model_and_input(name):
    torch.manual_seed(0)
    if name == "linear_gaussian_vae":
        return MODELS[name](**SMALL[name]), torch.randn(5, 6)
    if name == "pixelcnn_prior":  # a prior over 4×5 maps of code indices
        return MODELS[name](image_size=(4, 5), **SMALL[name]), torch.randint(6, (5, 1, 4, 5))
    model = build_model(name, SMALL[name], SHAPE)
    return model, torch.rand(5, *SHAPE)


def _labels(model, n):
    return torch.arange(n) % model.num_classes if model.num_classes else None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_loss_function(name):
    model, x = _model_and_input(name)
    assert isinstance(model, Model) and type(model).registry_name == name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # labels= is PyTorch-VAE's keyword: accepted without a word
        out = model(x, labels=_labels(model, len(x)))
    assert isinstance(out, NamedOutput) and len(out._fields) == len(out)
    terms = model.loss_function(*out)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in terms.values())
    assert terms["loss"].requires_grad and not any(v.requires_grad for k, v in terms.items() if k != "loss")
    terms["loss"].backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for n, p in model.named_parameters()
        if n in trained
    )
    # β weighs the KL term where there is one; the terms it leaves alone stay equal
    torch.manual_seed(1)
    half = model.loss_function(*out, beta=0.5)
    assert set(half) == set(terms)
    if "KLD" in terms and name != "mlp_vae":  # (the VampPrior's KL is sampled afresh)
        expected = terms["Reconstruction_Loss"] + 0.5 * terms["KLD"]
        torch.testing.assert_close(half["loss"].detach(), expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_survive_copy_pickle_and_rebuilding_from_an_iterable(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        out = model(x, labels=_labels(model, len(x)))
    for other in (
        copy.deepcopy(out),
        pickle.loads(pickle.dumps(out)),
        type(out)(iter(out)),
        type(out)._make(out),
    ):
        assert type(other) is type(out) and len(other) == len(out)
        assert all(torch.equal(a, b) for a, b in zip(other, out, strict=True))
        assert all(torch.equal(getattr(other, f), getattr(out, f)) for f in out._fields)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sampling_works_or_says_why_not(name):
    model, x = _model_and_input(name)
    model.eval()
    if model.can_sample:
        samples = model.sample(3, "cpu", generator=torch.Generator().manual_seed(0))
        again = model.sample(3, "cpu", generator=torch.Generator().manual_seed(0))
        # one example's worth of values per sample: [3, C, H, W] images, or [3, h, w] code maps
        assert samples.flatten(1).shape == x[:3].flatten(1).shape and torch.equal(samples, again)
        assert samples.dtype == x.dtype  # images for an image model, codes for a prior over codes
    else:
        with pytest.raises(NoPriorError, match="prior") as info:
            model.sample(3, "cpu")
        assert isinstance(info.value, Warning)  # what PyTorch-VAE's experiment catches


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_is_the_constructor_and_save_load_round_trips(name, tmp_path):
    model, x = _model_and_input(name)
    model.eval()
    json.dumps(model.config)  # plain JSON
    rebuilt = type(model)(**model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    model.save_pretrained(tmp_path / "m")
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    assert header == {"name": name, "config": model.config}
    for loaded in (type(model).from_pretrained(tmp_path / "m"), load_model(tmp_path / "m")):
        assert type(loaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(n for n, c in MODELS.items() if issubclass(c, AutoEncoder)))
def test_the_autoencoder_contract(name):
    model, x = _model_and_input(name)
    model.eval()
    z = model.latent(x)
    assert z.shape[0] == len(x)
    torch.testing.assert_close(model.reconstruct(x), model.decode_latent(z), rtol=0, atol=0)
    assert model.reconstruct(x).shape == x.shape and model.generate(x).shape == x.shape
    encoded = model.encode_latents(x)
    assert encoded and all(v.shape[0] == len(x) for v in encoded.values())
    assert model.latent_type in ("gaussian", "discrete")
    if model.estimates_log_px:
        log_px, stderr = model.log_px(x, num_samples=4)
        assert log_px.shape == stderr.shape == (len(x),) and (model.elbo(x) <= log_px + 50).all()
    for picture in model.extra_pictures(2).values():
        assert picture.shape[1:] == x.shape[1:]


# --- callers never ask which family a model is ------------------------------------------------------

MODEL_CLASS_NAMES = {cls.__name__ for cls in MODELS.values()} | {"GaussianLatentVAE", "AutoEncoder", "VAE"}
CALLERS = [
    "train.py",
    "evaluate.py",
    "visualize.py",
    "runs.py",
    *[f"cli/{p.name}" for p in (SRC / "cli").glob("*.py")],
]


@pytest.mark.parametrize("path", CALLERS)
def test_callers_do_not_branch_on_the_model_family(path):
    tree = ast.parse((SRC / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            assert not names & MODEL_CLASS_NAMES, (
                f"{path}:{node.lineno} branches on {names & MODEL_CLASS_NAMES}"
            )


# --- what vaekit 0.1 wrote -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vanilla_vae", "conv_vae", "mlp_vae_vamp", "vqvae"])
def test_models_saved_by_vaekit_0_1_load_and_compute_what_they_did(name):
    directory = FIXTURES / name
    assert "class" in json.loads((directory / "config.json").read_text())  # the old header
    expected = load_file(str(directory / "expected.safetensors"))
    model = load_model(directory).eval()
    assert type(model).from_pretrained(directory).state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():  # float32 tolerance: the fixtures were made with another thread count
        torch.testing.assert_close(model.reconstruct(expected["x"]), expected["reconstruct"])
        for i, value in enumerate(model.encode(expected["x"])):
            torch.testing.assert_close(value, expected[f"encode.{i}"])


def test_a_run_stopped_by_vaekit_0_1_resumes_to_the_same_weights(tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run", run)
    result = cli("train", "--resume", run, "--no-progress")
    assert result.rc == 0, result.err
    got = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    expected = load_file(str(FIXTURES / "run_resumed_last.safetensors"))
    assert got.keys() == expected.keys()
    # The expectation was made on an Intel Xeon: another CPU's kernels may round the last bit
    # differently (3e-8 seen on an AMD EPYC), where a resume that lost the optimizer state, the
    # schedule or the random stream would differ by about a step's size (the resumed epoch moves the
    # weights by 2.6e-3 in all, about 2.6e-4 a step).
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)
    start = load_file(str(FIXTURES / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all((expected[k] - start[k]).abs().max() > 1e-3 for k in expected)  # the tolerance is small
    assert json.loads((run / "checkpoints" / "last" / "config.json").read_text())["name"] == "mlp_vae"
    # the old metrics.csv keeps its columns: every appended row lines up with its header
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == (FIXTURES / "run" / "metrics.csv").read_text().splitlines()[0]
    assert len(rows) > 4 and all(row.count(",") == rows[0].count(",") for row in rows)
