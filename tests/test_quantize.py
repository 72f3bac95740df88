"""Tests for vaekit.quantize: the seed's VectorQuantizer semantics plus EMA, restarts and k-means init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vaekit.quantize import QuantizerOutput, VectorQuantizer


def _flat(latents: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] -> [N, D] in the seed's order."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def _random_vq(k: int = 16, d: int = 4, seed: int = 0, **kwargs) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(k, d, **kwargs)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    if vq.ema:
        vq.ema_embed_sum.copy_(vq.embedding.weight)
    return vq


def test_indices_match_brute_force_and_output_is_codebook_rows():
    vq = _random_vq(16, 4)
    latents = torch.randn(3, 4, 5, 7)
    out = vq(latents)
    flat = _flat(latents)
    expected = torch.cdist(flat, vq.embedding.weight).argmin(1)
    assert out.indices.shape == (3, 5, 7) and out.indices.dtype == torch.long
    assert torch.equal(out.indices.reshape(-1), expected)
    assert out.quantized.shape == (3, 4, 5, 7)
    assert torch.allclose(_flat(out.quantized), vq.embedding.weight[expected], atol=1e-6)
    assert torch.equal(vq.codes_to_latents(out.indices), vq.embedding.weight[out.indices].permute(0, 3, 1, 2))


def test_output_unpacks_like_the_seed():
    vq = _random_vq()
    out = vq(torch.randn(2, 4, 3, 3))
    quantized, loss = out
    assert isinstance(out, QuantizerOutput) and len(out) == 2
    assert quantized is out.quantized and loss is out.loss and loss.dim() == 0


def test_chunked_search_equals_unchunked():
    torch.manual_seed(1)
    flat = torch.randn(500, 8)
    small = VectorQuantizer(32, 8, chunk_size=7)
    big = VectorQuantizer(32, 8, chunk_size=10**9)
    big.load_state_dict(small.state_dict())
    assert torch.equal(small.nearest_codes(flat), big.nearest_codes(flat))
    assert torch.equal(small.nearest_codes(flat), torch.cdist(flat, small.embedding.weight).argmin(1))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by an op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_size_n_by_k_is_built():
    k, d, chunk = 256, 4, 16
    vq = _random_vq(k, d, chunk_size=chunk, ema=True, restart_dead_codes=True)
    latents = torch.randn(2, d, 16, 16)  # N = 512, so N·K = 131072 while N·D = 2048
    with _LargestTensor() as spy:
        out = vq(latents)
    n = latents.numel() // d
    assert spy.largest <= max(chunk * k, n * (d + 1), k * (d + 1))
    assert out.usage.sum() == n


def test_straight_through_gradient_is_identity():
    vq = _random_vq()
    latents = torch.randn(2, 4, 3, 5, requires_grad=True)
    g = torch.randn(2, 4, 3, 5)
    (vq(latents).quantized * g).sum().backward()
    assert torch.equal(latents.grad, g)


def test_loss_equals_seed_formula():
    beta = 0.3
    vq = _random_vq(beta=beta)
    latents = torch.randn(2, 4, 3, 5)
    flat = _flat(latents)
    e = vq.embedding.weight.detach()[torch.cdist(flat, vq.embedding.weight).argmin(1)]
    expected = beta * F.mse_loss(e, flat) + F.mse_loss(e, flat)
    assert torch.allclose(vq(latents).loss, expected, rtol=1e-6)


def test_loss_gradients_reach_encoder_and_codebook_separately():
    beta = 0.3
    vq = _random_vq(beta=beta)
    latents = torch.randn(2, 4, 3, 5, requires_grad=True)
    vq(latents).loss.backward()
    flat = _flat(latents.detach())
    idx = torch.cdist(flat, vq.embedding.weight).argmin(1)
    e = vq.embedding.weight.detach()[idx]
    numel = flat.numel()
    # encoder side: only the commitment term, β·2(z − e)/numel
    expected_z = (beta * 2 * (flat - e) / numel).reshape(2, 3, 5, 4).permute(0, 3, 1, 2)
    assert torch.allclose(latents.grad, expected_z, atol=1e-7)
    # codebook side: only the embedding term, Σ over assigned rows of 2(e − z)/numel
    expected_w = torch.zeros_like(vq.embedding.weight).index_add_(0, idx, 2 * (e - flat) / numel)
    assert torch.allclose(vq.embedding.weight.grad, expected_w, atol=1e-7)


def test_ema_step_matches_hand_computation():
    decay, eps, beta = 0.9, 1e-5, 0.25
    vq = _random_vq(8, 3, ema=True, decay=decay, epsilon=eps, beta=beta)
    with torch.no_grad():  # non-trivial buffers so the test exercises both terms
        vq.ema_cluster_size.copy_(torch.rand(8) + 0.5)
        vq.ema_embed_sum.copy_(vq.embedding.weight * vq.ema_cluster_size[:, None])
    cs0, es0, w0 = vq.ema_cluster_size.clone(), vq.ema_embed_sum.clone(), vq.embedding.weight.detach().clone()
    latents = torch.randn(2, 3, 4, 4)
    out = vq(latents)
    flat = _flat(latents)
    idx = torch.cdist(flat, w0).argmin(1)
    n = torch.zeros(8).index_add_(0, idx, torch.ones(len(idx)))
    sums = torch.zeros(8, 3).index_add_(0, idx, flat)
    cs = decay * cs0 + (1 - decay) * n
    es = decay * es0 + (1 - decay) * sums
    smoothed = (cs + eps) / (cs.sum() + 8 * eps) * cs.sum()
    assert torch.allclose(vq.ema_cluster_size, cs)
    assert torch.allclose(vq.ema_embed_sum, es)
    assert torch.allclose(vq.embedding.weight, es / smoothed[:, None], atol=1e-6)
    assert torch.allclose(out.loss, beta * F.mse_loss(w0[idx], flat))
    assert not vq.embedding.weight.requires_grad


def test_dead_codes_are_restarted_from_batch_vectors():
    for ema in (False, True):
        vq = _random_vq(8, 4, seed=2, ema=ema, restart_dead_codes=True, decay=0.5, dead_code_threshold=0.6)
        with torch.no_grad():
            vq.embedding.weight.copy_(torch.cat([torch.zeros(1, 4), 10 + torch.rand(7, 4)]))
            if ema:
                vq.ema_embed_sum.copy_(vq.embedding.weight)
        latents = 0.01 * torch.randn(2, 4, 4, 4, requires_grad=True)  # all nearest to code 0
        out = vq(latents)
        assert torch.equal(out.usage[1:], torch.zeros(7))
        out.loss.backward()  # the in-place restart must not break the backward pass
        flat = _flat(latents.detach())
        for row in vq.embedding.weight[1:].detach():
            assert (flat == row).all(1).any()
        assert torch.equal(vq.code_usage_ema[1:], torch.ones(7))
        if ema:
            assert torch.allclose(vq.ema_embed_sum / vq.ema_cluster_size[:, None], vq.embedding.weight)
        vq.eval()
        assert (vq(latents.detach()).usage[1:] > 0).all()


def test_a_code_no_vector_picked_for_the_window_is_restarted():
    vq = _random_vq(4, 2, seed=5, restart_dead_codes=True, dead_code_window=3)
    with torch.no_grad():  # code 3 far from every vector, codes 0-2 at the data
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]))
    latents = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(4, 1).T.reshape(1, 2, 3, 4)
    for step in (1, 2):
        vq(latents)
        assert torch.equal(vq.steps_unused, torch.tensor([0.0, 0.0, 0.0, step]))
        assert torch.equal(vq.embedding.weight[3], torch.tensor([50.0, 50.0]))  # usage average still ≥ 1e-3
    vq(latents)  # the third step without a vector: restarted at one of the batch's vectors
    assert (_flat(latents) == vq.embedding.weight[3]).all(1).any()
    assert vq.steps_unused[3] == 0 and vq.code_usage_ema[3] == 1
    assert "steps_unused" in vq.state_dict() and "steps_unused" not in _random_vq(4, 2).state_dict()


def test_kmeans_init_finds_cluster_centres():
    torch.manual_seed(3)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    flat = centres.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 2)
    latents = flat.reshape(2, 10, 10, 2).permute(0, 3, 1, 2)
    for ema in (False, True):
        vq = VectorQuantizer(4, 2, kmeans_init=True, ema=ema)
        assert not vq.initialized
        vq(latents)
        assert vq.initialized
        means = torch.stack([flat[i * 50 : (i + 1) * 50].mean(0) for i in range(4)])
        dist = torch.cdist(means, vq.embedding.weight.detach())
        assert dist.min(1).values.max() < 1e-3 and len(set(dist.argmin(1).tolist())) == 4
        before = vq.embedding.weight.detach().clone()
        vq(latents + 1.0)  # k-means runs only once
        assert not torch.allclose(vq.embedding.weight, before + 1.0, atol=1e-2)
    few = VectorQuantizer(8, 2, kmeans_init=True)  # N = 3 < K = 8: seeds drawn with replacement
    few(torch.randn(1, 2, 1, 3))
    assert torch.isfinite(few.embedding.weight).all() and few.initialized


def test_perplexity_and_usage():
    vq = _random_vq(8, 4)
    flat = vq.embedding.weight.detach().repeat(2, 1)  # every code exactly twice, N = 16
    out = vq(flat.reshape(1, 2, 8, 4).permute(0, 3, 1, 2))
    assert torch.allclose(out.perplexity, torch.tensor(8.0))
    assert torch.equal(out.usage, torch.full((8,), 2.0)) and out.usage.sum() == 16
    one = vq(vq.embedding.weight.detach()[:1].repeat(6, 1).reshape(1, 2, 3, 4).permute(0, 3, 1, 2))
    assert torch.allclose(one.perplexity, torch.tensor(1.0)) and one.usage.sum() == 6


def test_eval_mode_leaves_codebook_and_buffers_alone():
    vq = _random_vq(8, 4, ema=True, restart_dead_codes=True, kmeans_init=True, dead_code_threshold=10.0)
    vq.eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 4, 3, 3))
    for key, value in vq.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 5, 3, 3), (2, 4, 3, 3, 1)])
def test_bad_input_shape_raises(shape):
    vq = _random_vq(8, 4)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\].*got shape \[" + ", ".join(map(str, shape))):
        vq(torch.randn(*shape))


def test_state_dict_round_trip_keeps_buffers():
    vq = _random_vq(8, 4, ema=True, kmeans_init=True, restart_dead_codes=True)
    for _ in range(3):
        vq(torch.randn(2, 4, 3, 3))
    fresh = VectorQuantizer(8, 4, ema=True, kmeans_init=True, restart_dead_codes=True)
    fresh.load_state_dict(vq.state_dict())
    assert bool(fresh.initialized)
    for key, value in vq.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert set(vq.state_dict()) >= {"ema_cluster_size", "ema_embed_sum", "code_usage_ema", "initialized"}


def test_search_is_float32_under_bf16_autocast():
    torch.manual_seed(4)
    vq = VectorQuantizer(64, 8)
    with torch.no_grad():  # codes close together off the origin: bf16 cannot tell them apart
        vq.embedding.weight.copy_(1 + 0.05 * torch.randn(64, 8))
    latents = 1 + 0.05 * torch.randn(2, 8, 4, 4)
    expected = torch.cdist(_flat(latents).double(), vq.embedding.weight.double()).argmin(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(latents)
    assert torch.equal(out.indices.reshape(-1), expected)
    assert math.isfinite(out.loss.item())
    low = latents.bfloat16()  # bf16 latents: the search still runs in float32
    expected_low = torch.cdist(_flat(low).double(), vq.embedding.weight.double()).argmin(1)
    out_low = vq(low)
    assert torch.equal(out_low.indices.reshape(-1), expected_low)
    assert out_low.quantized.dtype == torch.bfloat16


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data = torch.randn(world, 2, 4, 3, 3)
        ema = _random_vq(8, 4, seed=0, ema=True)
        ema(data[rank])
        torch.manual_seed(100 + rank)  # different random choices on every rank
        vq = _random_vq(8, 4, seed=100 + rank, ema=True, kmeans_init=True, restart_dead_codes=True)
        vq.dead_code_threshold = 10.0  # every code is dead: all are re-seeded at random
        vq(data[rank])
        torch.save({"ema": ema.state_dict(), "vq": vq.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_share_one_codebook(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for key in ("ema", "vq"):
        for name, value in states[0][key].items():
            assert torch.equal(value, states[1][key][name]), (key, name)
    torch.manual_seed(0)
    data = torch.randn(world, 2, 4, 3, 3)
    single = _random_vq(8, 4, seed=0, ema=True)
    single(torch.cat(list(data)))  # one process on both ranks' data: the same EMA step
    for name, value in single.state_dict().items():
        assert torch.allclose(states[0]["ema"][name], value, atol=1e-6), name


def test_seed_quantizer_weights_load_strictly_and_give_the_seeds_outputs():
    from seed_reference import SeedVectorQuantizer

    torch.manual_seed(0)
    seed = SeedVectorQuantizer(32, 8)
    ours = VectorQuantizer(32, 8)
    ours.load_state_dict(seed.state_dict())  # strict: a plain quantizer saves only the codebook
    assert set(ours.state_dict()) == set(seed.state_dict()) == {"embedding.weight"}
    latents = torch.randn(3, 8, 5, 4) * 0.05
    seed_latents, our_latents = latents.clone().requires_grad_(), latents.clone().requires_grad_()
    seed_out, seed_loss = seed(seed_latents)
    our_out, our_loss = ours(our_latents)
    torch.testing.assert_close(our_out, seed_out)
    torch.testing.assert_close(our_loss, seed_loss)
    (seed_out.sum() + seed_loss).backward()
    (our_out.sum() + our_loss).backward()
    torch.testing.assert_close(our_latents.grad, seed_latents.grad)
    torch.testing.assert_close(ours.embedding.weight.grad, seed.embedding.weight.grad)


def _train_on_blobs(vq: VectorQuantizer, steps: int = 300, k: int = 16, seed: int = 0) -> tuple[int, bool]:
    """A short training run of ``vq`` on 8 well-separated Gaussian blobs (at ±10·e_i in 4 dims,
    σ = 0.5), 256 vectors a batch, the first batch being what an untrained encoder gives (all
    vectors within 0.01 of the origin, where k-means then puts every code); a plain quantizer learns
    its codebook by SGD on the seed's codebook loss. Returns how many of the ``k`` codes held-out blob
    vectors use, and whether every code serves one blob only."""
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.cat([torch.eye(4), -torch.eye(4)])  # [8, 4]
    sgd = None if vq.ema else torch.optim.SGD(vq.parameters(), lr=1.0)
    for step in range(steps):
        labels = torch.randint(8, (256,), generator=gen)
        flat = centres[labels] + 0.5 * torch.randn(256, 4, generator=gen)  # [256, 4]
        if step == 0:
            flat = 0.01 * torch.randn(256, 4, generator=gen)
        out = vq(flat.T.reshape(1, 4, 16, 16))
        if sgd is not None:
            sgd.zero_grad()
            out.loss.backward()
            sgd.step()
    labels = torch.arange(8).repeat_interleave(100)  # [800]
    codes = vq.nearest_codes(centres[labels] + 0.5 * torch.randn(800, 4, generator=gen))  # [800]
    pure = all(len(set(labels[codes == c].tolist())) <= 1 for c in range(k))
    return len(set(codes.tolist())), pure


def test_short_training_run_on_known_clusters_uses_every_code():
    k = 16  # two codes for each of the 8 blobs
    torch.manual_seed(0)
    healthy = VectorQuantizer(k, 4, ema=True, kmeans_init=True, restart_dead_codes=True)
    assert _train_on_blobs(healthy) == (k, True)  # all codes in use, none shared by two blobs
    torch.manual_seed(0)
    plain = VectorQuantizer(k, 4)  # the seed's quantizer: codebook U(-1/K, 1/K), gradient updates
    used, _ = _train_on_blobs(plain)
    assert used <= 8  # half the codebook or more is dead
    torch.manual_seed(0)  # a restart that waits for the usage average to fall below 1e-3 (688 steps)
    slow = VectorQuantizer(k, 4, ema=True, kmeans_init=True, restart_dead_codes=True, dead_code_window=None)
    used, _ = _train_on_blobs(slow)
    assert used <= 8
