"""Independent pieces of CPU work on several threads at once, each thread computing alone.

torch splits each op on a CPU between its intra-op threads and waits for the slowest at the op's
end. A conv decoder's log p(x) is many small ops, and on a machine shared with other processes
every op waits until each of its threads has been scheduled. Given whole pieces of work (batches of
images) that need nothing from each other, ``map_in_threads`` gives each of ``workers`` Python
threads one intra-op thread and its own pieces; torch's ops release the GIL, so the threads compute
side by side and wait for each other only at the last piece. With another process spinning on one
of two cores, the compiled VanillaVAE's log p(x) took a third of the time this way that it took one
batch at a time on both threads; on idle cores the two were as fast (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block at ``n`` intra-op threads, then restore torch's previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_in_threads(fn: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``fn(item)`` for each of ``items``, yielded in their order, computed by ``workers`` threads
    with one intra-op thread each; with ``workers`` ≤ 1, in the calling thread as it is.

    Items are taken lazily, at most ``2 × workers`` in flight. torch's thread count is process-wide
    for threads started later, so it is restored when the map ends (or is closed early). Autograd's
    mode is per thread: ``fn`` sets its own (``torch.inference_mode()`` inside it), and it must
    not draw from torch's global generator if its results are to be repeatable — the threads' draws
    would interleave in any order.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    pending: deque[Future[Result]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when closed early or an item failed: what has not started is dropped
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)
