"""MNIST and Fashion-MNIST in the IDX file format, plain or gzip-compressed, plus a checked download.

IDX layout (all integers big-endian): two zero bytes, one byte type code, one byte ``ndim``, then
``ndim`` unsigned 32-bit sizes, then the values in C order. Type codes: 0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.

For the registry (:mod:`vaekit.data.sources`) each data set here has :func:`read`, :func:`download`
and :func:`status`, called with its name ("mnist" or "fashion-mnist"); :func:`read_idx` also reads
the embedded mnist5k files.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from vaekit.data._util import fetch_checked, make_dir, user_dirs
from vaekit.errors import DataError

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

NAMES = ("mnist", "fashion-mnist")

#: The four standard files of each data set, by split: (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Split names. ``train``/``test`` are the standard 60k/10k sets; ``train-50k``/``valid-10k`` cut the
#: standard training set into its first 50,000 and last 10,000 images (the usual validation protocol).
SPLITS = ("train", "test", "train-50k", "valid-10k")
_VALID_SIZE = 10_000

#: Directories searched, in order, when no root is given (the user's own places come first and are
#: computed at call time from ``$VAEKIT_DATA`` and ``~/.cache/vaekit``).
SYSTEM_DIRS = {
    "mnist": [Path("/usr/share/datasets/mnist")],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}
#: The Debian packages that install a data set into its :data:`SYSTEM_DIRS`.
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

#: Where :func:`download` fetches from (tried in order). The MNIST files on yann.lecun.com often
#: refuse automated clients; the ossci mirror serves byte-identical copies.
BASE_URLS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

#: MD5 of each standard ``.gz`` file as published by the data set authors. (The Fashion-MNIST values
#: are the ones in the upstream README, also shipped by Debian in /usr/share/doc/dataset-fashion-mnist;
#: Debian recompressed the .gz files themselves, so their bytes differ, not their contents.)
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}


# ---------------------------------------------------------------------------------------------------
# the file format


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's (decompressed) bytes; gzip is recognised by its magic number, not the name."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {e}; the file is damaged, download it again") from None


def _parse_header(buf: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) from the start of an IDX file."""
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); use the original MNIST-format files")
    code, ndim = buf[2], buf[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X}; the file is damaged, download it again")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions; the file is damaged, download it again")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path} is truncated inside its header; download it again")
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    return _DTYPES[code], shape, header


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or .gz) into a native-endian numpy array of the declared shape.

    Raises DataError if the file is missing, not IDX, or its length disagrees with its header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} not found; check the path or download the data set")
    buf = _read_bytes(path)
    dtype, shape, header = _parse_header(buf, path)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got < expected:
        raise DataError(
            f"{path} is truncated ({got} of {expected} data bytes for shape {shape}); download it again"
        )
    if got > expected:
        raise DataError(
            f"{path} has {got - expected} bytes past the end its header declares; the file is damaged, "
            "download it again"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # own, writable, native-endian


def idx_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape an IDX file declares, reading only its header."""
    path = Path(path)
    buf = _read_bytes(path, limit=4 + 4 * 255)
    return _parse_header(buf, path)[1]


# ---------------------------------------------------------------------------------------------------
# finding and loading the standard files


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def search_dirs(name: str) -> list[Path]:
    """Where ``name`` ("mnist" or "fashion-mnist") is looked for when no root is given, in order."""
    _check_name(name)
    return [*user_dirs(name), *SYSTEM_DIRS[name]]


def _has_all_files(directory: Path) -> bool:
    return all(_find_file(directory, stem) is not None for pair in FILES.values() for stem in pair)


def find_root(name: str, root: str | os.PathLike | None = None) -> Path:
    """The directory holding the four standard files of ``name``.

    With ``root`` given, it (or ``root/<name>``) must hold them; otherwise :func:`search_dirs` is
    searched. Raises DataError saying where it looked.
    """
    _check_name(name)
    if root is not None:
        root = Path(root).expanduser()
        for d in (root, root / name):
            if _has_all_files(d):
                return d
        raise DataError(
            f"{name} files not found in {root}; it needs train-images-idx3-ubyte[.gz], "
            f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
            f"(fetch them with --set data.download=true, "
            f"or in Python vaekit.data.download('{name}', '{root}'))"
        )
    dirs = search_dirs(name)
    for d in dirs:
        if _has_all_files(d):
            return d
    package = DEBIAN_PACKAGES.get(name)
    hint = f" or install the Debian package {package}" if package else ""
    raise DataError(
        f"{name} not found (looked in {', '.join(str(d) for d in dirs)}); pass data.path=DIR holding "
        f"the four IDX files, or download them with --set data.download=true "
        f"(vaekit.data.download('{name}') in Python){hint}"
    )


def load(
    name: str, root: str | os.PathLike | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of MNIST or Fashion-MNIST.

    Returns ``images`` uint8 ``[N,1,28,28]`` and ``labels`` int64 ``[N]`` (0..9). ``split`` is one of
    :data:`SPLITS`: "train" (60,000), "test" (10,000), "train-50k" (first 50,000 of train),
    "valid-10k" (last 10,000 of train).
    """
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
    directory = find_root(name, root)
    images_stem, labels_stem = FILES["test" if split == "test" else "train"]
    images_path = _find_file(directory, images_stem)
    labels_path = _find_file(directory, labels_stem)
    assert images_path is not None and labels_path is not None  # find_root checked
    images = read_idx(images_path)  # [N,28,28] uint8
    labels = read_idx(labels_path)  # [N] uint8
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{images_path} holds {images.dtype} {images.shape}, not uint8 [N,H,W] images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} holds {labels.shape} labels for {images.shape[0]} images in {images_path}; "
            "the files do not belong together, download them again"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{labels_path} has labels outside 0..9; the file is damaged, download it again")
    if split in ("train-50k", "valid-10k"):
        if images.shape[0] <= _VALID_SIZE:
            raise DataError(f"{images_path} has only {images.shape[0]} images, too few for split {split!r}")
        cut = images.shape[0] - _VALID_SIZE
        sl = slice(0, cut) if split == "train-50k" else slice(cut, None)
        images, labels = images[sl], labels[sl]
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # [N,1,28,28] uint8
    y = torch.from_numpy(labels.astype(np.int64))  # [N] int64
    return x, y


def read(name: str, path: str | os.PathLike | None, split: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The registry's reader: :func:`load`'s images and labels, and the directory they came from."""
    root = find_root(name, path)
    return (*load(name, root, split), str(root))


def status(name: str) -> str:
    """One line for ``vaekit datasets``: where ``name`` was found, or how to provide it."""
    try:
        root = find_root(name)
    except DataError:
        dirs = ", ".join(str(d) for d in search_dirs(name))
        package = DEBIAN_PACKAGES.get(name)
        extra = f", or `apt install {package}`" if package else ""
        return (
            f"not found (looked in {dirs}) — pass data.path=DIR with the four IDX files, "
            f"or fetch them with --set data.download=true{extra}"
        )
    try:
        n = sum(idx_shape(_find_file(root, FILES[s][0]))[0] for s in ("train", "test"))
    except DataError as e:
        return f"found at {root} but unreadable: {e}"
    return f"found at {root} ({n:,} images)"


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise DataError(f"no IDX data set called {name!r}; use one of {', '.join(NAMES)}")


# ---------------------------------------------------------------------------------------------------
# download


def download(
    name: str,
    root: str | os.PathLike | None = None,
    base_url: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch the four standard ``.gz`` files of ``name`` ("mnist" or "fashion-mnist") into ``root``.

    ``root`` defaults to ``$VAEKIT_DATA/<name>`` if set, else ``~/.cache/vaekit/<name>``. Each file is
    written to a temporary name, MD5-checked against :data:`CHECKSUMS` and only then renamed into
    place; a file that fails the check is deleted. Files already present with the right checksum
    are kept. ``base_url`` replaces the default mirrors (files are fetched from ``base_url + name``).
    Returns the directory. Raises DataError on network errors or checksum mismatches.
    """
    _check_name(name)
    directory = make_dir(Path(root).expanduser() if root is not None else user_dirs(name)[0])
    bases = [base_url] if base_url is not None else BASE_URLS[name]
    for filename, md5 in CHECKSUMS[name].items():
        fetch_checked(bases, filename, directory / filename, md5, timeout)
    return directory
