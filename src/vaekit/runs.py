"""Run directories: where a run goes, what it writes when it ends, and loading it back.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}/``, ``metrics.csv``,
``tensorboard/``, ``metrics.json``, the pictures and ``report.html``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.checkpoint import atomic_write_bytes, load_model, writing
from vaekit.config import Config, dump_yaml, load_config
from vaekit.data import ImageData, to_model_range
from vaekit.errors import VaekitError
from vaekit.models import VAE
from vaekit.report import plot_curves, read_metrics_csv, write_report_html
from vaekit.train import evaluate_loss, load_split
from vaekit.visualize import write_pictures


def choose_run_dir(config_path: str | None, out: str | None, force: bool, root: Path = Path("runs")) -> Path:
    """``--out DIR`` as given (refusing a non-empty one unless ``force``), else ``runs/<config name>``
    with ``-2``, ``-3``… appended when that exists: a run never overwrites another by accident.

    With ``force`` the run found there is checked, not deleted: :func:`clear_run_dir` deletes it once
    the new run's data and model are ready, so a new config that fails keeps the old run whole."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise VaekitError(f"--out {path} is a file, not a directory; choose another --out")
        if path.exists() and any(path.iterdir()):
            if not force:
                raise VaekitError(
                    f"run directory {path} already exists; pass --resume {path} to continue it, "
                    "--force to overwrite it, or another --out"
                )
            if not (path / "config.yaml").is_file():  # --force replaces runs, never other folders
                raise VaekitError(
                    f"--force would delete {path}, which is not a vaekit run (no config.yaml); "
                    "choose another --out or remove it yourself"
                )
        return path
    stem = Path(config_path).stem if config_path else "default"
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return path


def clear_run_dir(path: Path) -> None:
    """Delete the run at ``path`` that ``--force`` replaces (only a vaekit run: one with config.yaml)."""
    if (path / "config.yaml").is_file():
        try:
            shutil.rmtree(path)
        except OSError as err:
            where = err.filename or path
            raise VaekitError(f"cannot delete the old run {where}: {err.strerror or err}") from err


def load_run(run_dir: str | Path, which: str = "best", map_location: Any = "cpu") -> tuple[Config, nn.Module]:
    """The config and a trained model of a run (``best``, falling back to ``last``), in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise VaekitError(
            f"{run_dir} is not a vaekit run (no config.yaml); pass the directory `vaekit train` wrote"
        )
    cfg = load_config(run_dir / "config.yaml")
    for name in (which, "last"):
        if (run_dir / "checkpoints" / name / "model.safetensors").is_file():
            return cfg, load_model(run_dir / "checkpoints" / name, map_location=map_location).eval()
    raise VaekitError(f"{run_dir} has no checkpoint yet; train it (or resume it) first")


def example_batch(data: ImageData, likelihood: str, n: int, device: torch.device) -> torch.Tensor:
    """n images spread evenly over a split (files are often sorted by class), in the model's value
    range, without binarization: the same pictures every time."""
    picks = torch.linspace(0, len(data) - 1, min(n, len(data))).long()  # [n]
    if data.images is not None:
        images = data.images[picks]  # [n, C, H, W] uint8
    else:
        images = torch.stack([data.dataset[int(i)] for i in picks])
    return to_model_range(images, likelihood).to(device)


def finalize_run(
    run_dir: Path, cfg: Config, progress: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Write ``metrics.json``, the pictures, ``curves.png`` and ``report.html`` for a finished run.

    The numbers and pictures come from the best checkpoint when a validation split chose it, else
    from the last one.
    """
    which = "best" if progress.get("selection_split") == "valid" else "last"
    _, model = load_run(run_dir, which, map_location=device)
    train_data, test_data = load_split(cfg, cfg.data.train_split), load_split(cfg, cfg.data.test_split)
    test_terms = evaluate_loss(model, test_data, cfg, device)
    metrics: dict[str, Any] = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "checkpoint": which,
        "epochs": progress["epoch"],
        "steps": progress["step"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": evaluate_loss(model, train_data, cfg, device),
        "test": test_terms,
        "untrained_test": progress["initial_test"],
        "wall_time_s": round(progress["wall_time"], 2),
        "images_per_s": round(progress["epoch"] * len(train_data) / max(progress["wall_time"], 1e-9), 1),
        "device": str(device),
    }
    if isinstance(model, VAE):
        metrics["test_elbo_nats"] = test_terms["ELBO"]
        metrics["untrained_test_elbo_nats"] = progress["initial_test"]["ELBO"]
    batch = example_batch(test_data, model.likelihood.kind, 64, device)
    with writing(run_dir):
        atomic_write_bytes(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        pictures = write_pictures(model, batch, run_dir, num_samples=cfg.train.num_samples)
        pictures["curves"] = plot_curves(read_metrics_csv(run_dir / "metrics.csv"), run_dir / "curves.png")
        write_report_html(
            run_dir / "report.html",
            f"vaekit run {run_dir.name}",
            metrics,
            {name.capitalize(): path for name, path in pictures.items()},
            dump_yaml(cfg),
        )
    return metrics
