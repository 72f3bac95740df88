"""Weights as safetensors plus a JSON config; the model is rebuilt from its config.

Nothing here unpickles: a checkpoint cannot run code when it is loaded. Files are written to a
temporary name and renamed, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


#: What to do about a damaged file, said after every such error.
_FIX = "copy or download it again, or train again (`vaekit train --resume RUN` starts from checkpoints/last)"


def damaged(path: str | os.PathLike, reason: str) -> VaekitError:
    """The error for a file that is truncated, empty or not what vaekit wrote there."""
    return VaekitError(f"{path} is damaged or not a vaekit file ({reason}); {_FIX}")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file vaekit wrote, or a :class:`VaekitError` naming it (never a decoder traceback)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise damaged(path, f"not JSON: {err}") from None
    except OSError as err:
        raise VaekitError(f"cannot read {path}: {err.strerror or err}") from None


def read_tensors(path: str | os.PathLike, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file, or a :class:`VaekitError` naming it: safetensors parses a header and
    copies raw numbers, so a pickle, zip or truncated file is refused without running anything."""
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise damaged(path, f"not a complete safetensors file: {err}") from None
    except OSError as err:
        raise VaekitError(f"cannot read {path}: {err.strerror or err}") from None


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state_dict)`` (strict), its mismatch error as a :class:`VaekitError`
    naming ``path`` — the weights of another model, or of this model with another config."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        if len(detail) > 300:
            detail = detail[:300] + "…"
        raise VaekitError(
            f"{path} does not fit a {type(model).__name__} of this config ({detail}); it holds the "
            "weights of another model or model config: use the run it came from"
        ) from None


def load_model_header(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved model: ``{"name": registry name, "config": {...}}``."""
    directory = Path(directory)
    _check_model_dir(directory)
    path = directory / CONFIG_NAME
    header = read_json(path)
    if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
        raise damaged(path, 'expected {"name": ..., "config": {...}}')
    if not isinstance(header.get("name", header.get("class")), str):
        raise damaged(path, "no model name")
    return header


def load_weights(directory: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in ``model.safetensors``, on ``map_location``."""
    directory = Path(directory)
    _check_model_dir(directory)
    return read_tensors(directory / WEIGHTS_NAME, map_location)


def load_weights_into(model: nn.Module, directory: str | os.PathLike, map_location: Any = "cpu") -> None:
    """:func:`load_weights` then :func:`load_state`: every failure a one-line :class:`VaekitError`."""
    load_state(model, load_weights(directory, map_location), Path(directory) / WEIGHTS_NAME)


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


def _replace_dir(directory: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary folder beside ``directory``, then swap it in by two renames
    (``directory`` to ``.NAME.old``, ``tmp`` to ``directory``): a crash at any moment leaves either
    ``directory`` or ``.NAME.old`` whole, and readers fall back to the latter."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    old = directory.with_name(f".{directory.name}.old")
    _remove_tree(tmp)
    if not directory.exists() and old.is_dir():  # a crash between the renames: that one is the newest
        os.replace(old, directory)
    _remove_tree(old)
    write(tmp)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _remove_tree(old)


def save_model_checkpoint(directory: str | os.PathLike, model: Any) -> None:
    """``model.save_pretrained`` into ``directory``, replacing it atomically (see :func:`_replace_dir`)."""
    _replace_dir(Path(directory), model.save_pretrained)


def save_training_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
) -> None:
    """Model (its ``save_pretrained``), optimizer, scheduler, RNG and loop progress, written to a
    temporary folder that then replaces ``directory`` — a crash leaves the old checkpoint whole."""
    _replace_dir(
        Path(directory), lambda tmp: _write_training_state(tmp, model, optimizer, scheduler, progress)
    )


def _write_training_state(
    tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, progress: dict[str, Any]
) -> None:
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
    load_state(model, read_tensors(directory / WEIGHTS_NAME, device), directory / WEIGHTS_NAME)
    tensors = read_tensors(directory / STATE_TENSORS)
    tree = read_json(directory / STATE_JSON)
    try:
        optimizer.load_state_dict(_optimizer_state_from_json(_join_tensors(tree["optimizer"], tensors)))
        scheduler.load_state_dict(_join_tensors(tree["scheduler"], tensors))
        torch.set_rng_state(tensors["rng.cpu"])
        progress = dict(tree["progress"])
        for key in ("epoch", "step"):
            if not isinstance(progress[key], int):
                raise TypeError(f"progress.{key} is {progress[key]!r}")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise damaged(
            directory / STATE_JSON, f"its training state does not fit this run: {type(err).__name__}: {err}"
        ) from None
    cuda_keys = sorted(
        (k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    cuda_states = [tensors[k] for k in cuda_keys]  # by device number: "rng.cuda.10" after "rng.cuda.9"
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return progress


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
