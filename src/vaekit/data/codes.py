"""The "codes" data source: the code maps of a trained VQ-VAE run, what a prior over codes learns.

``vaekit train-prior RUN`` encodes each split of the run's data once with the run's VQ-VAE and
writes ``RUN/codes/<split>.safetensors``: ``codes`` int16 ``[N, h, w]`` (K ≤ 32,768), ``labels``
int64 ``[N]`` when the data are labelled, and in the metadata the SHA-256 of the VQ-VAE weights
that made them (``RUN/checkpoints/best/model.safetensors``, else ``last``, the checkpoint
:func:`vaekit.runs.load_run` uses), the codebook size K and the number of classes. Reading
checks that fingerprint against the run's current weights: codes of an older VQ-VAE are refused,
and ``train-prior`` encodes them again.

The encoding itself needs the model, a layer above this package; here is only the file format.
A split loads as int64 ``[N, 1, h, w]``: one channel of h×w codes, like a one-channel image.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from vaekit.errors import DataError

CODES_DIR = "codes"
#: The split names of every image source (a code split is named after the image split it encodes).
SPLITS = ("train", "test", "train-50k", "valid-10k")


def vq_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The weights file whose codes a run's cache holds: ``checkpoints/best``, else ``last``."""
    run_dir = Path(run_dir)
    for which in ("best", "last"):
        path = run_dir / "checkpoints" / which / "model.safetensors"
        if path.is_file():
            return path
    raise DataError(f"{run_dir} has no checkpoint to encode codes with; train it (or resume it) first")


def fingerprint(weights: str | os.PathLike) -> str:
    """SHA-256 of a weights file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(run_dir: str | os.PathLike, split: str) -> Path:
    return Path(run_dir) / CODES_DIR / f"{split}.safetensors"


def cached_fingerprint(run_dir: str | os.PathLike, split: str) -> str | None:
    """The fingerprint stored with a split's codes, or None when there are none (or unreadable)."""
    path = cache_path(run_dir, split)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("vq_checkpoint_sha256")
    except (SafetensorError, OSError):
        return None


def write(
    run_dir: str | os.PathLike,
    split: str,
    codes: torch.Tensor,
    labels: torch.Tensor | None,
    num_embeddings: int,
    num_classes: int | None,
    weights_sha256: str,
) -> Path:
    """Save one split's code maps ``[N, h, w]`` (and labels ``[N]``), atomically."""
    if num_embeddings > torch.iinfo(torch.int16).max + 1:
        raise DataError(f"a codebook of {num_embeddings} codes does not fit the int16 code cache")
    path = cache_path(run_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"codes": codes.to(torch.int16).contiguous()}
    if labels is not None:
        tensors["labels"] = labels.long().contiguous()
    metadata = {
        "vq_checkpoint_sha256": weights_sha256,
        "split": split,
        "num_embeddings": str(num_embeddings),
        "num_classes": str(num_classes or 0),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read(
    path: str | os.PathLike | None, split: str
) -> tuple[torch.Tensor, torch.Tensor | None, str, int | None]:
    """``(codes int64 [N, 1, h, w], labels or None, location, num_classes)`` of a run's split,
    refusing codes made by other weights than the run's current ones."""
    if path is None:
        raise DataError("the codes data set needs a run: pass data.path=RUN, a VQ-VAE run directory")
    run_dir = Path(path)
    where = cache_path(run_dir, split)
    made_by = cached_fingerprint(run_dir, split)
    how = f"encode them with `vaekit train-prior {run_dir}`"
    if made_by is None:
        raise DataError(f"no codes for split {split!r} in {run_dir / CODES_DIR} (or unreadable); {how}")
    if made_by != fingerprint(vq_checkpoint(run_dir)):
        raise DataError(f"{where} holds codes of an older checkpoint of {run_dir}; {how}")
    try:
        tensors = load_file(str(where))
        with safe_open(str(where), framework="pt") as f:
            num_classes = int((f.metadata() or {}).get("num_classes", "0"))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"cannot read {where}: {err}; {how}") from None
    codes = tensors["codes"].long().unsqueeze(1)  # [N, h, w] -> [N, 1, h, w]: one channel of codes
    return codes, tensors.get("labels"), str(where.parent), num_classes or None


def status() -> str:
    return "the code maps of a VQ-VAE run: data.path=RUN (encoded by `vaekit train-prior RUN`)"
