"""``vaekit sample / reconstruct / interpolate / encode / datasets``: look at a trained run and the data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit.errors import VaekitError


def positive_int(text: str) -> int:
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


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sample", help="draw images from the prior of a trained model")
    _add_run(p)
    p.add_argument("-n", "--num", type=positive_int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", default="samples.png", help="PNG file (default samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, metavar="K", help="class K (a class-conditional prior); default: all")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="scale the prior's spread (below 1: safer, less varied samples; default 1)",
    )
    p.set_defaults(run_command=cmd_sample)

    p = sub.add_parser("reconstruct", help="originals beside their reconstructions")
    _add_run(p)
    p.add_argument("-n", "--num", type=positive_int, default=32)
    p.add_argument("--split", default=None, help="data split (default: the config's test split)")
    p.add_argument("-o", "--output", default="reconstructions.png")
    p.set_defaults(run_command=cmd_reconstruct)

    p = sub.add_parser("interpolate", help="decode straight lines between the latents of test images")
    _add_run(p)
    p.add_argument("--pairs", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--split", default=None)
    p.add_argument("-o", "--output", default="interpolation.png")
    p.set_defaults(run_command=cmd_interpolate)

    p = sub.add_parser("encode", help="write latents (μ, log σ², or code indices) and labels to .npz")
    _add_run(p)
    p.add_argument("--split", default="test")
    p.add_argument("-o", "--output", required=True, help="output .npz file")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.set_defaults(run_command=cmd_encode)

    p = sub.add_parser("datasets", help="list the data sources and where their files were found")
    p.set_defaults(run_command=cmd_datasets)


def _load(args: argparse.Namespace):
    from vaekit.distributed import pick_device
    from vaekit.runs import load_image_run

    args.device = pick_device(args.device)  # a user error, not a traceback, when there is no such device
    return load_image_run(args.run, args.checkpoint, map_location=args.device)


def _split_data(cfg, split: str | None):
    from vaekit.data import load_split

    return load_split(cfg.data, split or cfg.data.test_split)


def cmd_sample(args: argparse.Namespace) -> None:
    from vaekit.report import save_grid
    from vaekit.visualize import sample_images

    _, model = _load(args)
    if not args.temperature > 0:
        raise VaekitError(f"--temperature must be positive, got {args.temperature}")
    if args.label is not None and not model.num_classes:
        raise VaekitError(f"--label {args.label}: the model of {args.run} is not class-conditional")
    if args.label is not None and not 0 <= args.label < model.num_classes:
        raise VaekitError(f"--label must be in 0..{model.num_classes - 1}, got {args.label}")
    gen = torch.Generator().manual_seed(args.seed)
    images = sample_images(model, args.num, gen, labels=args.label, temperature=args.temperature)
    print(save_grid(images, Path(args.output)))


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
        for key, value in model.encode_latents(x.to(args.device)).items():
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
