"""A scheduler's stop signal ends the run at a batch boundary, on every rank at once."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

# SIGTERM: a preemption, `scancel`, torchrun's agent stopping its workers. SIGUSR1: the warning SLURM sends
# before the time limit when asked (`#SBATCH --signal=USR1@120`; Lightning's SLURM default too).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal(Callback):
    """On SIGTERM or SIGUSR1 every rank stops after the same training batch by raising
    ``SIGTERMException(128 + signal)``: ``GANCheckpoint`` writes that exact state to ``last.ckpt``, and the
    process exits with that code (143 for SIGTERM), never 0.

    Lightning 2.6's own SIGTERM handler runs a ``broadcast`` inside the signal handler, which deadlocks when
    the ranks are signalled at different points of a collective (as SLURM and torchrun signal every rank).
    This handler only records the signal; the ranks agree at the next batch end, with one all-reduce of the
    signal's number per batch when there are several processes (Lightning's loop already broadcasts one per
    batch), so a signal to any rank stops them all.
    A signal during validation or FID is honoured after the next training batch.
    """

    def __init__(self) -> None:
        self.received = 0  # the signal's number; 0 while none came

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def _install(self) -> None:
        # Over Lightning's handlers, which it registers when the fit starts and restores when it ends.
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._record)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        received = self.received
        if trainer.world_size > 1:  # any rank's signal stops all; the same exit code on every rank
            flag = torch.tensor(received, device=trainer.strategy.root_device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if received:
            raise SIGTERMException(128 + received)
