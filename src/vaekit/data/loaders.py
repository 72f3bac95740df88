"""Batches: the data order of every epoch, and the loaders that yield model-range batches.

:func:`make_loader` gives an iterable of ``(x float32 [B,C,H,W], labels int64 [B] or None)`` with
``len()`` (batches per epoch) and ``set_epoch(epoch)``. In-memory splits are batched straight from
their uint8 tensor (:class:`InMemoryLoader`); folder data is decoded by DataLoader workers
(:class:`FolderLoader`). Both draw their order from :func:`epoch_indices`, a function of
(seed, epoch, rank, world_size) only, so runs resume at any epoch and DDP ranks see disjoint shares
that together are the single-process batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaekit.data.ranges import check_input_kind, to_model_range
from vaekit.errors import DataError

if TYPE_CHECKING:
    from vaekit.data.sources import ImageData

__all__ = ["FolderLoader", "InMemoryLoader", "default_num_workers", "epoch_indices", "make_loader"]


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
        check_input_kind(likelihood)
        if binarize and likelihood != "bernoulli":
            raise DataError(
                f"binarize=True needs likelihood='bernoulli'; turn binarization off for {likelihood}"
            )
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
        self.start_batch = 0  # batches of this epoch to skip (a run resumed mid-epoch)
        self.n = n  # examples in the data set
        self.num_examples = n // world_size  # examples this rank sees per epoch
        if len(self) == 0:
            raise DataError(
                f"{n} examples over {world_size} rank(s) make no batch of {batch_size}"
                f"{' with drop_last' if drop_last else ''}; lower batch_size"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch whose order the next iteration uses (call before each epoch; resumable).

        ``start_batch`` skips that epoch's first batches, as if they had been drawn: the next
        iteration yields batch ``start_batch`` on, each exactly as a full pass would yield it (the
        binarization generator is advanced past the skipped ones). A run resumed mid-epoch uses it.
        """
        if not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"epoch must be a non-negative integer, got {epoch!r}")
        if not isinstance(start_batch, int) or not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch must be in 0..{len(self)}, got {start_batch!r}")
        self.epoch, self.start_batch = epoch, start_batch

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
            if i < self.start_batch:  # drawn before a resume: only the generator moves on
                if gen is not None:
                    torch.bernoulli(torch.zeros(len(sel), *self.images.shape[1:]), generator=gen)
                continue
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
        self.start = 0  # examples of this epoch to skip (a run resumed mid-epoch)

    def __iter__(self):
        return iter(
            epoch_indices(
                self.n,
                seed=self.seed,
                epoch=self.epoch,
                shuffle=self.shuffle,
                rank=self.rank,
                world_size=self.world_size,
            )[self.start :].tolist()
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
            # its own generator for the workers' base seed: drawn from the global one, it would move
            # the model's noise at every epoch start, and a run resumed mid-epoch would differ
            generator=torch.Generator().manual_seed(_mix(self.seed, 2)),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch whose order the next iteration uses (call before each epoch; resumable);
        ``start_batch`` as in :meth:`_Loader.set_epoch` (skipped batches are not decoded)."""
        super().set_epoch(epoch, start_batch)
        self._sampler.epoch, self._sampler.start = self.epoch, start_batch * self.batch_size

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, None]]:
        gen = self._binarize_generator()
        if gen is not None and self.start_batch:  # move it past the skipped batches' draws
            shape = self.dataset[0].shape  # [C,H,W]
            for _ in range(self.start_batch):
                torch.bernoulli(torch.zeros(self.batch_size, *shape), generator=gen)
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

    ``likelihood`` is the model's input kind (:data:`vaekit.data.ranges.INPUT_KINDS`): the range the
    pixels are mapped to, or "codes", whose int64 code maps pass through unchanged.

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
