"""CelebADataModule on tiny CelebA folders written here in each real layout; no network."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.celeba
from PIL import Image

import datamodules.image_cache as image_cache
from datamodules.celeba import CelebADataModule
from gan_modules.flags import SettingError

# 8 train, 3 validation, 2 test images: list_eval_partition's codes 0, 1, 2.
PARTITION = [0] * 8 + [1] * 3 + [2] * 2
NAMES = [f"{index:06d}.jpg" for index in range(1, len(PARTITION) + 1)]


def write_faces(folder: Path, names: list[str] = NAMES, seed: int = 0) -> None:
    """CelebA-sized 178 x 218 JPEGs of random 20-pixel blocks (they survive the resize to 16 px)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        blocks = np.kron(rng.integers(0, 256, (11, 9, 3), dtype=np.uint8), np.ones((20, 20, 1), dtype=np.uint8))
        Image.fromarray(blocks[:218, :178]).save(folder / name, quality=90)


def write_partition(path: Path, csv: bool = False) -> None:
    if csv:  # Kaggle's list_eval_partition.csv
        path.write_text("image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in zip(NAMES, PARTITION)))
    else:  # the official list_eval_partition.txt
        path.write_text("".join(f"{n} {p}\n" for n, p in zip(NAMES, PARTITION)))


def official_layout(data_dir: Path) -> Path:
    write_faces(data_dir / "celeba" / "img_align_celeba")
    write_partition(data_dir / "celeba" / "list_eval_partition.txt")
    return data_dir


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CelebA download fails as it does offline, instead of reaching Google Drive."""
    def offline(*args, **kwargs):
        raise ConnectionError("no network (test)")
    monkeypatch.setattr(torchvision.datasets.celeba, "download_file_from_google_drive", offline)


def loaded(data_dir: Path, **kwargs) -> CelebADataModule:
    datamodule = CelebADataModule(str(data_dir), **{"batch_size": 4, "image_size": 16, **kwargs})
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# --- layouts and splits --------------------------------------------------------------------------

def test_official_layout_gives_official_splits_in_unit_range(tmp_path: Path) -> None:
    datamodule = loaded(official_layout(tmp_path))
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (8, 3)
    assert datamodule.image_shape == (3, 16, 16)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and labels.shape == (4,)
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.5 and images.max() > 0.5
    assert sum(len(batch[0]) for batch in datamodule.val_dataloader()) == 3


def test_kaggle_nested_layout_with_csv_partition(tmp_path: Path) -> None:
    write_faces(tmp_path / "img_align_celeba" / "img_align_celeba")
    write_partition(tmp_path / "list_eval_partition.csv", csv=True)
    datamodule = loaded(tmp_path)
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (8, 3)


def test_split_all_uses_every_image_without_partition_file(tmp_path: Path) -> None:
    write_faces(tmp_path / "celeba" / "img_align_celeba")
    datamodule = loaded(tmp_path, split="all")
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (13, 13)


def test_official_zip_is_extracted_once(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_faces(source)
    celeba = tmp_path / "data" / "celeba"
    celeba.mkdir(parents=True)
    with zipfile.ZipFile(celeba / "img_align_celeba.zip", "w") as archive:  # like the official zip
        for name in NAMES:
            archive.write(source / name, f"img_align_celeba/{name}")
    write_partition(celeba / "list_eval_partition.txt")
    datamodule = loaded(tmp_path / "data", cache=False)
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (8, 3)
    first = celeba / "img_align_celeba" / NAMES[0]
    assert first.read_bytes() == (source / NAMES[0]).read_bytes()
    mtime = first.stat().st_mtime_ns
    loaded(tmp_path / "data", cache=False)
    assert first.stat().st_mtime_ns == mtime  # not extracted again
    assert [p.name for p in celeba.iterdir() if p.name.startswith(".")] == []  # no staging folder left


# --- the cache -----------------------------------------------------------------------------------

def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    load_image = image_cache.load_image

    def counting(path, *args):
        decoded.append(Path(path).name)
        return load_image(path, *args)
    monkeypatch.setattr(image_cache, "load_image", counting)
    return decoded


def test_cache_is_built_once_reused_and_rebuilt_for_another_crop_or_size(tmp_path: Path, monkeypatch) -> None:
    official_layout(tmp_path)
    decoded = count_decodes(monkeypatch)
    first = loaded(tmp_path)
    assert sorted(decoded) == NAMES  # every image decoded once, the test partition too
    array = first.train_set.array_path
    mtime = array.stat().st_mtime_ns

    decoded.clear()
    again = loaded(tmp_path)
    assert decoded == [] and again.train_set.array_path == array and array.stat().st_mtime_ns == mtime
    torch.testing.assert_close(next(iter(again.val_dataloader()))[0], next(iter(first.val_dataloader()))[0])

    for change in ({"crop": "face"}, {"image_size": 8}):
        decoded.clear()
        other = CelebADataModule(str(tmp_path), batch_size=4, **{"image_size": 16, **change})
        other.prepare_data()
        other.setup("fit")
        assert sorted(decoded) == NAMES and other.train_set.array_path != array
    assert len(list((tmp_path / ".gan_cache").glob("*.npy"))) == 3


def test_cached_and_uncached_batches_are_equal(tmp_path: Path) -> None:
    official_layout(tmp_path)
    cached = next(iter(loaded(tmp_path).val_dataloader()))[0]
    decoded = next(iter(loaded(tmp_path, cache=False).val_dataloader()))[0]
    torch.testing.assert_close(cached, decoded, rtol=0, atol=0)


@pytest.mark.parametrize("cache", [True, False])
def test_hflip_doubles_the_training_set_with_each_images_mirror(tmp_path: Path, cache: bool) -> None:
    official_layout(tmp_path)
    plain, mirrored = loaded(tmp_path, cache=cache), loaded(tmp_path, cache=cache, hflip=True)
    assert (len(mirrored.train_set), len(mirrored.val_set)) == (16, 3)  # validation unchanged
    for i in range(8):
        image = plain.train_set[i][0]
        assert torch.equal(mirrored.train_set[i][0], image) and torch.equal(mirrored.train_set[8 + i][0], image.flip(-1))
        assert not torch.equal(image, image.flip(-1))
    assert sum(len(batch[0]) for batch in mirrored.train_dataloader()) == 16  # each epoch: every image both ways


def test_an_interrupted_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    official_layout(tmp_path)
    load_image, calls = image_cache.load_image, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C half way through the build
        return load_image(*args)
    monkeypatch.setattr(image_cache, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loaded(tmp_path)
    assert os.listdir(tmp_path / ".gan_cache") == []
    monkeypatch.setattr(image_cache, "load_image", load_image)
    assert len(loaded(tmp_path).train_set) == 8


def test_a_cache_without_its_manifest_or_cut_short_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    """A build killed outright (SIGKILL) leaves no manifest; a partial copy leaves a short array."""
    official_layout(tmp_path)
    array = loaded(tmp_path).train_set.array_path
    decoded = count_decodes(monkeypatch)
    array.with_suffix(".json").unlink()
    loaded(tmp_path)
    assert sorted(decoded) == NAMES

    decoded.clear()
    array.write_bytes(array.read_bytes()[:-1000])
    datamodule = loaded(tmp_path)
    assert sorted(decoded) == NAMES and len(next(iter(datamodule.train_dataloader()))[0]) == 4


def test_face_crop_is_the_central_108_square(tmp_path: Path) -> None:
    """A white 108 x 108 square in the middle of a black 178 x 218 image fills the face crop only."""
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[55:163, 35:143] = 255  # rows (218 - 108) / 2 ..., columns (178 - 108) / 2 ...
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "000001.png")  # lossless, then renamed: PIL reads by content
    os.rename(folder / "000001.png", folder / "000001.jpg")
    face = next(iter(loaded(tmp_path, split="all", crop="face", batch_size=1).val_dataloader()))[0]
    wide = next(iter(loaded(tmp_path, split="all", crop="center178", batch_size=1).val_dataloader()))[0]
    assert face.min() > 0.95  # all white
    assert wide[..., 0, 0].max() < -0.95 and wide.max() > 0.95  # black corners, white centre


# --- errors --------------------------------------------------------------------------------------

def test_missing_dataset_names_the_layouts_and_the_download_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="by hand") as error:
        CelebADataModule(str(tmp_path)).prepare_data()
    message = str(error.value)
    assert "img_align_celeba.zip" in message and "list_eval_partition.txt" in message
    assert "no network (test)" in message and "`data_dir`" in message


@pytest.mark.parametrize("cache", [True, False])
def test_download_off_and_nothing_there(tmp_path: Path, cache: bool) -> None:
    with pytest.raises(SettingError, match="by hand.*download is off"):
        loaded(tmp_path, download=False, cache=cache)  # prepare_data raises with the cache, setup without


def test_download_that_returns_a_quota_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def quota_page(file_id: str, root: str, filename: str, md5: str) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
        raise RuntimeError("The MD5 checksum of the download file does not match the one on record.")
    monkeypatch.setattr(torchvision.datasets.celeba, "download_file_from_google_drive", quota_page)
    with pytest.raises(SettingError, match="is an HTML page, not a zip.*quota"):
        CelebADataModule(str(tmp_path)).prepare_data()


def test_html_page_named_like_the_zip(tmp_path: Path) -> None:
    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "img_align_celeba.zip").write_text("\n<html><body>Virus scan warning</body></html>")
    with pytest.raises(SettingError, match=r"img_align_celeba\.zip is an HTML page"):
        CelebADataModule(str(tmp_path)).prepare_data()


def test_truncated_or_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "celeba").mkdir()
    archive = tmp_path / "celeba" / "img_align_celeba.zip"
    archive.write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(SettingError, match="is not a zip archive"):
        CelebADataModule(str(tmp_path)).prepare_data()

    write_faces(tmp_path / "source", NAMES[:2])
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        zipped.write(tmp_path / "source" / NAMES[0], f"img_align_celeba/{NAMES[0]}")
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF  # a flipped byte inside the JPEG: the CRC check fails
    archive.write_bytes(bytes(data))
    with pytest.raises(SettingError, match="is corrupt.*download it again"):
        CelebADataModule(str(tmp_path)).prepare_data()
    assert not (tmp_path / "celeba" / "img_align_celeba").exists()


def test_missing_partition_file(tmp_path: Path) -> None:
    write_faces(tmp_path / "celeba" / "img_align_celeba")
    with pytest.raises(SettingError, match="list_eval_partition.txt is not beside.*`split='all'`"):
        loaded(tmp_path)


def test_partition_listing_missing_images(tmp_path: Path) -> None:
    official_layout(tmp_path)
    (tmp_path / "celeba" / "img_align_celeba" / NAMES[3]).unlink()
    with pytest.raises(SettingError, match=f"lists 1 images that are not in .*{NAMES[3]}.*incomplete"):
        loaded(tmp_path)


def test_malformed_partition_file(tmp_path: Path) -> None:
    official_layout(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg train\n")
    with pytest.raises(SettingError, match="line 1: expected"):
        loaded(tmp_path)


@pytest.mark.parametrize("cache", [True, False])
def test_truncated_jpeg_is_skipped_with_one_warning_or_stops_if_strict(tmp_path: Path, cache: bool) -> None:
    official_layout(tmp_path)
    broken = tmp_path / "celeba" / "img_align_celeba" / NAMES[1]
    broken.write_bytes(broken.read_bytes()[:400])  # a truncated download
    with pytest.warns(UserWarning, match=f"{NAMES[1]}.*skipped") as warnings:
        datamodule = loaded(tmp_path, cache=cache)
        batches = [len(images) for images, _ in datamodule.train_dataloader()]
    if cache:  # left out of the split: 7 images, one batch of 4
        assert len(datamodule.train_set) == 7 and batches == [4]
    else:  # dropped from its batch while training: 8 images, batches of 4 and 3
        assert sorted(batches) == [3, 4]
    assert len([w for w in warnings if NAMES[1] in str(w.message)]) == 1
    if cache:
        assert "1 of 13 images" in str(warnings[0].message)

    with pytest.raises(SettingError, match=f"{NAMES[1]}.*`strict=False`"):
        datamodule = loaded(tmp_path, cache=cache, strict=True)
        list(datamodule.train_dataloader())


def test_fewer_training_images_than_one_batch(tmp_path: Path) -> None:
    official_layout(tmp_path)  # 8 training images
    with pytest.raises(ValueError, match=r"training set has 8 images, fewer than one batch of 9 on 1 device.*"
                                         r"`batch_size` to at most 8"):
        loaded(tmp_path, batch_size=9)


def test_bad_arguments_name_the_flag() -> None:
    with pytest.raises(ValueError, match="`crop`"):
        CelebADataModule(crop="center")
    for size in (0, -64, None):
        with pytest.raises(ValueError, match="`image_size`"):
            CelebADataModule(image_size=size)
    with pytest.raises(ValueError, match="`batch_size`"):
        CelebADataModule(batch_size=0)


# --- presets -------------------------------------------------------------------------------------

REFERENCES = {  # DCGAN paper / PyTorch's tutorial; WGAN-GP's Algorithm 1
    "dcgan_celeba": ("DCGAN", 128, {"lr": 2e-4, "betas": (0.5, 0.999), "n_critic": 1, "critic_norm": "batch"}),
    "wgan_gp_celeba": ("WGANGP", 64, {"lr": 1e-4, "betas": (0.0, 0.9), "n_critic": 5, "gp_weight": 10.0,
                                      "critic_norm": "layer"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(REFERENCES))
def test_celeba_presets_load_with_the_references_hyperparameters(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch_size, hyperparameters = REFERENCES[preset]
    from train import build_cli

    monkeypatch.setattr("sys.argv", ["train.py"])
    config = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("#") and "CelebA" in first_line
    cli = build_cli(["--config", str(config), "--trainer.logger", "false", "--trainer.accelerator", "cpu"], run=False)
    assert type(cli.model).__name__ == model and isinstance(cli.datamodule, CelebADataModule)
    assert cli.datamodule.batch_size == batch_size and cli.model.hparams.image_shape == (3, 64, 64)
    assert cli.datamodule.crop == "center178" and cli.datamodule.split == "official"
    loaded_values = {name: cli.model.hparams[name] for name in hyperparameters}
    assert {**loaded_values, "betas": tuple(loaded_values["betas"])} == hyperparameters
