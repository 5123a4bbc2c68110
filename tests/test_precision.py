"""Mixed precision on CPU: short bf16-mixed and 16-mixed fits of every model, and the float32
gradient penalty inside them.

On a CPU, Lightning turns ``Trainer(precision="16-mixed")`` into ``bf16-mixed`` with a warning, so
the float16 tests pass Lightning's ``MixedPrecision("16-mixed", "cpu")`` plugin explicitly: it runs
the same code as a GPU's ``16-mixed`` (float16 autocast and a ``torch.amp.GradScaler``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins import MixedPrecision

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGAN, WGANGP

TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4, n_critic=2)


def short_fit(cls, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, **trainer_args):
    """Nine optimiser steps (six critic, three generator) of a tiny ``cls``.

    Returns the model, the trainer, every loss passed to ``manual_backward``, and for every critic
    forward (whether its input was a leaf that requires grad, i.e. the penalty's interpolates; its
    output dtype; whether autocast was on).
    """
    losses: list[torch.Tensor] = []
    original = LightningModule.manual_backward

    def recording_backward(self, loss, *args, **kwargs):
        losses.append(loss.detach().clone())
        return original(self, loss, *args, **kwargs)

    monkeypatch.setattr(LightningModule, "manual_backward", recording_backward)
    torch.manual_seed(0)
    model = cls(**TINY, **trainer_args.pop("model_args", {}))
    forwards: list[tuple[bool, torch.dtype, bool]] = []
    model.discriminator.register_forward_hook(
        lambda module, args, out: forwards.append(
            (args[0].is_leaf and args[0].requires_grad, out.dtype, torch.is_autocast_enabled(out.device.type))))
    trainer_args.setdefault("accelerator", "cpu")
    trainer = Trainer(max_steps=9, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      **trainer_args)
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8, download=False))
    return model, trainer, losses, forwards


def assert_finite_run(model: LightningModule, losses: list[torch.Tensor]) -> None:
    assert len(losses) == 9  # six critic and three generator updates
    assert all(torch.isfinite(loss).all() for loss in losses), losses
    assert all(torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_bf16_mixed_fit_has_finite_losses_and_weights(cls, mnist_dir: Path, monkeypatch) -> None:
    model, trainer, losses, forwards = short_fit(cls, mnist_dir, monkeypatch, precision="bf16-mixed")
    assert trainer.precision_plugin.precision == "bf16-mixed"
    assert_finite_run(model, losses)
    # The fit really ran in bf16: the critic's own scores come out in bfloat16 ...
    assert any(dtype == torch.bfloat16 for penalty, dtype, _ in forwards if not penalty)
    # ... while WGAN-GP's penalty forwards, on the interpolates, ran in float32 with
    # autocast off (gradient_penalty's choice, see its docstring). Only WGAN-GP has them.
    penalty_forwards = [(dtype, autocast) for penalty, dtype, autocast in forwards if penalty]
    assert len(penalty_forwards) == (6 if cls is WGANGP else 0)
    assert all(dtype == torch.float32 and not autocast for dtype, autocast in penalty_forwards)


def test_16_mixed_on_cpu_becomes_bf16_mixed_in_lightning() -> None:
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU"):
        trainer = Trainer(accelerator="cpu", precision="16-mixed", logger=False)
    assert trainer.precision_plugin.precision == "bf16-mixed"


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_16_mixed_fit_with_a_grad_scaler_has_finite_losses_and_weights(cls, mnist_dir: Path, monkeypatch) -> None:
    model, trainer, losses, forwards = short_fit(cls, mnist_dir, monkeypatch,
                                                 plugins=[MixedPrecision("16-mixed", "cpu")])
    assert trainer.precision_plugin.scaler is not None
    assert_finite_run(model, losses)
    assert any(dtype == torch.float16 for penalty, dtype, _ in forwards if not penalty)
    assert all(dtype == torch.float32 and not autocast for penalty, dtype, autocast in forwards if penalty)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_16_mixed_fit_on_a_gpu_has_finite_losses_and_weights(cls, mnist_dir: Path, monkeypatch) -> None:
    model, trainer, losses, forwards = short_fit(cls, mnist_dir, monkeypatch, accelerator="gpu", devices=1,
                                                 precision="16-mixed")
    assert trainer.precision_plugin.precision == "16-mixed" and trainer.precision_plugin.scaler is not None
    assert_finite_run(model, losses)
    assert any(dtype == torch.float16 for penalty, dtype, _ in forwards if not penalty)
    assert all(dtype == torch.float32 and not autocast for penalty, dtype, autocast in forwards if penalty)


def test_16_mixed_skipped_steps_are_not_failures_and_the_logged_grad_norm_is_unscaled(
        mnist_dir: Path, monkeypatch) -> None:
    # GradScaler starts at 2**16 and halves its scale on every overflow, skipping that step: a normal
    # event (this fit overflows at least once) that must not trip the finiteness check, and the
    # logged gradient norm must be the true one, not the scaled one.
    model, trainer, losses, _ = short_fit(cls=DCGAN, mnist_dir=mnist_dir, monkeypatch=monkeypatch,
                                          plugins=[MixedPrecision("16-mixed", "cpu")], log_every_n_steps=1,
                                          model_args=dict(check_finite_every_n_steps=1))
    assert trainer.precision_plugin.scaler.get_scale() < 2.0**16  # it did overflow and skip
    assert_finite_run(model, losses)
    # The last critic step's gradients are still in .grad, unscaled in place by the scaler's step.
    true_norm = torch.nn.utils.get_total_norm([p.grad for p in model.discriminator.parameters()])
    assert trainer.callback_metrics["train/critic_grad_norm"].item() == pytest.approx(true_norm.item(), rel=1e-4)
