"""DCGAN (Radford et al., 2016, arXiv:1511.06434) with the non-saturating GAN loss."""

from __future__ import annotations

import torch
from torch import Tensor

from gan_modules.base import GANModule
from gan_modules.losses import dcgan_discriminator_loss, dcgan_generator_loss
from gan_modules.networks import Norm


class DCGAN(GANModule):
    """DCGAN: a batch-norm discriminator trained with binary cross-entropy on logits.

    Defaults follow the paper and PyTorch's reference example: Adam 2e-4, betas (0.5, 0.999),
    N(0, 0.02) init, one discriminator update per generator update.

    Args:
        image_shape: (C, H, W) of the images; linked from the datamodule by the CLI.
        latent_dim: size of the latent vector z ~ N(0, I).
        generator_width: channels of the generator's last hidden layer (``ngf``).
        critic_width: channels of the discriminator's first layer (``ndf``).
        critic_norm: normalisation in the discriminator: ``batch`` (the paper), ``layer`` or ``none``.
        spectral_norm: wrap every discriminator convolution in spectral normalisation.
        n_critic: discriminator updates per generator update (the paper: 1).
        max_generator_steps: stop after this many generator updates (``None``: no limit).
        check_finite_every_n_steps: check the losses are finite every this many batches and before
            every checkpoint (0: only before checkpoints); each check waits for the device.
        ema_decay: sample (grids, FID) from an exponential moving average of the generator with this
            decay, updated after every generator update; ``None`` (the paper) turns it off.
        lr: Adam learning rate of both networks.
        betas: Adam betas of both networks.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        generator_width: int = 64,
        critic_width: int = 64,
        critic_norm: Norm = "batch",
        spectral_norm: bool = False,
        n_critic: int = 1,
        max_generator_steps: int | None = None,
        check_finite_every_n_steps: int = 1,
        ema_decay: float | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(image_shape, latent_dim, generator_width, critic_width, critic_norm,
                         spectral_norm, n_critic, max_generator_steps, check_finite_every_n_steps,
                         ema_decay)

    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """Discriminator: classify real as 1 and fake as 0."""
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake)
        loss = dcgan_discriminator_loss(real_logits, fake_logits)
        self.log_dict({"train/d_loss": loss, "train/d_real": real_logits.mean(), "train/d_fake": fake_logits.mean()})
        return loss

    def generator_loss(self, fake: Tensor) -> Tensor:
        """Generator: make the discriminator call the fakes real (non-saturating)."""
        loss = dcgan_generator_loss(self.discriminator(fake))
        self.log("train/g_loss", loss)
        return loss

    def score_metrics(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        return {"d_loss": dcgan_discriminator_loss(real_scores, fake_scores)}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        return [
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
        ]
