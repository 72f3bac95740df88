"""Run directories: where a run goes, what it writes when it ends, loading and evaluating it.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}/``, ``metrics.csv``,
``tensorboard/``, ``metrics.json``, the pictures and ``report.html`` (and ``evaluation.json``
once ``vaekit evaluate`` has run).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from vaekit.checkpoint import atomic_write_bytes, damaged, load_model_header, writing
from vaekit.config import Config, ModelConfig, dump_yaml, load_config
from vaekit.data import ImageData, codes, load_split, make_loader, to_model_range
from vaekit.distributed import broadcast_from_main, cleanup_distributed
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate_loss, evaluate_model
from vaekit.models import MODELS, Model, load_model
from vaekit.report import plot_curves, read_metrics_csv, write_report_html
from vaekit.visualize import write_pictures

#: what runs written before these keys existed trained with
OLD_RUN_SETTINGS = {"precision": "fp32", "memory_format": "contiguous"}


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
    return load_config(run_dir / "config.yaml", [*_settings_it_trained_with(run_dir), *overrides])


def _settings_it_trained_with(run_dir: Path) -> list[str]:
    """Overrides that keep a run written before ``train.memory_format`` existed (or before
    ``precision: auto``) in the layout and precision it trained with, not what ``auto`` would pick
    now: a resume then continues the same arithmetic."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # load_config reports the damaged file
    saved = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(saved, dict):
        return []
    return [f"train.{key}={value}" for key, value in OLD_RUN_SETTINGS.items() if key not in saved]


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


def _checkpoint(run_dir: Path, which: str) -> Path:
    """``checkpoints/<which>``, falling back to ``last``. A training process replaces a checkpoint
    folder by two renames (the old one to ``.<which>.old``, the new one into place): a reader that
    comes between them reads the old one."""
    for name in (which, f".{which}.old", "last", ".last.old"):
        if (run_dir / "checkpoints" / name / "model.safetensors").is_file():
            return run_dir / "checkpoints" / name
    raise VaekitError(f"{run_dir} has no checkpoint yet; train it (or resume it) first")


def _load_model(directory: Path, map_location: Any) -> Model:
    """:func:`vaekit.models.load_model`, with a ``config.json`` or ``model.safetensors`` that does not
    fit the model it names as a one-line :class:`VaekitError` (a file from another model or config)."""
    try:
        return load_model(directory, map_location=map_location)
    except TypeError as err:  # cls(**config) with arguments the class does not take
        raise damaged(
            directory / "config.json", f"its config does not fit the model it names: {err}"
        ) from None
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        raise VaekitError(
            f"{directory / 'model.safetensors'} does not fit the model in {directory / 'config.json'} "
            f"({' '.join(str(err).split())[:300]}); it holds the weights of another model or config"
        ) from None


def _run_config(run_dir: Path) -> Config:
    if not (run_dir / "config.yaml").is_file():
        raise VaekitError(
            f"{run_dir} is not a vaekit run (no config.yaml); pass the directory `vaekit train` wrote"
        )
    return load_config(run_dir / "config.yaml")


def load_run(run_dir: str | Path, which: str = "best", map_location: Any = "cpu") -> tuple[Config, Model]:
    """The config and a trained model of a run (``best``, falling back to ``last``), in eval mode.

    A VQ-VAE run with a prior trained by ``vaekit train-prior`` (``RUN/prior/``) comes with that
    prior attached, so it samples — when the prior was trained on the codes of these weights.
    """
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    checkpoint = _checkpoint(run_dir, which)
    model = _load_model(checkpoint, map_location).eval()
    prior_dir = run_dir / PRIOR_DIR
    if (prior_dir / "config.yaml").is_file():
        prior_cfg = _run_config(prior_dir)
        made_by = codes.cached_fingerprint(run_dir, prior_cfg.data.train_split)
        if made_by == codes.fingerprint(checkpoint / "model.safetensors"):
            model.attach_prior(_load_model(_checkpoint(prior_dir, "best"), map_location).eval())
        else:
            warnings.warn(
                f"{prior_dir} was trained on the codes of other weights than {checkpoint}; not using it "
                f"(train it again: `vaekit train-prior {run_dir} --force`)",
                stacklevel=2,
            )
    return cfg, model


def load_image_run(
    run_dir: str | Path, which: str = "best", map_location: Any = "cpu"
) -> tuple[Config, Model]:
    """:func:`load_run` for the commands that show and score images: a prior's own run directory
    (``RUN/prior``) is refused with a pointer to its VQ-VAE run, which samples with it."""
    cfg, model = load_run(run_dir, which, map_location)
    if cfg.data.name == "codes":
        raise VaekitError(
            f"{run_dir} is the prior over the codes of the VQ-VAE run {cfg.data.path}: pass that run, "
            "which samples with it"
        )
    return cfg, model


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
    from the last one. A prior over codes has no images of its own: its VQ-VAE run gets its samples
    (and a new report), and the prior's report shows them too.
    """
    which = "best" if progress.get("selection_split") == "valid" else "last"
    # the settings training decided (train.precision / memory_format "auto"), as its config.yaml says
    decided = {key: progress[key] for key in ("precision", "memory_format") if key in progress}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **decided))
    _, model = load_run(run_dir, which, map_location=device)
    if cfg.train.memory_format == "channels_last":  # as training evaluated it: the same conv kernels,
        model = model.to(memory_format=torch.channels_last)  # so the same numbers as its last row
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
        "precision": cfg.train.precision,
        "memory_format": cfg.train.memory_format,
    }
    if "ELBO" in test_terms:
        metrics["test_elbo_nats"] = test_terms["ELBO"]
        metrics["untrained_test_elbo_nats"] = progress["initial_test"]["ELBO"]
    with writing(run_dir):
        atomic_write_bytes(run_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
        if cfg.data.name == "codes":  # the data say whose pictures these are: the VQ-VAE run's
            parent = write_run_pictures(Path(cfg.data.path), device)
            pictures = {"samples": shutil.copyfile(parent["samples"], run_dir / "samples.png")}
        else:
            batch = example_batch(test_data, model.input_kind, 64, device)
            pictures = write_pictures(model, batch, run_dir, num_samples=cfg.train.num_samples)
        _write_report(run_dir, cfg, metrics, pictures)
    return metrics


def write_run_pictures(run_dir: Path, device: torch.device) -> dict[str, Path]:
    """Draw a finished run's pictures again from its model as :func:`load_run` gives it (a VQ-VAE
    with its prior now samples) and rewrite its report; returns the pictures' paths."""
    cfg, model = load_run(run_dir, map_location=device)
    test_data = load_split(cfg.data, cfg.data.test_split)
    batch = example_batch(test_data, model.input_kind, 64, device)
    with writing(run_dir):
        pictures = write_pictures(model, batch, run_dir, num_samples=cfg.train.num_samples)
        metrics = (
            json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        )
        _write_report(run_dir, cfg, metrics, pictures)
    return pictures


def _write_report(run_dir: Path, cfg: Config, metrics: dict[str, Any], pictures: dict[str, Path]) -> None:
    """``curves.png`` from ``metrics.csv``, then ``report.html`` with the numbers and pictures."""
    pictures = {
        **pictures,
        "curves": plot_curves(read_metrics_csv(run_dir / "metrics.csv"), run_dir / "curves.png"),
    }
    write_report_html(
        run_dir / "report.html",
        f"vaekit run {run_dir.name}",
        metrics,
        {name.capitalize(): path for name, path in pictures.items()},
        dump_yaml(cfg),
    )


# --- a prior over a VQ-VAE run's codes ------------------------------------------------------------------

#: Where ``vaekit train-prior RUN`` trains its prior: a run of its own inside the VQ-VAE's run.
PRIOR_DIR = "prior"


def _code_splits(cfg: Config) -> list[str]:
    d = cfg.data
    return [split for split in (d.train_split, d.valid_split, d.test_split) if split]


def prior_config(run_dir: str | Path, config_path: str | None, overrides: Sequence[str]) -> Config:
    """The config of a prior over ``run_dir``'s codes: CONFIG (default: a gated PixelCNN with its
    constructor's defaults) with ``--set`` overrides, its data section pointed at the run's codes
    (``data.name=codes``, ``data.path=RUN``, the run's splits) and ``model.num_embeddings`` set to
    the run's codebook size."""
    run_dir = Path(run_dir)
    run_cfg = _run_config(run_dir)
    header = load_model_header(_checkpoint(run_dir, "best"))
    vq_params = header.get("config", {})
    vq_class = MODELS.get(header.get("name", ""))
    if getattr(vq_class, "latent_type", None) != "discrete" or "num_embeddings" not in vq_params:
        raise VaekitError(
            f"{run_dir} holds a {header.get('name', header.get('class'))} model; a prior over codes needs a "
            "run whose model has discrete codes (model.name=vqvae)"
        )
    defaults = [] if config_path else ["model.name=pixelcnn_prior"]
    cfg = load_config(config_path, [*defaults, *overrides])
    if MODELS[cfg.model.name].input_kind != "codes":
        raise VaekitError(f"model.name: {cfg.model.name} does not model codes; use pixelcnn_prior")
    d = run_cfg.data
    data = dataclasses.replace(
        cfg.data,
        name="codes",
        path=str(run_dir),
        train_split=d.train_split,
        valid_split=d.valid_split,
        test_split=d.test_split,
        image_size=None,
        channels=None,
        binarize=False,
        download=False,
    )
    model = ModelConfig(cfg.model.name, {**cfg.model.params, "num_embeddings": vq_params["num_embeddings"]})
    return dataclasses.replace(cfg, data=data, model=model)


@torch.no_grad()
def encode_codes(run_dir: str | Path, device: torch.device, progress: bool = True) -> list[Path]:
    """Encode every split of a VQ-VAE run's data to code maps, ``RUN/codes/<split>.safetensors``,
    unless the cache already holds the codes of the run's current weights; returns the files."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    weights = codes.vq_checkpoint(run_dir)  # the weights whose codes the cache holds (best, else last)
    checkpoint, weights_sha = weights.parent, codes.fingerprint(weights)
    model = _load_model(checkpoint, device).eval()
    files = []
    for split in _code_splits(cfg):
        if codes.cached_fingerprint(run_dir, split) == weights_sha:
            files.append(codes.cache_path(run_dir, split))
            continue
        data = load_split(cfg.data, split)
        loader = make_loader(
            data,
            256,
            model.input_kind,
            shuffle=False,
            drop_last=False,
            seed=0,
            num_workers=cfg.data.num_workers,
        )
        bar = tqdm(loader, f"encoding {split}", disable=not progress, leave=False)
        maps = torch.cat([model.encode_latents(x.to(device))["indices"].cpu() for x, _ in bar])  # [N, h, w]
        files.append(
            codes.write(
                run_dir, split, maps, data.labels, model.num_embeddings, data.num_classes, weights_sha
            )
        )
    return files


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
    compile: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """:func:`vaekit.evaluate.evaluate_model` of a run's model on one split of its data, also written
    as JSON (default ``RUN/evaluation.json``)."""
    run_dir = Path(run_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = load_image_run(run_dir, checkpoint, map_location=device)
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
        compile=compile,
        workers=workers,
    )
    path = Path(json_path) if json_path is not None else run_dir / "evaluation.json"
    atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())
    return results | {"json_path": str(path)}
