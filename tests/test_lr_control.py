"""Learning-rate control: separate rates for the two networks (TTUR) and linear decay over the
generator updates, resumed exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training_state, write_mnist
from lightning.pytorch import Callback, Trainer

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGAN, WGANGP
from gan_modules.checkpoint_io import AtomicCheckpointIO
from gan_modules.run_integrity import CheckpointMismatchError

# 64 training images in batches of 8: 8 batches an epoch.
TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4)


class RateLog(Callback):
    """Records (generator_steps, critic rate, generator rate) before every training batch."""

    def __init__(self) -> None:
        self.rates: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        critic_opt, generator_opt = trainer.optimizers
        self.rates.append((pl_module.generator_steps, critic_opt.param_groups[0]["lr"],
                           generator_opt.param_groups[0]["lr"]))


class StopAtGeneratorStep(Callback):
    """Stops the fit after generator update ``step`` and saves a checkpoint there, once."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path, self.saved = step, path, False

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.generator_steps == self.step and not self.saved:
            trainer.should_stop, self.saved = True, True
            trainer.save_checkpoint(self.path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("data"))


def seeded(cls, **settings):
    """The model built from the same seed every time, as a resumed run's script would build it."""
    torch.manual_seed(1234)
    os.environ["PL_GLOBAL_SEED"] = "1234"
    return cls(**settings)


def fit(model, data_dir: Path, callbacks=(), ckpt_path=None, max_epochs: int = 3) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_epochs=max_epochs, limit_val_batches=0, num_sanity_val_steps=0,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, plugins=[AtomicCheckpointIO()], callbacks=list(callbacks))
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_separate_rates_reach_the_right_optimiser() -> None:
    for cls in (DCGAN, WGANGP, WGAN):
        model = cls(**TINY, critic_lr=3e-4, generator_lr=7e-5)
        critic_opt, generator_opt = model.configure_optimizers()
        assert critic_opt.param_groups[0]["lr"] == 3e-4 and generator_opt.param_groups[0]["lr"] == 7e-5
        assert {id(p) for p in critic_opt.param_groups[0]["params"]} == {id(p) for p in model.discriminator.parameters()}
        assert {id(p) for p in generator_opt.param_groups[0]["params"]} == {id(p) for p in model.generator.parameters()}
        # One side set: the other keeps `lr`.
        critic_opt, generator_opt = cls(**TINY, lr=1e-3, generator_lr=2e-4).configure_optimizers()
        assert (critic_opt.param_groups[0]["lr"], generator_opt.param_groups[0]["lr"]) == (1e-3, 2e-4)
    assert model.hparams.critic_lr == 3e-4  # plain data in the checkpoint's hyperparameters


@pytest.mark.parametrize("cls, n_critic", [(DCGAN, 1), (WGANGP, 3)])
def test_the_rates_decay_linearly_over_the_generator_updates(cls, n_critic, data_dir) -> None:
    total = 6
    model = cls(**TINY, n_critic=n_critic, critic_lr=4e-4, generator_lr=1e-4, lr_schedule="linear",
                max_generator_steps=total)
    log = RateLog()
    fit(model, data_dir, [log])
    assert model.generator_steps == total and model.critic_steps == total * n_critic  # n_critic: same length
    assert len(log.rates) == total * n_critic
    for k, critic_lr, generator_lr in log.rates:  # the rates of the batch after k generator updates
        assert critic_lr == pytest.approx(4e-4 * (1 - k / total), rel=1e-9, abs=1e-15)
        assert generator_lr == pytest.approx(1e-4 * (1 - k / total), rel=1e-9, abs=1e-15)
    assert [k for k, *_ in log.rates] == [i // n_critic for i in range(total * n_critic)]
    critic_opt, generator_opt = model.trainer.optimizers
    assert critic_opt.param_groups[0]["lr"] == 0.0 and generator_opt.param_groups[0]["lr"] == 0.0


def test_without_a_schedule_the_rates_stay_constant(data_dir) -> None:
    model = WGAN(**TINY, critic_lr=3e-4, max_generator_steps=3)
    log = RateLog()
    fit(model, data_dir, [log])
    assert {(c, g) for _, c, g in log.rates} == {(3e-4, 5e-5)}


@pytest.mark.slow
def test_a_resumed_run_with_decay_and_separate_rates_ends_bitwise_equal(data_dir, tmp_path) -> None:
    settings = dict(**TINY, n_critic=2, critic_lr=4e-4, generator_lr=1e-4, lr_schedule="linear",
                    max_generator_steps=10)  # 20 batches: stops inside the third epoch
    reference = seeded(WGANGP, **settings)
    fit(reference, data_dir)
    fit(seeded(WGANGP, **settings), data_dir, [StopAtGeneratorStep(3, tmp_path / "stopped.ckpt")])
    saved = torch.load(tmp_path / "stopped.ckpt", weights_only=True)
    assert len(saved["lr_schedulers"]) == 2 and saved["lr_schedulers"][0]["last_epoch"] == 3

    resumed = seeded(WGANGP, **settings)
    log = RateLog()
    trainer = fit(resumed, data_dir, [log], ckpt_path=tmp_path / "stopped.ckpt")
    assert log.rates[0] == (3, pytest.approx(4e-4 * 0.7), pytest.approx(1e-4 * 0.7))
    assert (resumed.critic_steps, resumed.generator_steps) == (reference.critic_steps, reference.generator_steps)
    assert_same_training_state(reference, reference.trainer.optimizers, resumed, trainer.optimizers)
    for opt_a, opt_b in zip(reference.trainer.optimizers, trainer.optimizers):
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == 0.0


def test_a_run_continued_to_a_higher_limit_decays_from_where_it_was_to_zero_at_the_new_one(data_dir, tmp_path) -> None:
    settings = dict(**TINY, lr=1e-3, lr_schedule="linear")
    fit(DCGAN(**settings, max_generator_steps=8), data_dir, [StopAtGeneratorStep(4, tmp_path / "half.ckpt")])
    log = RateLog()
    continued = DCGAN(**settings, max_generator_steps=12)
    fit(continued, data_dir, [log], ckpt_path=tmp_path / "half.ckpt")
    # At k = 4 of 8 the rate is 5e-4; from there it falls linearly to 0 at the new limit, 12.
    for k, critic_lr, generator_lr in log.rates:
        expected = 5e-4 * (12 - k) / (12 - 4)
        assert critic_lr == pytest.approx(expected, rel=1e-9, abs=1e-15) and generator_lr == critic_lr
    assert continued.generator_steps == 12 and continued.trainer.optimizers[0].param_groups[0]["lr"] == 0.0


def test_a_changed_rate_keeps_the_runs_place_in_the_schedule(data_dir, tmp_path) -> None:
    settings = dict(**TINY, lr_schedule="linear", max_generator_steps=8)
    fit(DCGAN(**settings, lr=1e-3), data_dir, [StopAtGeneratorStep(4, tmp_path / "half.ckpt")])
    log = RateLog()
    fit(DCGAN(**settings, lr=2e-3, generator_lr=1e-3), data_dir, [log], ckpt_path=tmp_path / "half.ckpt")
    for k, critic_lr, generator_lr in log.rates:  # the doubled critic rate, at the same place: k of 8
        assert critic_lr == pytest.approx(2e-3 * (1 - k / 8), rel=1e-9, abs=1e-15)
        assert generator_lr == pytest.approx(1e-3 * (1 - k / 8), rel=1e-9, abs=1e-15)
    assert log.rates[0][:2] == (4, pytest.approx(1e-3))  # resumed at k = 4: 2e-3 * (1 - 4 / 8)


def test_a_finished_decay_is_not_continued_at_rate_zero(data_dir, tmp_path) -> None:
    settings = dict(**TINY, lr=1e-3, lr_schedule="linear")
    model = DCGAN(**settings, max_generator_steps=4)
    fit(model, data_dir, [StopAtGeneratorStep(4, tmp_path / "done.ckpt")])
    with pytest.raises(CheckpointMismatchError, match=r"finished its linear decay at generator update 4.*"
                                                      r"`lr_schedule='none'`"):
        fit(DCGAN(**settings, max_generator_steps=8), data_dir, ckpt_path=tmp_path / "done.ckpt")
    # Continued without a schedule it trains at the configured rate; with the same limit, not at all.
    log = RateLog()
    fit(DCGAN(**TINY, lr=1e-3, max_generator_steps=6), data_dir, [log], ckpt_path=tmp_path / "done.ckpt")
    assert {c for _, c, _ in log.rates} == {1e-3} and len(log.rates) == 2
    again = DCGAN(**settings, max_generator_steps=4)
    fit(again, data_dir, ckpt_path=tmp_path / "done.ckpt")
    assert again.generator_steps == 4


def test_validating_a_checkpoint_checks_no_schedule(data_dir, tmp_path) -> None:
    fit(DCGAN(**TINY, max_generator_steps=2), data_dir, [StopAtGeneratorStep(2, tmp_path / "constant.ckpt")])
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=1)
    model = DCGAN(**TINY, max_generator_steps=2, lr_schedule="linear")
    trainer.validate(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8), ckpt_path=tmp_path / "constant.ckpt")


def test_linear_decay_needs_max_generator_steps() -> None:
    with pytest.raises(ValueError, match=r"set `max_generator_steps`"):
        DCGAN(**TINY, lr_schedule="linear")
    with pytest.raises(ValueError, match=r"critic_lr must be > 0.*`critic_lr`"):
        WGANGP(**TINY, critic_lr=0.0)
    with pytest.raises(ValueError, match=r"lr must be > 0.*`lr`"):
        WGAN(**TINY, lr=-1e-4)
    with pytest.raises(TypeError):  # by keyword only: a reordered signature cannot shift values
        DCGAN(1e-3)


def test_switching_the_schedule_on_in_a_resumed_run_is_refused(data_dir, tmp_path) -> None:
    fit(DCGAN(**TINY, max_generator_steps=8), data_dir, [StopAtGeneratorStep(2, tmp_path / "constant.ckpt")])
    with pytest.raises(CheckpointMismatchError, match=r"without a learning-rate schedule.*`lr_schedule='none'`"):
        fit(DCGAN(**TINY, max_generator_steps=8, lr_schedule="linear"), data_dir, ckpt_path=tmp_path / "constant.ckpt")
