"""Any folder of images (JPEG, PNG, BMP, WebP, GIF, TIFF), searched recursively."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from datamodules.image_cache import IMAGE_EXTENSIONS, ImageFilesDataModule, ImageList, find_images
from gan_modules.flags import SettingError


class ImageFolderDataModule(ImageFilesDataModule):
    """The images under ``data_dir`` and its subfolders (hidden ones skipped) in [-1, 1], shape
    (channels, image_size, image_size); labels are all 0.

    Args:
        data_dir: the folder of images.
        channels: 3 for RGB, 1 for grayscale (PIL's ITU-R 601-2 luma).
        val_fraction: fraction of the images held out for validation (at least one); 0 validates on the
            training images.
        split_seed: seed of the validation sample, drawn from the sorted file list: the same files give the
            same split on every run and rank.
    """

    def __init__(self, data_dir: str = "data/images", *, channels: Literal[1, 3] = 3, val_fraction: float = 0.05,
                 split_seed: int = 0, **kwargs: Any) -> None:
        if channels not in (1, 3):
            raise SettingError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}: "
                               f"set `--data.channels`.")
        if not 0.0 <= val_fraction < 1.0:
            raise SettingError(f"val_fraction must be in [0, 1), got {val_fraction}: set `--data.val_fraction`.")
        super().__init__(data_dir=data_dir, **kwargs)
        self.channels = channels
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def image_list(self) -> ImageList:
        root = Path(self.data_dir)
        if not root.is_dir():
            raise SettingError(f"the image folder {root} does not exist: set `--data.data_dir` to a folder of "
                               f"images.")
        files = find_images(root, skip=self.cache_dir)
        if not files:
            raise SettingError(f"no images in {root} or its subfolders (looked for "
                               f"{', '.join(IMAGE_EXTENSIONS)}): set `--data.data_dir` to a folder of images.")
        if self.val_fraction == 0:
            everything = list(range(len(files)))
            return ImageList(root, files, everything, everything)
        num_val = max(1, round(self.val_fraction * len(files)))
        if num_val >= len(files):
            raise SettingError(f"{root} holds {len(files)} images, too few to hold out {self.val_fraction:.0%} "
                               f"for validation: add images or lower `--data.val_fraction` (0 validates on the "
                               f"training images).")
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        return ImageList(root, files, sorted(order[num_val:]), sorted(order[:num_val]))
