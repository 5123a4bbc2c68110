"""MNISTDataModule on IDX files the tests write."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
from torchvision.datasets import MNIST

from datamodules import MNISTDataModule
from datamodules.pipeline import to_unit_range


def test_loads_idx_files_as_uint8_in_memory_and_yields_unit_range(mnist_dir) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8)
    data.prepare_data()  # files are there: no download
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set)) == (64, 32)  # train file and t10k file
    assert data.train_set.images.dtype == torch.uint8 and data.train_set.images.shape == (64, 1, 28, 28)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    # The first validation image is exactly the first t10k image mapped from [0, 255] to [-1, 1].
    first = next(iter(data.val_dataloader()))[0][0]
    raw = MNIST(str(mnist_dir), train=False).data[0]
    assert torch.allclose(first[0], raw.float() / 127.5 - 1)
    assert data.image_shape == (1, 28, 28)


def test_to_unit_range_maps_the_ends() -> None:
    assert to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_resize_to_the_model_size(mnist_dir) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=4, image_size=32)
    data.setup("fit")
    assert data.image_shape == (1, 32, 32)
    assert data.train_set.images.shape == (64, 1, 32, 32) and data.train_set.images.dtype == torch.uint8
    images, _ = next(iter(data.val_dataloader()))
    assert images.shape == (4, 1, 32, 32)


def test_missing_files_with_download_off_say_where_to_put_them(tmp_path) -> None:
    data = MNISTDataModule(data_dir=str(tmp_path), download=False)
    data.prepare_data()
    with pytest.raises(RuntimeError, match=r"MNIST is not in .*MNIST/raw: put the files train-images-idx3-ubyte"):
        data.setup("fit")


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch) -> None:
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: " + str(URLError("no network")))

    monkeypatch.setattr(MNIST, "download", offline)
    data = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        data.prepare_data()
    message = str(error.value)
    assert f"MNIST is not in {tmp_path}/MNIST/raw" in message
    assert "`--data.data_dir`" in message and "no network" in message
    assert "Missing: train-images-idx3-ubyte, train-labels-idx1-ubyte" in message


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1.*--data.batch_size"):
        MNISTDataModule(batch_size=0)
