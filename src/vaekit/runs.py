"""Run directories: where a run goes, what it writes when it ends, loading and evaluating it.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}/``, ``metrics.csv``,
``tensorboard/``, ``metrics.json``, the pictures and ``report.html`` (and ``evaluation.json``
once ``vaekit evaluate`` has run).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vaekit.checkpoint import atomic_write_bytes, writing
from vaekit.config import Config, dump_yaml, load_config
from vaekit.data import ImageData, load_split, to_model_range
from vaekit.distributed import broadcast_from_main, cleanup_distributed
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate_loss, evaluate_model
from vaekit.models import AutoEncoder, load_model
from vaekit.report import plot_curves, read_metrics_csv, write_report_html
from vaekit.visualize import write_pictures


def config_for(
    config_path: str | None, overrides: Sequence[str], resume: str | None, out: str | None, force: bool
) -> Config:
    """The config of a ``vaekit train`` invocation: CONFIG (default: the main job) with ``--set``
    overrides, or, with ``--resume RUN``, the run's own ``config.yaml`` (model keys fixed)."""
    if resume is None:
        return load_config(config_path, overrides)
    run_dir = Path(resume)
    if config_path or out or force:
        raise VaekitError(
            "--resume continues a run with its own config.yaml in its own directory; "
            "drop the CONFIG / --out / --force arguments (--set still applies)"
        )
    if not (run_dir / "config.yaml").is_file():
        raise VaekitError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
    model_keys = [o for o in overrides if o.strip().startswith("model.")]
    if model_keys:
        raise VaekitError(f"cannot change the model of a run on --resume: {', '.join(model_keys)}")
    return load_config(run_dir / "config.yaml", overrides)


def shared_run_dir(config_path: str | None, out: str | None, force: bool, is_main: bool) -> Path:
    """:func:`choose_run_dir` on rank 0, the same answer on every rank (or the same error on all,
    so that none waits for a choice)."""
    chosen: Path | VaekitError | None = None
    if is_main:
        try:
            chosen = choose_run_dir(config_path, out, force)
        except VaekitError as err:
            chosen = err
    chosen = broadcast_from_main(chosen)
    if isinstance(chosen, VaekitError):
        cleanup_distributed()
        raise chosen
    return chosen


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


def load_run(
    run_dir: str | Path, which: str = "best", map_location: Any = "cpu"
) -> tuple[Config, AutoEncoder]:
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
    train_data, test_data = (
        load_split(cfg.data, cfg.data.train_split),
        load_split(cfg.data, cfg.data.test_split),
    )
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
    if "ELBO" in test_terms:
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


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    iw_samples: int | None = None,
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    sample_metrics: bool = True,
    progress: bool = True,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`vaekit.evaluate.evaluate_model` of a run's model on one split of its data, also written
    as JSON (default ``RUN/evaluation.json``)."""
    run_dir = Path(run_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = load_run(run_dir, checkpoint, map_location=device)
    # NHWC convolutions: 1.3-1.6× more importance samples per second for the conv decoders on a CPU
    # (benchmarks/bench_nll.py), the same values up to rounding; models without 4-d weights stay
    model = model.to(memory_format=torch.channels_last)
    results = {"run": str(run_dir), "checkpoint": checkpoint} | evaluate_model(
        cfg,
        model,
        split,
        lambda name: load_split(cfg.data, name),
        iw_samples=iw_samples,
        protocol=protocol,
        seed=seed,
        batch_size=batch_size,
        sample_metrics=sample_metrics,
        progress=progress,
    )
    path = Path(json_path) if json_path is not None else run_dir / "evaluation.json"
    atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())
    return results | {"json_path": str(path)}
