"""The speed options give the results of the default path: one critic forward for real and fake
where the critic has no batch norm, channels-last memory layout, and torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGAN, WGANGP

TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4)


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("model_cls, norm, spectral", [
    (WGANGP, "layer", False), (WGANGP, "none", False), (DCGAN, "layer", False), (WGAN, "none", True),
])
def test_a_critic_without_batch_norm_can_score_real_and_fake_in_one_forward(model_cls, norm, spectral) -> None:
    torch.manual_seed(0)
    model = model_cls(**TINY, critic_norm=norm, spectral_norm=spectral)
    real, fake = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    if spectral:
        model.eval()  # the power iteration updates its vector at every training forward
    calls = count_forwards(model.discriminator)
    real_scores, fake_scores = model.critic_scores(real, fake, together=True)  # what an accelerator does
    assert calls == [12]  # one forward of the concatenated batch
    torch.testing.assert_close(real_scores, model.discriminator(real), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fake_scores, model.discriminator(fake), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_cls", [DCGAN, WGAN, WGANGP])
def test_a_batch_norm_critic_or_a_cpu_keeps_two_forwards(model_cls) -> None:
    # Batch norm: each batch is normalised by its own statistics. On a CPU (WGAN-GP's layer norm
    # here) two forwards measured faster at the presets' widths.
    model = model_cls(**TINY)
    calls = count_forwards(model.discriminator)
    model.critic_scores(torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28))
    assert calls == [6, 6]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_a_layer_norm_critic_scores_in_one_forward() -> None:
    model = WGANGP(**TINY).cuda()
    calls = count_forwards(model.discriminator)
    model.critic_scores(torch.randn(6, 1, 28, 28, device="cuda"), torch.randn(6, 1, 28, 28, device="cuda"))
    assert calls == [12]


def short_fit(model, mnist_dir: Path, batches: int = 4):
    trainer = Trainer(accelerator="cpu", max_steps=batches + batches // 2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))
    return model


def fitted_pair(model_cls, mnist_dir: Path, **option):
    models = []
    for options in ({}, option):
        torch.manual_seed(0)
        models.append(short_fit(model_cls(**TINY, n_critic=2, **options), mnist_dir))
    return models


def assert_same_weights(a, b, rtol: float, atol: float) -> None:
    assert (a.critic_steps, a.generator_steps) == (b.critic_steps, b.generator_steps)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("model_cls", [DCGAN, WGANGP])
def test_channels_last_trains_the_same_weights(model_cls, mnist_dir) -> None:
    default, channels_last = fitted_pair(model_cls, mnist_dir, channels_last=True)
    convolution = next(p for p in channels_last.discriminator.parameters() if p.dim() == 4)
    assert convolution.is_contiguous(memory_format=torch.channels_last)
    assert_same_weights(default, channels_last, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_trains_the_same_weights_and_keeps_the_checkpoint_keys(mnist_dir) -> None:
    # WGAN-GP: the compiled networks, and the penalty's double backward through the plain forward.
    eager, compiled = fitted_pair(WGANGP, mnist_dir, compile=True)
    assert compiled.generator._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` prefixes
    assert_same_weights(eager, compiled, rtol=1e-3, atol=1e-4)
