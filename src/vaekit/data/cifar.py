"""CIFAR-10 from the "python version" batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

Each batch is a Python 2 pickle of a dict ``{b'data': uint8 ndarray [10000,3072], b'labels': list of
int, b'batch_label': str, b'filenames': list}``; each row is 1024 red, then 1024 green, then 1024
blue values of a 32x32 image in row-major order. The pickles are read with a restricted unpickler
that can build numpy arrays and nothing else, so a malicious file cannot run code.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from vaekit.data._util import user_dirs
from vaekit.errors import DataError

SPLITS = ("train", "test")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SUBDIR = "cifar-10-batches-py"  # the directory inside the official tarball

#: Directories searched, in order, when no path is given (after $VAEKIT_DATA/cifar10 and
#: ~/.cache/vaekit/cifar10).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/cifar10")]


def _numpy_multiarray():
    try:  # numpy >= 2 (importing numpy.core there warns)
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how Python 3 pickles ``bytes`` at protocol <= 2."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise DataError(f"refusing pickle: it asks for codec {encoding!r}; only numpy arrays are allowed")
    return text.encode("latin1", errors)


@functools.cache
def _allowed() -> dict[tuple[str, str], object]:
    ma = _numpy_multiarray()
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # The real batches (pickled by numpy 1.x) name numpy.core.multiarray; numpy 2 writes numpy._core.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = ma._reconstruct
        allowed[(module, "scalar")] = ma.scalar
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-building globals; anything else is a DataError."""

    def find_class(self, module: str, name: str):
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to load pickle: it references {module}.{name}, which a CIFAR-10 batch never does; "
                "use the official cifar-10-python.tar.gz files"
            ) from None


def safe_load(path: str | os.PathLike) -> object:
    """Unpickle ``path`` (Python 2 or 3 pickle) allowing only numpy arrays, dtypes and builtins."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; check the path") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as e:  # truncated or garbled pickles raise many types
        msg = f"cannot unpickle {path} ({type(e).__name__}: {e}); download CIFAR-10 again"
        raise DataError(msg) from None


def _get(d: dict, key: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: ``images`` uint8 ``[n,3,32,32]`` and ``labels`` int64 ``[n]``."""
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch; use the official files")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} has no 'data' array or no 'labels'; it is not a CIFAR-10 batch")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [n,3072]; not CIFAR-10")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images; the file is damaged")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} has labels outside 0..9; it is not CIFAR-10")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # [n,3,32,32], [n]


def search_dirs() -> list[Path]:
    """Where CIFAR-10 is looked for when no path is given, in order."""
    return [*user_dirs("cifar10"), *SYSTEM_DIRS]


def _has_files(directory: Path, files=TRAIN_FILES + TEST_FILES) -> bool:
    return all((directory / f).is_file() for f in files)


def find_root(path: str | os.PathLike | None = None) -> Path:
    """The directory holding the six batch files (``path`` itself or ``path/cifar-10-batches-py``)."""
    candidates = [Path(path).expanduser()] if path is not None else search_dirs()
    for base in candidates:
        for d in (base, base / SUBDIR):
            if _has_files(d):
                return d
    where = str(candidates[0]) if path is not None else ", ".join(str(d) for d in candidates)
    raise DataError(
        f"CIFAR-10 batches not found in {where}; pass data.path=DIR containing data_batch_1..5 and "
        "test_batch (unpack cifar-10-python.tar.gz)"
    )


def load(path: str | os.PathLike | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10: ``images`` uint8 ``[N,3,32,32]``, ``labels`` int64 ``[N]``.

    ``split`` "train" is the five data batches (50,000 images), "test" the test batch (10,000).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for cifar10; use one of {', '.join(SPLITS)}")
    directory = find_root(path)
    parts = [read_batch(directory / f) for f in (TRAIN_FILES if split == "train" else TEST_FILES)]
    images = np.concatenate([p[0] for p in parts])  # [N,3,32,32]
    labels = np.concatenate([p[1] for p in parts])  # [N]
    return torch.from_numpy(images), torch.from_numpy(labels)
