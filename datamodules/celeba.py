"""CelebA (Liu et al., 2015, "Deep Learning Face Attributes in the Wild"): the 202,599 aligned and
cropped 178 x 218 face images, from torchvision's download or placed by hand."""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from torchvision.datasets import CelebA

from datamodules.image_cache import ImageFilesDataModule, ImageList
from gan_modules.flags import SettingError

_IMAGES = "img_align_celeba"
_ZIP = "img_align_celeba.zip"
_PARTITIONS = ("list_eval_partition.txt", "list_eval_partition.csv")  # official; Kaggle's CSV
_TRAIN, _VAL = 0, 1  # list_eval_partition: 0 train, 1 validation, 2 test
_SOURCE = ("https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive: Img/img_align_celeba.zip and "
           "Eval/list_eval_partition.txt) or Kaggle's celeba-dataset")


class CelebADataModule(ImageFilesDataModule):
    """CelebA faces in [-1, 1], shape (3, image_size, image_size), found in torchvision's layout, Kaggle's
    nested one or as the official zip (docs/data.md); torchvision's download runs only when none is there.

    Args:
        data_dir: folder holding ``celeba/`` or its contents: ``img_align_celeba/`` (or ``.zip``) and the partition.
        crop: ``center178``: the centred 178 x 178 square, the full width (the common default);
            ``face``: the centred 108 x 108 square of carpedm20/DCGAN-tensorflow, a tighter face crop.
        split: ``official``: CelebA's train and validation partitions (162,770 and 19,867 images);
            ``all``: train and validate on every image, as in the GAN papers.
        download: download CelebA with torchvision (from Google Drive, needs ``gdown``) when no files are found.
    """

    cache_prefix = "celeba"
    channels = 3

    def __init__(self, data_dir: str = "data", *, crop: Literal["center178", "face"] = "center178",
                 split: Literal["official", "all"] = "official", download: bool = True, **kwargs: Any) -> None:
        if crop not in ("center178", "face"):
            raise SettingError(f"crop must be 'center178' or 'face', got {crop!r}: set `--data.crop`.")
        if split not in ("official", "all"):
            raise SettingError(f"split must be 'official' or 'all', got {split!r}: set `--data.split`.")
        super().__init__(data_dir=data_dir, crop=crop, **kwargs)
        self.split = split
        self.download = download
        self._roots = [Path(data_dir) / "celeba", Path(data_dir)]

    def _archive(self) -> Path | None:
        return next((root / _ZIP for root in self._roots if (root / _ZIP).is_file()), None)

    def _image_folder(self) -> Path | None:
        """``img_align_celeba`` holding the JPEGs (torchvision's layout), or the one inside it (Kaggle's)."""
        for root in self._roots:
            for folder in (root / _IMAGES, root / _IMAGES / _IMAGES):
                if folder.is_dir() and any(name.lower().endswith(".jpg") for name in os.listdir(folder)):
                    return folder
        return None

    def prepare_data(self) -> None:
        """Extract ``img_align_celeba.zip`` if that is what is there, or download if nothing is; then cache."""
        missing = self._image_folder() is None
        if missing and self._archive() is not None:
            _extract(self._archive())
        elif missing and self.download:
            try:
                CelebA(self.data_dir, split="all", target_type=[], download=True)
            except Exception as error:  # no network, gdown missing, a quota page, a checksum mismatch ...
                archive = Path(self.data_dir) / "celeba" / _ZIP
                if archive.is_file() and (html_error := _html_error(archive)):
                    raise html_error from error
                raise self._missing_error(f"the download failed: {type(error).__name__}: {error}") from error
        super().prepare_data()

    def image_list(self) -> ImageList:
        folder = self._image_folder()
        if folder is None:
            archive = self._archive()
            why = (f"{archive} is not extracted yet: `prepare_data()` extracts it (the Trainer calls it)"
                   if archive else "download is off" if not self.download else "prepare_data() has not run")
            raise self._missing_error(why)
        files = sorted(name for name in os.listdir(folder) if name.lower().endswith(".jpg"))
        if self.split == "all":
            everything = list(range(len(files)))
            return ImageList(folder, files, everything, everything)
        partition = self._partition(folder)
        missing = sorted(set(partition) - set(files))
        if missing:
            raise SettingError(
                f"the CelebA partition file lists {len(missing)} images that are not in {folder}, e.g. "
                f"{', '.join(missing[:5])}: the folder is incomplete. Extract {_ZIP} again (from {_SOURCE}), "
                f"or set `--data.split all` to use the images that are there.")
        train = [row for row, name in enumerate(files) if partition.get(name) == _TRAIN]
        val = [row for row, name in enumerate(files) if partition.get(name) == _VAL]
        if not train or not val:
            raise SettingError(f"the CelebA partition file gives {len(train)} training and {len(val)} "
                               f"validation images in {folder}: it needs both. Set `--data.split all` to use every "
                               f"image.")
        return ImageList(folder, files, train, val)

    def _partition(self, folder: Path) -> dict[str, int]:
        """``{file name: partition}`` from ``list_eval_partition.txt`` (``000001.jpg 0``) or Kaggle's CSV."""
        places = list(dict.fromkeys([folder.parent, folder.parent.parent, *self._roots]))
        path = next((place / name for place in places for name in _PARTITIONS if (place / name).is_file()), None)
        if path is None:
            raise SettingError(f"CelebA's partition file {_PARTITIONS[0]} is not beside {folder} (looked in "
                               f"{', '.join(str(place) for place in places)}): put it there (from {_SOURCE}), or set "
                               f"`--data.split all` to train on every image without it.")
        partition = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.replace(",", " ").split()
            if not fields or (number == 1 and fields[0] == "image_id"):  # blank line, Kaggle's header
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise SettingError(f"{path}, line {number}: expected 'NNNNNN.jpg P' with P in 0/1/2, got {line!r}: "
                                   f"replace the file with CelebA's (from {_SOURCE}).")
            partition[fields[0]] = int(fields[1])
        return partition

    def _missing_error(self, why: str) -> SettingError:
        root = Path(self.data_dir) / "celeba"
        return SettingError(
            f"CelebA is not in {self.data_dir}. Get img_align_celeba.zip and list_eval_partition.txt from "
            f"{_SOURCE}, and put them by hand as {root / _ZIP} (extracted on the next run) or as the extracted "
            f"{root / _IMAGES}/000001.jpg ..., with {root / _PARTITIONS[0]}; or point `--data.data_dir` at "
            f"the folder that holds celeba/. Why they were not found: {' '.join(why.split())}")


def _html_error(archive: Path) -> SettingError | None:
    """The error for a web page saved as the zip (Google Drive's answer when it will not send the file)."""
    with archive.open("rb") as file:
        head = file.read(2048).lower()
    if b"<html" not in head and b"<!doctype html" not in head:
        return None
    return SettingError(
        f"{archive} is an HTML page, not a zip: Google Drive sends its 'quota exceeded' or virus-scan "
        f"warning page instead of the file when too many people downloaded it. Delete it, download "
        f"img_align_celeba.zip by hand in a browser (from {_SOURCE}) and put it at {archive}, or extract "
        f"it there so that {archive.parent / _IMAGES}/000001.jpg exists.")


def _extract(archive: Path) -> None:
    """Extract the official zip beside itself into ``img_align_celeba/``, all or nothing."""
    if not zipfile.is_zipfile(archive):
        raise _html_error(archive) or SettingError(
            f"{archive} is not a zip archive (an incomplete download?): delete it and download it again (from "
            f"{_SOURCE}), or extract it by hand to {archive.parent / _IMAGES}/.")
    target = archive.parent / _IMAGES
    staging = archive.parent / f".{_IMAGES}.extracting-{os.getpid()}"
    rank_zero_info(f"Extracting {archive} to {target} (once).")
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # a bad CRC, a truncated archive
            raise SettingError(f"{archive} is corrupt ({error}): delete it and download it again (from "
                               f"{_SOURCE}), or extract it by hand to {target}/.") from error
        inner = staging / _IMAGES if (staging / _IMAGES).is_dir() else staging  # the zip holds img_align_celeba/
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(inner, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
