"""CIFAR-10 from the "python version" batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

Each batch is a Python 2 pickle of a dict ``{b'data': uint8 ndarray [10000,3072], b'labels': list of
int, b'batch_label': str, b'filenames': list}``; each row is 1024 red, then 1024 green, then 1024
blue values of a 32x32 image in row-major order. The pickles are read with a restricted unpickler
that can build numpy arrays and nothing else, so a malicious file cannot run code.

:func:`download` fetches the official ``cifar-10-python.tar.gz``, checks its MD5 and only then
unpacks it, refusing any member that is not a regular file directly inside ``cifar-10-batches-py/``.
The registry (:mod:`vaekit.data.sources`) uses :func:`read`, :func:`download` and :func:`status`.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from vaekit.data._util import fetch_checked, make_dir, user_dirs
from vaekit.errors import DataError

SPLITS = ("train", "test")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
SUBDIR = "cifar-10-batches-py"  # the directory inside the official tarball

#: Directories searched, in order, when no path is given (after $VAEKIT_DATA/cifar10 and
#: ~/.cache/vaekit/cifar10).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/cifar10")]

#: The official archive, its MD5 (as published on https://www.cs.toronto.edu/~kriz/cifar.html) and
#: where :func:`download` fetches it from (tried in order).
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BASE_URLS = ["https://www.cs.toronto.edu/~kriz/"]


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
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
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
    call = (
        f"vaekit.data.download('cifar10', '{candidates[0]}')"
        if path is not None
        else "vaekit.data.download('cifar10')"
    )
    raise DataError(
        f"CIFAR-10 batches not found in {where}; pass data.path=DIR containing data_batch_1..5 and "
        f"test_batch (unpack cifar-10-python.tar.gz), or fetch them with --set data.download=true "
        f"(in Python {call})"
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


def read(path: str | os.PathLike | None, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The registry's reader: :func:`load`'s images and labels, and the directory they came from."""
    root = find_root(path)
    return (*load(root, split), str(root))


def status() -> str:
    """One line for ``vaekit datasets``: where CIFAR-10 was found, or how to provide it."""
    try:
        return f"found at {find_root()} (data_batch_1..5 and test_batch)"
    except DataError:
        return (
            "not found — pass data.path=DIR containing data_batch_1..5 and test_batch, "
            "or fetch them with --set data.download=true"
        )


# ---------------------------------------------------------------------------------------------------
# download


def _member_target(member: tarfile.TarInfo) -> str | None:
    """The file name a member of the archive may be unpacked to (None: a directory entry to skip).

    Only regular files directly inside ``cifar-10-batches-py/`` (and that directory's own entry) are
    allowed; absolute names, ``..``, links, devices and anything elsewhere raise DataError.
    """
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise DataError(f"refusing to unpack {ARCHIVE}: member {name!r} has an absolute or '..' path")
    parts = tuple(p for p in parts if p != ".")
    if member.isdir() and parts == (SUBDIR,):
        return None
    if not member.isreg():
        raise DataError(f"refusing to unpack {ARCHIVE}: member {name!r} is not a regular file (a link?)")
    if len(parts) != 2 or parts[0] != SUBDIR:
        raise DataError(f"refusing to unpack {ARCHIVE}: member {name!r} is not a file inside {SUBDIR}/")
    return parts[1]


def extract(archive: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Unpack the batches of ``archive`` into ``directory/cifar-10-batches-py`` and return that path.

    Every member is checked (see :func:`_member_target`) and written into a temporary directory
    beside the target, which is moved into place only when the whole archive was read and held the
    six batches; on any error nothing is left behind.
    """
    archive, directory = Path(archive), Path(directory)
    target = directory / SUBDIR
    staging = Path(tempfile.mkdtemp(prefix=f".{SUBDIR}.", suffix=".part", dir=directory))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; it becomes the data directory
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    filename = _member_target(member)
                    if filename is None:
                        continue
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file
                    with src, open(staging / filename, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(
                f"cannot unpack {archive} ({type(e).__name__}: {e}); delete it and download again"
            ) from None
        if not _has_files(staging):
            raise DataError(f"{archive} lacks some of data_batch_1..5 and test_batch; it is not CIFAR-10")
        if not target.exists():
            os.replace(staging, target)
        else:  # an incomplete earlier copy: replace its files one by one
            for f in staging.iterdir():
                os.replace(f, target / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download(
    root: str | os.PathLike | None = None,
    base_url: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch and unpack the official CIFAR-10 archive into ``root/cifar-10-batches-py``.

    ``root`` defaults to ``$VAEKIT_DATA/cifar10`` if set, else ``~/.cache/vaekit/cifar10`` (the first
    places :func:`find_root` searches); a ``root`` that is itself a ``cifar-10-batches-py`` directory
    means its parent. If the six batches are already there nothing is fetched. Otherwise
    :data:`ARCHIVE` is downloaded to a temporary name, MD5-checked against :data:`ARCHIVE_MD5` (a
    mismatch deletes it), unpacked with :func:`extract` and then deleted. ``base_url`` replaces the
    default mirror (the file is fetched from ``base_url + ARCHIVE``). Returns the directory holding
    ``cifar-10-batches-py``. Raises
    DataError on network errors, checksum mismatches and unsafe or incomplete archives.
    """
    directory = Path(root).expanduser() if root is not None else user_dirs("cifar10")[0]
    if directory.name == SUBDIR:
        directory = directory.parent
    if _has_files(directory / SUBDIR):
        return directory
    make_dir(directory)
    bases = [base_url] if base_url is not None else BASE_URLS
    archive = fetch_checked(bases, ARCHIVE, directory / ARCHIVE, ARCHIVE_MD5, timeout)
    extract(archive, directory)
    archive.unlink()
    return directory
