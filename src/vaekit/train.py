"""The training loop: a plain function, from a config to a run directory of weights, numbers and pictures.

One process, or several under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA; the data are sharded
across ranks and only rank 0 writes). Checkpoints are taken at the end of every epoch and hold
the weights, optimizer, scheduler and RNG state, so ``resume=True`` continues exactly where the
last finished epoch left off.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vaekit.checkpoint import load_training_checkpoint, save_model, save_training_checkpoint, writing
from vaekit.config import Config, TrainConfig, save_config
from vaekit.data import DOWNLOADABLE, ImageData, download, load_dataset, make_loader
from vaekit.distributed import DistInfo, broadcast_from_main, mean_over_ranks, setup_distributed
from vaekit.errors import ConfigError, DataError
from vaekit.metrics_log import MetricsLog
from vaekit.models import MODELS, VAE


def build_model(cfg: Config, shape: tuple[int, int, int]) -> nn.Module:
    """The model named by ``cfg.model``, sized for images of ``shape = (C, H, W)``."""
    cls = MODELS[cfg.model.name]
    if "image_size" not in inspect.signature(cls).parameters:
        raise ConfigError(
            f"model.name: {cfg.model.name} does not take images; choose one of "
            + ", ".join(n for n, c in MODELS.items() if "image_size" in inspect.signature(c).parameters)
        )
    return cls(in_channels=shape[0], image_size=list(shape[1:]), **cfg.model.params)


def load_split(cfg: Config, split: str) -> ImageData:
    """One split of ``cfg.data``; with ``data.download`` (mnist, fashion-mnist, cifar10), files that
    are not found are first fetched and checksum-verified (into ``data.path``, or the user cache)."""
    d = cfg.data
    try:
        return load_dataset(d.name, d.path, split, image_size=d.image_size, channels=d.channels)
    except DataError:
        if not (d.download and d.name in DOWNLOADABLE):
            raise
    download(d.name, d.path)
    return load_dataset(d.name, d.path, split, image_size=d.image_size, channels=d.channels)


def lr_factor(t: TrainConfig, total_steps: int):
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to ``min_lr``."""

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
        floor = t.min_lr / t.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def kl_weight(t: TrainConfig, step: int) -> float:
    """β, rising linearly from 0 over ``kl_warmup_steps`` (Bowman et al. 2016), then constant."""
    if t.kl_warmup_steps <= 0:
        return t.beta
    return t.beta * min(1.0, step / t.kl_warmup_steps)


def loss_terms(model: nn.Module, outputs: tuple, beta: float) -> dict[str, torch.Tensor]:
    """The objective in float32 whatever the autocast precision of ``outputs``."""
    outputs32 = [t.float() for t in outputs]
    if isinstance(model, VAE):
        return model.loss_function(*outputs32, beta=beta)
    terms = model.loss_function(*outputs32)
    terms["perplexity"] = outputs.perplexity.detach()
    return terms


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: ImageData, cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean loss terms per example over a whole split (β = 1: the ELBO), in eval mode.

    The split is binarized (if at all) with a fixed seed, so every evaluation sees the same data, and
    the reparameterization noise comes from a fixed seed too, in a forked RNG: the same weights always
    get the same numbers, and evaluating leaves the training run's random stream untouched.
    """
    was_training = model.training
    model.eval()
    likelihood = model.likelihood.kind
    loader = make_loader(
        data,
        cfg.train.batch_size,
        likelihood,
        shuffle=False,
        drop_last=False,
        seed=1234,
        binarize=cfg.data.binarize,
        num_workers=cfg.data.num_workers,
    )
    sums: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        for x, _ in loader:
            x = x.to(device)
            terms = loss_terms(model, model(x), beta=1.0)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(x)
            count += len(x)
    model.train(was_training)
    return {key: value / count for key, value in sums.items()}


@contextlib.contextmanager
def _removed_if_unfinished(out_dir: Path, enabled: bool) -> Iterator[None]:
    """Around a fresh run: if it fails before its first checkpoint, remove what it wrote into the
    new or empty ``out_dir`` (there is nothing to resume, and a rerun would refuse the directory as
    taken). A directory that was there before, empty, stays, empty."""
    created = not out_dir.exists()
    emptied = not created and out_dir.is_dir() and not any(out_dir.iterdir())
    try:
        yield
    except BaseException:
        if enabled and (created or emptied) and not (out_dir / "checkpoints" / "last").exists():
            shutil.rmtree(out_dir, ignore_errors=True)
            if emptied:
                out_dir.mkdir(exist_ok=True)
        raise


class _StepBar:
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


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train(
    cfg: Config,
    out_dir: Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; return the loop's progress (epoch, step, best, …; with
    ``stopped_early`` when early stopping ended the run).

    ``stop_after_epochs`` ends this invocation early with a checkpoint, as a preemption would;
    ``resume=True`` picks up from ``out_dir/checkpoints/last``. ``on_start`` is called once the
    data and model are ready, before anything is written (the command line announces the run there,
    so a bad data path fails with one line). A fresh run that fails before its first checkpoint
    removes what it wrote (and ``out_dir`` itself when it made it): there is nothing to resume.
    """
    t = cfg.train
    dist: DistInfo = setup_distributed(t.device)
    device = dist.device
    torch.manual_seed(t.seed)
    if t.deterministic:
        # cuBLAS is only deterministic with a fixed workspace, which it reads from this variable when
        # it starts (the first matmul on CUDA); without it, deterministic mode raises there
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # benchmark mode times cuDNN's algorithms and keeps the fastest: the choice can differ per run
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    train_data, test_data = load_split(cfg, cfg.data.train_split), load_split(cfg, cfg.data.test_split)
    valid_data = load_split(cfg, cfg.data.valid_split) if cfg.data.valid_split else None
    model = build_model(cfg, train_data.shape).to(device)
    if dist.world_size > 1 and t.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must divide by the {dist.world_size} processes")
    loader = make_loader(
        train_data,
        t.batch_size // dist.world_size,
        model.likelihood.kind,
        shuffle=True,
        drop_last=True,
        seed=t.seed,
        binarize=cfg.data.binarize,
        rank=dist.rank,
        world_size=dist.world_size,
        num_workers=cfg.data.num_workers,
    )
    optimizer_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for the whole update instead of a dozen per tensor (20% of a small model's step)
    fused = device.type in ("cpu", "cuda")
    optimizer = optimizer_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    total_steps = t.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t, total_steps))

    if on_start is not None:
        on_start()
    out_dir = Path(out_dir)
    progress_state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best": math.inf,
        "bad_evals": 0,
        "wall_time": 0.0,
        "initial_test": None,
    }
    # the stack closes the metrics log, then a failed fresh run is removed
    with (
        _removed_if_unfinished(out_dir, enabled=dist.is_main and not resume),
        contextlib.ExitStack() as stack,
    ):
        if resume:
            progress_state = load_training_checkpoint(
                out_dir / "checkpoints" / "last", model, optimizer, scheduler
            )
        elif dist.is_main:
            with writing(out_dir):
                out_dir.mkdir(parents=True, exist_ok=True)
                save_config(cfg, out_dir / "config.yaml")
        if progress_state["initial_test"] is None:  # the untrained model's numbers, for comparison
            progress_state["initial_test"] = evaluate_loss(model, test_data, cfg, device)

        ddp_model = model
        if dist.world_size > 1:
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=dist.device_ids)
        forward = torch.compile(ddp_model) if t.compile else ddp_model
        step, start_epoch = progress_state["step"], progress_state["epoch"]
        end_epoch = start_epoch if progress_state.get("stopped_early") else t.epochs
        started, images_seen = time.perf_counter(), 0
        selection = "valid" if valid_data is not None else "test"
        # rows a crash left after the checkpoint are dropped: the resumed run writes them again
        with writing(out_dir):
            log = MetricsLog(out_dir, enabled=dist.is_main, resume_step=step if resume else None)
        stack.callback(log.close)

        for epoch in range(start_epoch, end_epoch):
            model.train()
            if dist.rank > 0:  # own reparameterization noise per rank (rank 0's state is in the checkpoint;
                # the others are re-derived each epoch, so a resumed DDP run draws the same numbers)
                seeds = np.random.SeedSequence([t.seed, epoch, dist.rank])
                torch.manual_seed(int(seeds.generate_state(1)[0]))
            loader.set_epoch(epoch)
            label, enabled = f"epoch {epoch + 1}/{t.epochs}", progress and dist.is_main
            bar = _StepBar(loader, label, step, images_seen, enabled, device.type)
            window_start, window_images = time.perf_counter(), 0
            for x, _ in bar:
                x = x.to(device, non_blocking=True)
                beta = kl_weight(t, step)
                with _autocast(device, t.precision):
                    outputs = forward(x)
                terms = loss_terms(model, outputs, beta)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if t.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                lr = optimizer.param_groups[0][
                    "lr"
                ]  # the rate this step used (before the scheduler moves it)
                optimizer.step()
                scheduler.step()
                step += 1
                window_images += len(x) * dist.world_size
                images_seen += len(x) * dist.world_size
                if step % t.log_every == 0 or step == total_steps:
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    # the global batch's means (every rank logs at the same steps; only rank 0 writes)
                    means = mean_over_ranks(torch.stack([v.detach().float() for v in terms.values()]))
                    row = dict(zip(terms, means.tolist(), strict=True))
                    row.update(lr=lr, beta=beta, images_per_s=rate)
                    log.write(step, epoch + 1, "train", row)
                    window_start, window_images = time.perf_counter(), 0
                bar.show(step, images_seen, terms)

            finished = epoch + 1
            stop_early = False
            if finished % t.eval_every == 0 or finished == t.epochs:
                evals = {"test": evaluate_loss(model, test_data, cfg, device)}
                if valid_data is not None:
                    evals["valid"] = evaluate_loss(model, valid_data, cfg, device)
                for split, terms_eval in evals.items():
                    log.write(step, finished, split, terms_eval)
                score = evals[selection]["loss"]
                if score < progress_state["best"]:
                    progress_state.update(best=score, bad_evals=0, best_epoch=finished)
                    if dist.is_main:
                        with writing(out_dir):
                            save_model(model, out_dir / "checkpoints" / "best")
                else:
                    progress_state["bad_evals"] += 1
                patience = t.early_stopping_patience
                stop_early = patience is not None and progress_state["bad_evals"] >= patience
                # rank 0 decides (its checkpoints are the run's): ranks' noise and BatchNorm statistics
                # differ, and a rank that stopped alone would leave the others waiting forever
                stop_early = broadcast_from_main(stop_early)
            progress_state.update(epoch=finished, step=step, stopped_early=stop_early)
            progress_state["wall_time"] += time.perf_counter() - started
            started = time.perf_counter()
            if dist.is_main:
                with writing(out_dir):
                    save_training_checkpoint(
                        out_dir / "checkpoints" / "last", model, optimizer, scheduler, progress_state
                    )
            if stop_early or (stop_after_epochs is not None and finished - start_epoch >= stop_after_epochs):
                break
    dist.barrier()
    return progress_state | {"images_seen_this_run": images_seen, "selection_split": selection}
