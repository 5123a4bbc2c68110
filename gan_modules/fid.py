"""Fréchet Inception Distance (Heusel et al., 2017, arXiv:1706.08500) measured during validation.

The maths is torchmetrics' ``FrechetInceptionDistance``; this file decides which images it sees:
the real statistics once per dataset (cached on disk), and a fixed set of generated samples that
does not depend on the number of devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset
from torchmetrics.image.fid import FrechetInceptionDistance
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from tqdm import tqdm

from gan_modules.flags import advice

INCEPTION_FEATURES = (64, 192, 768, 2048)
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]
# Images per side (generated, and real when the split is larger) where `num_samples`/`num_real` are
# left unset: the standard protocol on an accelerator; on a CPU, where Inception takes about 0.15 s
# an image on two cores, a size that keeps the first run of a preset under half an hour
# (docs/evaluation.md): comparable between runs of the same size, not with published scores.
STANDARD_IMAGES, CPU_IMAGES = 10_000, 2_500


class InceptionWeightsError(RuntimeError):
    """The Inception-v3 weights can be neither downloaded nor read from the given file."""


def metric_input(images: Tensor, as_float: bool) -> Tensor:
    """[-1, 1] images (N, C, H, W) -> (N, 3, H, W) as the FID metric takes them, quantised as saved to
    PNG: uint8 for Inception, floats in [0, 1] (``as_float``) for a custom feature extractor."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"FID needs 1- or 3-channel images, got {images.shape[1]} channels.")
    as_uint8 = ((images.float() + 1) * 127.5).round_().clamp_(0, 255)  # as saved to PNG
    as_uint8 = as_uint8.expand(-1, 3, -1, -1)  # grayscale -> RGB; RGB unchanged
    return as_uint8 / 255 if as_float else as_uint8.to(torch.uint8)


def build_fid_metric(feature: int | nn.Module = 2048, weights_path: str | None = None) -> FrechetInceptionDistance:
    """A torchmetrics FID that keeps its real statistics across ``reset()``.

    Inception (``feature`` an int) takes uint8 images (N, 3, H, W) and resizes them to 299 px the way
    the original TensorFlow code does (``antialias=False``), so scores compare with published ones. A
    custom ``nn.Module`` takes float images (N, 3, H, W) in [0, 1] and returns (N, num_features).

    Raises:
        InceptionWeightsError: the Inception weights can be neither downloaded nor read from
            ``weights_path``.
    """
    if isinstance(feature, nn.Module):
        return FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=True)
    if weights_path is not None:
        _check_weights_file(weights_path)
    try:
        return FrechetInceptionDistance(
            feature=feature, reset_real_features=False, normalize=False,
            feature_extractor_weights_path=weights_path, antialias=False,
        )
    except OSError as error:  # URLError, timeouts, DNS failures: no network
        if weights_path is not None:
            raise
        reason = getattr(error, "reason", None) or error
        raise InceptionWeightsError(
            advice(f"FID needs the Inception-v3 weights, and they could not be downloaded ({reason}). Either turn FID "
            f"off with `--fid.enabled false`, or give a local copy of {WEIGHTS_FILE} "
            f"({URL_INCEPTION_V3}) with `--fid.weights_path PATH` or put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}.")) from None
    except RuntimeError as error:  # load_state_dict: keys or shapes that are not torch-fidelity's
        raise InceptionWeightsError(
            advice(f"{weights_path} does not hold torch-fidelity's Inception-v3 weights ({' '.join(str(error).split())[:200]}): "
            f"`--fid.weights_path` needs the file {WEIGHTS_FILE}.")) from None


def _check_weights_file(path: str) -> None:
    # torch-fidelity loads the file with weights_only=False (arbitrary pickles); refuse anything
    # that is not a plain state dict before it gets there.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InceptionWeightsError(
            advice(f"No Inception weights file at {path}: set `--fid.weights_path` to the downloaded "
            f"{WEIGHTS_FILE} ({URL_INCEPTION_V3}), or turn FID off with `--fid.enabled false`.")) from None
    except Exception as error:  # unpickling errors of many types
        raise InceptionWeightsError(
            advice(f"{path} is not a PyTorch state dict of tensors ({error}): `--fid.weights_path` needs "
            f"torch-fidelity's {WEIGHTS_FILE}.")) from None


class FIDCallback(Callback):
    """Logs ``val/fid`` after every ``every_n_epochs``-th validation and at the end of every fit, on
    CPU, one GPU or under DDP.

    When FID is computed: at the validation of every ``every_n_epochs``-th epoch, and once for the
    state training ends in, whatever ends it: the last of ``max_epochs`` (also when it is not a
    multiple of ``every_n_epochs``), ``max_steps``, ``max_time``, the model's ``max_generator_steps``
    or any other ``trainer.should_stop``. A validation that runs at that final state computes it
    there and logs it like any other; where none does (a stop inside an epoch without a validation,
    ``check_val_every_n_epoch``, ``limit_val_batches=0``), ``on_train_end`` computes it, sets
    ``trainer.callback_metrics["val/fid"]`` and writes ``val/fid`` to the loggers at the step of the
    last training batch. A state already scored is never scored again, and every rank takes the same
    decision (rank 0's), as the computation is collective. ``trainer.validate`` always computes it.

    Real statistics: the whole dataset of the first validation dataloader, read by this callback
    itself, rank ``r`` of ``W`` taking items ``r, r+W, ...``. Lightning's own validation batches are
    not used: under DDP its ``DistributedSampler`` repeats items to even out the ranks, and the
    sanity check and ``limit_val_batches`` cut them short. The statistics are computed at the first
    FID evaluation, kept for the rest of the run and written to ``cache_dir``, keyed by the datamodule
    class and ``data_dir``, the dataset's class, length, image shape and first items, and the feature
    extractor's class, layer and weights; a later run with the same key reads them back.

    Generated samples: ``num_samples`` images from latent vectors drawn in chunks of ``batch_size``
    from one CPU generator seeded with ``seed``, the same on every rank and every evaluation; rank
    ``r`` of ``W`` runs the generator on chunks ``r, r+W, ...``. The set of samples is therefore
    fixed and independent of the number of devices. Before sampling, the buffers of the network the
    module samples from (its ``sampling_generator``: the moving average with ``ema_decay``, else the
    generator), batch-norm running statistics that each rank updates from its own batches, are
    broadcast from rank 0, so every rank samples from the generator that rank 0 checkpoints.

    Images go from [-1, 1] to uint8 like a saved PNG, grayscale is repeated to 3 channels.

    Under DDP, torchmetrics sums every state over the ranks in ``compute()``. After the real
    statistics are summed once, rank 0 holds the dataset totals and every other rank holds zeros,
    whether they were computed or read from the cache (only rank 0 reads and writes it), so the sums
    that ``compute()`` sees are the totals on every rank and nothing is counted twice. Every rank
    updates and computes; the metric is an attribute of this callback, on the strategy's device, and
    never part of the model's checkpoint.

    Args:
        feature: Inception-v3 layer, 64, 192, 768 or 2048 (pool3, the standard FID), or any
            ``nn.Module`` with an int ``num_features`` that maps float images (N, 3, H, W) in
            [0, 1] to features (N, num_features).
        weights_path: local file of torch-fidelity's Inception-v3 weights
            (``weights-inception-2015-12-05-6726825d.pth``) for machines without network; ``None``
            downloads them to torch.hub's cache.
        num_samples: generated images per evaluation; 10,000 or more for a stable score (papers
            report 50,000). Fewer than the feature dimension gives a warning. ``None``: 10,000 on an
            accelerator, 2,500 on a CPU (said on the console and in the logged hyperparameters).
        num_real: real validation images for the statistics: the first ``num_real`` of the split
            taken at an even stride; ``None``: the whole split on an accelerator, at most 2,500 on a
            CPU.
        every_n_epochs: compute FID at the validation of every this many training epochs, and
            always for the state training ends in (``trainer.validate`` always computes it).
        batch_size: generated images per generator forward and per chunk of latent vectors.
        seed: seed of the latent vectors.
        cache_dir: folder of the cached real statistics; ``None`` turns the disk cache off.
        enabled: ``False`` (``--fid.enabled false``) turns FID off: the callback then does nothing
            at all (no weights loaded, no pass over the real images, no ``val/fid``), so a machine
            without the Inception weights trains without them.
    """

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        weights_path: str | None = None,
        num_samples: int | None = None,
        num_real: int | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 250,
        seed: int = 0,
        cache_dir: str | None = ".fid_cache",
        enabled: bool = True,
    ) -> None:
        for name, value, least in (("num_samples", num_samples, 2), ("num_real", num_real, 2),
                                   ("every_n_epochs", every_n_epochs, 1), ("batch_size", batch_size, 1)):
            if value is not None and value < least:  # FID needs two samples for a covariance
                raise ValueError(advice(f"{name} must be at least {least}, got {value}: set `--fid.{name}`."))
        self.num_features = _num_features(feature)
        self.feature = feature
        self.weights_path = weights_path
        self.num_samples = num_samples
        self.num_real = num_real
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.metric: FrechetInceptionDistance | None = None
        self.real_images_processed = 0  # real images this process fed the metric (a cache hit adds none)
        self._extractor_id: str | None = None
        self._real_key: str | None = None  # key of the real statistics the metric holds now
        self._scored_step: int | None = None  # trainer.global_step of this fit's last FID
        if enabled and num_samples is not None:  # no score, nothing to be unreliable
            _warn_if_few("num_samples", num_samples, self.num_features)

    # --- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Switched off, no metric is ever built, and every hook below returns for want of one.
        if not self.enabled or stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING):
            return
        on_cpu = trainer.strategy.root_device.type == "cpu"
        cpu_sized = on_cpu and self.num_samples is None  # both sizes left to the device
        if self.num_samples is None:
            self.num_samples = CPU_IMAGES if on_cpu else STANDARD_IMAGES
            _warn_if_few("num_samples", self.num_samples, self.num_features)
        if cpu_sized and self.num_real is None:
            self.num_real = CPU_IMAGES
        chunks = -(-self.num_samples // self.batch_size)
        if chunks < trainer.world_size:  # a rank without samples could not compute (and would hang the rest)
            raise ValueError(
                advice(f"FID splits {self.num_samples} samples into {chunks} chunks of {self.batch_size}, fewer than the "
                f"{trainer.world_size} processes: lower `--fid.batch_size` or raise `--fid.num_samples`.")
            )
        self.build_metric()
        self.metric.to(trainer.strategy.root_device)
        if stage == TrainerFn.FITTING:
            self._scored_step = None
        real = "all the" if self.num_real is None else f"at most {self.num_real:,}"
        rank_zero_info(f"FID: {self.num_samples:,} generated images against {real} real validation images, "
                       f"every {self.every_n_epochs} epoch(s) and at the end"
                       + (" (the CPU-sized default: `--fid.num_samples 10000` for the standard protocol)"
                          if cpu_sized else ""))

    def build_metric(self) -> None:
        """Build the metric, loading the feature extractor's weights, unless built already; the CLI calls
        this before any work, so that missing Inception weights stop a run at once.

        Raises:
            InceptionWeightsError: see :func:`build_fid_metric`.
        """
        if self.metric is None:
            self.metric = build_fid_metric(self.feature, self.weights_path)
            self._extractor_id = _module_fingerprint(self.metric.inception, self.feature)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or _training_ends_here(trainer)
            if not _agreed(trainer, due):
                return
            self._scored_step = trainer.global_step
        fid = self.compute(trainer, pl_module)
        # Every rank holds the same value; sync_dist only averages identical numbers.
        pl_module.log("val/fid", fid, on_epoch=True, sync_dist=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed fit that trains nothing (its limit already reached) ends in the state its
        # checkpoint holds, which the run that wrote it scored at its end: not again here.
        if trainer.ckpt_path:
            self._scored_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The run ended in a state no validation scored: score it here (self.log is closed by now).
        if self.metric is None or not _agreed(trainer, self._scored_step != trainer.global_step):
            return
        if _val_loaders(trainer) is None:  # the same on every rank: no rank computes
            rank_zero_warn("FID was not computed at the end of training: there is no validation data to take the real "
                           "images from. Give the datamodule (or model) a `val_dataloader`.", category=UserWarning)
            return
        fid = self.compute(trainer, pl_module)
        self._scored_step = trainer.global_step
        trainer.callback_metrics["val/fid"] = fid  # where RunMonitor's hp/final_fid reads it
        if trainer.is_global_zero:
            # Lightning logs a batch's metrics, and the epoch's, at the step of the batch that ended it:
            # its count of batches, which for these modules is the critic step.
            step = max(pl_module.critic_steps - 1, 0)
            for logger in trainer.loggers:
                logger.log_metrics({"val/fid": float(fid)}, step=step)

    # --- FID -----------------------------------------------------------------------------------

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """FID between the validation set and ``num_samples`` generated images (collective under DDP)."""
        assert self.metric is not None, "setup() builds the metric"
        with torch.inference_mode():
            self._ensure_real_statistics(trainer)
            _sync_generator_buffers(pl_module, trainer)
            try:
                share = len(range(trainer.global_rank, -(-self.num_samples // self.batch_size), trainer.world_size))
                with _progress(trainer, "FID: generated images", min(share * self.batch_size, self.num_samples)) as bar:
                    for images in self._generated_images(trainer, pl_module):
                        self.metric.update(self._metric_input(images), real=False)
                        bar.update(images.shape[0])
                return self.metric.compute()
            finally:
                self.metric.reset()  # drops the generated statistics only (reset_real_features=False)

    def _generated_images(self, trainer: Trainer, pl_module: Any) -> Iterator[Tensor]:
        noise_source = torch.Generator().manual_seed(self.seed)
        for chunk, start in enumerate(range(0, self.num_samples, self.batch_size)):
            size = min(self.batch_size, self.num_samples - start)
            noise = pl_module.noise(size, noise_source)  # drawn on every rank: chunk k is always the same
            if chunk % trainer.world_size == trainer.global_rank:
                yield pl_module.sample(size, noise=noise)

    def _metric_input(self, images: Tensor) -> Tensor:
        """[-1, 1] images (N, C, H, W) -> (N, 3, H, W): uint8 for Inception, [0, 1] floats otherwise."""
        return metric_input(images, as_float=isinstance(self.feature, nn.Module))

    # --- real statistics -----------------------------------------------------------------------

    def _ensure_real_statistics(self, trainer: Trainer) -> None:
        loader = _first_val_loader(trainer)
        # Rank 0's key decides for all ranks, so they all take the same branch below (collectives).
        key = self._real_key_of(trainer, loader) if trainer.is_global_zero else None
        key = trainer.strategy.broadcast(key, src=0)
        if key == self._real_key:
            return
        loaded = self._load_cache(key) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(loaded, src=0):
            if not trainer.is_global_zero:
                self._set_real(None)
        else:
            self._set_real(None)
            self._update_real(loader, trainer)
            totals = [trainer.strategy.reduce(getattr(self.metric, name).clone(), reduce_op="sum")
                      for name in REAL_STATES]
            self._set_real(totals if trainer.is_global_zero else None)
            if trainer.is_global_zero:
                self._save_cache(key)
        self._real_key = key
        if trainer.is_global_zero:
            _warn_if_few("the number of real validation images", int(self.metric.real_features_num_samples),
                         self.num_features)

    def _update_real(self, loader: DataLoader, trainer: Trainer) -> None:
        indices = _real_indices(loader, self.num_real)
        shard = _shard(loader, indices, trainer.global_rank, trainer.world_size, self.batch_size)
        total = len(indices[trainer.global_rank::trainer.world_size]) if indices is not None else None
        with _progress(trainer, "FID: real statistics (once, then cached)", total) as bar:
            for batch in shard:
                images = _images(batch).to(self.metric.device)
                self.metric.update(self._metric_input(images), real=True)
                self.real_images_processed += images.shape[0]
                bar.update(images.shape[0])

    def _set_real(self, values: list[Tensor] | None) -> None:
        """Set the real states to ``values`` (in ``REAL_STATES`` order), or to zeros."""
        for i, name in enumerate(REAL_STATES):
            current = getattr(self.metric, name)
            value = torch.zeros_like(current) if values is None else values[i]
            setattr(self.metric, name, value.to(device=current.device, dtype=current.dtype))

    def _real_key_of(self, trainer: Trainer, loader: DataLoader) -> str:
        dataset = loader.dataset
        datamodule = trainer.datamodule
        data_dir = getattr(datamodule, "data_dir", None)
        first = _first_images(loader)
        key = {
            "datamodule": _qualname(datamodule) if datamodule is not None else "none",
            "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else "none",
            "split": "val",
            "dataset": _qualname(dataset),
            "num_real": len(dataset) if hasattr(dataset, "__len__") else "unknown",
            "real_subset": self.num_real,
            "image_shape": list(first.shape[1:]),
            "first_images": _digest([first]),
            "feature_extractor": self._extractor_id,
        }
        return json.dumps(key, sort_keys=True)

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return Path(self.cache_dir) / f"fid_real_{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"

    def _load_cache(self, key: str) -> bool:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return False
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached["key"] != key:
                return False
            self._set_real([cached[name] for name in REAL_STATES])
        except Exception as error:  # a truncated or foreign file: recompute and overwrite it
            rank_zero_warn(f"Ignoring the unreadable FID cache {path} ({error}); recomputing it.",
                           category=UserWarning)
            return False
        return True

    def _save_cache(self, key: str) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        state = {name: getattr(self.metric, name).cpu() for name in REAL_STATES}
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, **state}, partial)
            os.replace(partial, path)  # atomic: a crash never leaves a half-written cache
        except OSError as error:  # the cache only saves time: training goes on without it
            rank_zero_warn(f"Could not write the FID cache {path} ({error}); set `--fid.cache_dir` to a "
                           f"writable folder to reuse the real statistics in later runs.", category=UserWarning)


# --- helpers -----------------------------------------------------------------------------------


def _num_features(feature: int | nn.Module) -> int:
    if isinstance(feature, nn.Module):
        num_features = getattr(feature, "num_features", None)
        if not isinstance(num_features, int):
            raise ValueError(f"A custom FID feature extractor needs an int attribute `num_features` "
                             f"(its output width); {_qualname(feature)} has {num_features!r}.")
        return num_features
    if feature not in INCEPTION_FEATURES:
        raise ValueError(advice(f"feature must be one of the Inception layers {INCEPTION_FEATURES} or an nn.Module, "
                         f"got {feature!r}: set `--fid.feature`."))
    return feature


def _warn_if_few(what: str, count: int, num_features: int) -> None:
    if count < num_features:
        rank_zero_warn(
            f"FID from {count} images ({what}) with {num_features}-dimensional features is unreliable: the "
            f"covariance estimate is rank-deficient and the score biased. Use at least {num_features} "
            f"(10,000 or more for a stable score), or a smaller `--fid.feature`.",
            category=UserWarning,
        )


def _training_ends_here(trainer: Trainer) -> bool:
    """Whether the fit loop stops after the current batch, so a validation now scores the final state."""
    if trainer.should_stop:  # max_generator_steps, max_time (Timer broadcasts it), early stopping
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs
    # A validation inside the last epoch (val_check_interval) is not at its end.
    return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def _agreed(trainer: Trainer, decision: bool) -> bool:
    """Rank 0's ``decision`` on every rank: FID is collective, so all ranks compute or none does."""
    return bool(trainer.strategy.broadcast(decision, src=0))


def _val_loaders(trainer: Trainer) -> Any | None:
    """The run's validation dataloaders; where validation has not run in this fit (``limit_val_batches=0``,
    ``check_val_every_n_epoch``, a stop before the first), the ones the datamodule or the model gives."""
    if trainer.val_dataloaders is not None:
        return trainer.val_dataloaders
    for source in (trainer.datamodule, trainer.lightning_module):
        if source is not None and is_overridden("val_dataloader", source):
            return source.val_dataloader()
    return None


def _first_val_loader(trainer: Trainer) -> DataLoader:
    loaders = _val_loaders(trainer)
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if not isinstance(loader, DataLoader):
        raise TypeError(f"FIDCallback reads the real images from the first validation DataLoader; got {loader!r}.")
    return loader


def _real_indices(loader: DataLoader, num_real: int | None) -> list[int] | None:
    """The dataset's items the real statistics take: all of them, or ``num_real`` at an even stride
    (``None`` for an iterable dataset, which cannot be indexed)."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        return None
    count = len(dataset)
    if num_real is None or num_real >= count:
        return list(range(count))
    return [i * count // num_real for i in range(num_real)]


def _shard(loader: DataLoader, indices: list[int] | None, rank: int, world_size: int,
           batch_size: int) -> Iterable[Any]:
    """The batches of items ``rank, rank + world_size, ...`` of ``indices`` of the loader's dataset,
    without repeats (of every batch of an iterable dataset's loader, ``indices`` being ``None``)."""
    dataset = loader.dataset
    if indices is None:  # cannot index: stride over the loader's batches
        return (batch for i, batch in enumerate(loader) if i % world_size == rank)
    return DataLoader(Subset(dataset, indices[rank::world_size]),
                      batch_size=loader.batch_size or batch_size, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn)


def _progress(trainer: Trainer, description: str, total: int | None) -> tqdm:
    """A console bar of an evaluation's images, shown on rank 0 while the trainer shows progress."""
    shown = trainer.is_global_zero and trainer.progress_bar_callback is not None
    return tqdm(total=total, desc=description, unit="img", file=sys.stdout, dynamic_ncols=True, disable=not shown)


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _first_images(loader: DataLoader, count: int = 8) -> Tensor:
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        return _images(next(iter(loader)))[:count]
    return torch.stack([_images(dataset[i]) for i in range(min(count, len(dataset)))])


def _sync_generator_buffers(pl_module: Any, trainer: Trainer) -> None:
    # Batch-norm running statistics are updated per rank by the last training step (the moving
    # average's too, from each rank's own statistics) and only re-broadcast by DDP at its next
    # forward: sample from rank 0's network (the one checkpointed).
    generator = _sampling_generator(pl_module)
    if generator is not None and trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        for buffer in generator.buffers():
            dist.broadcast(buffer, src=0)


def _sampling_generator(pl_module: Any) -> nn.Module | None:
    """The network ``pl_module.sample`` runs (GANModule.sampling_generator: the moving average with
    ``ema_decay``), else its ``generator``."""
    generator = getattr(pl_module, "sampling_generator", None)
    return generator if generator is not None else getattr(pl_module, "generator", None)


def _module_fingerprint(module: nn.Module, feature: int | nn.Module) -> str:
    layer = feature if isinstance(feature, int) else getattr(module, "num_features", None)
    return f"{_qualname(module)}:{layer}:{_digest(module.state_dict().values())}"


def _digest(tensors: Iterable[Tensor]) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(str(tensor.dtype).encode())
        sha.update(tensor.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:20]


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
