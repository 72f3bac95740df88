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
    "codebook_usage",
    "NLL",
    "bits_per_code",
    "lr",
    "beta",
    "images_per_s",
]


class MetricsLog:
    """Append rows to ``metrics.csv`` (fixed columns, empty where a term does not apply) and
    scalars to TensorBoard under ``tensorboard/`` as ``split/term``."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        """``resume_step``: the step of the checkpoint a resumed run starts from; rows (and TensorBoard
        events) logged after it by the interrupted run are dropped, since they are logged again."""
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        path = Path(run_dir) / "metrics.csv"
        if resume_step is not None and path.exists():
            _truncate_after(path, resume_step)
        # a process killed before its first row may have left an empty file (the header unflushed)
        new = not path.exists() or path.stat().st_size == 0
        # a resumed run keeps the columns its file has (an older vaekit may have written fewer)
        columns = COLUMNS if new else _header(path) or COLUMNS
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if new:
            self._csv.writeheader()
            self._file.flush()
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1  # drops events at steps >= purge
            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)
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


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the rows of ``path`` whose step is at most ``step`` (rewritten atomically)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= step]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    tmp.replace(path)


def _header(path: Path) -> list[str]:
    """The column names in the first row of a CSV file (empty if it has none)."""
    with open(path, newline="") as f:
        return next(csv.reader(f), [])
