"""The training loop: a plain function, from a config to a run directory of weights and numbers.

One process, or several under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA; the data are sharded
across ranks and only rank 0 writes). Checkpoints are taken at the end of every epoch and hold
the weights, optimizer, scheduler and RNG state, so ``resume=True`` continues exactly where the
last finished epoch left off.

The loop knows nothing of model families: it calls ``model(x)`` and
``model.loss_function(*outputs, beta=β)`` (the contract of :class:`vaekit.models.Model`) and
logs every term that returns.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vaekit.checkpoint import load_training_checkpoint, save_training_checkpoint, writing
from vaekit.config import Config, TrainConfig, save_config
from vaekit.data import ImageData, load_split, make_loader
from vaekit.distributed import DistInfo, broadcast_from_main, mean_over_ranks, setup_distributed
from vaekit.errors import ConfigError
from vaekit.evaluate import evaluate_loss
from vaekit.metrics_log import MetricsLog
from vaekit.models import Model, build_model


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


@dataclass
class _Session:
    """What one invocation of :func:`train` works with, built by :func:`_setup`."""

    cfg: Config
    dist: DistInfo
    model: Model
    loader: Any  # an InMemoryLoader or FolderLoader over the training split, this rank's share
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    test_data: ImageData
    valid_data: ImageData | None
    total_steps: int
    forward: Callable[..., Any] | None = None  # the model, wrapped by DDP and/or torch.compile
    log: MetricsLog | None = None
    images_seen: int = 0  # by all ranks, in this invocation


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
    run = _setup(cfg)
    if on_start is not None:
        on_start()
    out_dir = Path(out_dir)
    # the stack closes the metrics log, then a failed fresh run is removed
    with (
        _removed_if_unfinished(out_dir, enabled=run.dist.is_main and not resume),
        contextlib.ExitStack() as stack,
    ):
        state = _start(run, out_dir, resume)
        with writing(out_dir):  # rows a crash left after the checkpoint are dropped: they are logged again
            run.log = MetricsLog(
                out_dir, enabled=run.dist.is_main, resume_step=state["step"] if resume else None
            )
        stack.callback(run.log.close)
        start_epoch = state["epoch"]
        end_epoch = start_epoch if state.get("stopped_early") else cfg.train.epochs
        started = time.perf_counter()
        for epoch in range(start_epoch, end_epoch):
            _train_epoch(run, epoch, state, progress)
            stop_early = _evaluate_and_select(run, out_dir, state, finished=epoch + 1)
            state.update(epoch=epoch + 1, stopped_early=stop_early)
            state["wall_time"] += time.perf_counter() - started
            started = time.perf_counter()
            _save_checkpoint(run, out_dir, state)
            stopping = stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs
            if stop_early or stopping:
                break
    run.dist.barrier()
    selection = "valid" if run.valid_data is not None else "test"
    return state | {"images_seen_this_run": run.images_seen, "selection_split": selection}


def _setup(cfg: Config) -> _Session:
    """Processes, seeds, data, model, loader, optimizer and schedule: nothing written yet."""
    t = cfg.train
    dist = setup_distributed(t.device)
    torch.manual_seed(t.seed)
    if t.deterministic:
        # cuBLAS is only deterministic with a fixed workspace, which it reads from this variable when
        # it starts (the first matmul on CUDA); without it, deterministic mode raises there
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # benchmark mode times cuDNN's algorithms and keeps the fastest: the choice can differ per run
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    d = cfg.data
    train_data, test_data = load_split(d, d.train_split), load_split(d, d.test_split)
    valid_data = load_split(d, d.valid_split) if d.valid_split else None
    model = build_model(cfg.model.name, cfg.model.params, train_data.shape).to(dist.device)
    if dist.world_size > 1 and t.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must divide by the {dist.world_size} processes")
    loader = make_loader(
        train_data,
        t.batch_size // dist.world_size,
        model.likelihood.kind,
        shuffle=True,
        drop_last=True,
        seed=t.seed,
        binarize=d.binarize,
        rank=dist.rank,
        world_size=dist.world_size,
        num_workers=d.num_workers,
    )
    optimizer_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for the whole update instead of a dozen per tensor (20% of a small model's step)
    fused = dist.device.type in ("cpu", "cuda")
    optimizer = optimizer_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    total_steps = t.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t, total_steps))
    return _Session(cfg, dist, model, loader, optimizer, scheduler, test_data, valid_data, total_steps)


def _start(run: _Session, out_dir: Path, resume: bool) -> dict[str, Any]:
    """The loop's state, fresh (config.yaml written) or from ``checkpoints/last``; wraps the model."""
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best": math.inf,
        "bad_evals": 0,
        "wall_time": 0.0,
        "initial_test": None,
    }
    if resume:
        last = out_dir / "checkpoints" / "last"
        state = load_training_checkpoint(last, run.model, run.optimizer, run.scheduler)
    elif run.dist.is_main:
        with writing(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(run.cfg, out_dir / "config.yaml")
    if state["initial_test"] is None:  # the untrained model's numbers, for comparison
        state["initial_test"] = evaluate_loss(run.model, run.test_data, run.cfg, run.dist.device)
    wrapped: nn.Module = run.model
    if run.dist.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=run.dist.device_ids)
    run.forward = torch.compile(wrapped) if run.cfg.train.compile else wrapped
    return state


def _train_epoch(run: _Session, epoch: int, state: dict[str, Any], progress: bool) -> None:
    """One pass over this rank's share of the training split, logging every ``log_every`` steps."""
    t, dist = run.cfg.train, run.dist
    run.model.train()
    if dist.rank > 0:  # own reparameterization noise per rank (rank 0's state is in the checkpoint;
        # the others are re-derived each epoch, so a resumed DDP run draws the same numbers)
        seeds = np.random.SeedSequence([t.seed, epoch, dist.rank])
        torch.manual_seed(int(seeds.generate_state(1)[0]))
    run.loader.set_epoch(epoch)
    label, enabled = f"epoch {epoch + 1}/{t.epochs}", progress and dist.is_main
    bar = _StepBar(run.loader, label, state["step"], run.images_seen, enabled, dist.device.type)
    window_start, window_images = time.perf_counter(), 0
    for x, _ in bar:
        x = x.to(dist.device, non_blocking=True)
        beta = kl_weight(t, state["step"])
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it after)
        terms = _train_step(run, x, beta)
        state["step"] += 1
        window_images += len(x) * dist.world_size
        run.images_seen += len(x) * dist.world_size
        if state["step"] % t.log_every == 0 or state["step"] == run.total_steps:
            rate = window_images / max(time.perf_counter() - window_start, 1e-9)
            # the global batch's means (every rank logs at the same steps; only rank 0 writes)
            means = mean_over_ranks(torch.stack([v.detach().float() for v in terms.values()]))
            row = dict(zip(terms, means.tolist(), strict=True)) | {
                "lr": lr,
                "beta": beta,
                "images_per_s": rate,
            }
            run.log.write(state["step"], epoch + 1, "train", row)
            window_start, window_images = time.perf_counter(), 0
        bar.show(state["step"], run.images_seen, terms)


def _train_step(run: _Session, x: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Forward, the model's objective, backward, clipping and one optimizer and scheduler step."""
    with _autocast(run.dist.device, run.cfg.train.precision):
        outputs = run.forward(x)
    terms = run.model.loss_function(*outputs, beta=beta)  # in float32, whatever the autocast
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if run.cfg.train.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return terms


def _evaluate_and_select(run: _Session, out_dir: Path, state: dict[str, Any], finished: int) -> bool:
    """Every ``eval_every`` epochs (and at the last): the held-out loss, logged; a better one is saved
    as ``checkpoints/best``. Returns whether early stopping ends the run now."""
    t, dist = run.cfg.train, run.dist
    if finished % t.eval_every and finished != t.epochs:
        return False
    evals = {"test": evaluate_loss(run.model, run.test_data, run.cfg, dist.device)}
    if run.valid_data is not None:
        evals["valid"] = evaluate_loss(run.model, run.valid_data, run.cfg, dist.device)
    for split, terms in evals.items():
        run.log.write(state["step"], finished, split, terms)
    score = evals["valid" if run.valid_data is not None else "test"]["loss"]
    if score < state["best"]:
        state.update(best=score, bad_evals=0, best_epoch=finished)
        if dist.is_main:
            with writing(out_dir):
                run.model.save_pretrained(out_dir / "checkpoints" / "best")
    else:
        state["bad_evals"] += 1
    patience = t.early_stopping_patience
    stop_early = patience is not None and state["bad_evals"] >= patience
    # rank 0 decides (its checkpoints are the run's): ranks' noise and BatchNorm statistics differ,
    # and a rank that stopped alone would leave the others waiting forever
    return broadcast_from_main(stop_early)


def _save_checkpoint(run: _Session, out_dir: Path, state: dict[str, Any]) -> None:
    """``checkpoints/last``: weights, optimizer, scheduler, RNG and ``state`` (rank 0 writes)."""
    if run.dist.is_main:
        with writing(out_dir):
            last = out_dir / "checkpoints" / "last"
            save_training_checkpoint(last, run.model, run.optimizer, run.scheduler, state)
