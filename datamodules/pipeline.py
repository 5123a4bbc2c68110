"""What every datamodule shares: the one place where images become floats in [-1, 1], batches built
by one gather, the resumable shuffle of the training set, and the option to keep it on the device."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from gan_modules.flags import SettingError


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] to float32 in [-1, 1], ``x / 127.5 - 1``, bitwise the same on every device.

    Off the CPU by looking up the CPU's 256 results: CUDA divides by a scalar as a multiplication by its
    reciprocal, one bit off for some values, so batches gathered on a GPU would differ from the default path's.
    """
    if images.device.type == "cpu":
        return images.float().div_(127.5).sub_(1.0)
    return _looked_up(images)


_UNIT_RANGE = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0)  # the CPU's, value by value
_UNIT_RANGE_ON: dict[torch.device, Tensor] = {}  # copied to each device once: a copy per batch would wait


def _looked_up(images: Tensor) -> Tensor:
    """:func:`to_unit_range` by the table of the CPU's results, on the images' device."""
    if images.device not in _UNIT_RANGE_ON:
        _UNIT_RANGE_ON[images.device] = _UNIT_RANGE.to(images.device)
    return _UNIT_RANGE_ON[images.device][images.int()]  # int: uint8 indices would be a mask


class UInt8ImageDataset(Dataset):
    """Images held as one uint8 tensor (N, C, H, W) on any device; items are ``(image in [-1, 1], label)``,
    labels zeros by default. :meth:`__getitems__` gathers a whole batch at once (in the sampler's order, or by
    the keys ``batch_order`` (N,)) and converts it with one :func:`to_unit_range`: bitwise the batch that
    ``__getitem__`` per image and ``default_collate`` build."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, batch_order: np.ndarray | None = None) -> None:
        self.images = images
        self.labels = torch.zeros(len(images), dtype=torch.long, device=images.device) if labels is None else labels
        self.batch_order = batch_order

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return to_unit_range(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        if self.batch_order is not None:
            indices = np.asarray(indices)[np.argsort(self.batch_order[indices], kind="stable")].tolist()
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.images.device.type == "cuda":  # without blocking: a copy from pageable memory waits for the GPU's queue
            index = index.pin_memory()
        index = index.to(self.images.device, non_blocking=self.images.device.type == "cuda")
        return GatheredBatch(to_unit_range(self.images[index]), self.labels[index])  # (B, C, H, W), (B,)

    def to(self, device: torch.device) -> UInt8ImageDataset:
        """The same images and labels on ``device`` (the same object's tensors where they are already there)."""
        return UInt8ImageDataset(self.images.to(device), self.labels.to(device), self.batch_order)


class GatheredBatch(Sequence):
    """A gathered batch, (B, C, H, W) images and (B,) labels, that still reads as its B ``(image, label)`` items
    for any other collate function (torch's ``default_collate``); :func:`batch_collate` takes the tensors."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.images[index], self.labels[index]


class MirroredDataset(Dataset):
    """``dataset`` and its mirror image (stylegan2-ada's ``--mirror``): item ``i >= N`` is item ``i - N`` flipped
    left-right, so each epoch sees every training image both ways."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index % len(self.dataset)]
        return (image.flip(-1) if index >= len(self.dataset) else image), label

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        n = len(self.dataset)
        plain, mirrored = [i for i in indices if i < n], [i - n for i in indices if i >= n]
        parts = [(self.dataset.__getitems__(part), flip) for part, flip in ((plain, False), (mirrored, True)) if part]
        images = torch.cat([batch.images.flip(-1) if flip else batch.images for batch, flip in parts])
        return GatheredBatch(images, torch.cat([batch.labels for batch, _ in parts]))  # the losses ignore the order

    def to(self, device: torch.device) -> MirroredDataset:
        return MirroredDataset(self.dataset.to(device))


def batch_collate(batch: Any) -> Any:
    """A :class:`GatheredBatch` as its tensors; anything else by torch's ``default_collate``."""
    if isinstance(batch, GatheredBatch):
        return batch.images, batch.labels
    return default_collate(batch)


class ResumableSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (so Lightning neither replaces it under DDP nor forgets ``set_epoch``),
    given rank and world size so it also works without a process group, that can resume inside an epoch:
    the next pass over ``resume_epoch`` skips the epoch's first ``resume_skip`` images (of all ranks: the
    shuffle is one permutation that the ranks take in turns), whatever the batch size or the number of
    ranks that trained them, and shares the rest among this run's ranks; later epochs are whole."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.resume_epoch: int | None = None  # until the pass over it has started
        self.resume_skip = 0

    def __iter__(self) -> Iterator[int]:
        resuming, self.resume_epoch = self.resume_epoch == self.epoch, None
        if not resuming:
            return super().__iter__()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's shuffle
        rest = torch.randperm(len(self.dataset), generator=generator).tolist()[self.resume_skip:self.total_size]
        return iter(rest[self.rank:len(rest) - len(rest) % self.num_replicas:self.num_replicas])


class ImageDataModule(LightningDataModule):
    """The loaders every datamodule of this project shares; subclasses implement :meth:`load_splits` and set
    ``channels``. Their ``__init__`` takes their own arguments and passes the shared ones below on by keyword
    (``**kwargs``), naming only those whose default they change: each is declared and documented here once.

    Training batches come in a :class:`ResumableSampler` shuffle of ``(PL_GLOBAL_SEED, epoch)``; the position
    inside an epoch is saved with the checkpoint, so a resumed run trains on exactly the batches the
    uninterrupted run would have. Validation batches come in file order (Lightning splits them across ranks).
    With ``on_device`` the training split is moved once to ``trainer.strategy.root_device`` and batches are
    gathered there: no workers, no pinning, no copy per batch, and the default path's batches.

    Args:
        batch_size: images per batch (per device under DDP).
        num_workers: dataloader worker processes: 0 was the fastest measured for images in memory or cached;
            for image files without the cache, every core.
        image_size: side of the square images, after cropping (bilinear, antialiased resize).
        on_device: keep the training images (uint8, N x C x image_size² bytes) on the trainer's device and gather
            each batch there, with the default path's batches. 47 MB for MNIST at 28 px, 2.0 GB for CelebA's
            official split at 64 px. Needs ``num_workers`` 0 (and ``cache`` for image files).
    """

    channels: int
    load_splits: Callable[[], tuple[Dataset, Dataset]]  # the training and validation datasets, read once

    def __init__(self, *, batch_size: int = 128, num_workers: int = 0, image_size: int = 64,
                 on_device: bool = False) -> None:
        super().__init__()
        for flag, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                   ("image_size", image_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SettingError(f"{flag} must be an integer >= {least}, got {value!r}: set `--data.{flag}`.")
        if on_device and num_workers > 0:  # an error, not a silent 0: the user asked for workers
            raise SettingError(f"on_device keeps the training images on the device and gathers each batch there, "
                               f"in the training process, so DataLoader workers have nothing to do, but num_workers is "
                               f"{num_workers}: set `--data.num_workers 0`, or `--data.on_device false`.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.on_device = on_device
        self._device_train_set: tuple[torch.device, Dataset] | None = None  # moved once per device
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._shuffle_seed: int | None = None  # PL_GLOBAL_SEED when the first loader is built
        self._resume: tuple[int, int] | None = None  # (epoch, images seen) from a checkpoint
        self._image_offset: tuple[int | None, int] = (None, 0)  # (epoch, images beyond its batches x this size)
        self._train_sampler: ResumableSampler | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the dataloaders yield."""
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.load_splits()
        if stage != "fit":
            return
        # Refuse a training set that gives some device no whole batch: the run would train on nothing.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_device = len(self.train_set) // world_size  # the sampler's share, with drop_last
        if per_device < self.batch_size:
            devices = f"{world_size} devices ({per_device} images each)" if world_size > 1 else "1 device"
            flags = "(`--trainer.devices`, `--trainer.num_nodes`)"
            fix = (f"Train on at most {len(self.train_set)} devices {flags}, or on more images" if not per_device else
                   f"Set `--data.batch_size` to at most {per_device}, or train on more images"
                   + (f" or fewer devices {flags}" if world_size > 1 else ""))
            raise SettingError(
                f"the training set has {len(self.train_set)} images, fewer than one batch of {self.batch_size} on "
                f"{devices}: incomplete batches are dropped, so nothing would train. {fix}.")

    def train_dataloader(self) -> DataLoader:
        self._check_setup()
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self._shuffle_seed is None:
            self._shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the same on every rank
        sampler = ResumableSampler(self.train_set, world_size, rank, seed=self._shuffle_seed)
        if self._resume is not None:
            sampler.resume_epoch, sampler.resume_skip = self._resume
            self._resume = None
        self._train_sampler = sampler
        # on_device: batches are born on the device, nothing to pin (pinning a GPU tensor fails)
        dataset = self._train_set_on_device() if self.on_device else self.train_set
        return self._loader(dataset, sampler=sampler, drop_last=True, pin_memory=not self.on_device)

    def _train_set_on_device(self) -> Dataset:
        """The training set on the trainer's device, moved there by the first call (the CPU without a trainer)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self._device_train_set is None or self._device_train_set[0] != device:
            self._device_train_set = (device, self.train_set.to(device))
        return self._device_train_set[1]

    def val_dataloader(self) -> DataLoader:
        self._check_setup()
        return self._loader(self.val_set, sampler=None, drop_last=False)

    def _check_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError("the datamodule has no data yet: call `prepare_data()` and `setup()` first "
                               "(the Trainer does).")

    def _loader(self, dataset: Dataset | None, sampler: Any, drop_last: bool, pin_memory: bool = True) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=batch_collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin_memory and torch.cuda.is_available(),
            drop_last=drop_last,  # a last batch of 1 would break batch norm
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"shuffle_seed": self._shuffle_seed}
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            # Written between batches. The epoch is the sampler's: Lightning's counter has already moved on at
            # the end of an epoch or of training. A resumed fit that drew no batch keeps the restored epoch.
            sampler = self._train_sampler
            if sampler is None:
                epoch = self.trainer.current_epoch
            else:
                epoch = sampler.epoch if sampler.resume_epoch is None else sampler.resume_epoch
            # Images, not batches: a run continued with another batch size or number of ranks skips what was
            # trained. A resumed epoch counts its batches on from the checkpoint's, in this run's geometry.
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            offset = self._image_offset[1] if self._image_offset[0] == epoch else 0
            images = batches * self.batch_size * self.trainer.world_size + offset
            state.update(epoch=epoch, batches_seen=batches, images_seen=images)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_seed = state_dict.get("shuffle_seed", self._shuffle_seed)
        if "epoch" in state_dict:
            epoch, batches = state_dict["epoch"], state_dict["batches_seen"]
            in_this_geometry = batches * self.batch_size * (self.trainer.world_size if self.trainer else 1)
            images = state_dict.get("images_seen", in_this_geometry)  # older checkpoints: batches only
            self._resume, self._image_offset = (epoch, images), (epoch, images - in_this_geometry)
            # Lightning warns on every mid-epoch resume that the dataloader "is not resumable" (it knows
            # only loaders with their own state_dict); this datamodule restores the position exactly.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch "
                                    "ended", category=PossibleUserWarning)
