"""Any folder of images (JPEG, PNG, BMP, WebP, GIF, TIFF), searched recursively."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from datamodules.image_cache import IMAGE_EXTENSIONS, Crop, ImageFilesDataModule, ImageList, find_images
from gan_modules.flags import advice


class ImageFolderDataModule(ImageFilesDataModule):
    """The images under ``data_dir`` and its subfolders (hidden ones skipped) in [-1, 1], shape
    (channels, image_size, image_size); labels are all 0.

    Args:
        data_dir: the folder of images.
        batch_size: images per batch (per device under DDP).
        num_workers: dataloader worker processes: 0 was the fastest measured with the cache; without it, every core.
        image_size: side of the square images, after cropping (bilinear, antialiased resize).
        crop: ``center``: the largest centred square; ``center178``, ``face``: CelebA's crops (see ``Crop``).
        channels: 3 for RGB, 1 for grayscale (PIL's ITU-R 601-2 luma).
        val_fraction: fraction of the images held out for validation (at least one); 0 validates on the
            training images.
        split_seed: seed of the validation sample, drawn from the sorted file list: the same files give the
            same split on every run and rank.
        cache: decode, crop and resize every image once into a uint8 ``.npy`` under ``cache_dir`` and
            train from it; rebuilt when the crop, size, channels or files change.
        cache_dir: where the cache goes; ``None``: ``data_dir/.gan_cache``.
        strict: stop on a corrupt or truncated image instead of skipping it with a warning.
        on_device: keep the cached training images (N x channels x image_size² bytes) on the trainer's
            device and gather each batch there. Needs ``cache`` and ``num_workers`` 0.
    """

    def __init__(
        self,
        data_dir: str = "data/images",
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int = 64,
        crop: Crop = "center",
        channels: Literal[1, 3] = 3,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
        strict: bool = False,
        on_device: bool = False,
    ) -> None:
        if crop not in ("center", "center178", "face"):
            raise ValueError(advice(f"crop must be 'center', 'center178' or 'face', got {crop!r}: set `--data.crop`."))
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(advice(f"val_fraction must be in [0, 1), got {val_fraction}: set `--data.val_fraction`."))
        super().__init__(data_dir, batch_size, num_workers, image_size, crop, channels, cache, cache_dir, strict,
                         on_device=on_device)
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def image_list(self) -> ImageList:
        root = Path(self.data_dir)
        if not root.is_dir():
            raise RuntimeError(advice(f"the image folder {root} does not exist: set `--data.data_dir` to a folder of "
                               f"images."))
        files = find_images(root, skip=self.cache_dir)
        if not files:
            raise RuntimeError(advice(f"no images in {root} or its subfolders (looked for "
                               f"{', '.join(IMAGE_EXTENSIONS)}): set `--data.data_dir` to a folder of images."))
        if self.val_fraction == 0:
            everything = list(range(len(files)))
            return ImageList(root, files, everything, everything)
        num_val = max(1, round(self.val_fraction * len(files)))
        if num_val >= len(files):
            raise RuntimeError(advice(f"{root} holds {len(files)} images, too few to hold out {self.val_fraction:.0%} "
                               f"for validation: add images or lower `--data.val_fraction` (0 validates on the "
                               f"training images)."))
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        return ImageList(root, files, sorted(order[num_val:]), sorted(order[:num_val]))
