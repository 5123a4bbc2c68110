"""Helpers that the DDP and failure tests load into train.py subprocesses by class path."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from gan_modules import DCGAN


class SaveRankState(Callback):
    """At the end of training, each rank writes its parameters, buffers and first noise seed."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save({
            "parameters": {k: v.detach().cpu() for k, v in pl_module.named_parameters()},
            "optimizer_states": [optimizer.state_dict()["state"] for optimizer in trainer.optimizers],
            "generator_steps": pl_module.generator_steps,
            "global_step": trainer.global_step,
            "buffers": {k: v.detach().cpu() for k, v in pl_module.named_buffers()},
            "train_rng_seed": pl_module.train_rng.initial_seed(),
            "world_size": trainer.world_size,
            "critic_steps": pl_module.critic_steps,
            "batch_norm_types": sorted({type(m).__name__ for m in pl_module.modules() if "BatchNorm" in type(m).__name__}),
        }, self.dirpath / f"rank{trainer.global_rank}.pt")


class NaNOnLastRank(DCGAN):
    """A DCGAN whose critic loss turns NaN at critic step 3 on the last rank only."""

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        terms = super().critic_loss(real, fake)
        if self.critic_steps + 1 == 3 and self.global_rank == self.trainer.world_size - 1:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


class CrashAt(Callback):
    """Raises before training batch ``batch_idx`` of ``epoch`` on every rank, like a killed run."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            raise RuntimeError(f"crash before epoch {self.epoch} batch {batch_idx}")


class SignalAt(Callback):
    """Sends its own process ``signum`` (SIGTERM by default) during training batch ``batch_idx`` of ``epoch``, on
    every rank as a scheduler (SLURM, torchrun's agent, a preemptible machine's shutdown) signals every process
    of a job, or on rank ``rank`` only."""

    def __init__(self, epoch: int, batch_idx: int, rank: int | None = None, signum: int = int(signal.SIGTERM)) -> None:
        self.epoch, self.batch_idx, self.rank, self.signum = epoch, batch_idx, rank, signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx) and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
