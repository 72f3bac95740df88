"""The pieces of ``vaekit evaluate``'s per-sample work, each against what it replaced, alternated
round by round at one thread:

* the decoders' one-output-channel last layers — oneDNN's convolution against
  :func:`vaekit.nn.conv_transpose2d_by_phases` / :func:`vaekit.nn.conv2d_by_taps`, eager, and
  compiled together with the Bernoulli log-likelihood that reads their output (the softplus form
  before, the grouped products now); for the transposed conv also with its phases not interleaved
  and the target put in their pixel order (``ConvVAE.decode_in_scoring_order``);
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
from vaekit.nn import conv2d_by_taps, conv_transpose2d_by_phases, permute_pixels, phase_pixel_order


def _layer_contenders(x: torch.Tensor, target: torch.Tensor, native, ours, in_phase_order=None) -> dict:
    """The layer eager both ways, and compiled with the likelihood that reads its output as
    ``compile_scoring`` compiles them: before, oneDNN and the softplus form; now, the taps and the
    grouped products. ``target`` is one batch of images ``[B, ...]``; the layer's ``[S·B, ...]``
    output is scored as S samples of it, as ``GaussianLatentVAE._log_px_given_z`` does.
    ``in_phase_order``: ``(layer, order)``, the layer's output in that pixel order, the target
    put in it before compiling."""

    def scored(layer, likelihood):
        def score(x: torch.Tensor) -> torch.Tensor:
            logits = layer(x)
            return likelihood(target, logits.view(-1, *target.shape))  # [S, B]

        return score

    # static shapes, as compile_scoring compiles: a recompile for the second layer would otherwise
    # turn on dynamic shapes
    before = torch.compile(scored(native, bernoulli_log_likelihood), dynamic=False)
    now = torch.compile(scored(ours, bernoulli_log_likelihood_grouped), dynamic=False)
    contenders = {
        "oneDNN": lambda: native(x),
        "by taps": lambda: ours(x),
        "oneDNN + softplus form, compiled": lambda: before(x),
        "by taps + grouped products, compiled": lambda: now(x),
    }
    if in_phase_order is not None:
        layer, order = in_phase_order
        target_in_order = permute_pixels(target, order)  # once per batch, as GaussianLatentVAE.log_px

        def score_in_phase_order(x: torch.Tensor) -> torch.Tensor:
            return bernoulli_log_likelihood_grouped(target_in_order, layer(x).view(-1, *target.shape))

        phase_order = torch.compile(score_in_phase_order, dynamic=False)
        contenders["by taps, phases not interleaved + grouped products, compiled"] = lambda: phase_order(x)
    return contenders


def main() -> None:
    torch.manual_seed(0)
    rows = []
    cases = {
        "ConvVAE last layer: ConvTranspose2d 16→1, 4×4 stride 2, [1200, 16, 14, 14]": (
            torch.randn(1200, 16, 14, 14),
            torch.randn(16, 1, 4, 4),
            lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1),
            lambda x, w, b: conv_transpose2d_by_phases(x, w, b, (2, 2), (1, 1), (0, 0)),
            lambda x, w, b: conv_transpose2d_by_phases(x, w, b, (2, 2), (1, 1), (0, 0), interleave=False),
        ),
        "VanillaVAE last layer: Conv2d 32→1, 3×3, [100, 32, 28, 28]": (
            torch.randn(100, 32, 28, 28),
            torch.randn(1, 32, 3, 3),
            lambda x, w, b: F.conv2d(x, w, b, 1, 1),
            lambda x, w, b: conv2d_by_taps(x, w, b, (1, 1), (1, 1)),
            None,  # a stride-1 conv has one phase: its output is in the image's order already
        ),
    }
    with threads(1), torch.inference_mode():
        for name, (x, weight, native, ours, ours_in_phase_order) in cases.items():
            x = x.contiguous(memory_format=torch.channels_last)  # as vaekit evaluate runs conv models
            bias = torch.randn(1)
            target = torch.bernoulli(torch.rand(100, 1, 28, 28))  # 100 images, len(x) / 100 samples each
            in_phase_order = None
            if ours_in_phase_order is not None:
                in_phase_order = (
                    lambda x, w=weight, b=bias, f=ours_in_phase_order: f(x, w, b),
                    phase_pixel_order(target.shape[2:], (2, 2), (1, 1)),
                )
            contenders = _layer_contenders(
                x,
                target,
                lambda x, w=weight, b=bias, f=native: f(x, w, b),
                lambda x, w=weight, b=bias, f=ours: f(x, w, b),
                in_phase_order,
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
