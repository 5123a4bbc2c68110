"""DCGAN generator and discriminator/critic (Radford et al., 2016, arXiv:1511.06434).

Both networks are built for any channel count and for square images whose side is
``base * 2**k`` with ``base`` 4 or 7 and ``k >= 2``: 16, 28 (MNIST's native size), 32, 56,
64, 128, ... The generator starts from a ``base x base`` map and doubles it with stride-2
transposed convolutions; the discriminator mirrors it with stride-2 convolutions.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn
from torch.nn.utils import parametrizations

from gan_modules.flags import SettingError

Norm = Literal["batch", "layer", "none"]

_BASE_SIZES = (4, 7)


def resolution_levels(image_size: int) -> tuple[int, int]:
    """Split ``image_size`` into ``(base, n_up)`` with ``image_size == base * 2**n_up``.

    Raises:
        ValueError: if the size is not ``4 * 2**k`` or ``7 * 2**k`` with ``k >= 2``.
    """
    for base in _BASE_SIZES:
        ratio = image_size / base
        if ratio >= 4 and ratio.is_integer() and math.log2(ratio).is_integer():
            return base, int(math.log2(ratio))
    raise SettingError(f"Unsupported image size {image_size}: the DCGAN networks need a square side of "
                       f"4*2^k or 7*2^k with k >= 2 (for example 16, 28, 32, 56, 64 or 128). "
                       f"Set `--data.image_size` to one of these so the images are resized to it.")


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN init: convolutions N(0, 0.02), batch-norm gamma N(1, 0.02) and beta 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        # Layer norm over (C, H, W) of each sample, as in WGAN-GP; per-channel affine.
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {norm!r}: use 'batch', 'layer' or 'none'.")


class Generator(nn.Module):
    """Maps latent vectors ``z ~ N(0, I)`` of shape (N, latent_dim) to images (N, C, H, W) in [-1, 1].

    Transposed convolutions with batch norm and ReLU; tanh output.

    Args:
        latent_dim: size of the latent vector.
        channels: image channels (1 for MNIST, 3 for RGB).
        image_size: side of the square output image (see :func:`resolution_levels`).
        width: channels of the last hidden layer (DCGAN's ``ngf``); each earlier layer doubles it.
    """

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        base, n_up = resolution_levels(image_size)
        self.latent_dim = latent_dim
        hidden = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 512, 256, 128, 64 at 64 px
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, hidden[0], base, 1, 0, bias=False),  # (N, h0, base, base)
            nn.BatchNorm2d(hidden[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(hidden[:-1], hidden[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),  # doubles H and W
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(hidden[-1], channels, 4, 2, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """Maps images (N, C, H, W) to one unbounded score per image, shape (N,).

    Strided convolutions with LeakyReLU(0.2); no norm after the first convolution. The output is a
    logit for DCGAN and a critic value for the Wasserstein GANs.

    Args:
        channels: image channels.
        image_size: side of the square input image (see :func:`resolution_levels`).
        width: channels of the first convolution (DCGAN's ``ndf``); each later layer doubles it.
        norm: normalisation after each hidden convolution but the first: ``batch`` (DCGAN, WGAN),
            ``layer`` (WGAN-GP) or ``none``.
        spectral_norm: wrap every convolution in spectral normalisation (Miyato et al., 2018).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        width: int = 64,
        norm: Norm = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        base, n_down = resolution_levels(image_size)
        hidden = [width * 2**i for i in range(n_down)]  # e.g. 64, 128, 256, 512 at 64 px
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(hidden[:-1], hidden[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm != "batch"),  # halves H and W
                _norm_layer(norm, c_out),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(hidden[-1], 1, base, 1, 0))  # (N, 1, 1, 1)
        self.main = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)
        if spectral_norm:
            for layer in self.main:
                if isinstance(layer, nn.Conv2d):
                    parametrizations.spectral_norm(layer)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images).flatten()
