"""Extending a finished run: a run stopped by a planned limit and continued with a higher one ends
bitwise equal to the run that went to the higher limit at once."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training_state, write_mnist
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.trainer.states import RunningStage

from datamodules import MNISTDataModule
from gan_modules import WGANGP
from gan_modules.checkpoint_io import AtomicCheckpointIO

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

# 64 training images in batches of 8: 8 batches an epoch. With n_critic=2, b batches are b critic
# steps, b // 2 generator steps and a global_step of b + b // 2.
TINY = dict(latent_dim=8, generator_width=4, critic_width=4, n_critic=2)
FULL_RUN = 12  # batches: epoch 0 and half of epoch 1
STOPS = {"mid_epoch": 6, "epoch_end": 8}
# Where the stopped run's checkpoint is written: after every batch, at the end of the stopped epoch
# (ModelCheckpoint's default, the CLI's), and at the end of training.
SAVED_AT = ("every_step/last.ckpt", "epoch_end/last.ckpt", "train_end.ckpt")


class BatchClock(Timer):
    """``--trainer.max_time`` with a clock that ticks one second per training batch, so that the
    timer's own stop (and its saved elapsed time) lands on a known batch."""

    def __init__(self, seconds: int) -> None:
        super().__init__(duration=timedelta(seconds=seconds), interval="step")
        self._ticks = 0

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        self._ticks += 1
        super().on_train_batch_end(trainer, *args, **kwargs)

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        return float(self._offset + self._ticks) if stage == RunningStage.TRAINING else 0.0


class SaveOnTrainEnd(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)


class BatchLog(Callback):
    """Records (epoch, batch_idx, checksum of the images) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, float(batch[0].sum())))


def limit(kind: str, batches: int) -> tuple[dict, dict, list]:
    """Model arguments, trainer arguments and callbacks that stop training after ``batches``."""
    if kind == "max_generator_steps":
        return {"max_generator_steps": batches // 2}, {}, []
    if kind == "max_steps":
        return {}, {"max_steps": batches + batches // 2}, []
    return {}, {}, [BatchClock(seconds=batches)]


def fit(data_dir: Path, kind: str, batches: int, ckpt_dir: Path | None = None, ckpt_path: Path | None = None):
    torch.manual_seed(1234)
    os.environ["PL_GLOBAL_SEED"] = "1234"
    model_args, trainer_args, callbacks = limit(kind, batches)
    log = BatchLog()
    if ckpt_dir is not None:
        callbacks += [ModelCheckpoint(dirpath=ckpt_dir / "every_step", every_n_train_steps=1, save_last=True),
                      ModelCheckpoint(dirpath=ckpt_dir / "epoch_end", save_last=True),
                      SaveOnTrainEnd(ckpt_dir / "train_end.ckpt")]
    model = WGANGP(image_shape=(1, 28, 28), **TINY, **model_args)
    trainer = Trainer(
        accelerator="cpu", max_epochs=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=ckpt_dir is not None,
        plugins=[AtomicCheckpointIO()], callbacks=[*callbacks, log], **trainer_args,
    )
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8), ckpt_path=ckpt_path)
    return model, trainer, log.batches


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(data_dir):
    runs = {}

    def run(kind: str):
        if kind not in runs:
            runs[kind] = fit(data_dir, kind, FULL_RUN)
        return runs[kind]
    return run


def assert_bitwise_equal(reference, continued) -> None:
    (model_a, trainer_a, _), (model_b, trainer_b, _) = reference, continued
    assert (model_b.critic_steps, model_b.generator_steps) == (model_a.critic_steps, model_a.generator_steps)
    assert (trainer_b.global_step, trainer_b.current_epoch) == (trainer_a.global_step, trainer_a.current_epoch)
    assert_same_training_state(model_a, trainer_a.optimizers, model_b, trainer_b.optimizers)


@pytest.mark.parametrize("kind, stop", [
    ("max_generator_steps", "mid_epoch"), ("max_steps", "mid_epoch"), ("max_time", "mid_epoch"),
    ("max_generator_steps", "epoch_end"), ("max_steps", "epoch_end"),
])
def test_a_run_continued_after_a_planned_stop_ends_bitwise_equal_to_the_uninterrupted_run(
    kind, stop, data_dir, uninterrupted, tmp_path
) -> None:
    reference = uninterrupted(kind)
    stopped_at = STOPS[stop]
    _, _, first_batches = fit(data_dir, kind, stopped_at, ckpt_dir=tmp_path)
    assert first_batches == reference[2][:stopped_at]

    for saved_at in SAVED_AT:
        continued = fit(data_dir, kind, FULL_RUN, ckpt_path=tmp_path / saved_at)
        # The rest of the stopped epoch and nothing twice: a skipped or repeated batch shows here first.
        assert continued[2] == reference[2][stopped_at:], saved_at
        assert_bitwise_equal(reference, continued)


@pytest.mark.parametrize("kind", ["max_generator_steps", "max_steps"])
def test_a_run_extended_twice_ends_bitwise_equal_to_the_uninterrupted_run(kind, data_dir, uninterrupted, tmp_path) -> None:
    # Continuing from the checkpoint written after an epoch's last batch, Lightning starts the next
    # epoch without counting it as started; a stop inside that epoch must still continue exactly.
    reference = uninterrupted(kind)
    fit(data_dir, kind, STOPS["epoch_end"], ckpt_dir=tmp_path / "first")
    fit(data_dir, kind, 10, ckpt_dir=tmp_path / "second", ckpt_path=tmp_path / "first" / SAVED_AT[0])
    for saved_at in SAVED_AT:
        continued = fit(data_dir, kind, FULL_RUN, ckpt_path=tmp_path / "second" / saved_at)
        assert continued[2] == reference[2][10:], saved_at
        assert_bitwise_equal(reference, continued)


def test_continuing_with_the_limit_already_reached_trains_no_batch(data_dir, tmp_path) -> None:
    stopped, _, _ = fit(data_dir, "max_generator_steps", STOPS["mid_epoch"], ckpt_dir=tmp_path)
    again, _, batches = fit(data_dir, "max_generator_steps", STOPS["mid_epoch"], ckpt_path=tmp_path / SAVED_AT[0])
    assert batches == []
    assert (again.critic_steps, again.generator_steps) == (stopped.critic_steps, stopped.generator_steps)


def test_continuing_with_the_limit_reached_then_extending_still_ends_bitwise_equal(data_dir, uninterrupted,
                                                                                   tmp_path) -> None:
    # The fit that trains nothing still saves at its end (here: on_train_end); that checkpoint must keep
    # the data position it resumed from (batch 10 is inside the second epoch), not epoch 0's.
    kind, reference = "max_generator_steps", uninterrupted("max_generator_steps")
    fit(data_dir, kind, 10, ckpt_dir=tmp_path / "first")
    fit(data_dir, kind, 10, ckpt_dir=tmp_path / "again", ckpt_path=tmp_path / "first" / SAVED_AT[2])
    continued = fit(data_dir, kind, FULL_RUN, ckpt_path=tmp_path / "again" / SAVED_AT[2])
    assert continued[2] == reference[2][10:]
    assert_bitwise_equal(reference, continued)


def test_a_continued_fit_that_trains_nothing_writes_no_checkpoint(data_dir, tmp_path) -> None:
    from gan_modules.checkpoint_io import GANCheckpoint

    fit(data_dir, "max_generator_steps", 10, ckpt_dir=tmp_path)  # stops inside the second epoch
    last = tmp_path / "epoch_end" / "last.ckpt"
    before, files = last.read_bytes(), sorted(last.parent.iterdir())
    torch.manual_seed(1234)
    model = WGANGP(image_shape=(1, 28, 28), **TINY, max_generator_steps=10 // 2)
    trainer = Trainer(accelerator="cpu", max_epochs=3, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                      callbacks=[GANCheckpoint(dirpath=tmp_path / "epoch_end", save_last=True)])
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8), ckpt_path=last)
    assert model.critic_steps == 10 and sorted(last.parent.iterdir()) == files and last.read_bytes() == before
