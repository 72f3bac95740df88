"""vaekit: variational auto-encoders (VAE, VQ-VAE) in plain PyTorch.

The public API is re-exported here; the math lives in :mod:`vaekit.losses`.
"""

from vaekit import losses
from vaekit.errors import ConfigError, DataError, IgnoredArgumentWarning, NoPriorError, VaekitError
from vaekit.models import (
    MLPVAE,
    MODELS,
    VQVAE,
    AutoEncoder,
    ConvVAE,
    GaussianLatentVAE,
    LinearGaussianVAE,
    Model,
    VAEOutput,
    VanillaVAE,
    VQVAEOutput,
    load_model,
    vae_models,
)
from vaekit.outputs import NamedOutput
from vaekit.quantize import QuantizerOutput, VectorQuantizer

__version__ = "0.1.0"

__all__ = [
    "MLPVAE",
    "MODELS",
    "VQVAE",
    "AutoEncoder",
    "ConfigError",
    "ConvVAE",
    "DataError",
    "GaussianLatentVAE",
    "IgnoredArgumentWarning",
    "LinearGaussianVAE",
    "Model",
    "NamedOutput",
    "NoPriorError",
    "QuantizerOutput",
    "VAEOutput",
    "VQVAEOutput",
    "VaekitError",
    "VanillaVAE",
    "VectorQuantizer",
    "load_model",
    "losses",
    "vae_models",
]
