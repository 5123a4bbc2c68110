"""GAN LightningModules: DCGAN, WGAN-GP and WGAN with weight clipping."""

from gan_modules.dcgan import DCGAN
from gan_modules.wgan import WGAN, WGANGP

__all__ = ["DCGAN", "WGAN", "WGANGP"]
