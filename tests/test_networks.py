"""The DCGAN networks: shapes, init, norms and the size check."""

import pytest
import torch
from torch import nn

from conftest import has_batch_norm
from gan_modules.networks import Discriminator, Generator


@pytest.mark.parametrize("size", [16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_each_size_and_channel_count(size: int, channels: int) -> None:
    generator = Generator(latent_dim=8, channels=channels, image_size=size, width=4)
    discriminator = Discriminator(channels, size, width=4)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1  # tanh
    assert discriminator(images).shape == (3,)


def test_generator_width_and_latent_size_are_configurable() -> None:
    generator = Generator(latent_dim=16, channels=1, image_size=32, width=8)
    first = generator.main[0]
    assert (first.in_channels, first.out_channels) == (16, 32)  # 4x4 map with width * 2^(3-1)


@pytest.mark.parametrize("size", [30, 20, 8, 48])
def test_unsupported_image_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=rf"Unsupported image size {size}.*`image_size`"):
        Generator(8, 1, size)
    with pytest.raises(ValueError, match="Unsupported image size"):
        Discriminator(1, size)


def test_dcgan_initialisation() -> None:
    torch.manual_seed(0)
    generator = Generator(latent_dim=100, channels=3, image_size=64, width=64)
    conv_weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)])
    gammas = torch.cat([m.weight for m in generator.modules() if isinstance(m, nn.BatchNorm2d)])
    assert conv_weights.mean().abs() < 1e-3 and conv_weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.01) and gammas.std().item() == pytest.approx(0.02, rel=0.2)


def test_critic_norm_choices() -> None:
    assert has_batch_norm(Discriminator(1, 28, norm="batch"))
    layer = Discriminator(1, 28, norm="layer")
    assert not has_batch_norm(layer) and any(isinstance(m, nn.GroupNorm) for m in layer.modules())
    assert not has_batch_norm(Discriminator(1, 28, norm="none"))
    # Layer norm normalises each sample on its own: a sample's score ignores the rest of the batch.
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(layer(x)[:1], layer(x[:1]), atol=1e-5)


@pytest.mark.slow
def test_spectral_norm_bounds_each_convolution() -> None:
    torch.manual_seed(0)
    critic = Discriminator(1, 16, width=4, norm="none", spectral_norm=True)
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(hasattr(conv, "parametrizations") for conv in convs)
    critic.train()
    for _ in range(20):  # power iterations converge in training mode
        critic(torch.randn(2, 1, 16, 16))
    critic.eval()
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
