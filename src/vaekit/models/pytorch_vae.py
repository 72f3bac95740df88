"""Loading what PyTorch-VAE (AntixK/PyTorch-VAE) saved: model names and VQ-VAE state dicts.

vaekit's ``VanillaVAE`` has PyTorch-VAE's module tree, so its state dicts load as they are. vaekit's
``VQVAE`` has the same layers as PyTorch-VAE's ``VQVAE`` (master) but keeps each side in one flat
``nn.Sequential`` instead of a Sequential of small Sequentials, so its keys differ;
:func:`convert_vqvae_state_dict` renames them. PyTorch-VAE's encoder also ends in a LeakyReLU that
vaekit's leaves out by default (``final_encoder_activation=True`` puts it back; it has no weights).

This module imports nothing from the rest of vaekit, so any of it may import this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

#: PyTorch-VAE's ``vae_models`` keys (the ``name`` in its configs) of the models vaekit has,
#: mapped to vaekit's registry names.
VAE_MODEL_NAMES: dict[str, str] = {"VanillaVAE": "vanilla_vae", "VQVAE": "vqvae"}

#: PyTorch-VAE's Lightning checkpoints hold the model as ``VAEXperiment.model``.
EXPERIMENT_PREFIX = "model."


def strip_experiment_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``model.`` prefix that PyTorch-VAE's Lightning checkpoints put on every key
    (``torch.load(ckpt)["state_dict"]``); a state dict without it is returned as it is."""
    if state_dict and all(key.startswith(EXPERIMENT_PREFIX) for key in state_dict):
        return {key[len(EXPERIMENT_PREFIX) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _vqvae_layout(state_dict: Mapping[str, Tensor]) -> tuple[int, int]:
    """``(n, R)``: the number of stride-2 convolutions (``len(hidden_dims)``) and of residual
    layers per side, read off PyTorch-VAE's encoder keys."""
    n = 0
    while (conv := state_dict.get(f"encoder.{n}.0.weight")) is not None and conv.shape[2:] == (4, 4):
        n += 1
    if n == 0:
        raise ValueError(
            "not a PyTorch-VAE VQVAE state dict: 'encoder.0.0.weight' should be its first 4×4 convolution"
            + ("" if "encoder.0.0.weight" in state_dict else ", and is missing")
        )
    residual_layers = 0
    while f"encoder.{n + 1 + residual_layers}.resblock.0.weight" in state_dict:
        residual_layers += 1
    return n, residual_layers


def _vqvae_key_map(n: int, residual_layers: int) -> dict[str, str]:
    """Every key of PyTorch-VAE's VQVAE with ``n`` hidden dims and ``R`` residual layers → vaekit's."""
    r = residual_layers
    pairs: list[tuple[str, str]] = []

    def conv(source: str, target: str) -> None:
        pairs.extend((f"{source}.{p}", f"{target}.{p}") for p in ("weight", "bias"))

    def residual(source: str, target: str) -> None:
        pairs.extend((f"{source}.resblock.{i}.weight", f"{target}.block.{i}.weight") for i in (0, 2))

    for i in range(n):  # 4×4 stride-2 convolutions
        conv(f"encoder.{i}.0", f"encoder.{2 * i}")
    conv(f"encoder.{n}.0", f"encoder.{2 * n}")  # 3×3 convolution
    for j in range(r):
        residual(f"encoder.{n + 1 + j}", f"encoder.{2 * n + 2 + j}")
    conv(f"encoder.{n + r + 2}.0", f"encoder.{2 * n + r + 3}")  # 1×1 convolution to embedding_dim
    pairs.append(("vq_layer.embedding.weight", "vq_layer.embedding.weight"))
    conv("decoder.0.0", "decoder.0")  # 3×3 convolution from embedding_dim
    for j in range(r):
        residual(f"decoder.{1 + j}", f"decoder.{2 + j}")
    for i in range(n):  # 4×4 stride-2 transposed convolutions, the last one to image channels
        conv(f"decoder.{r + 2 + i}.0", f"decoder.{r + 3 + 2 * i}")
    return dict(pairs)


def convert_vqvae_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a PyTorch-VAE ``VQVAE`` state dict to vaekit's ``VQVAE`` layout.

    With ``n = len(hidden_dims)`` and ``R`` residual layers per side (PyTorch-VAE: always 6), the
    layers correspond one to one; only LeakyReLU/ReLU/Tanh positions (no weights) are skipped::

        PyTorch-VAE                          vaekit
        encoder.{i}.0.*          (i < n)     encoder.{2i}.*            4×4 stride-2 conv
        encoder.{n}.0.*                      encoder.{2n}.*            3×3 conv
        encoder.{n+1+j}.resblock.{0,2}.weight
                                 (j < R)     encoder.{2n+2+j}.block.{0,2}.weight
        encoder.{n+R+2}.0.*                  encoder.{2n+R+3}.*        1×1 conv to embedding_dim
        vq_layer.embedding.weight            vq_layer.embedding.weight
        decoder.0.0.*                        decoder.0.*               3×3 conv
        decoder.{1+j}.resblock.{0,2}.weight
                                 (j < R)     decoder.{2+j}.block.{0,2}.weight
        decoder.{R+2+i}.0.*      (i < n)     decoder.{R+3+2i}.*        4×4 stride-2 transposed conv

    E.g. for the default ``hidden_dims=[128, 256]``: ``encoder.0.0.weight → encoder.0.weight``,
    ``encoder.3.resblock.0.weight → encoder.6.block.0.weight``, ``encoder.10.0.bias →
    encoder.13.bias``, ``decoder.9.0.weight → decoder.11.weight``. A ``model.`` prefix (a Lightning
    checkpoint's ``state_dict``) is removed first. The tensors are not copied.

    Raises ``ValueError`` naming the first key that does not fit PyTorch-VAE's layout (missing or
    unexpected), e.g. for the BatchNorm layers of PyTorch-VAE's older VQVAE or for another model.
    """
    state_dict = strip_experiment_prefix(state_dict)
    n, residual_layers = _vqvae_layout(state_dict)
    key_map = _vqvae_key_map(n, residual_layers)
    layout = f"(read as PyTorch-VAE's VQVAE with {n} hidden dims and {residual_layers} residual layers)"
    for key in state_dict:
        if key not in key_map:
            raise ValueError(f"unexpected key {key!r} in a PyTorch-VAE VQVAE state dict {layout}")
    for key in key_map:
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} in a PyTorch-VAE VQVAE state dict {layout}")
    return {key_map[key]: value for key, value in state_dict.items()}


def vqvae_kwargs_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """The arguments of vaekit's ``VQVAE`` that a PyTorch-VAE ``VQVAE`` state dict implies:
    ``in_channels``, ``embedding_dim``, ``num_embeddings``, ``hidden_dims``, ``num_residual_layers``.

    Not in a state dict, so not returned: the image size (PyTorch-VAE's ``img_size`` is unused by
    its model; any size divisible by ``2**n`` works) and ``beta`` (a loss weight, not a weight).
    Raises ``ValueError`` if the state dict is not PyTorch-VAE's VQVAE, or if vaekit's VQVAE cannot
    hold it: PyTorch-VAE always decodes to 3 channels, vaekit to ``in_channels``, so a PyTorch-VAE
    VQVAE built with ``in_channels != 3`` does not load.
    """
    state_dict = strip_experiment_prefix(state_dict)
    convert_vqvae_state_dict(state_dict)  # validates every key
    n, residual_layers = _vqvae_layout(state_dict)
    in_channels = state_dict["encoder.0.0.weight"].shape[1]  # Conv2d weight [out, in, 4, 4]
    out_key = f"decoder.{residual_layers + 1 + n}.0.weight"  # ConvTranspose2d weight [in, out, 4, 4]
    out_channels = state_dict[out_key].shape[1]
    if out_channels != in_channels:
        raise ValueError(
            f"{out_key!r} decodes to {out_channels} channels but 'encoder.0.0.weight' reads "
            f"{in_channels}: PyTorch-VAE's VQVAE always outputs 3 channels, while vaekit's VQVAE "
            "outputs as many as it reads, so it cannot hold these weights"
        )
    num_embeddings, embedding_dim = state_dict["vq_layer.embedding.weight"].shape  # [K, D]
    return {
        "in_channels": int(in_channels),
        "embedding_dim": int(embedding_dim),
        "num_embeddings": int(num_embeddings),
        "hidden_dims": [int(state_dict[f"encoder.{i}.0.weight"].shape[0]) for i in range(n)],
        "num_residual_layers": residual_layers,
    }
