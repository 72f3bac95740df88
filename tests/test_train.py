"""`vaekit train` end to end: what a run directory holds, that training helps, exact resume, DDP,
every data source, VQ-VAE, bf16, early stopping.

Runs are tiny (see conftest.TINY) and in-process; DDP needs ``torchrun`` and so a subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY, TINY_VQ, sets
from vaekit.config import Config, load_config
from vaekit.metrics_log import COLUMNS
from vaekit.train import native_bf16

PICTURES = ("samples.png", "reconstructions.png", "interpolation.png", "curves.png")


def rows(run: Path, split: str | None = None) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if split is None or r["split"] == split]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that PIL can decode completely."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def grid_size(n: int, nrow: int, side: int, padding: int = 2) -> tuple[int, int]:
    """(width, height) of report.make_grid's picture of n images of side × side."""
    cols, grid_rows = min(nrow, n), -(-n // nrow)
    return cols * (side + padding) + padding, grid_rows * (side + padding) + padding


def resolved(overrides: tuple[str, ...]) -> Config:
    """The config a conv model's run saves on this CPU: ``precision``/``memory_format: auto`` decided."""
    precision = "bf16" if native_bf16(torch.device("cpu"))[0] else "fp32"
    fast = [f"train.precision={precision}", "train.memory_format=channels_last"]
    return load_config(None, [*overrides, *fast])


def train_run(cli, out: Path, *overrides: str, extra: tuple[str, ...] = ()) -> Path:
    result = cli("train", "--out", out, "--no-progress", *extra, *sets(*overrides))
    assert result.rc == 0, result.err
    return out


# --------------------------------------------------------------------------- 1. the run directory


def test_run_directory_holds_everything(vae_run):
    run = vae_run
    assert load_config(run / "config.yaml") == resolved(TINY)

    for name in ("last", "best"):
        ckpt = run / "checkpoints" / name
        assert load_file(str(ckpt / "model.safetensors"))  # non-empty, readable
        header = json.loads((ckpt / "config.json").read_text())
        assert header["name"] == "vanilla_vae" and header["config"]["latent_dim"] == 4
    assert (run / "checkpoints/last/training_state.safetensors").is_file()
    state = json.loads((run / "checkpoints/last/training_state.json").read_text())
    assert state["progress"]["epoch"] == 1 and state["progress"]["step"] == 4500 // 256
    assert not list(run.rglob(".*tmp*")), "temporary files left behind"

    with open(run / "metrics.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    train, test = rows(run, "train"), rows(run, "test")
    assert [int(r["step"]) for r in train] == [5, 10, 15, 17]  # every log_every steps, and the last
    assert [(int(r["step"]), int(r["epoch"])) for r in test] == [(17, 1)]
    for r in train:
        for key in ("loss", "Reconstruction_Loss", "KLD", "ELBO", "lr", "beta", "images_per_s"):
            assert math.isfinite(float(r[key])), key
        assert float(r["images_per_s"]) > 0 and r["VQ_Loss"] == ""
        # the rate the step used: linear warm-up, (step)/100 of train.lr at 1-based step `step`
        assert float(r["lr"]) == pytest.approx(2e-3 * int(r["step"]) / 100)
        assert float(r["ELBO"]) == pytest.approx(-float(r["loss"]))  # β = 1
    assert float(test[0]["ELBO"]) == pytest.approx(
        -float(test[0]["Reconstruction_Loss"]) - float(test[0]["KLD"])
    )

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"train/loss", "train/lr", "test/ELBO"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 17]

    m = metrics(run)
    keys = {"train", "test", "untrained_test", "test_elbo_nats", "untrained_test_elbo_nats"}
    assert keys | {"wall_time_s", "images_per_s", "epochs", "steps", "parameters"} <= set(m)
    assert m["epochs"] == 1 and m["steps"] == 17 and m["model"] == "vanilla_vae" and m["data"] == "mnist5k"
    assert (
        m["test_elbo_nats"] == m["test"]["ELBO"]
        and m["untrained_test_elbo_nats"] == m["untrained_test"]["ELBO"]
    )
    assert all(math.isfinite(v) for part in ("train", "test") for v in m[part].values())
    assert m["wall_time_s"] > 0 and m["images_per_s"] > 0

    for name in PICTURES:
        png_size(run / name)
    assert png_size(run / "samples.png") == grid_size(64, 8, 28)  # train.num_samples = 64
    assert png_size(run / "reconstructions.png") == grid_size(64, 16, 28)  # 32 pairs, 8 per row
    assert png_size(run / "interpolation.png") == grid_size(80, 10, 28)  # 8 pairs × 10 steps

    page = (run / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert "<table>" in page and "<th>test_elbo_nats</th>" in page
    assert f"{m['test_elbo_nats']:.6g}" in page


def test_pictures_show_the_whole_test_split(vae_run):
    """Data files are often sorted by class (mnist5k's test split is): the reconstructions show test
    images spread over the whole split — every digit — not the first few classes."""
    from vaekit.data import load_split
    from vaekit.runs import load_run

    cfg, _ = load_run(vae_run)
    data = load_split(cfg.data, "test")
    spread = torch.linspace(0, len(data) - 1, 64).long()  # the 64 test images finalize_run picks
    shown = spread[torch.linspace(0, 63, 32).long()]
    with Image.open(vae_run / "reconstructions.png") as im:
        grid = np.array(im.convert("L"))
    for i, index in enumerate(shown.tolist()):  # originals sit in the even columns of 8 pairs per row
        top, left = 2 + (i // 8) * 30, 2 + 2 * (i % 8) * 30
        assert np.array_equal(grid[top : top + 28, left : left + 28], data.images[index, 0].numpy()), i
    assert len(set(data.labels[shown].tolist())) == 10


def test_summary_printed_and_run_announced(tmp_path, cli):
    result = cli("train", "--out", tmp_path / "r", "--no-progress", *sets(*TINY, "train.batch_size=512"))
    assert result.rc == 0
    assert result.err.splitlines()[0] == f"vaekit: training vanilla_vae on mnist5k into {tmp_path / 'r'}"
    m = metrics(tmp_path / "r")
    assert f"test ELBO {m['test_elbo_nats']:.2f} nats/example" in result.out
    assert "1 epochs in" in result.out and "report.html" in result.out


# --------------------------------------------------------------------------- 2. training helps


def test_default_job_beats_untrained_model_by_far(tmp_path, cli):
    """The main job's promise, short: one epoch (35 steps, still in the learning-rate warm-up) of the
    default conv VAE gains > 150 nats of test ELBO (measured: -540 untrained, -279 after one epoch,
    -144 after two; two epochs take over 20 s on a loaded two-core machine)."""
    m = metrics(train_run(cli, tmp_path / "default", "train.epochs=1"))
    assert m["test_elbo_nats"] - m["untrained_test_elbo_nats"] > 150
    assert m["test"]["KLD"] > 1  # the latent is used, not collapsed to the prior


@pytest.mark.slow
def test_default_job_full_length(tmp_path, cli):
    """`vaekit train` exactly as shipped (20 epochs, about 2.5 minutes on one CPU thread). Measured:
    test ELBO -107.0 nats (train -101.0; untrained -540.1); the bounds leave 8-9 nats for other
    platforms' rounding."""
    result = cli("train", "--out", tmp_path / "default", "--no-progress")
    assert result.rc == 0
    m = metrics(tmp_path / "default")
    assert m["epochs"] == 20
    assert m["test_elbo_nats"] > -115 and m["untrained_test_elbo_nats"] < -500
    assert m["train"]["ELBO"] > -110


def test_evaluation_is_repeatable_and_leaves_training_noise_alone(vae_run):
    """The held-out numbers are a function of the weights: the last row of metrics.csv (in-memory
    model after the last epoch) and metrics.json (the last checkpoint, reloaded) agree exactly, and
    evaluating draws nothing from the random stream that training uses."""
    from vaekit.data import load_split
    from vaekit.evaluate import evaluate_loss
    from vaekit.runs import load_run

    m = metrics(vae_run)
    last_row = rows(vae_run, "test")[-1]
    assert m["checkpoint"] == "last"
    assert {k: float(last_row[k]) for k in m["test"]} == m["test"]

    cfg, model = load_run(vae_run, "last")
    if m["memory_format"] == "channels_last":  # the run's layout: another one may round differently
        model = model.to(memory_format=torch.channels_last)
    data = load_split(cfg.data, "test")
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    first = evaluate_loss(model, data, cfg, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected_draw)
    assert evaluate_loss(model, data, cfg, torch.device("cpu")) == first == m["test"]


# --------------------------------------------------------------------------- 3. exact resume


def _without_rate(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows(run)]


def _tensors_equal(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a.name}: {different}"


def test_resume_equals_uninterrupted_run_bitwise(tmp_path, cli):
    """Reparameterization noise and dynamic binarization make every step random; stopping after
    epoch 1 and resuming must still give the very same weights, optimizer state and log."""
    config = (*TINY, "train.epochs=2", "data.binarize=true")
    a = train_run(cli, tmp_path / "a", *config)
    b = train_run(cli, tmp_path / "b", *config, extra=("--stop-after-epochs", "1"))
    assert not (b / "metrics.json").exists()
    assert [int(r["epoch"]) for r in rows(b)][-1] == 1
    # a preemption in epoch 2 would have left rows after the checkpoint: they must not survive
    with open(b / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow([20, 2, "train", 999.0])

    result = cli("train", "--resume", b, "--no-progress")
    assert result.rc == 0, result.err
    for name in ("model.safetensors", "training_state.safetensors"):
        _tensors_equal(a / "checkpoints/last" / name, b / "checkpoints/last" / name)
    _tensors_equal(a / "checkpoints/best/model.safetensors", b / "checkpoints/best/model.safetensors")
    state_a, state_b = (json.loads((r / "checkpoints/last/training_state.json").read_text()) for r in (a, b))
    assert state_a["optimizer"] == state_b["optimizer"] and state_a["scheduler"] == state_b["scheduler"]
    for key in ("epoch", "step", "best", "bad_evals", "initial_test"):
        assert state_a["progress"][key] == state_b["progress"][key], key
    assert _without_rate(a) == _without_rate(b)
    assert metrics(a)["test"] == metrics(b)["test"]


def test_early_stopping_finishes_the_run(tmp_path, cli):
    """With a learning rate too small to help, the held-out loss stops improving after epoch 1;
    patience 1 ends the run at epoch 2 with its report (and a resume does not train further)."""
    config = (
        *TINY,
        "train.epochs=4",
        "train.lr=1e-6",
        "train.warmup_steps=0",
        "train.early_stopping_patience=1",
    )
    run = tmp_path / "es"
    result = cli("train", "--out", run, "--no-progress", *sets(*config))
    assert result.rc == 0 and "continue with" not in result.err
    assert metrics(run)["epochs"] == 2 and (run / "report.html").is_file()
    before = rows(run)
    assert cli("train", "--resume", run, "--no-progress").rc == 0
    assert rows(run) == before and metrics(run)["epochs"] == 2


# --------------------------------------------------------------------------- 4. DDP


DDP_CONFIG = (
    "model.name=mlp_vae",  # no BatchNorm: ranks' models stay identical
    "model.hidden_dims=[64]",
    "model.latent_dim=8",
    "train.epochs=1",
    "train.batch_size=64",  # global: 32 per rank
    "train.log_every=5",
    "data.num_workers=0",
)


def test_ddp_two_processes_match_one(tmp_path, cli):
    """`torchrun --nproc_per_node=2` (gloo) against one process, same config (70 steps of 64).

    Rank r takes every 2nd example of the shared permutation from r on, so the two ranks' i-th
    batches together are the single process's i-th batch (tests/test_data.py checks this), the
    initial weights are the same (same seed; DDP broadcasts rank 0's) and the logged train row is
    the mean over both ranks. What differs is the reparameterization noise (each rank draws its
    own) and summation order. Measured: the noise alone (6 single-process runs with other noise
    seeds) moves rows by up to 2.5 % (mean |rel. diff| ≤ 0.6 %); DDP vs one process: max 1.2 %,
    mean 0.4 %. Tolerances: 4 % per row, 1.5 % on average.
    """
    single = train_run(cli, tmp_path / "single", *DDP_CONFIG)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "vaekit", "train", "--out", str(ddp), "--no-progress", *sets(*DDP_CONFIG)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test ELBO" in proc.stdout and proc.stdout.count("test ELBO") == 1  # rank 0 reports

    # only rank 0 wrote: the same files as one process, one events file, each row once
    listing = lambda run: sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if "tensorboard" not in p.parts
    )
    assert listing(ddp) == listing(single)
    assert len(list((ddp / "tensorboard").iterdir())) == 1
    steps = [(r["step"], r["split"]) for r in rows(ddp)]
    assert len(steps) == len(set(steps))

    one, two = rows(single, "train"), rows(ddp, "train")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [str(s) for s in [*range(5, 71, 5)]]
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    rel = np.array([float(b["loss"]) / float(a["loss"]) - 1 for a, b in zip(one, two, strict=True)])
    assert np.abs(rel).max() < 0.04 and np.abs(rel).mean() < 0.015, rel
    assert float(two[0]["loss"]) - float(two[-1]["loss"]) > 200  # it learned (≈ 548 → 250)
    m1, m2 = metrics(single), metrics(ddp)
    assert m2["epochs"] == 1 and m2["steps"] == m1["steps"] == 4500 // 64
    assert m2["test_elbo_nats"] == pytest.approx(m1["test_elbo_nats"], rel=0.03)
    assert m2["untrained_test_elbo_nats"] == pytest.approx(m1["untrained_test_elbo_nats"], abs=1e-3)


def _write_gray_folder(root: Path) -> None:
    """``train/`` (448) and ``test/`` (64) constant 8×8 gray images, intensities spread over 0..255."""
    for split, n in (("train", 448), ("test", 64)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            value = round(255 * i / (n - 1))
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(root / split / f"{i:03d}.png")


def test_ddp_ranks_together_take_the_single_process_batches(tmp_path, cli, monkeypatch):
    """Step by step over three epochs (7 steps of 64 each, a row per step), two ranks train like one
    process: together they take its batches, and rank 1's noise is re-derived every epoch.

    On MNIST a step's loss cannot show *which* images made the batch (64 digits cost about what any
    64 digits cost: a wrong shuffle moves rows no more than the noise does), so these data make it
    show: constant gray images under a Gaussian decoder, where an image's loss grows with its
    distance from the decoder's mean and a batch's loss depends on the intensities in it. Measured
    on this config: the reparameterization noise alone (3 single-process runs with other noise
    seeds) moves rows by up to 4.6 % (mean |rel. diff| ≤ 1.8 %); DDP vs one process: max 4.0 %,
    mean 1.6 %; one process with another shuffle (the wrong batches): 30–47 % at worst, 9–12 % on
    average. Tolerances: 10 % per row, 4 % on average; the last lines check that they catch the
    wrong batches.
    """
    _write_gray_folder(tmp_path / "gray")
    config = (
        "model.name=mlp_vae",
        "model.hidden_dims=[64]",
        "model.latent_dim=8",
        "model.likelihood=gaussian",
        "data.name=folder",
        f"data.path={tmp_path / 'gray'}",
        "data.image_size=8",
        "data.channels=1",
        "data.num_workers=0",
        "train.epochs=3",
        "train.batch_size=64",  # global: 32 per rank
        "train.log_every=1",
    )
    single = train_run(cli, tmp_path / "single", *config)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "vaekit", "train", "--out", str(ddp), "--no-progress", *sets(*config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # both ranks finished
    assert proc.stdout.count("test ELBO") == 1  # rank 0 reports, once
    listing = lambda run: sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if "tensorboard" not in p.parts
    )
    assert listing(ddp) == listing(single)  # only rank 0 wrote

    one, two = rows(single, "train"), rows(ddp, "train")
    assert [int(r["step"]) for r in two] == [int(r["step"]) for r in one] == list(range(1, 22))
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == [str(1 + i // 7) for i in range(21)]
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    loss = lambda rs: np.array([float(r["loss"]) for r in rs])
    rel = loss(two) / loss(one) - 1
    assert np.abs(rel).max() < 0.10 and np.abs(rel).mean() < 0.04, rel
    m1, m2 = metrics(single), metrics(ddp)
    assert m2["untrained_test_elbo_nats"] == pytest.approx(m1["untrained_test_elbo_nats"], rel=1e-6)
    assert m2["test_elbo_nats"] == pytest.approx(m1["test_elbo_nats"], rel=0.05)

    # rank 0's user error (the run directory exists now) ends every rank with it, none waits for rank 0
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode != 0 and "[rank1]" not in again.stderr, again.stderr[-3000:]
    assert again.stderr.count(f"vaekit: error: run directory {ddp} already exists") == 2

    # the same process with the wrong batches (another shuffle) is far outside those tolerances
    import vaekit.train as train_module

    make_loader = train_module.make_loader

    def reshuffled(*args, **kwargs):
        if kwargs.get("shuffle"):
            kwargs["seed"] += 100
        return make_loader(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_loader", reshuffled)
    wrong = loss(rows(train_run(cli, tmp_path / "wrong", *config), "train")) / loss(one) - 1
    assert np.abs(wrong).max() > 0.10 and np.abs(wrong).mean() > 0.04, wrong


# --------------------------------------------------------------------------- 5. data sources


def _write_folder(root: Path, n: int = 40) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(12, 48)), int(rng.integers(12, 48))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(sub / f"{i}.{'png' if i % 3 else 'jpg'}")


def test_folder_source(tmp_path, cli):
    _write_folder(tmp_path / "images")
    run = train_run(
        cli,
        tmp_path / "run",
        *TINY,
        "data.name=folder",
        f"data.path={tmp_path / 'images'}",
        "data.image_size=16",
        "train.batch_size=8",
        "data.num_workers=2",  # the real path: a DataLoader with worker processes
    )
    header = json.loads((run / "checkpoints/last/config.json").read_text())["config"]
    assert header["in_channels"] == 3 and header["image_size"] == [16, 16]
    m = metrics(run)
    assert m["data"] == "folder" and math.isfinite(m["test_elbo_nats"])
    assert png_size(run / "samples.png") == grid_size(64, 8, 16)
    assert rows(run, "test")


def _write_cifar(root: Path, per_batch: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_source(tmp_path, cli):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    run = train_run(
        cli, tmp_path / "run", *TINY, "data.name=cifar10", f"data.path={tmp_path}", "train.batch_size=25"
    )
    header = json.loads((run / "checkpoints/last/config.json").read_text())["config"]
    assert header["in_channels"] == 3 and header["image_size"] == [32, 32]
    m = metrics(run)
    assert m["data"] == "cifar10" and m["steps"] == 100 // 25
    assert math.isfinite(m["test_elbo_nats"])
    out = tmp_path / "codes.npz"
    assert cli("encode", run, "-o", out).rc == 0
    with np.load(out) as z:
        assert z["mu"].shape == (20, 4) and z["labels"].shape == (20,)


def test_fashion_mnist_source(tmp_path, cli):
    from vaekit.data import idx
    from vaekit.errors import DataError

    try:
        idx.find_root("fashion-mnist")
    except DataError:
        pytest.skip("Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
    # valid-10k (the last 10,000 training images) and 14×14 pixels keep one epoch and the evaluations short
    overrides = (*TINY, "data.name=fashion-mnist", "data.train_split=valid-10k", "data.image_size=14")
    run = train_run(cli, tmp_path / "run", *overrides)
    m = metrics(run)
    assert m["data"] == "fashion-mnist" and m["steps"] == 10_000 // 256
    assert json.loads((run / "checkpoints/last/config.json").read_text())["config"]["image_size"] == [14, 14]
    assert m["test_elbo_nats"] > m["untrained_test_elbo_nats"]


# --------------------------------------------------------------------------- 6. VQ-VAE, 7. bf16


def test_vqvae_run(vq_run, cli):
    run = vq_run
    assert not (run / "samples.png").exists()  # no prior to sample from
    for name in ("reconstructions.png", "interpolation.png", "curves.png"):
        png_size(run / name)
    m = metrics(run)
    assert m["model"] == "vqvae" and "test_elbo_nats" not in m
    assert {"loss", "Reconstruction_Loss", "VQ_Loss", "perplexity"} <= set(m["test"])
    assert 1 <= m["test"]["perplexity"] <= 16 and m["test"]["VQ_Loss"] > 0
    train = rows(run, "train")
    assert train and all(r["VQ_Loss"] and r["perplexity"] and r["KLD"] == "" for r in train)
    page = (run / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "Samples" not in page
    assert "<th>test.perplexity</th>" in page
    assert load_config(run / "config.yaml") == resolved(TINY_VQ)


def test_bf16_autocast_on_cpu(tmp_path, cli):
    run = train_run(cli, tmp_path / "bf16", *TINY, "train.precision=bf16")
    train = rows(run, "train")
    assert all(math.isfinite(float(r[k])) for r in train for k in ("loss", "KLD", "ELBO"))
    assert all(math.isfinite(v) for v in metrics(run)["test"].values())
    # the same run in fp32 takes the same steps; bf16 rounds differently, but not by much
    # (an fp32 run of its own: the session's run is `precision: auto`, bf16 on a CPU that has it)
    fp32 = rows(train_run(cli, tmp_path / "fp32", *TINY, "train.precision=fp32"), "train")
    losses = [(float(a["loss"]), float(b["loss"])) for a, b in zip(fp32, train, strict=True)]
    assert any(a != b for a, b in losses)
    assert all(abs(b / a - 1) < 0.02 for a, b in losses)


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tmp_path, cli, vae_run):
    run = train_run(cli, tmp_path / "compiled", *TINY, "train.compile=true")
    # compiled kernels round differently, but they train the same model on the same batches
    eager, compiled = rows(vae_run, "train"), rows(run, "train")
    assert len(eager) == len(compiled)
    pairs = zip(eager, compiled, strict=True)
    assert all(abs(float(b["loss"]) / float(a["loss"]) - 1) < 0.02 for a, b in pairs)
    assert metrics(run)["test"]["ELBO"] > metrics(run)["untrained_test"]["ELBO"]


def test_force_overwrites_a_run(tmp_path, cli, vae_run):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    (run / "stale.txt").write_text("from the old run")
    assert (
        cli("train", "--out", run, "--force", "--no-progress", *sets(*TINY, "train.batch_size=512")).rc == 0
    )
    assert not (run / "stale.txt").exists()
    assert metrics(run)["steps"] == 4500 // 512


def test_resume_with_more_epochs_extends_the_run(tmp_path, cli, vae_run):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    result = cli("train", "--resume", run, "--no-progress", "--set", "train.epochs=2")
    assert result.rc == 0, result.err
    assert metrics(run)["epochs"] == 2 and metrics(run)["steps"] == 34
    assert [int(r["epoch"]) for r in rows(run, "test")] == [1, 2]
    assert load_config(run / "config.yaml").train.epochs == 2  # the run directory says what it ran


# --------------------------------------------------------------------------- schedules, clipping, progress


def test_lr_factor_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    from vaekit.config import TrainConfig
    from vaekit.train import lr_factor

    f = lr_factor(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=4), total_steps=12)  # then 8 of decay
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)  # the decay starts at the full rate
    assert f(6) == pytest.approx(0.868198, abs=1e-6)  # a quarter: 0.1 + 0.9 (1 + cos π/4) / 2
    assert f(8) == pytest.approx(0.55)  # half-way: 0.1 + 0.9 / 2
    assert f(12) == pytest.approx(0.1) and f(30) == pytest.approx(0.1)  # the end: min_lr / lr, and stays

    g = lr_factor(TrainConfig(lr=1e-3, warmup_steps=0), total_steps=10)  # no warm-up, min_lr 0
    assert [g(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])

    const = lr_factor(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="constant"), 10)
    assert [const(s) for s in (0, 1, 2, 5, 9, 10, 50)] == pytest.approx([0.5, 1, 1, 1, 1, 1, 1])


def test_kl_weight_rises_linearly_to_beta_then_stays():
    from vaekit.config import TrainConfig
    from vaekit.train import kl_weight

    t = TrainConfig(beta=2.0, kl_warmup_steps=10)
    assert [kl_weight(t, s) for s in (0, 1, 5, 9, 10, 11, 1000)] == pytest.approx(
        [0.0, 0.2, 1.0, 1.8, 2.0, 2.0, 2.0]
    )
    assert [kl_weight(TrainConfig(beta=0.5), s) for s in (0, 7)] == [0.5, 0.5]  # no warm-up


def test_grad_clip_bounds_the_norm_of_the_gradients_the_optimizer_applies(tmp_path):
    """A global optimizer hook sees every step's gradients: with train.grad_clip=0.05 their global
    norm is 0.05 (each step's was larger, as the unclipped run shows), without it they are left alone."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from vaekit.train import train

    norms: dict[str, list[float]] = {}
    current: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        current.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        for clip in ("0.05", "null"):
            current.clear()
            train(load_config(None, (*TINY, f"train.grad_clip={clip}")), tmp_path / clip, progress=False)
            norms[clip] = list(current)
    finally:
        handle.remove()
    assert len(norms["0.05"]) == len(norms["null"]) == 4500 // 256
    assert min(norms["null"]) > 1  # far above the bound: every step is clipped
    assert all(0.05 * (1 - 1e-4) < n <= 0.05 * (1 + 1e-5) for n in norms["0.05"]), norms["0.05"]


def test_progress_bar_shows_each_steps_losses_and_the_global_step(tmp_path, capsys, monkeypatch):
    """The bar is redrawn at every update here (mininterval=0): each of the 17 steps appears with its
    global step, its loss terms and a rate, whatever log_every (5 here) is."""
    import functools

    from tqdm import tqdm

    import vaekit.progress
    import vaekit.train

    monkeypatch.setattr(vaekit.progress, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))
    capsys.readouterr()
    run = tmp_path / "r"
    vaekit.train.train(load_config(None, TINY), run, progress=True)
    frames = re.split(r"[\r\n]", capsys.readouterr().err)
    shown = {}
    for frame in frames:
        found = re.match(r"epoch 1/1 step (\d+):.*loss=([^,]+),.*img/s=\d+", frame)
        if found:
            shown[int(found[1])] = found[2]
    assert sorted(shown) == list(range(1, 18))
    logged = {int(r["step"]): f"{float(r['loss']):.4g}" for r in rows(run, "train")}
    assert sorted(logged) == [5, 10, 15, 17]
    assert all(shown[step] == loss for step, loss in logged.items())  # the step's own loss
