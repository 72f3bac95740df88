"""Keep freed memory in the process: fewer page faults for the large tensors of each step.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults a block above the mmap threshold
(128 KiB at first, raised as such blocks are freed, at most 32 MiB) is mapped fresh from the kernel
and unmapped when freed, and freed memory at the top of the heap above a trim threshold is handed
back; the next step's tensors of the same size then fault their pages in again, one 4 KiB page at a
time, each zeroed by the kernel first. A training step or an evaluation call allocates and frees
the same large tensors over and over, so this is paid on every step: with
:func:`keep_freed_memory` the default job's step took 38 ms instead of 44, and an eager MLP
log p(x) call ran at 52% of the matmul rate instead of 39% (``docs/performance.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit systems (4 · 1024 · 1024 · sizeof(long)): blocks below
#: it come from the heap and are reused.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap is returned to the kernel only above this much (the largest
#: value mallopt's int takes, 2 GiB).
TRIM_THRESHOLD = 2**31 - 1
#: Environment variables with which a user tunes glibc's malloc directly; set, they win.
GLIBC_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from the heap and not to return freed heap
    memory to the kernel below 2 GiB, so a step's large tensors reuse the pages of the last step's.

    The process keeps its peak memory instead of shrinking after each step. Does nothing and returns
    False off Linux, where ``mallopt`` is missing or refuses (musl's does nothing), or when the
    environment tunes malloc itself (:data:`GLIBC_TUNING`); True when both settings were applied.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in GLIBC_TUNING):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trimmed = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1  # 1: applied
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and trimmed
