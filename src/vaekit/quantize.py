"""Vector quantisation for VQ-VAEs (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Keeps the semantics of PyTorch-VAE's ``VectorQuantizer`` quoted in the seed document: latents
``[B, D, H, W]`` are flattened to ``z: [N, D]`` (N = B·H·W), each row is replaced by its nearest
codebook row ``e`` in squared L2 distance, the loss is ``β·mse(sg[e], z) + mse(e, sg[z])`` (element
means; per example, :func:`vaekit.losses.vq_latent_loss` sums the same terms over one latent map) and
the output is the straight-through ``z + sg[e − z]``. Unlike the seed, no ``[N, K]``
one-hot or full ``[N, K]`` distance matrix is built: codes are gathered with ``index_select``, counts
come from ``torch.bincount``, sums from ``index_add_``, and the search runs ``chunk_size`` rows at a time.

Speed (benchmarks/cmp_quantizer.py). Forward + backward costs little more than the search's
``[N, D] @ [D, K]`` matmul. The latent vectors are copied once, as the columns of a ``[D + 1, N]``
float32 matrix (a plain copy of ``[B, D, H, W]``, no transpose) whose last row is ones, so that one
matmul per block gives ``||e||² − 2 z·e`` (``||z||²`` is constant in k: it cannot move the argmin and
only adds rounding). Each block is reduced while it is still in cache: on CPU by a vectorised
``amin``, an in-place comparison and a matrix-vector product (``torch.min(dim)``, which compares
element by element, took about 60% of the matmul's time), elsewhere by ``torch.min``. The
straight-through output, the loss and their backward are one autograd node
(:class:`_StraightThrough`) working on ``e − z`` in the same column layout, whose
backward is one elementwise pass for the encoder and one ``index_add_`` for the codebook.

Buffer initialisation (chosen so the first training step is sensible):

* ``ema_cluster_size`` starts at ones and ``ema_embed_sum`` at a copy of the initial codebook: every
  code starts with a pseudo-count of one vector sitting at its initial position, so
  ``weight == embed_sum / cluster_size`` holds from the start. The first EMA step therefore moves a
  code to a weighted mean of its old position (weight ``decay``) and its batch vectors (weight
  ``(1 − decay)·n_k``), and an unused code stays (up to Laplace smoothing) where it was instead of
  collapsing to zero, as it would with zero-initialised buffers. k-means init and dead-code restart
  keep this convention (``cluster_size = 1``, ``embed_sum = new code``) for the codes they set.
* ``code_usage_ema`` starts at ones (each code "used once per batch") and ``steps_unused`` at zeros.

Dead-code restart (``restart_dead_codes=True``). A code is dead, and is re-seeded at a random encoder
output of the current batch, when no vector has picked it in the last ``dead_code_window`` training
steps (W, default 100; ``steps_unused`` counts the consecutive steps without a vector, over all ranks
under DDP), or when its usage average ``u_k ← d·u_k + (1−d)·n_k`` (``n_k`` vectors picking it this
step) falls below ``dead_code_threshold`` (τ, default 1e-3 vectors per batch). The window is the rule
that acts: a code that none of the last W·N vectors picked (N = B·h·w a step) holds a share of the
data of about 1/(W·N) or less — of as many new vectors it would expect to catch about one — and it
is caught W steps after it was abandoned, whether it was never used or used a lot before. With
W = 100 and B = 128 on a 7×7 grid that is 627,200 vectors, more than the 490,000 code positions of
the 10,000 Fashion-MNIST test images, and a quarter of an epoch of 50,000 images. The average
alone waits ``log(τ/u) / log(d)`` steps: ``log(1e-3) / log(0.99) ≈ 688`` for a code that was never
used (``u = 1``), about 935 for one used 12 times a batch before being abandoned. In a K = 512
Fashion-MNIST VQ-VAE (``configs/fashion_mnist_vqvae.yaml``), where the codes k-means placed on the
untrained encoder's outputs are mostly abandoned within 50 steps, that left the codebook collapsed
(validation perplexity 24 after the first epoch, against 307 with the window) until step 688 of
1,170; docs/results.md has the numbers. With small batches (W·N not much larger than K) raise W.

Under ``torch.distributed`` the counts and sums are all-reduced (SUM) before any update, and random
choices (k-means seeds, restarted codes) are broadcast from rank 0, so all ranks keep one codebook.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vaekit.errors import VaekitError
from vaekit.outputs import NamedOutput


def _distributed() -> bool:
    """True when a default process group is running (statistics are then summed over ranks)."""
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(t: Tensor) -> Tensor:
    """In place ``t ← Σ_ranks t``; a no-op outside distributed training."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast_from_rank0(*tensors: Tensor) -> None:
    """In place ``t ← t[rank 0]`` so every rank holds rank 0's random choices."""
    if _distributed():
        for t in tensors:
            dist.broadcast(t, src=0)


#: Elements of one ``[rows, K]`` search block by default, per CPU thread: 1 MiB of float32, so that
#: each thread's share of the block stays in its core's cache between the matmul that writes it and
#: the ``min`` that reads it. Elsewhere (GPU) one block of 64 MiB.
SEARCH_BLOCK_PER_CPU_THREAD = 2**18
SEARCH_BLOCK_OTHER = 2**24


def search_rows(k: int, device: torch.device, chunk_size: int | None = None) -> int:
    """Rows of one search block: ``chunk_size``, or by default as many as fill the default block."""
    if chunk_size is not None:
        return chunk_size
    if device.type == "cpu":
        return max(1, SEARCH_BLOCK_PER_CPU_THREAD * torch.get_num_threads() // k)
    return max(1, SEARCH_BLOCK_OTHER // k)


def nearest_rows(flat: Tensor, codebook: Tensor, chunk_size: int | None = None) -> Tensor:
    """``argmin_k ||z_n − e_k||² = argmin_k (||e_k||² − 2 z_n·e_k)`` for every row ``z_n``.

    ``||z_n||²`` is the same for every k, so it is left out of the search. ``flat`` is ``[N, D]``,
    ``codebook`` ``[K, D]``; returns ``[N]`` long, the first index among exact ties. Computed in
    float32 (also under autocast), ``chunk_size`` rows at a time (default :func:`search_rows`), so
    the extra memory is one ``[chunk_size, K]`` block, never ``[N, K]``.
    """
    return _nearest_columns(_columns(flat.detach().T), codebook, chunk_size)


def _columns(vectors: Tensor) -> Tensor:
    """``[D, *rest]`` (vectors along dim 0, any dtype and strides) -> ``[D + 1, N]`` float32, the
    vectors as columns in the order of ``rest`` over a row of ones; one copy."""
    d = vectors.shape[0]
    out = vectors.new_empty((d + 1, vectors[0].numel()), dtype=torch.float32)
    out[:d].view(vectors.shape).copy_(vectors)
    out[d].fill_(1.0)
    return out


def _nearest_columns(columns: Tensor, codebook: Tensor, chunk_size: int | None = None) -> Tensor:
    """:func:`nearest_rows` of the vectors ``columns[:D]`` (``[D + 1, N]`` float32, last row ones).

    Each block of C vectors is one matmul ``[z, 1] @ [−2e, ||e||²]ᵀ`` (``[C, K]``, written in cache),
    then reduced while still in cache: on CPU by :func:`_first_minima_by_hits`, elsewhere by
    ``torch.min``.
    """
    n, k = columns.shape[1], codebook.shape[0]
    rows = max(1, min(search_rows(k, columns.device, chunk_size), n))
    with torch.no_grad(), torch.autocast(device_type=columns.device.type, enabled=False):
        codes = codebook.detach().float()  # [K, D]
        # [D + 1, K]: −2e (exact: a power of two) above ||e||²
        scores_by = torch.cat([codes.T.mul(-2.0), codes.square().sum(1)[None]])
        if columns.device.type == "cpu":
            return _first_minima_by_hits(columns, scores_by, rows)
        return _first_minima_by_min(columns, scores_by, rows)


def _score_blocks(columns: Tensor, scores_by: Tensor, rows: int) -> Iterator[tuple[slice, Tensor]]:
    """``(span, scores)`` for each block of at most ``rows`` vectors: ``scores = columns[:, span]ᵀ
    scores_by`` (``[C, K]``: ``||e||² − 2 z·e``), written into one buffer reused block after block."""
    n = columns.shape[1]
    block = columns.new_empty(rows, scores_by.shape[1])  # [C, K]
    for start in range(0, n, rows):
        span = slice(start, min(start + rows, n))
        yield span, torch.mm(columns[:, span].T, scores_by, out=block[: span.stop - start])


def _first_minima_by_min(columns: Tensor, scores_by: Tensor, rows: int) -> Tensor:
    """``argmin_k (columns[:, n]ᵀ scores_by)[k]`` for every n (``[N]`` long, first index on ties, the
    index of a NaN where a row has one), by ``torch.min`` over blocks of ``rows`` scores ``[rows, K]``
    (``min`` is several times faster than ``argmin`` on CPU)."""
    values = columns.new_empty(rows)  # [C]
    out = torch.empty(columns.shape[1], dtype=torch.long, device=columns.device)  # [N]
    for span, scores in _score_blocks(columns, scores_by, rows):
        torch.min(scores, 1, out=(values[: len(scores)], out[span]))
    return out


def _first_minima_by_hits(columns: Tensor, scores_by: Tensor, rows: int) -> Tensor:
    """:func:`_first_minima_by_min`'s result, from vectorised reductions.

    ``torch.min(dim)`` compares element by element (on a 2-core AMD EPYC it took 8 ms per 16384 × 512
    scores, ``amin`` 0.5). So each block's row minima ``m_n`` come from ``amin``; the block is turned
    in place into hits ``h_nk = [s_nk = m_n]`` (1.0 or 0.0), and ``Σ_k h_nk (k + 1)`` (a matrix-vector
    product) is the index plus one wherever the row's hit count ``Σ_k h_nk`` is 1. Rows with exact ties
    (count > 1) or NaNs (count 0) are rare: they are searched again by ``torch.min``, so the result is
    the same in every case. Sums of at most K < 2²⁴ terms of 0/1 and one index are exact in float32.
    """
    n, k = columns.shape[1], scores_by.shape[1]
    minima = columns.new_empty(rows, 1)  # [C, 1]
    index_plus_one = columns.new_empty(n)  # [N]
    hit_counts = columns.new_empty(n)  # [N]
    plus_one = torch.arange(1, k + 1, dtype=columns.dtype, device=columns.device)  # [K]: k + 1
    for span, scores in _score_blocks(columns, scores_by, rows):
        block_minima = torch.amin(scores, 1, keepdim=True, out=minima[: len(scores)])  # [C, 1]
        hits = scores.eq_(block_minima)  # [C, K]: 1.0 where the row's minimum is attained
        torch.mv(hits, plus_one, out=index_plus_one[span])
        torch.sum(hits, 1, out=hit_counts[span])
    out = index_plus_one.long().sub_(1)  # [N]
    again = (hit_counts != 1).nonzero()[:, 0]  # [M]: rows with ties or NaNs (one host sync)
    if again.numel():
        out[again] = _first_minima_by_min(columns[:, again], scores_by, rows)
    return out


def perplexity(counts: Tensor) -> Tensor:
    """``exp(−Σ_k p_k log p_k)`` with ``p_k = counts_k / Σ counts``: how many codes are in effective use.

    ``counts: [K]`` → 0-dim float; 1 when one code takes everything, K when all are used equally.
    """
    probs = counts.float() / counts.sum().clamp_min(1)  # [K]
    return torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())


def kmeans(flat: Tensor, k: int, iters: int, chunk_size: int | None = None) -> Tensor:
    """Lloyd's k-means on ``flat`` ``[N, D]``; returns ``k`` centres ``[k, D]`` (float32).

    Seeds are sampled from the batch by k-means++ (``c_1`` uniform, then ``c_j`` with probability
    ``∝ min_i ||z − c_i||²``, falling back to uniform sampling with replacement once every batch
    vector is a seed, e.g. when N < k). Each iteration: ``a_n = argmin_k ||z_n − c_k||²`` and
    ``c_k ← Σ_{a_n = k} z_n / #{n : a_n = k}``; an empty cluster keeps its old centre.
    """
    flat = flat.detach().float()  # [N, D]
    n, d = flat.shape
    centres = flat.new_empty(k, d)  # [k, D]
    centres[0] = flat[torch.randint(n, (1,), device=flat.device)]
    closest = (flat - centres[0]).pow(2).sum(1)  # [N]: squared distance to the nearest seed so far
    for j in range(1, k):
        weights = torch.where(closest.sum() > 0, closest, torch.ones_like(closest))  # [N]
        centres[j] = flat[torch.multinomial(weights, 1)]
        closest = torch.minimum(closest, (flat - centres[j]).pow(2).sum(1))
    for _ in range(iters):
        assign = nearest_rows(flat, centres, chunk_size)  # [N]
        counts = torch.bincount(assign, minlength=k).float()  # [k]
        sums = flat.new_zeros(k, d).index_add_(0, assign, flat)  # [k, D]
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return centres


class QuantizerOutput(NamedOutput):
    """Unpacks like the seed: ``quantized, vq_loss = quantizer(latents)``; extras by name.

    ``quantized`` ``[B, D, H, W]`` (straight-through), ``loss`` (0-dim, the seed's element mean);
    extras: ``indices`` ``[B, H, W]`` long, ``perplexity`` = ``exp(−Σ_k p_k log p_k)`` with
    ``p_k = usage_k / N`` (0-dim), ``usage`` ``[K]`` float counts of how many vectors of this batch
    picked each code, ``loss_per_example`` ``[B]`` (:func:`vaekit.losses.vq_latent_loss`).
    """

    quantized: Tensor
    loss: Tensor
    _extras = ("indices", "perplexity", "usage", "loss_per_example")


class _StraightThrough(torch.autograd.Function):
    """``(z + sg[e − z], vq_latent_loss(z, e))`` and their gradients as one autograd node.

    Forward: ``latents`` ``[B, D, H, W]``, ``columns`` = the same values ``[D, N]`` in float32
    (column n = position (b, h, w)), ``indices`` ``[N]``; returns the straight-through output
    ``[B, D, H, W]`` and the per-example loss ``[B]``: ``(1 + β)·Σ_map ||z − e||²``, or
    ``β·Σ_map ||z − e||²`` without the codebook term. Backward, with ``g_b`` the loss gradient of
    example b: ``∂/∂z = g_out − 2β g_b (e − z)`` and, with the codebook term, ``∂/∂e_k =
    Σ_{n: a_n = k} 2 g_b (e_k − z_n)``: :func:`vaekit.losses.vq_latent_loss`'s gradients, from
    ``e − z`` kept from the forward pass. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, latents, weight, columns, indices, beta, codebook_term):
        ctx.set_materialize_grads(False)
        b, d, h, w = latents.shape
        # [D, N]: the codes, column by column, as the seed rounds them to the latents' dtype
        quantized = torch.index_select(weight.detach().T.contiguous(), 1, indices).to(latents.dtype)
        into = torch.empty_like(latents, memory_format=torch.contiguous_format)  # [B, D, H, W]
        if quantized.dtype == torch.float32:
            diff = quantized.sub_(columns)  # [D, N]: e − z, in place
            out = torch.add(latents, diff.view(d, b, h, w).transpose(0, 1), out=into)  # z + (e − z)
        else:  # the step e − z in the latents' dtype, as the seed rounds it; the loss in float32
            out = torch.add(latents, quantized.view(d, b, h, w).transpose(0, 1) - latents, out=into)
            diff = quantized.float() - columns  # [D, N]
        per_map = diff.view(d, b, h * w)  # [D, B, H·W]
        loss = torch.linalg.vecdot(per_map, per_map).sum(0)  # [B]: Σ_map ||z − e||²
        loss = loss * ((1.0 + beta) if codebook_term else beta)
        ctx.save_for_backward(diff, indices)
        ctx.beta, ctx.codebook_term, ctx.shape = beta, codebook_term, (b, d, h, w)
        ctx.latents_dtype, ctx.weight_dtype, ctx.num_codes = latents.dtype, weight.dtype, weight.shape[0]
        return out, loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_loss):
        if grad_loss is None:  # only the straight-through output was used
            return grad_out, None, None, None, None, None
        diff, indices = ctx.saved_tensors  # [D, N] float32: e − z; [N]
        b, d, h, w = ctx.shape
        scale = 2.0 * grad_loss.float()  # [B]: 2 g_b
        grad_latents = grad_weight = None
        if ctx.needs_input_grad[0]:
            step = diff.view(d, b, h, w).transpose(0, 1)  # [B, D, H, W]
            coeff = (-ctx.beta * scale).view(b, 1, 1, 1)  # [B, 1, 1, 1]: −2β g_b
            into = torch.empty((b, d, h, w), dtype=torch.float32, device=diff.device)
            if grad_out is not None and grad_out.dtype == torch.float32:
                grad_latents = torch.addcmul(grad_out, step, coeff, out=into)
            else:
                grad_latents = torch.mul(step, coeff, out=into).to(ctx.latents_dtype)
                grad_latents = grad_latents if grad_out is None else grad_out + grad_latents
        if ctx.codebook_term and ctx.needs_input_grad[1]:
            grad_t = diff.new_zeros(d, ctx.num_codes)  # [D, K]: Σ_{a_n = k} 2 g_b (e_k − z_n)
            uniform = diff.device.type == "cpu" and b > 0 and bool((scale == scale[0]).all())
            if uniform:  # one g_b for all examples (the loss was a mean): scale the [D, K] sums
                grad_t.index_add_(1, indices, diff).mul_(scale[0])
            else:
                grad_t.index_add_(1, indices, (diff.view(d, b, h * w) * scale[:, None]).view(d, -1))
            grad_weight = grad_t.T.to(ctx.weight_dtype, memory_format=torch.contiguous_format)
        return grad_latents, grad_weight, None, None, None, None


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook of ``K`` vectors of size ``D`` with a straight-through gradient.

    Loss without EMA: ``β·mse(sg[e], z) + mse(e, sg[z])``; with ``ema=True`` only ``β·mse(sg[e], z)``
    (the codebook follows exponential moving averages instead of gradients, paper appendix A.1).
    Codebook updates (EMA, dead-code restart, k-means init) happen only in training mode.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        *,
        ema: bool = False,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_dead_codes: bool = False,
        dead_code_threshold: float = 1e-3,
        dead_code_window: int | None = 100,
        chunk_size: int | None = None,
    ) -> None:
        """Codebook ``e ~ U(−1/K, 1/K)`` of shape ``[K, D]``; see the module docstring for buffers."""
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1 or (chunk_size is not None and chunk_size < 1):
            raise VaekitError(
                "num_embeddings, embedding_dim and chunk_size must be positive; got "
                f"{num_embeddings}, {embedding_dim}, {chunk_size}"
            )
        self.K, self.D, self.beta = num_embeddings, embedding_dim, beta
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        if dead_code_window is not None and dead_code_window < 1:
            raise VaekitError(f"dead_code_window must be at least 1 step or None; got {dead_code_window}")
        self.restart_dead_codes, self.dead_code_threshold = restart_dead_codes, dead_code_threshold
        self.dead_code_window = dead_code_window
        self.chunk_size = chunk_size
        self.embedding = nn.Embedding(self.K, self.D)
        self.embedding.weight.data.uniform_(-1 / self.K, 1 / self.K)
        self.embedding.weight.requires_grad_(not ema)
        if ema:
            self.register_buffer("ema_cluster_size", torch.ones(self.K))  # [K]
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())  # [K, D]
        # saved only when their option needs them, so a plain quantizer's state dict is the seed's
        # (just the codebook) and loads either way strictly
        self.register_buffer("code_usage_ema", torch.ones(self.K), persistent=restart_dead_codes)  # [K]
        # consecutive training steps in which no vector picked the code
        self.register_buffer("steps_unused", torch.zeros(self.K), persistent=restart_dead_codes)  # [K]
        self.register_buffer("initialized", torch.tensor(False), persistent=kmeans_init)  # k-means done?

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args) -> None:
        """Checkpoints saved before ``steps_unused`` existed load as if every code had just been used."""
        key = prefix + "steps_unused"
        if self.restart_dead_codes and key not in state_dict and prefix + "code_usage_ema" in state_dict:
            state_dict[key] = torch.zeros_like(self.steps_unused)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return f"K={self.K}, D={self.D}, beta={self.beta}, ema={self.ema}, chunk_size={self.chunk_size}"

    def nearest_codes(self, flat: Tensor) -> Tensor:
        """Index of the nearest code, ``argmin_k ||z_n − e_k||²``: ``[N, D]`` → ``[N]`` long (chunked)."""
        return nearest_rows(flat, self.embedding.weight, self.chunk_size)

    def codes_to_latents(self, indices: Tensor) -> Tensor:
        """Codebook lookup ``e[indices]``: ``[B, H, W]`` long → ``[B, D, H, W]``."""
        return F.embedding(indices, self.embedding.weight).permute(0, 3, 1, 2).contiguous()

    def forward(self, latents: Tensor) -> QuantizerOutput:
        """Quantise ``[B, D, H, W]`` latents; returns ``(z + sg[e − z], vq_loss)`` plus extras by name."""
        if latents.dim() != 4 or latents.shape[1] != self.D:
            raise VaekitError(
                f"VectorQuantizer expects latents of shape [B, {self.D}, H, W] (B, D, H, W); "
                f"got shape {list(latents.shape)}"
            )
        b, _, h, w = latents.shape
        # [D + 1, N]: the latent vectors as columns in float32 (column n = position (b, h, w)) over a
        # row of ones for the search; flat = the same vectors as rows, [N, D] (a view)
        columns = _columns(latents.detach().transpose(0, 1))  # [D + 1, N]
        flat = columns[: self.D].T
        if self.training and self.kmeans_init and not bool(self.initialized):
            self._kmeans_init(flat)
        indices = _nearest_columns(columns, self.embedding.weight, self.chunk_size)  # [N]
        with torch.autocast(device_type=latents.device.type, enabled=False):
            # [B, D, H, W] and [B] (vq_latent_loss, Σ over one latent map, in float32)
            out, loss_per_example = _StraightThrough.apply(
                latents, self.embedding.weight, columns[: self.D], indices, self.beta, not self.ema
            )
        loss = loss_per_example.mean() / (h * w * self.D)  # the seed's element mean (β·mse + mse)
        usage = torch.bincount(indices, minlength=self.K).float()  # [K]
        if self.training:
            self._update_codebook(flat, indices, usage)
        return QuantizerOutput(
            out,
            loss,
            indices=indices.view(b, h, w),
            perplexity=perplexity(usage),
            usage=usage,
            loss_per_example=loss_per_example,
        )

    def _sync_from_rank0(self) -> None:
        """Broadcast codebook and buffers from rank 0 after a random re-seeding."""
        extra = (self.ema_cluster_size, self.ema_embed_sum) if self.ema else ()
        _broadcast_from_rank0(self.embedding.weight.data, self.code_usage_ema, self.steps_unused, *extra)

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        """``e ← kmeans(z)``; resets ``usage = 1`` and (EMA) ``cluster_size = 1``, ``embed_sum = e``."""
        centres = kmeans(flat, self.K, self.kmeans_iters, self.chunk_size)  # [K, D]
        self.embedding.weight.copy_(centres)
        self.code_usage_ema.fill_(1.0)
        self.steps_unused.zero_()
        if self.ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centres)
        self._sync_from_rank0()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """One training step of statistics, with ``n_k`` = counts and ``s_k = Σ_{a_n = k} z_n``.

        ``usage ← d·usage + (1−d)·n``; with EMA also ``cluster_size ← d·cluster_size + (1−d)·n``,
        ``embed_sum ← d·embed_sum + (1−d)·s``, ``cs = (cluster_size + ε) / (Σ cluster_size + K·ε) ·
        Σ cluster_size`` and ``e ← embed_sum / cs``; then dead codes are restarted if enabled.
        """
        d = self.decay
        if self.ema:
            zeros = torch.zeros(self.K, self.D, device=flat.device)  # [K, D]
            if flat.T.is_contiguous():  # the vectors kept as columns, as forward keeps them
                sums = zeros.T.index_add_(1, indices, flat.T.float()).T
            else:
                sums = zeros.index_add_(0, indices, flat.float())
            # sums: [K, D], s_k = Σ_{a_n = k} z_n
            stats = _all_reduce_sum(torch.cat([counts[:, None], sums], 1))  # [K, 1 + D]
            counts, sums = stats[:, 0], stats[:, 1:]  # [K], [K, D]
            self.ema_cluster_size.mul_(d).add_(counts, alpha=1 - d)
            self.ema_embed_sum.mul_(d).add_(sums, alpha=1 - d)
            total = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.K * self.epsilon) * total  # [K]
            self.embedding.weight.copy_(self.ema_embed_sum / smoothed[:, None])
        else:
            counts = _all_reduce_sum(counts.clone())  # [K]
        self.code_usage_ema.mul_(d).add_(counts, alpha=1 - d)
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0.0)
        if self.restart_dead_codes:
            self.restart_dead_codes_now(flat)

    @torch.no_grad()
    def restart_dead_codes_now(self, flat: Tensor, dead: Tensor | None = None) -> Tensor:
        """Re-seed dead codes from random rows of ``flat`` ``[N, D]``: ``e_k ← z_{r_k}`` for ``k ∈ dead``.

        ``dead`` is a ``[K]`` bool mask, by default ``steps_unused ≥ dead_code_window`` or
        ``usage_ema < dead_code_threshold`` (see the module docstring). Restarted codes get
        ``usage_ema = 1``, ``steps_unused = 0`` (and with EMA ``cluster_size = 1``,
        ``embed_sum = e_k``). Rows are drawn without replacement when N allows. Returns the mask used.
        Under distributed training every rank must call this with the same mask (the default mask is,
        as usage counts are all-reduced).
        """
        if dead is None:
            dead = self.code_usage_ema < self.dead_code_threshold  # [K]
            if self.dead_code_window is not None:
                dead |= self.steps_unused >= self.dead_code_window
        num_dead = int(dead.sum())
        if num_dead == 0:
            return dead
        n = flat.shape[0]
        if n >= num_dead:
            rows = torch.randperm(n, device=flat.device)[:num_dead]  # [num_dead]
        else:
            rows = torch.randint(n, (num_dead,), device=flat.device)  # [num_dead]
        new = flat.detach()[rows].to(self.embedding.weight.dtype)  # [num_dead, D]
        self.embedding.weight[dead] = new
        self.code_usage_ema[dead] = 1.0
        self.steps_unused[dead] = 0.0
        if self.ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = new
        self._sync_from_rank0()
        return dead
