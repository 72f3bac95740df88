"""The models, and the registry that config files name them by."""

from vaekit.models.base import VAE, VAEOutput
from vaekit.models.linear import LinearGaussianVAE
from vaekit.models.vae import MLPVAE, VanillaVAE
from vaekit.models.vqvae import VQVAE, VQVAEOutput

MODELS = {
    "vanilla_vae": VanillaVAE,
    "mlp_vae": MLPVAE,
    "vqvae": VQVAE,
    "linear_gaussian_vae": LinearGaussianVAE,
}

__all__ = ["MLPVAE", "MODELS", "VAE", "VQVAE", "LinearGaussianVAE", "VAEOutput", "VQVAEOutput", "VanillaVAE"]
