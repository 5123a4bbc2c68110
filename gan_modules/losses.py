"""GAN losses as pure functions of the discriminator's outputs, and the WGAN-GP gradient penalty.

Every loss is the quantity the named network *minimises*. Each is computed in float32 whatever the
scores' dtype: under ``bf16-mixed``/``16-mixed`` the critic returns reduced-precision scores, and a
bfloat16 mean near 1 has a resolution of 2**-7, coarser than the gap between E[D(real)] and
E[D(fake)] that the Wasserstein terms are made of. ``.float()`` is a no-op on float32 scores.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def dcgan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy of the discriminator (Goodfellow et al., 2014).

    ``-log sigmoid(real_logits) - log(1 - sigmoid(fake_logits))``, averaged over each batch and
    summed over the two, computed from logits for numerical stability.
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    real_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real_loss + fake_loss


def dcgan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss (Goodfellow et al., 2014): ``-log sigmoid(fake_logits)``, mean."""
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    """Generator loss of WGAN: ``-E[D(fake)]``."""
    return -fake_scores.float().mean()


def wasserstein_estimate(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The critic's estimate of the Wasserstein-1 distance, ``E[D(real)] - E[D(fake)]`` (Arjovsky et al., 2017).

    Up to the critic's Lipschitz constant; it should fall as the samples improve. The critic maximises it:
    its loss is ``-wasserstein_estimate``.
    """
    return real_scores.float().mean() - fake_scores.float().mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al., 2017, eq. 3), without the weight lambda.

    ``mean_i (||grad_x critic(x_hat_i)||_2 - 1)^2`` with ``x_hat_i = a_i real_i + (1 - a_i) fake_i``
    and ``a_i ~ U[0, 1]`` drawn once per sample. The norm is taken per sample over all non-batch
    dimensions, in float32. The result is differentiable with respect to the critic's parameters
    (``create_graph=True``); ``real`` and ``fake`` receive no gradient.

    Mixed precision: under ``torch.autocast`` (``bf16-mixed``, ``16-mixed``) the penalty's critic forward
    and input gradient run in float32, autocast off: exact, and needing nothing from the trainer, where
    scaling the scores by the GradScaler's scale only saves a float16 gradient from underflow while near
    1-Lipschitz a reduced-precision ``||grad|| - 1`` has lost most of its digits. The outer
    ``manual_backward`` still scales the whole loss, so the GradScaler unscales every gradient.

    Args:
        critic: maps a batch (N, ...) to scores of shape (N,) or (N, 1).
        real: real samples, (N, C, H, W) or any (N, ...).
        fake: generated samples of the same shape.
        generator: draws the mixing coefficients (on ``real``'s device); the global RNG if ``None``.

    Returns:
        A scalar tensor.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype,
                       generator=generator)
    x_hat = alpha * real.detach() + (1 - alpha) * fake.detach()
    device_type = x_hat.device.type
    # Under autocast the fakes come in bf16/fp16 while the critic's master weights are float32.
    autocast_on = torch.is_autocast_enabled(device_type)
    x_hat = (x_hat.float() if autocast_on else x_hat).requires_grad_(True)
    with torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext():
        scores = critic(x_hat)
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    grad_norm = grad.float().flatten(1).norm(2, dim=1)  # (N,)
    return ((grad_norm - 1) ** 2).mean()
