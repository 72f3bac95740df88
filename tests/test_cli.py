"""The `vaekit` command line: user errors (exit 2, one line, no traceback), run directories that are
never overwritten by accident, and the commands that read a run (sample, reconstruct, interpolate,
encode, datasets)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, sets
from vaekit.cli import build_parser, main
from vaekit.errors import VaekitError
from vaekit.runs import load_run


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def grid_size(n: int, nrow: int, side: int = 28, padding: int = 2) -> tuple[int, int]:
    cols, grid_rows = min(nrow, n), -(-n // nrow)
    return cols * (side + padding) + padding, grid_rows * (side + padding) + padding


def assert_user_error(result, *fragments: str) -> str:
    """Exit status 2 and a single ``vaekit: error: …`` line on stderr, naming ``fragments``."""
    assert result.rc == 2, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("vaekit: error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- 8. bad input


def _train(cli, *args):
    return cli("train", "--no-progress", *args)


def test_missing_config_file(tmp_path, cli):
    assert_user_error(
        _train(cli, tmp_path / "nope.yaml", "--out", tmp_path / "r"), "config file not found", "nope.yaml"
    )
    assert not (tmp_path / "r").exists()


def test_yaml_syntax_error_names_the_line(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  latent_dim: 4\ntrain:\n  lr: [1, 2\n  epochs: 3\n")
    line = assert_user_error(_train(cli, bad, "--out", tmp_path / "r"), "invalid YAML")
    assert f"{bad}:" in line and any(f"{bad}:{n}:" in line for n in (4, 5, 6))


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("train.lrr=1e-3", ("unknown key train.lrr", "did you mean train.lr?")),
        ("train.epochs=abc", ("train.epochs", "expected int", "'abc'")),
        ("data.name=mnits", ("data.name", "'mnits'")),
        ("trainlr=1", ("bad override",)),
    ],
)
def test_bad_override(tmp_path, cli, override, fragments):
    assert_user_error(_train(cli, "--out", tmp_path / "r", "--set", override), *fragments)
    assert not (tmp_path / "r").exists()


def test_missing_data_path(tmp_path, cli):
    result = _train(cli, "--out", tmp_path / "r", *sets(*TINY, "data.name=cifar10", "data.path=/nonexistent"))
    assert_user_error(result, "CIFAR-10", "/nonexistent")
    assert not (tmp_path / "r").exists()  # nothing is written before the data are found


def test_empty_folder(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    result = _train(
        cli, "--out", tmp_path / "r", *sets(*TINY, "data.name=folder", f"data.path={tmp_path / 'empty'}")
    )
    assert_user_error(result, "no images", "empty")


def _folder_with_a_corrupt_image(root: Path, good: int = 16) -> tuple[str, ...]:
    """``good`` small PNGs and broken.png under root/images; the overrides that train on them."""
    images = root / "images"
    images.mkdir()
    for i in range(good):
        Image.fromarray(np.full((10, 10, 3), 16 * i, np.uint8)).save(images / f"{i:02d}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return (*TINY, "data.name=folder", f"data.path={images}", "data.image_size=8", "train.batch_size=2")


def test_corrupt_image_in_folder(tmp_path, cli):
    """An undecodable image is skipped with a warning naming it (the next image takes its place):
    a run never stops mid-epoch on one bad file."""
    overrides = _folder_with_a_corrupt_image(tmp_path)
    result = _train(cli, "--out", tmp_path / "r", *sets(*overrides))
    assert result.rc == 0 and "Traceback" not in result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("vaekit: warning:")]
    assert warnings and all("broken.png" in line and "skipped" in line for line in warnings)
    assert (tmp_path / "r" / "metrics.json").is_file()


def test_a_run_that_fails_before_its_first_checkpoint_can_simply_be_rerun(tmp_path, cli):
    """config.yaml, metrics.csv and tensorboard/ were written when no image turned out decodable;
    they go again, so the rerun is not refused as "already exists". An empty --out given stays,
    empty."""
    overrides = _folder_with_a_corrupt_image(tmp_path, good=0)
    for i in range(15):
        (tmp_path / f"images/broken{i}.png").write_bytes(b"not an image either")
    out = tmp_path / "r"
    out.mkdir()
    result = _train(cli, "--out", out, *sets(*overrides))
    assert result.rc == 2 and "image file(s) under" in result.err.splitlines()[-1]
    assert out.is_dir() and not any(out.iterdir())
    for i, path in enumerate(sorted((tmp_path / "images").iterdir())):
        Image.fromarray(np.full((10, 10, 3), 16 * i, np.uint8)).save(path, format="PNG")
    result = _train(cli, "--out", out, *sets(*overrides))
    assert result.rc == 0, result.err
    assert (out / "metrics.json").is_file()


def test_out_that_cannot_be_written(tmp_path, cli):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "r"
    result = _train(cli, "--out", out, *sets(*TINY))
    assert result.rc == 2 and "Traceback" not in result.err
    assert result.err.splitlines()[-1] == f"vaekit: error: cannot write {out}: {os.strerror(errno.ENOTDIR)}"
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("failing_epoch", [1, 2])
def test_a_checkpoint_that_cannot_be_written(tmp_path, cli, monkeypatch, failing_epoch):
    """A full disk while writing a checkpoint is one line, exit 2. Before the first checkpoint the run
    leaves nothing behind; after it, the run stays and --resume finishes it."""
    import vaekit.train

    real_save, saves = vaekit.train.save_training_checkpoint, []

    def save(directory, *args):
        saves.append(directory)
        if len(saves) == failing_epoch:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "model.safetensors"))
        real_save(directory, *args)

    monkeypatch.setattr(vaekit.train, "save_training_checkpoint", save)
    out = tmp_path / "r"
    result = _train(cli, "--out", out, *sets(*TINY, "train.epochs=2"))
    assert result.rc == 2 and "Traceback" not in result.err
    assert result.err.splitlines()[-1] == (
        f"vaekit: error: cannot write {out}/checkpoints/last/model.safetensors: No space left on device"
    )
    if failing_epoch == 1:
        assert not out.exists()
        return
    monkeypatch.undo()
    assert (out / "checkpoints/last").is_dir()
    result = _train(cli, "--resume", out)
    assert result.rc == 0, result.err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_resume_and_sample_need_a_run(tmp_path, cli):
    (tmp_path / "notarun").mkdir()
    assert_user_error(_train(cli, "--resume", tmp_path / "notarun"), "cannot resume", "no config.yaml")
    assert_user_error(cli("sample", tmp_path / "notarun", "-o", tmp_path / "s.png"), "is not a vaekit run")
    assert_user_error(cli("encode", tmp_path / "missing", "-o", tmp_path / "z.npz"), "is not a vaekit run")
    assert not (tmp_path / "s.png").exists()


def test_resume_refuses_other_configs_and_model_changes(tmp_path, cli, vae_run):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    assert_user_error(_train(cli, "configs/default.yaml", "--resume", run), "--resume")
    assert_user_error(_train(cli, "--resume", run, "--out", tmp_path / "x"), "--resume")
    assert_user_error(_train(cli, "--resume", run, "--set", "model.latent_dim=8"), "model.latent_dim=8")
    assert_user_error(_train(cli, "--stop-after-epochs", "0", "--out", tmp_path / "y"), "--stop-after-epochs")


def test_sample_from_vqvae_is_a_user_error(tmp_path, cli, vq_run):
    assert_user_error(cli("sample", vq_run, "-o", tmp_path / "s.png"), "VQ-VAE", "prior")


def test_debug_shows_the_traceback(tmp_path, cli):
    with pytest.raises(VaekitError, match="config file not found"):
        main(["--debug", "train", str(tmp_path / "nope.yaml")])
    with pytest.raises(VaekitError, match=r"unknown key train\.lrr"):
        main(["--debug", "train", "--set", "train.lrr=1"])
    # after the command as well as before it
    with pytest.raises(VaekitError, match="config file not found"):
        main(["train", str(tmp_path / "nope.yaml"), "--debug"])
    with pytest.raises(VaekitError, match="is not a vaekit run"):
        main(["sample", "--debug", str(tmp_path), "-o", str(tmp_path / "s.png")])
    assert_user_error(cli("train", tmp_path / "nope.yaml"), "config file not found")  # without it


def test_user_error_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vaekit", "train", "--set", "train.lrr=1e-3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr == "vaekit: error: unknown key train.lrr — did you mean train.lr?\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there(tmp_path, cli, vae_run):
    assert_user_error(_train(cli, "--out", tmp_path / "r", "--set", "train.device=cuda"), "'cuda'", "no CUDA")
    assert not (tmp_path / "r").exists()
    out = tmp_path / "s.png"
    assert_user_error(cli("sample", vae_run, "--device", "cuda:1", "-o", out), "'cuda:1'", "no CUDA")
    assert_user_error(cli("reconstruct", vae_run, "--device", "gpu", "-o", out), "unknown device 'gpu'")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ("sample", "-n", "0"),
        ("sample", "-n", "-1"),
        ("reconstruct", "-n", "x"),
        ("interpolate", "--steps", "0"),
        ("interpolate", "--pairs", "0"),
        ("encode", "--batch-size", "0"),
        ("evaluate", "--workers", "0"),
    ],
)
def test_counts_must_be_positive(tmp_path, capsys, vae_run, argv):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, before any work
        main([argv[0], str(vae_run), *argv[1:], "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "expected a positive integer" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- run directories


def test_existing_out_is_never_overwritten(tmp_path, cli, vae_run):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert_user_error(_train(cli, "--out", run, *sets(*TINY)), "already exists", "--resume", "--force")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    other = tmp_path / "mine"  # --force replaces runs only, never another folder
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    assert_user_error(_train(cli, "--out", other, "--force", *sets(*TINY)), "not a vaekit run")
    assert (other / "thesis.tex").read_text() == "precious"

    (tmp_path / "file").write_text("x")
    assert_user_error(_train(cli, "--out", tmp_path / "file", *sets(*TINY)), "is a file")


def test_force_keeps_the_old_run_until_the_new_one_can_start(tmp_path, cli, vae_run):
    """--force deletes the old run only once the new run's data and model are ready: a new config
    that fails (here: no such data) leaves the old run as it was."""
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    overrides = (*TINY, "data.name=cifar10", f"data.path={tmp_path / 'nowhere'}")
    assert_user_error(_train(cli, "--out", run, "--force", *sets(*overrides)), "CIFAR-10")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_default_run_dir_is_never_reused(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "runs" / "default"
    first.mkdir(parents=True)
    (first / "config.yaml").write_text("# an earlier run\n")
    result = _train(cli, *sets(*TINY, "train.batch_size=512"))
    assert result.rc == 0
    assert "into runs/default-2" in result.err
    assert (tmp_path / "runs/default-2/metrics.json").is_file()
    assert (first / "config.yaml").read_text() == "# an earlier run\n"
    assert sorted(p.name for p in first.iterdir()) == ["config.yaml"]


# --------------------------------------------------------------------------- 9. commands on a run


def test_sample(tmp_path, cli, vae_run):
    out = tmp_path / "f.png"
    result = cli("sample", vae_run, "-n", "8", "-o", out)
    assert result.rc == 0 and str(out) in result.out
    assert png_size(out) == grid_size(8, 8)
    again = tmp_path / "g.png"
    assert cli("sample", vae_run, "-n", "8", "-o", again, "--checkpoint", "last").rc == 0
    assert again.read_bytes() == out.read_bytes()  # seed 0 both times; best == last after one epoch
    assert cli("sample", vae_run, "-n", "8", "-o", again, "--seed", "1").rc == 0
    assert again.read_bytes() != out.read_bytes()


def test_reconstruct(tmp_path, cli, vae_run):
    out = tmp_path / "r.png"
    assert cli("reconstruct", vae_run, "-n", "12", "-o", out).rc == 0
    assert png_size(out) == grid_size(24, 16)  # 12 pairs, 8 pairs per row
    assert cli("reconstruct", vae_run, "-n", "4", "--split", "train", "-o", out).rc == 0
    assert png_size(out) == grid_size(8, 16)
    assert_user_error(cli("reconstruct", vae_run, "--split", "valid", "-o", out), "unknown split 'valid'")


def test_interpolate(tmp_path, cli, vae_run, vq_run):
    for run in (vae_run, vq_run):
        out = tmp_path / f"{run.name}.png"
        assert cli("interpolate", run, "--pairs", "3", "--steps", "5", "-o", out).rc == 0
        assert png_size(out) == grid_size(15, 5)


def test_encode_vae(tmp_path, cli, vae_run):
    out = tmp_path / "z.npz"
    result = cli("encode", vae_run, "--split", "test", "-o", out, "--batch-size", "128")
    assert result.rc == 0 and "mu [500, 4]" in result.out
    with np.load(out) as z:
        assert set(z.files) == {"mu", "log_var", "labels"}
        assert z["mu"].shape == z["log_var"].shape == (500, 4) and z["labels"].shape == (500,)
        mu, labels = z["mu"], z["labels"]
    cfg, model = load_run(vae_run)
    from vaekit.data import load_split

    data = load_split(cfg.data, "test")
    assert np.array_equal(labels, data.labels.numpy())  # in file order, not shuffled
    with torch.no_grad():
        expected = model.encode(data.images[:5].float() / 255)[0]
    np.testing.assert_allclose(mu[:5], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_encode_vqvae(tmp_path, cli, vq_run):
    out = tmp_path / "codes.npz"
    assert cli("encode", vq_run, "-o", out).rc == 0
    with np.load(out) as z:
        assert set(z.files) == {"indices", "labels"}
        indices = z["indices"]
        assert indices.shape == (500, 7, 7) and z["labels"].shape == (500,)
    assert np.issubdtype(indices.dtype, np.integer) and indices.min() >= 0 and indices.max() < 16


def test_datasets(cli):
    result = cli("datasets")
    assert result.rc == 0
    lines = result.out.splitlines()
    sources = ["mnist5k", "mnist", "fashion-mnist", "cifar10", "folder", "codes"]
    assert [line.split()[0] for line in lines] == sources
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each with a status
    assert "built in" in lines[0]


@pytest.mark.parametrize(
    "command",
    [None, "train", "train-prior", "sample", "reconstruct", "interpolate", "encode", "evaluate", "datasets"],
)
def test_help(command, capsys):
    argv = [command, "--help"] if command else ["--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert f"usage: vaekit{' ' + command if command else ''}" in capsys.readouterr().out


def test_every_command_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"train", "sample", "reconstruct", "interpolate", "encode", "datasets"}
    assert all(action.help for action in sub._choices_actions)
