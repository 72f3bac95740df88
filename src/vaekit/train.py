"""The training loop: a plain function, from a config to a run directory of weights and numbers.

One process, or several under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA; the data are sharded
across ranks and only rank 0 writes). Checkpoints are taken at the end of every epoch, every
``train.checkpoint_every_steps`` steps and on SIGINT/SIGTERM; they hold the weights, optimizer,
scheduler, RNG state and the batches done in the current epoch, so ``resume=True`` continues
exactly where the checkpoint left off — mid-epoch included, to the same bits on a CPU.

Every step checks that the loss terms and the gradient norm are finite before the optimizer
applies it (:class:`~vaekit.errors.DivergenceError` otherwise), and no checkpoint is written from
non-finite weights: a run that diverges stops with its last checkpoint intact.

The loop knows nothing of model families: it calls ``model(x)`` and
``model.loss_function(*outputs, beta=β)`` (the contract of :class:`vaekit.models.Model`) and
logs every term that returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaekit.checkpoint import (
    load_training_checkpoint,
    save_model_checkpoint,
    save_training_checkpoint,
    writing,
)
from vaekit.config import Config, TrainConfig, save_config
from vaekit.data import ImageData, load_split, make_loader
from vaekit.distributed import DistInfo, broadcast_from_main, mean_over_ranks, setup_distributed
from vaekit.errors import ConfigError, DivergenceError, VaekitError
from vaekit.evaluate import evaluate_loss
from vaekit.metrics_log import MetricsLog
from vaekit.models import Model, build_model
from vaekit.progress import StepBar, StopRequest


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


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware (not emulated), and what says so.

    CUDA: compute capability 8.0 or newer (``torch.cuda.is_bf16_supported`` without emulation). CPU:
    the AVX512-BF16 or AMX-BF16 instructions, from ``torch.cpu.get_capabilities()`` (or the kernel's
    flags in ``/proc/cpuinfo`` where torch does not report them). Anything else: no.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name(device)} {'has' if ok else 'lacks'} bf16 tensor cores"
    if device.type != "cpu":
        return False, f"bf16 support on {device.type} is not checked"
    flags = _cpu_flags()
    names = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
    found = [name for flag, name in names.items() if flag in flags]
    if found:
        return True, f"CPU has {' and '.join(found)}"
    return False, "CPU has no AVX512-BF16 or AMX-BF16"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags that are set, as torch reports them, else from /proc/cpuinfo."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        return {name for name, value in get_capabilities().items() if value is True}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def has_2d_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has 2-d convolutions: the layers whose speed depends on the memory format."""
    return any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules())


def resolve_speed_settings(t: TrainConfig, device: torch.device, model: nn.Module) -> tuple[TrainConfig, str]:
    """``t`` with ``precision`` and ``memory_format`` decided (never ``auto``), and a line saying which.

    ``precision: auto`` is bf16 autocast where the device computes bf16 natively (:func:`native_bf16`),
    else fp32. ``memory_format: auto`` is channels_last for a model with 2-d convolutions on a CPU
    (oneDNN's fastest layout, fp32 and bf16: benchmarks/bench_train.py) or under bf16 on CUDA (tensor-core
    convolutions are NHWC), else contiguous. Neither changes the model or the objective: bf16 rounds
    the forward pass (the loss is computed in float32), channels_last only reorders memory. A run saves
    the decided values in its config.yaml, so a resume uses the same ones.
    """
    precision, why = t.precision, "as configured"
    if precision == "auto":
        native, why = native_bf16(device)
        precision = "bf16" if native else "fp32"
    memory_format, layout_why = t.memory_format, "as configured"
    if memory_format == "auto":
        convs = has_2d_convolutions(model)
        fast = convs and (device.type == "cpu" or (device.type == "cuda" and precision == "bf16"))
        memory_format = "channels_last" if fast else "contiguous"
        layout_why = f"{'' if convs else 'no '}conv layers on {device.type}"
    line = (
        f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'} ({why}), "
        f"memory format: {memory_format} ({layout_why})"
    )
    return dataclasses.replace(t, precision=precision, memory_format=memory_format), line


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
    memory_format: torch.memory_format = torch.contiguous_format  # of the model's weights and inputs
    settings: str = ""  # the line saying which precision and memory format this run uses
    forward: Callable[..., Any] | None = None  # the model, wrapped by DDP and/or torch.compile
    log: MetricsLog | None = None
    images_seen: int = 0  # by all ranks, in this invocation
    out_dir: Path | None = None
    stop: StopRequest | None = None  # SIGINT/SIGTERM received: checkpoint and stop
    started: float = 0.0  # perf_counter when wall_time was last brought up to date
    saved_step: int | None = None  # the step of the newest checkpoints/last
    stopped_by: str | None = None  # the name of the signal that stopped this invocation


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
    so does SIGINT or SIGTERM (at the next step; the result then has ``interrupted``: the signal's
    name). ``resume=True`` picks up from ``out_dir/checkpoints/last``. ``on_start`` is called once the
    data and model are ready, before anything is written (the command line announces the run there,
    so a bad data path fails with one line). A fresh run that fails before its first checkpoint
    removes what it wrote (and ``out_dir`` itself when it made it): there is nothing to resume.
    """
    run = _setup(cfg)
    if on_start is not None:
        on_start()
    if run.dist.is_main:
        print(f"vaekit: {run.settings}", file=sys.stderr)
    out_dir = Path(out_dir)
    run.out_dir, run.stop = out_dir, StopRequest()
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
        stack.enter_context(run.stop.installed())
        start_epoch = state["epoch"]
        end_epoch = start_epoch if state.get("stopped_early") else cfg.train.epochs
        run.started = time.perf_counter()
        for epoch in range(start_epoch, end_epoch):
            if not _train_epoch(run, epoch, state, progress):
                break  # interrupted mid-epoch: checkpointed there
            stop_early = _evaluate_and_select(run, out_dir, state, finished=epoch + 1)
            state.update(epoch=epoch + 1, batches_done=0, stopped_early=stop_early)
            _save_checkpoint(run, out_dir, state)
            stopping = stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs
            # rank 0 decides: a signal that came during the evaluation reached the ranks at other times
            if broadcast_from_main(run.stop.signal is not None):
                run.stopped_by = run.stop.signal.name if run.stop.signal is not None else "a signal"
                break
            if stop_early or stopping:
                break
    run.dist.barrier()
    selection = "valid" if run.valid_data is not None else "test"
    result = state | {"images_seen_this_run": run.images_seen, "selection_split": selection}
    result |= {"precision": run.cfg.train.precision, "memory_format": run.cfg.train.memory_format}
    if run.stopped_by is not None:
        result["interrupted"] = run.stopped_by
    return result


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
    try:
        model = build_model(cfg.model.name, cfg.model.params, train_data.shape).to(dist.device)
    except VaekitError:
        raise
    except ValueError as err:  # a constructor refusing its arguments: they came from the config
        raise ConfigError(f"model: {err} (data shape {list(train_data.shape)})") from None
    if dist.world_size > 1 and t.batch_size % dist.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must divide by the {dist.world_size} processes")
    t, settings = resolve_speed_settings(t, dist.device, model)  # saved in config.yaml: a resume keeps them
    cfg = dataclasses.replace(cfg, train=t)
    memory_format = torch.channels_last if t.memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loader = make_loader(
        train_data,
        t.batch_size // dist.world_size,
        model.input_kind,
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
    session = _Session(cfg, dist, model, loader, optimizer, scheduler, test_data, valid_data, total_steps)
    session.memory_format, session.settings = memory_format, settings
    return session


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
        _state_in_parameter_layout(run.optimizer)
        run.saved_step = state["step"]
        if run.dist.is_main:  # only now: `--set` on a resume that does not fit leaves config.yaml as it was
            with writing(out_dir):
                save_config(run.cfg, out_dir / "config.yaml")
        # the checkpoint's schedule has the old train.lr in it: a `--set train.lr=…` on resume (say,
        # after a divergence) takes effect from here (the same numbers when it did not change)
        t, factor = run.cfg.train, lr_factor(run.cfg.train, run.total_steps)
        run.scheduler.base_lrs = [t.lr for _ in run.optimizer.param_groups]
        for group in run.optimizer.param_groups:
            group["initial_lr"], group["lr"] = t.lr, t.lr * factor(run.scheduler.last_epoch)
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


def _state_in_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Put each optimizer state tensor shaped like its parameter into the parameter's memory layout.

    A checkpoint stores tensors contiguous, while a channels-last model's weights are not; torch's
    fused Adam on a CPU (2.13) walks parameter, gradient and moments as flat memory, so mismatched
    layouts would pair each weight with another weight's moments. Autograd already gives gradients
    the parameter's layout.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _train_epoch(run: _Session, epoch: int, state: dict[str, Any], progress: bool) -> bool:
    """One pass over this rank's share of the training split (the rest of it, for a run resumed
    mid-epoch), logging every ``log_every`` steps and checkpointing every ``checkpoint_every_steps``.
    Returns False when a signal stopped it before the end (after a checkpoint)."""
    t, dist = run.cfg.train, run.dist
    run.model.train()
    if dist.rank > 0:  # own reparameterization noise per rank (rank 0's state is in the checkpoint;
        # the others are re-derived each epoch, so a resumed DDP run draws the same numbers)
        seeds = np.random.SeedSequence([t.seed, epoch, dist.rank])
        torch.manual_seed(int(seeds.generate_state(1)[0]))
    state.setdefault("batches_done", 0)  # checkpoints of vaekit <= 0.2 were taken at epoch ends only
    run.loader.set_epoch(epoch, start_batch=state["batches_done"])
    label, enabled = f"epoch {epoch + 1}/{t.epochs}", progress and dist.is_main
    bar = StepBar(run.loader, label, state["step"], run.images_seen, enabled, dist.device.type)
    window_start, window_images = time.perf_counter(), 0
    for x, labels in bar:
        x = x.to(dist.device, non_blocking=True)
        if x.dim() == 4:  # images (a prior's code maps are [B, H, W])
            x = x.contiguous(memory_format=run.memory_format)
        labels = labels.to(dist.device, non_blocking=True) if labels is not None else None
        beta = kl_weight(t, state["step"])
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it after)
        terms, stop = _train_step(run, x, labels, beta, state["step"] + 1, epoch + 1)
        state["step"] += 1
        state["batches_done"] += 1
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
        if state["batches_done"] == len(run.loader):
            continue  # the last batch: the epoch's end checkpoint follows its evaluation
        every = t.checkpoint_every_steps
        if stop or (every and state["step"] % every == 0):
            _save_checkpoint(run, out_dir=run.out_dir, state=state)
        if stop:
            run.stopped_by = run.stop.signal.name if run.stop.signal is not None else "a signal"
            bar.bar.close()
            return False
    return True


def _train_step(
    run: _Session, x: torch.Tensor, labels: torch.Tensor | None, beta: float, step: int, epoch: int
) -> tuple[dict[str, torch.Tensor], bool]:
    """Forward, the model's objective, backward, clipping and one optimizer and scheduler step;
    returns the loss terms and whether a signal asks to stop (all ranks agree on it).
    ``labels`` go to every model: a class-conditional one uses them, the others ignore them.

    Before the optimizer applies anything, every term and the gradient norm must be finite: one
    host sync per step (and, under DDP, one all-reduce of a few numbers, so that all ranks stop
    together); otherwise :class:`DivergenceError` names ``step`` and the terms."""
    t = run.cfg.train
    with _autocast(run.dist.device, t.precision):
        outputs = run.forward(x, labels=labels)
    terms = run.model.loss_function(*outputs, beta=beta)  # in float32, whatever the autocast
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    params = [p for p in run.model.parameters() if p.grad is not None]
    if t.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)  # the norm before clipping
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    checks = [v.detach().isfinite().all() for v in terms.values()] + [grad_norm.isfinite()]
    bad = torch.stack(checks).logical_not().float()  # [terms + 1]: 1 where non-finite
    stop = torch.tensor([float(run.stop is not None and run.stop.signal is not None)], device=bad.device)
    flags = torch.cat([bad, stop])
    if run.dist.world_size > 1:
        flags = mean_over_ranks(flags)  # > 0 where any rank saw it
    flags = flags.tolist()  # the host sync
    if any(flags[:-1]):
        names = [*terms, "gradient norm"]
        values = [*(v.detach().float() for v in terms.values()), grad_norm.detach().float()]
        raise _diverged(run, step, epoch, names, values, flags[:-1])
    run.optimizer.step()
    run.scheduler.step()
    return terms, bool(flags[-1])


def _diverged(
    run: _Session, step: int, epoch: int, names: list[str], values: list[torch.Tensor], flags: list[float]
) -> DivergenceError:
    """The message of a step whose loss terms or gradient went non-finite."""
    t = run.cfg.train
    found = []
    for name, value, flag in zip(names, values, flags, strict=True):
        if flag:
            kind = "nan" if value.isnan().any() else "inf"
            found.append(f"{name}={kind}" if value.numel() == 1 else f"{name} has {kind}")
    kept = (
        f"checkpoints/last (step {run.saved_step}) is kept as it was"
        if run.saved_step is not None
        else "no checkpoint had been written yet"
    )
    cause = f"a learning rate too high for this model (train.lr={t.lr:g}): lower it"
    if t.grad_clip is None:
        cause += " or set train.grad_clip"
    if t.precision == "bf16":
        cause += "; or bf16 overflow: try train.precision=fp32"
    cause += "; or NaN/inf in the data"
    if step == 1:  # no update has been applied: the learning rate cannot be the cause
        cause = "NaN/inf in the data, or a model that computes them (this was the first step, "
        cause += "before any update)"
    return DivergenceError(
        f"training diverged at step {step} (epoch {epoch}): {', '.join(found)}; the step was not "
        f"applied and {kept}. Likely cause: {cause}"
    )


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
            _check_finite(run, "checkpoints/best")
            with writing(out_dir):
                save_model_checkpoint(out_dir / "checkpoints" / "best", run.model)
    else:
        state["bad_evals"] += 1
    patience = t.early_stopping_patience
    stop_early = patience is not None and state["bad_evals"] >= patience
    # rank 0 decides (its checkpoints are the run's): ranks' noise and BatchNorm statistics differ,
    # and a rank that stopped alone would leave the others waiting forever
    return broadcast_from_main(stop_early)


def _check_finite(run: _Session, what: str) -> None:
    """Refuse to save non-finite weights (one host sync): they would replace a good checkpoint."""
    finite = torch.stack([p.detach().isfinite().all() for p in run.model.parameters()])
    if not bool(finite.all()):
        names = [n for n, p in run.model.named_parameters() if not p.detach().isfinite().all()]
        raise DivergenceError(
            f"the weights went non-finite ({', '.join(names[:3])}{'…' if len(names) > 3 else ''}); not "
            f"writing {what} over the last good one. Likely cause: a learning rate too high for this "
            f"model (train.lr={run.cfg.train.lr:g}), or NaN/inf in the data"
        )


def _save_checkpoint(run: _Session, out_dir: Path, state: dict[str, Any]) -> None:
    """``checkpoints/last``: weights, optimizer, scheduler, RNG and ``state`` (rank 0 writes)."""
    now = time.perf_counter()
    state["wall_time"] += now - run.started
    run.started = now
    if run.dist.is_main:
        _check_finite(run, "checkpoints/last")
        with writing(out_dir):
            last = out_dir / "checkpoints" / "last"
            save_training_checkpoint(last, run.model, run.optimizer, run.scheduler, state)
    run.saved_step = state["step"]
