"""Nothing in a training step waits for the device except at the log interval: every read-back of a
tensor to the host (``item``, ``tolist``, ``bool``, ``float``, ...) is a full stall of a GPU's
pipeline, so the presets' default path must make none between the batches Lightning logs."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from conftest import write_mnist
from train import build_cli

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

ROOT = Path(__file__).resolve().parents[1]
READ_BACKS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class ReadBackCounter(Callback):
    """Counts the tensor read-backs made during each training batch, from one batch's start to the
    next (so the logging Lightning does after a batch counts for that batch)."""

    def __init__(self) -> None:
        self.per_batch: Counter[int] = Counter()
        self.where: dict[int, list[str]] = {}
        self.batch = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = batch_idx

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.batch = -2  # the epoch end's own work (validation, grids, checkpoint) is not a step's

    def count(self, name: str) -> None:
        frame = sys._getframe(2)
        # torch's optimisers keep their step counts in CPU tensors even for GPU parameters, so that
        # reading them (``_get_value``) never waits for the device: not a read-back from the device.
        # (swa_utils' AveragedModel is no optimiser: its update count lives on the module's device.)
        file = frame.f_code.co_filename
        if self.batch >= 0 and (f"torch{os.sep}optim{os.sep}" not in file or file.endswith("swa_utils.py")):
            self.per_batch[self.batch] += 1
            self.where.setdefault(self.batch, []).append(f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}")


@pytest.mark.parametrize("preset, extra", [("dcgan_mnist", []), ("wgan_gp_mnist", []), ("wgan_mnist", []),
                                           ("dcgan_mnist", ["--model.ema_decay", "0.999"]),
                                           ("wgan_gp_mnist", ["--model.augment", "color,translation,cutout"])],
                         ids=["dcgan_mnist", "wgan_gp_mnist", "wgan_mnist", "dcgan_mnist_with_ema",
                              "wgan_gp_mnist_with_diffaugment"])
def test_the_default_path_reads_nothing_back_between_log_intervals(preset, extra, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    data = write_mnist(tmp_path / "data", n_train=320, n_test=16)  # 20 batches of 16: one epoch
    cli = build_cli(["--config", str(ROOT / "configs" / f"{preset}.yaml"), "--data.data_dir", str(data),
                     "--data.batch_size", "16", "--model.generator_width", "8", "--model.critic_width", "8",
                     "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "10", "--fid.enabled", "false",
                     "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                     *extra], run=False)
    counter = ReadBackCounter()
    cli.trainer.callbacks.append(counter)
    for name in READ_BACKS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            counter.count(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    # The gradient norms, too, are computed for the logs and the checks only, not at every step.
    norms_at: list[int] = []
    total_norm = torch.nn.utils.get_total_norm

    def counted_norm(*args, **kwargs):
        norms_at.append(counter.batch)
        return total_norm(*args, **kwargs)
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted_norm)
    cli.trainer.fit(cli.model, cli.datamodule)
    monkeypatch.undo()

    assert cli.model.critic_steps == 20
    between = {batch: counter.where[batch] for batch in counter.per_batch if batch not in (9, 19)}
    assert not between, between  # batch_idx 9 and 19 are the 10th and 20th: the log interval
    assert counter.per_batch[9] > 0  # the counter sees the logging's read-backs (the finiteness check)
    assert norms_at == [9, 9, 19, 19], norms_at  # each network's, once per log interval
