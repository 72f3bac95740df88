"""Tests for vaekit.config: defaults, strict loading, YAML and ``--set`` overrides, the shipped configs."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest
import torch

from vaekit.config import (
    DATA_SOURCES,
    DEFAULT_MODEL,
    DOWNLOADABLE,
    Config,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    check_type,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    load_config,
    save_config,
)
from vaekit.errors import ConfigError
from vaekit.models import MODELS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
MNIST_LIKE = (1, 28)
NATIVE_SHAPE = {"mnist5k": MNIST_LIKE, "mnist": MNIST_LIKE, "fashion-mnist": MNIST_LIKE, "cifar10": (3, 32)}
NATIVE_SHAPE["folder"] = (3, 64)
NATIVE_SHAPE["codes"] = (1, 7)  # the 7×7 code maps of a Fashion-MNIST VQ-VAE


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(overrides: Sequence[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


# --- defaults and round trips ---------------------------------------------------------------------


def test_defaults_are_the_main_job():
    cfg = load_config()
    assert cfg == Config() == config_from_dict({})
    assert cfg.model.name == DEFAULT_MODEL["name"] == "vanilla_vae"
    assert {k: cfg.model.params[k] for k in DEFAULT_MODEL if k != "name"} == {
        "latent_dim": 16,
        "hidden_dims": [32, 64, 128],
        "likelihood": "bernoulli",
    }
    assert cfg.data.name == "mnist5k"
    assert (cfg.train.batch_size, cfg.train.lr) == (128, 2e-3)


def test_default_yaml_equals_the_defaults():
    assert load_config(CONFIG_DIR / "default.yaml") == load_config(None)


def test_model_params_are_stored_complete():
    params = ModelConfig("vqvae").params  # left-out arguments take the constructor's defaults
    assert params["num_embeddings"] == 512 and params["ema"] is False and params["hidden_dims"] is None
    assert "in_channels" not in params and "image_size" not in params
    mlp = ModelConfig("mlp_vae").params
    assert mlp["hidden_dims"] == [300, 300] and isinstance(mlp["hidden_dims"], list)  # a tuple default
    # With the default model, left-out keys come from DEFAULT_MODEL first.
    assert ModelConfig("vanilla_vae", {"latent_dim": 8}).params["hidden_dims"] == [32, 64, 128]
    assert load_config(None, ["model.latent_dim=8"]).model == ModelConfig(params={"latent_dim": 8})


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_dict_and_yaml_round_trip(path, tmp_path):
    cfg = load_config(path)
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert set(d) == {"model", "data", "train"} and d["model"]["name"] == cfg.model.name
    assert type(d["model"]) is dict and not any(isinstance(v, tuple) for v in d["model"].values())
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg
    assert load_config(write(tmp_path, dump_yaml(cfg), "again.yaml")) == cfg


def test_round_trip_keeps_types():
    cfg = load_config(None, ["train.lr=1e-5", "train.grad_clip=null", "model.hidden_dims=[8]"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg and again.train.lr == 1e-5 and again.train.grad_clip is None
    assert "hidden_dims: [8]" in dump_yaml(cfg)


def test_config_pickles_and_copies():
    cfg = load_config(CONFIG_DIR / "cifar10_vqvae.yaml")
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg


def test_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model.params["latent_dim"] = 3  # type: ignore[index]
    assert dataclasses.replace(cfg.train, lr=0.5).lr == 0.5  # the way to change one


# --- overrides ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "section", "key", "expected", "kind"),
    [
        ("train.epochs=3", "train", "epochs", 3, int),
        ("train.lr=1e-3", "train", "lr", 1e-3, float),  # no dot: a string in plain YAML 1.1
        ("train.lr=5E-4", "train", "lr", 5e-4, float),
        ("train.lr=0.01", "train", "lr", 0.01, float),
        ("train.lr=1", "train", "lr", 1.0, float),  # an int where a float goes
        ("train.compile=true", "train", "compile", True, bool),
        ("train.grad_clip=null", "train", "grad_clip", None, type(None)),
        ("train.early_stopping_patience=5", "train", "early_stopping_patience", 5, int),
        ("data.path=null", "data", "path", None, type(None)),
        ("data.path=/tmp/faces", "data", "path", "/tmp/faces", str),
        ("data.valid_split=valid-10k", "data", "valid_split", "valid-10k", str),
        ("data.image_size=32", "data", "image_size", 32, int),
        ("model.hidden_dims=[16,32]", "model", "hidden_dims", [16, 32], list),
        ("model.hidden_dims=null", "model", "hidden_dims", None, type(None)),
        ("model.sigma=1e-2", "model", "sigma", 0.01, float),
    ],
)
def test_overrides_of_every_type(override, section, key, expected, kind):
    cfg = load_config(None, [override])
    value = cfg.model.params[key] if section == "model" else getattr(getattr(cfg, section), key)
    assert value == expected and type(value) is kind


def test_overrides_apply_in_order_on_a_file():
    path = CONFIG_DIR / "fashion_mnist_vae.yaml"
    cfg = load_config(path, ["train.epochs=2", "train.epochs=4", "data.binarize=true"])
    assert cfg.train.epochs == 4 and cfg.data.binarize is True
    assert cfg.model.params["latent_dim"] == load_config(path).model.params["latent_dim"]


def test_apply_overrides_does_not_change_its_input():
    d = {"train": {"lr": 0.1}}
    out = apply_overrides(d, ["train.lr=0.2", "data.name=mnist"])
    assert d == {"train": {"lr": 0.1}} and out == {"train": {"lr": 0.2}, "data": {"name": "mnist"}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=abc", "train.epochs: expected int, got 'abc' (str)"),
        ("train.epochs=1.5", "train.epochs: expected int, got 1.5 (float)"),
        ("train.epochs=true", "train.epochs: expected int, got True (bool)"),
        ("train.lr=fast", "train.lr: expected float, got 'fast' (str)"),
        ("train.lr=false", "train.lr: expected float, got False (bool)"),
        ("train.compile=1", "train.compile: expected bool, got 1 (int)"),
        ("train.grad_clip=[1]", "train.grad_clip: expected float or null"),
        ("data.path=[a]", "data.path: expected str or null"),
        ("model.latent_dim=abc", "model.latent_dim: expected int, got 'abc' (str)"),
        ("model.hidden_dims=[16,x]", "model.hidden_dims: expected list of int or null"),
        ("model.hidden_dims=16", "model.hidden_dims: expected list of int or null, got 16 (int)"),
    ],
)
def test_override_type_errors(override, message):
    assert message in error_of([override])


@pytest.mark.parametrize("override", ["train.lr", "lr=1e-3", "train.=1", ".lr=1", "train.lr.x=1", "=3"])
def test_malformed_override_shows_the_right_form(override):
    message = error_of([override])
    assert "SECTION.KEY=VALUE" in message and "train.lr=1e-3" in message


def test_override_with_bad_yaml_value():
    assert "invalid YAML" in error_of(["model.hidden_dims=[16,32"])


def test_overriding_the_model_name_switches_validation():
    cfg = load_config(None, ["model.embedding_dim=8", "model.name=vqvae"])  # model.name goes first
    assert cfg.model.name == "vqvae" and cfg.model.params["embedding_dim"] == 8
    # Switching models starts the section afresh: default.yaml's latent_dim is no VQVAE argument.
    switched = load_config(CONFIG_DIR / "default.yaml", ["model.name=vqvae"])
    assert switched.model == ModelConfig("vqvae") and "latent_dim" not in switched.model.params
    message = error_of(["model.name=vqvae", "model.latent_dim=8"])
    assert "unknown key model.latent_dim" in message
    # Naming the same model again keeps the section's other settings.
    same = load_config(CONFIG_DIR / "cifar10_vqvae.yaml", ["model.name=vqvae"])
    assert same == load_config(CONFIG_DIR / "cifar10_vqvae.yaml")


# --- strictness and messages ----------------------------------------------------------------------


def test_unknown_key_suggests_the_closest():
    assert error_of(["train.lrr=1e-3"]) == "unknown key train.lrr — did you mean train.lr?"
    with pytest.raises(ConfigError, match=r"unknown key data\.nmae — did you mean data\.name\?"):
        config_from_dict({"data": {"nmae": "mnist"}})
    assert "valid: train.epochs" in error_of(["train.zzzzzzzz=1"])  # nothing close: list them


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown section 'trian' — did you mean train"):
        config_from_dict({"trian": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(None, ["optim.lr=1"])


def test_unknown_model_name_suggests_a_registered_one():
    message = error_of(["model.name=vanila_vae"])
    assert "unknown model 'vanila_vae'" in message and "did you mean 'vanilla_vae'" in message
    assert "vqvae" in error_of(["model.name=transformer"])  # no close match: the list


def test_model_param_not_in_the_constructor():
    message = error_of(["model.latent_dimm=8"])
    assert message == "unknown key model.latent_dimm — did you mean model.latent_dim?"
    with pytest.raises(ConfigError, match=r"model\.num_embedings — did you mean model\.num_embeddings"):
        config_from_dict({"model": {"name": "vqvae", "num_embedings": 16}})


@pytest.mark.parametrize("key", ["in_channels", "image_size", "data_dim"])
def test_data_shape_is_not_a_model_setting(key):
    message = error_of([f"model.{key}=3"])
    assert f"model.{key}" in message and "set data.channels / data.image_size instead" in message


def test_required_model_argument():
    with pytest.raises(ConfigError, match=r"model\.latent_dim is required"):
        config_from_dict({"model": {"name": "linear_gaussian_vae"}})


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.optimizer=adamm", "'adam'"),
        ("train.schedule=cosin", "'cosine'"),
        ("train.precision=bf61", "'bf16'"),
        ("data.name=fashion_mnist", "'fashion-mnist'"),
        ("model.likelihood=gausian", "'gaussian'"),
    ],
)
def test_choice_fields_are_validated(override, suggestion):
    message = error_of([override])
    assert "unknown choice" in message and f"did you mean {suggestion}?" in message


def test_choices_accept_every_valid_value():
    for optimizer in ("adam", "adamw"):
        assert load_config(None, [f"train.optimizer={optimizer}"]).train.optimizer == optimizer
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert load_config(None, [f"train.device={device}"]).train.device == device
    assert "train.device" in error_of(["train.device=gpu"])
    assert "valid: adam, adamw" in error_of(["train.optimizer=sgd"])


def test_data_name_accepts_exactly_the_registered_sources():
    from vaekit import data

    assert DATA_SOURCES is data.DATA_SOURCES  # imported from the registry, not a copy
    for name in data.SOURCES:
        assert load_config(None, [f"data.name={name}"]).data.name == name
    assert "data.name" in error_of(["data.name=imagenet"])


@pytest.mark.parametrize("name", ["mnist5k", "folder"])
def test_download_only_for_sources_that_can_be_downloaded(name):
    message = error_of([f"data.name={name}", "data.download=true"])
    assert message.startswith("data.download works for mnist, fashion-mnist and cifar10; ")
    assert f"{name} cannot be downloaded" in message and "data.download=false" in message


def test_download_accepted_exactly_for_sources_with_a_download():
    from vaekit import data

    assert DOWNLOADABLE is data.DOWNLOADABLE  # imported from the registry, not a copy
    for name, source in data.SOURCES.items():
        if source.download is None:
            assert f"{name} cannot be downloaded" in error_of([f"data.name={name}", "data.download=true"])
        else:
            assert load_config(None, [f"data.name={name}", "data.download=true"]).data.download is True
    assert load_config(None, ["data.name=folder", "data.download=false"]).data.download is False


@pytest.mark.parametrize(
    "override",
    ["train.epochs=0", "train.batch_size=0", "train.lr=0", "train.lr=-1e-3", "train.grad_clip=0",
     "train.warmup_steps=-1", "train.min_lr=1", "data.num_workers=-1", "data.image_size=0"],
)  # fmt: skip
def test_out_of_range_values(override):
    assert override.partition("=")[0] in error_of([override])


def test_sections_must_be_mappings():
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        config_from_dict({"train": [1, 2]})
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        config_from_dict([("train", {})])  # type: ignore[arg-type]
    assert config_from_dict({"train": None}) == Config()  # an empty section in YAML


# --- files ----------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n  epochs: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4:") and "invalid YAML" in message
    assert "Traceback" not in message and "\n" not in message
    assert info.value.__suppress_context__


def test_yaml_float_without_a_dot_in_a_file(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  min_lr: 1e-6\nmodel:\n  sigma: 2e-1\n"))
    assert cfg.train.lr == 1e-3 and cfg.train.min_lr == 1e-6 and cfg.model.params["sigma"] == 0.2


def test_missing_empty_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- train\n- model\n"))
    assert load_config(write(tmp_path, "# nothing set\n", "empty.yaml")) == load_config()


def test_duplicate_keys_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:3:3: duplicate key 'lr'"):
        load_config(write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n"))


def test_unknown_key_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key train\.batchsize — did you mean train\.batch_size\?"):
        load_config(write(tmp_path, "train:\n  batchsize: 32\n"))


# --- check_type -----------------------------------------------------------------------------------


def test_check_type():
    assert check_type(3, float, "k") == 3.0 and type(check_type(3, float, "k")) is float
    assert check_type((1, 2), Sequence[int], "k") == [1, 2]
    assert check_type([1, 2], tuple[int, ...], "k") == [1, 2]
    assert check_type(5, int | Sequence[int], "k") == 5
    assert check_type([5, 6], int | Sequence[int], "k") == [5, 6]
    assert check_type(None, Sequence[int] | None, "k") is None
    assert check_type("a", Literal["a", "b"], "k") == "a"
    for value, hint in [(True, int), ("x", Sequence[str]), ("c", Literal["a", "b"]), (1, Literal[True])]:
        with pytest.raises(ConfigError, match=r"^k: expected"):
            check_type(value, hint, "k")
    with pytest.raises(ConfigError, match=r"k\[1\]: expected int, got 'x' \(str\)"):
        check_type([1, "x"], list[int], "k")


def test_config_sections_validate_when_built_directly():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        TrainConfig(epochs="10")  # type: ignore[arg-type]
    assert TrainConfig(lr=1).lr == 1.0


# --- the shipped configs --------------------------------------------------------------------------


def test_the_expected_configs_ship():
    names = {p.name for p in CONFIG_FILES}
    fashion = ("vae", "mlp_vae", "vqvae", "pixelcnn_prior")
    for dataset, models in [("fashion_mnist", fashion), ("cifar10", ("vae", "vqvae"))]:
        assert {f"{dataset}_{model}.yaml" for model in models} <= names
    assert {"default.yaml", "celeba64_vae.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_is_complete_and_builds_its_model(path):
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = load_config(path)
    expected = config_to_dict(cfg)
    for section in expected:  # every key spelled out in the file, for the reader
        assert set(raw[section]) == set(expected[section]), f"{path.name}: {section} is incomplete"
    native_channels, native_size = NATIVE_SHAPE[cfg.data.name]
    channels = cfg.data.channels or native_channels
    size = cfg.data.image_size or native_size
    model = MODELS[cfg.model.name](in_channels=channels, image_size=size, **cfg.model.params)
    if cfg.data.name == "codes":  # a prior over code maps: K logits per position
        num_codes = cfg.model.params["num_embeddings"]
        x, expected = torch.randint(num_codes, (2, channels, size, size)), (2, num_codes, size, size)
    else:
        x, expected = torch.rand(2, channels, size, size), (2, channels, size, size)
    labels = torch.arange(2) if model.num_classes else None
    with torch.no_grad():
        out = model.eval()(x, labels=labels)
    assert out[0].shape == expected
