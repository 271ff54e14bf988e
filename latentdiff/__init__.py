"""latentdiff: lean latent text-to-image diffusion."""

__version__ = "0.1.0"
