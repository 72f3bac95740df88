"""Weights as safetensors plus a JSON config; the model is rebuilt from its config.

Nothing here unpickles: a checkpoint cannot run code when it is loaded. Files are written to a
temporary name and renamed, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vaekit.errors import VaekitError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically (copies make shared storage safe)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_model(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` (class name + constructor arguments) and ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"class": type(model).__name__, "config": model.config}
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode())
    save_tensors(model.state_dict(), directory / WEIGHTS_NAME)


def model_from_config(header: dict[str, Any]) -> nn.Module:
    """Build an untrained model from a ``{"class": name, "config": kwargs}`` header."""
    from vaekit.models import MODELS

    by_class = {cls.__name__: cls for cls in MODELS.values()}
    name = header.get("class")
    if name not in by_class:
        raise VaekitError(f"unknown model class {name!r} in checkpoint; known: {sorted(by_class)}")
    return by_class[name](**header["config"])


def load_model(
    directory: str | os.PathLike, map_location: Any = "cpu", expected_class: type | None = None
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights (strictly)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise VaekitError(f"no {path.name} in {directory}: not a saved vaekit model")
    header = json.loads(config_path.read_text())
    model = model_from_config(header)
    if expected_class is not None and not isinstance(model, expected_class):
        raise VaekitError(f"{directory} holds a {type(model).__name__}, not a {expected_class.__name__}")
    model.load_state_dict(load_file(str(weights_path), device=str(map_location)))
    return model.to(map_location)


class Pretrained:
    """``save_pretrained`` / ``from_pretrained`` for any model that keeps its arguments in ``self.config``."""

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` and ``config.json`` to ``directory``."""
        save_model(self, directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: Any = "cpu") -> Any:
        """Rebuild the model from ``config.json`` and load ``model.safetensors``; unpickles nothing."""
        return load_model(directory, map_location=map_location, expected_class=cls)
