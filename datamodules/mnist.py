"""MNIST (LeCun et al., 1998) as one uint8 tensor in memory."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from datamodules.pipeline import ImageDataModule, UInt8ImageDataset, resize_uint8

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class MNISTDataModule(ImageDataModule):
    """MNIST digits in [-1, 1], shape (1, image_size, image_size).

    The official 60,000 training images are the train split; the official 10,000 test images
    are the validation split (FID's real statistics come from them). Each split is decoded once
    into a uint8 tensor (and resized once, if asked) and converted to float per batch.

    Args:
        data_dir: folder holding ``MNIST/raw/`` (torchvision's layout). Files already there are used;
            missing ones are downloaded by torchvision if ``download`` is true.
        batch_size: images per batch (per device under DDP).
        num_workers: dataloader worker processes; 0 loads in the main process, which is fastest for
            data already in memory.
        image_size: side to resize the 28 px digits to (bilinear, antialiased), e.g. 32 or 64;
            ``None`` keeps 28.
        download: try to download missing files.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int | None = None,
        download: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.data_dir = data_dir
        self.image_size = image_size or 28
        self.download = download

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the dataloaders yield."""
        return (1, self.image_size, self.image_size)

    @property
    def raw_folder(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def prepare_data(self) -> None:
        if self.download:
            try:
                MNIST(self.data_dir, train=True, download=True)
            except Exception as error:  # torchvision raises RuntimeError or URLError, among others
                raise self._missing_files_error(f"the download failed: {error}") from error

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load(train=True)
            self.val_set = self._load(train=False)

    def _load(self, train: bool) -> Dataset:
        try:
            mnist = MNIST(self.data_dir, train=train, download=False)
        except RuntimeError as error:
            raise self._missing_files_error("download is off or has not run") from error
        images = mnist.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        if self.image_size != 28:
            images = resize_uint8(images, self.image_size)
        return UInt8ImageDataset(images, mnist.targets)

    def _missing_files_error(self, why: str) -> RuntimeError:
        missing = [name for name in _FILES if not (self.raw_folder / name).is_file()]
        return RuntimeError(
            f"MNIST is not in {self.raw_folder}: put the files {', '.join(_FILES)} there (or their .gz "
            f"archives from https://ossci-datasets.s3.amazonaws.com/mnist/), or point `--data.data_dir` "
            f"at the folder that holds MNIST/raw/. Missing: {', '.join(missing) or 'none (a file is corrupt)'}. "
            f"Why they were not fetched: {' '.join(why.split())}"
        )
