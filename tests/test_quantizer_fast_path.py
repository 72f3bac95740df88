"""The quantizer's fast path (blocked search without ||z||², one autograd node for the straight-through
output and the loss) against brute force, the seed's quantizer and vq_latent_loss's autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seed_reference import SeedVectorQuantizer
from vaekit.losses import vq_latent_loss
from vaekit.quantize import (
    VectorQuantizer,
    _first_minima_by_hits,
    _first_minima_by_min,
    nearest_rows,
    search_rows,
)


def _flat(latents: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] -> [N, D] in the seed's order."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def _separated(b: int, d: int, h: int, w: int, k: int, seed: int = 0, noise: float = 0.05):
    """A codebook of k codes at least ~1 apart and latents each within ``noise`` of a random code, so
    the nearest code is unambiguous in float32: ``(codebook [K, D], latents [B, D, H, W], codes [N])``."""
    gen = torch.Generator().manual_seed(seed)
    codebook = 3.0 * torch.randn(k, d, generator=gen)  # [K, D]
    gaps = torch.cdist(codebook, codebook) + torch.eye(k) * 1e9
    assert gaps.min() > 1.0, "codes too close for this test's data"
    codes = torch.randint(k, (b * h * w,), generator=gen)  # [N]
    flat = codebook[codes] + noise * torch.randn(b * h * w, d, generator=gen)  # [N, D]
    return codebook, flat.view(b, h, w, d).permute(0, 3, 1, 2).contiguous(), codes


def _brute_force(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin over the full [N, K] matrix of squared distances, in float64."""
    dist = (flat.double()[:, None, :] - codebook.double()[None, :, :]).pow(2).sum(-1)  # [N, K]
    return dist.argmin(1)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, None, 10**9])
def test_search_picks_the_brute_force_argmin(chunk_size):
    codebook, latents, codes = _separated(3, 5, 7, 6, 40)
    flat = _flat(latents)
    found = nearest_rows(flat, codebook, chunk_size)
    assert torch.equal(found, _brute_force(flat, codebook))
    assert torch.equal(found, codes)  # the data's own codes: the test data are unambiguous


def test_search_on_generic_data_agrees_with_float64():
    gen = torch.Generator().manual_seed(1)
    flat, codebook = torch.randn(3000, 16, generator=gen), torch.randn(300, 16, generator=gen)
    assert torch.equal(nearest_rows(flat, codebook), _brute_force(flat, codebook))


def test_exact_ties_go_to_the_first_code_like_argmin():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    flat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # rows 0 and 1 sit on duplicated codes, row 2 halfway between codes 0 and 1 (and their copies),
    # row 4 equidistant from all five
    assert nearest_rows(flat, codebook, chunk_size=2).tolist() == [0, 1, 0, 2, 0]


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_cpu_search_by_hits_equals_torch_min_with_ties_nans_and_infinities(rows):
    gen = torch.Generator().manual_seed(2)
    k = 9
    columns = torch.randn(4, 40, generator=gen).round()  # [D + 1, N], integer values: many exact ties
    columns[3] = 1.0
    scores_by = torch.randn(4, k, generator=gen).round()  # [D + 1, K]
    scores_by[:, 5] = scores_by[:, 2]  # code 5 duplicates code 2: every row that picks 2 ties with 5
    columns[0, 7] = float("nan")  # a NaN score row: torch.min returns the index of the NaN
    columns[1, 11] = float("inf")  # scores of ±inf, and an all-NaN row from inf − inf
    columns[1, 12], columns[2, 12] = float("inf"), float("-inf")
    columns[:, 13] = 0.0  # scores of exactly 0, the ones row too: all K codes tie
    scores = columns.T @ scores_by  # [N, K]
    expected = scores.min(1).indices
    assert torch.equal(_first_minima_by_min(columns, scores_by, rows), expected)
    assert torch.equal(_first_minima_by_hits(columns, scores_by, rows), expected)
    counts = (scores == scores.amin(1, keepdim=True)).sum(1)  # [N]
    assert (counts > 1).sum() >= 10 and (counts == 0).any() and (counts == 1).sum() >= 10  # all paths ran


def test_default_block_is_one_mib_per_cpu_thread_and_a_given_chunk_size_wins():
    cpu = torch.device("cpu")
    assert search_rows(512, cpu) * 512 * 4 == 2**20 * torch.get_num_threads()
    assert search_rows(10**7, cpu) == 1
    assert search_rows(512, cpu, chunk_size=5) == 5
    assert search_rows(512, torch.device("meta")) * 512 == 2**24


def _pair(k: int, d: int, codebook: torch.Tensor, beta: float = 0.25, **kwargs):
    seed, ours = SeedVectorQuantizer(k, d, beta=beta), VectorQuantizer(k, d, beta=beta, **kwargs)
    with torch.no_grad():
        seed.embedding.weight.copy_(codebook)
        ours.embedding.weight.copy_(codebook)
        if ours.ema:
            ours.ema_embed_sum.copy_(codebook)
    return seed, ours


@pytest.mark.parametrize("chunk_size", [5, None])
def test_outputs_and_gradients_equal_the_seeds(chunk_size):
    b, d, h, w, k = 3, 6, 5, 4, 24
    codebook, latents, codes = _separated(b, d, h, w, k, seed=2, noise=0.3)
    seed, ours = _pair(k, d, codebook, beta=0.3, chunk_size=chunk_size)
    g = torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(3))  # a generic upstream gradient
    results = []
    for quantizer in (seed, ours):
        z = latents.clone().requires_grad_()
        quantized, loss = quantizer(z)
        ((quantized * g).sum() + 7.0 * loss).backward()
        results.append((quantized, loss, z.grad, quantizer.embedding.weight.grad))
    (q_seed, l_seed, gz_seed, gw_seed), (q_ours, l_ours, gz_ours, gw_ours) = results
    assert torch.equal(ours(latents).indices.reshape(-1), codes)
    assert torch.equal(q_ours, q_seed)  # z + (e − z), the seed's rounding exactly
    torch.testing.assert_close(l_ours, l_seed, rtol=1e-6, atol=0)
    torch.testing.assert_close(gz_ours, gz_seed, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gw_ours, gw_seed, rtol=1e-5, atol=1e-9)
    # the loss reaches the encoder (β term) and the codebook (codebook term) with the right weights
    e, flat = codebook[codes], _flat(latents)
    numel = flat.numel()
    expected_gz = g + (7.0 * 0.3 * 2 * (flat - e) / numel).view(b, h, w, d).permute(0, 3, 1, 2)
    torch.testing.assert_close(gz_ours, expected_gz, rtol=1e-5, atol=1e-8)
    expected_gw = torch.zeros(k, d).index_add_(0, codes, 7.0 * 2 * (e - flat) / numel)
    torch.testing.assert_close(gw_ours, expected_gw, rtol=1e-5, atol=1e-8)


def test_per_example_loss_and_its_gradients_equal_vq_latent_loss():
    b, d, h, w, k = 4, 5, 3, 6, 16
    codebook, latents, codes = _separated(b, d, h, w, k, seed=4, noise=0.5)
    weights = torch.tensor([0.5, -1.0, 2.0, 3.0])  # per-example weights: the backward is not uniform
    for ema in (False, True):
        _, ours = _pair(k, d, codebook, beta=0.4, ema=ema)
        z_ours = latents.clone().requires_grad_()
        out = ours(z_ours)
        (out.loss_per_example * weights).sum().backward()
        # reference: plain autograd through the formula, e = codebook rows gathered with F.embedding
        weight = codebook.clone().requires_grad_(not ema)
        z_ref = latents.clone().requires_grad_()
        e = F.embedding(codes.view(b, h, w), weight).permute(0, 3, 1, 2)  # [B, D, H, W]
        expected = vq_latent_loss(z_ref, e, 0.4, codebook_term=not ema)  # [B]
        (expected * weights).sum().backward()
        torch.testing.assert_close(out.loss_per_example, expected.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(out.loss, expected.detach().mean() / (h * w * d), rtol=1e-6, atol=0)
        torch.testing.assert_close(z_ours.grad, z_ref.grad, rtol=1e-6, atol=1e-9)
        if ema:
            assert ours.embedding.weight.grad is None and not ours.embedding.weight.requires_grad
        else:
            torch.testing.assert_close(ours.embedding.weight.grad, weight.grad, rtol=1e-6, atol=1e-9)


def test_ema_quantizer_gives_the_seeds_encoder_gradient_and_commitment_loss():
    b, d, h, w, k = 2, 4, 6, 5, 12
    codebook, latents, codes = _separated(b, d, h, w, k, seed=5, noise=0.4)
    seed, ours = _pair(k, d, codebook, beta=0.25, ema=True)
    z_seed, z_ours = latents.clone().requires_grad_(), latents.clone().requires_grad_()
    q_seed, l_seed = seed(z_seed)
    out = ours(z_ours)  # training mode: the EMA step moves the codebook after the codes are chosen
    (q_seed.sum() + l_seed).backward()
    (out.quantized.sum() + out.loss).backward()
    assert torch.equal(out.indices.reshape(-1), codes)
    assert torch.equal(out.quantized, q_seed)
    # the seed's codebook term has no gradient to the encoder, so the encoder gradients agree
    torch.testing.assert_close(z_ours.grad, z_seed.grad, rtol=1e-6, atol=1e-9)
    commitment = F.mse_loss(codebook[codes], _flat(latents))
    torch.testing.assert_close(out.loss, 0.25 * commitment, rtol=1e-6, atol=0)
    assert not torch.equal(ours.embedding.weight, codebook)  # and the EMA step ran


@pytest.mark.parametrize("ema", [False, True])
def test_chunked_and_unchunked_forward_backward_are_identical(ema):
    b, d, h, w, k = 3, 8, 9, 7, 50
    codebook, latents, _ = _separated(b, d, h, w, k, seed=6, noise=0.3)
    results = []
    for chunk_size in (1, 13, None, 10**9):
        _, ours = _pair(k, d, codebook, ema=ema, chunk_size=chunk_size)
        z = latents.clone().requires_grad_()
        out = ours(z)
        (out.quantized.square().mean() + out.loss).backward()
        grad_w = ours.embedding.weight.grad
        results.append((out.indices, out.quantized, out.loss, out.loss_per_example, z.grad, grad_w))
        results[-1] += (ours.embedding.weight.detach().clone(),)  # after the EMA step, if any
    for other in results[1:]:
        for a, c in zip(results[0], other, strict=True):
            assert (a is None and c is None) or torch.equal(a, c)


def test_only_the_output_used_gives_no_codebook_gradient_and_identity_for_the_encoder():
    codebook, latents, _ = _separated(2, 4, 3, 3, 8, seed=7)
    _, ours = _pair(8, 4, codebook)
    z = latents.clone().requires_grad_()
    g = torch.randn_like(latents)
    (ours(z).quantized * g).sum().backward()
    assert torch.equal(z.grad, g) and ours.embedding.weight.grad is None
    z.grad = None
    ours(z).loss.backward()  # only the loss: its gradient alone
    e = codebook[ours(latents).indices.reshape(-1)]
    expected = (0.25 * 2 * (_flat(latents) - e) / latents.numel()).view(2, 3, 3, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(z.grad, expected, rtol=1e-6, atol=1e-9)


def test_bf16_autocast_search_equals_the_float32_search():
    b, d, h, w, k = 2, 8, 6, 6, 64
    gen = torch.Generator().manual_seed(8)
    ours = VectorQuantizer(k, d)
    with torch.no_grad():  # codes close together off the origin: a bf16 search could not tell them apart
        ours.embedding.weight.copy_(1 + 0.05 * torch.randn(k, d, generator=gen))
    latents = (1 + 0.05 * torch.randn(b, d, h, w, generator=gen)).requires_grad_()
    fp32 = ours(latents)
    expected = _brute_force(_flat(latents.detach()), ours.embedding.weight.detach())
    assert torch.equal(fp32.indices.reshape(-1), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = ours(latents)
    assert torch.equal(auto.indices, fp32.indices)
    assert auto.quantized.dtype == torch.float32 and auto.loss.dtype == torch.float32
    torch.testing.assert_close(auto.loss, fp32.loss, rtol=1e-6, atol=0)
    # bf16 latents (an encoder run under autocast): float32 search, bf16 output, float32 loss
    low = latents.detach().bfloat16().requires_grad_()
    out = ours(low)
    assert torch.equal(
        out.indices.reshape(-1), _brute_force(_flat(low.detach()), ours.embedding.weight.detach())
    )
    assert out.quantized.dtype == torch.bfloat16 and out.loss_per_example.dtype == torch.float32
    e = ours.embedding.weight.detach()[out.indices].permute(0, 3, 1, 2).bfloat16()  # [B, D, H, W]
    assert torch.equal(out.quantized, low.detach() + (e - low.detach()))
    (out.quantized.float().sum() + out.loss).backward()
    z32 = low.detach().float().requires_grad_()
    weight = ours.embedding.weight.detach().clone().requires_grad_()
    rows = F.embedding(out.indices, weight)  # [B, H, W, D]: the loss sees e rounded to bf16, its
    e32 = (rows + (rows.bfloat16().float() - rows).detach()).permute(0, 3, 1, 2)  # gradient stays float32
    (vq_latent_loss(z32, e32, 0.25).mean() / (h * w * d)).backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad, (1 + z32.grad).bfloat16())
    torch.testing.assert_close(ours.embedding.weight.grad, weight.grad, rtol=1e-6, atol=1e-9)


def test_float64_latents_search_in_float32_and_keep_their_dtype():
    codebook, latents, codes = _separated(2, 3, 4, 4, 10, seed=9)
    _, ours = _pair(10, 3, codebook)
    z = latents.double().requires_grad_()
    out = ours(z)
    assert torch.equal(out.indices.reshape(-1), codes)
    assert out.quantized.dtype == torch.float64 and out.loss.dtype == torch.float32
    (out.quantized.sum() + out.loss).backward()
    assert z.grad.dtype == torch.float64 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3)])
def test_empty_latent_maps_pass_through(shape):
    _, ours = _pair(8, 4, torch.randn(8, 4))
    z = torch.randn(*shape, requires_grad=True)
    out = ours(z)
    assert out.quantized.shape == shape and out.loss_per_example.shape == (shape[0],)
    assert out.indices.shape == (shape[0], *shape[2:]) and out.usage.sum() == 0
    (out.quantized.sum() + out.loss_per_example.sum()).backward()
    assert z.grad.shape == shape
