"""The data feed of the default training job: the share of each step spent waiting for the next batch.

``vaekit train`` with no config trains ``configs/default.yaml``'s ``VanillaVAE`` on the bundled
MNIST digits. This builds the session the trainer builds (:func:`vaekit.train._setup`: the same
loader, model, fused Adam and schedule) and runs the trainer's own step function in the trainer's
order — take the next batch, then step — timing the two parts of every step separately::

    python benchmarks/cmp_data_feed.py [--quick]

``data_feed_fraction`` is the time in ``next(batches)`` (and the copy to the device) over the whole
step's time, summed over the steps timed. The first batch of each epoch includes the epoch's
permutation, and on a busy machine
the wait for the thread pool to wake after set-up; it is counted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import machine, profile_top_ops, show_comparison

from vaekit import train as trainer
from vaekit.config import load_config


def measure(quick: bool) -> dict[str, Any]:
    """Time the default job's data feed and training steps: the first 10 steps (quick), else two
    epochs of 35 steps (the bundled 4,500 training digits in batches of 128)."""
    cfg = load_config(None)  # the built-in defaults: configs/default.yaml
    run = trainer._setup(cfg)
    run.forward = run.model
    device = run.dist.device
    epochs, max_steps = (1, 10) if quick else (2, None)
    feed, step_times, images = [], [], 0
    step = 0
    run.model.train()
    for epoch in range(epochs):
        run.loader.set_epoch(epoch)
        batches = iter(run.loader)
        while max_steps is None or step < max_steps:
            start = time.perf_counter()
            try:
                x, labels = next(batches)
            except StopIteration:
                break
            x = x.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True) if labels is not None else None
            fetched = time.perf_counter()
            step += 1
            trainer._train_step(run, x, labels, trainer.kl_weight(cfg.train, step), step, epoch + 1)
            done = time.perf_counter()
            feed.append(fetched - start)
            step_times.append(done - fetched)
            images += len(x)
    total_feed, total_step = sum(feed), sum(step_times)
    fraction = total_feed / (total_feed + total_step)
    row = {
        "job": f"default: {cfg.model.name} {list(cfg.model.params['hidden_dims'])}, {cfg.data.name}, "
        f"batch {cfg.train.batch_size}",
        "steps": len(feed),
        "median_feed_ms": statistics.median(feed) * 1000,
        "max_feed_ms": max(feed) * 1000,
        "median_step_ms": statistics.median(step_times) * 1000,
        "images_per_s": images / (total_feed + total_step),
        "data_feed_fraction": fraction,
    }
    result = {
        "title": "Data feed of the default training job (`vaekit train`)",
        "fair": "the trainer's own session (_setup) and step function, in the trainer's order "
        "(next batch, then step), every step timed in its two parts; same process, same threads",
        "columns": list(row),
        "rows": [row],
        "metrics": {
            "data_feed_fraction": fraction,
            "median_feed_ms": row["median_feed_ms"],
            "median_step_ms": row["median_step_ms"],
            "steps": len(feed),
        },
        "machine": machine(),
    }
    if not quick:  # where a step's time goes: the trainer's step on the loader's next batches
        batches = iter(run.loader)

        def one_step() -> None:
            x, labels = next(batches)
            trainer._train_step(run, x.to(device), labels, trainer.kl_weight(cfg.train, step), step, epochs)

        result["profile"] = profile_top_ops({"default job, one training step": one_step}, repeats=3, rows=10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    result = measure(parser.parse_args().quick)
    show_comparison("data_feed", result)
    print({key: round(value, 5) for key, value in result["metrics"].items()})


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
