"""Small helpers shared by the data sources: where data lives, and a version-proof shuffle."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Environment variable naming a directory that holds one sub-directory per data set
#: (``$VAEKIT_DATA/fashion-mnist``, ``$VAEKIT_DATA/cifar10`` ...).
DATA_ENV = "VAEKIT_DATA"


def cache_home() -> Path:
    """``~/.cache/vaekit`` (or ``$XDG_CACHE_HOME/vaekit``): where downloads go by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaekit"


def user_dirs(name: str) -> list[Path]:
    """The per-user places a data set called ``name`` may live, most specific first."""
    dirs = []
    env = os.environ.get(DATA_ENV)
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_home() / name)
    return dirs


def stable_order(keys: Sequence[str], salt: str) -> np.ndarray:
    """A fixed pseudo-random permutation of ``range(len(keys))``, ordered by a hash of each key.

    Unlike a seeded RNG this never changes with numpy/torch versions or global RNG state, and an
    item's rank depends only on its own key, so adding items does not reshuffle the old ones.
    Returns int64 ``[len(keys)]``.
    """
    digests = [hashlib.blake2b(f"{salt}:{k}".encode(), digest_size=8).digest() for k in keys]
    return np.asarray(sorted(range(len(keys)), key=digests.__getitem__), dtype=np.int64)
