"""A small image classifier whose penultimate layer is vaekit's feature space for sample quality.

Fréchet distance, KID and precision/recall need features in which distances mean something.
Inception-v3 features (FID proper) need a 100 MB download trained on ImageNet photographs;
vaekit instead trains a small CNN on the labelled training split of the data set being modelled:
four 3×3 conv layers (strides 2, 2, 1, 2) with BatchNorm and ReLU, global average pooling to a
128-d feature vector, then a linear classifier. It trains for :data:`EPOCHS` epochs with Adam
(one-cycle schedule) on at most :data:`MAX_TRAIN_EXAMPLES` images, deterministically (seed 0),
small enough to train on a CPU; its test accuracy is part of every evaluation's results.

The trained network is cached in the user cache directory (``$VAEKIT_CACHE``, else
``$XDG_CACHE_HOME/vaekit``, else ``~/.cache/vaekit``) under ``classifiers/<data>-<fingerprint>/``
as ``classifier.safetensors`` plus ``classifier.json`` (no pickle). The fingerprint is the sha256 of
the training images' bytes and shape, their labels and :data:`CLASSIFIER_VERSION`, so new data
or a new architecture trains a new classifier and nothing stale is ever reused.

Numbers in this feature space are comparable between vaekit runs on the same data set only —
they are **not** Inception FID/KID and cannot be compared with published values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from vaekit import metrics
from vaekit.checkpoint import atomic_write_bytes, load_state, read_json, read_tensors, save_tensors
from vaekit.data import ImageData
from vaekit.data._util import cache_home
from vaekit.errors import VaekitError
from vaekit.visualize import sample_images

#: Part of every fingerprint: change it whenever the architecture or the training recipe changes.
CLASSIFIER_VERSION = "vaekit-featurenet-v2"
CLASSIFIER_SEED = 0
FEATURE_DIM = 128
MAX_TRAIN_EXAMPLES = 10_000
EPOCHS = 5
BATCH_SIZE = 128
LR = 5e-3  # peak of the one-cycle schedule
MAX_SAMPLES = 10_000
FEATURE_SPACE_NOTE = (
    "features: the 128-d penultimate layer of a small CNN classifier vaekit trained on this data "
    "set — NOT Inception FID/KID; comparable only with other vaekit evaluations on the same data"
)


def cache_dir() -> Path:
    """``$VAEKIT_CACHE``, else ``$XDG_CACHE_HOME/vaekit``, else ``~/.cache/vaekit``."""
    env = os.environ.get("VAEKIT_CACHE")
    return Path(env).expanduser() if env else cache_home()


def fingerprint(images: Tensor, labels: Tensor) -> str:
    """sha256 hex digest of :data:`CLASSIFIER_VERSION`, the images' shape and bytes and the labels."""
    h = hashlib.sha256()
    h.update(CLASSIFIER_VERSION.encode())
    h.update(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureNet(nn.Module):
    """conv3×3/2 (C→2w) → conv3×3/2 (→4w) → conv3×3 (→4w) → conv3×3/2 (→128), each with BN + ReLU,
    global mean → linear classifier.

    Input: images ``[B, C, H, W]`` in [0, 1], any size (28×28 ends at 4×4 before pooling).
    ``features`` is the 128-d pooled vector, ``forward`` the class logits.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(in_channels, 2 * width, 2),
            *block(2 * width, 4 * width, 2),
            *block(4 * width, 4 * width, 1),
            *block(4 * width, feature_dim, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] → ``[B, feature_dim]``."""
        return self.body(x * 2.0 - 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _unit(images: Tensor) -> Tensor:
    """uint8 pixels → float in [0, 1]; float images are taken to be in [0, 1] already."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    seed: int = CLASSIFIER_SEED,
    progress: bool = False,
    epochs: int | None = None,
    max_examples: int | None = None,
) -> FeatureNet:
    """Train a :class:`FeatureNet` on ``images`` (uint8 ``[N, C, H, W]``) and ``labels`` ``[N]``.

    A fixed random subset of at most ``max_examples`` (default :data:`MAX_TRAIN_EXAMPLES`) images,
    ``epochs`` (default :data:`EPOCHS`) epochs of Adam with a one-cycle schedule peaking at
    :data:`LR`, batch :data:`BATCH_SIZE`; initialisation and order depend only on ``seed``.
    """
    epochs = EPOCHS if epochs is None else epochs
    max_examples = MAX_TRAIN_EXAMPLES if max_examples is None else max_examples
    gen = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(images), generator=gen)[:max_examples]
    images, labels = images[subset], labels[subset].long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], num_classes)
    total = epochs * math.ceil(len(images) / BATCH_SIZE)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=total)
    net.train()
    bar = tqdm(total=total, desc="feature classifier", disable=not progress, leave=False)
    for _ in range(epochs):
        for sel in torch.randperm(len(images), generator=gen).split(BATCH_SIZE):
            loss = nn.functional.cross_entropy(net(_unit(images[sel])), labels[sel])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, images: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate-layer features ``[N, 128]`` of images (uint8, or float in [0, 1]) ``[N, C, H, W]``."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net.features(_unit(b).to(device)).cpu() for b in images.split(batch_size)])


@torch.no_grad()
def classifier_accuracy(net: FeatureNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Fraction of ``images`` whose arg-max class equals ``labels``."""
    net.eval()
    device = next(net.parameters()).device
    correct = sum(
        int((net(_unit(b).to(device)).argmax(1).cpu() == y).sum())
        for b, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / len(images)


def load_or_train_classifier(
    train: ImageData, test: ImageData, progress: bool = True
) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature classifier for ``train``'s data set: from the cache, or trained and cached.

    Returns the network (eval mode, CPU) and its ``classifier.json`` record: fingerprint, version,
    ``test_accuracy`` on ``test`` (recomputed if the cached one was measured on another split),
    ``train_seconds``, ``cached`` (True when it was loaded, not trained) and ``path``.
    Both splits must be labelled and in memory.
    """
    if train.labels is None or test.labels is None or train.num_classes is None:
        raise ValueError(f"{train.name} is unlabelled: no feature classifier can be trained on it")
    digest = fingerprint(train.images, train.labels)
    folder = cache_dir() / "classifiers" / f"{train.name}-{digest[:16]}"
    weights, record_path = folder / "classifier.safetensors", folder / "classifier.json"
    test_id = {"test_split": test.split, "test_examples": len(test)}
    if record_path.is_file() and weights.is_file():
        fix = f"delete {folder} and run again to retrain it"
        try:
            record = read_json(record_path)
        except VaekitError:
            raise VaekitError(f"{record_path} is damaged or not vaekit's (not JSON); {fix}") from None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise VaekitError(f"{record_path} is damaged or not vaekit's (no config); {fix}")
        if record.get("fingerprint") == digest:
            try:
                net = FeatureNet(**record["config"])
            except TypeError as err:
                raise VaekitError(f"{record_path} is damaged or not vaekit's ({err}); {fix}") from None
            try:
                state = read_tensors(weights)
            except VaekitError:
                raise VaekitError(f"{weights} is damaged or not a safetensors file; {fix}") from None
            load_state(net, state, weights)
            net.eval()
            if {k: record.get(k) for k in test_id} != test_id:
                record |= test_id | {"test_accuracy": classifier_accuracy(net, test.images, test.labels)}
            return net, record | {"cached": True, "path": str(folder)}
    if progress:
        print(
            f"vaekit: training the feature classifier for {train.name} (once; cached in {folder})",
            file=sys.stderr,
        )
    started = time.perf_counter()
    net = train_classifier(train.images, train.labels, train.num_classes, progress=progress)
    record = {
        "version": CLASSIFIER_VERSION,
        "fingerprint": digest,
        "data": train.name,
        "train_split": train.split,
        "train_examples": min(len(train), MAX_TRAIN_EXAMPLES),
        "epochs": EPOCHS,
        "seed": CLASSIFIER_SEED,
        "config": net.config,
        "train_seconds": round(time.perf_counter() - started, 2),
        **test_id,
        "test_accuracy": classifier_accuracy(net, test.images, test.labels),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(net.state_dict(), weights)
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())  # last: marks it complete
    return net, record | {"cached": False, "path": str(folder)}


def sample_quality(
    net: FeatureNet, real: Tensor, reference: Tensor, fake: Tensor, seed: int = 0
) -> dict[str, float]:
    """Fréchet distance, KID and precision/recall of ``fake`` against ``real`` images (uint8 or [0, 1])
    in the classifier's feature space; ``reference`` (more real images, e.g. from the training split)
    gives the floor that real data itself reaches (``*_floor``)."""
    f_real, f_ref, f_fake = (extract_features(net, im) for im in (real, reference, fake))
    gen = torch.Generator().manual_seed(seed)
    kid, kid_std = metrics.kernel_inception_distance(f_real, f_fake, generator=gen)
    kid_floor, _ = metrics.kernel_inception_distance(f_real, f_ref, generator=gen)
    precision, recall = metrics.precision_recall(f_real, f_fake)
    return {
        "frechet_distance": metrics.frechet_distance(f_real, f_fake),
        "frechet_distance_floor": metrics.frechet_distance(f_real, f_ref),
        "kid": kid,
        "kid_std": kid_std,
        "kid_floor": kid_floor,
        "precision": precision,
        "recall": recall,
        "num_samples": len(fake),
    }


def model_sample_quality(
    model: nn.Module,
    train: ImageData,
    test: ImageData,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`sample_quality` of N = min(len(test), 10000) prior samples of a VAE against N test images,
    with N training images as the floor, in the features of the cached classifier for ``train``."""
    net, info = load_or_train_classifier(train, test, progress=progress)
    n, gen = min(len(test), MAX_SAMPLES), torch.Generator().manual_seed(seed)
    fake = torch.cat([sample_images(model, len(b), gen) for b in torch.arange(n).split(batch_size)])
    real = test.images[torch.randperm(len(test), generator=gen)[:n]]  # [n, C, H, W] uint8
    reference = train.images[torch.randperm(len(train), generator=gen)[:n]]
    device = next(model.parameters()).device
    return sample_quality(net.to(device), real, reference, fake, seed) | {
        "feature_space_note": FEATURE_SPACE_NOTE,
        "classifier_test_accuracy": info["test_accuracy"],
        "classifier": {key: info[key] for key in ("fingerprint", "version", "test_split", "cached", "path")},
    }
