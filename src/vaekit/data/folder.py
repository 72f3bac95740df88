"""Any directory tree of image files (CelebA and the like), decoded lazily, one item at a time.

Files are found recursively (hidden files and directories skipped) and sorted by relative path, so
the order is the same everywhere. Each image is converted to RGB or grayscale, scaled (bilinear, with
Pillow's antialiasing when shrinking) so that it just covers the target size — for a square target:
its shorter side becomes ``image_size`` — and centre-cropped to exactly that size.

Splits: if the root has both ``train/`` and ``test/`` sub-directories, they are the splits.
Otherwise the files are split 90/10 by a fixed hash of each relative path (an image's split never
changes when other files are added or removed): ``len // 10`` files go to "test".

The registry (:mod:`vaekit.data.sources`) uses :func:`open_split` and :func:`status`; there is no
download.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaekit.data._util import stable_order
from vaekit.errors import DataError

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")
_SALT = "vaekit-folder-v1"


def parse_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``image_size`` as ``(height, width)``; an int means a square."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (image_size[0], image_size[1])
    else:
        raise DataError(f"image_size must be an int or (height, width), got {image_size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise DataError(f"image_size must be positive integers, got {image_size!r}")
    return size


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, hidden entries skipped), sorted by relative path."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The sorted image files of ``split`` ("train" or "test") under ``root``; see the module doc."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for folder; use one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass data.path=DIR, a directory of images")
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = list_images(root / split)
        if not files:
            raise DataError(f"no images ({', '.join(sorted(EXTENSIONS))}) in {root / split}; add some")
        return files
    files = list_images(root)
    if not files:
        raise DataError(
            f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root}; "
            "point data.path at a folder of images"
        )
    n_test = len(files) // 10
    if split == "test" and n_test == 0:
        raise DataError(
            f"{root} has only {len(files)} images, too few to hold out a test split (need 10); add images "
            "or make train/ and test/ sub-folders"
        )
    order = stable_order([p.relative_to(root).as_posix() for p in files], salt=_SALT)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return [files[i] for i in sorted(chosen)]


def load_image(path: str | os.PathLike, size: tuple[int, int], channels: int) -> torch.Tensor:
    """Decode, scale to cover ``size`` = (h, w) and centre-crop one image: uint8 ``[channels,h,w]``."""
    th, tw = size
    try:
        with Image.open(path) as im:
            w, h = im.size
            scale = max(th / h, tw / w)
            nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
            if im.format == "JPEG":
                im.draft("RGB" if channels == 3 else "L", (nw, nh))  # decode at reduced scale when possible
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (nw, nh):
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - tw) // 2, (nh - th) // 2
            im = im.crop((left, top, left + tw, top + th))
            arr = np.array(im, dtype=np.uint8)  # [h,w] or [h,w,3]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"cannot decode image {path}: {e}; delete or replace the file") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # [C,h,w]
    return torch.from_numpy(np.ascontiguousarray(arr))


class FolderDataset(torch.utils.data.Dataset):
    """Images under ``root`` for ``split``, each decoded on access to uint8 ``[channels,h,w]``.

    Items are image tensors only (no labels). ``files`` is the sorted list of paths.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | tuple[int, int] = 64,
        channels: int = 3,
        split: str = "train",
    ) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.root = Path(root).expanduser()
        self.size = parse_size(image_size)
        self.channels = channels
        self.split = split
        self.files = split_files(self.root, split)
        self.skipped: set[int] = set()  # indices found undecodable, in this process

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index``; one that cannot be decoded (not an image, corrupt, truncated) is skipped:
        the next decodable file in the sorted list takes its place, so batches keep their size and
        the data order stays a function of the seed, and a line on stderr names the file (once per
        process). Only when no file at all can be decoded is it an error."""
        for offset in range(len(self.files)):
            i = (index + offset) % len(self.files)
            try:
                return load_image(self.files[i], self.size, self.channels)  # [C,H,W] uint8
            except DataError as err:
                if i not in self.skipped:
                    self.skipped.add(i)
                    print(
                        f"vaekit: warning: {err}; skipped: the next image takes its place "
                        f"({len(self.skipped)} undecodable so far)",
                        file=sys.stderr,
                    )
        n = len(self.files)
        raise DataError(f"none of the {n} image file(s) under {self.root} can be decoded; replace them")


def open_split(
    path: str | os.PathLike | None, split: str, size: tuple[int, int], channels: int
) -> FolderDataset:
    """The registry's loader: a :class:`FolderDataset` over ``path``, which the folder source needs."""
    if path is None:
        raise DataError("the folder data set needs a directory: pass data.path=DIR, a tree of image files")
    return FolderDataset(path, size, channels, split)


def status() -> str:
    """One line for ``vaekit datasets``: how to provide a folder of images."""
    return "pass data.path=DIR, any tree of image files (train/ and test/ sub-folders optional)"
