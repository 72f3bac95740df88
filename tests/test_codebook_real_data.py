"""A codebook that stays alive on real data: a short VQ-VAE training run on the embedded MNIST digits.

The quantizer tests check EMA, k-means init and dead-code restart one step at a time on synthetic
clusters; here the same mechanisms run for a short real training run (100 Adam steps on the 4,500
embedded training digits) and the codes are counted on the 500 held-out test digits, against the
same network with the seed's plain quantizer, which collapses onto a handful of codes.
"""

from __future__ import annotations

import torch

from vaekit.data.ranges import to_model_range
from vaekit.data.sources import load_dataset
from vaekit.models.vqvae import VQVAE
from vaekit.quantize import perplexity

K = 128


def _train_and_count(healthy: bool, steps: int = 100) -> tuple[int, float]:
    """Train a small VQ-VAE ``steps`` steps (batch 64) on mnist5k/train; codes in use and perplexity
    of the codes the 500 test digits pick."""
    train = to_model_range(load_dataset("mnist5k", None, "train").images, "gaussian")  # [4500, 1, 28, 28]
    test = to_model_range(load_dataset("mnist5k", None, "test").images, "gaussian")  # [500, 1, 28, 28]
    torch.manual_seed(0)
    options = (
        dict(ema=True, kmeans_init=True, restart_dead_codes=True, dead_code_window=20) if healthy else {}
    )
    model = VQVAE(1, 16, K, hidden_dims=[16, 32], image_size=28, num_residual_layers=1, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = train[torch.randint(len(train), (64,), generator=batches)]
        loss = model.loss_function(*model(x))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        codes = model(test).indices  # [500, 7, 7]
    usage = torch.bincount(codes.flatten(), minlength=K)  # [K]
    return int((usage > 0).sum()), float(perplexity(usage))


def test_ema_kmeans_and_restart_keep_the_codebook_in_use_on_real_digits():
    used, ppl = _train_and_count(healthy=True)
    plain_used, plain_ppl = _train_and_count(healthy=False)
    assert used >= 0.95 * K, f"{used}/{K} codes in use on the test digits"
    assert ppl > K / 4, f"perplexity {ppl:.1f}: the codes are in use but hardly any carries weight"
    # the same network and steps with the seed's quantizer: the codebook collapses
    assert plain_used < K / 4 and plain_ppl < ppl / 4, (plain_used, plain_ppl, used, ppl)
