"""Wasserstein GANs: WGAN-GP (Gulrajani et al., 2017) and WGAN with weight clipping
(Arjovsky et al., 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gan_modules.base import GANModule
from gan_modules.losses import gradient_penalty, wasserstein_estimate, wasserstein_generator_loss
from gan_modules.networks import Norm
from gan_modules.flags import SettingError


class _WassersteinGAN(GANModule):
    """The critic and generator objectives both Wasserstein GANs share."""

    @property
    def critic(self) -> nn.Module:
        """The discriminator under its Wasserstein name."""
        return self.discriminator

    def _wasserstein(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The critic's Wasserstein estimate on this batch and its scores of real and fake."""
        real_scores, fake_scores = self.critic_scores(real, fake)
        estimate = wasserstein_estimate(real_scores, fake_scores)
        return {"wasserstein": estimate, **self.score_terms(real_scores, fake_scores)}

    def generator_loss(self, fake: Tensor) -> dict[str, Tensor]:
        """Generator: raise the critic's score of the fakes."""
        return {"loss": wasserstein_generator_loss(self.critic(fake))}

    def score_metrics(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        return {"wasserstein": wasserstein_estimate(real_scores, fake_scores)}


class WGANGP(_WassersteinGAN):
    """WGAN-GP: a critic without batch norm, kept near 1-Lipschitz by a gradient penalty.

    Defaults follow Algorithm 1 of the paper: Adam 1e-4, betas (0.0, 0.9), lambda 10, n_critic 5,
    layer norm in the critic.

    Args:
        critic_norm: ``layer`` (the paper) or ``none``; batch norm is refused because it makes each
            sample's gradient depend on the rest of the batch, which the per-sample penalty assumes
            it does not.
        n_critic: critic updates per generator update.
        lr: Adam learning rate of both networks (``critic_lr``/``generator_lr`` set one each).
        betas: Adam betas of both networks.
        gp_weight: the penalty's weight lambda.
        **kwargs: the other arguments every GAN module shares (:class:`~gan_modules.base.GANModule`).
    """

    def __init__(
        self,
        *,
        critic_norm: Norm = "layer",
        n_critic: int = 5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        gp_weight: float = 10.0,
        **kwargs: Any,
    ) -> None:
        if critic_norm == "batch":
            raise SettingError("WGAN-GP's critic must not use batch norm (the penalty is per sample): "
                               "set `--model.critic_norm layer` (the paper) or `none`.")
        if gp_weight < 0:
            raise SettingError(f"gp_weight must be >= 0, got {gp_weight}: set `--model.gp_weight`.")
        super().__init__(critic_norm=critic_norm, n_critic=n_critic, **kwargs)

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Critic: maximise E[D(real)] - E[D(fake)] with the gradient penalty on interpolates of ``real`` and
        ``fake`` as the critic sees them (with ``--model.augment``, augmented: see :meth:`critic_view`)."""
        terms = self._wasserstein(real, fake)
        # The critic's plain forward under --model.compile: torch.compile has no double backward.
        critic = self.critic.forward if self.hparams.compile else self.critic
        terms["gradient_penalty"] = gradient_penalty(critic, real, fake, self.train_rng)
        terms["loss"] = -terms["wasserstein"] + self.hparams.gp_weight * terms["gradient_penalty"]
        return terms

    def make_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(self.hparams.betas))


class WGAN(_WassersteinGAN):
    """WGAN with weight clipping, the original Wasserstein GAN.

    Every critic parameter is clamped to [-clip_value, clip_value] after each critic step. Defaults
    follow Algorithm 1 of the paper: RMSprop 5e-5, clip 0.01, n_critic 5; the critic keeps
    DCGAN's batch norm, as the paper's experiments did.

    Args:
        n_critic: critic updates per generator update.
        lr: RMSprop learning rate of both networks (``critic_lr``/``generator_lr`` set one each).
        clip_value: the bound c of the weight clipping.
        warmup: the reference code's schedule: 100 critic updates per generator update for the first
            25 generator updates and every 500th, ``n_critic`` otherwise.
        **kwargs: the other arguments every GAN module shares (:class:`~gan_modules.base.GANModule`),
            with its defaults: batch norm in the critic, as the paper's experiments had.
    """

    def __init__(self, *, n_critic: int = 5, lr: float = 5e-5, clip_value: float = 0.01, warmup: bool = False,
                 **kwargs: Any) -> None:
        if clip_value <= 0:
            raise SettingError(f"clip_value must be > 0, got {clip_value}: set `--model.clip_value`.")
        super().__init__(n_critic=n_critic, **kwargs)

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Critic: maximise E[D(real)] - E[D(fake)]; the clipping keeps it Lipschitz."""
        terms = self._wasserstein(real, fake)
        terms["loss"] = -terms["wasserstein"]
        return terms

    def on_critic_step_end(self) -> None:
        clip = self.hparams.clip_value
        with torch.no_grad():  # one clamp per tensor: as fast as torch's private fused foreach here
            for parameter in self.critic.parameters():
                parameter.clamp_(-clip, clip)

    def critic_iterations(self) -> int:
        if self.hparams.warmup and (self.generator_steps < 25 or self.generator_steps % 500 == 0):
            return 100
        return self.hparams.n_critic

    def make_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(parameters, lr=lr)
