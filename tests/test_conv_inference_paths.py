"""The CPU inference paths for convolutions with few output channels (a decoder's last layer): one
matrix product, then shifted sums of its taps — and the sub-pixel form of a transposed conv taken
under torch.compile — against torch's convolutions in float64, and taken only where they are meant
to be (no autograd, at most FEW_OUTPUT_CHANNELS / SUBPIXEL_MAX_OUT_CHANNELS outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaekit.nn import (
    FEW_OUTPUT_CHANNELS,
    SUBPIXEL_MAX_OUT_CHANNELS,
    Conv2d,
    ConvTranspose2d,
    conv2d_by_taps,
    conv_transpose2d_activation,
    conv_transpose2d_by_phases,
    conv_transpose2d_subpixel,
    permute_pixels,
    phase_pixel_order,
    subpixel_weight,
)

TRANSPOSED = [  # (N, C_in, H, W, C_out, kernel, stride, padding, output_padding)
    (3, 16, 14, 14, 1, 4, 2, 1, 0),  # ConvVAE's last layer, 14 -> 28
    (3, 32, 14, 14, 1, 3, 2, 1, 1),  # VanillaVAE-style 3×3, 14 -> 28
    (2, 8, 7, 5, 3, 3, 2, 1, 0),  # non-square, odd, RGB
    (2, 5, 5, 6, 2, 5, 3, 2, 2),  # stride 3, kernel not a multiple of it
    (2, 4, 6, 5, 2, 2, 3, 0, 1),  # kernel smaller than the stride: a phase without taps
    (2, 3, 4, 4, 4, 3, 1, 1, 0),  # stride 1
    (1, 6, 1, 1, 1, 4, 2, 0, 0),  # a single input position
]
SUBPIXEL = [  # (N, C_in, H, W, C_out, kernel, stride, padding, output_padding): kernel = stride·t
    (2, 32, 7, 7, 16, 4, 2, 1, 0),  # ConvVAE's middle layer, 7 -> 14
    (2, 6, 7, 5, 5, 4, 2, 1, 1),  # odd, non-square, output_padding = padding
    (2, 4, 5, 4, 3, 6, 3, 2, 1),  # stride 3, three taps a phase
    (2, 3, 4, 5, 2, 2, 2, 0, 0),  # kernel = stride: no overlap
    (2, 3, 4, 4, 4, 3, 1, 1, 0),  # stride 1: a plain convolution with the kernel flipped
    (2, 3, 5, 4, 2, (4, 6), (2, 3), (1, 2), (1, 0)),  # non-square kernel and stride
]
PLAIN = [  # (N, C_in, H, W, C_out, kernel, stride, padding)
    (3, 32, 28, 28, 1, 3, 1, 1),  # VanillaVAE's final 3×3 conv
    (2, 4, 9, 7, 3, 3, 1, 0),  # no padding, non-square
    (2, 4, 9, 7, 2, 5, 1, 2),
    (2, 6, 9, 8, 1, 4, 2, 1),  # stride 2
    (2, 3, 10, 11, 2, 3, 3, 2),  # stride 3, padding reaching past the last tap
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", TRANSPOSED, ids=str)
def test_transposed_by_phases_is_torchs_transposed_conv(case, layout):
    n, c_in, h, w, c_out, k, s, p, op = case
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_in, c_out, k, k), torch.randn(c_out)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    exact = F.conv_transpose2d(x.double(), weight.double(), bias.double(), s, p, op)
    ours = conv_transpose2d_by_phases(x, weight, bias, (s, s), (p, p), (op, op))
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    scale = exact.abs().max().item()
    assert (ours.double() - exact).abs().max().item() <= 1e-6 * scale + 1e-6
    # without bias: the taps alone
    exact = F.conv_transpose2d(x.double(), weight.double(), None, s, p, op)
    assert (
        conv_transpose2d_by_phases(x, weight, None, (s, s), (p, p), (op, op)).double() - exact
    ).abs().max() <= 1e-6 * scale + 1e-6


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", SUBPIXEL, ids=str)
def test_transposed_as_subpixel_conv_is_torchs_transposed_conv(case, layout):
    n, c_in, h, w, c_out, *geometry = case
    (kh, kw), stride, padding, output_padding = (v if isinstance(v, tuple) else (v, v) for v in geometry)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_in, c_out, kh, kw), torch.randn(c_out)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for b in (bias, None):
        exact = F.conv_transpose2d(
            x.double(), weight.double(), None if b is None else b.double(), stride, padding, output_padding
        )
        ours = conv_transpose2d_subpixel(x, weight, b, stride, padding, output_padding)
        assert ours.shape == exact.shape and ours.dtype == torch.float32
        assert (ours.double() - exact).abs().max() <= 1e-6 * exact.abs().max() + 1e-6


def test_subpixel_weight_holds_each_phases_taps_flipped():
    """Entry ((r_h·s_w + r_w)·C_out + c, c_in, v_h, v_w) is W[c_in, c, r_h + s_h(t_h−1−v_h),
    r_w + s_w(t_w−1−v_w)], written out entry by entry."""
    c_in, c_out, (kh, kw), (sh, sw) = 3, 2, (6, 4), (3, 2)
    weight = torch.randn(c_in, c_out, kh, kw)
    th, tw = kh // sh, kw // sw
    ours = subpixel_weight(weight, (sh, sw))
    assert ours.shape == (sh * sw * c_out, c_in, th, tw)
    for r_h in range(sh):
        for r_w in range(sw):
            for c in range(c_out):
                for v_h in range(th):
                    for v_w in range(tw):
                        tap = weight[:, c, r_h + sh * (th - 1 - v_h), r_w + sw * (tw - 1 - v_w)]
                        assert torch.equal(ours[(r_h * sw + r_w) * c_out + c, :, v_h, v_w], tap)


@pytest.mark.parametrize("case", TRANSPOSED, ids=str)
def test_phases_not_interleaved_are_the_output_in_phase_pixel_order(case):
    n, c_in, h, w, c_out, k, s, p, op = case
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_in, c_out, k, k), torch.randn(c_out)
    exact = F.conv_transpose2d(x.double(), weight.double(), bias.double(), s, p, op)  # [N, C, H, W]
    ours = conv_transpose2d_by_phases(x, weight, bias, (s, s), (p, p), (op, op), interleave=False)
    order = phase_pixel_order(exact.shape[2:], (s, s), (p, p))
    out_h, out_w = exact.shape[2:]
    assert ours.shape == exact.shape
    assert sorted(order.tolist()) == list(range(out_h * out_w))  # a permutation of the pixels
    # by the definition: phase (r_h, r_w) = the pixels y ≡ r_h − p (mod s), x ≡ r_w − p, row by row
    expected = [
        y * out_w + x_
        for r_h in range(s)
        for r_w in range(s)
        for y in range(out_h)
        for x_ in range(out_w)
        if (y + p - r_h) % s == 0 and (x_ + p - r_w) % s == 0
    ]
    assert order.tolist() == expected
    in_order = exact.flatten(2)[:, :, order].view(exact.shape)
    assert (ours.double() - in_order).abs().max().item() <= 1e-6 * exact.abs().max().item() + 1e-6


def test_forward_in_phase_order_is_forward_permuted_on_every_path(monkeypatch):
    phases = _recording(monkeypatch, "conv_transpose2d_by_phases")
    torch.manual_seed(0)
    narrow = ConvTranspose2d(8, 2, 4, stride=2, padding=1).to(memory_format=torch.channels_last)
    wide = ConvTranspose2d(8, FEW_OUTPUT_CHANNELS + 1, 4, stride=2, padding=1)
    x = torch.randn(3, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    order = phase_pixel_order((14, 14), (2, 2), (1, 1))
    assert not torch.equal(order, torch.arange(14 * 14))
    for layer in (narrow, wide):
        image = layer(x)
        in_phase_order = layer.forward_in_phase_order(x)  # autograd on: torch's conv, then permuted
        assert in_phase_order.requires_grad
        torch.testing.assert_close(in_phase_order, permute_pixels(image, order))
        with torch.no_grad():
            torch.testing.assert_close(layer.forward_in_phase_order(x), permute_pixels(image, order).detach())
    assert phases == [1]  # only the narrow layer without autograd computed its phases apart


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", PLAIN, ids=str)
def test_conv_by_taps_is_torchs_conv(case, layout):
    n, c_in, h, w, c_out, k, s, p = case
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_out, c_in, k, k), torch.randn(c_out)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), s, p)
    ours = conv2d_by_taps(x, weight, bias, (s, s), (p, p))
    assert ours.shape == exact.shape and ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max().item() <= 1e-6 * exact.abs().max().item() + 1e-6


def _recording(monkeypatch, name: str) -> list[int]:
    """Record calls of ``vaekit.nn.<name>`` (the module's forward looks it up at call time)."""
    import vaekit.nn

    calls: list[int] = []
    real = getattr(vaekit.nn, name)
    monkeypatch.setattr(vaekit.nn, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_the_modules_take_the_paths_only_without_autograd_and_for_few_channels(monkeypatch):
    taps, phases = (
        _recording(monkeypatch, "conv2d_by_taps"),
        _recording(monkeypatch, "conv_transpose2d_by_phases"),
    )
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10)
    few, many = Conv2d(8, FEW_OUTPUT_CHANNELS, 3, padding=1), Conv2d(8, FEW_OUTPUT_CHANNELS + 1, 3, padding=1)
    up_few = ConvTranspose2d(8, 1, 4, stride=2, padding=1)
    up_many = ConvTranspose2d(8, FEW_OUTPUT_CHANNELS + 1, 4, stride=2, padding=1)
    trained = few(x), up_few(x)  # autograd on: torch's convolutions, as in training
    assert taps == phases == [] and all(t.requires_grad for t in trained)
    with torch.no_grad():
        inferred = few(x), up_few(x)
        many(x), up_many(x)
    assert taps == phases == [1]
    for a, b in zip(inferred, trained, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # what the evaluator runs under
        few(x), up_few(x)
    assert taps == phases == [1, 1]


def test_the_subpixel_path_is_taken_only_compiled_without_autograd_and_where_it_applies(monkeypatch):
    """Under ``torch.compile`` (``torch.compiler.is_compiling()``, faked here so the path runs eager),
    without autograd: a transposed conv onto FEW_OUTPUT_CHANNELS < C_out ≤ SUBPIXEL_MAX_OUT_CHANNELS
    whose kernel is a multiple of its stride and whose output_padding ≤ padding."""
    subpixel = _recording(monkeypatch, "conv_transpose2d_subpixel")
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 6)
    takes = ConvTranspose2d(8, SUBPIXEL_MAX_OUT_CHANNELS, 4, stride=2, padding=1, output_padding=1)
    others = [
        ConvTranspose2d(8, SUBPIXEL_MAX_OUT_CHANNELS + 1, 4, stride=2, padding=1),  # too many outputs
        ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),  # kernel not a multiple
        ConvTranspose2d(8, 8, 4, stride=2, padding=0, output_padding=1),  # output_padding > padding
    ]
    with torch.no_grad():
        eager = [layer(x) for layer in [takes, *others]]
    assert subpixel == []  # not compiling
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    trained = takes(x)
    assert subpixel == [] and trained.requires_grad  # autograd on
    with torch.inference_mode():
        compiled = [layer(x) for layer in [takes, *others]]
    assert subpixel == [1]
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


ACTIVATED = [  # (N, C_in, H, W, C_out, kernel, stride, padding, output_padding): output = stride · input
    (2, 8, 5, 5, 6, 3, 2, 1, 1),  # VanillaVAE-style 3×3
    (2, 6, 7, 4, 5, 4, 2, 1, 0),  # ConvVAE-style 4×4, non-square
]


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.2)], ids=["relu", "leaky_relu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", ACTIVATED, ids=str)
def test_transposed_conv_with_activation_post_op_is_the_activation_of_torchs(case, layout, activation):
    n, c_in, h, w, c_out, k, s, p, op = case
    torch.manual_seed(0)
    x, weight, bias = torch.randn(n, c_in, h, w), torch.randn(c_in, c_out, k, k), torch.randn(c_out)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    name, slope = ("leaky_relu", 0.2) if isinstance(activation, nn.LeakyReLU) else ("relu", 0.0)
    for b in (bias, None):
        args = (x, weight, b, [s, s], [p, p], [op, op], name, slope)
        with torch.no_grad():
            ours = conv_transpose2d_activation(*args)
        exact = activation(
            F.conv_transpose2d(x.double(), weight.double(), None if b is None else b.double(), s, p, op)
        )
        assert ours.shape == exact.shape and ours.dtype == torch.float32
        assert (ours.double() - exact).abs().max() <= 1e-6 * exact.abs().max() + 1e-6
        assert (ours < 0).any() == (name == "leaky_relu")  # the activation was applied, the right one


def test_a_transposed_conv_with_an_activation_applies_it_on_every_path(monkeypatch):
    """``ConvTranspose2d.activation``: fused as a oneDNN post-op only without autograd, in float32,
    not compiled, for an output of stride × input; applied after the conv on every other path."""
    fused = _recording(monkeypatch, "conv_transpose2d_activation")
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    layers = {  # name: (layer, fused without autograd?)
        "oneDNN, fused": (ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1), True),
        "oneDNN, odd output": (ConvTranspose2d(8, 6, 3, stride=2, padding=1), False),  # 9 = 2·5 − 1
        "by phases": (ConvTranspose2d(8, 1, 4, stride=2, padding=1), False),
        "as a product": (ConvTranspose2d(8, 6, 4, stride=2, padding=1), False),  # on a 2×2 map below
    }
    for name, (layer, fuses) in layers.items():
        inp = x[:, :, :2, :2] if name == "as a product" else x
        with torch.no_grad():
            plain = F.leaky_relu(layer(inp), 0.1)
        layer.activation = nn.LeakyReLU(0.1)
        trained = layer(inp)  # autograd on: never fused
        assert trained.requires_grad and fused == []
        torch.testing.assert_close(trained.detach(), plain)
        with torch.inference_mode():
            torch.testing.assert_close(layer(inp), plain, rtol=1e-5, atol=1e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # not float32: not fused
                torch.testing.assert_close(layer(inp).float(), plain, rtol=0.05, atol=0.05)
        assert fused == ([1] if fuses else []), name
        fused.clear()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for layer in (  # compiled: the sub-pixel path; a layer it does not take, oneDNN and inductor's pass
        ConvTranspose2d(8, 6, 4, stride=2, padding=1),
        ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1),
    ):
        layer.activation = nn.ReLU()
        with torch.no_grad():
            expected = F.relu(F.conv_transpose2d(x, layer.weight, layer.bias, 2, 1, layer.output_padding))
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert fused == []


def test_under_bf16_autocast_the_paths_round_like_a_convolution():
    """bf16 operands, float32 products and sums, one rounding at the end: as close to the float64
    result as torch's bf16 convolution (within half a bf16 ulp of the largest output)."""
    torch.manual_seed(0)
    pairs = [
        (
            ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            14,
        ),
        (
            ConvTranspose2d(8, 2, 3, stride=2, padding=1, output_padding=1),
            nn.ConvTranspose2d(8, 2, 3, stride=2, padding=1, output_padding=1),
            6,
        ),
        (Conv2d(32, 1, 3, padding=1), nn.Conv2d(32, 1, 3, padding=1), 28),
    ]
    for ours, ref, side in pairs:
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(8, ours.in_channels, side, side)
        with torch.no_grad():
            exact = ref.double()(x.double())
            ref.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                a, b = ours(x), ref(x)
        assert a.dtype == b.dtype == torch.bfloat16
        ours_error, torch_error = ((t.double() - exact).abs().max().item() for t in (a, b))
        assert ours_error <= torch_error + 2**-9 * exact.abs().max().item(), (ours_error, torch_error)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_vae_scores_in_phase_order_as_in_the_images_order(likelihood):
    """log p(x|z) summed over the last layer's phases, x put in their order, is the sum over the
    image: a 3-channel, odd, non-square ConvVAE with a learned σ per channel."""
    from vaekit import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(
        3, 6, hidden_dims=[4, 8], fc_dim=20, image_size=(13, 18), likelihood=likelihood, learn_sigma=True
    )
    if likelihood == "gaussian":
        model.likelihood.log_scale.data = torch.tensor([-1.0, 0.0, 0.5]).view(3, 1, 1)
        x = torch.rand(5, 3, 13, 18) * 2 - 1
    else:
        x = torch.bernoulli(torch.rand(5, 3, 13, 18))
    z = torch.randn(4, 5, 6)  # [S, B, D]
    order = model.scoring_pixel_order()
    assert sorted(order.tolist()) == list(range(13 * 18)) and not torch.equal(order, torch.arange(13 * 18))
    image_order = model._log_px_given_z(x, z).detach()  # autograd on: torch's convolutions
    with torch.no_grad():
        torch.testing.assert_close(
            model.decode_in_scoring_order(z[0]),
            permute_pixels(model.decode(z[0]), order),
            rtol=1e-5,
            atol=1e-5,
        )
        phase_order = model._log_px_given_z(permute_pixels(x, order), z, scoring_order=True)
    assert phase_order.shape == (4, 5)
    torch.testing.assert_close(phase_order, image_order, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("compiled", "hidden_dims"),
    [(False, [4, 8]), (True, [4, 8]), (True, [8, 16])],
    ids=["eager", "compiled", "compiled-subpixel"],
)
def test_conv_vae_log_px_is_the_importance_sampled_estimate_written_out(compiled, hidden_dims, monkeypatch):
    """ConvVAE.log_px (x put in the phase order once, chunks of samples scored in it) against the
    estimate written out in the image's order with the same normal draws; with 8 channels before the
    last layer, compiled, the layer before it is the sub-pixel form."""
    from vaekit import ConvVAE
    from vaekit.losses import bernoulli_log_likelihood, diagonal_gaussian_log_prob, standard_normal_log_prob

    subpixel = _recording(monkeypatch, "conv_transpose2d_subpixel")
    torch.manual_seed(0)
    model = ConvVAE(1, 5, hidden_dims=hidden_dims, fc_dim=16, image_size=12).eval()
    x = torch.bernoulli(torch.rand(3, 1, 12, 12))
    k, chunk = 6, 3
    with torch.no_grad():
        mu, log_var = model.encode(x)
        torch.manual_seed(1)
        noise = torch.cat([torch.randn(chunk, *mu.shape) for _ in range(k // chunk)])  # as log_px draws
        z = mu + torch.exp(0.5 * log_var) * noise  # [k, B, D]
        logits = model.decode(z.flatten(0, 1)).view(k, *x.shape)  # the image's order
        log_w = (
            bernoulli_log_likelihood(x, logits)
            + standard_normal_log_prob(z)
            - diagonal_gaussian_log_prob(z, mu, log_var)
        ).double()  # [k, B]
        expected = torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(k), dtype=torch.float64))
    if compiled:
        model.compile_scoring()
    with torch.inference_mode():
        torch.manual_seed(1)
        estimate, _ = model.log_px(x, k, chunk)
    torch.testing.assert_close(estimate.double(), expected, rtol=0, atol=1e-4)
    assert bool(subpixel) == (compiled and hidden_dims[0] > FEW_OUTPUT_CHANNELS)
