"""Differentiable augmentation for the critic (DiffAugment; Zhao et al. 2020, arXiv:2006.10738): the same
random, differentiable transforms applied to every image the critic sees, real and generated, in both
networks' losses, so that with few training images the critic cannot memorise them, while the augmentation
does not leak into the samples. Images are (N, C, H, W) in [-1, 1]; every draw is per sample and comes from
the given ``torch.Generator`` (the module's ``train_rng``), on its device."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_modules.flags import SettingError


def _uniform(images: Tensor, generator: torch.Generator) -> Tensor:
    """(N, 1, 1, 1) uniform in [0, 1), one per sample."""
    return torch.rand(images.shape[0], 1, 1, 1, generator=generator, device=generator.device).to(images)


def _offsets(images: Tensor, generator: torch.Generator, low: int, high: int) -> Tensor:
    """(N, 1, 1) integers in [low, high], one per sample."""
    drawn = torch.randint(low, high + 1, (images.shape[0], 1, 1), generator=generator, device=generator.device)
    return drawn.to(images.device)


def color(images: Tensor, generator: torch.Generator) -> Tensor:
    """Brightness (+ U[-0.5, 0.5)), saturation (x U[0, 2) about the pixel's channel mean: the identity on
    1-channel images) and contrast (x U[0.5, 1.5) about the image's mean), as the reference code."""
    images = images + (_uniform(images, generator) - 0.5)
    if images.shape[1] > 1:
        mean = images.mean(dim=1, keepdim=True)
        images = (images - mean) * (_uniform(images, generator) * 2) + mean
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (_uniform(images, generator) + 0.5) + mean


def translation(images: Tensor, generator: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size along each axis (integer pixels), filling with 0
    (mid-grey): output pixel (i, j) is input pixel (i + dy, j + dx), or 0 outside the image."""
    n, _, height, width = images.shape
    dy = _offsets(images, generator, -int(height * ratio + 0.5), int(height * ratio + 0.5))
    dx = _offsets(images, generator, -int(width * ratio + 0.5), int(width * ratio + 0.5))
    # Indices into the image padded by one zero pixel on each side; out of range reads the padding.
    rows = (torch.arange(height, device=images.device)[None, :, None] + dy + 1).clamp(0, height + 1)  # (N, H, 1)
    columns = (torch.arange(width, device=images.device)[None, None, :] + dx + 1).clamp(0, width + 1)  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    padded = F.pad(images, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (N, H + 2, W + 2, C)
    return padded[batch, rows, columns].permute(0, 3, 1, 2)


def cutout(images: Tensor, generator: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Zero one square of ``ratio`` of the image's size per image, centred anywhere in it (cut at the
    borders)."""
    _, _, height, width = images.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = _offsets(images, generator, 0, height - size_y % 2) - size_y // 2  # (N, 1, 1)
    left = _offsets(images, generator, 0, width - size_x % 2) - size_x // 2
    rows = torch.arange(height, device=images.device)[None, :, None]
    columns = torch.arange(width, device=images.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (columns >= left) & (columns < left + size_x)  # (N, H, W)
    return images * (~inside).unsqueeze(1).to(images.dtype)


POLICIES: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "color": color, "translation": translation, "cutout": cutout}


def parse_policies(augment: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> the policies in that order; ``None`` or ``""`` -> none."""
    names = tuple(name.strip() for name in (augment or "").split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown or len(set(names)) != len(names):
        raise SettingError(f"augment {augment!r} is not a comma-separated list of distinct DiffAugment policies "
                           f"({', '.join(POLICIES)}): set e.g. `--model.augment color,translation,cutout`.")
    return names


def diff_augment(images: Tensor, policies: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """``images`` (N, C, H, W) through each policy in turn, with fresh per-sample draws from ``generator``."""
    for name in policies:
        images = POLICIES[name](images, generator)
    return images
