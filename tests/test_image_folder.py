"""ImageFolderDataModule on tiny folders of JPEG, PNG, BMP and WebP files written here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DistributedSampler

import datamodules.image_cache as image_cache
from datamodules.image_cache import CachedImageDataset, build_cache, find_images
from datamodules.image_folder import ImageFolderDataModule
from datamodules.pipeline import batch_collate
from gan_modules.flags import SettingError


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), fmt: str | None = None) -> None:
    """A (width, height) image of random 10-pixel colour blocks."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, (height // 10 + 1, width // 10 + 1, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((10, 10, 1), dtype=np.uint8))[:height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """20 images in several formats and subfolders, plus files that are not images."""
    root = tmp_path / "images"
    names = ([f"a/{i:02d}.jpg" for i in range(6)] + [f"a/b/{i:02d}.png" for i in range(6)]
             + ["c/x.jpeg", "c/y.JPG", "c/z.PNG", "d.bmp", "e.webp", "f.tif", "g/h/i/j.gif", "k.jpg"])
    for seed, name in enumerate(names):
        write_image(root / name, seed)
    (root / "notes.txt").write_text("not an image")
    write_image(root / ".hidden" / "skip.jpg", 99)
    write_image(root / ".skip.png", 98)
    return root


def loaded(data_dir: Path, **kwargs) -> ImageFolderDataModule:
    datamodule = ImageFolderDataModule(str(data_dir), **{"batch_size": 4, "image_size": 8, **kwargs})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_finds_images_recursively_in_every_format(folder: Path) -> None:
    files = find_images(folder)
    assert len(files) == 20 and files == sorted(files)
    assert {"c/y.JPG", "c/z.PNG", "d.bmp", "e.webp", "f.tif", "g/h/i/j.gif"} <= set(files)
    assert not any(".hidden" in name or "skip" in name or name.endswith(".txt") for name in files)


def test_linked_folders_are_listed_once(folder: Path) -> None:
    (folder / "a-link").symlink_to(folder / "a", target_is_directory=True)  # beside the folder it links to
    (folder / "c" / "b-link").symlink_to(folder / "a" / "b", target_is_directory=True)  # to a folder deeper down
    (folder / "g" / "c-link").symlink_to(folder / "c", target_is_directory=True)
    (folder / "g" / "c-link-2").symlink_to(folder / "c", target_is_directory=True)  # two links to one folder
    (folder / "g" / "h" / "up").symlink_to(folder, target_is_directory=True)  # a loop
    files = find_images(folder)
    assert len(files) == 20 and len({(folder / name).resolve() for name in files}) == 20


@pytest.mark.parametrize("cache", [True, False])
def test_batches_in_unit_range_with_a_deterministic_split(folder: Path, cache: bool) -> None:
    datamodule = loaded(folder, val_fraction=0.2, cache=cache)
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (16, 4)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32 and labels.tolist() == [0] * 4
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.5 and images.max() > 0.5
    assert datamodule.image_shape == (3, 8, 8)

    val = torch.cat([batch[0] for batch in datamodule.val_dataloader()])
    same = torch.cat([batch[0] for batch in loaded(folder, val_fraction=0.2, cache=cache).val_dataloader()])
    other = torch.cat([batch[0] for batch in loaded(folder, val_fraction=0.2, cache=cache,
                                                     split_seed=1).val_dataloader()])
    torch.testing.assert_close(val, same, rtol=0, atol=0)
    assert not torch.equal(val, other)


@pytest.mark.parametrize("cache, on_device", [(True, False), (False, False), (True, True)])
def test_hflip_doubles_the_training_set_with_each_images_mirror(folder: Path, cache: bool, on_device: bool) -> None:
    plain = loaded(folder, val_fraction=0.2, cache=cache)
    mirrored = loaded(folder, val_fraction=0.2, cache=cache, hflip=True, on_device=on_device)
    train = mirrored._train_set_on_device() if on_device else mirrored.train_set  # as on_device trains from it
    assert (len(train), len(mirrored.val_set)) == (32, 4)  # validation unchanged
    for i in range(16):
        image = plain.train_set[i][0]
        assert torch.equal(train[i][0], image) and torch.equal(train[16 + i][0], image.flip(-1))
        assert not torch.equal(image, image.flip(-1))
    # A gathered batch of both halves: each image once, the mirrored ones flipped (the order is the loss's).
    images, labels = batch_collate(train.__getitems__([17, 3, 20, 5]))
    expected = [plain.train_set[i][0] for i in (3, 5)] + [plain.train_set[i][0].flip(-1) for i in (1, 4)]
    assert sorted(map(tuple, images.flatten(1).tolist())) == sorted(tuple(e.flatten().tolist()) for e in expected)
    assert labels.tolist() == [0] * 4
    epoch = torch.cat([batch[0] for batch in mirrored.train_dataloader()])
    assert epoch.shape[0] == 32  # each epoch: every image both ways


def test_validation_on_the_training_images_when_val_fraction_is_zero(folder: Path) -> None:
    datamodule = loaded(folder, val_fraction=0.0)
    assert len(datamodule.train_set) == len(datamodule.val_set) == 20


def test_grayscale(folder: Path) -> None:
    datamodule = loaded(folder, channels=1)
    assert datamodule.image_shape == (1, 8, 8)
    assert next(iter(datamodule.train_dataloader()))[0].shape == (4, 1, 8, 8)


def gradient(dtype: type, high: float) -> np.ndarray:
    """A 32 x 32 ramp from 0 to ``high``: 1024 distinct values."""
    return (np.arange(32 * 32, dtype=np.float64) * high / (32 * 32 - 1)).reshape(32, 32).astype(dtype)


# 16-bit PNG (Pillow opens it as "I;16"; before Pillow 10, as "I"), 32-bit integer and float TIFFs.
HIGH_DEPTH = [("png16.png", gradient(np.uint16, 65535)), ("int32.tif", gradient(np.int32, 65535)),
              ("float01.tif", gradient(np.float32, 1.0))]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name, pixels", HIGH_DEPTH, ids=[name for name, _ in HIGH_DEPTH])
def test_high_bit_depth_grayscale_is_scaled_not_clipped(tmp_path: Path, name: str, pixels: np.ndarray,
                                                        channels: int, cache: bool) -> None:
    """16-bit values become their high byte (value >> 8), floats in [0, 1] times 255: 256 levels, not the two
    that PIL's ``convert`` leaves after clipping at 255."""
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / name)
    datamodule = loaded(tmp_path / "images", image_size=32, channels=channels, val_fraction=0.0, batch_size=1,
                        cache=cache)
    images = next(iter(datamodule.val_dataloader()))[0][0]  # (C, 32, 32) in [-1, 1]
    as_uint8 = ((images + 1) * 127.5).round().to(torch.int64)
    expected = torch.from_numpy(pixels.astype(np.float64) * (255 / pixels.max())).round().to(torch.int64)
    assert as_uint8.shape == (channels, 32, 32) and as_uint8.unique().numel() == 256
    assert (as_uint8 - expected).abs().max() <= 1  # 16-bit: value >> 8 is within 1 of value / 257


def test_32_bit_pixels_of_no_known_scale_are_skipped_by_name(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "fine.png", 0)
    Image.fromarray(gradient(np.int32, 2**24)).save(tmp_path / "images" / "counts.tif")
    with pytest.warns(UserWarning, match=r"counts.tif \(ValueError: 32-bit integer pixels from 0 to 16777216 have no "
                                         r"known 8-bit scale"):
        datamodule = loaded(tmp_path / "images", val_fraction=0.0, batch_size=1)
    assert len(datamodule.train_set) == 1


def test_center_crop_takes_the_middle_square(tmp_path: Path) -> None:
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)  # a white 20 x 20 square between black sides
    pixels[:, 20:40] = 255
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "wide.png")
    images = next(iter(loaded(tmp_path / "images", val_fraction=0.0, crop="center", batch_size=1).val_dataloader()))[0]
    assert images.min() == 1.0


def test_cache_is_reused_and_rebuilt_when_the_files_change(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    array = loaded(folder).train_set.array_path
    assert array.parent == folder / ".gan_cache"
    decoded: list[str] = []
    load_image = image_cache.load_image
    monkeypatch.setattr(image_cache, "load_image", lambda path, *args: decoded.append(path) or load_image(path, *args))

    loaded(folder)
    assert decoded == []
    loaded(folder, channels=1)
    assert len(decoded) == 20

    decoded.clear()
    write_image(folder / "a" / "00.jpg", seed=123)  # the same name, new content and mtime
    datamodule = loaded(folder)
    assert len(decoded) == 20 and datamodule.train_set.array_path != array

    decoded.clear()
    write_image(folder / "new.png", seed=124)
    assert len(loaded(folder, val_fraction=0.0).train_set) == 21 and len(decoded) == 21


def test_a_cache_overwritten_with_other_bytes_of_the_same_size_is_rebuilt(folder: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = loaded(folder)
    array, expected = datamodule.train_set.array_path, datamodule.train_set[0][0]
    array.write_bytes(array.read_bytes()[:128] + bytes(array.stat().st_size - 128))  # header kept, pixels zeroed
    decoded: list[str] = []
    load_image = image_cache.load_image
    monkeypatch.setattr(image_cache, "load_image", lambda path, *args: decoded.append(path) or load_image(path, *args))
    datamodule = loaded(folder)
    assert len(decoded) == 20 and torch.equal(datamodule.train_set[0][0], expected)


def test_a_named_pipe_called_like_an_image_is_skipped_not_read(folder: Path) -> None:
    os.mkfifo(folder / "a" / "pipe.png")  # opening it to decode would wait for a writer forever
    assert "a/pipe.png" not in find_images(folder)
    assert len(loaded(folder, val_fraction=0.0).train_set) == 20


def test_cache_built_by_worker_processes_equals_the_main_process(folder: Path, tmp_path: Path) -> None:
    files = find_images(folder)
    serial = build_cache(folder, files, tmp_path / "serial", "key", "center", 8, 3, num_workers=0)
    parallel = build_cache(folder, files, tmp_path / "parallel", "key", "center", 8, 3, num_workers=2)
    assert np.array_equal(np.load(serial.array_path), np.load(parallel.array_path))


def test_cached_loader_keeps_working_under_a_distributed_sampler(folder: Path) -> None:
    """Lightning rebuilds the validation loader with a DistributedSampler under DDP; batches must
    still come whole from ``__getitems__``."""
    datamodule = loaded(folder, val_fraction=0.0)
    sampler = DistributedSampler(datamodule.val_set, num_replicas=2, rank=1, shuffle=False)
    loader = _update_dataloader(datamodule.val_dataloader(), sampler, RunningStage.VALIDATING)
    batches = [images for images, _ in loader]
    assert [len(images) for images in batches] == [4, 4, 2]  # this rank's 10 of the 20 images
    assert all(images.shape[1:] == (3, 8, 8) and images.abs().max() <= 1 for images in batches)


def test_trains_and_validates_a_dcgan_from_the_cache(folder: Path) -> None:
    from gan_modules import DCGAN

    datamodule = ImageFolderDataModule(str(folder), batch_size=4, image_size=32)
    model = DCGAN(image_shape=datamodule.image_shape, generator_width=4, critic_width=4)
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert (model.critic_steps, model.generator_steps) == (2, 2)


def test_an_unreadable_image_is_left_out_of_the_real_grid_without_the_cache(folder: Path, tmp_path: Path) -> None:
    from gan_modules import DCGAN
    from gan_modules.callbacks import SampleGridCallback

    datamodule = ImageFolderDataModule(str(folder), batch_size=4, image_size=16, cache=False, val_fraction=0.2)
    datamodule.setup("fit")
    broken = folder / datamodule.val_set.files[0]
    broken.write_text("<html>not an image</html>")  # the first image of the grid drawn before training
    trainer = Trainer(max_steps=1, limit_val_batches=1, accelerator="cpu", logger=TensorBoardLogger(tmp_path, "run"),
                      callbacks=[SampleGridCallback(num_samples=4, nrow=2)], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match=f"cannot read image {broken}"):
        trainer.fit(DCGAN(image_shape=(3, 16, 16), generator_width=4, critic_width=4), datamodule=datamodule)
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    assert len(events.Images("data/real")) == 1


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unreadable_files_are_skipped_with_one_warning_naming_them(folder: Path) -> None:
    broken = folder / "a" / "01.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    (folder / "a" / "02.jpg").write_text("<html>not a JPEG</html>")
    with pytest.warns(UserWarning) as warnings:
        datamodule = loaded(folder, val_fraction=0.0)
    messages = [str(w.message) for w in warnings if "cannot be read" in str(w.message)]
    assert len(messages) == 1
    assert "2 of 20 images" in messages[0] and "a/01.jpg" in messages[0] and "a/02.jpg" in messages[0]
    assert len(datamodule.train_set) == 18

    with pytest.raises(SettingError, match="2 of 20 images.*a/01.jpg.*`strict=False`"):
        loaded(folder, strict=True)


def test_a_folder_of_only_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(SettingError, match="1 of 1 images .* cannot be read"):
        loaded(tmp_path / "images", val_fraction=0.0)
    with pytest.warns(UserWarning, match="a.jpg"), pytest.raises(SettingError, match="all 1 images of a batch"):
        next(iter(loaded(tmp_path / "images", val_fraction=0.0, cache=False, batch_size=1).val_dataloader()))


def test_cache_dir_that_cannot_be_written(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SettingError, match="cannot write the .* image cache.*`cache_dir`.*`cache=False`"):
        loaded(folder, cache_dir=str(tmp_path / "a_file" / "cache"))


def test_missing_empty_and_too_small_folders(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="does not exist.*`data_dir`"):
        loaded(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(SettingError, match=r"no images in .*empty.*\.jpg.*`data_dir`"):
        loaded(tmp_path / "empty", cache=False)
    write_image(tmp_path / "one" / "a.png", 0)
    with pytest.raises(SettingError, match="1 images, too few.*`val_fraction`"):
        loaded(tmp_path / "one")


def test_fewer_training_images_than_one_batch(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"training set has 16 images, fewer than one batch of 17 on 1 device.*"
                                         r"`batch_size` to at most 16"):
        loaded(folder, val_fraction=0.2, batch_size=17)  # 20 images, 4 held out
    assert len(loaded(folder, val_fraction=0.2, batch_size=16).train_dataloader()) == 1


def test_bad_arguments_name_the_flag() -> None:
    for kwargs, flag in (({"channels": 2}, "channels"), ({"val_fraction": 1.0}, "val_fraction"),
                         ({"crop": "middle"}, "crop"), ({"num_workers": -1}, "num_workers"),
                         ({"image_size": 0}, "image_size"), ({"image_size": None}, "image_size"),
                         ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=f"`{flag}`"):
            ImageFolderDataModule(**kwargs)


def test_dataloader_before_setup(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="call `prepare_data\\(\\)` and `setup\\(\\)` first"):
        ImageFolderDataModule(str(tmp_path)).train_dataloader()


def test_cached_dataset_items_and_batches_agree(folder: Path) -> None:
    dataset: CachedImageDataset = loaded(folder, val_fraction=0.0).train_set
    images, labels = batch_collate(dataset.__getitems__([5, 2, 9]))
    singles = torch.stack([dataset[i][0] for i in (2, 5, 9)])  # a batch comes sorted by row
    torch.testing.assert_close(images, singles, rtol=0, atol=0)
    assert labels.tolist() == [0, 0, 0]


def test_on_device_batches_equal_the_cached_path(folder: Path) -> None:
    """The cache's rows, read once into one tensor (on the trainer's device; the CPU here), give the memmap's
    batches bit for bit: the same shuffle, and within a batch the same order (by row)."""
    default, on_device = loaded(folder, val_fraction=0.2), loaded(folder, val_fraction=0.2, on_device=True)
    loader = on_device.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory
    assert not isinstance(loader.dataset, CachedImageDataset)  # held in memory, not memory-mapped
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        reference = default.train_dataloader()
        reference.sampler.set_epoch(epoch)
        batches, expected = list(loader), list(reference)
        assert len(batches) == len(expected) == 4  # 16 training images
        for (images, labels), (images_ref, labels_ref) in zip(batches, expected):
            assert torch.equal(images.view(torch.int32), images_ref.view(torch.int32))
            assert torch.equal(labels, labels_ref)


def test_on_device_needs_the_cache_and_no_workers(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"on_device .* cache is false.*`cache=True`, or "
                                         r"`on_device=False`"):
        ImageFolderDataModule(str(folder), cache=False, on_device=True)
    with pytest.raises(ValueError, match=r"num_workers is 4: set `num_workers=0`, or `on_device=False`"):
        ImageFolderDataModule(str(folder), num_workers=4, on_device=True)
