"""Fast by default where it is safe: ``train.precision: auto`` and ``train.memory_format: auto``.

What ``auto`` resolves to (the hardware detection monkeypatched both ways), that an explicit choice
wins, that a run saves the resolved values and a resume keeps them, and that the fast settings
compute the same numbers: bf16 within its rounding, channels-last and the CPU paths of
:class:`vaekit.nn.Conv2d` / :class:`vaekit.nn.ConvTranspose2d` within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TINY
from vaekit import MLPVAE, ConvVAE, VanillaVAE
from vaekit import train as train_module
from vaekit.config import TrainConfig, load_config
from vaekit.data import load_split
from vaekit.nn import GEMM_MAX_POSITIONS, Conv2d, ConvTranspose2d
from vaekit.train import native_bf16, resolve_speed_settings, train

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def default_model() -> VanillaVAE:
    """The default job's model (configs/default.yaml) on 28×28 digits."""
    return VanillaVAE(1, 16, hidden_dims=[32, 64, 128], image_size=28, likelihood="bernoulli")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"avx2", "avx512f", "fma3"})


# --------------------------------------------------------------------------- what auto resolves to


def test_auto_is_bf16_on_a_cpu_with_native_bf16(bf16_cpu):
    t, line = resolve_speed_settings(TrainConfig(), CPU, default_model())
    assert (t.precision, t.memory_format) == ("bf16", "channels_last")
    assert line.startswith("precision: bf16 autocast (CPU has AVX512-BF16)")
    assert "memory format: channels_last" in line


def test_auto_is_fp32_on_a_cpu_without_native_bf16(plain_cpu):
    t, line = resolve_speed_settings(TrainConfig(), CPU, default_model())
    assert t.precision == "fp32" and line.startswith("precision: fp32 (CPU has no AVX512-BF16")
    assert t.memory_format == "channels_last"  # a layout, not a precision: it pays in fp32 too


def test_amx_alone_counts_as_native_bf16(monkeypatch):
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"amx_tile", "amx_bf16"})
    assert native_bf16(CPU) == (True, "CPU has AMX-BF16")


def test_the_real_cpu_flags_agree_with_proc_cpuinfo():
    """torch's report and the kernel's flags name the same bf16 instructions (Linux x86 only)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    kernel = set(line.split(":", 1)[1].split())
    ours = train_module._cpu_flags()
    for flag in ("avx512_bf16", "amx_bf16"):
        assert (flag in ours) == (flag in kernel), flag


def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    for supported, precision, layout in [(True, "bf16", "channels_last"), (False, "fp32", "contiguous")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        t, line = resolve_speed_settings(TrainConfig(), CUDA, default_model())
        assert (t.precision, t.memory_format) == (precision, layout), line


def test_explicit_choices_are_honoured(bf16_cpu):
    t, line = resolve_speed_settings(TrainConfig(precision="fp32"), CPU, default_model())
    assert t.precision == "fp32" and line.startswith("precision: fp32 (as configured)")
    t, _ = resolve_speed_settings(TrainConfig(memory_format="contiguous"), CPU, default_model())
    assert (t.precision, t.memory_format) == ("bf16", "contiguous")


def test_plain_cpu_keeps_an_explicit_bf16(plain_cpu):
    t, _ = resolve_speed_settings(TrainConfig(precision="bf16"), CPU, default_model())
    assert t.precision == "bf16"


def test_a_model_without_convolutions_stays_contiguous(bf16_cpu):
    t, line = resolve_speed_settings(TrainConfig(), CPU, MLPVAE())
    assert t.memory_format == "contiguous" and "no conv layers" in line


def test_the_default_config_is_auto_and_fp32_still_parses():
    assert (load_config(None).train.precision, load_config(None).train.memory_format) == ("auto", "auto")
    cfg = load_config(None, ["train.precision=fp32", "train.memory_format=contiguous"])
    assert (cfg.train.precision, cfg.train.memory_format) == ("fp32", "contiguous")


# --------------------------------------------------------------------------- saved, and kept on resume


def test_the_run_saves_the_resolved_values_and_a_resume_keeps_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"avx512_bf16"})
    cfg = load_config(None, [*TINY, "train.epochs=2"])
    first = train(cfg, tmp_path, stop_after_epochs=1, progress=False)
    assert "precision: bf16 autocast" in capsys.readouterr().err
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.train.precision, saved.train.memory_format) == ("bf16", "channels_last")
    assert (first["precision"], first["memory_format"]) == ("bf16", "channels_last")
    # resumed on a CPU without bf16 (as `vaekit train --resume` does: the run's own config.yaml)
    monkeypatch.setattr(train_module, "_cpu_flags", set)
    autocasts = []
    real_autocast = train_module._autocast
    monkeypatch.setattr(
        train_module,
        "_autocast",
        lambda device, precision: autocasts.append(precision) or real_autocast(device, precision),
    )
    resumed = train(saved, tmp_path, resume=True, progress=False)
    assert resumed["epoch"] == 2 and resumed["precision"] == "bf16"
    assert autocasts and set(autocasts) == {"bf16"}
    assert "precision: bf16 autocast (as configured)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the same numbers


def mnist_batch(n: int = 64) -> torch.Tensor:
    """The first ``n`` test digits of mnist5k in [0, 1], ``[n, 1, 28, 28]``."""
    return load_split(load_config(None).data, "test").images[:n].float() / 255


def test_bf16_loss_is_the_fp32_loss_within_bf16_rounding():
    """The default model on 64 test digits, same weights and noise: bf16 autocast moves the loss
    (about 540 nats untrained) by well under 1% — bf16 keeps 8 bits of mantissa, so each activation
    is off by up to 0.4%, and the errors largely average out over the image — and every term stays
    finite. The loss is computed in float32 either way."""
    torch.manual_seed(0)
    model = default_model()
    x = mnist_batch()
    torch.manual_seed(1)
    fp32 = model.loss_function(*model(x))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
    assert outputs.recons.dtype == torch.bfloat16
    bf16 = model.loss_function(*outputs)
    assert bf16["loss"].dtype == torch.float32
    for key in ("loss", "Reconstruction_Loss"):
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=5e-3), key
    assert bf16["KLD"].item() == pytest.approx(fp32["KLD"].item(), rel=0.05, abs=0.05)
    assert bf16["loss"].item() != fp32["loss"].item()  # it did run in bf16


@pytest.mark.parametrize(
    "build, shape",
    [
        (default_model, (1, 28, 28)),
        (lambda: VanillaVAE(3, 128), (3, 64, 64)),
        (lambda: ConvVAE(1, 8, hidden_dims=(8, 16), fc_dim=32), (1, 28, 28)),
    ],
    ids=["default", "seed VanillaVAE(3, 128)", "conv_vae"],
)
def test_channels_last_gives_the_contiguous_outputs_and_gradients(build, shape):
    """Same weights, input and noise; only the memory layout differs. The outputs and the loss agree
    to float32 rounding. Each gradient agrees to 0.2% of its norm: through a stack of BatchNorms the
    fp32 rounding of a different summation order grows (torch's own channels-last kernels differ from
    its contiguous ones by about 0.07% on the seed model), and the conv biases in front of a BatchNorm
    have a true gradient of 0, so theirs is rounding residue, compared against the largest norm."""
    torch.manual_seed(0)
    model = build()
    x = torch.rand(8, *shape)
    torch.manual_seed(1)
    ref = model(x)
    ref_loss = model.loss_function(*ref)["loss"]
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    fast = model.to(memory_format=torch.channels_last)
    weight = next(p for p in fast.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    out = fast(x.contiguous(memory_format=torch.channels_last))
    loss = fast.loss_function(*out)["loss"]
    grads = torch.autograd.grad(loss, list(fast.parameters()))
    torch.testing.assert_close(out.recons, ref.recons, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    largest = max(r.norm() for r in ref_grads)
    for (name, _), g, r in zip(fast.named_parameters(), grads, ref_grads, strict=True):
        assert (g - r).norm() <= 2e-3 * r.norm() + 1e-6 * largest, name


# --------------------------------------------------------------------------- the CPU conv paths


def _pair(transposed: bool, c_in: int, c_out: int, kernel: int, bias: bool, output_padding: int = 0):
    """One of vaekit's conv modules and torch's, with the same weights."""
    if transposed:
        ours = ConvTranspose2d(
            c_in, c_out, kernel, stride=2, padding=1, output_padding=output_padding, bias=bias
        )
        ref = nn.ConvTranspose2d(
            c_in, c_out, kernel, stride=2, padding=1, output_padding=output_padding, bias=bias
        )
    else:
        ours = Conv2d(c_in, c_out, kernel, stride=2, padding=1, bias=bias)
        ref = nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


CASES = [  # (transposed, C_in, C_out, kernel, bias, output_padding, input side)
    (False, 16, 32, 3, True, 0, 4),  # 4×4 -> 2×2: the matrix product
    (False, 5, 7, 3, False, 0, 3),  # 3×3 -> 2×2, odd side, no bias
    (False, 6, 4, 4, True, 0, 4),  # 4×4 kernel -> 2×2
    (False, 4, 6, 3, True, 0, 8),  # 8×8 -> 4×4: oneDNN's path
    (True, 32, 16, 3, True, 1, 2),  # 2×2 -> 4×4: the matrix product and fold
    (True, 7, 5, 3, True, 0, 2),  # 2×2 -> 3×3
    (True, 6, 4, 4, False, 0, 2),  # 4×4 kernel, 2×2 -> 4×4
    (True, 8, 4, 3, True, 1, 4),  # 4×4 -> 8×8: oneDNN without bias, then + bias
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'T' if c[0] else ''}conv{c[1]}-{c[2]}k{c[3]}s{c[6]}")
def test_cpu_conv_paths_match_torch_in_fp32(case, layout):
    transposed, c_in, c_out, kernel, bias, output_padding, side = case
    torch.manual_seed(0)
    ours, ref = _pair(transposed, c_in, c_out, kernel, bias, output_padding)
    x = torch.randn(3, c_in, side, side)
    if layout == "channels_last":
        ours, x = ours.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(x1), ref(x2)
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(b)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref.get_parameter(name).grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:7], ids=str)
def test_cpu_conv_paths_match_torch_under_bf16_autocast(case):
    """Under autocast both compute in bf16 (operands rounded the same way): the outputs agree to
    bf16's rounding of the sums, about 1%."""
    transposed, c_in, c_out, kernel, bias, output_padding, side = case
    torch.manual_seed(0)
    ours, ref = _pair(transposed, c_in, c_out, kernel, bias, output_padding)
    x = torch.randn(3, c_in, side, side)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x), ref(x)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=3e-2)


def test_tiny_maps_take_the_matrix_product_and_larger_ones_do_not(monkeypatch):
    """The matrix-product path is really taken for maps of at most GEMM_MAX_POSITIONS positions."""
    calls = []
    for cls in (nn.Conv2d, nn.ConvTranspose2d):
        real = cls._conv_forward if cls is nn.Conv2d else None
        if real is not None:
            monkeypatch.setattr(
                cls, "_conv_forward", lambda self, *a, real=real: calls.append(self) or real(self, *a)
            )
    conv = Conv2d(4, 4, 3, stride=2, padding=1)
    conv(torch.randn(2, 4, 4, 4))  # -> 2×2 = 4 positions
    assert GEMM_MAX_POSITIONS == 4 and calls == []
    conv(torch.randn(2, 4, 6, 6))  # -> 3×3 = 9 positions: oneDNN
    assert calls == [conv]
    up = ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
    seen = []
    monkeypatch.setattr(
        torch.nn.functional, "fold", lambda *a, **k: seen.append(1) or torch.zeros(2, 4, 4, 4)
    )
    up(torch.randn(2, 4, 2, 2))
    assert seen == [1]


def test_resumed_optimizer_state_takes_the_parameters_layout():
    """A checkpoint holds the Adam moments contiguous; a channels-last weight must get them back in
    its own layout, or torch's fused CPU Adam (which walks the tensors as flat memory) pairs each
    weight with another's moments. With the layouts matched, the step is the contiguous one."""
    torch.manual_seed(0)
    w, g1, g2 = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def two_steps(layout: torch.memory_format, restore: bool) -> torch.Tensor:
        param = nn.Parameter(w.clone().contiguous(memory_format=layout))
        optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
        param.grad = g1.contiguous(memory_format=layout)
        optimizer.step()
        saved = optimizer.state_dict()  # as a checkpoint stores them: contiguous
        for key in ("exp_avg", "exp_avg_sq"):
            saved["state"][0][key] = saved["state"][0][key].contiguous()
        optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
        optimizer.load_state_dict(saved)
        if restore:
            train_module._state_in_parameter_layout(optimizer)
            assert optimizer.state[param]["exp_avg"].stride() == param.stride()
        param.grad = g2.contiguous(memory_format=layout)
        optimizer.step()
        return param.detach()

    reference = two_steps(torch.contiguous_format, restore=False)
    torch.testing.assert_close(two_steps(torch.channels_last, restore=True), reference)
    assert not torch.allclose(two_steps(torch.channels_last, restore=False), reference)  # the trap


def test_a_run_saved_before_the_speed_settings_resumes_with_what_it_trained_with(tmp_path):
    from vaekit.config import dump_yaml, load_config
    from vaekit.runs import config_for

    lines = dump_yaml(load_config(None)).splitlines()  # the default job: a conv model, precision auto
    old = [line for line in lines if "memory_format:" not in line and "precision:" not in line]
    assert len(old) == len(lines) - 2
    (tmp_path / "config.yaml").write_text("\n".join(old) + "\n")
    resumed = config_for(None, [], str(tmp_path), None, False)
    assert (resumed.train.precision, resumed.train.memory_format) == ("fp32", "contiguous")
    # --set still wins, and a run that saved its decided settings keeps them
    forced = config_for(None, ["train.precision=bf16"], str(tmp_path), None, False)
    assert forced.train.precision == "bf16"
    decided = "\n".join(lines).replace("precision: auto", "precision: bf16")
    (tmp_path / "config.yaml").write_text(decided + "\n")
    assert config_for(None, [], str(tmp_path), None, False).train.precision == "bf16"
