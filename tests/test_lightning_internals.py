"""The private Lightning attributes this project relies on: if an upgrade removes one, these tests
say which, instead of a feature failing silently."""

from __future__ import annotations

import inspect

import pytest
import torch

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loops.progress import _BatchProgress
from lightning.pytorch.strategies import DDPStrategy


def test_lightning_cli_still_merges_checkpoint_hyperparameters_in_parse_ckpt_path() -> None:
    # train.GANCLI overrides it so that a checkpoint cannot swap the model or import a module.
    assert callable(getattr(LightningCLI, "_parse_ckpt_path", None)), (
        "LightningCLI._parse_ckpt_path is gone: check how this Lightning merges a checkpoint's "
        "hyperparameters into the config and move GANCLI's override there.")
    assert "hyper_parameters" in inspect.getsource(LightningCLI._parse_ckpt_path)


def test_ddp_strategy_still_has_the_attributes_check_strategy_reads() -> None:
    # gan_modules.run_integrity.check_strategy: start method, DDP kwargs, sync-batchnorm plugin.
    def read(strategy: DDPStrategy, name: str):
        assert hasattr(strategy, name), (f"DDPStrategy.{name} is gone: gan_modules.run_integrity.check_strategy "
                                         f"reads it; find where this Lightning keeps it")
        return getattr(strategy, name)

    for name, expected in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_fork", "fork")):
        assert read(DDPStrategy(start_method=expected), "_start_method") == expected, name
    assert read(DDPStrategy(find_unused_parameters=True), "_ddp_kwargs") == {"find_unused_parameters": True}
    assert read(DDPStrategy(), "_layer_sync") is None


def test_the_batch_progress_the_datamodule_saves_is_still_there() -> None:
    # datamodules.pipeline.ImageDataModule.state_dict reads fit_loop.epoch_loop.batch_progress.current.processed.
    assert hasattr(_BatchProgress().current, "processed")


def test_the_loop_state_keys_continuation_rewrites_are_still_saved(tmp_path) -> None:
    # gan_modules.continuation.align_epoch_with_data edits these keys of a checkpoint's loop state.
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "boring.ckpt")
    fit_loop = torch.load(tmp_path / "boring.ckpt", weights_only=True)["loops"]["fit_loop"]
    for tracker in ("current", "total"):
        assert {"ready", "started", "processed", "completed"} <= fit_loop["epoch_progress"][tracker].keys()
        assert {"processed", "completed"} <= fit_loop["epoch_loop.batch_progress"][tracker].keys()
    assert "is_last_batch" in fit_loop["epoch_loop.batch_progress"]
    assert "_batches_that_stepped" in fit_loop["epoch_loop.state_dict"], (
        "Lightning's loop state no longer holds epoch_loop.state_dict._batches_that_stepped, which "
        "gan_modules.continuation.align_epoch_with_data corrects: see how this Lightning counts logged steps")


def test_the_scheduler_state_keys_a_resume_rescales_are_still_saved() -> None:
    # gan_modules.run_integrity._prefer_configured_optimizer_settings edits these keys of a saved
    # LinearLR state.
    from torch.optim.lr_scheduler import LinearLR

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    state = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=4).state_dict()
    assert {"base_lrs", "_last_lr", "total_iters", "last_epoch"} <= state.keys()


def test_a_module_outside_a_trainer_says_so_through_its_public_trainer_property() -> None:
    # run_integrity.attached_trainer tells a module outside a Trainer by the RuntimeError of
    # LightningModule.trainer (public), not by its private _trainer.
    from gan_modules import DCGAN
    from gan_modules.run_integrity import attached_trainer

    model = DCGAN(image_shape=(1, 16, 16))
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        model.trainer
    assert attached_trainer(model) is None
