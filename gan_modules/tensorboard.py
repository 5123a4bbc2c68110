"""Lightning's TensorBoard logger, writing the scalars of each ``log_metrics`` call as one event."""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor


class OneEventTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` (same arguments, same files), writing all the scalars of one
    ``log_metrics`` call as one event: one summary holding each scalar under its own tag, which
    TensorBoard reads exactly as it reads one event per scalar.

    Lightning's logger writes one event per scalar, and each event costs a serialisation, a hand-off
    to the writer thread (which wakes for it) and a checksum computed in pure Python there: about
    80 µs of host time per scalar on this project's CPU, so about 1 ms for the dozen scalars a GAN
    logs at every log interval, roughly 1 % of a small network's training time at the presets'
    interval of 10 batches (benchmarks/step_overhead.py). One event per call costs about a tenth of
    that.
    Values that are not numbers (a dict, for ``add_scalars``) go through Lightning's own path.
    """

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values, others = [], {}
        for name, value in metrics.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, numbers.Real):
                tag = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{name}" if self._prefix else name
                values.append(Summary.Value(tag=tag, simple_value=float(value)))
            else:
                others[name] = value
        if values:
            # What SummaryWriter.add_scalar does per scalar, once for all of them.
            self.experiment._get_file_writer().add_summary(Summary(value=values), step)
        if others:
            super().log_metrics(others, step)
