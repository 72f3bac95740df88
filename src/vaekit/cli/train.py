"""``vaekit train``: train a config into a run directory, then write its numbers and pictures."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (default: conv VAE on mnist5k)")
    p.add_argument(
        "config", nargs="?", help="YAML config file (see configs/); default: the built-in main job"
    )
    _add_overrides(p, "e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<config name>, never reusing one)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out directory")
    _add_stopping(p)
    p.set_defaults(run_command=cmd_train)

    p = sub.add_parser(
        "train-prior", help="train a prior over the codes of a VQ-VAE run, so that it samples (RUN/prior/)"
    )
    p.add_argument("run", metavar="RUN", help="a VQ-VAE run directory written by `vaekit train`")
    p.add_argument(
        "config", nargs="?", help="YAML config of the prior (see configs/); default: a gated PixelCNN"
    )
    _add_overrides(p, "e.g. --set model.num_layers=8 (data.* come from the run)")
    p.add_argument("--resume", action="store_true", help="continue RUN/prior from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing RUN/prior")
    _add_stopping(p)
    p.set_defaults(run_command=cmd_train_prior)


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, {example}",
    )


def _add_stopping(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        metavar="N",
        help="stop (with a checkpoint) after N epochs of this invocation; --resume continues",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_train(args: argparse.Namespace) -> int | None:
    from vaekit.distributed import setup_distributed
    from vaekit.runs import config_for, shared_run_dir

    _check_stop_after(args)
    cfg = config_for(args.config, args.overrides, args.resume, args.out, args.force)
    dist = setup_distributed(cfg.train.device)
    if args.resume:
        run_dir = Path(args.resume)
    else:
        run_dir = shared_run_dir(args.config, args.out, args.force, dist.is_main)
    return _train_and_finish(args, cfg, run_dir, dist)


def cmd_train_prior(args: argparse.Namespace) -> int | None:
    """``vaekit train-prior RUN``: the run's codes (encoded once, cached in RUN/codes/), then the
    same training as ``vaekit train`` into RUN/prior/, which a loaded run then samples with."""
    from vaekit.distributed import setup_distributed
    from vaekit.runs import PRIOR_DIR, config_for, encode_codes, prior_config, shared_run_dir

    _check_stop_after(args)
    run, prior_dir = Path(args.run), Path(args.run) / PRIOR_DIR
    if args.resume:
        if args.config or args.force:
            raise VaekitError(
                "--resume continues RUN/prior with its own config.yaml; drop CONFIG / --force "
                "(--set still applies)"
            )
        cfg = config_for(None, args.overrides, str(prior_dir), None, False)
    else:
        cfg = prior_config(run, args.config, args.overrides)
    dist = setup_distributed(cfg.train.device)
    with contextlib.ExitStack() as stack:
        # the VQ-VAE run is locked too: `vaekit train --resume RUN` would change the weights whose
        # codes the prior learns
        _lock(stack, run, dist)
        # rank 0 encodes; the others wait for it and read the same files. A resumed prior keeps the
        # codes it started on: if the VQ-VAE changed since, reading them fails and says so.
        if not args.resume:
            _on_main_first(dist, lambda: encode_codes(run, dist.device, progress=not args.no_progress))
        if not args.resume:
            prior_dir = shared_run_dir(None, str(prior_dir), args.force, dist.is_main)
        return _train_and_finish(args, cfg, prior_dir, dist)


def _lock(stack: contextlib.ExitStack, run_dir: Path, dist: Any) -> None:
    """Rank 0 takes ``run_dir``'s lock (:mod:`vaekit.locks`) into ``stack``; every rank raises if
    it could not."""
    from vaekit.locks import run_lock

    _on_main_first(dist, lambda: stack.enter_context(run_lock(run_dir)))


def _on_main_first(dist: Any, work: Callable[[], object]) -> None:
    """Rank 0 does ``work`` while the others wait; if it raised a :class:`VaekitError`, every rank
    raises it (so that none waits for a rank that stopped)."""
    from vaekit.distributed import broadcast_from_main, cleanup_distributed

    failed: VaekitError | None = None
    if dist.is_main:
        try:
            work()
        except VaekitError as err:
            failed = err
    failed = broadcast_from_main(failed)
    if failed is not None:
        cleanup_distributed()
        raise failed


def _check_stop_after(args: argparse.Namespace) -> None:
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise VaekitError(f"--stop-after-epochs must be at least 1, got {args.stop_after_epochs}")


def _train_and_finish(args: argparse.Namespace, cfg: Any, run_dir: Path, dist: Any) -> int | None:
    """Train ``cfg`` into ``run_dir`` (fresh, or ``--resume``) holding its lock, then write its numbers
    and pictures. Returns the exit status of a run stopped by SIGINT/SIGTERM (128 + the signal)."""
    with contextlib.ExitStack() as stack:
        _lock(stack, run_dir, dist)
        if dist.is_main and not args.resume and not args.force and (run_dir / "config.yaml").exists():
            raise VaekitError(  # another process made the run while this one was starting
                f"run directory {run_dir} was started by another process meanwhile; pass "
                f"--resume {run_dir} to continue it, or another --out"
            )
        return _train_locked(args, cfg, run_dir, dist)


def _train_locked(args: argparse.Namespace, cfg: Any, run_dir: Path, dist: Any) -> int | None:
    from vaekit.distributed import cleanup_distributed
    from vaekit.runs import clear_run_dir, finalize_run
    from vaekit.train import train

    def on_start() -> None:  # the data and model are ready: nothing has failed on bad input so far
        if dist.is_main:
            if args.force:  # only now: a new config that fails to start leaves the old run whole
                clear_run_dir(run_dir)
            print(f"vaekit: training {cfg.model.name} on {cfg.data.name} into {run_dir}", file=sys.stderr)

    try:
        progress = train(
            cfg,
            run_dir,
            resume=bool(args.resume),
            stop_after_epochs=args.stop_after_epochs,
            progress=not args.no_progress,
            on_start=on_start,
        )
        finished = progress["epoch"] >= cfg.train.epochs or progress.get("stopped_early")
        if progress.get("interrupted"):
            if dist.is_main:
                print(
                    f"vaekit: {progress['interrupted']}: stopped at step {progress['step']} with a "
                    f"checkpoint; continue with `{_resume_command(args, run_dir)}`",
                    file=sys.stderr,
                )
            return 128 + getattr(signal.Signals, progress["interrupted"], signal.SIGTERM).value
        if dist.is_main and finished:
            metrics = finalize_run(run_dir, cfg, progress, dist.device)
            _print_summary(metrics, run_dir)
        elif dist.is_main:
            print(
                f"vaekit: stopped after epoch {progress['epoch']}; continue with "
                f"`{_resume_command(args, run_dir)}`",
                file=sys.stderr,
            )
        # the other ranks wait for rank 0's pictures: a rank that tears its process group down and
        # exits while a peer still holds the connection can abort in gloo's threads
        dist.barrier()
    finally:
        cleanup_distributed()


def _print_summary(metrics: dict, run_dir: Path) -> None:
    test = metrics["test"]
    parts = [f"{k}={v:.4g}" for k, v in test.items()]
    print(f"test: {' '.join(parts)}")
    if "test_elbo_nats" in metrics:
        print(
            f"test ELBO {metrics['test_elbo_nats']:.2f} nats/example "
            f"(untrained: {metrics['untrained_test_elbo_nats']:.2f})"
        )
    print(
        f"{metrics['epochs']} epochs in {metrics['wall_time_s']:.1f} s "
        f"({metrics['images_per_s']:.0f} images/s)"
    )
    pictures = ", ".join(
        name
        for name in ("samples", "reconstructions", "interpolation", "curves")
        if (run_dir / f"{name}.png").is_file()
    )
    print(f"wrote {run_dir}/report.html, {pictures}, metrics.json")


def _resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    if args.command == "train-prior":
        return f"vaekit train-prior {args.run} --resume"
    return f"vaekit train --resume {run_dir}"
