"""The run configuration: one small typed tree (model, data, train), YAML in and out, ``--set`` overrides.

A config file has three sections. The model section is flat: ``name`` picks a class from
:data:`vaekit.models.MODELS` and every other key is a keyword argument of that class's constructor,
checked against its signature and type hints. The image shape is not a model argument: it comes
from the data section (``data.channels``, ``data.image_size``)::

    model: {name: vanilla_vae, latent_dim: 16, hidden_dims: [32, 64, 128], likelihood: bernoulli}
    data: {name: mnist5k}
    train: {epochs: 20, lr: 2.0e-3}

Loading is strict: an unknown section or key, a wrong type or an unknown choice raises
:class:`~vaekit.errors.ConfigError` naming the key (and the closest valid spelling). Keys left out
take their defaults; the model's parameters are always stored complete (constructor defaults filled
in), so a saved config says everything the run used.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from vaekit.checkpoint import atomic_write_bytes
from vaekit.data import DATA_SOURCES, DOWNLOADABLE, LIKELIHOODS
from vaekit.errors import ConfigError
from vaekit.models import MODELS
from vaekit.nn import ACTIVATIONS

__all__ = ["DATA_SOURCES", "DEFAULT_MODEL", "Config", "DataConfig", "ModelConfig", "TrainConfig"]
__all__ += ["apply_overrides", "check_type", "config_from_dict", "config_to_dict", "dump_yaml"]
__all__ += ["load_config", "save_config"]

#: The default job's model (a small convolutional VAE for 28×28 digits). With ``name`` left out or
#: set to this name, left-out model keys take these values before the constructor's defaults.
DEFAULT_MODEL: Mapping[str, Any] = types.MappingProxyType(
    {"name": "vanilla_vae", "latent_dim": 16, "hidden_dims": [32, 64, 128], "likelihood": "bernoulli"}
)
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: Constructor arguments the data section decides; they may not appear in the model section.
FROM_DATA = ("in_channels", "image_size", "data_dim")
#: String-valued model arguments with a fixed set of values.
MODEL_CHOICES: Mapping[str, Sequence[str]] = {"likelihood": LIKELIHOODS, "activation": tuple(ACTIVATIONS)}


# --- checking values ------------------------------------------------------------------------------


def _describe(hint: Any) -> str:
    """A type hint in the words of an error message: ``list of int or null``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None) or hint is None:
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return "list of " + (_describe(args[0]) if args else "anything")
    return "anything" if hint is Any else getattr(hint, "__name__", str(hint))


def check_type(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` (as read from YAML) against a type hint and return it in canonical form.

    Handles ``int`` (not ``bool``), ``float`` (an int is converted), ``bool``, ``str``, ``None``,
    unions/``Optional``, ``Literal`` and sequences (``Sequence[X]``, ``list[X]``, ``tuple[X, ...]``,
    returned as a list). A mismatch raises ``ConfigError("model.latent_dim: expected int, got 'abc' (str)")``.
    """
    origin, args = get_origin(hint), get_args(hint)
    ok = True
    if hint is Any:
        return value
    if hint is type(None) or hint is None:
        ok = value is None
    elif origin in (Union, types.UnionType):
        for arm in args:
            try:
                return check_type(value, arm, key)
            except ConfigError:
                pass
        ok = False
    elif origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
    elif origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (list, tuple)):
            item_hint = args[0] if args else Any
            return [check_type(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        ok = False
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:
        raise TypeError(f"check_type cannot check {key} against the hint {hint!r}")
    if not ok:
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _suggest(word: str, choices: Sequence[str], prefix: str = "", quote: bool = False) -> str:
    """`` — did you mean model.latent_dim?`` for the closest choice, else the list of valid ones."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f" — did you mean {prefix}{close[0]!r}?" if quote else f" — did you mean {prefix}{close[0]}?"
    return f"; valid: {', '.join(prefix + c for c in choices)}"


def _check_choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        hint = _suggest(value, choices, quote=True)
        valid = f" (valid: {', '.join(choices)})" if hint.startswith(" —") else ""
        raise ConfigError(f"{key}: unknown choice {value!r}{hint}{valid}")


def _check_keys(given: Mapping[Any, Any], valid: Sequence[str], section: str) -> None:
    for key in given:
        if key not in valid:
            raise ConfigError(f"unknown key {section}.{key}{_suggest(str(key), valid, f'{section}.')}")


def _check_bounds(obj: Any, section: str, lower: Mapping[str, float], positive: Sequence[str] = ()) -> None:
    """``field >= lower[field]`` and ``field > 0`` for the fields in ``positive``; ``None`` is allowed."""
    for name, low in lower.items():
        value = getattr(obj, name)
        if value is not None and value < low:
            raise ConfigError(f"{section}.{name}: must be at least {low}, got {value!r}")
    for name in positive:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{section}.{name}: must be positive, got {value!r}")


def _check_fields(obj: Any, section: str) -> None:
    """Type-check (and canonicalize) every field of a frozen config dataclass in place."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = check_type(getattr(obj, f.name), hints[f.name], f"{section}.{f.name}")
        object.__setattr__(obj, f.name, value)


class _ReadOnlyDict(dict):
    """A dict that refuses changes, so a frozen config's model parameters stay frozen (and picklable)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config values are read-only; use dataclasses.replace or apply_overrides")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))


def _model_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, checked constructor arguments of ``MODELS[name]`` (all but the data-derived ones)."""
    cls = MODELS[name]
    hints = get_type_hints(cls.__init__)
    signature = [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in FROM_DATA
    ]
    for key in given:
        if key in FROM_DATA:
            raise ConfigError(
                f"model.{key} is not a model setting: it comes from the data — "
                "set data.channels / data.image_size instead"
            )
    _check_keys(given, [p.name for p in signature], "model")
    params = {}
    for p in signature:
        if p.name in given:
            value = given[p.name]
        elif p.default is not p.empty:
            value = p.default
        else:
            raise ConfigError(f"model.{p.name} is required for model {name!r}")
        params[p.name] = check_type(value, hints.get(p.name, Any), f"model.{p.name}")
        if p.name in MODEL_CHOICES:
            _check_choice(params[p.name], MODEL_CHOICES[p.name], f"model.{p.name}")
    return params


# --- the config tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Which model to build, and its constructor's keyword arguments (always complete after init)."""

    name: str = DEFAULT_MODEL["name"]  # key of vaekit.models.MODELS
    params: Mapping[str, Any] = field(default_factory=dict)  # the model constructor's keyword arguments

    def __post_init__(self) -> None:
        name = check_type(self.name, str, "model.name")
        if name not in MODELS:
            raise ConfigError(f"model.name: unknown model {name!r}{_suggest(name, list(MODELS), quote=True)}")
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"model: expected a mapping of constructor arguments, got {self.params!r}")
        given = dict(DEFAULT_MODEL) if name == DEFAULT_MODEL["name"] else {}
        given.pop("name", None)
        given.update(self.params)
        object.__setattr__(self, "params", _ReadOnlyDict(_model_params(name, given)))


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on, and how to read them (see :mod:`vaekit.data`)."""

    name: str = "mnist5k"  # mnist5k | mnist | fashion-mnist | cifar10 | folder | codes
    path: str | None = None  # directory of the files (None: the source's default location)
    image_size: int | None = None  # None: the source's native size
    channels: int | None = None  # None: the source's native channel count (folder: 3)
    binarize: bool = False  # dynamic binarization of [0,1] intensities (Bernoulli models)
    train_split: str = "train"
    test_split: str = "test"
    valid_split: str | None = None  # e.g. "valid-10k" for the 50k/10k/10k protocol; early stopping uses it
    download: bool = False  # fetch missing files (mnist, fashion-mnist, cifar10 only)
    num_workers: int = 2  # folder data only

    def __post_init__(self) -> None:
        _check_fields(self, "data")
        _check_choice(self.name, DATA_SOURCES, "data.name")
        _check_bounds(self, "data", {"image_size": 1, "channels": 1, "num_workers": 0})
        if self.name == "codes":  # a code map has the VQ-VAE's own size and one channel of categories
            for key, value in (("image_size", self.image_size), ("channels", self.channels)):
                if value is not None:
                    raise ConfigError(
                        f"data.{key}: does not apply to codes (a VQ-VAE's latent grid); set it to null"
                    )
            if self.binarize:
                raise ConfigError("data.binarize: codes are categories, not intensities; set it to false")
        if self.download and self.name not in DOWNLOADABLE:
            how = {
                "mnist5k": "it is built in",
                "codes": "`vaekit train-prior RUN` encodes them",
            }.get(self.name, "pass data.path=DIR, a tree of image files")
            raise ConfigError(
                f"data.download works for {', '.join(DOWNLOADABLE[:-1])} and {DOWNLOADABLE[-1]}; "
                f"{self.name} cannot be downloaded ({how}), so set data.download=false"
            )


@dataclass(frozen=True)
class TrainConfig:
    """How to optimize: schedule, precision, seeds, logging and evaluation cadence."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    warmup_steps: int = 100
    min_lr: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm; None: off
    beta: float = 1.0  # KL weight β (VAEs)
    kl_warmup_steps: int = 0  # β rises linearly from 0 to beta over these steps
    precision: str = "auto"  # auto | fp32 | bf16 (autocast); auto: bf16 where the hardware has it
    memory_format: str = "auto"  # auto | contiguous | channels_last; auto: channels_last for conv models
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # epochs between evaluations on the held-out split
    log_every: int = 50  # steps between metrics.csv rows
    checkpoint_every_steps: int = 1000  # also write checkpoints/last every N steps; 0: epoch ends only
    early_stopping_patience: int | None = None  # epochs without validation improvement
    num_samples: int = 64  # pictures in samples.png / reconstructions.png

    def __post_init__(self) -> None:
        _check_fields(self, "train")
        _check_choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        _check_choice(self.schedule, SCHEDULES, "train.schedule")
        _check_choice(self.precision, PRECISIONS, "train.precision")
        _check_choice(self.memory_format, MEMORY_FORMATS, "train.memory_format")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        lower = {"weight_decay": 0, "warmup_steps": 0, "min_lr": 0, "beta": 0, "kl_warmup_steps": 0}
        lower["checkpoint_every_steps"] = 0
        lower |= dict.fromkeys(("epochs", "batch_size", "eval_every", "log_every", "num_samples"), 1)
        lower["early_stopping_patience"] = 1
        _check_bounds(self, "train", lower, positive=("lr", "grad_clip"))
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr: must not exceed train.lr ({self.lr}), got {self.min_lr}")


@dataclass(frozen=True)
class Config:
    """A whole run: what to build, what to train it on, and how."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


# --- dicts ----------------------------------------------------------------------------------------


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from plain data (e.g. parsed YAML), strictly; missing parts take defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a mapping of sections (model, data, train), got {d!r}")
    for section in d:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r}{_suggest(str(section), list(SECTIONS))}")
    sections = {}
    for section, cls in SECTIONS.items():
        values = d.get(section)
        values = {} if values is None else values  # an empty section in YAML
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
        if cls is ModelConfig:
            params = {k: v for k, v in values.items() if k != "name"}
            sections[section] = ModelConfig(values.get("name", DEFAULT_MODEL["name"]), params)
        else:
            _check_keys(values, [f.name for f in dataclasses.fields(cls)], section)
            sections[section] = cls(**values)
    return Config(**sections)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (model section flat, lists not tuples) with ``config_from_dict(config_to_dict(c)) == c``."""
    out: dict[str, Any] = {"model": {"name": cfg.model.name}}
    out["model"].update((k, _plain(v)) for k, v in cfg.model.params.items())
    for section in (cfg.data, cfg.train):
        name = "data" if section is cfg.data else "train"
        out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return out


# --- YAML and overrides ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``safe_load`` plus YAML 1.2 floats (``1e-3`` is a float, not a string) and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, collections.abc.Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Block-style sections with short lists written inline: ``hidden_dims: [32, 64, 128]``."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _parse_yaml(text: str, source: str) -> Any:
    loader = _Loader(text)
    loader.name = source  # marks (and so error messages) name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        context = f" ({context})" if context else ""
        raise ConfigError(f"{where}: invalid YAML: {problem}{context}") from None
    finally:
        loader.dispose()


_OVERRIDE_EXAMPLE = "write SECTION.KEY=VALUE, e.g. --set train.lr=1e-3 or --set model.hidden_dims=[16,32]"


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of config data ``d`` with ``--set`` overrides applied; values are parsed as YAML.

    ``model.name`` overrides are applied first; switching to a different model starts the model
    section afresh (from that model's defaults), since one model's arguments rarely fit another.
    Keys and types are checked later, by :func:`config_from_dict`.
    """
    out = dict(d)  # sections are replaced, never changed in place
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name or "." in name:
            raise ConfigError(f"bad override {item!r}: {_OVERRIDE_EXAMPLE}")
        parsed.append((section, name, _parse_yaml(text, f"override {item!r}")))
    parsed.sort(key=lambda p: (p[0], p[1]) != ("model", "name"))  # stable: model.name first
    for section, name, value in parsed:
        values = {} if out.get(section) is None else out[section]
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
        if (section, name) == ("model", "name") and value != values.get("name", DEFAULT_MODEL["name"]):
            values = {}
        out[section] = {**values, name: value}
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file (``None``: the defaults, the main job) and apply ``--set`` overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        data = _parse_yaml(text, str(path))
        if data is None:  # an empty file: all defaults
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, train), got {data!r}")
    return config_from_dict(apply_overrides(data, overrides))


def dump_yaml(cfg: Config) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write :func:`dump_yaml` to ``path`` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dump_yaml(cfg).encode("utf-8"))
