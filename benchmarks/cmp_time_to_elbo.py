"""Training time to a test ELBO of −237.5 nats on dynamically binarized Fashion-MNIST: vaekit against
pythae 0.1.2's VAE with its ResNet MNIST networks.

python benchmarks/cmp_time_to_elbo.py [--quick] [--threads N]

**The data**, the same for both: the training split of ``configs/fast_fashion_elbo.yaml`` (the first
50,000 Fashion-MNIST training images), batches of 100 from vaekit's loader, every image binarized
afresh each epoch (``x ~ Bernoulli(v/255)``); the 10,000 test images binarized once with seed 0
(``vaekit.data.binarize_once``, the exemplar-fashion protocol's test set).

**The number**, the same estimator for both: the single-sample test ELBO in nats per image,
``mean_x[log p(x|z) − KL(q(z|x) ‖ N(0, I))]``, one z ~ q(z|x) per image from a seeded generator, the
analytic Gaussian KL and the Bernoulli likelihood evaluated from the decoder's logits
(:func:`single_sample_elbo`: vaekit's ``bernoulli_log_likelihood``, ``gaussian_kl`` and ``elbo``).
pythae's decoder ends in a Sigmoid; its logits are the output of the last transposed convolution,
taken before the Sigmoid, so no probability is rounded to 0 or 1. pythae's own loss (binary cross
entropy on the probabilities, each log clamped at −100 by torch) on the same test set and noise is
reported beside it as ``pythae_own_elbo``.

**The contenders.** pythae: ``VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=16,
reconstruction_loss="bce"))`` with ``Encoder_ResNet_VAE_MNIST``/``Decoder_ResNet_AE_MNIST``, Adam
(lr 1e-3, torch's default implementation, as pythae's trainer builds it), trained by a plain loop —
``model({"data": x}).loss``, backward, step — without pythae's trainer, its logging or its
DataLoader: the cheapest loop pythae's model allows. vaekit: the shipped config, trained by
``vaekit.train``'s own setup and step (``_setup``/``_train_step``: autocast, loss terms, finite
checks, fused Adam, the learning-rate schedule) on the same loader.

**The timing.** Only training is timed (batches drawn, forward, backward, update); evaluation is not.
The contenders alternate in one process — a chunk of pythae steps, then a chunk of vaekit steps — so
load from elsewhere on the shared machine falls on both alike. Each is evaluated after every chunk:
every epoch, then every quarter (pythae) or fifth (vaekit) of an epoch once within 2 nats of the
target; it stops at the first evaluation at or above the target, or at the end of its budget
(pythae: 30 epochs; vaekit: its config's schedule). The time to the target is the training time at
that evaluation; ``interpolated`` is the linear interpolation between it and the evaluation before.
``ratio_at_alternated_speed`` recomputes the ratio from the steps each needed and each one's
seconds per step over the rounds in which both were still training: a contender left training
alone under a different load cannot skew it. Each contender draws its noise from its own torch RNG
stream (CPU generator), so alternating changes neither's draws: vaekit's run is the one
``vaekit train`` makes with the same config and seed.

``--quick`` (a few minutes on an idle machine): target −255 nats instead of −237.5, the test ELBO on
the first 2,000 test images, vaekit's schedule shortened to 4 epochs (``train.epochs=4``), pythae
given 1.2 epochs; it says so in its output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fast_fashion_elbo.yaml"
TARGET, QUICK_TARGET = -237.5, -255.0
BATCH_SIZE = 100
TEST_SEED = 0  # the test set's one binarization (the exemplar-fashion protocol's)
NOISE_SEED = 0  # the ε of the single-sample ELBO
QUICK_TEST_IMAGES = 2000
QUICK_VAEKIT_EPOCHS = 4
PYTHAE_EPOCHS, QUICK_PYTHAE_EPOCHS = 30, 1.2  # pythae's budget
COLUMNS = ["contender", "model", "settings", "train_s_to_target", "interpolated_s", "epochs", "steps"]
COLUMNS += ["final_test_elbo", "images_per_s"]


def single_sample_elbo(
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    decode_logits: Callable[[Tensor], Tensor],
    x: Tensor,
    seed: int = NOISE_SEED,
    batch_size: int = 500,
    from_probabilities: bool = False,
) -> float:
    """Mean single-sample ELBO of binary images ``x`` ``[N, C, H, W]`` in nats per image.

    ``L(x) = log p(x|z) − KL(q(z|x) ‖ N(0, I))``, z = μ + σ ε with one ε ~ N(0, I) per image drawn
    from torch's RNG seeded with ``seed`` (forked: the caller's stream is untouched); KL analytic,
    ``log p(x|z) = Σ_i x_i ℓ_i − softplus(ℓ_i)`` from the decoder's logits ℓ. ``encode`` returns
    ``(μ, log σ²)`` ``[B, D]``. With ``from_probabilities`` the likelihood is pythae's instead:
    ``−BCE(sigmoid(ℓ), x)``, whose logs torch clamps at −100 (a probability rounded to 0 or 1).
    """
    both = single_sample_elbos(encode, decode_logits, x, seed, batch_size)
    return both["from_probabilities" if from_probabilities else "from_logits"]


def single_sample_elbos(
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    decode_logits: Callable[[Tensor], Tensor],
    x: Tensor,
    seed: int = NOISE_SEED,
    batch_size: int = 500,
) -> dict[str, float]:
    """:func:`single_sample_elbo` from logits and from probabilities, in one pass (same ε)."""
    from vaekit.losses import bernoulli_log_likelihood, elbo, gaussian_kl, reparameterize

    totals = {"from_logits": 0.0, "from_probabilities": 0.0}
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for chunk in x.split(batch_size):
            mu, log_var = encode(chunk)
            mu, log_var = mu.float(), log_var.float()
            logits = decode_logits(reparameterize(mu, log_var)).float()  # [B, C, H, W]
            kl = gaussian_kl(mu, log_var)  # [B]
            bce = F.binary_cross_entropy(torch.sigmoid(logits), chunk, reduction="none")
            for key, log_px_z in (
                ("from_logits", bernoulli_log_likelihood(chunk, logits)),  # [B]
                ("from_probabilities", -bce.flatten(1).sum(1)),  # [B]
            ):
                totals[key] += float(elbo(log_px_z, kl).double().sum())
    return {key: total / len(x) for key, total in totals.items()}


# --- the contenders -------------------------------------------------------------------------------


class PythaeVAE:
    """pythae 0.1.2's VAE with its ResNet MNIST encoder and decoder, Adam lr 1e-3, a plain loop."""

    name = "pythae"
    settings = "VAE, ResNet MNIST enc/dec, 16 latents, BCE, Adam 1e-3 constant, fp32, plain loop"

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        from pythae.models import VAE, VAEConfig
        from pythae.models.nn.benchmarks.mnist import Decoder_ResNet_AE_MNIST, Encoder_ResNet_VAE_MNIST

        torch.manual_seed(seed)
        config = VAEConfig(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="bce")
        encoder, decoder = Encoder_ResNet_VAE_MNIST(config), Decoder_ResNet_AE_MNIST(config)
        self.model = VAE(config, encoder=encoder, decoder=decoder).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.model_name = f"pythae {_version('pythae')} VAE (ResNet MNIST), {_count(self.model):,} weights"

    def step(self, x: Tensor, labels: Tensor | None) -> None:
        loss = self.model({"data": x}).loss  # mean over the batch of BCE + KL
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.encoder(x)
        return out.embedding, out.log_covariance

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's forward without its final Sigmoid: ``[B, 16] -> [B, 1, 28, 28]`` logits."""
        layers = self.model.decoder.layers
        out = layers[0](z).reshape(len(z), 128, 4, 4)  # as Decoder_ResNet_AE_MNIST.forward
        for layer in layers[1:-1]:
            out = layer(out)
        last = layers[-1]
        assert isinstance(last, nn.Sequential) and isinstance(last[-1], nn.Sigmoid), last
        return last[:-1](out)

    def evaluate(self, x: Tensor) -> dict[str, float]:
        self.model.eval()
        both = single_sample_elbos(self.encode, self.decode_logits, x)
        res = {"test_elbo": both["from_logits"], "pythae_own_elbo": both["from_probabilities"]}
        self.model.train()
        return res


class VaekitRun:
    """A vaekit config trained by ``vaekit.train``'s own setup and step."""

    name = "vaekit"

    def __init__(self, cfg: Any) -> None:
        from vaekit.train import _setup

        self.run = _setup(cfg)  # seeds, data, model, loader, fused Adam, schedule
        cfg = self.run.cfg  # with any "auto" setting decided
        t = cfg.train
        self.run.forward = torch.compile(self.run.model) if t.compile else self.run.model
        self.cfg, self.step_count = cfg, 0
        m = cfg.model
        hidden = m.params.get("hidden_dims")
        latents, weights = m.params.get("latent_dim"), _count(self.run.model)
        self.model_name = f"vaekit {m.name} {hidden}, {latents} latents, {weights:,} weights"
        self.settings = (
            f"Adam {t.lr:g} {t.schedule} over {t.epochs} epochs (warm-up {t.warmup_steps} steps), "
            f"β={t.beta:g}, KL warm-up {t.kl_warmup_steps}, {t.precision}, grad_clip {t.grad_clip}"
        )

    @property
    def total_steps(self) -> int:
        return self.run.total_steps

    def batches(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        return _epochs(self.run.loader)

    def step(self, x: Tensor, labels: Tensor | None) -> None:
        from vaekit.train import _train_step, kl_weight

        epoch = self.step_count // len(self.run.loader)
        # the layout vaekit.train gives a batch (channels_last for conv models on a CPU, where it has one)
        x = x.contiguous(memory_format=getattr(self.run, "memory_format", torch.contiguous_format))
        beta = kl_weight(self.cfg.train, self.step_count)
        _train_step(self.run, x, labels, beta, self.step_count + 1, epoch + 1)
        self.step_count += 1

    def evaluate(self, x: Tensor) -> dict[str, float]:
        model = self.run.model
        model.eval()
        res = {"test_elbo": single_sample_elbo(model.encode, model.decode, x)}
        model.train()
        return res


def _epochs(loader: Any) -> Iterator[tuple[Tensor, Tensor | None]]:
    """The loader's batches, epoch after epoch (``set_epoch`` before each, as the trainer does)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# --- the race -------------------------------------------------------------------------------------


@dataclass
class Lane:
    """One contender's progress: training seconds, steps, and its evaluations."""

    contender: Any
    batches: Iterator[tuple[Tensor, Tensor | None]]
    steps_per_epoch: int
    turn: int  # steps per turn of the alternation
    eval_every: int  # steps between evaluations
    max_steps: int
    fine_eval_every: int | None = None  # steps between evaluations once within ``margin`` nats of the target
    margin: float = 2.0
    seconds: float = 0.0
    steps: int = 0
    evaluated_at: int = 0  # the step of the last evaluation
    shared_seconds: float = 0.0  # over the turns trained while the other contender still trained
    shared_steps: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    reached: dict[str, float] | None = None
    out_of_time: bool = False
    # the contender's own torch RNG stream (its reparameterization noise), kept apart from the
    # other's so that alternating changes neither's draws: vaekit's are those of `vaekit train`
    rng_state: Tensor = field(default_factory=torch.get_rng_state)

    @property
    def done(self) -> bool:
        return self.reached is not None or self.steps >= self.max_steps or self.out_of_time

    def next_evaluation(self, target: float) -> int:
        """The step at which this lane is evaluated next."""
        near = self.curve and self.curve[-1]["test_elbo"] >= target - self.margin
        every = self.fine_eval_every if near and self.fine_eval_every else self.eval_every
        return min(self.evaluated_at + every, self.max_steps)


def _train(lane: Lane, steps: int, device: torch.device, shared: bool) -> None:
    """``steps`` training steps of ``lane``, timed (batches drawn included), on its own RNG stream."""
    outer = torch.get_rng_state()
    torch.set_rng_state(lane.rng_state)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, labels = next(lane.batches)
        x = x.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True) if labels is not None else None
        lane.contender.step(x, labels)
    _sync(device)
    elapsed = time.perf_counter() - start
    lane.rng_state = torch.get_rng_state()
    torch.set_rng_state(outer)
    lane.seconds += elapsed
    lane.steps += steps
    if shared:
        lane.shared_seconds += elapsed
        lane.shared_steps += steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate(lane: Lane, test_x: Tensor, target: float, log: bool) -> None:
    """Evaluate ``lane`` (untimed), add the point to its curve, and note whether it reached ``target``."""
    lane.evaluated_at = lane.steps
    point = {"train_s": lane.seconds, "steps": lane.steps, "epoch": lane.steps / lane.steps_per_epoch}
    point |= lane.contender.evaluate(test_x)
    lane.curve.append(point)
    if log:
        extra = "".join(f" {k}={v:.2f}" for k, v in point.items() if k not in ("train_s", "steps", "epoch"))
        print(
            f"  {lane.contender.name:7s} {lane.seconds:8.1f} s  epoch {point['epoch']:6.2f}{extra}",
            flush=True,
        )
    if point["test_elbo"] >= target and lane.reached is None:
        lane.reached = point | {"interpolated_s": _interpolate(lane.curve, target)}


def race(
    lanes: list[Lane],
    test_x: Tensor,
    target: float,
    device: torch.device,
    log: bool = True,
    deadline_s: float = math.inf,
) -> None:
    """Alternate the lanes, ``turn`` steps each, until each reaches ``target`` or ends its budget of
    steps; evaluate each every ``eval_every`` steps. After ``deadline_s`` seconds of wall time (training
    and evaluation) every lane still running stops at its next turn, evaluated where it stopped."""
    started = time.perf_counter()
    for r in range(10**9):
        active = [lane for lane in lanes if not lane.done]
        if not active:
            return
        order = active[r % len(active) :] + active[: r % len(active)]
        for lane in order:
            if time.perf_counter() - started > deadline_s:
                if lane.evaluated_at < lane.steps:
                    _evaluate(lane, test_x, target, log)
                lane.out_of_time = True
                continue
            left = lane.turn
            while left > 0 and not lane.done:
                steps = min(left, lane.next_evaluation(target) - lane.steps)
                _train(lane, steps, device, shared=len(active) > 1)
                left -= steps
                if lane.steps >= lane.next_evaluation(target):
                    _evaluate(lane, test_x, target, log)


def _interpolate(curve: list[dict[str, float]], target: float) -> float:
    """Training seconds where the straight line between the last two evaluations crosses ``target``."""
    if len(curve) < 2:
        return curve[-1]["train_s"]
    a, b = curve[-2], curve[-1]
    if b["test_elbo"] == a["test_elbo"]:
        return b["train_s"]
    frac = (target - a["test_elbo"]) / (b["test_elbo"] - a["test_elbo"])
    return a["train_s"] + min(max(frac, 0.0), 1.0) * (b["train_s"] - a["train_s"])


def summarize(lanes: list[Lane], target: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table's rows and the metrics of a finished race of ``[pythae, vaekit]``."""
    rows, metrics = [], {"target_elbo": target}
    for lane in lanes:
        c, reached = lane.contender, lane.reached
        rows.append(
            {
                "contender": c.name,
                "model": c.model_name,
                "settings": c.settings,
                "train_s_to_target": reached["train_s"] if reached else None,
                "interpolated_s": reached["interpolated_s"] if reached else None,
                "epochs": round(lane.steps / lane.steps_per_epoch, 2),
                "steps": lane.steps,
                "final_test_elbo": lane.curve[-1]["test_elbo"] if lane.curve else None,
                "images_per_s": round(lane.steps * BATCH_SIZE / lane.seconds, 1) if lane.seconds else None,
            }
        )
        metrics[f"{c.name}_seconds_to_target"] = reached["train_s"] if reached else None
        metrics[f"{c.name}_interpolated_seconds"] = reached["interpolated_s"] if reached else None
        metrics[f"{c.name}_steps_to_target"] = reached["steps"] if reached else None
        metrics[f"{c.name}_trained_s"] = lane.seconds
        metrics[f"{c.name}_trained_steps"] = lane.steps
        shared = lane.shared_seconds / lane.shared_steps if lane.shared_steps else None
        metrics[f"{c.name}_s_per_step_alternated"] = shared
    p, v = lanes
    # pythae short of the target: it needs more than it trained, so the ratio is at most this
    bound = p.reached is None and v.reached is not None
    p_s = p.seconds if bound else p.reached["train_s"] if p.reached else None
    p_interp = p.seconds if bound else p.reached["interpolated_s"] if p.reached else None
    p_steps = p.steps if bound else p.reached["steps"] if p.reached else None
    ok = v.reached is not None and p_s is not None
    metrics["time_to_elbo_ratio_vs_pythae"] = v.reached["train_s"] / p_s if ok else None
    metrics["interpolated_ratio"] = v.reached["interpolated_s"] / p_interp if ok else None
    alt = ok and p.shared_steps and v.shared_steps
    metrics["ratio_at_alternated_speed"] = (
        (v.reached["steps"] * v.shared_seconds / v.shared_steps)
        / (p_steps * p.shared_seconds / p.shared_steps)
        if alt
        else None
    )
    metrics["ratio_is_upper_bound"] = bound
    return rows, metrics


# --- the measurement ------------------------------------------------------------------------------


def measure(
    quick: bool, threads: int | None = None, config: Path = CONFIG, deadline_s: float = math.inf
) -> dict[str, Any]:
    """Run the race; return the title, fairness note, table rows, metrics and the ELBO curves.

    ``deadline_s`` bounds the race's wall time: a contender that has not reached the target by then
    stops, and where vaekit reached it and pythae did not, the ratio is an upper bound
    (``ratio_is_upper_bound``): pythae needs more than the time it trained.
    """
    from vaekit.config import load_config
    from vaekit.data import binarize_once, get_source, load_split, make_loader
    from vaekit.errors import DataError

    if threads is not None:
        torch.set_num_threads(threads)
    target = QUICK_TARGET if quick else TARGET
    title = f"training time to a test ELBO of {target:g} nats, dynamically binarized Fashion-MNIST"
    overrides = ["data.download=false"] + ([f"train.epochs={QUICK_VAEKIT_EPOCHS}"] if quick else [])
    cfg = load_config(config, overrides)
    if cfg.train.batch_size != BATCH_SIZE:
        raise ValueError(f"{config}: train.batch_size must be {BATCH_SIZE}, the pythae contender's")
    try:
        train_data = load_split(cfg.data, cfg.data.train_split)
    except DataError as err:
        status = get_source(cfg.data.name).status()
        return _skipped(title, f"{cfg.data.name} not available: {err} ({status})")
    try:
        import pythae  # noqa: F401
    except ImportError:
        return _skipped(title, "pythae is not installed (pip install pythae==0.1.2)")

    vaekit = VaekitRun(cfg)
    vaekit_rng = torch.get_rng_state()  # as `vaekit train` has it after its setup
    device = vaekit.run.dist.device
    test_images = vaekit.run.test_data.images  # [10000, 1, 28, 28] uint8
    test_x = binarize_once(test_images, TEST_SEED).to(device)  # [N, 1, 28, 28] in {0, 1}
    if quick:
        test_x = test_x[:QUICK_TEST_IMAGES]
    pythae_vae = PythaeVAE(device, seed=cfg.train.seed)
    pythae_rng = torch.get_rng_state()
    pythae_loader = make_loader(
        train_data, BATCH_SIZE, "bernoulli", shuffle=True, drop_last=True, seed=cfg.train.seed, binarize=True
    )
    per_epoch = len(pythae_loader)
    # (steps per turn, steps between evaluations, the same within 2 nats of the target); budgets in
    # steps (vaekit's: its schedule)
    if quick:
        plan = {"pythae": (50, 50, 25), "vaekit": (per_epoch // 2, per_epoch // 2, per_epoch // 5)}
        pythae_steps = int(QUICK_PYTHAE_EPOCHS * per_epoch)
    else:
        plan = {
            "pythae": (per_epoch // 4, per_epoch, per_epoch // 4),
            "vaekit": (2 * per_epoch, per_epoch, per_epoch // 5),
        }
        pythae_steps = PYTHAE_EPOCHS * per_epoch
    lanes = [
        Lane(
            pythae_vae,
            _epochs(pythae_loader),
            per_epoch,
            *plan["pythae"][:2],
            pythae_steps,
            rng_state=pythae_rng,
        ),
        Lane(
            vaekit, vaekit.batches(), per_epoch, *plan["vaekit"][:2], vaekit.total_steps, rng_state=vaekit_rng
        ),
    ]
    for lane in lanes:
        lane.fine_eval_every = plan[lane.contender.name][2]
    print(f"{title}; {torch.get_num_threads()} threads, device {device}", flush=True)
    race(lanes, test_x, target, device, deadline_s=deadline_s)

    rows, metrics = summarize(lanes, target)
    p, bound = lanes[0], metrics["ratio_is_upper_bound"]
    metrics["threads"] = torch.get_num_threads()
    metrics["test_images"] = len(test_x)
    curve = [
        (lane.contender.name, pt["train_s"], pt["epoch"], pt["test_elbo"])
        for lane in lanes
        for pt in lane.curve
    ]
    note = (
        f"pythae did not reach the target in {p.seconds:.0f} s of training (deadline): the ratios are "
        "upper bounds; "
        if bound
        else ""
    )
    note += (
        f"quick: target {target:g} (not −237.5), test ELBO on the first {QUICK_TEST_IMAGES} test images, "
        f"vaekit's schedule shortened to train.epochs={QUICK_VAEKIT_EPOCHS}; "
        if quick
        else ""
    )
    fair = (
        f"{note}same data: {cfg.data.name} {cfg.data.train_split}, batch {BATCH_SIZE} from one loader "
        "design, "
        "binarized afresh each epoch; test set binarized once (seed 0); same single-sample ELBO estimator "
        "from logits (pythae's pre-sigmoid output) with analytic KL; training time only, contenders "
        f"alternated in one process, {torch.get_num_threads()} threads each; pythae in a plain loop "
        "without its trainer (no overhead), vaekit through vaekit.train's own step"
    )
    return {
        "title": title,
        "fair": fair,
        "columns": COLUMNS,
        "rows": rows,
        "metrics": metrics,
        "curve": curve,
    }


def _skipped(title: str, why: str) -> dict[str, Any]:
    """A result without numbers: every metric None (``benchmarks/run.py`` shows "not measured")."""
    metrics = dict.fromkeys(
        ["time_to_elbo_ratio_vs_pythae", "pythae_seconds_to_target", "vaekit_seconds_to_target"]
    )
    return {
        "title": title,
        "fair": f"skipped: {why}",
        "skipped": why,
        "columns": COLUMNS,
        "rows": [],
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="target −250 nats, under 4 minutes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the vaekit contender's config")
    parser.add_argument(
        "--deadline",
        type=float,
        default=math.inf,
        help="wall seconds after which the race stops (default: none)",
    )
    args = parser.parse_args(argv)
    res = measure(args.quick, threads=args.threads, config=args.config, deadline_s=args.deadline)
    print(res["title"])
    print(res["fair"])
    if res.get("skipped"):
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine, report

    path = report("time_to_elbo_quick" if args.quick else "time_to_elbo", res["rows"], res["columns"])
    for key, value in res["metrics"].items():
        print(
            f"{key}: {value:.4g}" if isinstance(value, float) and math.isfinite(value) else f"{key}: {value}"
        )
    path.write_text(json.dumps({"benchmark": path.stem, "machine": machine(), **res}, indent=2) + "\n")


if __name__ == "__main__":
    main()
