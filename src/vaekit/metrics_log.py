"""What a run logs while it trains: ``metrics.csv`` and TensorBoard events, rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = [
    "step",
    "epoch",
    "split",
    "loss",
    "Reconstruction_Loss",
    "KLD",
    "ELBO",
    "VQ_Loss",
    "perplexity",
    "lr",
    "beta",
    "images_per_s",
]


class MetricsLog:
    """Append rows to ``metrics.csv`` (fixed columns, empty where a term does not apply) and
    scalars to TensorBoard under ``tensorboard/`` as ``split/term``."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        path = Path(run_dir) / "metrics.csv"
        new = not path.exists()
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but a missing one should not stop training
            self._writer = None

    def write(self, step: int, epoch: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._csv.writerow({"step": step, "epoch": epoch, "split": split, **values})
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._writer is not None:
                self._writer.close()
