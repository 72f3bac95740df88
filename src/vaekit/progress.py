"""What a training run shows and hears while it trains: its progress bar, and SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm


class StepBar:
    """One epoch's progress bar: the global step, this step's loss terms and images/s over the last
    ~10 steps. Reading the terms waits for the device, so on CUDA they are shown every 10th step."""

    def __init__(
        self, batches: Any, label: str, step: int, images_seen: int, enabled: bool, device_type: str
    ):
        self.label, self.every = label, 1 if device_type == "cpu" else 10
        self.bar = tqdm(batches, f"{label} step {step}", disable=not enabled, dynamic_ncols=True, leave=False)
        self.recent = deque([(time.perf_counter(), images_seen)], maxlen=10 // self.every + 1)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bar)

    def show(self, step: int, images_seen: int, terms: dict[str, torch.Tensor]) -> None:
        if self.bar.disable or step % self.every:
            return
        self.recent.append((time.perf_counter(), images_seen))
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()  # rank 0's share
        shown = {k: f"{v:.4g}" for k, v in zip(terms, values, strict=True)}
        (t0, n0), (t1, n1) = self.recent[0], self.recent[-1]
        shown["img/s"] = f"{(n1 - n0) / max(t1 - t0, 1e-9):.0f}"
        self.bar.set_description(f"{self.label} step {step}", refresh=False)
        self.bar.set_postfix(shown, refresh=False)  # drawn at tqdm's own pace (mininterval)


class StopRequest:
    """SIGINT and SIGTERM, while installed, set :attr:`signal` instead of stopping the process: the
    loop writes a checkpoint at the next step boundary and returns. A second one stops at once."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main one only
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: Any) -> None:
            if self.signal is not None:  # the second one: do not wait for the checkpoint
                raise KeyboardInterrupt
            self.signal = signal.Signals(signum)

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
