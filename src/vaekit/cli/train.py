"""``vaekit train``: train a config into a run directory, then write its numbers and pictures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (default: conv VAE on mnist5k)")
    p.add_argument(
        "config", nargs="?", help="YAML config file (see configs/); default: the built-in main job"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=1e-3 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>, never reusing one)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out directory")
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        metavar="N",
        help="stop (with a checkpoint) after N epochs of this invocation; --resume continues",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run_command=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from vaekit.checkpoint import writing
    from vaekit.config import save_config
    from vaekit.distributed import cleanup_distributed, setup_distributed
    from vaekit.runs import clear_run_dir, config_for, finalize_run, shared_run_dir
    from vaekit.train import train

    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise VaekitError(f"--stop-after-epochs must be at least 1, got {args.stop_after_epochs}")
    cfg = config_for(args.config, args.overrides, args.resume, args.out, args.force)
    dist = setup_distributed(cfg.train.device)
    if args.resume:
        run_dir = Path(args.resume)
    else:
        run_dir = shared_run_dir(args.config, args.out, args.force, dist.is_main)

    def on_start() -> None:  # the data and model are ready: nothing has failed on bad input so far
        if dist.is_main:
            if args.force:  # only now: a new config that fails to start leaves the old run whole
                clear_run_dir(run_dir)
            print(f"vaekit: training {cfg.model.name} on {cfg.data.name} into {run_dir}", file=sys.stderr)
            if args.resume and args.overrides:  # the run directory describes what it ran
                with writing(run_dir):
                    save_config(cfg, run_dir / "config.yaml")

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
        if dist.is_main and finished:
            metrics = finalize_run(run_dir, cfg, progress, dist.device)
            _print_summary(metrics, run_dir)
        elif dist.is_main:
            print(
                f"vaekit: stopped after epoch {progress['epoch']}; continue with "
                f"`vaekit train --resume {run_dir}`",
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
