"""Timing and reporting helpers shared by the benchmarks (not part of the library).

This machine is shared and noisy, so contenders are never timed one after the other: ``alternate``
calls them in turn, round after round, in one process, and only medians and ratios of the same
sitting are reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vaekit.allocator import keep_freed_memory
from vaekit.threads import intra_op_threads as threads  # noqa: F401 (the benchmarks' name)

RESULTS = Path(__file__).parent / "results"
# as the vaekit command does: every contender in the process reuses freed memory alike
keep_freed_memory()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the seed's classes, as reference


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def alternate(
    contenders: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Time every contender once per round, in turn, for ``rounds`` rounds after ``warmup`` rounds.

    Returns ``{name: {"median_ms", "min_ms", "times_ms"}}``. Interleaving means a burst of load from
    elsewhere on the machine hits all contenders alike, so their ratio stays meaningful; the order
    within a round rotates so no contender always runs right after the same other one.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            elapsed = (time.perf_counter() - start) * 1000
            if r >= warmup:
                times[name].append(elapsed)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "times_ms": t}
        for name, t in times.items()
    }


def profile_top_ops(steps: dict[str, Callable[[], object]], repeats: int = 3, rows: int = 6) -> str:
    """The top ops by self CPU time of each step (torch.profiler, after one warm-up call), in ms per
    step, one line per step."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for name, step in steps.items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        ops = ", ".join(f"{e.key} {e.self_cpu_time_total / (1000 * repeats):.1f}" for e in events)
        lines.append(f"{name} (ms per step): {ops}")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report(name: str, rows: list[dict[str, object]], columns: list[str]) -> Path:
    """Print ``rows`` as a table and write them with the machine description to results/NAME.json."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def show_comparison(name: str, result: dict[str, object]) -> Path:
    """What a ``cmp_*.py`` run on its own prints: ``result``'s title, table, metrics and profile;
    the whole result with the machine goes to results/NAME.json."""
    print(result["title"])
    path = report(name, result["rows"], result["columns"])  # type: ignore[arg-type]
    print(json.dumps(result["metrics"], indent=2))
    if result.get("profile"):
        print(result["profile"])
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=str) + "\n")
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
