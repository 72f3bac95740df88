"""CacheTiledSequential: compiled for scoring on a CPU, a decoder's last layers take the batch in
tiles that stay in cache — the same function and weights' keys, tiles only where meant, and the
evaluator sizes its calls by the activations that still grow with them."""

from __future__ import annotations

import torch
from torch import nn

import vaekit.nn
from vaekit import VanillaVAE
from vaekit.evaluate import inference_copy, widest_activation
from vaekit.nn import CACHE_TILE_FLOATS, CacheTiledSequential


class _BatchSizes(nn.Module):
    """The identity, recording the batch size of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return x


def test_a_tile_holds_as_many_examples_as_the_cache_budget_takes():
    assert CacheTiledSequential(nn.Identity(), widest=1000).tile_size == CACHE_TILE_FLOATS // 1000
    assert CacheTiledSequential(nn.Identity(), widest=CACHE_TILE_FLOATS // 7).tile_size == 7
    assert CacheTiledSequential(nn.Identity(), widest=3 * CACHE_TILE_FLOATS).tile_size == 1


def test_tiles_only_compiled_without_autograd(monkeypatch):
    """Under ``torch.compile`` (``torch.compiler.is_compiling()``, faked here so it runs eager) and
    without autograd the batch goes through all layers tile by tile; otherwise whole."""
    torch.manual_seed(0)
    sizes = _BatchSizes()
    block = CacheTiledSequential(
        nn.Conv2d(3, 4, 3, padding=1), sizes, nn.LeakyReLU(), widest=CACHE_TILE_FLOATS // 7
    )
    x = torch.randn(23, 3, 5, 5)
    with torch.no_grad():
        whole = block(x)
    assert sizes.sizes == [23]  # not compiling
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    sizes.sizes.clear()
    trained = block(x)
    assert sizes.sizes == [23] and trained.requires_grad  # autograd on
    sizes.sizes.clear()
    with torch.inference_mode():
        tiled = block(x)
        block(x[:7])  # one tile's worth: whole
    assert sizes.sizes == [7, 7, 7, 2, 7]
    torch.testing.assert_close(tiled, whole, rtol=1e-6, atol=1e-6)


def test_the_compiled_graph_convolves_each_tile():
    """Traced by dynamo for real: one convolution per tile in the graph, and the eager result."""
    torch.manual_seed(0)
    block = CacheTiledSequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), widest=CACHE_TILE_FLOATS // 7)
    convolutions = []

    def count_convolutions(graph_module: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        convolutions.append(sum(node.target is torch.conv2d for node in graph_module.graph.nodes))
        return graph_module.forward

    x = torch.randn(23, 3, 5, 5)
    with torch.inference_mode():
        compiled = torch.compile(block, backend=count_convolutions, dynamic=False)(x)
        torch.testing.assert_close(compiled, block(x))
    assert convolutions == [4]  # 7 + 7 + 7 + 2


def test_the_vanilla_vae_keeps_its_keys_and_tiles_its_last_up_sampling():
    model = VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=12)
    assert isinstance(model.final_layer, CacheTiledSequential)
    assert model.final_layer.widest == 8 * 12 * 12  # the last up-sampling's output for one example
    plain = nn.Sequential(*model.final_layer)
    assert list(plain.state_dict()) == list(model.final_layer.state_dict())  # checkpoints load as before
    # the inference copy folds and fuses in place: still tiled
    assert isinstance(inference_copy(model).final_layer, CacheTiledSequential)


def test_compiled_calls_are_sized_by_the_activations_outside_the_tiles():
    """widest_activation: eager, the last up-sampling (8 × 12 × 12); compiled, only what stays whole
    grows with the chunk — the last decoder stage and first encoder conv (8 × 6 × 6)."""
    model = VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=12).eval()
    x = torch.rand(10, 1, 12, 12)
    assert widest_activation(model, x) == 8 * 12 * 12
    assert widest_activation(model, x, compiled=True) == 8 * 6 * 6


def test_compiled_vanilla_vae_scores_in_tiles_as_eager(monkeypatch):
    """The VanillaVAE's importance-sampled log p(x), compiled with tiles of 3 samples (the budget
    shrunk so a small batch has several), against eager with the same draws."""
    monkeypatch.setattr(vaekit.nn, "CACHE_TILE_FLOATS", 3 * 8 * 12 * 12)
    torch.manual_seed(0)
    model = VanillaVAE(1, 4, hidden_dims=[8, 16], image_size=12, likelihood="bernoulli").eval()
    x = torch.bernoulli(torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1)))
    compiled = inference_copy(model)
    compiled.compile_scoring()
    assert compiled.final_layer.tile_size == 3
    with torch.inference_mode():
        torch.manual_seed(5)
        expected, _ = model.log_px(x, 6, 3)  # 12 samples a call: 4 tiles
        torch.manual_seed(5)
        got, _ = compiled.log_px(x, 6, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
