"""Shared fixtures: tiny trained runs (built once per session) and an in-process ``vaekit`` runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vaekit.cli import main

# One OpenMP thread unless the caller chose: on a small shared machine (the project's CI has two cores
# shared by several jobs) two spinning OpenMP threads make these tiny convolutions 10-50x slower.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


def _fashion_mnist_found() -> bool:
    from vaekit.data import idx
    from vaekit.errors import DataError

    try:
        idx.find_root("fashion-mnist")
    except DataError:
        return False
    return True


#: For tests that read the real Fashion-MNIST: optional data, which `.ci/run` installs.
needs_fashion_mnist = pytest.mark.skipif(
    not _fashion_mnist_found(),
    reason="Fashion-MNIST not found (apt install dataset-fashion-mnist, or put the IDX files in "
    "$VAEKIT_DATA/fashion-mnist)",
)


def sets(*items: str) -> list[str]:
    """``sets("a.b=1", "c.d=2")`` -> ``["--set", "a.b=1", "--set", "c.d=2"]``."""
    return [arg for item in items for arg in ("--set", item)]


#: A conv VAE small enough to train an epoch of mnist5k (17 steps of 256) in about a second.
TINY = (
    "model.hidden_dims=[8,16]",
    "model.latent_dim=4",
    "train.epochs=1",
    "train.batch_size=256",
    "train.log_every=5",
    "data.num_workers=0",
)
#: The tiny VQ-VAE: codes on a 7×7 grid, 16 of them.
TINY_VQ = (
    "model.name=vqvae",
    "model.hidden_dims=[8,16]",
    "model.embedding_dim=4",
    "model.num_embeddings=16",
    "model.num_residual_layers=1",
    "train.epochs=1",
    "train.batch_size=256",
    "train.log_every=5",
    "data.num_workers=0",
)


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``vaekit ARGS`` in this process: ``cli("train", "--out", d) -> Result(rc, out, err)``."""

    def run(*argv: str | Path) -> Result:
        capsys.readouterr()  # drop what came before
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    return run


def _train(directory: Path, overrides: tuple[str, ...]) -> Path:
    rc = main(["train", "--out", str(directory), "--no-progress", *sets(*overrides)])
    assert rc == 0, f"training the session's run {directory} failed"
    return directory


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory) -> Path:
    """A finished 1-epoch tiny conv-VAE run on mnist5k (read-only: do not write into it)."""
    return _train(tmp_path_factory.mktemp("runs") / "tiny-vae", TINY)


@pytest.fixture(scope="session")
def vq_run(tmp_path_factory) -> Path:
    """A finished 1-epoch tiny VQ-VAE run on mnist5k (read-only: do not write into it)."""
    return _train(tmp_path_factory.mktemp("runs") / "tiny-vq", TINY_VQ)
