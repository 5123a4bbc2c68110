"""DCGAN (Radford et al., 2016, arXiv:1511.06434) with the non-saturating GAN loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_modules.base import GANModule
from gan_modules.losses import dcgan_discriminator_loss, dcgan_generator_loss


class DCGAN(GANModule):
    """DCGAN: a batch-norm discriminator trained with binary cross-entropy on logits.

    Defaults follow the paper and PyTorch's reference example: Adam 2e-4, betas (0.5, 0.999),
    N(0, 0.02) init, one discriminator update per generator update.

    The ``critic_*`` arguments (``critic_width``, ``critic_norm``, ``--model.critic_lr``, ...) and the
    ``train/critic_*`` logs are the discriminator's: one name for the network every family trains
    against the generator.

    Args:
        lr: Adam learning rate of both networks (``critic_lr``/``generator_lr`` set one each).
        betas: Adam betas of both networks.
        **kwargs: the arguments every GAN module shares (:class:`~gan_modules.base.GANModule`), with
            its defaults: batch norm in the discriminator and one discriminator update per generator
            update, as in the paper.
    """

    def __init__(self, *, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Discriminator: classify real as 1 and fake as 0. Returns ``loss`` and the logits (logged as their means)."""
        real_logits, fake_logits = self.critic_scores(real, fake)
        loss = dcgan_discriminator_loss(real_logits, fake_logits)
        return {"loss": loss, **self.score_terms(real_logits, fake_logits)}

    def generator_loss(self, fake: Tensor) -> dict[str, Tensor]:
        """Generator: make the discriminator call the fakes real (non-saturating)."""
        return {"loss": dcgan_generator_loss(self.discriminator(fake))}

    def score_metrics(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        return {"critic_loss": dcgan_discriminator_loss(real_scores, fake_scores)}

    def make_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(self.hparams.betas))
