"""Image files to batches in [-1, 1], shared by the CelebA and image-folder datamodules: :func:`build_cache`
decodes, crops and resizes every file once into a uint8 ``.npy`` array that :class:`CachedImageDataset` reads
memory-mapped, a whole batch per gather; :class:`ImageFileDataset` is the uncached path, decoding per item."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms.v2 import functional as TF

from datamodules.pipeline import GatheredBatch, ImageDataModule, MirroredDataset, UInt8ImageDataset, to_unit_range
from gan_modules.flags import SettingError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")

Crop = Literal["center", "center178", "face"]
"""Square centre crop taken before resizing: ``center`` the largest; ``center178`` the 178 x 178 full width
of CelebA's 178 x 218 aligned images (as PyTorch's DCGAN tutorial's ``Resize(64)`` + ``CenterCrop(64)``);
``face`` the 108 x 108 of carpedm20/DCGAN-tensorflow (``--input_height=108 --crop``), the face without hair
and background. Fixed sides are clipped to the short side of smaller images."""
CROP_SIDES: dict[str, int] = {"center178": 178, "face": 108}

_PIPELINE_VERSION = 2  # bump when load_image's output changes, to rebuild older caches (2: high bit depths scaled)
# What PIL raises for a corrupt, truncated or non-image file (UnidentifiedImageError is an OSError).
_UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def find_images(folder: Path, skip: Path | None = None) -> list[str]:
    """Image files under ``folder``, recursively, as sorted POSIX paths relative to it, without hidden files
    and folders (``.name``), the folder ``skip`` (the cache) and what is not a regular file (a named pipe
    called ``x.png`` would block the decoder forever)."""
    seen = {Path(folder).resolve(), *([skip.resolve()] if skip is not None else [])}  # real paths, each walked once
    found = []
    for parent, folders, names in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(folders):  # marked when listed: two links to one folder, or a link beside it, count once
            path = (Path(parent) / name).resolve()
            if not name.startswith(".") and path not in seen:
                seen.add(path)
                kept.append(name)
        folders[:] = kept
        relative = Path(parent).relative_to(folder)
        found += [(relative / name).as_posix() for name in names if not name.startswith(".")
                  and name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(parent, name))]
    return sorted(found)


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grayscale image scaled to 8 bits (mode ``L``), not clipped as PIL's ``convert`` does.

    16-bit (``I;16*``, and ``I`` within [0, 65535], as Pillow before 10 opens 16-bit PNGs) keeps the high
    byte, as Pillow reduces 16-bit RGB PNGs (within 1 of ``round(value / 257)``); 32-bit float is taken as
    [0, 1] when every value is in it, else [0, 255], and rounded. Images of other modes are unchanged.

    Raises:
        ValueError: for 32-bit pixels outside those ranges, or not finite: they have no known scale.
    """
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    pixels = np.asarray(image)  # decodes fully: raises on truncated files
    low, high = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
    if image.mode.startswith("I;16") or (image.mode == "I" and 0 <= low and high <= 65535):
        return Image.fromarray((pixels >> 8).astype(np.uint8), mode="L")
    if image.mode == "F" and 0 <= low and high <= 255:  # False for NaN and infinities too
        scaled = pixels * 255 if high <= 1 else pixels
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    kind = "32-bit integer" if image.mode == "I" else "32-bit float"
    raise ValueError(f"{kind} pixels from {low} to {high} have no known 8-bit scale (16-bit integers, or floats "
                     f"in [0, 1] or [0, 255], are scaled): save the image with 8 or 16 bits per channel")


def load_image(path: str | Path, crop: Crop, size: int, channels: int) -> Tensor:
    """Decode an image file to uint8 (channels, size, size): :func:`to_8_bit`, centre crop, antialiased resize.

    Raises:
        OSError: (or another of ``_UNREADABLE_ERRORS``) for a corrupt, truncated or unscalable file.
    """
    with Image.open(path) as file:
        ImageOps.exif_transpose(file, in_place=True)  # phone photos: apply the EXIF rotation
        image = to_8_bit(file).convert("RGB" if channels == 3 else "L")  # decodes fully: raises on truncated files
    tensor = TF.pil_to_tensor(image)  # (C, H, W) uint8
    side = min(CROP_SIDES.get(crop, tensor.shape[-1]), *tensor.shape[-2:])
    tensor = TF.center_crop(tensor, [side, side])
    return TF.resize(tensor, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def report_unreadable(unreadable: dict[str, str], total: int, folder: Path, strict: bool) -> None:
    """Warn once, naming the first 5 unreadable files (skipped); raise if ``strict`` or if none is left."""
    if not unreadable:
        return
    names = "; ".join(f"{name} ({why})" for name, why in list(unreadable.items())[:5])
    more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    message = (f"{len(unreadable)} of {total} images in {folder} cannot be read (corrupt, truncated or not images): "
               f"{names}{more}.")
    if len(unreadable) == total:
        raise SettingError(f"{message} Delete or replace them.")
    if strict:
        raise SettingError(f"{message} Delete or replace them, or set `--data.strict false` to skip them.")
    rank_zero_warn(f"{message} They are skipped; delete or replace them, or set `--data.strict true` to stop on them.")


class ImageFileDataset(Dataset):
    """Decodes, crops and resizes one file per item; items are ``(image in [-1, 1], label 0)``.

    An unreadable file raises an error naming it if ``strict``; otherwise its item is ``None``, left out of
    its batch, and the first one in each process is named in a warning.
    """

    def __init__(self, root: Path, files: list[str], crop: Crop, size: int, channels: int,
                 strict: bool = False) -> None:
        self.root, self.files = root, files
        self.crop, self.size, self.channels, self.strict = crop, size, channels, strict
        self._warned = False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | None:
        path = self.root / self.files[index]
        try:
            image = load_image(path, self.crop, self.size, self.channels)
        except _UNREADABLE_ERRORS as error:
            if self.strict:
                raise SettingError(f"cannot read image {path} ({error}): delete or replace it, or set "
                                   f"`--data.strict false` to skip unreadable images.") from error
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"cannot read image {path} ({error}); it is skipped, and further unreadable images "
                               f"are skipped without a warning. `--data.cache true` lists them all.")
            return None
        return to_unit_range(image), torch.tensor(0)

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        readable = [item for item in map(self.__getitem__, indices) if item is not None]
        if not readable:
            raise SettingError(f"all {len(indices)} images of a batch are unreadable: set `--data.cache true` "
                               f"to find and skip them once, with their names, before training.")
        return GatheredBatch(*default_collate(readable))


class _DecodeDataset(ImageFileDataset):
    """Items ``(row, image uint8 (C, S, S), error)``: zeros and the error's text for an unreadable file."""

    def __getitem__(self, row: int) -> tuple[int, Tensor, str]:
        try:
            return row, load_image(self.root / self.files[row], self.crop, self.size, self.channels), ""
        except _UNREADABLE_ERRORS as error:
            blank = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
            return row, blank, f"{type(error).__name__}: {error}"

    def __getitems__(self, rows: list[int]) -> list[tuple[int, Tensor, str]]:
        return [self[row] for row in rows]  # every item, for default_collate


@dataclass
class ImageCache:
    """A built cache: the ``.npy`` array (N, C, S, S) uint8, row i from file i, and the unreadable files."""

    array_path: Path
    unreadable: dict[str, str]  # file -> error; their rows are zeros and never read


def build_cache(root: Path, files: list[str], stem: Path, key: str, crop: Crop, size: int, channels: int,
                num_workers: int = 0) -> ImageCache:
    """Decode every file once into ``stem.npy`` (uint8 (N, C, S, S)) and write ``stem.json``, each under a
    temporary name moved into place, the manifest last: a killed build never leaves a cache that looks complete."""
    array_path, manifest_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    suffix = f".tmp-{os.getpid()}"  # several nodes may build the same cache on a shared disk
    array_tmp, manifest_tmp = Path(f"{array_path}{suffix}"), Path(f"{manifest_path}{suffix}")
    rank_zero_info(f"Building the image cache {array_path}: decoding {len(files)} images once, "
                   f"{num_workers or 'no'} worker processes.")
    start = time.perf_counter()
    unreadable: dict[str, str] = {}
    try:
        array = _allocate(array_tmp, (len(files), channels, size, size))
        loader = DataLoader(_DecodeDataset(root, files, crop, size, channels), batch_size=64, num_workers=num_workers)
        for rows, images, errors in loader:
            array[rows] = images.numpy()
            unreadable.update({files[row]: error for row, error in zip(rows.tolist(), errors) if error})
        array.flush()
        del array
        os.replace(array_tmp, array_path)
        manifest = {"key": key, "crop": crop, "size": size, "channels": channels, "root": str(root),
                    "files": files, "unreadable": unreadable, "array": _file_stamp(array_path)}
        manifest_tmp.write_text(json.dumps(manifest))
        os.replace(manifest_tmp, manifest_path)
    finally:
        for leftover in (array_tmp, manifest_tmp):
            if leftover.is_file():
                leftover.unlink()
    seconds = time.perf_counter() - start
    rank_zero_info(f"Built the image cache in {seconds:.1f} s ({len(files) / max(seconds, 1e-9):.0f} images/s).")
    return ImageCache(array_path, unreadable)


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _allocate(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A zeroed uint8 ``.npy`` memmap whose disk space is reserved now: a full disk is an error here, not a
    crash (SIGBUS) half way through the build."""
    mebibytes = np.prod(shape) / 2**20
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with path.open("r+b") as file:
                os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
    except OSError as error:
        raise SettingError(f"cannot write the {mebibytes:,.1f} MiB image cache in {path.parent} ({error}): set "
                           f"`--data.cache_dir` to a writable folder with room, or `--data.cache false` to decode "
                           f"while training.") from error
    return array


class CachedImageDataset(Dataset):
    """Rows ``rows`` of a cache's uint8 array, memory-mapped (opened lazily in each process, so workers never
    pickle it); items are ``(image in [-1, 1], label 0)``. :meth:`__getitems__` reads a batch's rows in one
    sorted gather (forward on disk; every loss here ignores the order within a batch)."""

    CHUNK = 4096  # rows per copy in :meth:`to`: 48 MiB at 64 px RGB

    def __init__(self, array_path: Path, rows: list[int]) -> None:
        self.array_path = array_path
        self.rows = np.asarray(rows, dtype=np.int64)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        images = torch.from_numpy(self.array[np.sort(self.rows[indices])])  # (B, C, S, S) uint8, a copy
        return GatheredBatch(to_unit_range(images), torch.zeros(len(indices), dtype=torch.long))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def to(self, device: torch.device) -> UInt8ImageDataset:
        """These rows read once into one uint8 tensor on ``device``, whose batches equal this dataset's; filled
        in chunks, so the host never holds more than a chunk of it (unless ``device`` is the CPU)."""
        images = torch.empty((len(self.rows), *self.array.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(self.rows), self.CHUNK):
            images[start:start + self.CHUNK] = torch.from_numpy(self.array[self.rows[start:start + self.CHUNK]])
        return UInt8ImageDataset(images, batch_order=self.rows)  # a batch in the memmap's order, by row


@dataclass
class ImageList:
    """What a datamodule reads: ``files`` under ``root`` and the splits, as indices into ``files``."""

    root: Path
    files: list[str]
    train: list[int]
    val: list[int]


class ImageFilesDataModule(ImageDataModule):
    """Train and validation images from files, through the cache or decoded per item; subclasses implement
    :meth:`image_list`, set ``cache_prefix`` and ``channels``, and declare ``data_dir`` with its default.

    Args:
        data_dir: the folder the subclass reads its images from.
        crop: ``center``: the largest centred square; ``center178``, ``face``: CelebA's crops (see ``Crop``).
        cache: train from a cache of the decoded images. Each image is decoded, cropped and resized once
            into a uint8 ``.npy`` under ``cache_dir``, rebuilt when the crop, size, channels or files change.
        cache_dir: where the cache goes; ``None``: ``data_dir/.gan_cache``.
        strict: stop on a corrupt image, instead of skipping it. (A skipped image is named in a warning.)
        hflip: also train on each image's left-right mirror. (Each epoch is then twice as long.)
    """

    cache_prefix = "images"
    image_list: Callable[[], ImageList]  # the files and the two splits

    def __init__(self, *, data_dir: str, crop: Crop = "center", cache: bool = True, cache_dir: str | None = None,
                 strict: bool = False, hflip: bool = False, **kwargs: Any) -> None:
        if crop not in ("center", "center178", "face"):
            raise SettingError(f"crop must be 'center', 'center178' or 'face', got {crop!r}: set `--data.crop`.")
        super().__init__(**kwargs)
        if self.on_device and not cache:
            raise SettingError("on_device keeps the decoded training images on the device, but cache is false, so "
                               "they are decoded per batch and never held: set `--data.cache true`, or "
                               "`--data.on_device false`.")
        self.data_dir = data_dir
        self.crop = crop
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir else Path(data_dir) / ".gan_cache"
        self.strict = strict
        self.hflip = hflip

    def prepare_data(self) -> None:
        if self.cache:
            self._cache(self.image_list())

    def load_splits(self) -> tuple[Dataset, Dataset]:
        images = self.image_list()
        if self.cache:
            cache = self._cache(images)  # built by prepare_data; here only when that did not run
            report_unreadable(cache.unreadable, len(images.files), images.root, self.strict)
            readable = [name not in cache.unreadable for name in images.files]
            train, val = (CachedImageDataset(cache.array_path, [row for row in rows if readable[row]])
                          for rows in (images.train, images.val))
        else:
            settings = dict(crop=self.crop, size=self.image_size, channels=self.channels, strict=self.strict)
            train, val = (ImageFileDataset(images.root, [images.files[row] for row in rows], **settings)
                          for rows in (images.train, images.val))
        return (MirroredDataset(train) if self.hflip else train), val

    def _cache(self, images: ImageList) -> ImageCache:
        """The cache of ``images``, reused if one with the same key (settings, every file's path, size and mtime)
        is complete, else built."""
        settings = (self.crop, self.image_size, self.channels)
        digest = hashlib.sha256(json.dumps([_PIPELINE_VERSION, *settings]).encode())
        for name in images.files:
            stat = os.stat(images.root / name)
            digest.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        key = digest.hexdigest()
        stem = self.cache_dir / f"{self.cache_prefix}-{self.image_size}px-{self.crop}-{self.channels}ch-{key[:16]}"
        array_path = stem.with_suffix(".npy")
        try:
            manifest = json.loads(stem.with_suffix(".json").read_text())
            # The array's size and modification time as built: a partial copy, or bytes written over it since
            # (other data of the same size), make it rebuild; one stat, not a read of the whole cache.
            if manifest["key"] == key and manifest.get("array") == _file_stamp(array_path):
                return ImageCache(array_path, manifest["unreadable"])
        except (OSError, ValueError, KeyError):  # absent, or a partial copy: rebuild
            pass
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = 0 if len(images.files) < 1000 or cores < 2 else cores  # unless too few files to pay for them
        return build_cache(images.root, images.files, stem, key, *settings, workers)
