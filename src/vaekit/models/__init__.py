"""The models, and the registry that config files name them by."""

from vaekit.models.base import VAE, VAEOutput
from vaekit.models.linear import LinearGaussianVAE
from vaekit.models.vae import MLPVAE, ConvVAE, VanillaVAE
from vaekit.models.vqvae import VQVAE, VQVAEOutput

MODELS = {
    "vanilla_vae": VanillaVAE,
    "conv_vae": ConvVAE,
    "mlp_vae": MLPVAE,
    "vqvae": VQVAE,
    "linear_gaussian_vae": LinearGaussianVAE,
}

__all__ = [
    "MLPVAE",
    "MODELS",
    "VAE",
    "VQVAE",
    "ConvVAE",
    "LinearGaussianVAE",
    "VAEOutput",
    "VQVAEOutput",
    "VanillaVAE",
]
