"""MNIST (LeCun et al., 1998) as one uint8 tensor in memory."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from datamodules.pipeline import ImageDataModule, UInt8ImageDataset
from gan_modules.flags import SettingError

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_SOURCE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: two zero bytes, type 0x08 (uint8), dimensions
_SIDE = 28


class MNISTDataModule(ImageDataModule):
    """MNIST digits in [-1, 1], shape (1, image_size, image_size): the 60,000 training images train, the 10,000
    test images validate (FID's real statistics). The IDX files are checked first; a bad one is named.

    Args:
        data_dir: folder holding ``MNIST/raw/`` (torchvision's layout). Files already there are used;
            if any is missing, torchvision downloads them when ``download`` is true.
        image_size: side to resize the 28 px digits to (bilinear, antialiased), e.g. 32 or 64;
            ``None`` keeps 28.
        download: try to download missing files.
    """

    channels = 1

    def __init__(self, data_dir: str = "data", *, image_size: int | None = None, download: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(image_size=_SIDE if image_size is None else image_size, **kwargs)
        self.data_dir = data_dir
        self.download = download
        self.raw_folder = Path(data_dir) / "MNIST" / "raw"

    def _missing(self) -> list[str]:
        return [name for name in _FILES if not (self.raw_folder / name).is_file()]

    def prepare_data(self) -> None:
        if not self.download or not self._missing():
            return  # files that are there are used as they are, and checked by setup
        try:
            MNIST(self.data_dir, train=True, download=True)
        except Exception as error:  # torchvision raises RuntimeError or URLError, among others
            if not self._missing():  # fetched, but torchvision could not read them: name the bad file
                self._check_files()
                raise
            raise self._missing_files_error(f"the download failed: {error}") from error

    def load_splits(self) -> tuple[Dataset, Dataset]:
        if self._missing():
            raise self._missing_files_error("download is off or has not run")
        self._check_files()
        return self._load(train=True), self._load(train=False)

    def _load(self, train: bool) -> Dataset:
        mnist = MNIST(self.data_dir, train=train, download=False)  # torchvision's reader, on checked files
        images = mnist.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        if self.image_size != _SIDE:  # bilinear, antialiased, in chunks: bounded float memory
            size = (self.image_size, self.image_size)
            images = torch.cat([F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True,
                                              align_corners=False) for chunk in images.split(4096)])
            images = images.round_().clamp_(0, 255).to(torch.uint8)
        return UInt8ImageDataset(images, mnist.targets)

    def _check_files(self) -> None:
        """Check each split's IDX headers and sizes, and that it has as many labels as images."""
        for prefix in ("train", "t10k"):
            images_path = self.raw_folder / f"{prefix}-images-idx3-ubyte"
            labels_path = self.raw_folder / f"{prefix}-labels-idx1-ubyte"
            num_images, rows, columns = _idx_shape(images_path, _IMAGES_MAGIC, "images")
            if (rows, columns) != (_SIDE, _SIDE):
                raise _corrupt_file_error(images_path, f"it holds {rows} x {columns} images, not MNIST's 28 x 28")
            (num_labels,) = _idx_shape(labels_path, _LABELS_MAGIC, "labels")
            if num_labels != num_images:
                raise _corrupt_file_error(labels_path, f"it holds {num_labels} labels for the {num_images} images "
                                          f"of {images_path.name} beside it (the two come from different copies)")

    def _missing_files_error(self, why: str) -> SettingError:
        return SettingError(
            f"MNIST is not in {self.raw_folder}: put the files {', '.join(_FILES)} there (or, with "
            f"`--data.download true`, their .gz archives from {_SOURCE}, which are extracted), or point "
            f"`--data.data_dir` at the folder that holds MNIST/raw/. Missing: {', '.join(self._missing())}. "
            f"Why they were not fetched: {' '.join(why.split())}")


def _idx_shape(path: Path, magic: int, kind: str) -> tuple[int, ...]:
    """The dimensions in the header of the IDX file ``path``, checked against its magic number and size."""
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    with path.open("rb") as file:
        header = file.read(header_size)
    if len(header) < header_size:
        raise _corrupt_file_error(path, f"it is {len(header)} bytes, shorter than the {header_size}-byte IDX header "
                                        f"of an MNIST {kind} file")
    (found,) = struct.unpack(">I", header[:4])
    if found != magic:
        raise _corrupt_file_error(path, f"it starts with 0x{found:08x}, not 0x{magic:08x}, the IDX magic number of "
                                        f"an MNIST {kind} file (not an MNIST file, or still compressed)")
    shape = struct.unpack(f">{ndim}I", header[4:])
    expected = header_size + math.prod(shape)  # one byte per value
    actual = path.stat().st_size
    if actual != expected:
        how = "truncated" if actual < expected else "has bytes after its data"
        raise _corrupt_file_error(path, f"it is {actual:,} bytes, but its header ({' x '.join(map(str, shape))} "
                                        f"{kind}) needs {expected:,}: it is {how}")
    return shape


def _corrupt_file_error(path: Path, what: str) -> SettingError:
    return SettingError(
        f"the MNIST file {path} is corrupt: {what}. Replace it with the original (delete it and run again with "
        f"`--data.download true`, or put it there from {_SOURCE}, gunzipped).")
