"""Value ranges: the one module that decides what numbers a pixel becomes, and back.

Pixels are kept as uint8 (0..255) until a batch is made. Each decoder likelihood models its own
range, :data:`DATA_RANGE`: "bernoulli" intensities in [0, 1] (optionally binarized to {0, 1}) and
"gaussian" values in [-1, 1] (a Tanh output, like the seed's). :func:`to_model_range` maps pixels
there; :func:`to_unit_range` and :func:`to_uint8` map model outputs back for display and files.

The data on which log p(x) is measured is made here too (:func:`likelihood_data`): one fixed
binarization for Bernoulli models, uniform dequantization of the 8-bit values for Gaussian ones.

This module imports only torch and :mod:`vaekit.errors`, so the models can import it.
"""

from __future__ import annotations

import torch

from vaekit.errors import DataError

__all__ = [
    "DATA_RANGE",
    "INPUT_KINDS",
    "LIKELIHOODS",
    "binarize_once",
    "check_input_kind",
    "check_likelihood",
]
__all__ += ["dequantize"]
__all__ += ["likelihood_data", "to_model_range", "to_uint8", "to_unit_range"]

#: The decoder likelihoods, each modelling pixels in its own range.
LIKELIHOODS = ("bernoulli", "gaussian")
#: ``(low, high)`` of the values each likelihood models; pixel 0 maps to low and 255 to high.
DATA_RANGE: dict[str, tuple[float, float]] = {"bernoulli": (0.0, 1.0), "gaussian": (-1.0, 1.0)}
#: What a model takes as input (its ``input_kind``): images in a likelihood's range, or "codes",
#: maps of VQ-VAE code indices (int64), which pass through unchanged.
INPUT_KINDS = (*LIKELIHOODS, "codes")


def check_likelihood(likelihood: str) -> None:
    """DataError unless ``likelihood`` is one of :data:`LIKELIHOODS`."""
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; use one of {', '.join(LIKELIHOODS)}")


def check_input_kind(kind: str) -> None:
    """DataError unless ``kind`` is one of :data:`INPUT_KINDS`."""
    if kind not in INPUT_KINDS:
        raise DataError(f"unknown input kind {kind!r}; use one of {', '.join(INPUT_KINDS)}")


def to_model_range(
    x: torch.Tensor,
    likelihood: str,
    *,
    binarize: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Map pixels to the range the likelihood models. Shape is kept (e.g. ``[B,C,H,W]``).

    For "codes" the integer code indices come back as int64, unchanged. Otherwise ``x`` is uint8
    (0..255) or floating point already in [0, 1]; the result is float32 in
    ``DATA_RANGE[likelihood]``: "bernoulli" x/255, "gaussian" x/127.5 − 1. With ``binarize=True``
    (bernoulli only) each pixel is then drawn as Bernoulli(intensity) using ``generator`` (dynamic
    binarization: fresh 0/1 values every call).
    """
    check_input_kind(likelihood)
    if binarize and likelihood != "bernoulli":
        raise DataError(f"binarize=True needs likelihood='bernoulli'; turn binarization off for {likelihood}")
    if likelihood == "codes":  # code indices are categories, not intensities
        return x.long()
    low, high = DATA_RANGE[likelihood]
    if x.dtype == torch.uint8:
        y = x.float().div(255.0 / (high - low)).add(low)  # 255/2 = 127.5 is exact
    elif x.is_floating_point():
        y = x.mul(high - low).add(low)
    else:
        raise TypeError(f"expected uint8 or floating point pixels, got {x.dtype}")
    return torch.bernoulli(y, generator=generator) if binarize else y


def to_unit_range(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Inverse of :func:`to_model_range` for display: model-range ``x`` -> float in [0, 1], clamped."""
    check_likelihood(likelihood)
    low, high = DATA_RANGE[likelihood]
    return ((x - low) / (high - low)).clamp(0.0, 1.0)


def to_uint8(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Model-range ``x`` -> uint8 0..255 (rounded), e.g. to save ``[B,C,H,W]`` as image files."""
    return to_unit_range(x, likelihood).mul(255.0).round().to(torch.uint8)


# --- the data the likelihood numbers are measured on ----------------------------------------------


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 ``[N, ...]`` → float {0, 1}: one Bernoulli(v/255) draw per pixel, generator seeded."""
    return torch.bernoulli(images.float() / 255.0, generator=torch.Generator().manual_seed(seed))


def dequantize(images: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 ``[N, ...]`` → float32 ``2 (v + u)/256 − 1`` in [-1, 1), u ~ U(0, 1) seeded.

    Computed in float64; rounding to float32 may not reach the next bin's edge, so the value is
    kept strictly below it: every x lies in its own pixel's bin ``[2v/256 − 1, 2(v+1)/256 − 1)``.
    """
    v = images.double()
    u = torch.rand(v.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = ((v + u) / 128.0 - 1.0).float()
    upper = ((v + 1.0) / 128.0 - 1.0).float()  # exact: a multiple of 1/128
    return torch.minimum(x, torch.nextafter(upper, torch.full_like(upper, -2.0)))


def likelihood_data(images: torch.Tensor, kind: str, seed: int) -> tuple[torch.Tensor, str]:
    """The split on which log p(x) is measured, and the bits/dim conversion: "binary" or "8bit"."""
    if kind == "bernoulli":
        return binarize_once(images, seed), "binary"
    return dequantize(images, seed), "8bit"
