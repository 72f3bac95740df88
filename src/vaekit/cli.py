"""The ``vaekit`` command line: a thin layer over train, runs, visualize and data.

A :class:`~vaekit.errors.VaekitError` (bad path, unknown key, corrupt file…) is printed as one
line and the command exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError
from vaekit.evaluate import add_evaluate_parser, cmd_evaluate

EXIT_USER_ERROR = 2
DEBUG_HELP = "show tracebacks for user errors"


def _positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (``-n 0`` or ``-n -1`` is refused, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `vaekit train` (e.g. runs/default)")
    p.add_argument(
        "--checkpoint", choices=["best", "last"], default="best", help="which weights (default: best)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaekit", description="Train, sample and inspect VAEs and VQ-VAEs.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("sample", help="draw images from the prior of a trained VAE")
    _add_run(p)
    p.add_argument("-n", "--num", type=_positive_int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", default="samples.png", help="PNG file (default samples.png)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("reconstruct", help="originals beside their reconstructions")
    _add_run(p)
    p.add_argument("-n", "--num", type=_positive_int, default=32)
    p.add_argument("--split", default=None, help="data split (default: the config's test split)")
    p.add_argument("-o", "--output", default="reconstructions.png")

    p = sub.add_parser("interpolate", help="decode straight lines between the latents of test images")
    _add_run(p)
    p.add_argument("--pairs", type=_positive_int, default=8)
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--split", default=None)
    p.add_argument("-o", "--output", default="interpolation.png")

    p = sub.add_parser("encode", help="write latents (μ, log σ², or code indices) and labels to .npz")
    _add_run(p)
    p.add_argument("--split", default="test")
    p.add_argument("-o", "--output", required=True, help="output .npz file")
    p.add_argument("--batch-size", type=_positive_int, default=256)

    add_evaluate_parser(sub)
    sub.add_parser("datasets", help="list the data sources and where their files were found")
    for command in sub.choices.values():  # `vaekit train --debug` as well as `vaekit --debug train`
        # SUPPRESS: when it is not given after the command, the value before it stands
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from vaekit.checkpoint import writing
    from vaekit.config import load_config, save_config
    from vaekit.distributed import broadcast_from_main, cleanup_distributed, setup_distributed
    from vaekit.runs import choose_run_dir, clear_run_dir, finalize_run
    from vaekit.train import train

    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise VaekitError(f"--stop-after-epochs must be at least 1, got {args.stop_after_epochs}")
    if args.resume:
        run_dir = Path(args.resume)
        if args.config or args.out or args.force:
            raise VaekitError(
                "--resume continues a run with its own config.yaml in its own directory; "
                "drop the CONFIG / --out / --force arguments (--set still applies)"
            )
        if not (run_dir / "config.yaml").is_file():
            raise VaekitError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
        model_keys = [o for o in args.overrides if o.strip().startswith("model.")]
        if model_keys:
            raise VaekitError(f"cannot change the model of a run on --resume: {', '.join(model_keys)}")
        cfg = load_config(run_dir / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    dist = setup_distributed(cfg.train.device)
    if not args.resume:
        chosen: Path | VaekitError | None = None
        if dist.is_main:
            try:
                chosen = choose_run_dir(args.config, args.out, args.force)
            except VaekitError as err:  # raised on every rank below: none waits for a choice
                chosen = err
        chosen = broadcast_from_main(chosen)  # every rank writes to (and reads from) rank 0's choice
        if isinstance(chosen, VaekitError):
            cleanup_distributed()
            raise chosen
        run_dir = chosen

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


def _load(args: argparse.Namespace):
    from vaekit.distributed import pick_device
    from vaekit.runs import load_run

    args.device = pick_device(args.device)  # a user error, not a traceback, when there is no such device
    return load_run(args.run, args.checkpoint, map_location=args.device)


def _split_data(cfg, split: str | None):
    from vaekit.train import load_split

    return load_split(cfg, split or cfg.data.test_split)


def cmd_sample(args: argparse.Namespace) -> None:
    from vaekit.report import save_grid
    from vaekit.visualize import sample_images

    _, model = _load(args)
    gen = torch.Generator().manual_seed(args.seed)
    print(save_grid(sample_images(model, args.num, gen), Path(args.output)))


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from vaekit.data import to_unit_range
    from vaekit.report import save_reconstructions
    from vaekit.runs import example_batch
    from vaekit.visualize import reconstruct_images

    cfg, model = _load(args)
    kind = model.likelihood.kind
    x = example_batch(_split_data(cfg, args.split), kind, args.num, torch.device(args.device))
    print(save_reconstructions(to_unit_range(x, kind).cpu(), reconstruct_images(model, x), Path(args.output)))


def cmd_interpolate(args: argparse.Namespace) -> None:
    from vaekit.report import save_interpolation
    from vaekit.runs import example_batch
    from vaekit.visualize import interpolate_images

    cfg, model = _load(args)
    x = example_batch(
        _split_data(cfg, args.split), model.likelihood.kind, 2 * args.pairs, torch.device(args.device)
    )
    pairs = len(x) // 2
    frames = interpolate_images(model, x[:pairs], x[pairs : 2 * pairs], steps=args.steps)
    print(save_interpolation(frames, Path(args.output)))


@torch.no_grad()
def cmd_encode(args: argparse.Namespace) -> None:
    from vaekit.data import make_loader
    from vaekit.models import VQVAE

    cfg, model = _load(args)
    data = _split_data(cfg, args.split)
    loader = make_loader(
        data,
        args.batch_size,
        model.likelihood.kind,
        shuffle=False,
        drop_last=False,
        seed=0,
        num_workers=cfg.data.num_workers,
    )
    parts: dict[str, list[np.ndarray]] = {}
    for x, _ in loader:
        x = x.to(args.device)
        if isinstance(model, VQVAE):
            outputs = {"indices": model.encode_indices(x)}
        else:
            mu, log_var = model.encode(x)
            outputs = {"mu": mu, "log_var": log_var}
        for key, value in outputs.items():
            parts.setdefault(key, []).append(value.cpu().numpy())
    arrays = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    if data.labels is not None:
        arrays["labels"] = data.labels.numpy()
    np.savez_compressed(args.output, **arrays)
    print(f"{args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))


def cmd_datasets(args: argparse.Namespace) -> None:
    from vaekit.data import describe_sources

    for name, status in describe_sources():
        print(f"{name:15s} {status}")


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "interpolate": cmd_interpolate,
    "encode": cmd_encode,
    "evaluate": cmd_evaluate,
    "datasets": cmd_datasets,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except VaekitError as err:
        if args.debug:
            raise
        print(f"vaekit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
