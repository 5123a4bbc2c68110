"""Callbacks that watch a run (image grids, speed, final hyperparameters, and FID in fid.py), logging to
TensorBoard from rank 0 at epoch boundaries, never per step; and the progress bar."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchvision.utils import make_grid

from gan_modules.fid import FIDCallback
from gan_modules.flags import SettingError, init_arguments

__all__ = ["FIDCallback", "OneDrawProgressBar", "RunMonitor", "SampleGridCallback", "image_grid"]

def _tensorboard(trainer: Trainer) -> Any | None:
    """The logger's SummaryWriter on rank 0, or ``None`` (other ranks, other loggers)."""
    experiment = getattr(trainer.logger, "experiment", None) if trainer.is_global_zero else None
    return experiment if hasattr(experiment, "add_image") else None


def image_grid(images: Tensor, nrow: int, min_width: int = 480) -> Tensor:
    """A grid of [-1, 1] images (N, C, H, W) as floats in [0, 1], (3, H', W'), separated by white lines
    and scaled up by whole pixels to at least about ``min_width`` pixels wide."""
    images = images.float().cpu()
    scale = max(1, -(-min_width // (min(nrow, images.shape[0]) * images.shape[-1])))
    if scale > 1:  # nearest: every pixel stays a square of one value
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2 * scale, pad_value=1.0)


class SampleGridCallback(Callback):
    """Image grids in TensorBoard, with the critic step as their step: ``samples/fixed_noise`` (the same
    noise at the end of every ``every_n_epochs``-th epoch), ``samples/interpolation`` (``nrow`` rows, each
    a linear walk in latent space between two fixed vectors) and ``data/real`` (validation images, else
    training images, once). The noise is drawn once from ``seed`` and saved in checkpoints.

    Args:
        num_samples: images in the fixed-noise and real grids.
        nrow: images per grid row, and rows and steps of the interpolation grid.
        every_n_epochs: log the sample grids every this many epochs.
        seed: seed of the fixed noise and of the interpolation's end points.
    """

    def __init__(self, num_samples: int = 64, nrow: int = 8, every_n_epochs: int = 1, seed: int = 0) -> None:
        if num_samples < 1 or nrow < 2 or every_n_epochs < 1:
            raise SettingError("SampleGridCallback needs num_samples >= 1, nrow >= 2 and every_n_epochs >= 1: "
                               "set `--sample_grid.*`.")
        self.num_samples = num_samples
        self.nrow = nrow
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.noise: torch.Tensor | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.noise is None:
            self.noise = self.setup_noise(pl_module)

    def setup_noise(self, pl_module: LightningModule) -> torch.Tensor:
        """The fixed noise drawn from ``seed``, (num_samples, latent_dim) on the CPU."""
        return pl_module.noise(self.num_samples, torch.Generator().manual_seed(self.seed)).cpu()

    def interpolation_noise(self, pl_module: LightningModule) -> Tensor:
        """(nrow * nrow, latent_dim): row i goes from z_a[i] to z_b[i] in nrow equal steps."""
        ends = pl_module.noise(2 * self.nrow, torch.Generator().manual_seed(self.seed + 1)).cpu()
        start, end = ends[: self.nrow, None], ends[self.nrow :, None]  # (nrow, 1, latent_dim)
        t = torch.linspace(0, 1, self.nrow)[None, :, None]  # (1, nrow, 1)
        return (start + t * (end - start)).flatten(0, 1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        experiment = _tensorboard(trainer)
        loaders = trainer.val_dataloaders or trainer.train_dataloader
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if experiment is None or dataset is None or trainer.global_step > 0:  # once per run, not on resume
            return
        # Indexing: no sampler state. An unreadable image (None, with `--data.cache false`) is left out.
        items = [item for i in range(min(self.num_samples, len(dataset))) if (item := dataset[i]) is not None]
        if not items:
            return
        real = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
        experiment.add_image("data/real", image_grid(real, self.nrow), global_step=0)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        experiment = _tensorboard(trainer)
        if experiment is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        step = pl_module.critic_steps
        experiment.add_image("samples/fixed_noise", image_grid(pl_module.sample(self.num_samples, noise=self.noise),
                                                          self.nrow), global_step=step)
        walk = pl_module.sample(self.nrow * self.nrow, noise=self.interpolation_noise(pl_module))
        experiment.add_image("samples/interpolation", image_grid(walk, self.nrow), global_step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.noise = state_dict["noise"]


class RunMonitor(Callback):
    """Each network's parameter count at the start; at every epoch's end ``train/seconds_per_epoch``
    (validation and FID excluded) and ``train/images_per_second`` (over all devices); at the fit's end
    (after FIDCallback's ``on_train_end``) :func:`run_summary` with the final metrics (``hp/final_fid``,
    ...) in TensorBoard's HPARAMS tab. A fit failing before its first batch leaves no run folder."""

    def __init__(self) -> None:
        self._epoch_start: tuple[float, int] | None = None
        self._validation_seconds = 0.0
        self._validation_started: float | None = None
        self._created_at = time.time()  # before the trainer exists, so before any run folder of this fit
        self._steps_at_start: int | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = {name: sum(p.numel() for p in getattr(pl_module, name).parameters())
                  for name in ("generator", "discriminator") if isinstance(getattr(pl_module, name, None), nn.Module)}
        rank_zero_info(f"{type(pl_module).__name__}: " + ", ".join(
            f"{'critic' if name == 'discriminator' else name} {count / 1e6:.2f} M parameters" for name, count in counts.items()))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._steps_at_start = getattr(pl_module, "critic_steps", trainer.global_step)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = (time.perf_counter(), pl_module.critic_steps)
        self._validation_seconds = 0.0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_started is not None:
            self._validation_seconds += time.perf_counter() - self._validation_started
            self._validation_started = None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_start is None:
            return
        started, steps = self._epoch_start
        seconds = time.perf_counter() - started - self._validation_seconds
        batch_size = getattr(trainer.train_dataloader, "batch_size", None) or 0
        images = (pl_module.critic_steps - steps) * batch_size * trainer.world_size
        pl_module.log_dict({"train/seconds_per_epoch": seconds, "train/images_per_second": images / max(seconds, 1e-9)},
                           on_epoch=True, rank_zero_only=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.logger is None or not trainer.is_global_zero:
            return
        # hp/final_fid, hp/final_critic_loss (train/), hp/final_val_wasserstein (val/), ...
        finals = {"hp/final_" + key.removeprefix("train/").removeprefix("val/" if key == "val/fid" else "").replace("/", "_"):
                  float(value) for key, value in trainer.callback_metrics.items()
                  if key.split("/")[0] in ("train", "val") and key.count("/") == 1 and value.numel() == 1
                  and not key.endswith(("_lr", "_norm", "_score"))}
        summary = run_summary(trainer, pl_module)
        trainer.logger.log_hyperparams(summary, finals)
        if isinstance(trainer.logger, TensorBoardLogger):  # its hparams.yaml was written at teardown, empty
            save_hparams_to_yaml(Path(trainer.logger.log_dir) / "hparams.yaml", {**summary, **finals})

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # The logger's own folder: `trainer.log_dir` is a collective, and only rank 0 gets here under DDP.
        if trainer.logger is None or not trainer.is_global_zero or trainer.logger.log_dir is None:
            return
        folder = Path(trainer.logger.log_dir)
        trained = self._steps_at_start is not None and getattr(pl_module, "critic_steps", 0) > self._steps_at_start
        # Only a folder this fit made: every file in it newer than this callback, none a checkpoint.
        files = [path for path in folder.rglob("*") if path.is_file()]
        if not trained and all(path.suffix != ".ckpt" and path.stat().st_mtime >= self._created_at for path in files):
            shutil.rmtree(folder, ignore_errors=True)


def run_summary(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """What runs are compared by, flat and plain: the model's class and hyperparameters, the
    datamodule's, the trainer's length, precision and devices, and the FID protocol."""
    def plain(value: Any) -> Any:
        return value if isinstance(value, (int, float, str, bool)) or value is None else str(
            list(value) if isinstance(value, tuple) else value)

    summary: dict[str, Any] = {"model": type(pl_module).__name__}
    summary.update({f"model.{k}": plain(v) for k, v in pl_module.hparams.items() if not k.startswith("_")})
    datamodule = trainer.datamodule
    if datamodule is not None:  # the __init__ arguments of the datamodule and its bases (shared ones pass by **kwargs)
        summary["data"] = type(datamodule).__name__
        summary.update({f"data.{name}": plain(getattr(datamodule, name)) for name in init_arguments(type(datamodule))
                        if hasattr(datamodule, name)})
    summary.update({"trainer.max_epochs": trainer.max_epochs, "trainer.max_steps": trainer.max_steps,
                    "trainer.precision": str(trainer.precision), "trainer.devices": trainer.num_devices,
                    "trainer.num_nodes": trainer.num_nodes, "trainer.accelerator": type(trainer.accelerator).__name__,
                    "trainer.world_size": trainer.world_size})
    for callback in trainer.callbacks:
        if isinstance(callback, FIDCallback):
            summary.update({"fid.num_samples": callback.num_samples, "fid.num_real": plain(callback.num_real),
                            "fid.feature": plain(callback.feature), "fid.every_n_epochs": callback.every_n_epochs})
    return summary


class OneDrawProgressBar(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar`` (same arguments) showing the latest logged losses (``critic_loss``,
    ``generator_loss``, and ``wasserstein`` where the model has one), with a rate of training batches that
    leaves out validation and FID. It counts the epoch's batches (Lightning's counts optimiser steps left under
    ``max_steps``), ending at the batch the run stopped after. ``train.py`` makes it the default bar, with
    ``refresh_rate`` set to ``log_every_n_steps`` (when the losses shown change)."""

    SHOWN = ("critic_loss", "generator_loss", "wasserstein")
    _validation_started_at: float | None = None

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        # The modules write their logs straight to the loggers and callback_metrics (GANModule._log_terms).
        shown = {name: f"{float(trainer.callback_metrics[f'train/{name}']):.4g}" for name in self.SHOWN
                 if f"train/{name}" in trainer.callback_metrics}
        return {**shown, **super().get_metrics(trainer, pl_module)}

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.num_training_batches  # Lightning's min with max_steps counts a GAN's optimiser steps

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validation_started_at = time.time()  # tqdm's clock

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_started_at is not None and self.is_enabled:
            # The epoch's rate counts training batches over training time: validation and FID paused it.
            self.train_progress_bar.start_t += time.time() - self._validation_started_at
            self._validation_started_at = None
        super().on_validation_end(trainer, pl_module)  # redraws the training bar

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled:  # a stop between redraws would leave the last drawn count on the console
            self.train_progress_bar.n = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        super().on_train_epoch_end(trainer, pl_module)  # redraws it with the latest losses
