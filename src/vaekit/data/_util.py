"""Small helpers shared by the data sources: where data lives, a checked download, and a
version-proof shuffle."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vaekit.errors import DataError

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


def make_dir(directory: Path) -> Path:
    """Create ``directory`` (and parents) for a download; DataError if that is impossible."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download directory {directory}: {e}; pass another root") from None
    return directory


def md5_file(path: Path) -> str:
    """The MD5 hex digest of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, expected_md5: str, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, check its MD5, then rename it into place.

    On any failure the temporary file is removed and ``dest`` is left untouched.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise DataError(
                    f"could not download {url}: {reason}; check the connection or put the file in "
                    f"{dest.parent} by hand"
                ) from None
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected_md5:
            raise DataError(
                f"checksum mismatch for {url} (md5 {got}, expected {expected_md5}); the file was discarded, "
                "try again or use another mirror (base_url=...)"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fetch_checked(bases: Sequence[str], filename: str, dest: Path, expected_md5: str, timeout: float) -> Path:
    """``dest``, holding ``filename`` with MD5 ``expected_md5``: kept if already right, otherwise
    fetched with :func:`fetch` from ``base + filename`` for each base URL in turn until one works.

    Raises DataError (every mirror's error) if none does.
    """
    if dest.is_file() and md5_file(dest) == expected_md5:
        return dest
    errors = []
    for base in bases:
        url = base if base.endswith("/") else base + "/"
        try:
            fetch(url + filename, dest, expected_md5, timeout)
            return dest
        except DataError as e:
            errors.append(str(e))
    raise DataError("; ".join(errors) if errors else f"no URL to download {filename} from")


def stable_order(keys: Sequence[str], salt: str) -> np.ndarray:
    """A fixed pseudo-random permutation of ``range(len(keys))``, ordered by a hash of each key.

    Unlike a seeded RNG this never changes with numpy/torch versions or global RNG state, and an
    item's rank depends only on its own key, so adding items does not reshuffle the old ones.
    Returns int64 ``[len(keys)]``.
    """
    digests = [hashlib.blake2b(f"{salt}:{k}".encode(), digest_size=8).digest() for k in keys]
    return np.asarray(sorted(range(len(keys)), key=digests.__getitem__), dtype=np.int64)
