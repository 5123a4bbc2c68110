"""CelebA (Liu et al., 2015, "Deep Learning Face Attributes in the Wild"): the 202,599 aligned and
cropped 178 x 218 face images, from torchvision's download or placed by hand."""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info
from torchvision.datasets import CelebA

from datamodules.image_cache import ImageFilesDataModule, ImageList
from gan_modules.flags import advice

_IMAGES = "img_align_celeba"
_ZIP = "img_align_celeba.zip"
_PARTITIONS = ("list_eval_partition.txt", "list_eval_partition.csv")  # official; Kaggle's CSV
_TRAIN, _VAL = 0, 1  # list_eval_partition: 0 train, 1 validation, 2 test
_SOURCE = ("https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive: Img/img_align_celeba.zip and "
           "Eval/list_eval_partition.txt) or Kaggle's celeba-dataset")


class CelebADataModule(ImageFilesDataModule):
    """CelebA faces in [-1, 1], shape (3, image_size, image_size).

    With ``split="official"`` the train and validation splits are CelebA's own (162,770 and 19,867
    images, from ``list_eval_partition.txt``); the test partition is not used. With ``split="all"``
    every image trains, as in the GAN papers, and validation (FID's real statistics) uses the same
    images; no partition file is needed.

    The files are found in any of these layouts under ``data_dir`` (or ``data_dir/celeba``)::

        celeba/img_align_celeba/000001.jpg ...                  torchvision's download
        celeba/img_align_celeba/img_align_celeba/000001.jpg ... Kaggle's archive, unzipped
        celeba/img_align_celeba.zip                             the official zip, extracted once here

    with ``list_eval_partition.txt`` (or Kaggle's ``list_eval_partition.csv``) beside
    ``img_align_celeba``. Files found are used; torchvision's download runs only when none are.

    Args:
        data_dir: folder holding CelebA in one of the layouts above.
        batch_size: images per batch (per device under DDP).
        num_workers: dataloader worker processes. With the cache a batch is one gather from a
            memory-mapped array: 0 (in the training process) was the fastest measured, since
            workers add an inter-process copy. Without it every image is decoded: use every core.
        image_size: side of the square images, after cropping (bilinear, antialiased resize).
        crop: ``center178``: the centred 178 x 178 square, the full width (the common default);
            ``face``: the centred 108 x 108 square of carpedm20/DCGAN-tensorflow, a tighter face crop.
        split: ``official``: CelebA's train/validation partition; ``all``: train on every image.
        cache: decode, crop and resize every image once into a uint8 ``.npy`` under ``cache_dir`` and
            train from it without decoding; rebuilt when the crop, size or files change.
        cache_dir: where the cache goes; ``None``: ``data_dir/.gan_cache``.
        strict: stop on a corrupt or truncated image instead of skipping it with a warning.
        download: download CelebA with torchvision (from Google Drive, needs ``gdown``) when no
            files are found.
        on_device: keep the cached training images on the trainer's device (the split must fit there:
            2.0 GB for CelebA's official split at 64 px) and gather each batch there, with the batches,
            shuffle and resume of the default path. Needs ``cache`` and ``num_workers`` 0.
    """

    cache_prefix = "celeba"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int = 64,
        crop: Literal["center178", "face"] = "center178",
        split: Literal["official", "all"] = "official",
        cache: bool = True,
        cache_dir: str | None = None,
        strict: bool = False,
        download: bool = True,
        on_device: bool = False,
    ) -> None:
        if crop not in ("center178", "face"):
            raise ValueError(advice(f"crop must be 'center178' or 'face', got {crop!r}: set `--data.crop`."))
        if split not in ("official", "all"):
            raise ValueError(advice(f"split must be 'official' or 'all', got {split!r}: set `--data.split`."))
        super().__init__(data_dir, batch_size, num_workers, image_size, crop, 3, cache, cache_dir, strict,
                         on_device=on_device)
        self.split = split
        self.download = download

    # --- finding the files ---------------------------------------------------------------------

    @property
    def _roots(self) -> list[Path]:
        return [Path(self.data_dir) / "celeba", Path(self.data_dir)]

    def _image_folder(self) -> Path | None:
        """``img_align_celeba`` holding the JPEGs (torchvision's layout), or the one inside it (Kaggle's)."""
        for root in self._roots:
            for folder in (root / _IMAGES, root / _IMAGES / _IMAGES):
                if folder.is_dir() and any(name.lower().endswith(".jpg") for name in os.listdir(folder)):
                    return folder
        return None

    def fetch(self) -> None:
        """Extract ``img_align_celeba.zip`` if that is what is there, or download if nothing is."""
        if self._image_folder() is not None:
            return
        archive = next((root / _ZIP for root in self._roots if (root / _ZIP).is_file()), None)
        if archive is not None:
            _extract(archive)
        elif self.download:
            try:
                CelebA(self.data_dir, split="all", target_type=[], download=True)
            except Exception as error:  # no network, gdown missing, a quota page, a checksum mismatch ...
                archive = Path(self.data_dir) / "celeba" / _ZIP
                if archive.is_file() and _is_html(archive):
                    raise _html_error(archive) from error
                raise self._missing_error(f"the download failed: {type(error).__name__}: {error}") from error

    def image_list(self) -> ImageList:
        folder = self._image_folder()
        if folder is None:
            archive = next((root / _ZIP for root in self._roots if (root / _ZIP).is_file()), None)
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
            raise RuntimeError(
                advice(f"the CelebA partition file lists {len(missing)} images that are not in {folder}, e.g. "
                f"{', '.join(missing[:5])}: the folder is incomplete. Extract {_ZIP} again (from {_SOURCE}), "
                f"or set `--data.split all` to use the images that are there."))
        train = [row for row, name in enumerate(files) if partition.get(name) == _TRAIN]
        val = [row for row, name in enumerate(files) if partition.get(name) == _VAL]
        if not train or not val:
            raise RuntimeError(advice(f"the CelebA partition file gives {len(train)} training and {len(val)} validation "
                               f"images in {folder}: it needs both. Set `--data.split all` to use every image."))
        return ImageList(folder, files, train, val)

    def _partition(self, folder: Path) -> dict[str, int]:
        """``{file name: partition}`` from ``list_eval_partition.txt`` (``000001.jpg 0``) or Kaggle's CSV."""
        places = list(dict.fromkeys([folder.parent, folder.parent.parent, *self._roots]))
        path = next((place / name for place in places for name in _PARTITIONS if (place / name).is_file()), None)
        if path is None:
            raise RuntimeError(
                advice(f"CelebA's partition file {_PARTITIONS[0]} is not beside {folder} (looked in "
                f"{', '.join(str(place) for place in places)}): put it there (from {_SOURCE}), or set "
                f"`--data.split all` to train on every image without it."))
        partition = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.replace(",", " ").split()
            if not fields or (number == 1 and fields[0] == "image_id"):  # blank line, Kaggle's header
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise RuntimeError(f"{path}, line {number}: expected 'NNNNNN.jpg P' with P in 0/1/2, got {line!r}: "
                                   f"replace the file with CelebA's (from {_SOURCE}).")
            partition[fields[0]] = int(fields[1])
        return partition

    def _missing_error(self, why: str) -> RuntimeError:
        root = Path(self.data_dir) / "celeba"
        return RuntimeError(
            advice(f"CelebA is not in {self.data_dir}. Get img_align_celeba.zip and list_eval_partition.txt from "
            f"{_SOURCE}, and put them by hand as {root / _ZIP} (extracted on the next run) or as the extracted "
            f"{root / _IMAGES}/000001.jpg ..., with {root / _PARTITIONS[0]}; or point `--data.data_dir` at "
            f"the folder that holds celeba/. Why they were not found: {' '.join(why.split())}"))


def _is_html(path: Path) -> bool:
    """Whether the file starts like a web page (Google Drive's answer when it will not send the file)."""
    with path.open("rb") as file:
        head = file.read(2048).lower()
    return b"<html" in head or b"<!doctype html" in head


def _html_error(archive: Path) -> RuntimeError:
    return RuntimeError(
        f"{archive} is an HTML page, not a zip: Google Drive sends its 'quota exceeded' or virus-scan "
        f"warning page instead of the file when too many people downloaded it. Delete it, download "
        f"img_align_celeba.zip by hand in a browser (from {_SOURCE}) and put it at {archive}, or extract "
        f"it there so that {archive.parent / _IMAGES}/000001.jpg exists.")


def _extract(archive: Path) -> None:
    """Extract the official zip beside itself into ``img_align_celeba/``, all or nothing."""
    if not zipfile.is_zipfile(archive) and _is_html(archive):
        raise _html_error(archive)
    if not zipfile.is_zipfile(archive):
        raise RuntimeError(f"{archive} is not a zip archive (an incomplete download?): delete it and download "
                           f"it again (from {_SOURCE}), or extract it by hand to {archive.parent / _IMAGES}/.")
    target = archive.parent / _IMAGES
    staging = archive.parent / f".{_IMAGES}.extracting-{os.getpid()}"
    rank_zero_info(f"Extracting {archive} to {target} (once).")
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # a bad CRC, a truncated archive
            raise RuntimeError(f"{archive} is corrupt ({error}): delete it and download it again (from "
                               f"{_SOURCE}), or extract it by hand to {target}/.") from error
        inner = staging / _IMAGES if (staging / _IMAGES).is_dir() else staging  # the zip holds img_align_celeba/
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(inner, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
