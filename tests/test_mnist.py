"""MNISTDataModule on IDX files the tests write."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from lightning.pytorch import Trainer, seed_everything
from torchvision.datasets import MNIST

from datamodules import MNISTDataModule
from datamodules.pipeline import _UNIT_RANGE_ON, _looked_up, to_unit_range
from gan_modules import DCGAN
from gan_modules.flags import SettingError
from conftest import write_idx, write_mnist


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


def test_the_lookup_used_off_the_cpu_gives_the_cpus_division_bit_for_bit() -> None:
    images = torch.arange(256, dtype=torch.uint8).flip(0).reshape(4, 1, 8, 8)
    on_meta = to_unit_range(images.to("meta"))  # a device other than the CPU takes the lookup
    assert on_meta.dtype == torch.float32 and on_meta.shape == images.shape
    assert torch.device("meta") in _UNIT_RANGE_ON
    looked_up = _looked_up(images)  # the same code, run here where its values can be read
    divided = to_unit_range(images)
    assert looked_up.dtype == divided.dtype == torch.float32 and looked_up.shape == divided.shape
    assert torch.equal(looked_up.view(torch.int32), divided.view(torch.int32))
    # x / 127.5 - 1 in float32, each operation rounded once (IEEE), computed by numpy as the reference.
    reference = images.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1)
    assert np.array_equal(divided.numpy().view(np.int32), reference.view(np.int32))


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
    with pytest.raises(SettingError, match=r"MNIST is not in .*MNIST/raw: put the files train-images-idx3-ubyte"):
        data.setup("fit")


def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch) -> None:
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: " + str(URLError("no network")))

    monkeypatch.setattr(MNIST, "download", offline)
    data = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(SettingError) as error:
        data.prepare_data()
    message = str(error.value)
    assert f"MNIST is not in {tmp_path}/MNIST/raw" in message
    assert "`data_dir`" in message and "no network" in message
    assert "Missing: train-images-idx3-ubyte, train-labels-idx1-ubyte" in message


def test_bad_arguments_name_the_flag() -> None:
    for kwargs, flag in (({"batch_size": 0}, "batch_size"), ({"num_workers": -1}, "num_workers"),
                         ({"image_size": 0}, "image_size"), ({"image_size": -32}, "image_size")):
        with pytest.raises(ValueError, match=f"{flag} must be an integer >= .*got -?\\d+: set `{flag}`"):
            MNISTDataModule(**kwargs)
    assert MNISTDataModule(image_size=None).image_shape == (1, 28, 28)  # None: the native size


# --- fewer images than one batch -----------------------------------------------------------------

def test_fewer_images_than_one_batch_stop_in_setup(tmp_path) -> None:
    data = MNISTDataModule(data_dir=str(write_mnist(tmp_path, n_train=6)), batch_size=8)
    with pytest.raises(ValueError, match=r"training set has 6 images, fewer than one batch of 8 on 1 device: .*"
                                         r"`batch_size` to at most 6, or train on more images\.$"):
        data.setup("fit")  # one device: nothing about fewer devices
    data.setup("validate")  # validation keeps its last, incomplete batch: nothing to refuse


def test_fewer_images_than_one_batch_per_device_stop_before_training(tmp_path) -> None:
    """12 images are a batch of 8 on one device, but 6 per device on two (DistributedSampler's share)."""
    data_dir = write_mnist(tmp_path, n_train=12)
    single = MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    single.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    single.setup("fit")
    double = MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    double.trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # nothing starts yet
    with pytest.raises(ValueError, match=r"12 images, fewer than one batch of 8 on 2 devices \(6 images each\).*"
                                         r"at most 6.*fewer devices"):
        double.setup("fit")
    lone = MNISTDataModule(data_dir=str(write_mnist(tmp_path / "one", n_train=1)), batch_size=1)
    lone.trainer = double.trainer
    with pytest.raises(ValueError, match=r"1 images, .* on 2 devices \(0 images each\).*Train on at most 1 devices"):
        lone.setup("fit")


def test_fit_on_too_few_images_fails_instead_of_training_nothing(tmp_path) -> None:
    model = DCGAN(image_shape=(1, 28, 28), generator_width=4, critic_width=4)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="training set has 6 images"):
        trainer.fit(model, MNISTDataModule(data_dir=str(write_mnist(tmp_path, n_train=6)), batch_size=8))
    assert model.critic_steps == 0


# --- corrupt files -------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _short_labels(path: Path) -> None:
    write_idx(path, np.zeros(63, dtype=np.uint8))  # a valid IDX file, one label short of the 64 images


def _images_as_labels(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack(">I", 0x00000801) + data[4:])  # a labels file's magic number


def _gzipped(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes()))  # the archive saved under the raw file's name


def _wrong_side(path: Path) -> None:
    write_idx(path, np.zeros((64, 32, 32), dtype=np.uint8))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


CORRUPTIONS = [
    ("train-images-idx3-ubyte", _truncate, r"is 50,092 bytes, but its header \(64 x 28 x 28 images\) needs "
                                           r"50,192: it is truncated"),
    ("train-labels-idx1-ubyte", _short_labels, "holds 63 labels for the 64 images of train-images-idx3-ubyte"),
    ("train-images-idx3-ubyte", _images_as_labels, "starts with 0x00000801, not 0x00000803"),
    ("t10k-images-idx3-ubyte", _gzipped, "starts with 0x1f8b08.*still compressed"),
    ("t10k-images-idx3-ubyte", _wrong_side, "holds 32 x 32 images, not MNIST's 28 x 28"),
    ("t10k-labels-idx1-ubyte", _empty, "is 0 bytes, shorter than the 8-byte IDX header"),
]


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("name, corrupt, what", CORRUPTIONS, ids=[c[1].__name__.strip("_") for c in CORRUPTIONS])
def test_a_corrupt_file_is_named_with_what_is_wrong(mnist_dir, name, corrupt, what, download) -> None:
    path = mnist_dir / "MNIST" / "raw" / name
    corrupt(path)
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, download=download)
    with pytest.raises(SettingError) as error:
        data.prepare_data()  # the files are there: nothing to download
        data.setup("fit")
    message = str(error.value)
    assert message.startswith(f"the MNIST file {path} is corrupt: ")
    assert re.search(what, message), message
    assert "download failed" not in message and "`download=True`" in message


@pytest.mark.slow
def test_a_download_that_gives_a_corrupt_file_names_it(tmp_path, monkeypatch) -> None:
    def download_truncated(self) -> None:  # torchvision's download, leaving a cut-short image file
        write_mnist(tmp_path)
        _truncate(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")

    monkeypatch.setattr(MNIST, "download", download_truncated)
    with pytest.raises(SettingError, match=r"MNIST file .*train-images-idx3-ubyte is corrupt: .* truncated") as error:
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()  # torchvision's reader fails on it
    assert "download failed" not in str(error.value)


# --- batches by one gather, and the training set on the device -----------------------------------

def _batches(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
    return list(loader)


def _assert_bitwise_equal(batches, expected) -> None:
    assert len(batches) == len(expected) > 0
    for (images, labels), (images_ref, labels_ref) in zip(batches, expected):
        assert images.dtype == images_ref.dtype == torch.float32 and labels.dtype == labels_ref.dtype == torch.long
        assert torch.equal(images.cpu().view(torch.int32), images_ref.cpu().view(torch.int32))  # the bits
        assert torch.equal(labels.cpu(), labels_ref.cpu())


def test_a_batch_is_one_gather_bitwise_equal_to_per_item_collation(mnist_dir, monkeypatch) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8)
    data.setup("fit")
    dataset = data.train_set
    loader = data.train_dataloader()
    order = list(loader.sampler)  # the shuffle is a pure function of (seed, epoch): the loader's own order
    expected = [default_collate([dataset[i] for i in order[start:start + 8]]) for start in range(0, 64, 8)]
    val_expected = [default_collate([data.val_set[i] for i in range(start, start + 8)]) for start in range(0, 32, 8)]

    def one_by_one(self, index):
        raise AssertionError("a batch was built one __getitem__ per image")

    monkeypatch.setattr(type(dataset), "__getitem__", one_by_one)
    _assert_bitwise_equal(_batches(loader), expected)
    _assert_bitwise_equal(list(data.val_dataloader()), val_expected)
    images, labels = next(iter(loader))
    assert images.shape == (8, 1, 28, 28) and labels.shape == (8,)


def _fit_data(mnist_dir, **kwargs) -> MNISTDataModule:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, **kwargs)
    data.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    data.setup("fit")
    return data


def test_on_device_gives_the_default_batches_shuffle_and_resume(mnist_dir) -> None:
    default, on_device = _fit_data(mnist_dir), _fit_data(mnist_dir, on_device=True)
    loader = on_device.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory
    assert on_device._train_set_on_device() is loader.dataset  # moved once, not per loader
    assert on_device.val_dataloader().dataset is on_device.val_set  # only the training split moves
    for epoch in (0, 1):  # a new shuffle each epoch, the same on both paths
        _assert_bitwise_equal(_batches(loader, epoch), _batches(default.train_dataloader(), epoch))

    # A mid-epoch resume: 3 of epoch 1's 8 batches done; both paths go on with the same 5.
    # The seed the loaders above drew (PL_GLOBAL_SEED, which other tests may have set), so the fresh
    # datamodule below shuffles the same way.
    state = {"shuffle_seed": default._shuffle_seed, "epoch": 1, "batches_seen": 3}
    default.load_state_dict(state)
    on_device.load_state_dict(state)
    resumed = _batches(on_device.train_dataloader(), 1)
    assert len(resumed) == 5
    _assert_bitwise_equal(resumed, _batches(default.train_dataloader(), 1))
    _assert_bitwise_equal(resumed, _batches(_fit_data(mnist_dir).train_dataloader(), 1)[3:])


def test_on_device_fit_trains_the_same_weights(mnist_dir) -> None:
    def fit(on_device: bool) -> DCGAN:
        seed_everything(7)
        model = DCGAN(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4)
        trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, on_device=on_device))
        return model

    default, on_device = fit(False), fit(True)
    assert on_device.critic_steps == default.critic_steps == 8
    for (name, a), b in zip(default.state_dict().items(), on_device.state_dict().values()):
        assert torch.equal(a, b), name


def test_on_device_with_workers_names_both_flags() -> None:
    with pytest.raises(ValueError, match=r"on_device .* num_workers is 2: set `num_workers=0`, or "
                                         r"`on_device=False`"):
        MNISTDataModule(num_workers=2, on_device=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_batches_come_from_the_device_and_equal_the_cpu_path(mnist_dir) -> None:
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, on_device=True)
    data.trainer = Trainer(accelerator="cuda", devices=1, logger=False)
    data.setup("fit")
    loader = data.train_dataloader()
    assert data.train_set.images.device.type == "cpu"  # the host copy stays; only the loader's is moved
    assert loader.dataset.images.device.type == "cuda" and loader.dataset.labels.device.type == "cuda"
    batches = _batches(loader)
    assert all(images.is_cuda and labels.is_cuda for images, labels in batches)
    _assert_bitwise_equal(batches, _batches(_fit_data(mnist_dir).train_dataloader()))
    assert data.val_dataloader().dataset.images.device.type == "cpu"  # only the training split moves


def test_a_plain_dataloader_over_the_dataset_still_gives_batches(mnist_dir) -> None:
    # torch's DataLoader calls __getitems__ whenever a dataset has it, also with default_collate.
    from torch.utils.data import DataLoader

    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=8)
    data.setup("fit")
    images, labels = next(iter(DataLoader(data.train_set, batch_size=8)))
    assert images.shape == (8, 1, 28, 28) and labels.shape == (8,)
    assert torch.equal(images, torch.stack([data.train_set[i][0] for i in range(8)]))


@pytest.mark.parametrize("batch_size", [6, 16])
def test_a_resume_with_another_batch_size_skips_the_images_trained_not_the_batches(mnist_dir, batch_size) -> None:
    # 3 batches of 8 of epoch 1 were trained; continued with another --data.batch_size, the run goes on
    # with the epoch's 25th image (it skipped 3 x 6 = 18 or 3 x 16 = 48 before).
    trained = _fit_data(mnist_dir)
    full = torch.cat([images for images, _ in _batches(trained.train_dataloader(), 1)])  # epoch 1, 64 images
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=batch_size)
    data.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    data.setup("fit")
    data.load_state_dict({"shuffle_seed": trained._shuffle_seed, "epoch": 1, "batches_seen": 3, "images_seen": 24})
    rest = torch.cat([images for images, _ in _batches(data.train_dataloader(), 1)])
    assert torch.equal(rest, full[24:24 + (64 - 24) // batch_size * batch_size])
