"""vaekit: variational auto-encoders (VAE, VQ-VAE) in plain PyTorch.

The public API is re-exported here; the math lives in :mod:`vaekit.losses`.
"""

from vaekit import losses
from vaekit.checkpoint import load_model, save_model
from vaekit.errors import ConfigError, DataError, VaekitError
from vaekit.models import (
    MLPVAE,
    MODELS,
    VAE,
    VQVAE,
    ConvVAE,
    LinearGaussianVAE,
    VAEOutput,
    VanillaVAE,
    VQVAEOutput,
)
from vaekit.quantize import QuantizerOutput, VectorQuantizer

__version__ = "0.1.0"

__all__ = [
    "MLPVAE",
    "MODELS",
    "VAE",
    "VQVAE",
    "ConfigError",
    "ConvVAE",
    "DataError",
    "LinearGaussianVAE",
    "QuantizerOutput",
    "VAEOutput",
    "VQVAEOutput",
    "VaekitError",
    "VanillaVAE",
    "VectorQuantizer",
    "load_model",
    "losses",
    "save_model",
]
