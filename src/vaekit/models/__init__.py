"""The models, the registry that config files name them by, and building/loading by name."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from vaekit import checkpoint
from vaekit.errors import ConfigError, VaekitError
from vaekit.models.base import AutoEncoder, Model
from vaekit.models.gaussian import GaussianLatentVAE, VAEOutput
from vaekit.models.linear import LinearGaussianVAE
from vaekit.models.pixelcnn import GatedPixelCNN, PriorOutput
from vaekit.models.pytorch_vae import VAE_MODEL_NAMES
from vaekit.models.vae import MLPVAE, ConvVAE, VanillaVAE
from vaekit.models.vqvae import VQVAE, VQVAEOutput

#: Every model by its registry name (``model.name`` in a config, ``name`` in a saved ``config.json``).
MODELS: dict[str, type[Model]] = {
    cls.registry_name: cls for cls in (VanillaVAE, ConvVAE, MLPVAE, VQVAE, LinearGaussianVAE, GatedPixelCNN)
}

#: PyTorch-VAE's ``vae_models`` for the models vaekit has, so that its ``run.py`` line
#: ``vae_models[config['model_params']['name']](**config['model_params'])`` builds vaekit's.
vae_models: dict[str, type[Model]] = {name: MODELS[key] for name, key in VAE_MODEL_NAMES.items()}


def takes_images(cls: type[Model]) -> bool:
    """Whether the model is built for images (takes ``in_channels`` and ``image_size``)."""
    return "image_size" in inspect.signature(cls).parameters


def build_model(name: str, params: Mapping[str, Any], shape: tuple[int, int, int]) -> Model:
    """The model registered as ``name`` with constructor arguments ``params``, sized for images of
    ``shape = (C, H, W)``."""
    cls = MODELS[name]
    if not takes_images(cls):
        image_models = ", ".join(n for n, c in MODELS.items() if takes_images(c))
        raise ConfigError(f"model.name: {name} does not take images; choose one of {image_models}")
    return cls(in_channels=shape[0], image_size=list(shape[1:]), **params)


def load_model(directory: str | os.PathLike, map_location: Any = "cpu") -> Model:
    """The model saved in ``directory`` by ``save_pretrained``, whatever its class (read from
    ``config.json``: the registry name, or the class name that vaekit 0.1 wrote)."""
    header = checkpoint.load_model_header(directory)
    by_class = {cls.__name__: cls for cls in MODELS.values()}
    cls = MODELS.get(header.get("name", "")) or by_class.get(header.get("class", ""))
    if cls is None:
        found = header.get("name", header.get("class"))
        raise VaekitError(f"unknown model {found!r} in {directory}; known: {', '.join(MODELS)}")
    return cls.from_pretrained(directory, map_location=map_location)


__all__ = [
    "MLPVAE",
    "MODELS",
    "VQVAE",
    "AutoEncoder",
    "ConvVAE",
    "GatedPixelCNN",
    "GaussianLatentVAE",
    "LinearGaussianVAE",
    "Model",
    "PriorOutput",
    "VAEOutput",
    "VQVAEOutput",
    "VanillaVAE",
    "build_model",
    "load_model",
    "vae_models",
]
