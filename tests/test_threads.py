"""Batches scored by several threads at once: the same numbers as one thread, in the same order."""

from __future__ import annotations

import threading

import pytest
import torch

from vaekit import ConvVAE, VanillaVAE
from vaekit.evaluate import batch_generators, likelihood_metrics
from vaekit.threads import map_in_threads


@pytest.fixture
def two_threads():
    """torch at two intra-op threads for the test, whatever the machine's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_map_in_threads_keeps_the_order_and_gives_each_thread_one_intra_op_thread(two_threads):
    seen: list[tuple[int, int]] = []  # (thread, intra-op threads inside it)
    barrier = threading.Barrier(3)  # the first three items wait for each other: three threads ran them

    def work(i: int) -> int:
        if i < 3:
            barrier.wait(timeout=10)
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return int(torch.arange(i + 1).sum())

    assert list(map_in_threads(work, range(20), workers=3)) == [i * (i + 1) // 2 for i in range(20)]
    assert len({thread for thread, _ in seen}) == 3 and threading.get_ident() not in {t for t, _ in seen}
    assert {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == 2  # the caller's count is back


def test_map_in_threads_with_one_worker_runs_in_the_calling_thread():
    threads = list(map_in_threads(lambda _: threading.get_ident(), range(4), workers=1))
    assert threads == [threading.get_ident()] * 4


def test_map_in_threads_passes_on_an_error_and_stops_taking_items(two_threads):
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 2:
            raise RuntimeError("item 2")
        return i

    with pytest.raises(RuntimeError, match="item 2"):
        list(map_in_threads(work, range(1000), workers=2))
    assert len(started) <= 2 * 2 + 2 + 1  # what was in flight when item 2 failed, not the rest
    assert torch.get_num_threads() == 2


def test_a_map_closed_early_leaves_the_rest_undone():
    started: list[int] = []
    results = map_in_threads(lambda i: started.append(i) or i, range(1000), workers=2)
    assert [next(results), next(results)] == [0, 1]
    results.close()
    assert len(started) <= 2 * 2 + 2


def _binary(n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, size, size, generator=gen), generator=gen)


@pytest.mark.parametrize("name", ["conv", "vanilla"])
def test_the_estimate_does_not_depend_on_the_number_of_workers(name):
    torch.manual_seed(0)
    if name == "conv":
        model = ConvVAE(1, 6, hidden_dims=[8, 16], fc_dim=32, image_size=12)
    else:
        model = VanillaVAE(1, 6, hidden_dims=[8, 16], image_size=12, likelihood="bernoulli")
    model = model.eval().to(memory_format=torch.channels_last)
    batches = _binary(35, 12, 1).split(8)  # five batches, the last of three images
    global_state = torch.get_rng_state()
    results = [likelihood_metrics(model, batches, iw_samples=40, seed=5, workers=w) for w in (1, 2, 3)]
    assert torch.equal(torch.get_rng_state(), global_state)  # torch's generator is not drawn from
    for res in results[1:]:
        for key in ("elbo_nats", "nll_nats", "nll_stderr"):
            assert res[key] == pytest.approx(results[0][key], rel=1e-6), key
        assert res["num_examples"] == 35
    # each batch draws from its place's generator: scoring them one by one gives the same sums
    nll = elbo = 0.0
    with torch.inference_mode():
        for x, generator in zip(batches, batch_generators(5, torch.device("cpu")), strict=False):
            log_px, _ = model.log_px(x, 40, 40, generator)
            nll -= float(log_px.double().sum())
            elbo += float(model.elbo(x, generator=generator).double().sum())
    assert results[0]["nll_nats"] == pytest.approx(nll / 35, abs=1e-4)
    assert results[0]["elbo_nats"] == pytest.approx(elbo / 35, abs=1e-4)
    other_seed = likelihood_metrics(model, batches, iw_samples=40, seed=6, workers=2)
    assert other_seed["nll_nats"] != results[0]["nll_nats"]


def test_batch_generators_differ_by_place_and_repeat_by_seed():
    def draws(seed: int) -> list[torch.Tensor]:
        generators = batch_generators(seed, torch.device("cpu"))
        return [torch.randn(3, generator=next(generators)) for _ in range(3)]

    first, again, other = draws(0), draws(0), draws(1)[0]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not torch.equal(other, first[0])
