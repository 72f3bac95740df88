"""The pieces of ``vaekit evaluate``'s per-sample work, each against what it replaced, alternated
round by round at one thread:

* the decoders' one-output-channel last layers — oneDNN's convolution against
  :func:`vaekit.nn.conv_transpose2d_by_phases` / :func:`vaekit.nn.conv2d_by_taps`, eager, and
  compiled together with the Bernoulli log-likelihood that reads their output (the softplus form
  before, the grouped products now);
* the MLP decoder's last layer and likelihood compiled — ``addmm`` + softplus form (what
  ``compile_scoring`` did before) against ``mm`` + bias split off (:mod:`vaekit.compiling`) +
  grouped products (:func:`vaekit.losses.bernoulli_log_likelihood_grouped`).

    python benchmarks/bench_scoring_layers.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import alternate, report, threads

from vaekit.compiling import compile_for_scoring
from vaekit.losses import bernoulli_log_likelihood, bernoulli_log_likelihood_grouped
from vaekit.nn import conv2d_by_taps, conv_transpose2d_by_phases


def _layer_contenders(x: torch.Tensor, target: torch.Tensor, native, ours) -> dict:
    """The layer eager both ways, and compiled with the likelihood that reads its output as
    ``compile_scoring`` compiles them: before, oneDNN and the softplus form; now, the taps and the
    grouped products. ``target`` is one batch of images ``[B, ...]``; the layer's ``[S·B, ...]``
    output is scored as S samples of it, as ``GaussianLatentVAE._log_px_given_z`` does."""

    def scored(layer, likelihood):
        def score(x: torch.Tensor) -> torch.Tensor:
            logits = layer(x)
            return likelihood(target, logits.view(-1, *target.shape))  # [S, B]

        return score

    # static shapes, as compile_scoring compiles: a recompile for the second layer would otherwise
    # turn on dynamic shapes
    before = torch.compile(scored(native, bernoulli_log_likelihood), dynamic=False)
    now = torch.compile(scored(ours, bernoulli_log_likelihood_grouped), dynamic=False)
    return {
        "oneDNN": lambda: native(x),
        "by taps": lambda: ours(x),
        "oneDNN + softplus form, compiled": lambda: before(x),
        "by taps + grouped products, compiled": lambda: now(x),
    }


def main() -> None:
    torch.manual_seed(0)
    rows = []
    cases = {
        "ConvVAE last layer: ConvTranspose2d 16→1, 4×4 stride 2, [1200, 16, 14, 14]": (
            torch.randn(1200, 16, 14, 14),
            torch.randn(16, 1, 4, 4),
            lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1),
            lambda x, w, b: conv_transpose2d_by_phases(x, w, b, (2, 2), (1, 1), (0, 0)),
        ),
        "VanillaVAE last layer: Conv2d 32→1, 3×3, [100, 32, 28, 28]": (
            torch.randn(100, 32, 28, 28),
            torch.randn(1, 32, 3, 3),
            lambda x, w, b: F.conv2d(x, w, b, 1, 1),
            lambda x, w, b: conv2d_by_taps(x, w, b, (1, 1), (1, 1)),
        ),
    }
    with threads(1), torch.inference_mode():
        for name, (x, weight, native, ours) in cases.items():
            x = x.contiguous(memory_format=torch.channels_last)  # as vaekit evaluate runs conv models
            bias = torch.randn(1)
            target = torch.bernoulli(torch.rand(100, 1, 28, 28))  # 100 images, len(x) / 100 samples each
            contenders = _layer_contenders(
                x,
                target,
                lambda x, w=weight, b=bias, f=native: f(x, w, b),
                lambda x, w=weight, b=bias, f=ours: f(x, w, b),
            )
            times = alternate(contenders, rounds=9)
            for what, t in times.items():
                rows.append({"layer": name, "how": what, "median_ms": t["median_ms"], "min_ms": t["min_ms"]})

        hidden, weight, bias = torch.randn(4800, 300), torch.randn(784, 300), torch.randn(784)
        target = torch.bernoulli(torch.rand(1, 784))
        before = torch.compile(
            lambda h: bernoulli_log_likelihood(target, F.linear(h, weight, bias)), dynamic=False
        )
        after = compile_for_scoring(
            lambda h: bernoulli_log_likelihood_grouped(target, F.linear(h, weight, bias)), hidden.device
        )
        name = "MLP last layer + likelihood: [4800, 300] @ [300, 784], compiled"
        times = alternate(
            {
                "addmm + softplus form": lambda: before(hidden),
                "mm, bias split + grouped products": lambda: after(hidden),
            },
            rounds=9,
        )
        for what, t in times.items():
            rows.append({"layer": name, "how": what, "median_ms": t["median_ms"], "min_ms": t["min_ms"]})
    report("bench_scoring_layers", rows, ["layer", "how", "median_ms", "min_ms"])


if __name__ == "__main__":
    main()
