"""The pieces of ``vaekit evaluate``'s per-sample work, each against what it replaced, alternated
round by round at one thread:

* the decoders' one-output-channel last layers — oneDNN's convolution against
  :func:`vaekit.nn.conv_transpose2d_by_phases` / :func:`vaekit.nn.conv2d_by_taps`, eager, and
  compiled together with the Bernoulli log-likelihood that reads their output (the softplus form
  before, the grouped products now); for the transposed conv also with its phases not interleaved
  and the target put in their pixel order (``ConvVAE.decode_in_scoring_order``);
* the MLP decoder's last layer and likelihood compiled — ``addmm`` + softplus form (what
  ``compile_scoring`` did before) against ``mm`` + bias split off (:mod:`vaekit.compiling`) +
  grouped products (:func:`vaekit.losses.bernoulli_log_likelihood_grouped`);
* the ConvVAE's middle layer with its bias and ReLU, oneDNN's transposed conv against the sub-pixel
  form (:func:`vaekit.nn.conv_transpose2d_subpixel`), eager and compiled;
* the VanillaVAE's last up-sampling with its bias and LeakyReLU, eager: oneDNN's transposed conv
  and a pass each for bias and activation against the two as oneDNN post-ops
  (:func:`vaekit.nn.conv_transpose2d_activation`); and compiled, where inductor adds both in one pass.

    python benchmarks/bench_scoring_layers.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import alternate, report, threads

from vaekit.compiling import compile_for_scoring
from vaekit.losses import bernoulli_log_likelihood, bernoulli_log_likelihood_grouped
from vaekit.nn import (
    conv2d_by_taps,
    conv_transpose2d_activation,
    conv_transpose2d_by_phases,
    conv_transpose2d_subpixel,
    permute_pixels,
    phase_pixel_order,
)


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
        for name, contenders in _activated_layers().items():
            for what, t in alternate(contenders, rounds=9).items():
                rows.append({"layer": name, "how": what, "median_ms": t["median_ms"], "min_ms": t["min_ms"]})
    report("bench_scoring_layers", rows, ["layer", "how", "median_ms", "min_ms"])


def _activated_layers() -> dict[str, dict]:
    """The transposed convs before an activation, as the evaluator runs them (channels-last)."""
    cl = torch.channels_last
    x = torch.randn(1200, 32, 7, 7).contiguous(memory_format=cl)
    weight, bias = torch.randn(32, 16, 4, 4).contiguous(memory_format=cl), torch.randn(16)

    def onednn(x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv_transpose2d(x, weight, None, 2, 1) + bias.view(1, -1, 1, 1))

    def subpixel(x: torch.Tensor) -> torch.Tensor:
        return F.relu(conv_transpose2d_subpixel(x, weight, bias, (2, 2), (1, 1), (0, 0)))

    onednn_compiled, subpixel_compiled = (torch.compile(f, dynamic=False) for f in (onednn, subpixel))
    middle = {
        "oneDNN + bias + ReLU": lambda: onednn(x),
        "sub-pixel conv + bias + ReLU": lambda: subpixel(x),
        "oneDNN + bias + ReLU, compiled": lambda: onednn_compiled(x),
        "sub-pixel conv + bias + ReLU, compiled": lambda: subpixel_compiled(x),
    }
    h = torch.randn(100, 32, 14, 14).contiguous(memory_format=cl)
    w3, b3 = torch.randn(32, 32, 3, 3).contiguous(memory_format=cl), torch.randn(32)

    def separate(h: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(F.conv_transpose2d(h, w3, None, 2, 1, 1) + b3.view(1, -1, 1, 1))

    def post_ops(h: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d_activation(h, w3, b3, (2, 2), (1, 1), (1, 1), "leaky_relu", 0.01)

    separate_compiled = torch.compile(separate, dynamic=False)  # bias + activation: one fused pass
    last = {
        "oneDNN, then bias, then LeakyReLU": lambda: separate(h),
        "oneDNN with bias + LeakyReLU as post-ops": lambda: post_ops(h),
        "oneDNN, then bias + LeakyReLU, compiled": lambda: separate_compiled(h),
    }
    return {
        "ConvVAE middle layer: ConvTranspose2d 32→16, 4×4 stride 2, + bias + ReLU, [1200, 32, 7, 7]": middle,
        "VanillaVAE last up-sampling: ConvTranspose2d 32→32, 3×3 stride 2, + bias + LeakyReLU, "
        "[100, 32, 14, 14]": last,
    }


if __name__ == "__main__":
    main()
