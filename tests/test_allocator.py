"""vaekit.allocator: with keep_freed_memory, a freed large tensor's pages stay in the process (and
the next tensor of that size reuses them); without it glibc hands them back to the kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vaekit.allocator import GLIBC_TUNING, keep_freed_memory

# Resident memory (MiB) after a 20 MiB tensor was filled and freed, minus before it.
PROBE = """
import sys
import torch
from vaekit.allocator import keep_freed_memory

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resident_mib()
block = torch.ones(5 * 2**20)  # 20 MiB, every page touched
del block
print(kept, resident_mib() - before)
"""


def _retained(mode: str, env: dict[str, str]) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_freed_memory_is_kept_only_when_asked():
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_TUNING}
    kept, keep_mib = _retained("keep", env)
    _, default_mib = _retained("default", env)
    assert kept == "True"
    assert keep_mib > 15  # the 20 MiB block's pages stayed
    assert default_mib < 5  # mapped for the block and unmapped when it was freed


def test_a_user_tuning_malloc_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
