"""Evaluate a trained model: likelihood, reconstructions, latent and codebook statistics, sample quality.

**Which data the likelihood is measured on.** A likelihood is only comparable when the data are:

* Bernoulli decoder — the split is binarized **once** with a fixed seed (``x ~ Bernoulli(v/255)``,
  generator seeded by ``seed``), the standard protocol for binarized MNIST-likes. p(x) is then a
  probability of discrete data: bits/dim = NLL / (D ln 2), no offset. A model trained on grey
  levels (``data.binarize: false``) is still evaluated on the binarized split; ``data_note`` says so.
* Gaussian decoder (8-bit pixels v mapped to [-1, 1]) — the split is dequantized once,
  ``x = 2 (v + u)/256 − 1`` with u ~ U(0, 1) from a seeded generator (Theis et al. 2016), and the
  density on x converts to bits/dim of the 8-bit data with the log-256 offset
  (:func:`vaekit.losses.bits_per_dim_8bit` with ``data_range=(-1, 1)``).

log p(x) is the importance-sampled estimate with k samples of q(z|x) (Burda et al. 2016) and its
delta-method standard error; the standard error of the split mean is ``sqrt(Σ se_i²) / N``.
Reconstructions (from μ, or the nearest codes) are scored on the data the model was trained on,
in [0, 1]. Sample quality lives in :mod:`vaekit.features` (not Inception FID).
:func:`vaekit.runs.evaluate_run` applies :func:`evaluate_model` to a run directory.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from vaekit import features, metrics
from vaekit.data import ImageData, likelihood_data, make_loader, to_model_range, to_unit_range
from vaekit.errors import VaekitError
from vaekit.losses import bits_per_dim, bits_per_dim_8bit, monte_carlo_kl, reparameterize
from vaekit.models import VQVAE, AutoEncoder, GaussianLatentVAE, Model
from vaekit.nn import CacheTiledSequential, ConvTranspose2d
from vaekit.threads import intra_op_threads, map_in_threads

DEFAULT_IW_SAMPLES = 1000
DEFAULT_BATCH_SIZE = 100
# Floats of the widest activation of one log_px call: the model's widest layer for one sample
# (:func:`widest_activation`) × the images × samples decoded at once. A CPU is fastest with calls
# whose activations stay near its caches. On one AVX-512 core, chunk sizes alternated: the MLP VAE
# (784 floats a sample at its widest) ran as fast with 500 to 4000 samples per call and 25% slower
# with 10,000; ConvVAE [16, 32] (3136) a third faster with 1000 than with 4000; VanillaVAE [32, 64, 128]
# (25,088) 60% faster with 100 than with 1000. (On a machine oversubscribed by other jobs,
# multi-threaded runs favour larger calls instead: every op waits for its threads to be scheduled.)
# Compiled, the layers of a CacheTiledSequential take fixed tiles and do not count: the VanillaVAE
# then scores 600 samples a call. A GPU wants large calls.
ACTIVATION_BUDGET = {"cpu": 4_000_000, "cuda": 160_000_000}
# The likelihood holds two image-sized buffers a sample (the decoder's logits and their elementwise
# log-probabilities, or inductor's fused pass reading the logits back), so a sample counts at least
# twice an image. It binds only where the output is the widest activation (the MLP VAE): on a 2-core
# AMD EPYC (32 MiB L3 shared with other machines) its compiled log p(x) at 2 threads took 0.55 ms
# per sample of 100 images with 1800 to 3600 samples a call and 0.63 with 5100 (4M floats of
# logits); ConvVAE [16, 32] was fastest with its 1200 (its 3136-float maps bind first).
LIKELIHOOD_BUFFERS = 2
ModuleT = TypeVar("ModuleT", bound=nn.Module)
DATA_NOTES = {
    "binary": "binary data: no offset; the split binarized once (seed {seed})",
    "8bit": "8-bit data: dequantized once (seed {seed}); bits/dim include the log 256 offset",
}


@dataclass(frozen=True)
class Protocol:
    """A published evaluation protocol: what the run must be, and the numbers to compare with."""

    description: str
    data: str
    likelihood: str
    train_split: str
    binarize: bool  # dynamic binarization while training
    split: str
    iw_samples: int
    valid_split: str  # model selection and early stopping, never on the test split
    data_seed: int = 0  # the test set's one binarization: fixed, whatever --seed samples with
    published: dict[str, float] = field(default_factory=dict)  # test NLL in nats


PROTOCOLS: dict[str, Protocol] = {
    "exemplar-fashion": Protocol(
        "dynamically binarized Fashion-MNIST, 50k train / 10k valid / 10k test, the test set binarized "
        "once with a fixed seed, k = 5000 (as in Norouzi et al. 2020, Exemplar VAE)",
        data="fashion-mnist",
        likelihood="bernoulli",
        train_split="train-50k",
        binarize=True,
        split="test",
        iw_samples=5000,
        valid_split="valid-10k",
        published={"VAE": 228.70, "VampPrior": 227.35, "Exemplar VAE": 226.75, "ConvHVAE": 225.38},
    )
}


# --- the data the numbers are measured on (made by vaekit.data.likelihood_data) -----------------


def to_bits_per_dim(nll_nats: float, num_dims: int, conversion: str) -> float:
    """NLL in nats per example → bits/dim: no offset for binary data, log 256 for 8-bit data in [-1, 1]."""
    if conversion == "binary":
        return float(bits_per_dim(nll_nats, num_dims))
    return float(bits_per_dim_8bit(nll_nats, num_dims, data_range=(-1.0, 1.0)))


# --- the metrics, each from an iterable of batches in the model's range ---------------------------


def auto_chunk(batch: Tensor, num_samples: int, per_sample: int | None = None) -> int:
    """Samples per decoder call such that batch × chunk × ``per_sample`` floats stay within the
    device's :data:`ACTIVATION_BUDGET`; ``per_sample`` is the widest activation of one sample
    (:func:`widest_activation`), and at least :data:`LIKELIHOOD_BUFFERS` examples of ``batch``."""
    budget = ACTIVATION_BUDGET.get(batch.device.type, ACTIVATION_BUDGET["cuda"])
    per_sample = max(per_sample or 0, LIKELIHOOD_BUFFERS * batch[0].numel())
    return max(1, min(num_samples, budget // (len(batch) * per_sample)))


def widest_activation(model: AutoEncoder, x: Tensor, compiled: bool = False) -> int:
    """Floats of the largest output of any module in ``model.log_px`` of one example and one sample
    (a probe with forward hooks; torch's RNG is restored after it). Outputs of other batch sizes,
    such as a VampPrior's encoded pseudo-inputs, are not per sample and are left out. ``compiled``:
    the model's scoring is compiled (``compile_scoring``), where a
    :class:`~vaekit.nn.CacheTiledSequential` takes the batch in tiles of a fixed size, so the
    activations inside it do not grow with the chunk and only its output counts."""
    sizes = [x[0].numel()]

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() and output.shape[0] == 1:
            sizes.append(output.numel())

    tiled = [m for m in model.modules() if isinstance(m, CacheTiledSequential)] if compiled else []
    inside_tiles = {id(sub) for block in tiled for sub in block.modules() if sub is not block}
    probed = [m for m in model.modules() if not any(m.children()) and id(m) not in inside_tiles] + tiled
    hooks = [m.register_forward_hook(record) for m in probed]
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            model.log_px(x[:1], 1, 1)
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


@torch.no_grad()
def fold_batchnorm(model: ModuleT) -> ModuleT:
    """An inference copy of ``model`` (in eval mode) with every BatchNorm that directly follows a
    convolution in an ``nn.Sequential`` folded into that convolution's weight and bias.

    In eval mode a BatchNorm is the affine map ``y = γ (x − μ) / √(σ² + ε) + β`` per channel, so the
    convolution before it can compute it: ``w' = w γ/√(σ² + ε)`` (per output channel), ``b' = (b − μ)
    γ/√(σ² + ε) + β``. The same function up to float rounding, one pass over the activations
    fewer (about 10% of the time of the seed's ``VanillaVAE`` decoder on a CPU). ``model`` is not changed;
    without such pairs the copy is returned as it is.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for i, (conv, bn) in enumerate(itertools.pairwise(layers)):
            transpose = isinstance(conv, nn.ConvTranspose2d)
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                and type(bn) is nn.BatchNorm2d
                and bn.running_mean is not None
                and conv.groups == 1
                and bn.num_features == conv.out_channels
            ):
                module[i] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                module[i + 1] = nn.Identity()
    return folded


def fuse_activations(model: ModuleT) -> ModuleT:
    """In place: each :class:`vaekit.nn.ConvTranspose2d` that an ``nn.ReLU`` or ``nn.LeakyReLU``
    follows in an ``nn.Sequential`` (past any ``nn.Identity``, which is what :func:`fold_batchnorm`
    leaves of a BatchNorm) takes that activation as its ``activation``, and the activation's place
    becomes an ``nn.Identity``: the same function, computed eagerly without autograd on a CPU as one
    oneDNN call with the bias and the activation as post-ops, where two passes over the output added
    them (the VanillaVAE's eager log p(x) 1.2–1.3× faster; docs/performance.md). Returns ``model``.
    """
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for i, conv in enumerate(layers):
            if not isinstance(conv, ConvTranspose2d) or conv.activation is not None:
                continue
            after = next((j for j in range(i + 1, len(layers)) if type(layers[j]) is not nn.Identity), None)
            if after is not None and type(layers[after]) in (nn.ReLU, nn.LeakyReLU):
                conv.activation = layers[after]
                module[after] = nn.Identity()
    return model


def inference_copy(model: ModuleT) -> ModuleT:
    """The copy of ``model`` the evaluator scores with: :func:`fold_batchnorm`, then
    :func:`fuse_activations`. The same function up to float rounding; ``model`` is not changed."""
    return fuse_activations(fold_batchnorm(model))


def batch_generators(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """The generator each batch of a likelihood pass draws from, in the batches' order: the i-th is
    seeded with the i-th 63-bit draw of a CPU generator seeded with ``seed``. A batch's draws then
    depend on ``seed`` and its place, not on which thread scores it or when."""
    seeds = torch.Generator().manual_seed(seed)
    while True:
        batch_seed = int(torch.randint(2**63 - 1, (), generator=seeds))
        yield torch.Generator(device).manual_seed(batch_seed)


def likelihood_metrics(
    model: AutoEncoder,
    batches: Iterable[Tensor],
    iw_samples: int = DEFAULT_IW_SAMPLES,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    compile: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Mean ELBO, importance-sampled NLL (k = ``iw_samples``) and its standard error, in nats:
    :func:`score_likelihood` on :func:`inference_copy`'s copy of ``model``, in eval mode. With
    ``compile`` the copy's per-sample work is ``torch.compile``d
    (:meth:`~vaekit.models.AutoEncoder.compile_scoring`: seconds of compiling, then the MLP VAE's
    importance samples 1.3–1.8× faster on a CPU; needs a C++ compiler there); the estimate is the
    same up to float rounding. ``workers``: see :func:`score_likelihood`."""
    model.eval()
    fast = inference_copy(model)
    if compile:
        fast.compile_scoring()
    return score_likelihood(fast, batches, iw_samples, chunk_size, seed, progress, compile, workers)


def score_likelihood(
    fast: AutoEncoder,
    batches: Iterable[Tensor],
    iw_samples: int = DEFAULT_IW_SAMPLES,
    chunk_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    compiled: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """:func:`likelihood_metrics` of a model already prepared for scoring: ``fast`` an
    :func:`inference_copy` in eval mode, ``compiled`` if its scoring is compiled.

    Each batch draws from its own generator (:func:`batch_generators` of ``seed``; torch's global
    one is not used) and is scored under ``torch.inference_mode``. A model whose
    :meth:`~vaekit.models.AutoEncoder.log_px` is not an importance-sampled estimate but its ELBO
    itself (it says so in ``log_px_note``: a VQ-VAE, whose q(z|x) is one code map) is scored once
    per batch, its ELBO standing for both, with standard error 0.

    ``workers``: on a CPU, batches scored at once, each by a thread of one intra-op thread
    (:func:`vaekit.threads.map_in_threads`); by default torch's intra-op thread count; on a GPU
    one. The numbers do not depend on ``workers`` beyond float rounding. torch.compile keeps a
    graph per intra-op thread count (its kernels are made for one), so before workers start, a
    compiled model runs once in the calling thread at one intra-op thread on the first batch's
    shapes: the workers find those graphs made, instead of each compiling them at once.
    """
    device = next(fast.parameters()).device
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    bound_only = fast.log_px_note is not None  # log_px would compute elbo again
    total = len(batches) if isinstance(batches, Sized) else None
    scored = zip(batches, batch_generators(seed, device), strict=False)
    first = next(scored, None)
    if first is None:
        raise ValueError("score_likelihood needs at least one batch")
    x_first = first[0].to(device)
    per_sample = None if bound_only or chunk_size else widest_activation(fast, x_first, compiled)

    def chunk_for(x: Tensor) -> int:
        return chunk_size or auto_chunk(x, iw_samples, per_sample)

    def score(batch: tuple[Tensor, torch.Generator]) -> tuple[float, float, float, int]:
        """(Σ ELBO, Σ −log p(x), Σ se², images) of one batch."""
        x, generator = batch
        with torch.inference_mode():  # per thread: set here, not around the map
            x = x.to(device)
            if bound_only:
                elbo = log_px = fast.elbo(x)  # [B]
                stderr = torch.zeros_like(elbo)
            else:
                log_px, stderr = fast.log_px(x, iw_samples, chunk_for(x), generator)  # [B], [B]
                elbo = fast.elbo(x, generator=generator)  # [B]
        nll = -float(log_px.double().sum())
        return float(elbo.double().sum()), nll, float(stderr.double().pow(2).sum()), len(x)

    if compiled and workers > 1:
        with intra_op_threads(1):
            _compile_shapes(fast, x_first, iw_samples, None if bound_only else chunk_for(x_first))
    batches_scored = itertools.chain([first], scored)  # [(x, its generator)]
    elbo_sum = nll_sum = se2_sum = 0.0
    n = 0
    with tqdm(desc=f"log p(x), k={iw_samples}", total=total, disable=not progress, leave=False) as bar:
        for batch_elbo, batch_nll, batch_se2, size in map_in_threads(score, batches_scored, workers):
            elbo_sum += batch_elbo
            nll_sum += batch_nll
            se2_sum += batch_se2
            n += size
            bar.update()
            bar.set_postfix(nll=f"{nll_sum / n:.3f}")
    return {
        "elbo_nats": elbo_sum / n,
        "nll_nats": nll_sum / n,
        "nll_stderr": math.sqrt(se2_sum) / n,
        "iw_samples": iw_samples,
        "chunk_size": chunk_size if bound_only else chunk_for(x_first),  # a whole batch's
        "num_examples": n,
        "workers": workers,
    }


@torch.inference_mode()
def _compile_shapes(fast: AutoEncoder, x: Tensor, iw_samples: int, chunk: int | None) -> None:
    """Run ``fast``'s compiled scoring once on each shape a batch like ``x`` calls it with (a whole
    chunk of samples, the last partial one, the ELBO; ``chunk`` None: the ELBO alone), drawing from
    a generator of its own; the results are thrown away."""
    generator = torch.Generator(x.device).manual_seed(0)
    if chunk is not None:
        for samples in {chunk, iw_samples % chunk} - {0}:
            fast.log_px(x, samples, samples, generator)
    fast.elbo(x, generator=generator)


@torch.no_grad()
def reconstruction_metrics(model: AutoEncoder, batches: Iterable[Tensor]) -> dict[str, float]:
    """Mean squared error, PSNR and SSIM of deterministic reconstructions, on images in [0, 1]."""
    model.eval()
    kind, sq_err, psnr, ssim, n = model.likelihood.kind, 0.0, 0.0, 0.0, 0
    for x in batches:
        x = x.to(next(model.parameters()).device)
        target, recon = to_unit_range(x, kind), to_unit_range(model.reconstruct(x), kind)  # [B, C, H, W]
        sq_err += float((recon - target).double().pow(2).flatten(1).mean(1).sum())
        psnr += float(metrics.psnr(recon, target).sum())
        ssim += float(metrics.ssim(recon, target).sum())
        n += len(x)
    return {"recon_mse": sq_err / n, "psnr": psnr / n, "ssim": ssim / n}


@torch.no_grad()
def latent_metrics(
    model: GaussianLatentVAE,
    batches: Iterable[Tensor],
    threshold: float = 0.01,
    kl_samples: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """KL(q(z|x) ‖ p(z)) (mean over the split) and Burda et al.'s active units.

    Under N(0, I) the KL is exact and also given per latent dimension (``kl_per_dim``). A VampPrior
    does not factorise over dimensions, so only the total is given, a Monte-Carlo estimate from
    ``kl_samples`` draws of z ~ q(z|x) per example (torch's RNG seeded with ``seed``, then restored).
    """
    model.eval()
    device = next(model.parameters()).device
    mus, log_vars = zip(*(model.encode(x.to(device)) for x in batches), strict=True)
    mu, log_var = torch.cat(mus), torch.cat(log_vars)  # [N, D]
    count, _ = metrics.active_units(mu, threshold)
    out: dict[str, Any] = {}
    components = model.prior_components()
    if components is None:
        kl = metrics.kl_per_dim(mu, log_var)
        out |= {"kl_per_dim": kl.tolist(), "kl_nats": float(kl.sum())}
    else:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            z = reparameterize(mu, log_var, kl_samples)  # [S, N, D]
            log_prior = model.prior_log_prob(z, components)  # [S, N]
        kl_per_example = monte_carlo_kl(log_var, log_prior.mean(dim=0))  # [N]
        out |= {"kl_nats": float(kl_per_example.double().mean()), "kl_samples": kl_samples}
    return out | {"active_units": count, "active_unit_threshold": threshold, "latent_dim": mu.shape[1]}


@torch.no_grad()
def codebook_metrics(model: VQVAE, batches: Iterable[Tensor]) -> dict[str, Any]:
    """Fraction of the codes used on the split, perplexity of their use, and dead codes; with a prior
    over codes, its mean negative log-likelihood of the split's code maps (nats per map, and bits
    per code)."""
    model.eval()
    counts = torch.zeros(model.num_embeddings, dtype=torch.long)
    prior_nll, n = 0.0, 0
    for x in batches:
        indices = model.encode_indices(x.to(next(model.parameters()).device))  # [B, h, w]
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.num_embeddings)
        if model.code_prior is not None:
            prior_nll -= float(model.prior_log_prob(indices).double().sum())
            n += len(indices)
    out: dict[str, Any] = {
        "codebook_usage": metrics.codebook_usage(counts),
        "perplexity": metrics.perplexity(counts),
        "dead_codes": metrics.dead_codes(counts),
        "num_embeddings": model.num_embeddings,
    }
    if n:
        positions = model.latent_shape[1] * model.latent_shape[2]
        out |= {
            "prior_nll_nats": prior_nll / n,
            "prior_bits_per_code": prior_nll / n / (positions * math.log(2)),
        }
    return out


# --- during training: the mean loss terms over a split ---------------------------------------------


@torch.no_grad()
def evaluate_loss(model: Model, data: ImageData, cfg: Any, device: torch.device) -> dict[str, float]:
    """Mean of the terms of ``model.loss_function`` per example over a whole split (β = 1: the ELBO),
    in eval mode, batched as ``cfg.train.batch_size``.

    The split is binarized (if at all) with a fixed seed, so every evaluation sees the same data, and
    the reparameterization noise comes from a fixed seed too, in a forked RNG: the same weights always
    get the same numbers, and evaluating leaves the training run's random stream untouched.
    """
    was_training = model.training
    model.eval()
    loader = make_loader(
        data,
        cfg.train.batch_size,
        model.input_kind,
        shuffle=False,
        drop_last=False,
        seed=1234,
        binarize=cfg.data.binarize,
        num_workers=cfg.data.num_workers,
    )
    sums: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        for x, labels in loader:
            x, labels = x.to(device), labels.to(device) if labels is not None else None
            terms = model.loss_function(*model(x, labels=labels), beta=1.0)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(x)
            count += len(x)
    model.train(was_training)
    return {key: value / count for key, value in sums.items()}


# --- a trained model on a split -------------------------------------------------------------------


def _split_images(data: ImageData) -> Tensor:
    """All images of a split as one uint8 tensor ``[N, C, H, W]``."""
    if data.images is not None:
        return data.images
    return torch.cat(list(torch.utils.data.DataLoader(data.dataset, batch_size=256)))


def _check_protocol(name: str, cfg: Any, model: AutoEncoder, split: str, iw_samples: int | None) -> Protocol:
    if name not in PROTOCOLS:
        raise VaekitError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    d = cfg.data
    native = d.image_size is None and d.channels is None  # the published numbers are at 28×28×1
    found = (d.name, model.likelihood.kind, d.train_split, d.valid_split, d.binarize, native)
    expected = (p.data, p.likelihood, p.train_split, p.valid_split, p.binarize, True)
    if not model.estimates_log_px or found != expected:
        raise VaekitError(
            f"protocol {name} needs a VAE trained on {p.data} at its native size (data.train_split="
            f"{p.train_split}, data.valid_split={p.valid_split}, data.binarize={str(p.binarize).lower()}, "
            f"data.image_size and data.channels null) with a {p.likelihood} likelihood; this run is a "
            f"{type(model).__name__} on {d.name} (train_split={d.train_split}, valid_split="
            f"{d.valid_split}, binarize={str(d.binarize).lower()}, image_size={d.image_size}, "
            f"channels={d.channels}) with a {model.likelihood.kind} likelihood"
        )
    if iw_samples not in (None, p.iw_samples) or split != p.split:
        raise VaekitError(
            f"protocol {name} fixes --split {p.split} and --iw-samples {p.iw_samples}; leave them out"
        )
    return p


#: The statistics of each kind of latent (:attr:`vaekit.models.AutoEncoder.latent_type`).
LATENT_METRICS = {"gaussian": latent_metrics, "discrete": codebook_metrics}


def evaluate_model(
    cfg: Any,
    model: AutoEncoder,
    split: str,
    load_split: Callable[[str], ImageData],
    iw_samples: int | None = None,
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    sample_metrics: bool = True,
    progress: bool = True,
    compile: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Every metric that applies to ``model`` (trained with config ``cfg``) on the data of ``split``.

    log p(x) when the model estimates it, reconstruction, the statistics of its kind of latent, and
    sample quality when it can sample and the data are labelled (the feature classifier learns from
    the training split). ``load_split(name)`` gives a split of the run's data; it is called after
    a protocol's checks. ``iw_samples`` defaults to 1000 (a protocol fixes its own); ``batch_size``
    to 100; ``compile`` and ``workers``: see :func:`likelihood_metrics`.
    """
    proto = _check_protocol(protocol, cfg, model, split, iw_samples) if protocol else None
    k = proto.iw_samples if proto else (iw_samples or DEFAULT_IW_SAMPLES)
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if k < 1 or batch_size < 1:
        raise VaekitError(f"--iw-samples and --batch-size must be positive, got {k} and {batch_size}")
    if workers is not None and workers < 1:
        raise VaekitError(f"--workers must be positive, got {workers}")
    data_seed = proto.data_seed if proto else seed
    data = load_split(split)
    images, kind = _split_images(data), model.likelihood.kind  # [N, C, H, W] uint8
    res: dict[str, Any] = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "split": split,
        "num_examples": len(images),
        "likelihood": kind,
        "seed": seed,
        "data_seed": data_seed,
        "batch_size": batch_size,
    }
    timings: dict[str, float] = {}
    started = time.perf_counter()
    x_eval, conversion = likelihood_data(images, kind, data_seed)
    x_recon = x_eval if kind == "bernoulli" and cfg.data.binarize else to_model_range(images, kind)
    if model.estimates_log_px:
        batches = x_eval.split(batch_size)
        res.update(
            likelihood_metrics(
                model, batches, k, seed=seed, progress=progress, compile=compile, workers=workers
            )
        )
        if model.log_px_note:
            res["nll_note"] = model.log_px_note
        res["bits_per_dim"] = to_bits_per_dim(res["nll_nats"], images[0].numel(), conversion)
        res["bits_per_dim_conversion"] = conversion
        res["data_note"] = DATA_NOTES[conversion].format(seed=data_seed)
        if kind == "bernoulli" and not cfg.data.binarize:
            res["data_note"] += "; the model was trained on grey levels, evaluated on the binarized split"
        timings["likelihood"] = time.perf_counter() - started
    res.update(reconstruction_metrics(model, x_recon.split(batch_size)))
    res.update(LATENT_METRICS[model.latent_type](model, x_recon.split(batch_size)))
    timings["reconstruction_latents"] = time.perf_counter() - started - sum(timings.values())

    if not sample_metrics:
        res["sample_quality_note"] = "skipped (--no-sample-metrics)"
    elif not model.can_sample:
        res["sample_quality_note"] = (
            f"a {type(model).__name__} without a prior cannot sample: no sample metrics"
        )
    elif data.labels is None:
        res["sample_quality_note"] = "unlabelled data: no classifier to define features, no sample metrics"
    else:
        train = load_split(cfg.data.train_split)
        res.update(features.model_sample_quality(model, train, data, seed, batch_size, progress))
        timings["sample_quality"] = time.perf_counter() - started - sum(timings.values())
    if proto is not None:
        res.update(protocol=protocol, protocol_description=proto.description, published=proto.published)
    res["timings_s"] = {key: round(value, 2) for key, value in timings.items()}
    return res
