"""`vaekit train-prior`: a prior over a VQ-VAE run's codes, trained by the same loop, makes the run
sample; its codes are cached and rebuilt when the VQ-VAE changes; evaluation bounds log p(x)."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import sets
from vaekit import NoPriorError, VaekitError, features
from vaekit.cli.evaluate import format_table
from vaekit.data import codes, load_split
from vaekit.models import GatedPixelCNN
from vaekit.runs import encode_codes, evaluate_run, load_run

#: A prior small enough to train an epoch of 4,500 tiny code maps in a few seconds.
TINY_PRIOR = (
    "model.hidden_channels=8",
    "model.num_layers=4",
    "model.num_classes=10",
    "train.epochs=2",
    "train.batch_size=250",
    "train.lr=1e-2",
    "train.warmup_steps=5",
    "train.log_every=5",
)


@pytest.fixture
def vq_copy(vq_run, tmp_path):
    """A private copy of the session's tiny VQ-VAE run (train-prior writes into the run)."""
    run = tmp_path / "vq"
    shutil.copytree(vq_run, run)
    return run


def _train_prior(cli, run, *args):
    return cli("train-prior", run, "--no-progress", *args, *sets(*TINY_PRIOR))


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory, vq_run):
    """The tiny VQ-VAE run with a trained prior (read-only)."""
    from vaekit.cli import main

    run = tmp_path_factory.mktemp("prior") / "vq"
    shutil.copytree(vq_run, run)
    assert main(["train-prior", str(run), "--no-progress", *sets(*TINY_PRIOR)]) == 0
    return run


def test_train_prior_writes_codes_a_prior_run_and_samples_into_the_run(prior_run):
    cfg, model = load_run(prior_run)
    for split in (cfg.data.train_split, cfg.data.test_split):
        cached = load_file(str(codes.cache_path(prior_run, split)))
        images = load_split(cfg.data, split)
        assert cached["codes"].shape == (len(images), 7, 7) and torch.equal(cached["labels"], images.labels)
    # the cache holds what the model encodes
    x = images.images[:16].float() / 127.5 - 1  # the VQ-VAE's gaussian range
    assert torch.equal(model.encode_indices(x), cached["codes"][:16].long())
    prior = prior_run / "prior"
    assert (prior / "checkpoints" / "best" / "model.safetensors").is_file()
    prior_metrics = json.loads((prior / "metrics.json").read_text())
    assert prior_metrics["model"] == "pixelcnn_prior" and prior_metrics["data"] == "codes"
    # a prior learns: from about uniform codes (49 log 16 = 136 nats per map) to near the entropy of
    # the test codes' frequencies (this 1-epoch VQ-VAE uses few codes: about 2.7 nats per map)
    test_codes = load_file(str(codes.cache_path(prior_run, "test")))["codes"].flatten().long()
    freq = torch.bincount(test_codes).double() / len(test_codes)
    unigram = float(-(freq[freq > 0] * freq[freq > 0].log()).sum()) * 49
    assert prior_metrics["untrained_test"]["NLL"] > 0.9 * 49 * np.log(16)
    assert prior_metrics["test"]["NLL"] < unigram + 6
    assert model.code_prior is not None and model.can_sample and model.num_classes == 10
    for path in (prior_run / "samples.png", prior / "samples.png"):
        assert path.is_file()
    assert 'alt="Samples"' in (prior_run / "report.html").read_text()  # the run's report shows them


def test_a_loaded_run_samples_images_and_labels_condition_them(prior_run):
    _, model = load_run(prior_run)
    gen = lambda: torch.Generator().manual_seed(3)
    images = model.sample(12, generator=gen())
    assert images.shape == (12, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(images, model.sample(12, generator=gen()))  # seeded: repeatable
    zeros, fives = model.sample(12, generator=gen(), labels=0), model.sample(12, generator=gen(), labels=5)
    assert not torch.equal(zeros, fives)
    assert model.sample(4, generator=gen(), temperature=0.5).shape == (4, 1, 28, 28)


def test_sample_command_with_label_and_temperature(prior_run, vq_run, cli, tmp_path):
    out = tmp_path / "s.png"
    result = cli("sample", prior_run, "-n", "8", "--label", "3", "--temperature", "0.8", "-o", out)
    assert result.rc == 0, result.err
    assert out.is_file()
    bad = cli("sample", prior_run, "--label", "10", "-o", out)
    assert bad.rc == 2 and "0..9" in bad.err
    no_prior = cli("sample", vq_run, "-o", out)
    assert no_prior.rc == 2 and "train-prior" in no_prior.err
    for command in ("sample", "reconstruct", "encode", "evaluate"):  # the prior's own run: a pointer
        result = cli(
            command, prior_run / "prior", "-o" if command != "evaluate" else "--json", tmp_path / "x"
        )
        assert result.rc == 2 and "pass that run" in result.err and str(prior_run) in result.err


def test_evaluate_bounds_log_px_with_the_prior(prior_run, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "MAX_TRAIN_EXAMPLES", 1000)
    monkeypatch.setattr(features, "EPOCHS", 1)
    res = evaluate_run(prior_run, progress=False, json_path=tmp_path / "e.json")
    _, model = load_run(prior_run)
    test = load_split(load_run(prior_run)[0].data, "test")
    # the bound: decoder NLL of the dequantized data + prior NLL of the codes, the same number twice
    assert res["nll_nats"] == pytest.approx(-res["elbo_nats"], rel=1e-6) and res["nll_stderr"] == 0
    assert "bound" in res["nll_note"]
    assert "the bound" in format_table(res) and "k = " not in format_table(res)
    assert 0 < res["prior_nll_nats"] < 49 * np.log(16)
    assert res["prior_bits_per_code"] == pytest.approx(res["prior_nll_nats"] / (49 * np.log(2)))
    assert res["bits_per_dim_conversion"] == "8bit" and res["bits_per_dim"] > 0
    assert len(test) == res["num_examples"] and model.code_prior is not None
    assert {"frechet_distance", "kid", "precision", "recall"} <= set(res)


def test_prior_resume_equals_an_uninterrupted_run_bitwise(vq_copy, tmp_path, cli):
    other = tmp_path / "other"
    shutil.copytree(vq_copy, other)
    assert _train_prior(cli, vq_copy).rc == 0
    stopped = _train_prior(cli, other, "--stop-after-epochs", "1")
    assert stopped.rc == 0 and "train-prior" in stopped.err and "--resume" in stopped.err
    resumed = cli("train-prior", other, "--resume", "--no-progress")
    assert resumed.rc == 0, resumed.err
    a = load_file(str(vq_copy / "prior/checkpoints/last/model.safetensors"))
    b = load_file(str(other / "prior/checkpoints/last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_codes_are_encoded_again_when_the_vq_vae_changes(vq_copy, cli):
    cfg, _ = load_run(vq_copy)
    files = encode_codes(vq_copy, torch.device("cpu"), progress=False)
    stamps = [f.stat().st_mtime_ns for f in files]
    assert [
        f.stat().st_mtime_ns for f in encode_codes(vq_copy, torch.device("cpu"), progress=False)
    ] == stamps
    # new VQ-VAE weights (as a resumed or retrained run would leave): the cached codes are stale
    weights = vq_copy / "checkpoints" / "best" / "model.safetensors"
    state = load_file(str(weights))
    state["vq_layer.embedding.weight"] = state["vq_layer.embedding.weight"].flip(0)
    save_file(state, str(weights))
    with pytest.raises(VaekitError, match="older checkpoint"):
        load_split(dataclass_codes(cfg, vq_copy), cfg.data.train_split)
    encode_codes(vq_copy, torch.device("cpu"), progress=False)
    assert all(f.stat().st_mtime_ns != t for f, t in zip(files, stamps, strict=True))
    assert codes.cached_fingerprint(vq_copy, cfg.data.train_split) == codes.fingerprint(weights)


def dataclass_codes(cfg, run):
    import dataclasses

    return dataclasses.replace(cfg.data, name="codes", path=str(run), download=False)


def test_a_stale_prior_is_not_attached(prior_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(prior_run, run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    state = load_file(str(weights))
    state["vq_layer.embedding.weight"] = state["vq_layer.embedding.weight"] + 1
    save_file(state, str(weights))
    with pytest.warns(UserWarning, match="train-prior"):
        _, model = load_run(run)
    assert model.code_prior is None
    with pytest.raises(NoPriorError):
        model.sample(2)


def test_train_prior_refuses_what_it_cannot_use(vae_run, vq_copy, cli, tmp_path):
    result = cli("train-prior", vae_run, "--no-progress")
    assert result.rc == 2 and "discrete codes" in result.err
    assert cli("train-prior", tmp_path / "nothing").rc == 2
    result = cli("train-prior", vq_copy, "--no-progress", *sets(*TINY_PRIOR, "data.binarize=true"))
    assert result.rc == 0, result.err  # data.* come from the run: a binarize override is replaced
    again = cli("train-prior", vq_copy, "--no-progress")
    assert again.rc == 2 and "--force" in again.err  # RUN/prior exists


def test_attach_prior_checks_codebook_and_grid():
    from vaekit import VQVAE

    vq = VQVAE(1, 4, 16, hidden_dims=[8, 16], image_size=28, num_residual_layers=1)
    with pytest.raises(ValueError, match="16 entries"):
        vq.attach_prior(GatedPixelCNN(image_size=7, num_embeddings=8, hidden_channels=8, num_layers=2))
    with pytest.raises(ValueError, match="grid"):
        vq.attach_prior(GatedPixelCNN(image_size=6, num_embeddings=16, hidden_channels=8, num_layers=2))
    prior = GatedPixelCNN(image_size=7, num_embeddings=16, hidden_channels=8, num_layers=2)
    vq.attach_prior(prior)
    assert vq.can_sample and not any(k.startswith("_code_prior") for k in vq.state_dict())
    assert sum(p.numel() for p in vq.parameters()) == sum(
        p.numel()
        for p in VQVAE(1, 4, 16, hidden_dims=[8, 16], image_size=28, num_residual_layers=1).parameters()
    )
    vq.eval()
    assert not prior.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vq.sample(2).shape == (2, 1, 28, 28)
