"""The time-to-ELBO benchmark's estimator and race (benchmarks/cmp_time_to_elbo.py), on tiny models.

The benchmark compares vaekit with pythae by one number, the single-sample test ELBO; these tests
check that number against vaekit's own ``elbo``, against torch.distributions by brute force, and
against pythae's own loss, and that the race stops each contender where it should.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vaekit.config import load_config
from vaekit.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cmp_time_to_elbo as bench


def _binary(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 28, 28, generator=g), generator=g)  # [n, 1, 28, 28]


def _mlp_vae():
    torch.manual_seed(3)
    return build_model(
        "mlp_vae", {"latent_dim": 5, "hidden_dims": [32], "likelihood": "bernoulli"}, (1, 28, 28)
    )


def test_estimator_is_vaekits_elbo():
    model, x = _mlp_vae().eval(), _binary(12)
    ours = bench.single_sample_elbo(model.encode, model.decode, x, seed=7, batch_size=12)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(7)  # the same ε: one [B, D] draw
        theirs = float(model.elbo(x).double().mean())
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_estimator_by_brute_force():
    """log p(x|z) − KL from torch.distributions, one image at a time, with the estimator's own ε."""
    model, x = _mlp_vae().eval(), _binary(6, seed=1)
    ours = bench.single_sample_elbo(model.encode, model.decode, x, seed=11, batch_size=4)
    torch.manual_seed(11)
    total = 0.0
    with torch.no_grad():
        eps = torch.cat([torch.randn(4, 5), torch.randn(2, 5)])  # the draws of the two chunks
        for i in range(len(x)):
            mu, log_var = (t[0].double() for t in model.encode(x[i : i + 1]))
            q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
            p = torch.distributions.Normal(torch.zeros(5, dtype=torch.float64), 1.0)
            z = mu + (0.5 * log_var).exp() * eps[i].double()
            logits = model.decode(z.float()[None])[0].double()
            log_px_z = torch.distributions.Bernoulli(logits=logits).log_prob(x[i].double()).sum()
            total += float(log_px_z - torch.distributions.kl_divergence(q, p).sum())
    assert ours == pytest.approx(total / len(x), abs=1e-3)


def test_pythae_logits_and_its_own_loss():
    """The logits taken before pythae's Sigmoid give its reconstruction; the estimator on its
    probabilities is minus pythae's own loss with the same ε, and equals the logits' value on a
    model whose probabilities are far from 0 and 1."""
    pytest.importorskip("pythae")
    vae, x = bench.PythaeVAE(torch.device("cpu"), seed=0), _binary(8, seed=2)
    vae.model.eval()
    with torch.no_grad():
        z = torch.randn(8, 16)
        probs = vae.model.decoder(z)["reconstruction"]
        torch.testing.assert_close(torch.sigmoid(vae.decode_logits(z)), probs)
        torch.manual_seed(5)
        own_loss = float(vae.model({"data": x}).loss)
    from_probs = bench.single_sample_elbo(
        vae.encode, vae.decode_logits, x, seed=5, batch_size=8, from_probabilities=True
    )
    from_logits = bench.single_sample_elbo(vae.encode, vae.decode_logits, x, seed=5, batch_size=8)
    assert from_probs == pytest.approx(-own_loss, rel=1e-5)
    assert from_logits == pytest.approx(from_probs, rel=1e-4)


class _Scripted:
    """A contender whose test ELBO after each evaluation is read from a list."""

    def __init__(self, name: str, elbos: list[float]) -> None:
        self.name, self.elbos, self.steps = name, list(elbos), 0

    def step(self, x, labels) -> None:
        self.steps += 1

    def evaluate(self, x) -> dict[str, float]:
        return {"test_elbo": self.elbos.pop(0)}


def _lane(contender, turn: int = 2, eval_every: int = 2, max_steps: int = 100) -> bench.Lane:
    batches = iter(lambda: (torch.zeros(1), None), None)  # endless
    return bench.Lane(contender, batches, 4, turn=turn, eval_every=eval_every, max_steps=max_steps)


def test_race_stops_each_contender_at_its_first_evaluation_at_the_target():
    slow, fast = _Scripted("slow", [-260, -250, -241, -239, -237]), _Scripted("fast", [-250, -236, -230])
    lanes = [_lane(slow), _lane(fast)]
    bench.race(lanes, torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    assert (slow.steps, fast.steps) == (10, 4)  # 5 and 2 chunks of 2 steps
    assert lanes[0].reached["test_elbo"] == -237 and lanes[1].reached["test_elbo"] == -236
    assert lanes[1].reached["epoch"] == 1.0
    assert lanes[1].shared_steps == 4 and lanes[0].shared_steps == 4  # fast stopped after its 2nd chunk
    a, b = lanes[0].curve[-2:]
    expected = a["train_s"] + 0.5 * (b["train_s"] - a["train_s"])  # −238 is halfway from −239 to −237
    assert lanes[0].reached["interpolated_s"] == pytest.approx(expected)


def test_race_ends_a_contender_that_runs_out_of_steps():
    never = _Scripted("never", [-300, -290, -280])
    lane = _lane(never, turn=2, max_steps=5)
    bench.race([lane], torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    assert lane.reached is None and never.steps == 5 and len(lane.curve) == 3
    assert [p["steps"] for p in lane.curve] == [2, 4, 5]


def test_turns_longer_than_the_evaluation_interval_and_the_fine_cadence():
    """Turns of 4 steps, evaluations every 2, every step once within 2 nats of the target."""
    c = _Scripted("c", [-260, -250, -239, -238.5, -237])
    lane = _lane(c, turn=4, eval_every=2)
    lane.fine_eval_every = 1
    other = _lane(_Scripted("o", [-300] * 10), turn=1, eval_every=1, max_steps=3)
    bench.race([lane, other], torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    assert [p["steps"] for p in lane.curve] == [2, 4, 6, 7, 8]
    assert lane.reached["steps"] == 8 and lane.shared_steps == 8  # the other ran 3 turns of 1 step


def test_summary_of_a_race_pythae_did_not_finish_is_an_upper_bound():
    """vaekit reached the target and pythae did not: pythae needs more than it trained."""
    lanes = [
        _lane(_Scripted("pythae", [-260, -250, -245]), max_steps=6),
        _lane(_Scripted("vaekit", [-250, -236])),
    ]
    for lane in lanes:
        lane.contender.model_name = lane.contender.settings = lane.contender.name
    bench.race(lanes, torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    p, v = lanes
    rows, metrics = bench.summarize(lanes, -238.0)
    assert metrics["ratio_is_upper_bound"] and metrics["pythae_seconds_to_target"] is None
    assert metrics["time_to_elbo_ratio_vs_pythae"] == pytest.approx(v.reached["train_s"] / p.seconds)
    assert metrics["vaekit_steps_to_target"] == 4 and rows[0]["final_test_elbo"] == -245
    per_step = (v.shared_seconds / v.shared_steps) / (p.shared_seconds / p.shared_steps)
    assert metrics["ratio_at_alternated_speed"] == pytest.approx(per_step * 4 / p.steps)


class _Drawing(_Scripted):
    """A contender that draws from torch's RNG at every step, as a VAE's noise does."""

    def __init__(self, name: str, elbos: list[float]) -> None:
        super().__init__(name, elbos)
        self.draws: list[float] = []

    def step(self, x, labels) -> None:
        super().step(x, labels)
        self.draws.append(float(torch.randn(())))


def test_alternating_leaves_each_contenders_noise_as_if_it_ran_alone():
    def lane(seed: int, turn: int) -> bench.Lane:
        torch.manual_seed(seed)
        contender = _Drawing(str(seed), [-300, -300, -300])
        return bench.Lane(contender, iter(lambda: (torch.zeros(1), None), None), 4, turn, 2, max_steps=6)

    alone = lane(1, turn=6)
    bench.race([alone], torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    first, second = lane(1, turn=2), lane(2, turn=1)
    bench.race([first, second], torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False)
    assert first.contender.draws == alone.contender.draws and len(alone.contender.draws) == 6
    torch.manual_seed(2)
    assert second.contender.draws == [float(torch.randn(())) for _ in range(6)]


def test_a_deadline_stops_the_race_and_bounds_the_ratio():
    never = _Scripted("never", [-300] * 10)
    lane = _lane(never, turn=2, max_steps=100)
    bench.race([lane], torch.zeros(1), target=-238.0, device=torch.device("cpu"), log=False, deadline_s=0.0)
    assert lane.done and lane.out_of_time and never.steps == 0 and lane.curve == []


def test_vaekit_contender_takes_vaekits_training_step():
    """One step through vaekit.train's setup and step moves the weights and the schedule."""
    cfg = load_config(
        None,
        [
            "data.name=mnist5k",
            "model.name=mlp_vae",
            "model.hidden_dims=[16]",
            "model.latent_dim=4",
            "model.likelihood=bernoulli",
            "data.binarize=true",
            "train.batch_size=100",
            "train.epochs=1",
            "train.precision=fp32",
        ],
    )
    run = bench.VaekitRun(cfg)
    before = [p.detach().clone() for p in run.run.model.parameters()]
    x, labels = next(run.batches())
    run.step(x, labels)
    assert run.step_count == 1 and run.run.scheduler.last_epoch == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, run.run.model.parameters(), strict=True))
    assert -1e4 < run.evaluate(_binary(4))["test_elbo"] < 0
