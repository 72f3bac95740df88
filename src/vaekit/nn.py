"""Building blocks shared by the models, and the feature-map size arithmetic."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    """An activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def halving_sizes(size: int, num_layers: int, ceil: bool) -> list[int]:
    """Spatial sizes through ``num_layers`` stride-2 convolutions: ``[size, s1, …, s_L]``.

    A 3×3 conv with padding 1 maps n → ⌈n/2⌉ (``ceil=True``); a 4×4 conv with padding 1 maps
    n → ⌊n/2⌋ (``ceil=False``).
    """
    sizes = [size]
    for _ in range(num_layers):
        sizes.append((sizes[-1] + 1) // 2 if ceil else sizes[-1] // 2)
    return sizes


def transpose_output_padding(target: int, source: int, kernel: int, padding: int) -> int:
    """The ``output_padding`` that makes a stride-2 transposed conv map ``source`` back to ``target``.

    A stride-2 ConvTranspose2d gives ``2(source − 1) − 2·padding + kernel + output_padding``; the
    remainder is 0 or 1 when ``source`` came from ``target`` through the mirrored conv, so the
    decoder reproduces odd and non-square sizes exactly (the seed hard-codes 64×64 instead).
    """
    padding_needed = target - (2 * (source - 1) - 2 * padding + kernel)
    if padding_needed not in (0, 1):
        raise ValueError(f"cannot map {source} to {target} with one stride-2 transposed conv")
    return padding_needed


def upsampling_conv(
    c_in: int, c_out: int, kernel: int, target: Sequence[int], source: Sequence[int], padding: int = 1
) -> ConvTranspose2d:
    """A stride-2 transposed conv that maps a ``source`` (h, w) feature map to exactly ``target`` (H, W):
    the decoders' up-sampling step, mirroring a stride-2 conv of the encoder."""
    output_padding = tuple(
        transpose_output_padding(t, s, kernel, padding) for t, s in zip(target, source, strict=True)
    )
    return ConvTranspose2d(c_in, c_out, kernel, stride=2, padding=padding, output_padding=output_padding)


#: Feature maps of at most this many positions per example (the conv's output, the transposed
#: conv's input) are convolved as one matrix product on a CPU (:class:`Conv2d`).
GEMM_MAX_POSITIONS = 4

#: Without autograd on a CPU, convolutions with at most this many output channels (a decoder's
#: last layer) are one matrix product and shifted sums (:func:`conv2d_by_taps`,
#: :func:`conv_transpose2d_by_phases`): oneDNN computes them at a few GFLOP/s.
FEW_OUTPUT_CHANNELS = 4

#: Without autograd, inside ``torch.compile``, on a CPU, a transposed conv with at most this many
#: output channels whose kernel is a multiple of its stride is :func:`conv_transpose2d_subpixel`:
#: oneDNN's transposed conv onto 16 channels runs at 70 GFLOP/s here, the forward conv of the
#: sub-pixel form 1.3–1.6× faster; onto 32 channels the two are even (docs/performance.md).
SUBPIXEL_MAX_OUT_CHANNELS = 16

#: Floats that the widest activation of one tile of a :class:`CacheTiledSequential` may reach: 2 MiB,
#: one core's L2 cache here (the VanillaVAE's last layers, 25,088 floats an example, ran fastest in
#: tiles of 20 or 25 examples, a little slower in tiles of 10 or 50, slowest whole: docs/performance.md).
CACHE_TILE_FLOATS = 2**19

#: Whether this torch has oneDNN and its transposed conv with post-ops (asked once, at import: inside
#: ``torch.compile`` the question would break the graph).
ONEDNN_POST_OPS = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_transpose_pointwise"
)


def _on_cpu_plain(module: nn.Conv2d | nn.ConvTranspose2d, x: Tensor) -> bool:
    """Whether ``module`` may take the CPU paths of :class:`Conv2d` / :class:`ConvTranspose2d`: a
    batch of 2-d maps on a CPU, and the plain case (no groups, dilation, padding mode or string padding)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and module.groups == 1
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


def _channels_last(weight: Tensor) -> bool:
    """A 4-d weight stored channels last (``model.to(memory_format=torch.channels_last)``)."""
    return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def _autocast_operand(param: Tensor, input: Tensor) -> Tensor:
    """``param`` in the dtype autocast gives a convolution's operands (the parameter itself outside
    autocast), so the paths below compute in the precision ``nn.Conv2d`` would."""
    device = input.device.type
    if torch.is_autocast_enabled(device):
        return param.to(torch.get_autocast_dtype(device))
    return param


def _autocast_weight_and_bias(
    module: nn.Conv2d | nn.ConvTranspose2d, input: Tensor
) -> tuple[Tensor, Tensor | None]:
    """``module``'s weight and bias (None if it has none) in the dtype autocast gives ``input``."""
    bias = None if module.bias is None else _autocast_operand(module.bias, input)
    return _autocast_operand(module.weight, input), bias


def _tap_planes(x: Tensor, weight_by_tap: Tensor) -> Tensor:
    """Every input position times every tap of the weight, one plane per tap and output channel:
    ``x [N, C_in, H, W]``, ``weight_by_tap [kh, kw, C_out, C_in]`` -> ``[kh, kw, C_out, N, H, W]``.

    One matrix product ``[kh·kw·C_out, C_in] @ [C_in, N·H·W]``: the input's channels-last rows are
    read transposed, not copied, and each plane comes out contiguous, so the shifted sums run along
    whole image rows (for the ConvVAE's last layer 1.8× faster eager, 1.3–1.8× compiled, than with
    the taps interleaved in the columns of ``rows @ W``).
    """
    batch, c_in, height, width = x.shape
    kh, kw, c_out, _ = weight_by_tap.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, c_in)  # [N·H·W, C_in]
    # Products and the shifted sums over them in float32 (float64 stays), as a convolution
    # accumulates, also for bf16 operands: the callers round the result to the input's dtype once.
    dtype = torch.promote_types(x.dtype, torch.float32)
    weight_matrix = weight_by_tap.reshape(kh * kw * c_out, c_in).to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        planes = weight_matrix @ rows.t().to(dtype)  # [kh·kw·C_out, N·H·W]
    return planes.view(kh, kw, c_out, batch, height, width)


def conv2d_by_taps(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """A convolution as one matrix product and a sum of shifted taps (no groups or dilation).

    ``out[c, y, x] = Σ_{i,j} P[i, j, c, s·y + i − p, s·x + j − p]`` with the per-position products
    ``P[i, j, c] = W[c, :, i, j] · x`` (:func:`_tap_planes`; P is zero outside the map). The product
    runs at the matrix-multiply rate whatever C_out is; the kh·kw shifted sums then read kh·kw values
    per output, cheap only for a few output channels. ``x: [N, C_in, H, W]``, ``weight:
    [C_out, C_in, kh, kw]`` -> ``[N, C_out, h, w]``.
    """
    _, _, height, width = x.shape
    _, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    planes = _tap_planes(x, weight.permute(2, 3, 0, 1))  # [kh, kw, C_out, N, H, W]
    # zero rows and columns around the map, as many as the last tap reaches past it
    below, right = sh * (out_h - 1) + kh - height - ph, sw * (out_w - 1) + kw - width - pw
    planes = F.pad(planes, (pw, max(right, 0), ph, max(below, 0)))
    span_h, span_w = sh * (out_h - 1) + 1, sw * (out_w - 1) + 1  # rows and columns one tap reads
    out = sum(  # [C_out, N, h, w]
        planes[i, j, :, :, i : i + span_h : sh, j : j + span_w : sw] for i in range(kh) for j in range(kw)
    )
    if bias is not None:
        out = out + bias.view(-1, 1, 1, 1)
    return out.to(x.dtype).transpose(0, 1)


def _phase_range(out_size: int, stride: int, padding: int, phase: int) -> tuple[int, int]:
    """The rows a, a_lo ≤ a < a_hi, of one phase's grid that land inside the cropped output: row a
    of phase r is output row s·a + r − p."""
    return -(-(padding - phase) // stride), -(-(out_size + padding - phase) // stride)


def phase_pixel_order(
    out_size: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    device: torch.device | None = None,
) -> Tensor:
    """The pixel order of :func:`conv_transpose2d_by_phases` with ``interleave=False``: for each of
    an ``[H_out, W_out]`` map's pixels in that order, its index ``y·W_out + x`` in the image. Phase
    by phase (r_h, r_w), row by row: the pixels y ≡ r_h − p (mod s_h), x ≡ r_w − p (mod s_w)."""
    (out_h, out_w), (sh, sw), (ph, pw) = out_size, stride, padding
    pieces = []
    for r_h in range(sh):
        rows = torch.arange(*_phase_range(out_h, sh, ph, r_h), device=device) * sh + r_h - ph
        for r_w in range(sw):
            cols = torch.arange(*_phase_range(out_w, sw, pw, r_w), device=device) * sw + r_w - pw
            pieces.append((rows[:, None] * out_w + cols[None, :]).flatten())
    return torch.cat(pieces)


def permute_pixels(images: Tensor, order: Tensor) -> Tensor:
    """``images [..., H, W]`` with each map's pixels taken in ``order`` (indices into its ``H·W``)."""
    return images.flatten(-2)[..., order].view(images.shape)


def conv_transpose2d_by_phases(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    interleave: bool = True,
) -> Tensor:
    """A transposed convolution as one matrix product and, per output phase, a sum of shifted taps.

    Input position (y, x) adds ``P[i, j, :, y, x] = Σ_c x[c, y, x] W[c, :, i, j]`` (:func:`_tap_planes`)
    to output position (s·y + i − p, s·x + j − p). Output rows of one phase r = (s·y + i) mod s take
    taps i = r, r + s, r + 2s, …, so the uncropped output's row s·a + r is ``Σ_t P[r + s·t, ·, ·, a − t]``:
    for each of the s² phases a sum of shifted planes, then the phases interleaved and the padding
    cropped. The product runs at the matrix-multiply rate; the shifted sums read kh·kw/s² values per
    output, cheap for a few output channels. ``x: [N, C_in, H, W]``, ``weight: [C_in, C_out, kh, kw]``
    -> ``[N, C_out, H_out, W_out]``.

    ``interleave=False`` skips the interleaving: each phase is cropped and the phases follow one
    another, so each channel's ``H_out·W_out`` pixels come in the order of :func:`phase_pixel_order`
    (still shaped ``[N, C_out, H_out, W_out]``). A sum over pixels — a factorised likelihood — can
    take them so once its target is put in the same order; interleaving is a strided scatter that a
    compiler vectorises badly (for the ConvVAE's last layer it cost as much as the likelihood).
    """
    batch, _, height, width = x.shape
    _, c_out, kh, kw = weight.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    full_h, full_w = (height - 1) * sh + kh + oh, (width - 1) * sw + kw + ow  # before cropping
    out_h, out_w = full_h - 2 * ph, full_w - 2 * pw
    rows_h, rows_w = -(-full_h // sh), -(-full_w // sw)  # rows and columns of one phase
    planes = _tap_planes(x, weight.permute(2, 3, 1, 0))  # [kh, kw, C_out, N, H, W]
    phases = []  # [C_out, N, rows_h, rows_w] for each (r_h, r_w)
    for r_h in range(sh):
        for r_w in range(sw):
            terms = [
                # tap (i, j) lands i // s_h phase rows below (and j // s_w columns right of) its input
                F.pad(planes[i, j], (j // sw, rows_w - width - j // sw, i // sh, rows_h - height - i // sh))
                for i in range(r_h, kh, sh)
                for j in range(r_w, kw, sw)
            ]
            phases.append(sum(terms) if terms else planes.new_zeros(c_out, batch, rows_h, rows_w))
    if interleave:
        # [s_h, s_w, C_out, N, rows_h, rows_w] -> [C_out, N, rows_h, s_h, rows_w, s_w]: uncropped row
        # s_h·a + r_h, column s_w·b + r_w
        grid = torch.stack(phases).view(sh, sw, c_out, batch, rows_h, rows_w).permute(2, 3, 4, 0, 5, 1)
        full = grid.reshape(c_out, batch, rows_h * sh, rows_w * sw)
        out = full[:, :, ph : full_h - ph, pw : full_w - pw]  # [C_out, N, H_out, W_out]
    else:  # each phase's rows and columns inside the output, flattened, one phase after another
        inside = [
            phase[:, :, slice(*_phase_range(out_h, sh, ph, r_h)), slice(*_phase_range(out_w, sw, pw, r_w))]
            for (r_h, r_w), phase in zip(itertools.product(range(sh), range(sw)), phases, strict=True)
        ]
        out = torch.cat([phase.flatten(2) for phase in inside], dim=2).view(c_out, batch, out_h, out_w)
    if bias is not None:
        out = out + bias.view(-1, 1, 1, 1)
    return out.to(x.dtype).transpose(0, 1)


def _transposed_output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int) -> int:
    """``(size − 1)·s − 2p + k + output_padding``: a transposed conv's output rows (or columns)."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def subpixel_weight(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """A transposed conv's weight as the weight of the forward conv that gives its output phases.

    ``weight [C_in, C_out, kh, kw]`` with ``kh = s_h·t_h``, ``kw = s_w·t_w`` -> ``[s_h·s_w·C_out,
    C_in, t_h, t_w]``, the output channels phase-major: channel ``(r_h·s_w + r_w)·C_out + c`` is output
    channel c of phase (r_h, r_w), and its tap (v_h, v_w) is ``W[:, c, r_h + s_h·(t_h−1−v_h),
    r_w + s_w·(t_w−1−v_w)]`` (see :func:`conv_transpose2d_subpixel`).
    """
    c_in, c_out, kh, kw = weight.shape
    (sh, sw), (th, tw) = stride, (kh // stride[0], kw // stride[1])
    # tap i = s·u + r: [C_in, C_out, u_h, r_h, u_w, r_w]; v = t − 1 − u (flip), then phases first
    by_phase = weight.reshape(c_in, c_out, th, sh, tw, sw).flip(2, 4).permute(3, 5, 1, 0, 2, 4)
    return by_phase.reshape(sh * sw * c_out, c_in, th, tw)


def conv_transpose2d_subpixel(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> Tensor:
    """A transposed convolution whose kernel is a multiple of its stride, as one forward convolution
    to its s_h·s_w output phases, interleaved ("sub-pixel convolution").

    Uncropped output row R = s·q + r takes input rows y = q − u through taps i = r + s·u, u < t = k/s
    (as in :func:`conv_transpose2d_by_phases`): for each phase r a t-tap cross-correlation of the
    input, all phases as the channels of one ``conv2d(x, subpixel_weight(W), padding=t − 1)``
    (:func:`subpixel_weight`) over q = 0 … H + t − 2, then row s·q + r of phase r, cropped to
    ``[p, p + H_out)``; the same for columns. No multiply-add beyond the (H + t − 1)² − H² border
    windows. Needs ``output_padding ≤ padding`` (the crop stays inside the s·(H + t − 1) rows).
    ``x: [N, C_in, H, W]``, ``weight: [C_in, C_out, kh, kw]`` -> ``[N, C_out, H_out, W_out]``.
    """
    batch, _, height, width = x.shape
    _, c_out, kh, kw = weight.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    th, tw = kh // sh, kw // sw
    q_h, q_w = height + th - 1, width + tw - 1
    # [N, s_h·s_w·C_out, Q_h, Q_w]: window q covers input rows q − t + 1 … q
    phases = F.conv2d(x, subpixel_weight(weight, stride), None, 1, (th - 1, tw - 1))
    # [N, s_h, s_w, C_out, Q_h, Q_w] -> [N, C_out, Q_h, s_h, Q_w, s_w]: uncropped row s_h·q + r_h
    full = (
        phases.view(batch, sh, sw, c_out, q_h, q_w)
        .permute(0, 3, 4, 1, 5, 2)
        .reshape(batch, c_out, q_h * sh, q_w * sw)
    )
    out_h = _transposed_output_size(height, kh, sh, ph, oh)
    out_w = _transposed_output_size(width, kw, sw, pw, ow)
    out = full[:, :, ph : ph + out_h, pw : pw + out_w]
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def conv_transpose2d_activation(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    activation: str,
    negative_slope: float = 0.0,
) -> Tensor:
    """``activation(conv_transpose2d(x, weight, bias))`` as one oneDNN call, bias and activation
    applied as post-ops while each output block is written: ``"relu"``, or ``"leaky_relu"`` with
    ``negative_slope``. CPU, float32, no autograd (:data:`ONEDNN_POST_OPS`). ``x: [N, C_in, H, W]``,
    ``weight: [C_in, C_out, kh, kw]`` -> ``[N, C_out, H_out, W_out]``.
    """
    scalars = [negative_slope] if activation == "leaky_relu" else []
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        x, weight, bias, [*padding], [*output_padding], [*stride], [1, 1], 1, activation, scalars, ""
    )


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same weights, same result up to rounding) that convolves a tiny output map as
    one matrix product on a CPU.

    oneDNN's direct convolution is slow when the output map has a handful of positions and many
    channels: the seed's 256 → 512 conv onto 2×2 runs 3× faster forward and backward, fp32 and bf16,
    as the product ``[B·h·w, C_in·kh·kw] @ [C_in·kh·kw, C_out]`` of the unrolled (im2col) input
    (benchmarks/cmp_seed_vae.py). Larger maps take oneDNN's path, which wins there — except, when no
    gradient is recorded, for a layer of at most :data:`FEW_OUTPUT_CHANNELS` outputs (a decoder's
    last conv), which :func:`conv2d_by_taps` computes (benchmarks/bench_scoring_layers.py).
    """

    def forward(self, input: Tensor) -> Tensor:
        if not _on_cpu_plain(self, input):
            return super().forward(input)
        batch, _, height, width = input.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
        if out_h * out_w > GEMM_MAX_POSITIONS:
            if self.out_channels <= FEW_OUTPUT_CHANNELS and not torch.is_grad_enabled():
                weight, bias = _autocast_weight_and_bias(self, input)
                return conv2d_by_taps(input.to(weight.dtype), weight, bias, self.stride, self.padding)
            return super().forward(input)
        weight = _autocast_operand(self.weight, input)
        x = F.pad(input.to(weight.dtype), (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C_in]
        patches = x.unfold(1, kh, sh).unfold(2, kw, sw)  # [B, h, w, C_in, kh, kw]
        if _channels_last(weight):  # weight stored [C_out, kh, kw, C_in]: taps before channels
            patches, weight = patches.permute(0, 1, 2, 4, 5, 3), weight.permute(0, 2, 3, 1)
        rows = patches.reshape(batch * out_h * out_w, -1)  # [B·h·w, C_in·kh·kw]
        out = rows @ weight.reshape(self.out_channels, -1).t()  # [B·h·w, C_out]
        if self.bias is not None:
            out = out + _autocast_operand(self.bias, input)
        return out.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)  # [B, C_out, h, w], channels last


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same weights, same result up to rounding) with five CPU paths.

    A tiny input map is up-sampled as one matrix product and a ``fold`` (col2im), as
    :class:`Conv2d` does. When no gradient is recorded, a layer of at most
    :data:`FEW_OUTPUT_CHANNELS` outputs is :func:`conv_transpose2d_by_phases`, and under
    ``torch.compile`` one of at most :data:`SUBPIXEL_MAX_OUT_CHANNELS` whose kernel is a multiple of
    its stride :func:`conv_transpose2d_subpixel`. Any other map is convolved without its bias,
    which is added after: oneDNN derives a transposed conv's bias gradient inside its weight
    gradient, slowly (the seed's last 32 → 32 up-sampling onto 64×64 took 1.7× longer forward and
    backward with it inside, bf16; 1.4× in fp32), where a separate ``+ bias`` costs one pass over
    the output — except with an :attr:`activation`, no autograd and not compiled, where bias and
    activation are oneDNN post-ops (:func:`conv_transpose2d_activation`).

    ``activation`` (None unless set: :func:`vaekit.evaluate.fuse_activations` moves the ReLU or
    LeakyReLU that follows the layer into it on the evaluator's inference copy) is applied to the
    output on every path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.activation: nn.Module | None = None

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or not _on_cpu_plain(self, input):
            return self._activate(super().forward(input, output_size))
        if self._by_phases(input):
            return self._activate(self._phases(input, interleave=True))
        if input.shape[2] * input.shape[3] <= GEMM_MAX_POSITIONS:
            out = self._as_product(input)
        elif self._subpixel(input):
            weight, bias = _autocast_weight_and_bias(self, input)
            return self._activate(
                conv_transpose2d_subpixel(
                    input.to(weight.dtype), weight, bias, self.stride, self.padding, self.output_padding
                )
            )
        elif (post_op := self._activation_post_op(input)) is not None:
            return conv_transpose2d_activation(
                input, self.weight, self.bias, self.stride, self.padding, self.output_padding, *post_op
            )
        else:
            out = F.conv_transpose2d(
                input, self.weight, None, self.stride, self.padding, self.output_padding, self.groups
            )
        if self.bias is not None:
            out = out + _autocast_operand(self.bias, input).view(1, -1, 1, 1)
        return self._activate(out)

    def _activate(self, out: Tensor) -> Tensor:
        return out if self.activation is None else self.activation(out)

    def _activation_post_op(self, input: Tensor) -> tuple[str, float] | None:
        """oneDNN's name and slope for :attr:`activation` where :func:`conv_transpose2d_activation`
        computes this layer (the caller has ruled out the other paths), else None: a ReLU or
        LeakyReLU, float32 outside autocast, no autograd, oneDNN present, not traced by
        ``torch.compile`` (whose own kernel for bias + activation made the VanillaVAE's scoring as
        fast, and which cannot trace oneDNN's op with an unpacked weight), and an output that is a
        whole number of strides per input row and column — otherwise (a 3×3 stride-2 kernel without
        output padding) oneDNN falls back to a kernel 8–30× slower than its transposed conv."""
        if (
            not isinstance(self.activation, (nn.ReLU, nn.LeakyReLU))
            or torch.compiler.is_compiling()
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled(input.device.type)
            or input.dtype != torch.float32
            or not ONEDNN_POST_OPS
        ):
            return None
        sizes = zip(
            input.shape[2:], self.kernel_size, self.stride, self.padding, self.output_padding, strict=True
        )
        if any(_transposed_output_size(*size) != size[0] * size[2] for size in sizes):
            return None
        if isinstance(self.activation, nn.LeakyReLU):
            return "leaky_relu", float(self.activation.negative_slope)
        return "relu", 0.0

    def forward_in_phase_order(self, input: Tensor) -> Tensor:
        """The output ``[N, C_out, H_out, W_out]`` with each channel's pixels in the order of
        :func:`phase_pixel_order`, for a sum over pixels (a factorised likelihood) whose other
        operand is put in that order. Where :meth:`forward` is :func:`conv_transpose2d_by_phases`
        the phases are just not interleaved; elsewhere the output is permuted."""
        if self._by_phases(input):
            return self._activate(self._phases(input, interleave=False))
        out = self(input)
        return permute_pixels(out, phase_pixel_order(out.shape[2:], self.stride, self.padding, out.device))

    def _by_phases(self, input: Tensor) -> bool:
        """Whether :func:`conv_transpose2d_by_phases` computes this layer on ``input``: a CPU map of
        more than :data:`GEMM_MAX_POSITIONS` positions, few output channels, no autograd."""
        return (
            _on_cpu_plain(self, input)  # a 4-d CPU batch, checked first
            and input.shape[2] * input.shape[3] > GEMM_MAX_POSITIONS
            and self.out_channels <= FEW_OUTPUT_CHANNELS
            and not torch.is_grad_enabled()
        )

    def _subpixel(self, input: Tensor) -> bool:
        """Whether :func:`conv_transpose2d_subpixel` computes this layer (a CPU plain map, as checked by
        the caller): traced by ``torch.compile`` without autograd, at most
        :data:`SUBPIXEL_MAX_OUT_CHANNELS` outputs, a kernel that is a multiple of the stride and
        ``output_padding ≤ padding``. Only compiled, where the interleaving fuses into the pass that
        adds the bias (and the activation after it); eager it is a copy of its own, and slower."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (
            torch.compiler.is_compiling()
            and not torch.is_grad_enabled()
            and self.out_channels <= SUBPIXEL_MAX_OUT_CHANNELS
            and kh % sh == 0
            and kw % sw == 0
            and all(o <= p for o, p in zip(self.output_padding, self.padding, strict=True))
        )

    def _phases(self, input: Tensor, interleave: bool) -> Tensor:
        weight, bias = _autocast_weight_and_bias(self, input)
        return conv_transpose2d_by_phases(  # the bias added in float32 before rounding
            input.to(weight.dtype), weight, bias, self.stride, self.padding, self.output_padding, interleave
        )

    def _as_product(self, input: Tensor) -> Tensor:
        """The transposed conv of a tiny map, without bias: each input position times the weight,
        ``[B·h·w, C_in] @ [C_in, C_out·kh·kw]``, then the overlapping taps summed into place (fold)."""
        batch, _, height, width = input.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = _transposed_output_size(height, kh, sh, ph, self.output_padding[0])
        out_w = _transposed_output_size(width, kw, sw, pw, self.output_padding[1])
        weight = _autocast_operand(self.weight, input)  # [C_in, C_out, kh, kw]
        rows = input.to(weight.dtype).permute(0, 2, 3, 1).reshape(batch * height * width, -1)  # [B·h·w, C_in]
        if _channels_last(weight):  # weight stored [C_in, kh, kw, C_out]: taps before channels
            cols = rows @ weight.permute(0, 2, 3, 1).reshape(self.in_channels, -1)  # [B·h·w, kh·kw·C_out]
            cols = cols.view(batch, height * width, kh * kw, -1).permute(0, 3, 2, 1)  # [B, C_out, kh·kw, h·w]
        else:
            cols = rows @ weight.reshape(self.in_channels, -1)  # [B·h·w, C_out·kh·kw]
            cols = cols.view(batch, height * width, -1).transpose(1, 2)  # [B, C_out·kh·kw, h·w]
        cols = cols.reshape(batch, -1, height * width)  # [B, C_out·kh·kw, h·w]
        return F.fold(cols, (out_h, out_w), self.kernel_size, padding=self.padding, stride=self.stride)


class CacheTiledSequential(nn.Sequential):
    """``nn.Sequential`` (same layers, same keys) whose layers, traced by ``torch.compile`` without
    autograd on a CPU (the evaluator's compiled scoring), take the batch one tile at a time: each tile
    of at most ``CACHE_TILE_FLOATS // widest`` examples goes through all of them before the next,
    ``widest`` being the floats of the layers' widest activation for one example.

    A decoder's last layers write the widest maps (the VanillaVAE's last up-sampling on 28×28: 32
    channels, 25,088 floats an example, 10 MB for a call of 100 samples); whole-batch, each layer
    reads back what the one before wrote after it has left the core's cache, tile by tile while it
    is still there. Only compiled: the tiles are then one graph, where eager each tile's ops are
    calls of their own and the whole batch was faster (docs/performance.md).
    """

    def __init__(self, *layers: nn.Module, widest: int) -> None:
        super().__init__(*layers)
        self.widest = widest

    @property
    def tile_size(self) -> int:
        """Examples per tile: the most whose widest activation fits :data:`CACHE_TILE_FLOATS`."""
        return max(1, CACHE_TILE_FLOATS // self.widest)

    def extra_repr(self) -> str:
        return f"widest={self.widest}"

    def forward(self, input: Tensor) -> Tensor:
        tiled = (
            torch.compiler.is_compiling()
            and not torch.is_grad_enabled()
            and input.device.type == "cpu"
            and len(input) > self.tile_size
        )
        if not tiled:
            return super().forward(input)
        return torch.cat([nn.Sequential.forward(self, tile) for tile in input.split(self.tile_size)])


def check_min_size(model_name: str, height: int, width: int, min_size: int, why: str) -> None:
    """Raise a ``ValueError`` if an image side is below what the architecture needs."""
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name}: image size {height}×{width} is too small for {why}; "
            f"need at least {min_size}×{min_size}, or use fewer down-sampling layers"
        )


class ResidualLayer(nn.Module):
    """x + conv1×1(relu(conv3×3(x))): the residual block of the VQ-VAE paper (§4.1)."""

    def __init__(self, channels: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or channels
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def mlp(sizes: Sequence[int], act: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with an activation between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation(act))
    return nn.Sequential(*layers)
