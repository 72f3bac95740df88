"""vaekit.evaluate and vaekit.features: the likelihood against a closed form, the data protocols,
the feature classifier and its cache, and `vaekit evaluate` end to end on tiny runs."""

import argparse
import dataclasses
import json
import time

import pytest
import torch

from conftest import needs_fashion_mnist
from vaekit import LinearGaussianVAE, VaekitError, features, losses
from vaekit.cli.evaluate import add_parsers, cmd_evaluate, format_table
from vaekit.config import load_config, save_config
from vaekit.data import ImageData, binarize_once, dequantize, likelihood_data, load_dataset
from vaekit.evaluate import PROTOCOLS, batch_generators, likelihood_metrics, to_bits_per_dim
from vaekit.models import build_model
from vaekit.runs import evaluate_run

# --- the likelihood against pPCA's exact log p(x) -----------------------------------------------


@pytest.fixture
def ppca():
    """pPCA with orthogonal W, its encoder set to the true posterior and then perturbed, and 300 draws
    from its p(x)."""
    gen = torch.Generator().manual_seed(0)
    model = LinearGaussianVAE(data_dim=6, latent_dim=3, sigma=0.5).eval()
    with torch.no_grad():
        model.decoder.weight.copy_(LinearGaussianVAE.orthogonal_weight(6, torch.tensor([2.0, 1.5, 1.0]), gen))
        model.decoder.bias.copy_(torch.randn(6, generator=gen))
        model.set_true_posterior()
        model.encoder.weight.add_(0.02 * torch.randn(3, 6, generator=gen))
        model.encoder_log_var.add_(0.2)
        x = model.decoder(torch.randn(300, 3, generator=gen)) + 0.5 * torch.randn(300, 6, generator=gen)
    return model, x


def test_nll_estimate_is_within_three_standard_errors_of_the_exact_value(ppca):
    model, x = ppca
    res = likelihood_metrics(model, x.split(100), iw_samples=500, seed=0)
    with torch.no_grad():
        truth = float(-model.exact_log_px(x).double().mean())
    assert res["num_examples"] == 300 and res["nll_stderr"] > 0
    assert abs(res["nll_nats"] - truth) < 3 * res["nll_stderr"]
    assert res["nll_nats"] <= -res["elbo_nats"]
    # the perturbed encoder leaves a gap the ELBO cannot close: the estimate is not just −ELBO
    assert -res["elbo_nats"] - truth > 10 * res["nll_stderr"]


def test_likelihood_metrics_are_deterministic_under_a_seed(ppca):
    model, x = ppca
    first = likelihood_metrics(model, x.split(100), iw_samples=50, seed=3)
    assert likelihood_metrics(model, x.split(100), iw_samples=50, seed=3) == first
    assert likelihood_metrics(model, x.split(100), iw_samples=50, seed=4)["nll_nats"] != first["nll_nats"]
    # the chunking over k changes memory, not the estimator: same seed, other chunks, close result
    chunked = likelihood_metrics(model, x.split(100), iw_samples=50, chunk_size=7, seed=3)
    assert abs(chunked["nll_nats"] - first["nll_nats"]) < 5 * first["nll_stderr"]


# --- which data the likelihood is measured on ------------------------------------------------------


def test_binarize_once_is_binary_deterministic_and_follows_the_intensities():
    images = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8)
    a, b = binarize_once(images, seed=0), binarize_once(images, seed=0)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, binarize_once(images, seed=1))
    assert torch.all(a[images == 0] == 0) and torch.all(a[images == 255] == 1)
    assert abs(float(a.mean()) - float(images.float().mean() / 255)) < 0.01  # 12,800 draws


def test_dequantize_stays_in_each_pixels_bin():
    images = torch.cat([torch.arange(256, dtype=torch.uint8).repeat(400), torch.full((100_000,), 255)])
    images = images.to(torch.uint8).view(-1, 1, 1, 1)
    x = dequantize(images, seed=0)
    assert x.dtype == torch.float32 and torch.equal(x, dequantize(images, seed=0))
    u = (x.double() + 1.0) / 2.0  # back to [0, 1) before the affine map
    v = images.double()
    assert torch.all(v / 256 <= u) and torch.all(u < (v + 1) / 256)
    frac = u * 256 - v  # the uniform noise: mean ½, spread over the whole bin
    assert abs(float(frac.mean()) - 0.5) < 0.01 and float(frac.min()) < 0.01 and float(frac.max()) > 0.99


def test_the_bits_per_dim_conversion_follows_the_data():
    images = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    assert likelihood_data(images, "bernoulli", 0)[1] == "binary"
    assert likelihood_data(images, "gaussian", 0)[1] == "8bit"
    assert to_bits_per_dim(100.0, 784, "binary") == pytest.approx(losses.bits_per_dim(100.0, 784))
    assert to_bits_per_dim(-100.0, 784, "8bit") == pytest.approx(
        losses.bits_per_dim_8bit(-100.0, 784, data_range=(-1.0, 1.0))
    )
    assert to_bits_per_dim(-100.0, 784, "8bit") != pytest.approx(losses.bits_per_dim_8bit(-100.0, 784))


# --- the feature classifier ----------------------------------------------------------------------


def _bars(n: int, seed: int) -> ImageData:
    """Three classes of noisy 12×12 images: a horizontal bar, a vertical bar, a centred square."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 1, 12, 12, generator=gen) * 80
    pos = torch.randint(2, 10, (n,), generator=gen)
    for i in range(n):
        p = int(pos[i])
        if labels[i] == 0:
            images[i, 0, p - 1 : p + 1, :] += 170
        elif labels[i] == 1:
            images[i, 0, :, p - 1 : p + 1] += 170
        else:
            images[i, 0, 4:8, 4:8] += 170
    data = ImageData("bars", "train", (12, 12), 1, images.clamp(0, 255).to(torch.uint8), labels)
    data.num_classes = 3
    return data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "EPOCHS", 8)  # 8 epochs of 300 tiny images: under a second
    return tmp_path / "cache"


def test_classifier_learns_is_cached_and_its_fingerprint_follows_the_data(cache, monkeypatch):
    train, test = _bars(300, seed=0), _bars(150, seed=1)
    net, info = features.load_or_train_classifier(train, test, progress=False)
    assert not info["cached"] and info["test_accuracy"] > 0.9
    assert info["fingerprint"] == features.fingerprint(train.images, train.labels)
    folder = cache / "classifiers" / f"bars-{info['fingerprint'][:16]}"
    assert {p.name for p in folder.iterdir()} == {"classifier.safetensors", "classifier.json"}

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(features, "train_classifier", no_training)
    again, info2 = features.load_or_train_classifier(train, test, progress=False)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    torch.testing.assert_close(
        features.extract_features(again, test.images), features.extract_features(net, test.images)
    )

    changed = train.images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert features.fingerprint(changed, train.labels) != info["fingerprint"]
    assert features.fingerprint(train.images, train.labels.roll(1)) != info["fingerprint"]
    with pytest.raises(AssertionError, match="trained again"):  # new data: no stale reuse
        features.load_or_train_classifier(_bars(300, seed=5), test, progress=False)


def test_training_the_classifier_is_deterministic(monkeypatch):
    monkeypatch.setattr(features, "EPOCHS", 1)
    train = _bars(200, seed=0)
    nets = [features.train_classifier(train.images, train.labels, 3) for _ in range(2)]
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_floor_is_small_next_to_noise(cache):
    train, test = _bars(300, seed=0), _bars(150, seed=1)
    net, _ = features.load_or_train_classifier(train, test, progress=False)
    noise = torch.randint(
        0, 256, test.images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    res = features.sample_quality(net, test.images, train.images[:150], noise, seed=0)
    assert res["frechet_distance_floor"] < 0.1 * res["frechet_distance"]
    assert res["kid_floor"] < 0.1 * res["kid"]
    assert res["precision"] < 0.2 and 0 <= res["recall"] <= 1


@pytest.mark.slow
def test_classifier_accuracy_on_mnist5k():
    train, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
    started = time.perf_counter()
    net = features.train_classifier(train.images, train.labels, 10)
    seconds = time.perf_counter() - started
    accuracy = features.classifier_accuracy(net, test.images, test.labels)
    print(f"mnist5k feature classifier: accuracy {accuracy:.3f} in {seconds:.1f} s")
    assert accuracy > 0.9 and seconds < 60


# --- `vaekit evaluate` on tiny runs --------------------------------------------------------------

VAE_ONLY = ("elbo_nats", "nll_nats", "nll_stderr", "bits_per_dim", "kl_per_dim", "active_units")
SAMPLE_KEYS = ("frechet_distance", "frechet_distance_floor", "kid", "kid_floor", "precision", "recall")
VQ_ONLY = ("codebook_usage", "perplexity", "dead_codes")


def test_evaluate_a_vae_run(vae_run, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "MAX_TRAIN_EXAMPLES", 1000)  # keys and sanity here, not accuracy
    monkeypatch.setattr(features, "EPOCHS", 1)
    out = tmp_path / "evaluation.json"
    res = evaluate_run(vae_run, iw_samples=20, progress=False, json_path=out, workers=2)
    assert json.loads(out.read_text()) == json.loads(
        json.dumps({k: v for k, v in res.items() if k != "json_path"})
    )
    for key in (*VAE_ONLY, *SAMPLE_KEYS, "recon_mse", "psnr", "ssim", "classifier_test_accuracy"):
        assert key in res, key
    assert not any(key in res for key in VQ_ONLY)
    assert res["num_examples"] == 500 and res["num_samples"] == 500 and res["iw_samples"] == 20
    assert res["workers"] == 2  # batches scored by two threads at once
    assert res["nll_nats"] <= -res["elbo_nats"] + 0.5 and res["nll_stderr"] > 0
    assert res["bits_per_dim_conversion"] == "binary" and "no offset" in res["data_note"]
    assert res["bits_per_dim"] == pytest.approx(losses.bits_per_dim(res["nll_nats"], 784))
    assert "grey levels" in res["data_note"]  # trained with data.binarize: false
    assert res["psnr"] > 0 and 0 <= res["ssim"] <= 1 and 0 < res["recon_mse"] < 1
    assert len(res["kl_per_dim"]) == 4 and 0 <= res["active_units"] <= 4
    assert res["frechet_distance_floor"] < res["frechet_distance"]
    assert "not inception" in res["feature_space_note"].lower()
    assert "NOT Inception" in format_table(res)


def test_evaluate_a_vq_vae_run_from_the_command_line(vq_run, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vaekit")
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "vq.json"
    cmd_evaluate(
        parser.parse_args(["evaluate", str(vq_run), "--json", str(out), "--device", "cpu", "--no-progress"])
    )
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert "codebook usage" in printed and str(out) in printed
    assert 0 < res["codebook_usage"] <= 1 and res["dead_codes"] == round(16 * (1 - res["codebook_usage"]))
    assert 1 <= res["perplexity"] <= 16
    assert res["psnr"] > 0 and 0 <= res["ssim"] <= 1
    assert not any(key in res for key in (*VAE_ONLY, *SAMPLE_KEYS))
    assert "prior" in res["sample_quality_note"]


def _untrained_run(directory, *overrides):
    """A run directory holding an untrained model: enough for evaluate_run, no training needed."""
    cfg = load_config(None, ["model.hidden_dims=[8,16]", "model.latent_dim=4", *overrides])
    save_config(cfg, directory / "config.yaml")
    torch.manual_seed(0)
    build_model(cfg.model.name, cfg.model.params, (1, 28, 28)).save_pretrained(
        directory / "checkpoints" / "best"
    )
    return directory


def test_a_gaussian_model_is_evaluated_on_dequantized_data_with_the_8bit_offset(tmp_path):
    run = _untrained_run(tmp_path / "gauss", "model.likelihood=gaussian")
    res = evaluate_run(run, iw_samples=4, sample_metrics=False, progress=False)
    assert (run / "evaluation.json").is_file()
    assert res["bits_per_dim_conversion"] == "8bit" and "dequantized" in res["data_note"]
    expected = losses.bits_per_dim_8bit(res["nll_nats"], 784, data_range=(-1.0, 1.0))
    assert res["bits_per_dim"] == pytest.approx(expected)
    assert "skipped" in res["sample_quality_note"] and "frechet_distance" not in res


def test_the_exemplar_fashion_protocol_checks_the_run(vae_run, tmp_path):
    with pytest.raises(VaekitError, match="fashion-mnist"):
        evaluate_run(vae_run, protocol="exemplar-fashion", progress=False, json_path=tmp_path / "x.json")
    fashion = ("data.name=fashion-mnist", "data.train_split=train-50k", "data.valid_split=valid-10k")
    grey = _untrained_run(tmp_path / "fashion-grey", *fashion)
    with pytest.raises(VaekitError, match="binarize=true"):  # the protocol trains on binarized data
        evaluate_run(grey, protocol="exemplar-fashion", progress=False)
    fashion += ("data.binarize=true",)
    run = _untrained_run(tmp_path / "fashion", *fashion)
    with pytest.raises(VaekitError, match="5000"):  # the protocol fixes k
        evaluate_run(run, protocol="exemplar-fashion", iw_samples=100, progress=False)
    gauss = _untrained_run(tmp_path / "fashion-gauss", *fashion, "model.likelihood=gaussian")
    with pytest.raises(VaekitError, match="bernoulli"):
        evaluate_run(gauss, protocol="exemplar-fashion", progress=False)
    no_valid = _untrained_run(tmp_path / "no-valid", *fashion, "data.valid_split=null")
    with pytest.raises(VaekitError, match="valid_split=valid-10k"):  # else "best" is picked on test
        evaluate_run(no_valid, protocol="exemplar-fashion", progress=False)
    resized = _untrained_run(tmp_path / "resized", *fashion, "data.image_size=32")
    with pytest.raises(VaekitError, match="native size"):
        evaluate_run(resized, protocol="exemplar-fashion", progress=False)
    assert PROTOCOLS["exemplar-fashion"].published["VAE"] == 228.70
    assert not any(p.exists() for p in (tmp_path / "x.json", run / "evaluation.json"))


@needs_fashion_mnist
def test_the_protocol_binarizes_the_test_set_with_its_own_seed(tmp_path, monkeypatch):
    # --seed moves the importance samples, never the protocol's test set (binarized once, seed 0)
    fashion = ("data.name=fashion-mnist", "data.train_split=train-50k", "data.valid_split=valid-10k")
    run = _untrained_run(tmp_path / "fashion", *fashion, "data.binarize=true")
    quick = dataclasses.replace(PROTOCOLS["exemplar-fashion"], iw_samples=2)
    monkeypatch.setitem(PROTOCOLS, "exemplar-fashion", quick)
    results = [
        evaluate_run(run, protocol="exemplar-fashion", seed=seed, sample_metrics=False, progress=False)
        for seed in (0, 7)
    ]
    assert [r["data_seed"] for r in results] == [0, 0] and [r["seed"] for r in results] == [0, 7]
    assert all("seed 0" in r["data_note"] for r in results)
    assert results[0]["recon_mse"] == results[1]["recon_mse"]  # the same binarized images
    assert results[0]["nll_nats"] != results[1]["nll_nats"]  # other importance samples


def test_nll_stderr_of_the_mean_combines_the_per_example_errors(ppca):
    model, x = ppca
    res = likelihood_metrics(model, [x], iw_samples=30, chunk_size=30, seed=0)
    generator = next(batch_generators(0, x.device))  # one batch, the same seed: the same draws
    with torch.no_grad():
        log_px, se = model.log_px(x, 30, 30, generator)  # [300], [300]
    assert res["nll_nats"] == pytest.approx(float(-log_px.double().mean()), rel=1e-6)
    assert res["nll_stderr"] == pytest.approx(float(se.double().pow(2).sum().sqrt()) / 300, rel=1e-6)
