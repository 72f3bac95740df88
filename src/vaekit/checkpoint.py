"""Weights as safetensors plus a JSON config; the model is rebuilt from its config.

Nothing here unpickles: a checkpoint cannot run code when it is loaded. Files are written to a
temporary name and renamed, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vaekit.errors import VaekitError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an :class:`OSError` in the block (a directory that cannot be created, a read-only or full
    disk) into a :class:`VaekitError` naming the file and the operating system's reason."""
    try:
        yield
    except OSError as err:
        where = err.filename if err.filename is not None else path
        raise VaekitError(f"cannot write {where}: {err.strerror or err}") from err


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Save a flat dict of tensors as safetensors, atomically (copies make shared storage safe)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_model_files(
    directory: str | os.PathLike, header: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> None:
    """Write ``config.json`` (``header``: the model's registry name and constructor arguments) and
    ``model.safetensors`` (``state_dict``) into ``directory``, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(header, indent=2) + "\n").encode())
    save_tensors(state_dict, directory / WEIGHTS_NAME)


def _check_model_dir(directory: Path) -> None:
    for path in (directory / CONFIG_NAME, directory / WEIGHTS_NAME):
        if not path.is_file():
            raise VaekitError(f"no {path.name} in {directory}: not a saved vaekit model")


def load_model_header(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved model: ``{"name": registry name, "config": {...}}``."""
    directory = Path(directory)
    _check_model_dir(directory)
    return json.loads((directory / CONFIG_NAME).read_text())


def load_weights(directory: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in ``model.safetensors``, on ``map_location``."""
    directory = Path(directory)
    _check_model_dir(directory)
    return load_file(str(directory / WEIGHTS_NAME), device=str(map_location))


# --- training checkpoints -------------------------------------------------------------------------

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def _split_tensors(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a ``{"__tensor__": key}`` stub, collecting it."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {str(k): _split_tensors(v, f"{prefix}.{k}", tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
    return tree


def _join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_split_tensors`."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_tensors(v, tensors) for v in tree]
    return tree


def _optimizer_state_from_json(state: dict) -> dict:
    """JSON turns the per-parameter state's integer keys into strings; torch wants them back."""
    return {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def save_training_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
) -> None:
    """Model (its ``save_pretrained``), optimizer, scheduler, RNG and loop progress, written to a
    temporary folder that then replaces ``directory`` — a crash leaves the old checkpoint whole."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    old = directory.with_name(f".{directory.name}.old")
    for path in (tmp, old):
        _remove_tree(path)
    model.save_pretrained(tmp)
    tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    tree = {
        "progress": progress,
        "optimizer": _split_tensors(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _split_tensors(scheduler.state_dict(), "scheduler", tensors),
    }
    save_tensors(tensors, tmp / STATE_TENSORS)
    atomic_write_bytes(tmp / STATE_JSON, json.dumps(tree, indent=1).encode())
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _remove_tree(old)


def load_training_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore what :func:`save_training_checkpoint` wrote; returns the loop progress dict."""
    directory = Path(directory)
    if not (directory / STATE_JSON).is_file():
        old = directory.with_name(f".{directory.name}.old")  # a crash between the two renames
        if (old / STATE_JSON).is_file():
            directory = old
        else:
            raise VaekitError(f"no training checkpoint in {directory}: nothing to resume")
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)))
    tensors = load_file(str(directory / STATE_TENSORS))
    tree = json.loads((directory / STATE_JSON).read_text())
    optimizer.load_state_dict(_optimizer_state_from_json(_join_tensors(tree["optimizer"], tensors)))
    scheduler.load_state_dict(_join_tensors(tree["scheduler"], tensors))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_keys = sorted(
        (k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    cuda_states = [tensors[k] for k in cuda_keys]  # by device number: "rng.cuda.10" after "rng.cuda.9"
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return tree["progress"]


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
