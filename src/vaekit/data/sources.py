"""The data sources: one registry entry per source, and the front that looks them up.

============== ============ ======== ============================================================
name           default size channels splits
============== ============ ======== ============================================================
mnist5k        28           1        train (4,500), test (500) — built into vaekit
mnist          28           1        train (60k), test (10k), train-50k, valid-10k
fashion-mnist  28           1        train (60k), test (10k), train-50k, valid-10k
cifar10        32           3        train (50k), test (10k)
folder         64           3        train, test (``train/``+``test/`` or 90/10); decoded lazily
codes          its own      1        the splits of a VQ-VAE run, encoded (:mod:`~vaekit.data.codes`)
============== ============ ======== ============================================================

``train-50k``/``valid-10k`` are the first 50,000 and last 10,000 images of the standard 60k
training set (the usual protocol for model selection); ``train`` is always the full training set.

Each :class:`Source` carries its own functions — ``load`` (one split), ``download`` (None where
there is nothing to fetch) and ``status`` (one line for ``vaekit datasets``) — taken from its file
format's module (:mod:`~vaekit.data.mnist5k`, :mod:`~vaekit.data.idx`, :mod:`~vaekit.data.cifar`,
:mod:`~vaekit.data.folder`). :func:`load_dataset`, :func:`download`, :func:`describe_sources` and
:func:`load_split` look the entry up; adding a source is adding an entry.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from vaekit.data import cifar, codes, folder, idx, mnist5k
from vaekit.data.transforms import convert_channels, resize
from vaekit.errors import DataError

__all__ = ["DATA_SOURCES", "DOWNLOADABLE", "SOURCES", "DataSection", "ImageData", "Loaded", "Source"]
__all__ += ["describe_sources", "download", "get_source", "load_dataset", "load_split"]

PathArg = str | os.PathLike | None


@dataclass
class ImageData:
    """One split of one data set.

    In-memory sources fill ``images`` (uint8 ``[N,C,H,W]``) and ``labels`` (int64 ``[N]`` or None);
    the folder source fills ``dataset`` (items uint8 ``[C,H,W]``) and leaves both None.
    """

    name: str
    split: str
    image_size: tuple[int, int]  # (H, W)
    channels: int
    images: torch.Tensor | None = None  # [N,C,H,W] uint8
    labels: torch.Tensor | None = None  # [N] int64
    dataset: torch.utils.data.Dataset | None = None
    num_classes: int | None = None
    location: str | None = field(default=None)  # where the files were read from

    @property
    def in_memory(self) -> bool:
        """True when ``images`` holds the whole split."""
        return self.images is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, *self.image_size)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)


class Loaded(NamedTuple):
    """One split as a source's ``load`` gives it, at the requested size and channel count."""

    location: str  # where the files were read from
    images: torch.Tensor | None = None  # [N,C,H,W] uint8 (in-memory sources; int64 for codes)
    labels: torch.Tensor | None = None  # [N] int64
    dataset: torch.utils.data.Dataset | None = None  # items uint8 [C,H,W], decoded lazily
    num_classes: int | None = None  # when the files say (else the source's own)


@dataclass(frozen=True)
class Source:
    """A data source: its defaults and the three functions that serve it."""

    name: str
    image_size: tuple[int, int]  # default (H, W)
    channels: int  # default channel count (1 or 3)
    splits: tuple[str, ...]
    num_classes: int | None  # None: unlabelled
    summary: str
    load: Callable[[PathArg, str, tuple[int, int], int], Loaded]  # (path, split, size, channels)
    status: Callable[[], str]  # where the files are, or how to provide them
    download: Callable[..., Path] | None = None  # (path, base_url, *, timeout) -> directory


def _in_memory(read: Callable[[PathArg, str], tuple[torch.Tensor, torch.Tensor, str]]) -> Callable:
    """A ``load`` from ``read(path, split) -> (images uint8 [N,C,H,W], labels [N], location)``: the
    whole split is converted once to the requested channels and size (bilinear antialiased cover
    and centre crop)."""

    def load(path: PathArg, split: str, size: tuple[int, int], channels: int) -> Loaded:
        images, labels, location = read(path, split)
        return Loaded(location, resize(convert_channels(images, channels), size), labels)

    return load


def _lazy_folder(path: PathArg, split: str, size: tuple[int, int], channels: int) -> Loaded:
    dataset = folder.open_split(path, split, size, channels)
    return Loaded(str(dataset.root), dataset=dataset)


def _codes(path: PathArg, split: str, size: tuple[int, int], channels: int) -> Loaded:
    """A run's code maps, at their own size (the VQ-VAE's latent grid): ``size`` and ``channels``
    do not apply (the config refuses them)."""
    maps, labels, location, num_classes = codes.read(path, split)
    return Loaded(location, maps, labels, num_classes=num_classes)


def _idx(name: str, summary: str) -> Source:
    return Source(
        name, (28, 28), 1, idx.SPLITS, 10, summary,
        load=_in_memory(functools.partial(idx.read, name)),
        status=functools.partial(idx.status, name),
        download=functools.partial(idx.download, name),
    )  # fmt: skip


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "mnist5k", (28, 28), 1, mnist5k.SPLITS, 10, "5,000 real MNIST digits built into vaekit",
            load=_in_memory(mnist5k.read), status=mnist5k.status,
        ),
        _idx("mnist", "MNIST handwritten digits (IDX files)"),
        _idx("fashion-mnist", "Fashion-MNIST (IDX files)"),
        Source(
            "cifar10", (32, 32), 3, cifar.SPLITS, 10, "CIFAR-10 python batches",
            load=_in_memory(cifar.read), status=cifar.status, download=cifar.download,
        ),
        Source(
            "folder", (64, 64), 3, folder.SPLITS, None, "any directory tree of images",
            load=_lazy_folder, status=folder.status,
        ),
        Source(
            "codes", (7, 7), 1, codes.SPLITS, None, "a VQ-VAE run's code maps, for a prior over codes",
            load=_codes, status=codes.status,
        ),
    )
}  # fmt: skip

#: The source names, in the order ``vaekit datasets`` lists them (what ``data.name`` accepts).
DATA_SOURCES: tuple[str, ...] = tuple(SOURCES)
#: The sources :func:`download` can fetch (what ``data.download: true`` accepts).
DOWNLOADABLE: tuple[str, ...] = tuple(name for name, s in SOURCES.items() if s.download is not None)

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "mnist-5k": "mnist5k"}


def get_source(name: str) -> Source:
    """The registered source called ``name`` (case and ``_``/``-`` insensitive); DataError if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in SOURCES:
        return SOURCES[key]
    close = difflib.get_close_matches(key, list(SOURCES), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(f"unknown data set {name!r}; {hint}choose one of: {', '.join(SOURCES)}")


def load_dataset(
    name: str,
    path: PathArg = None,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """Load ``split`` of data set ``name`` (see the module table for names and splits).

    ``path``: mnist5k — directory of its two IDX files (default: the embedded ones); mnist /
    fashion-mnist — directory of the four IDX files (default: searched, see
    :func:`vaekit.data.idx.search_dirs`); cifar10 — directory of the batches or its parent (default:
    searched); folder — required, the image tree. ``image_size`` (int or (H, W)) and ``channels``
    (1 or 3) default to the source's own; in-memory sources are converted once here.
    """
    src = get_source(name)
    if split not in src.splits:
        raise DataError(f"unknown split {split!r} for {src.name}; use one of {', '.join(src.splits)}")
    size = folder.parse_size(image_size) if image_size is not None else src.image_size
    ch = src.channels if channels is None else channels
    if ch not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    got = src.load(path, split, size, ch)
    if got.images is not None:  # the shape the data have (a source like codes has its own)
        ch, size = got.images.shape[1], tuple(got.images.shape[2:])
    num_classes = got.num_classes or src.num_classes
    return ImageData(
        src.name, split, size, ch, got.images, got.labels, got.dataset, num_classes, got.location
    )


def download(name: str, path: PathArg = None, base_url: str | None = None, *, timeout: float = 60.0) -> Path:
    """Fetch and MD5-check the files of data set ``name`` into ``path`` (default: ``$VAEKIT_DATA/<name>``
    or ``~/.cache/vaekit/<name>``, where :func:`load_dataset` looks first) and return the directory.

    mnist / fashion-mnist: the four IDX ``.gz`` files (:func:`vaekit.data.idx.download`); cifar10:
    the official ``cifar-10-python.tar.gz``, verified and then safely unpacked into
    ``path/cifar-10-batches-py`` (:func:`vaekit.data.cifar.download`). ``base_url`` replaces the
    default mirrors. Raises DataError for other sources, network errors and checksum mismatches.
    """
    src = get_source(name)
    if src.download is None:
        raise DataError(
            f"{src.name} cannot be downloaded; download works for {', '.join(DOWNLOADABLE)} "
            f"({src.name}: {src.status()})"
        )
    return src.download(path, base_url, timeout=timeout)


def describe_sources() -> list[tuple[str, str]]:
    """``(name, status)`` for every source: where its files were found, or how to provide them.

    Print as ``f"{name}: {status}"``, e.g. ``fashion-mnist: found at /usr/share/datasets/fashion-mnist
    (70,000 images)``.
    """
    return [(name, src.status()) for name, src in SOURCES.items()]


class DataSection(Protocol):
    """What :func:`load_split` reads from a config's ``data`` section (:class:`vaekit.config.DataConfig`)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str | None: ...
    @property
    def image_size(self) -> int | None: ...
    @property
    def channels(self) -> int | None: ...
    @property
    def download(self) -> bool: ...


def load_split(data: DataSection, split: str) -> ImageData:
    """One split of a config's ``data`` section; with ``data.download`` (mnist, fashion-mnist,
    cifar10), files that are not found are first fetched and checksum-verified (into ``data.path``,
    or the user cache)."""
    src = get_source(data.name)
    try:
        return load_dataset(src.name, data.path, split, image_size=data.image_size, channels=data.channels)
    except DataError:
        if not (data.download and src.download is not None):
            raise
    download(src.name, data.path)
    return load_dataset(src.name, data.path, split, image_size=data.image_size, channels=data.channels)
