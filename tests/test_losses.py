"""The losses against analytic values."""

import math

import pytest
import torch
from torch import nn

from gan_modules.losses import (
    dcgan_discriminator_loss,
    dcgan_generator_loss,
    gradient_penalty,
    wasserstein_estimate,
    wasserstein_generator_loss,
)


class LinearCritic(nn.Module):
    """critic(x) = w . x over all non-batch dimensions: its input gradient is w everywhere."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1)


@pytest.mark.parametrize("channels", [1, 3])
def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared(channels: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(channels, 4, 4)
    critic = LinearCritic(weight)
    real, fake = torch.randn(5, channels, 4, 4), torch.randn(5, channels, 4, 4)
    expected = (weight.norm() - 1) ** 2  # one norm over C*H*W, the same for every sample
    assert torch.allclose(gradient_penalty(critic, real, fake), expected, rtol=1e-5)


class MatmulCritic(nn.Module):
    """critic(x) = flatten(x) @ w: a matmul, which autocast runs in reduced precision; grad_x is w."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradient_penalty_of_a_linear_critic_is_exact_under_autocast(dtype: torch.dtype) -> None:
    # Near 1-Lipschitz (||w|| = 1.05), where the penalty acts: a bf16/fp16 input gradient would put
    # (||w|| - 1)^2 = 0.0025 off by about a per cent. The penalty runs in float32, so it is exact to
    # float32 rounding, and so is its gradient in w, 2 (||w|| - 1) w / ||w||.
    torch.manual_seed(0)
    weight = torch.randn(3, 4, 4)
    weight = weight * 1.05 / weight.norm()
    critic = MatmulCritic(weight)
    real = torch.randn(5, 3, 4, 4)
    fake = torch.randn(5, 3, 4, 4).to(dtype)  # a generator under autocast returns reduced precision
    with torch.autocast("cpu", dtype=dtype):
        assert critic(real).dtype == dtype  # the critic itself does run in reduced precision here
        penalty = gradient_penalty(critic, real, fake)
    assert penalty.dtype == torch.float32
    assert torch.allclose(penalty, torch.tensor(0.05**2), rtol=1e-5)
    penalty.backward()
    assert torch.allclose(critic.weight.grad, 2 * 0.05 * critic.weight.detach() / 1.05, rtol=1e-5, atol=1e-7)


def test_gradient_penalty_norm_is_per_sample_not_per_pixel() -> None:
    # Every pixel's weight is 0.5, so the per-sample norm is 0.5 * sqrt(C*H*W) = 0.5 * 8 = 4:
    # the penalty is (4 - 1)^2 = 9. A per-pixel norm would give (0.5 - 1)^2 = 0.25.
    critic = LinearCritic(torch.full((1, 8, 8), 0.5))
    penalty = gradient_penalty(critic, torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8))
    assert penalty.item() == pytest.approx(9.0, rel=1e-6)


def test_gradient_penalty_averages_samples_with_different_gradients() -> None:
    # critic(x) = 0.5 * ||x||^2 per sample has gradient x_hat, so the penalty is
    # mean_i (||x_hat_i|| - 1)^2 with x_hat_i on the segment between real_i and fake_i.
    seen = {}

    def critic(x: torch.Tensor) -> torch.Tensor:
        seen["x_hat"] = x.detach().clone()
        return 0.5 * (x**2).flatten(1).sum(1)

    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    penalty = gradient_penalty(critic, real, fake)
    x_hat = seen["x_hat"]
    expected = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(penalty, expected, rtol=1e-5)
    # x_hat = a real + (1 - a) fake with one a ~ U[0, 1] per sample, shared by all its pixels.
    alpha = ((x_hat - fake) / (real - fake)).flatten(1)
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-4)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    assert alpha[:, 0].unique().numel() == 6


def test_gradient_penalty_is_differentiable_in_the_critic_only() -> None:
    critic = LinearCritic(torch.full((1, 2, 2), 2.0))
    real = torch.randn(4, 1, 2, 2, requires_grad=True)
    fake = torch.randn(4, 1, 2, 2, requires_grad=True)
    gradient_penalty(critic, real, fake).backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||, with ||w|| = 4.
    assert torch.allclose(critic.weight.grad, torch.full((1, 2, 2), 2 * 3 * 2.0 / 4))
    assert real.grad is None and fake.grad is None


def test_dcgan_losses_match_binary_cross_entropy() -> None:
    zero = torch.zeros(4)
    assert dcgan_discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert dcgan_generator_loss(zero).item() == pytest.approx(math.log(2))
    logits = torch.tensor([2.0, -1.0])
    assert dcgan_generator_loss(logits).item() == pytest.approx(
        -torch.log(torch.sigmoid(logits)).mean().item(), rel=1e-6)
    # Large logits must not overflow (logits, not probabilities).
    assert torch.isfinite(dcgan_discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])))


def test_wasserstein_losses_and_estimate() -> None:
    real, fake = torch.tensor([3.0, 5.0]), torch.tensor([1.0, -1.0])
    assert wasserstein_estimate(real, fake).item() == 4.0
    assert wasserstein_generator_loss(fake).item() == 0.0


def test_losses_of_bfloat16_scores_are_computed_in_float32() -> None:
    # Means near 1 that differ by about 0.003: bfloat16's resolution there is 2**-7 = 0.0078, so a
    # bfloat16 difference of the two means would be 0 or 0.0078.
    torch.manual_seed(0)
    real = (1.0 + 0.01 * torch.randn(64)).bfloat16()
    fake = (0.997 + 0.01 * torch.randn(64)).bfloat16()
    exact = (real.double().mean() - fake.double().mean()).item()
    value = wasserstein_estimate(real, fake)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(exact, rel=1e-4)
    assert wasserstein_generator_loss(fake).item() == pytest.approx(-fake.double().mean().item(), rel=1e-6)
    logits = torch.linspace(-3, 3, 64).bfloat16()
    exact_bce = torch.nn.functional.softplus(-logits.double()).mean().item()  # -log sigmoid(x)
    assert dcgan_generator_loss(logits).dtype == torch.float32
    assert dcgan_generator_loss(logits).item() == pytest.approx(exact_bce, rel=1e-6)
