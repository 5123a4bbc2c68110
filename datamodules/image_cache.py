"""Image files to batches in [-1, 1]: decode, crop and resize once into a uint8 cache on disk.

The pipeline shared by :class:`~datamodules.celeba.CelebADataModule` and
:class:`~datamodules.image_folder.ImageFolderDataModule`:

1. :func:`load_image` decodes one file with PIL, centre-crops a square (:data:`Crop`) and resizes it
   with torchvision (bilinear, antialiased) to a uint8 tensor (C, S, S).
2. :func:`ensure_cache` runs it once over every file, in DataLoader workers, into one uint8 array
   (N, C, S, S) saved as ``.npy`` beside a ``.json`` manifest (file names, unreadable files). Both
   are written to temporary names and moved into place with ``os.replace``, the manifest last, so
   a killed build never leaves a cache that looks complete. The file name holds a hash of the crop,
   size, channels and the sorted file list with sizes and mtimes: change any and a new cache is built.
3. :class:`CachedImageDataset` reads that array memory-mapped, a whole batch per gather
   (``__getitems__``), and converts it with :func:`~datamodules.pipeline.to_unit_range`; nothing is
   decoded while training. :class:`ImageFileDataset` is the uncached path: it decodes per item.
4. With ``on_device``, :meth:`CachedImageDataset.to` reads the training rows once into one uint8 tensor on
   the trainer's device, which batches are gathered from in the same order as from the memmap.

:class:`ImageFilesDataModule` holds what the two datamodules share; they only say which files make
up the train and validation splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
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

from datamodules.pipeline import GatheredBatch, ImageDataModule, UInt8ImageDataset, batch_collate, check_int, to_unit_range
from gan_modules.flags import advice

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")

Crop = Literal["center", "center178", "face"]
"""Square centre crop taken before resizing.

- ``center``: the largest centred square (the short side).
- ``center178``: the centred 178 x 178 square of CelebA's 178 x 218 aligned images, i.e. their full
  width; the common default, the same as PyTorch's DCGAN tutorial's ``Resize(64)`` + ``CenterCrop(64)``.
- ``face``: the tighter centred 108 x 108 square of carpedm20/DCGAN-tensorflow
  (``main.py --dataset celebA --input_height=108 --crop``): the face without hair and background.

Fixed sides are clipped to the short side of smaller images.
"""
CROP_SIDES: dict[str, int] = {"center178": 178, "face": 108}

# Bump when load_image's output changes, so caches built by older code are rebuilt.
_PIPELINE_VERSION = 2  # 2: 16- and 32-bit grayscale files scaled, not clipped, to 8 bits
# What PIL raises for a corrupt, truncated or non-image file (UnidentifiedImageError is an OSError).
_UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --- one image -----------------------------------------------------------------------------------

def find_images(folder: Path, skip: Path | None = None) -> list[str]:
    """Image files under ``folder``, recursively, as sorted POSIX paths relative to it.

    Hidden files and folders (``.name``) and the folder ``skip`` (the cache) are left out.
    """
    seen = {skip.resolve()} if skip is not None else set()  # real paths: linked folders are followed once
    found = []
    for parent, folders, names in os.walk(folder, followlinks=True):
        seen.add(Path(parent).resolve())
        folders[:] = [f for f in folders if not f.startswith(".") and (Path(parent) / f).resolve() not in seen]
        relative = Path(parent).relative_to(folder)
        found += [(relative / name).as_posix() for name in names
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def crop_side(crop: Crop, height: int, width: int) -> int:
    """Side of the centred square that ``crop`` takes from a ``height`` x ``width`` image."""
    return min(CROP_SIDES.get(crop, height), height, width)


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grayscale image scaled to 8 bits (mode ``L``); images of other modes unchanged.

    PIL's ``convert("L")`` and ``convert("RGB")`` clip such pixels to [0, 255] instead of scaling
    them, which turns a 16-bit image into black and white. The scales taken:

    - 16-bit (modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` when every value is in
      [0, 65535], as Pillow before 10 opens 16-bit PNGs): the high byte, ``value >> 8``. Pillow
      itself reduces 16-bit RGB PNGs this way, so a picture gives the same 8-bit values whether it
      was saved as 16-bit gray or 16-bit colour. (``round(value / 257)``, the exact rescale, differs
      from it by at most 1.)
    - 32-bit float (mode ``F``): [0, 1] when every value is in it, else [0, 255]; rounded.

    Raises:
        ValueError: for 32-bit pixels outside those ranges, or not finite: they have no known scale.
    """
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    pixels = np.asarray(image)  # decodes fully: raises on truncated files
    if image.mode.startswith("I;16"):
        return Image.fromarray((pixels >> 8).astype(np.uint8), mode="L")
    low, high = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
    if image.mode == "I" and 0 <= low and high <= 65535:
        return Image.fromarray((pixels >> 8).astype(np.uint8), mode="L")
    if image.mode == "F" and np.isfinite(pixels).all() and 0 <= low and high <= 255:
        scaled = pixels * 255 if high <= 1 else pixels
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    kind = "32-bit integer" if image.mode == "I" else "32-bit float"
    raise ValueError(f"{kind} pixels from {low} to {high} have no known 8-bit scale (16-bit integers, or floats "
                     f"in [0, 1] or [0, 255], are scaled): save the image with 8 or 16 bits per channel")


def load_image(path: str | Path, crop: Crop, size: int, channels: int) -> Tensor:
    """Decode an image file to uint8 (channels, size, size): centre crop, then antialiased resize.

    16- and 32-bit grayscale files are scaled to 8 bits first (:func:`to_8_bit`). Raises PIL's errors
    (OSError and others) for corrupt or truncated files, and ValueError for pixels of no known scale.
    """
    with Image.open(path) as file:
        ImageOps.exif_transpose(file, in_place=True)  # phone photos: apply the EXIF rotation
        image = to_8_bit(file).convert("RGB" if channels == 3 else "L")  # decodes fully: raises on truncated files
    tensor = TF.pil_to_tensor(image)  # (C, H, W) uint8
    side = crop_side(crop, tensor.shape[-2], tensor.shape[-1])
    tensor = TF.center_crop(tensor, [side, side])
    if side != size:
        tensor = TF.resize(tensor, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return tensor


def describe_unreadable(unreadable: dict[str, str], total: int, folder: Path, shown: int = 5) -> str:
    """'3 of 2000 images in DIR cannot be read: a.jpg (why), ...', naming the first ``shown``."""
    names = "; ".join(f"{name} ({why})" for name, why in list(unreadable.items())[:shown])
    more = f"; and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
    return (f"{len(unreadable)} of {total} images in {folder} cannot be read (corrupt, truncated or not images): "
            f"{names}{more}.")


def report_unreadable(unreadable: dict[str, str], total: int, folder: Path, strict: bool) -> None:
    """One warning naming the unreadable files, which are skipped; an error if ``strict`` or if none is left."""
    if not unreadable:
        return
    message = describe_unreadable(unreadable, total, folder)
    if len(unreadable) == total:
        raise RuntimeError(f"{message} Delete or replace them.")
    if strict:
        raise RuntimeError(advice(f"{message} Delete or replace them, or set `--data.strict false` to skip them."))
    rank_zero_warn(f"{message} They are skipped; delete or replace them, or set `--data.strict true` to stop on them.")


# --- uncached: decode per item -------------------------------------------------------------------

class ImageFileDataset(Dataset):
    """Decodes, crops and resizes one file per item; items are ``(image in [-1, 1], label 0)``.

    An unreadable file raises an error naming it if ``strict``; otherwise its item is ``None`` (dropped
    by :func:`skip_unreadable_collate`) and the first one in each process is named in a warning.
    """

    def __init__(self, root: Path, files: list[str], crop: Crop, size: int, channels: int, strict: bool) -> None:
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
                raise RuntimeError(advice(f"cannot read image {path} ({error}): delete or replace it, or set "
                                   f"`--data.strict false` to skip unreadable images.")) from error
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"cannot read image {path} ({error}); it is skipped, and further unreadable images "
                               f"are skipped without a warning. `--data.cache true` lists them all.")
            return None
        return to_unit_range(image), torch.tensor(0)


def skip_unreadable_collate(items: list[Any]) -> Any:
    """``default_collate`` without the ``None`` items of unreadable files."""
    readable = [item for item in items if item is not None]
    if not readable:
        raise RuntimeError(advice(f"all {len(items)} images of a batch are unreadable: set `--data.cache true` to find "
                           f"and skip them once, with their names, before training."))
    return default_collate(readable)


# --- the cache -----------------------------------------------------------------------------------

@dataclass
class ImageCache:
    """A built cache: the ``.npy`` array (N, C, S, S) uint8 and the files its rows come from."""

    array_path: Path
    files: list[str]  # row i holds files[i]
    unreadable: dict[str, str]  # file -> error; their rows are zeros and never read

    def readable_rows(self, rows: list[int]) -> list[int]:
        return [row for row in rows if self.files[row] not in self.unreadable]


def cache_key(root: Path, files: list[str], crop: Crop, size: int, channels: int) -> str:
    """sha256 of the pipeline settings and every file's relative path, size and mtime."""
    digest = hashlib.sha256(json.dumps([_PIPELINE_VERSION, crop, size, channels]).encode())
    for name in files:
        stat = os.stat(root / name)
        digest.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def ensure_cache(root: Path, files: list[str], cache_dir: Path, prefix: str, crop: Crop, size: int,
                 channels: int, num_workers: int = 0) -> ImageCache:
    """The cache of ``files`` (relative to ``root``): reused if one with the same key is complete, else built."""
    key = cache_key(root, files, crop, size, channels)
    stem = cache_dir / f"{prefix}-{size}px-{crop}-{channels}ch-{key[:16]}"
    cache = _read_manifest(stem, key, (len(files), channels, size, size))
    if cache is None:
        cache = build_cache(root, files, stem, key, crop, size, channels, num_workers)
    return cache


def _read_manifest(stem: Path, key: str, shape: tuple[int, ...]) -> ImageCache | None:
    array_path, manifest_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text())
        complete = manifest["key"] == key and np.load(array_path, mmap_mode="r").shape == shape
    except (OSError, ValueError, KeyError):  # absent, or a partial copy: rebuild
        return None
    return ImageCache(array_path, manifest["files"], manifest["unreadable"]) if complete else None


def build_cache(root: Path, files: list[str], stem: Path, key: str, crop: Crop, size: int, channels: int,
                num_workers: int = 0) -> ImageCache:
    """Decode every file once into ``stem.npy`` (uint8 (N, C, S, S)) and write ``stem.json``, atomically."""
    array_path, manifest_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    suffix = f".tmp-{os.getpid()}"  # several nodes may build the same cache on a shared disk
    array_tmp, manifest_tmp = Path(f"{array_path}{suffix}"), Path(f"{manifest_path}{suffix}")
    rank_zero_info(f"Building the image cache {array_path}: decoding {len(files)} images once, "
                   f"{num_workers or 'no'} worker processes.")
    start = time.perf_counter()
    unreadable: dict[str, str] = {}
    try:
        array = _allocate(array_tmp, (len(files), channels, size, size))
        loader = DataLoader(_DecodeDataset(root, files, crop, size, channels), batch_size=64,
                            num_workers=num_workers, collate_fn=_collate_decoded)
        for rows, images, errors in loader:
            array[rows] = images.numpy()
            unreadable.update({files[row]: error for row, error in zip(rows.tolist(), errors) if error})
        array.flush()
        del array
        os.replace(array_tmp, array_path)
        manifest = {"key": key, "crop": crop, "size": size, "channels": channels, "root": str(root),
                    "files": files, "unreadable": unreadable}
        manifest_tmp.write_text(json.dumps(manifest))
        os.replace(manifest_tmp, manifest_path)  # last: its presence marks the cache complete
    finally:
        for leftover in (array_tmp, manifest_tmp):
            if leftover.is_file():
                leftover.unlink()
    seconds = time.perf_counter() - start
    rank_zero_info(f"Built the image cache in {seconds:.1f} s ({len(files) / max(seconds, 1e-9):.0f} images/s).")
    return ImageCache(array_path, files, unreadable)


def _allocate(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A zeroed uint8 ``.npy`` memmap whose disk space is reserved now: a full disk is an error here, not a crash
    (SIGBUS) half way through the build."""
    mebibytes = np.prod(shape) / 2**20
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with path.open("r+b") as file:
                os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
    except OSError as error:
        raise RuntimeError(advice(f"cannot write the {mebibytes:,.1f} MiB image cache in {path.parent} ({error}): set "
                           f"`--data.cache_dir` to a writable folder with room, or `--data.cache false` to decode "
                           f"while training.")) from error
    return array


class _DecodeDataset(Dataset):
    """Items ``(row, image uint8 (C, S, S), error)``: zeros and the error's text for an unreadable file."""

    def __init__(self, root: Path, files: list[str], crop: Crop, size: int, channels: int) -> None:
        self.root, self.files, self.crop, self.size, self.channels = root, files, crop, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int) -> tuple[int, Tensor, str]:
        try:
            return row, load_image(self.root / self.files[row], self.crop, self.size, self.channels), ""
        except _UNREADABLE_ERRORS as error:
            blank = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
            return row, blank, f"{type(error).__name__}: {error}"


def _collate_decoded(items: list[tuple[int, Tensor, str]]) -> tuple[Tensor, Tensor, list[str]]:
    rows, images, errors = zip(*items)
    return torch.tensor(rows), torch.stack(images), list(errors)


class CachedImageDataset(Dataset):
    """Rows ``rows`` of a cache's uint8 array, memory-mapped; items are ``(image in [-1, 1], label 0)``.

    A DataLoader with ``collate_fn=batch_collate`` fetches a whole batch through :meth:`__getitems__`:
    one gather of the batch's rows from the memmap (sorted, so reads go forward on disk; every loss
    here is invariant to the order within a batch) and one :func:`to_unit_range` on (B, C, S, S).
    The memmap is opened lazily in each process, so worker processes never pickle it.
    """

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
        image = torch.from_numpy(np.array(self.array[self.rows[index]]))  # copy out of the read-only map
        return to_unit_range(image), torch.tensor(0)

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        images = torch.from_numpy(self.array[np.sort(self.rows[indices])])  # (B, C, S, S) uint8, a copy
        return GatheredBatch(to_unit_range(images), torch.zeros(len(indices), dtype=torch.long))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def to(self, device: torch.device) -> UInt8ImageDataset:
        """These rows read once into one uint8 tensor on ``device``, whose batches equal this dataset's.

        The tensor is allocated there first and filled in chunks, so the host never holds more than a
        chunk of it (unless ``device`` is the CPU, where the tensor is the copy in memory).
        """
        images = torch.empty((len(self.rows), *self.array.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(self.rows), _CHUNK):
            images[start:start + _CHUNK] = torch.from_numpy(self.array[self.rows[start:start + _CHUNK]])
        return _RowSortedImages(images, self.rows)


_CHUNK = 4096  # rows per copy of CachedImageDataset.to: 48 MiB at 64 px RGB


class _RowSortedImages(UInt8ImageDataset):
    """The rows of a :class:`CachedImageDataset` in memory, gathered in the cache's order within a batch
    (by row), so the batches are bitwise the memmap's."""

    def __init__(self, images: Tensor, rows: np.ndarray) -> None:
        super().__init__(images)
        self.rows = rows

    def to(self, device: torch.device) -> _RowSortedImages:
        return _RowSortedImages(self.images.to(device), self.rows)

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        by_row = np.asarray(indices)[np.argsort(self.rows[indices], kind="stable")]
        return super().__getitems__(by_row.tolist())


# --- the datamodules' shared part ----------------------------------------------------------------

@dataclass
class ImageList:
    """What a datamodule reads: ``files`` under ``root`` and the splits, as indices into ``files``."""

    root: Path
    files: list[str]
    train: list[int]
    val: list[int]


class ImageFilesDataModule(ImageDataModule):
    """Train and validation images from files, through the cache or decoded per item.

    The shared :class:`~datamodules.pipeline.ImageDataModule` gives the (resumable) loaders.
    Subclasses implement :meth:`image_list` (and may override :meth:`fetch`, run first by
    ``prepare_data``), set ``cache_prefix`` and document the arguments.
    """

    cache_prefix = "images"

    def __init__(self, data_dir: str, batch_size: int, num_workers: int, image_size: int, crop: Crop,
                 channels: int, cache: bool, cache_dir: str | None, strict: bool, on_device: bool = False) -> None:
        super().__init__(batch_size, num_workers, on_device=on_device)
        check_int("image_size", image_size, 1)
        if on_device and not cache:
            raise ValueError(advice("on_device keeps the decoded training images on the device, but cache is false, so "
                             "they are decoded per batch and never held: set `--data.cache true`, or "
                             "`--data.on_device false`."))
        if channels not in (1, 3):
            raise ValueError(advice(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}: set `--data.channels`."))
        self.data_dir = data_dir
        self.image_size = image_size
        self.crop = crop
        self.channels = channels
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir else Path(data_dir) / ".gan_cache"
        self.strict = strict

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the dataloaders yield."""
        return (self.channels, self.image_size, self.image_size)

    def image_list(self) -> ImageList:
        raise NotImplementedError

    def fetch(self) -> None:
        """Put the files in place (download, extract); run by ``prepare_data`` on one process per node."""

    def prepare_data(self) -> None:
        self.fetch()
        if self.cache:
            self._cache(self.image_list())

    def load_splits(self) -> tuple[Dataset, Dataset]:
        images = self.image_list()
        if self.cache:
            cache = self._cache(images)  # built by prepare_data; here only when that did not run
            report_unreadable(cache.unreadable, len(images.files), images.root, self.strict)
            return (CachedImageDataset(cache.array_path, cache.readable_rows(images.train)),
                    CachedImageDataset(cache.array_path, cache.readable_rows(images.val)))
        settings = dict(crop=self.crop, size=self.image_size, channels=self.channels, strict=self.strict)
        return (ImageFileDataset(images.root, [images.files[i] for i in images.train], **settings),
                ImageFileDataset(images.root, [images.files[i] for i in images.val], **settings))

    def _cache(self, images: ImageList) -> ImageCache:
        return ensure_cache(images.root, images.files, self.cache_dir, self.cache_prefix, self.crop,
                            self.image_size, self.channels, num_workers=_decode_workers(len(images.files)))

    def train_dataloader(self) -> DataLoader:
        self._check_setup()
        return super().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        self._check_setup()
        return super().val_dataloader()

    def _check_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError("the datamodule has no data yet: call `prepare_data()` and `setup()` first "
                               "(the Trainer does).")

    def collate_fn(self, dataset: Dataset | None) -> Any:
        """Whole batches from the cache (or its copy on the device); without it, per-item decoding that drops
        unreadable files."""
        return skip_unreadable_collate if isinstance(dataset, ImageFileDataset) else batch_collate


def _decode_workers(num_files: int) -> int:
    """Worker processes for building a cache: every core, unless there are too few files to pay for them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if num_files < 1000 or cores < 2 else cores
