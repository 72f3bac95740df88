"""``torch.compile`` for the evaluator's per-sample scoring (``vaekit evaluate --compile``).

On a CPU, two changes to inductor's defaults. The graph's wrapper — the code that allocates its
buffers and calls its kernels and the library's products in turn — is generated C++
(``cpp_wrapper``), not Python: a scoring call runs for a few milliseconds, and the Python wrapper's
own time was 4–9% of it (the MLP VAE's and VanillaVAE's log p(x), two threads; docs/performance.md).
And one extra graph pass: inductor keeps ``bias + x @ Wᵀ`` as one ``addmm``, whose BLAS call
first copies the broadcast bias into the whole output and then accumulates onto it — a write and a
read of a ``[rows, features]`` tensor more than a plain product (for the MLP decoder's
``[4800, 300] @ [300, 784]``, 15 MB each way). Split into ``mm`` + ``add``, the add fuses into the
activation or likelihood kernel that reads the product anyway. Inductor makes the same split
itself on GPUs (``unfuse_bias_add_to_pointwise``), not on CPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten


def split_bias_from_matmul(graph: torch.fx.Graph) -> int:
    """Rewrite each ``addmm(bias, a, b)`` (β = α = 1) of an ATen graph whose nodes carry fake-tensor
    values (``meta["val"]``) as ``mm(a, b) + bias``, in place; returns how many were rewritten."""
    rewritten = 0
    for node in list(graph.nodes):
        if node.target is not aten.addmm.default or node.kwargs or len(node.args) != 3:
            continue  # β or α given: left as they are
        bias, a, b = node.args
        if "val" not in a.meta or "val" not in b.meta:
            continue
        with graph.inserting_before(node):
            product = graph.call_function(aten.mm.default, (a, b))
            product.meta["val"] = aten.mm.default(a.meta["val"], b.meta["val"])  # fake tensors
            total = graph.call_function(aten.add.Tensor, (product, bias))
            total.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(total)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


@functools.cache
def _split_bias_pass() -> Any:
    """:func:`split_bias_from_matmul` as an inductor post-grad pass (``torch._inductor`` takes a
    second to import, so only when something is compiled). It runs after inductor's own passes
    (``post_grad_custom_post_pass``): before them, inductor's ``mm + bias → addmm`` would fuse it
    back."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class SplitBiasFromMatmul(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            split_bias_from_matmul(graph)

        def uuid(self) -> Any:
            return get_hash_for_files((__file__,))  # inductor's cache key: this file's text

    return SplitBiasFromMatmul()


def compile_for_scoring(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """``torch.compile(fn)`` with static shapes (one graph per chunk size), plus, when ``fn`` runs on
    a CPU, :func:`split_bias_from_matmul` and a C++ wrapper."""
    options = None
    if device.type == "cpu":
        options = {"post_grad_custom_post_pass": _split_bias_pass(), "cpp_wrapper": True}
    return torch.compile(fn, dynamic=False, options=options)
