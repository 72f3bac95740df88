"""What ``vaekit evaluate --compile`` changes in the arithmetic: the Bernoulli log-likelihood as logs
of grouped products, and the graph pass that splits a bias from its matrix product — each the
same numbers as the plain form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from vaekit.compiling import split_bias_from_matmul
from vaekit.losses import bernoulli_log_likelihood, bernoulli_log_likelihood_grouped


def _float64_reference(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return bernoulli_log_likelihood(x.double(), logits.double())


@pytest.mark.parametrize(
    "shape",
    [(1, 28, 28), (3, 32, 32), (1, 12, 12), (3, 64, 64)],  # 49, 192 = 3·64, 9 and 768 pixels per lane
    ids=str,
)
def test_grouped_products_give_the_log_likelihood(shape):
    torch.manual_seed(0)
    x = torch.bernoulli(torch.rand(5, *shape))
    logits = 4 * torch.randn(7, 5, *shape)  # 7 samples per example
    logits.view(-1)[:50] = torch.tensor([80.0, -80.0, 0.0, 30.0, -30.0] * 10)  # e^{−|ℓ|} under- and overflows
    ours = bernoulli_log_likelihood_grouped(x, logits)
    exact = _float64_reference(x, logits)
    assert ours.shape == exact.shape == (7, 5) and ours.dtype == torch.float32
    # float32 rounding of a sum of ~10⁴ nats: the plain float32 formula is off by as much
    plain = bernoulli_log_likelihood(x, logits)
    tolerance = max(3 * (plain.double() - exact).abs().max().item(), 1e-4)
    assert (ours.double() - exact).abs().max().item() <= tolerance


def test_grouped_products_take_targets_inside_0_1_and_float64():
    torch.manual_seed(1)
    x, logits = torch.rand(4, 1, 8, 8), torch.randn(4, 1, 8, 8).double() * 3  # 4 pixels per lane: too few
    torch.testing.assert_close(
        bernoulli_log_likelihood_grouped(x, logits), bernoulli_log_likelihood(x, logits)
    )
    x, logits = torch.rand(4, 1, 16, 16).double(), torch.randn(4, 1, 16, 16).double() * 3
    exact = bernoulli_log_likelihood(x, logits)
    assert (bernoulli_log_likelihood_grouped(x, logits) - exact).abs().max() < 1e-10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_odd_sizes_fall_back_to_the_softplus_form(dtype):
    torch.manual_seed(2)
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    logits = (20 * torch.randn(3, 1, 28, 28)).to(dtype)  # 49 factors of up to 2 would overflow float16
    assert torch.equal(bernoulli_log_likelihood_grouped(x, logits), bernoulli_log_likelihood(x, logits))
    x, logits = torch.bernoulli(torch.rand(3, 1, 5, 5)), torch.randn(3, 1, 5, 5)  # 25 pixels
    assert torch.equal(bernoulli_log_likelihood_grouped(x, logits), bernoulli_log_likelihood(x, logits))


def test_split_bias_from_matmul_keeps_the_function():
    torch.manual_seed(0)
    weights = torch.randn(16, 8), torch.randn(16), torch.randn(4, 16), torch.randn(4)

    def mlp(x, w1, b1, w2, b2):
        return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2) + torch.addmm(b2, x[:, :4], w2[:, :4], beta=0.5)

    x = torch.randn(10, 8)
    graph_module = make_fx(mlp, tracing_mode="fake")(x, *weights)  # ATen graph with fake-tensor values
    assert sum(n.target is torch.ops.aten.addmm.default for n in graph_module.graph.nodes) == 3
    assert split_bias_from_matmul(graph_module.graph) == 2  # the β = 0.5 one is left alone
    graph_module.recompile()
    targets = [n.target for n in graph_module.graph.nodes]
    assert targets.count(torch.ops.aten.addmm.default) == 1 and targets.count(torch.ops.aten.mm.default) == 2
    torch.testing.assert_close(graph_module(x, *weights), mlp(x, *weights), rtol=1e-6, atol=1e-6)
