"""Callbacks that look at the generator: the fixed-noise sample grid, and FID (in fid.py)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.utils import make_grid

from gan_modules.fid import FIDCallback

__all__ = ["FIDCallback", "SampleGridCallback"]


class SampleGridCallback(Callback):
    """Logs a grid of samples from the same fixed noise at the end of every ``every_n_epochs``-th
    training epoch, so the images of successive epochs are directly comparable.

    The noise is drawn once from ``seed`` and saved in checkpoints, so a resumed run keeps it. The
    grid goes to the logger as the image ``samples/fixed_noise`` (TensorBoard), with the critic step
    as its step; other loggers are skipped.

    Args:
        num_samples: images in the grid.
        nrow: images per grid row.
        every_n_epochs: log every this many epochs.
        seed: seed of the fixed noise.
    """

    def __init__(self, num_samples: int = 64, nrow: int = 8, every_n_epochs: int = 1, seed: int = 0) -> None:
        if num_samples < 1 or nrow < 1 or every_n_epochs < 1:
            raise ValueError("num_samples, nrow and every_n_epochs of SampleGridCallback must be >= 1.")
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

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            return
        images = pl_module.sample(self.num_samples, noise=self.noise)
        grid = make_grid(images, nrow=self.nrow, normalize=True, value_range=(-1, 1))
        experiment.add_image("samples/fixed_noise", grid, global_step=pl_module.critic_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.noise = state_dict["noise"]
