"""No checkpoint ever holds a non-finite weight, buffer or optimiser state, and the error that stops
training says truthfully which checkpoint is good."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGANGP
from gan_modules.checkpoint_io import AtomicCheckpointIO

TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4)


def fit(model, mnist_dir: Path, ckpt_dir: Path, max_epochs: int = 1) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      plugins=[AtomicCheckpointIO()],
                      callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True)])
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))
    return trainer


def assert_all_finite(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    tensors = list(state["state_dict"].values())
    for optimizer_state in state["optimizer_states"]:
        for moments in optimizer_state["state"].values():
            tensors += [v for v in moments.values() if isinstance(v, torch.Tensor)]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    return state


class PoisonedUpdate(DCGAN):
    """Finite losses and gradients, but critic step ``poison_at`` leaves an infinite weight, as an
    update that overflows does. With ``n_critic=2`` no generator update follows an odd critic step,
    so no loss shows the damage before the checkpoint of that batch."""

    def __init__(self, poison_at: int = 3, **kwargs) -> None:
        super().__init__(n_critic=2, **kwargs)
        self.poison_at = poison_at

    def on_critic_step_end(self) -> None:
        if self.critic_steps == self.poison_at:
            with torch.no_grad():
                next(self.discriminator.parameters()).view(-1)[0] = float("inf")


def test_a_non_finite_weight_is_never_checkpointed_and_the_error_names_the_good_one(mnist_dir, tmp_path) -> None:
    model = PoisonedUpdate(poison_at=3, check_finite_every_n_steps=1, **TINY)
    with pytest.raises(FloatingPointError) as error:
        fit(model, mnist_dir, tmp_path)
    message = str(error.value)
    assert "critic step 3" in message and "state_dict.discriminator." in message
    assert f"The newest checkpoint ({tmp_path / 'last.ckpt'}), from critic step 2, holds a finite state" in message
    state = assert_all_finite(tmp_path / "last.ckpt")
    assert state["gan_state"]["critic_steps"] == 2


def test_the_error_says_so_when_no_checkpoint_was_written_yet(mnist_dir, tmp_path) -> None:
    model = PoisonedUpdate(poison_at=1, check_finite_every_n_steps=1, **TINY)
    with pytest.raises(FloatingPointError, match="No checkpoint was written before it"):
        fit(model, mnist_dir, tmp_path)
    assert not (tmp_path / "last.ckpt").exists()


class InfiniteGradient(DCGAN):
    """A finite critic loss whose gradient is NaN at critic step 3: sqrt'(0) is infinite."""

    def critic_loss(self, real, fake):
        terms = super().critic_loss(real, fake)
        if self.critic_steps + 1 == 3:
            terms["loss"] = terms["loss"] + (next(self.discriminator.parameters()) * 0).sum().sqrt()
        return terms


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_update_is_saved(mnist_dir, tmp_path) -> None:
    model = InfiniteGradient(check_finite_every_n_steps=1, **TINY)
    with pytest.raises(FloatingPointError, match=r"train/critic_grad_norm became non-finite at critic step 3"):
        fit(model, mnist_dir, tmp_path)
    assert assert_all_finite(tmp_path / "last.ckpt")["gan_state"]["critic_steps"] == 2


def test_an_overflowing_learning_rate_leaves_only_finite_checkpoints(mnist_dir, tmp_path) -> None:
    # The outside probe's case: WGAN-GP with lr 1e5 and a checkpoint after every step.
    model = WGANGP(lr=1e5, n_critic=1, **TINY)
    with pytest.raises(FloatingPointError) as error:
        fit(model, mnist_dir, tmp_path, max_epochs=20)
    last = tmp_path / "last.ckpt"
    if last.exists():
        step = assert_all_finite(last)["gan_state"]["critic_steps"]
        assert f"from critic step {step}, holds a finite state" in str(error.value)
    else:
        assert "No checkpoint was written before it" in str(error.value)


def test_resuming_after_the_stop_continues_from_the_good_checkpoint(mnist_dir, tmp_path) -> None:
    with pytest.raises(FloatingPointError):
        fit(PoisonedUpdate(poison_at=3, **TINY), mnist_dir, tmp_path)
    # The good checkpoint loads and trains on (the poison does not recur past step 3).
    model = PoisonedUpdate(poison_at=-1, **TINY)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, plugins=[AtomicCheckpointIO()],
                      enable_checkpointing=False)
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8), ckpt_path=tmp_path / "last.ckpt")
    assert model.critic_steps == 64 // 8


class InfiniteGeneratorGradient(DCGAN):
    """A finite generator loss whose gradient is NaN at generator step ``at`` (sqrt'(0) is infinite)."""

    def __init__(self, at: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at = at

    def generator_loss(self, fake):
        terms = super().generator_loss(fake)
        if self.generator_steps + 1 == self.at:
            terms["loss"] = terms["loss"] + (next(self.generator.parameters()) * 0).sum().sqrt()
        return terms


def test_a_non_finite_gradient_between_checks_stops_the_run_at_the_next_check(mnist_dir, tmp_path) -> None:
    # Checked every 4 batches, gradients only at the checks: generator step 3's NaN gradient (batch 3)
    # leaves NaN generator weights, so batch 4's critic loss is NaN, and the check after it stops the run.
    model = InfiniteGeneratorGradient(at=3, check_finite_every_n_steps=4, **TINY)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      enable_checkpointing=False)
    with pytest.raises(FloatingPointError, match=r"train/critic_loss became non-finite between critic steps 1 and 4"):
        trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))
    assert model.critic_steps == 4


class NaNLossAt(DCGAN):
    """A NaN critic loss at critic step ``at`` only: a constant NaN added, so its gradient and the
    weights stay finite and no later loss shows it."""

    def __init__(self, at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at = at

    def critic_loss(self, real, fake):
        terms = super().critic_loss(real, fake)
        if self.critic_steps + 1 == self.at:
            terms["loss"] = terms["loss"] + torch.tensor(float("nan"))
        return terms


@pytest.mark.slow  # 300 training steps
def test_checks_hundreds_of_steps_apart_still_see_an_early_nan(mnist_dir, tmp_path) -> None:
    # 300 steps between checks: the watched losses are folded (every 256 per network) on the way.
    model = NaNLossAt(at=5, check_finite_every_n_steps=300, **TINY)
    trainer = Trainer(accelerator="cpu", max_steps=2 * 300, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      enable_checkpointing=False)
    with pytest.raises(FloatingPointError, match=r"train/critic_loss became non-finite between critic steps 1 and 300"):
        trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))
