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
        check_finite_every_n_steps: check that the losses and gradient norms stayed finite every this
            many batches (``None``: every ``log_every_n_steps``, when the logs wait for the device
            anyway; 0: only before checkpoints, which always check every weight too).
        ema_decay: sample (grids, FID) from an exponential moving average of the generator with this
            decay, updated after every generator update; ``None`` (the paper) turns it off.
        channels_last: keep the networks' weights and the images in channels-last memory layout, which
            convolutions on recent GPUs (tensor cores, especially under mixed precision) run faster;
            the same results up to float rounding. Off by default: on CPUs it rarely pays.
        compile: ``torch.compile`` the generator and the critic (in place, so checkpoints keep their
            keys); the same results up to float rounding, after a compilation of tens of seconds at
            the first steps. WGAN-GP's penalty runs the critic uncompiled: torch.compile does not
            support the double backward it needs.
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
        check_finite_every_n_steps: int | None = None,
        ema_decay: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(image_shape, latent_dim, generator_width, critic_width, critic_norm,
                         spectral_norm, n_critic, max_generator_steps, check_finite_every_n_steps,
                         ema_decay, channels_last, compile)

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Discriminator: classify real as 1 and fake as 0. Returns ``loss`` and the mean logits."""
        real_logits, fake_logits = self.critic_scores(real, fake)
        return {"loss": dcgan_discriminator_loss(real_logits, fake_logits),
                "real_score": real_logits.mean(), "fake_score": fake_logits.mean()}

    def generator_loss(self, fake: Tensor) -> dict[str, Tensor]:
        """Generator: make the discriminator call the fakes real (non-saturating)."""
        return {"loss": dcgan_generator_loss(self.discriminator(fake))}

    def score_metrics(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        return {"d_loss": dcgan_discriminator_loss(real_scores, fake_scores)}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr, betas = self.hparams.lr, tuple(self.hparams.betas)
        return [
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
        ]
