"""What every datamodule shares: the one place where images become floats in [-1, 1], batches built
by one gather, the resumable shuffle of the training set, and the option to keep it on the device."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from gan_modules.flags import advice


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] to float32 in [-1, 1], ``x / 127.5 - 1``, bitwise the same on every
    device.

    On a CPU by the division itself; on other devices by looking up the CPU's 256 results: CUDA
    divides by a scalar as a multiplication by its reciprocal, one bit off for some values, which
    would make batches gathered on a GPU (``--data.on_device true``) differ from the default path's.
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


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images (N, C, H, W) to (N, C, size, size), bilinear and antialiased."""
    resized = torch.cat([
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for chunk in images.split(4096)  # bounded float memory
    ])
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def check_int(flag: str, value: Any, least: int) -> None:
    """Raise a ValueError naming ``--data.<flag>`` unless ``value`` is an int >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(advice(f"{flag} must be an integer >= {least}, got {value!r}: set `--data.{flag}`."))


_NOT_RESUMABLE_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


class UInt8ImageDataset(Dataset):
    """Images held as one uint8 tensor (N, C, H, W); items are ``(image in [-1, 1], label)``.

    A DataLoader with ``collate_fn=batch_collate`` fetches a whole batch through :meth:`__getitems__`:
    one gather of the batch's images (B, C, H, W) and one :func:`to_unit_range`, in the sampler's
    order. The conversion is elementwise, so the batch is bitwise the one that ``__getitem__`` per
    image and ``default_collate`` build, without a Python call per image. The tensors may live on any
    device (:meth:`to`); batches then come out on it.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long,
                                                                    device=images.device)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return to_unit_range(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> GatheredBatch:
        index = index_on(self.images.device, indices)
        return GatheredBatch(to_unit_range(self.images[index]), self.labels[index])  # (B, C, H, W), (B,)

    def to(self, device: torch.device) -> UInt8ImageDataset:
        """The same images and labels on ``device`` (the same object's tensors where they are already there)."""
        return UInt8ImageDataset(self.images.to(device), self.labels.to(device))


def index_on(device: torch.device, indices: list[int]) -> Tensor:
    """``indices`` as a long tensor on ``device``, to gather a batch there.

    To a GPU the indices go from pinned memory without blocking: a copy from pageable memory would
    wait for the device to finish its queued work, a stall on every batch.
    """
    index = torch.as_tensor(indices, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class GatheredBatch(Sequence):
    """A batch gathered at once, (B, C, H, W) images and (B,) labels, that still reads as the list of
    its B ``(image, label)`` items: :func:`batch_collate` takes the tensors as they are, and any other
    collate function (a DataLoader a user builds over the dataset, with torch's ``default_collate``)
    sees the items it expects."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.images[index], self.labels[index]


def batch_collate(batch: Any) -> Any:
    """Collates a :class:`GatheredBatch` by taking its tensors (it is one already); anything else by
    torch's ``default_collate``."""
    if isinstance(batch, GatheredBatch):
        return batch.images, batch.labels
    return default_collate(batch)


class ResumableSampler(DistributedSampler):
    """A per-epoch shuffle that is a pure function of ``(seed, epoch)``, split across ranks, and
    that can resume in the middle of an epoch.

    It is torch's ``DistributedSampler`` (so Lightning neither replaces it under DDP nor forgets to
    call ``set_epoch``), given the rank and world size explicitly so it also works without a
    process group. :meth:`resume` makes the next pass over ``epoch`` skip the samples the
    interrupted run had already trained on; later epochs are whole.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self._resume_epoch: int | None = None
        self._resume_skip = 0

    @property
    def pending_resume_epoch(self) -> int | None:
        """The epoch :meth:`resume` was given, until the pass over it has started."""
        return self._resume_epoch

    def resume(self, epoch: int, samples_seen: int) -> None:
        """Skip the first ``samples_seen`` samples of this rank's share of ``epoch``."""
        self._resume_epoch, self._resume_skip = epoch, samples_seen

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume_epoch == self.epoch:
            indices = indices[self._resume_skip:]
        self._resume_epoch = None
        return iter(indices)


class ImageDataModule(LightningDataModule):
    """The loaders every datamodule of this project shares.

    Subclasses implement :meth:`load_splits` (run once, by ``setup``) and define ``image_shape``. Training
    batches come in a shuffle that depends only on ``(PL_GLOBAL_SEED, epoch)`` and are split across
    ranks by a :class:`ResumableSampler`; where an interrupted run stopped inside an epoch is saved
    with the checkpoint, so a resumed run trains on exactly the batches the uninterrupted run would
    have. Validation batches come in file order (Lightning splits them across ranks).

    With ``on_device`` the training split (only it) is moved once, by the first ``train_dataloader``, to
    the trainer's device (``trainer.strategy.root_device``; each rank's own under DDP) and indexed there
    in the training process: no workers, no pinning, no copy per batch, and Lightning's move of the
    batch to the device finds it there. The same sampler picks the indices, so the batches, the shuffle
    and a resume are the ones of the default path. Subclasses whose training set cannot be moved
    refuse the flag in ``__init__``.

    Args:
        batch_size: images per batch (per device under DDP).
        num_workers: dataloader worker processes; must be 0 with ``on_device``.
        on_device: keep the training images on the trainer's device and gather batches there.
    """

    def __init__(self, batch_size: int, num_workers: int, on_device: bool = False) -> None:
        super().__init__()
        for flag, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            check_int(flag, value, least)
        if on_device and num_workers > 0:
            # An error rather than a silent 0: the user asked for workers, and would not see them dropped.
            raise ValueError(advice(f"on_device keeps the training images on the device and gathers each batch there, in "
                             f"the training process, so DataLoader workers have nothing to do, but num_workers is "
                             f"{num_workers}: set `--data.num_workers 0`, or `--data.on_device false`."))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_device = on_device
        self._device_train_set: tuple[torch.device, Dataset] | None = None  # moved once per device
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._shuffle_seed: int | None = None  # PL_GLOBAL_SEED when the first loader is built
        self._resume: dict[str, int] | None = None
        self._train_sampler: ResumableSampler | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def load_splits(self) -> tuple[Dataset, Dataset]:
        """The training and validation datasets, read from disk once."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.load_splits()
        if stage == "fit":
            self._check_a_batch_per_device()

    def _check_a_batch_per_device(self) -> None:
        """Refuse a training set that gives some device no whole batch: with ``drop_last`` the run would
        train on nothing, and exit as if it had finished."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_device = len(ResumableSampler(self.train_set, num_replicas=world_size))  # len // world_size
        if per_device < self.batch_size:
            devices = f"{world_size} devices ({per_device} images each)" if world_size > 1 else "1 device"
            fix = (f"Set `--data.batch_size` to at most {per_device}, or train on more images or fewer devices"
                   if per_device else f"Train on at most {len(self.train_set)} devices, or on more images")
            raise ValueError(
                advice(f"the training set has {len(self.train_set)} images, fewer than one batch of {self.batch_size} on "
                f"{devices}: incomplete batches are dropped, so nothing would train. {fix} (`--trainer.devices`, "
                f"`--trainer.num_nodes`)."))

    def train_dataloader(self) -> DataLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self._shuffle_seed is None:
            self._shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the same on every rank
        sampler = ResumableSampler(self.train_set, world_size, rank, seed=self._shuffle_seed)
        if self._resume is not None:
            sampler.resume(self._resume["epoch"], self._resume["batches_seen"] * self.batch_size)
            self._resume = None
        self._train_sampler = sampler
        if self.on_device:  # batches are born on the device: nothing to pin (pinning a GPU tensor fails)
            return self._loader(self._train_set_on_device(), sampler=sampler, drop_last=True, pin_memory=False)
        return self._loader(self.train_set, sampler=sampler, drop_last=True)

    def _train_set_on_device(self) -> Dataset:
        """The training set on the trainer's device, moved there by the first call (the CPU without a trainer)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self._device_train_set is None or self._device_train_set[0] != device:
            self._device_train_set = (device, self.train_set.to(device))
        return self._device_train_set[1]

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, sampler=None, drop_last=False)

    def _loader(self, dataset: Dataset | None, sampler: Any, drop_last: bool,
                pin_memory: bool | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(dataset),
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            drop_last=drop_last,  # a last batch of 1 would break batch norm
        )

    def collate_fn(self, dataset: Dataset | None) -> Any:
        """How ``dataset``'s items become a batch: whole batches from a :class:`UInt8ImageDataset`,
        else torch's default (``None``)."""
        return batch_collate if isinstance(dataset, UInt8ImageDataset) else None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"shuffle_seed": self._shuffle_seed}
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            # Batches this rank has trained on in the current epoch: the checkpoint is written after a
            # batch's training step, after a validation (inside or at the end of the epoch), at the
            # end of the epoch or of training, always between batches. Their epoch is the sampler's:
            # Lightning's epoch counter has already moved on at the end of an epoch or of training.
            sampler = self._train_sampler
            if sampler is None:
                state["epoch"] = self.trainer.current_epoch
            else:  # a resumed fit that drew no batch (its limit already reached) keeps the restored epoch
                state["epoch"] = sampler.pending_resume_epoch if sampler.pending_resume_epoch is not None else sampler.epoch
            state["batches_seen"] = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_seed = state_dict.get("shuffle_seed", self._shuffle_seed)
        if "epoch" in state_dict:
            self._resume = {"epoch": state_dict["epoch"], "batches_seen": state_dict["batches_seen"]}
            # Lightning warns on every mid-epoch resume that the dataloader "is not resumable" (it knows
            # only loaders with their own state_dict); this datamodule restores the position exactly.
            warnings.filterwarnings("ignore", message=_NOT_RESUMABLE_WARNING, category=PossibleUserWarning)
