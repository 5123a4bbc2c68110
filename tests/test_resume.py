"""Exact resume, checkpoints that survive a kill, and the non-finite-loss stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training_state
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGAN, WGANGP
from gan_modules.callbacks import SampleGridCallback
from gan_modules.checkpoint_io import AtomicCheckpointIO, GANCheckpoint
from ddp_helpers import SignalAt

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(latent_dim=8, generator_width=4, critic_width=4, n_critic=3)


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Raises before the training batch ``batch_idx`` of ``epoch``, like a killed process."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            raise Crash


def run(model_cls, data_dir: Path, ckpt_dir: Path, callbacks=(), ckpt_path=None, grid_seed=0,
        val_check_interval=None, checkpoint=None, **model_args):
    torch.manual_seed(1234)  # what seed_everything does; the resumed run must not depend on it
    os.environ["PL_GLOBAL_SEED"] = "1234"
    model = model_cls(image_shape=(1, 28, 28), **TINY, **model_args)
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=8)
    grid = SampleGridCallback(num_samples=4, seed=grid_seed)
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, plugins=[AtomicCheckpointIO()], val_check_interval=val_check_interval,
        # Saved after every batch, or, with a mid-epoch validation, only after each validation.
        callbacks=[checkpoint or ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=None if val_check_interval else 1,
                                                 save_last=True), grid, *callbacks],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer, grid


@pytest.mark.parametrize("model_cls, crash_epoch, crash_batch, val_check_interval, model_args", [
    (WGANGP, 0, 5, None, {}), (WGANGP, 1, 0, None, {}), (DCGAN, 0, 5, None, {}), (WGAN, 1, 3, None, {}),
    (WGANGP, 0, 6, 4, {}), (DCGAN, 1, 2, None, {"ema_decay": 0.9}),
    (WGANGP, 0, 5, None, {"augment": "color,translation,cutout"}),
], ids=["wgan_gp_mid_epoch", "wgan_gp_epoch_boundary", "dcgan_mid_epoch", "wgan_second_epoch",
        "wgan_gp_saved_at_a_mid_epoch_validation", "dcgan_with_ema_generator", "wgan_gp_with_diffaugment"])
def test_resumed_run_ends_bitwise_equal_to_the_uninterrupted_run(
    model_cls, crash_epoch, crash_batch, val_check_interval, model_args, mnist_dir: Path, tmp_path: Path,
    monkeypatch
) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    reference, reference_trainer, _ = run(model_cls, mnist_dir, tmp_path / "reference",
                                          val_check_interval=val_check_interval, **model_args)

    with pytest.raises(Crash):
        run(model_cls, mnist_dir, tmp_path / "resumed", callbacks=[CrashAt(crash_epoch, crash_batch)],
            val_check_interval=val_check_interval, **model_args)
    # The resumed process starts from another global RNG state and another grid seed: everything
    # the continuation needs must come from the checkpoint.
    torch.manual_seed(999)
    resumed, resumed_trainer, grid = run(model_cls, mnist_dir, tmp_path / "resumed", grid_seed=7,
                                         ckpt_path=str(tmp_path / "resumed" / "last.ckpt"),
                                         val_check_interval=val_check_interval, **model_args)

    # "The same" is bitwise: on one CPU the same operations on the same data in the same order give
    # the same bits, and any drift (a skipped or repeated batch, other noise) would show at once.
    assert (resumed.critic_steps, resumed.generator_steps) == (reference.critic_steps, reference.generator_steps)
    assert resumed_trainer.global_step == reference_trainer.global_step
    assert reference.state_dict().keys() == resumed.state_dict().keys()  # the EMA generator too, if any
    assert_same_training_state(reference, reference_trainer.optimizers, resumed, resumed_trainer.optimizers)
    assert torch.equal(grid.noise, SampleGridCallback(num_samples=4, seed=0).setup_noise(reference))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def killed(fd):
        raise KeyboardInterrupt  # the process dies after writing part of the new file

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "payload": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_sigkill_mid_training_leaves_a_loadable_last_checkpoint(mnist_dir: Path, tmp_path: Path) -> None:
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "dcgan_mnist.yaml"),
            "--data.data_dir", str(mnist_dir), "--data.batch_size", "8", "--model.generator_width", "8",
            "--model.critic_width", "8", "--trainer.max_epochs", "1000", "--trainer.enable_progress_bar", "false",
            "--fid.enabled", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--checkpoint.every_n_train_steps", "1"]
    last = tmp_path / "runs" / "dcgan_mnist" / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert last.exists(), "training never wrote last.ckpt"
        time.sleep(2.0)  # a checkpoint is written after every batch: the kill lands during or between saves
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    model = DCGAN.load_from_checkpoint(last)
    assert model.critic_steps > 0 and model.sample(2).shape == (2, 1, 28, 28)


class NaNAtStep4(DCGAN):
    def critic_loss(self, real, fake):
        terms = super().critic_loss(real, fake)
        if self.critic_steps + 1 == 4:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


@pytest.mark.parametrize("every", [1, 0], ids=["checked_every_step", "checked_before_saving"])
def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(every, mnist_dir, tmp_path) -> None:
    model = NaNAtStep4(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4,
                       check_finite_every_n_steps=every)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)])
    with pytest.raises(FloatingPointError, match=r"train/critic_loss became non-finite at critic step 4 \(epoch 0\)"):
        trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["gan_state"]["critic_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_mid_epoch_resume_does_not_warn_that_the_loader_is_not_resumable(mnist_dir: Path, tmp_path: Path) -> None:
    import warnings

    with pytest.raises(Crash):
        run(DCGAN, mnist_dir, tmp_path, callbacks=[CrashAt(0, 5)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(DCGAN, mnist_dir, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "not resumable" in m], messages


@pytest.mark.parametrize("epoch, batch_idx", [(0, 4), (1, 7)], ids=["mid_epoch", "last_batch_of_the_run"])
def test_sigterm_saves_the_exact_state_and_the_run_continues_bitwise(epoch, batch_idx, mnist_dir: Path,
                                                                     tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    reference, reference_trainer, _ = run(WGANGP, mnist_dir, tmp_path / "reference")
    # Only epoch-end saves are planned: what the signal leaves must come from the signal.
    checkpoint = GANCheckpoint(dirpath=tmp_path / "stopped", save_last=True)
    with pytest.raises(SIGTERMException):
        stopped, _, _ = run(WGANGP, mnist_dir, tmp_path / "stopped", callbacks=[SignalAt(epoch, batch_idx)],
                            checkpoint=checkpoint)
    saved = torch.load(tmp_path / "stopped" / "last.ckpt", weights_only=True)
    assert saved["gan_state"]["critic_steps"] == epoch * 8 + batch_idx + 1  # 8 batches an epoch: that batch's state
    resumed, resumed_trainer, _ = run(WGANGP, mnist_dir, tmp_path / "stopped",
                                      ckpt_path=str(tmp_path / "stopped" / "last.ckpt"),
                                      checkpoint=GANCheckpoint(dirpath=tmp_path / "stopped", save_last=True))
    assert resumed_trainer.global_step == reference_trainer.global_step
    assert_same_training_state(reference, reference_trainer.optimizers, resumed, resumed_trainer.optimizers)
