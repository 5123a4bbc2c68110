"""The one place where images become floats in [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] to float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images (N, C, H, W) to (N, C, size, size), bilinear and antialiased."""
    resized = torch.cat([
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for chunk in images.split(4096)  # bounded float memory
    ])
    return resized.round_().clamp_(0, 255).to(torch.uint8)


class UInt8ImageDataset(Dataset):
    """Images held as one uint8 tensor (N, C, H, W); items are ``(image in [-1, 1], label)``."""

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return to_unit_range(self.images[index]), self.labels[index]
