"""Robustness (issue 11, docs/robustness.md): damaged and foreign files, divergence, the run lock,
interruption and resume to the same bits, and files that must never run code when read."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, sets
from test_cli import assert_user_error
from vaekit.errors import VaekitError


def assert_failed_with(result, *fragments: str) -> str:
    """Exit status 2, no traceback, and a last line ``vaekit: error: …`` naming ``fragments`` (a
    command that got as far as training has announced it on the line before)."""
    assert result.rc == 2, result.err
    assert "Traceback" not in result.err
    line = result.err.splitlines()[-1]
    assert line.startswith("vaekit: error: "), result.err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# --------------------------------------------------------------------------- real processes

#: Runs ``vaekit ARGS`` after arranging, from environment variables, for the process to signal
#: itself at a chosen point: after training step N (VAEKIT_TEST_SIGNAL_AFTER_STEP="N SIGNAME"), or
#: between the two renames that swap in the K-th checkpoints/last (VAEKIT_TEST_KILL_IN_SAVE=K).
RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import vaekit.checkpoint, vaekit.train
    from vaekit.cli import main

    after = os.environ.get("VAEKIT_TEST_SIGNAL_AFTER_STEP")
    if after:
        at, name = int(after.split()[0]), after.split()[1]
        real_step = vaekit.train._train_step

        def step(run, x, labels, beta, n, epoch):
            out = real_step(run, x, labels, beta, n, epoch)
            if n == at:
                os.kill(os.getpid(), getattr(signal, name))
            return out

        vaekit.train._train_step = step
    in_save = os.environ.get("VAEKIT_TEST_KILL_IN_SAVE")
    if in_save:
        real_replace, seen = os.replace, []

        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".last.old"):  # the old checkpoint moved aside, the new one not in yet
                seen.append(dst)
                if len(seen) == int(in_save):
                    os.kill(os.getpid(), signal.SIGKILL)

        vaekit.checkpoint.os.replace = replace
    sys.exit(main(sys.argv[1:]))
    """
)


def vaekit_process(*args, env: dict[str, str] | None = None, wait: bool = True, cwd=None):
    """``vaekit ARGS`` in a new Python process (one OpenMP thread, like the test process)."""
    full_env = os.environ | {"OMP_NUM_THREADS": "1"} | (env or {})
    argv = [sys.executable, "-c", RUNNER, *map(str, args)]
    if not wait:
        return subprocess.Popen(
            argv, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=300)


#: 8 steps of 512 per epoch of mnist5k's 4,500 training digits; checkpoints every 3 steps too.
KILLABLE = (*TINY, "train.epochs=2", "train.batch_size=512", "train.checkpoint_every_steps=3")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    last = run / "checkpoints" / "last"
    return load_file(str(last / "model.safetensors")) | {
        f"state.{k}": v for k, v in load_file(str(last / "training_state.safetensors")).items()
    }


def test_killed_and_resumed_anywhere_gives_the_same_bits(tmp_path):
    """SIGKILL mid-epoch, SIGKILL between the renames of a checkpoint write, SIGTERM: each time
    ``--resume`` continues, and the final weights and optimizer state equal an uninterrupted run's."""
    whole = vaekit_process(
        "train", "--no-progress", "--out", tmp_path / "whole", *sets(*KILLABLE), wait=False
    )
    run = tmp_path / "killed"
    first = vaekit_process(
        "train",
        "--no-progress",
        "--out",
        run,
        *sets(*KILLABLE),
        env={"VAEKIT_TEST_SIGNAL_AFTER_STEP": "5 SIGKILL"},
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert json.loads((run / "checkpoints/last/training_state.json").read_text())["progress"]["step"] == 3
    # checkpoints at 6 (mid-epoch) and 8 (epoch end), then killed while swapping in the one of step 9
    second = vaekit_process("train", "--no-progress", "--resume", run, env={"VAEKIT_TEST_KILL_IN_SAVE": "3"})
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert not (run / "checkpoints/last").exists() and (run / "checkpoints/.last.old").is_dir()
    third = vaekit_process(
        "train", "--no-progress", "--resume", run, env={"VAEKIT_TEST_SIGNAL_AFTER_STEP": "11 SIGTERM"}
    )
    assert third.returncode == 128 + signal.SIGTERM, third.stderr
    assert "taking over the lock" in third.stderr  # the killed process left its lock file
    assert f"SIGTERM: stopped at step 12 with a checkpoint; continue with `vaekit train --resume {run}`" in (
        third.stderr
    )
    last = vaekit_process("train", "--no-progress", "--resume", run)
    assert last.returncode == 0, last.stderr
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    expected, got = _weights(tmp_path / "whole"), _weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert json.loads((run / "metrics.json").read_text())["steps"] == 16
    # metrics.csv holds each step's row once, with the uninterrupted run's numbers
    assert _logged(run) == _logged(tmp_path / "whole")


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "r"
    ctrl_c = {"VAEKIT_TEST_SIGNAL_AFTER_STEP": "1 SIGINT"}
    result = vaekit_process("train", "--no-progress", "--out", run, *sets(*KILLABLE), env=ctrl_c)
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"vaekit: SIGINT: stopped at step 2 with a checkpoint; continue with `vaekit train --resume {run}`"
    )
    assert _step(run) == 2 and "Traceback" not in result.stderr
    assert not (run / "metrics.json").exists()  # not finished: no pictures, no report


def _logged(run: Path) -> list[tuple[str, ...]]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["split"], r["loss"], r["lr"]) for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- the run lock


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints/last/training_state.json").read_text())["progress"]["step"]
    except (OSError, ValueError):
        return -1


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path, cli, vq_run):
    from vaekit.locks import lock_path

    run = _copy_run(vq_run, tmp_path / "r")
    # a resumed run with 30 more epochs holds the lock for a while
    holder = vaekit_process("train", "--no-progress", "--resume", run, "--set", "train.epochs=30", wait=False)
    try:
        _wait_for(lock_path(run), holder)
        started = time.monotonic()
        for argv in (["train", "--resume", run], ["train", "--out", run, "--force", *sets(*TINY)]):
            line = assert_user_error(
                cli(*argv, "--no-progress"), f"{run} is being written by process {holder.pid}"
            )
            assert "wait for it to finish or stop it" in line
        assert time.monotonic() - started < 10  # refused at once, not after loading data
        # train-prior writes RUN/codes from RUN's weights: it needs the lock too
        assert_user_error(cli("train-prior", run, "--no-progress"), f"being written by process {holder.pid}")
        assert not (run / "codes").exists()
        deadline = time.monotonic() + 120  # stop it once it trains (a signal before that just kills it)
        while _step(run) <= 17 and time.monotonic() < deadline and holder.poll() is None:
            time.sleep(0.05)
    finally:
        holder.send_signal(signal.SIGTERM)
        out, err = holder.communicate(timeout=120)
    assert holder.returncode == 128 + signal.SIGTERM, err
    assert not lock_path(run).exists()  # released


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, cli):
    from vaekit.locks import lock_path, run_lock

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    run = tmp_path / "r"
    lock_path(run).write_text(f"{dead.stdout.strip()} somehost\n")
    result = cli("train", "--no-progress", "--out", run, *sets(*TINY))
    assert result.rc == 0, result.err
    assert f"taking over the lock of {run} from process {dead.stdout.strip()}, which is gone" in result.err
    with run_lock(run), pytest.raises(VaekitError, match=f"being written by process {os.getpid()}"):
        run_lock(run).__enter__()


def test_readers_fall_back_while_a_checkpoint_is_swapped_in(tmp_path, vae_run):
    """Between the two renames of a checkpoint write, ``checkpoints/best`` is missing for a moment:
    readers then take ``.best.old`` (the previous one), never a half-written folder."""
    import shutil

    from vaekit.runs import load_run

    run = tmp_path / "r"
    shutil.copytree(vae_run, run)
    (run / "checkpoints/best").rename(run / "checkpoints/.best.old")
    shutil.rmtree(run / "checkpoints/last")
    (run / "checkpoints/.last.tmp").mkdir()  # a write in progress: never read
    _, model = load_run(run)
    assert isinstance(model, torch.nn.Module)


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_divergence_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, cli, precision):
    """lr=1e8 (ramped up over 100 warm-up steps): the first steps are finite and checkpointed, then
    the loss goes non-finite; the run stops there, exit 2, and checkpoints/last stays finite. Under
    bf16 autocast the same check catches it, and the message suggests fp32 too."""
    run = tmp_path / "r"
    overrides = ("train.lr=1e8", "train.checkpoint_every_steps=1", f"train.precision={precision}")
    result = cli("train", "--no-progress", "--out", run, *sets(*TINY, *overrides))
    line = assert_failed_with(result, "training diverged at step", "(epoch 1)", "train.lr=1e+08", "lower it")
    assert ("try train.precision=fp32" in line) == (precision == "bf16")
    step = int(line.split("at step ")[1].split()[0])
    assert f"checkpoints/last (step {step - 1}) is kept as it was" in line
    state = json.loads((run / "checkpoints/last/training_state.json").read_text())
    assert state["progress"]["step"] == step - 1
    for name, tensor in _weights(run).items():
        assert tensor.dtype == torch.uint8 or torch.isfinite(tensor.float()).all(), name


def test_a_run_that_diverges_on_resume_keeps_its_checkpoint_bit_for_bit(tmp_path, cli, vae_run):
    """``--set train.lr=…`` on ``--resume`` takes effect (the checkpoint's schedule holds the old
    rate); a divergence there leaves checkpoints/last exactly as it was."""
    run = _copy_run(vae_run, tmp_path / "r")
    last = run / "checkpoints/last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    result = cli("train", "--no-progress", "--resume", run, *sets("train.epochs=3", "train.lr=1e8"))
    assert_failed_with(result, "training diverged at step", "(epoch 2)", "checkpoints/last (step 17) is kept")
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before


def test_a_model_that_produces_nan_names_the_term(tmp_path, cli, monkeypatch):
    import vaekit.models.vae as vae

    real = vae.VanillaVAE.loss_function

    def nan_kld(self, *outputs, **kw):
        terms = real(self, *outputs, **kw)
        return terms | {"KLD": terms["KLD"] * float("nan")}

    monkeypatch.setattr(vae.VanillaVAE, "loss_function", nan_kld)
    result = cli("train", "--no-progress", "--out", tmp_path / "r", *sets(*TINY))
    assert_failed_with(
        result,
        "training diverged at step 1 (epoch 1): KLD=nan;",
        "no checkpoint had been written yet",
        "NaN/inf in the data, or a model that computes them (this was the first step",
    )
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- damaged files


def _malicious_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when it is unpickled (by any unpickler that resolves globals)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"state_dict": Payload()}, protocol=2)


def _foreign(kind: str, tmp_path: Path) -> bytes:
    if kind == "empty":
        return b""
    if kind == "random":
        return os.urandom(4096)
    if kind == "zip":
        zpath = tmp_path / "foreign.zip"
        with zipfile.ZipFile(zpath, "w") as z:
            z.writestr("archive/data.pkl", b"x")
        return zpath.read_bytes()
    if kind == "pickle":
        return _malicious_pickle(tmp_path / "PWNED")
    raise ValueError(kind)


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "zip", "pickle"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_damaged_model_file_is_one_line(tmp_path, cli, vae_run, kind, name):
    run = _copy_run(vae_run, tmp_path / "r")
    for which in ("best", "last"):
        path = run / "checkpoints" / which / name
        data = (
            path.read_bytes()[: path.stat().st_size // 2] if kind == "truncated" else _foreign(kind, tmp_path)
        )
        path.write_bytes(data)
    assert_user_error(
        cli("sample", run, "-o", tmp_path / "s.png"), str(run / "checkpoints/best" / name), "damaged"
    )
    assert_user_error(cli("evaluate", run, "--no-progress"), name, "damaged")
    assert_user_error(cli("encode", run, "-o", tmp_path / "z.npz"), name, "damaged")
    resumed = cli("train", "--no-progress", "--resume", run)
    assert_failed_with(resumed, str(run / "checkpoints/last"), "damaged")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "zip", "pickle"])
@pytest.mark.parametrize("name", ["training_state.safetensors", "training_state.json"])
def test_a_damaged_training_state_is_one_line(tmp_path, cli, vae_run, kind, name):
    run = _copy_run(vae_run, tmp_path / "r")
    path = run / "checkpoints/last" / name
    data = path.read_bytes()[: path.stat().st_size // 2] if kind == "truncated" else _foreign(kind, tmp_path)
    path.write_bytes(data)
    before = path.read_bytes()
    resumed = cli("train", "--no-progress", "--resume", run, "--set", "train.epochs=2")
    assert_failed_with(resumed, str(path), "damaged")
    assert path.read_bytes() == before
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_of_another_model_is_one_line(tmp_path, cli, vae_run, vq_run):
    run = _copy_run(vae_run, tmp_path / "r")
    for which in ("best", "last"):  # the VQ-VAE's weights under the VAE's config.json
        target = run / "checkpoints" / which / "model.safetensors"
        target.write_bytes((vq_run / "checkpoints/last/model.safetensors").read_bytes())
    assert_user_error(
        cli("sample", run, "-o", tmp_path / "s.png"), "model.safetensors does not fit", "another model"
    )
    assert_failed_with(cli("train", "--no-progress", "--resume", run), "model.safetensors does not fit")
    other = _copy_run(vae_run, tmp_path / "other-shape")  # the right model, another latent size
    cfg = json.loads((other / "checkpoints/best/config.json").read_text())
    cfg["config"]["latent_dim"] = 5
    (other / "checkpoints/best/config.json").write_text(json.dumps(cfg))
    assert_user_error(cli("sample", other, "-o", tmp_path / "s.png"), "does not fit")


# --------------------------------------------------------------------------- untrusted files


def test_no_unpickling_anywhere_in_vaekit():
    """Every file vaekit reads goes through safetensors, JSON, YAML's safe loader, numpy without
    pickles, or CIFAR's restricted unpickler: no call of torch.load, pickle.load(s), np.load with
    allow_pickle, yaml.load or yaml.unsafe_load anywhere in the package."""
    import ast

    forbidden = {"torch.load", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "dill.load"}
    src = Path(__file__).parents[1] / "src" / "vaekit"
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in forbidden, f"{path}:{node.lineno}: {name}"
            for kw in node.keywords:
                assert kw.arg != "allow_pickle" or ast.unparse(kw.value) == "False", f"{path}:{node.lineno}"


def test_a_malicious_cifar_batch_is_refused(tmp_path):
    from vaekit.data import cifar
    from vaekit.errors import DataError

    path = tmp_path / "data_batch_1"
    path.write_bytes(_malicious_pickle(tmp_path / "PWNED"))
    with pytest.raises(DataError, match="refusing to load pickle") as info:
        cifar.read_batch(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_a_malicious_feature_classifier_cache_is_refused(tmp_path, monkeypatch):
    from vaekit import features
    from vaekit.config import DataConfig
    from vaekit.data import load_split

    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    d = DataConfig()
    train, test = load_split(d, "train"), load_split(d, "test")
    digest = features.fingerprint(train.images, train.labels)
    folder = features.cache_dir() / "classifiers" / f"{train.name}-{digest[:16]}"
    folder.mkdir(parents=True)
    (folder / "classifier.safetensors").write_bytes(_malicious_pickle(tmp_path / "PWNED"))
    config = {"in_channels": 1, "num_classes": 10}
    (folder / "classifier.json").write_text(json.dumps({"fingerprint": digest, "config": config}))
    with pytest.raises(VaekitError, match=r"classifier\.safetensors is damaged") as info:
        features.load_or_train_classifier(train, test, progress=False)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    (folder / "classifier.json").write_bytes(_malicious_pickle(tmp_path / "PWNED"))
    with pytest.raises(VaekitError, match=r"classifier\.json is damaged or not vaekit's \(not JSON\)"):
        features.load_or_train_classifier(train, test, progress=False)
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("train.batch_size=0", ("train.batch_size", "at least 1", "0")),
        ("train.batch_size=-3", ("train.batch_size", "at least 1", "-3")),
        ("train.epochs=0", ("train.epochs", "at least 1")),
        ("train.epochs=-1", ("train.epochs", "at least 1")),
        ("train.lr=0", ("train.lr", "positive")),
        ("train.lr=-1e-3", ("train.lr", "positive")),
        ("train.checkpoint_every_steps=-1", ("train.checkpoint_every_steps", "at least 0")),
        ("data.image_size=2", ("model:", "too small", "data shape [1, 2, 2]")),
    ],
)
def test_bad_numbers_are_one_line_and_write_nothing(tmp_path, cli, override, fragments):
    result = cli("train", "--no-progress", "--out", tmp_path / "r", *sets(*TINY, override))
    assert_user_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_resume_with_data_of_another_shape_leaves_the_run_as_it_was(tmp_path, cli, vae_run):
    """Grayscale digits made RGB (``--set data.channels=3``) for a grayscale checkpoint: one line,
    and the run's config.yaml still describes what it ran."""
    run = _copy_run(vae_run, tmp_path / "r")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = cli("train", "--no-progress", "--resume", run, *sets("data.channels=3", "train.epochs=2"))
    assert_failed_with(result, "model.safetensors does not fit", "size mismatch")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- resuming mid-epoch


def _folder_data(root: Path):
    import numpy as np
    from PIL import Image

    from vaekit.data.folder import FolderDataset

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(23):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return FolderDataset(root, 6, 1, "train")


@pytest.mark.parametrize("kind", ["memory", "folder"])
def test_a_loader_started_mid_epoch_yields_the_rest_of_the_full_pass(tmp_path, kind):
    """``set_epoch(e, start_batch=k)``: batches k… of epoch e, bit for bit, with the dynamic
    binarization of a full pass (its generator is advanced past the skipped batches)."""
    from vaekit.data.loaders import FolderLoader, InMemoryLoader

    kw = dict(shuffle=True, drop_last=True, seed=3, binarize=True, rank=0, world_size=1)
    if kind == "memory":
        images = torch.randint(0, 256, (23, 1, 6, 6), dtype=torch.uint8)
        loader = InMemoryLoader(images, None, 4, "bernoulli", **kw)
    else:
        loader = FolderLoader(_folder_data(tmp_path / "images"), 4, "bernoulli", num_workers=0, **kw)
    loader.set_epoch(2)
    full = [x for x, _ in loader]
    for k in (0, 1, 3, len(full)):
        loader.set_epoch(2, start_batch=k)
        rest = [x for x, _ in loader]
        assert len(rest) == len(full) - k
        assert all(torch.equal(a, b) for a, b in zip(rest, full[k:], strict=True))
    with pytest.raises(VaekitError, match="start_batch"):
        loader.set_epoch(2, start_batch=len(full) + 1)


@pytest.mark.parametrize(
    "shape,dtype,labels,match",
    [
        ((4, 100), "uint8", [0, 1, 2, 3], r"expected uint8 \[n,3072\]"),
        ((4, 3072), "float32", [0, 1, 2, 3], r"expected uint8 \[n,3072\]"),
        ((4, 32, 32, 3), "uint8", [0, 1, 2, 3], r"expected uint8 \[n,3072\]"),
        ((4, 3072), "uint8", [0, 1], "labels for 4 images"),
        ((4, 3072), "uint8", [0, 1, 2, 11], "outside 0..9"),
    ],
)
def test_a_cifar_batch_of_the_wrong_shape_is_refused(tmp_path, shape, dtype, labels, match):
    import numpy as np

    from vaekit.data import cifar
    from vaekit.errors import DataError

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros(shape, dtype), b"labels": labels}))
    with pytest.raises(DataError, match=match) as info:
        cifar.read_batch(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_malicious_codes_cache_is_refused(tmp_path, vq_run):
    """RUN/codes/<split>.safetensors (what ``vaekit train-prior`` caches): a pickle there is refused
    with one line by the data source that reads it, and by ``train-prior``, which encodes again."""
    from vaekit.data import codes
    from vaekit.errors import DataError

    run = _copy_run(vq_run, tmp_path / "r")
    where = codes.cache_path(run, "train")
    where.parent.mkdir(parents=True)
    where.write_bytes(_malicious_pickle(tmp_path / "PWNED"))
    with pytest.raises(DataError, match="no codes for split 'train'") as info:
        codes.read(run, "train")
    assert "\n" not in str(info.value) and "vaekit train-prior" in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_images_of_every_mode_and_size_load_and_broken_ones_name_the_file(tmp_path):
    """Mixed sizes and modes (RGBA, LA, palette, 1-bit, CMYK JPEG, 16-bit grayscale) all come out as
    uint8 ``[channels, h, w]``; a truncated JPEG, a text file named .png and an empty file are a
    one-line DataError naming the file."""
    import numpy as np
    from PIL import Image

    from vaekit.data import folder
    from vaekit.errors import DataError

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    images = {
        "rgba.png": rgb.convert("RGBA"),
        "la.png": rgb.convert("LA"),
        "palette.gif": rgb.convert("P"),
        "bits.bmp": rgb.convert("1"),
        "cmyk.jpg": rgb.convert("CMYK").resize((40, 9)),
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (21, 5), dtype=np.uint16)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
        for channels in (1, 3):
            x = folder.load_image(tmp_path / name, (8, 6), channels)
            assert x.shape == (channels, 8, 6) and x.dtype == torch.uint8, name
    jpeg = tmp_path / "whole.jpg"
    rgb.resize((64, 64)).save(jpeg)
    (tmp_path / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.jpg", "text.png", "empty.png"):
        with pytest.raises(DataError, match="cannot decode image") as info:
            folder.load_image(tmp_path / name, (8, 8), 3)
        assert name in str(info.value) and "\n" not in str(info.value)
