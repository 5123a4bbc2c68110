"""The training algorithm of the GAN modules: schedule, isolation of the two updates, clipping,
counters in checkpoints and the validation of hyperparameters."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from gan_modules import DCGAN, WGAN, WGANGP
from conftest import has_batch_norm

TINY = dict(image_shape=(1, 16, 16), latent_dim=8, generator_width=4, critic_width=4)


def loader(n_batches: int, batch_size: int = 4, shape=(1, 16, 16)) -> DataLoader:
    images = torch.rand(n_batches * batch_size, *shape) * 2 - 1
    return DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=batch_size)


def fit(model, n_batches: int, **trainer_args) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    trainer.fit(model, loader(n_batches))
    return trainer


class OptimizerSteps(Callback):
    """Calls ``check(network, before)`` right after every optimiser step, through the public seam of
    ``optimizer.step`` (wrapped on each of the trainer's optimisers); ``before`` is what
    ``snapshot_before()`` returned just before the step. Optimiser 0 is the critic's, 1 the generator's."""

    def __init__(self, check, snapshot_before=lambda: None) -> None:
        self.check, self.snapshot_before = check, snapshot_before

    def on_train_start(self, trainer, pl_module) -> None:
        for network, optimizer in zip(("critic", "generator"), trainer.optimizers, strict=True):
            step = optimizer.step

            def checked(*args, _step=step, _network=network, **kwargs):
                before = self.snapshot_before()
                result = _step(*args, **kwargs)
                self.check(_network, before)
                return result

            optimizer.step = checked


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_n_critic_5_gives_10_critic_and_2_generator_updates_each_isolated(cls) -> None:
    torch.manual_seed(0)
    model = cls(**TINY, n_critic=5)
    calls = []

    def isolated(network, before):
        generator, critic = before
        stepped, other = (critic, generator) if network == "critic" else (generator, critic)
        modules = {"critic": model.discriminator, "generator": model.generator}
        other_module = modules["generator" if network == "critic" else "critic"]
        assert same(other, other_module), f"a {network} step changed the other network"
        assert not same(stepped, modules[network]), f"a {network} step left the {network} unchanged"
        calls.append(network)

    trainer = fit(model, 10, callbacks=[OptimizerSteps(
        isolated, lambda: (snapshot(model.generator), snapshot(model.discriminator)))])
    assert (model.critic_steps, model.generator_steps) == (10, 2)
    assert calls == (["critic"] * 5 + ["generator"]) * 2
    assert trainer.global_step == 12  # Lightning counts the optimiser steps of both networks


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_the_logged_gradient_norms_are_those_of_each_networks_latest_update(cls) -> None:
    # n_critic 3 and a log at every batch: the generator's norm, also at the batches without a
    # generator update, is that of its latest update; none is logged before its first.
    torch.manual_seed(0)
    model = cls(**TINY, n_critic=3)
    assert model.gradient_norms() == {}  # outside a fit: no update yet
    latest, expected, logged = {}, [], []

    def record(network, before):  # after the step
        module = model.discriminator if network == "critic" else model.generator
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        latest[f"train/{network}_grad_norm"] = torch.nn.utils.get_total_norm(grads).item()

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            expected.append(dict(latest))
            logged.append({name: trainer.callback_metrics[name].item() for name in latest})

    fit(model, 7, log_every_n_steps=1, callbacks=[OptimizerSteps(record), Record()])
    assert [sorted(row) for row in expected[:3]] == [["train/critic_grad_norm"]] * 2 + [
        ["train/critic_grad_norm", "train/generator_grad_norm"]]
    for want, got in zip(expected, logged, strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_dcgan_updates_the_generator_after_every_batch() -> None:
    model = DCGAN(**TINY)
    trainer = fit(model, 3)
    assert (model.critic_steps, model.generator_steps, trainer.global_step) == (3, 3, 6)


def test_weight_clipping_holds_after_every_critic_step() -> None:
    torch.manual_seed(0)
    model = WGAN(**TINY, n_critic=2, clip_value=0.01, lr=0.1)  # a large lr pushes weights past the bound
    largest = []

    class Largest(Callback):  # one batch is one critic step; clipping follows its optimiser step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            largest.append(max(p.abs().max().item() for p in model.critic.parameters()))

    fit(model, 6, callbacks=[Largest()])
    assert len(largest) == 6 and max(largest) <= 0.01
    assert max(largest) == pytest.approx(0.01)  # the bound is reached, so the clamp did work


def test_wgan_warmup_schedule_of_the_reference_code() -> None:
    model = WGAN(**TINY, warmup=True)
    model.generator_steps = 0
    assert model.critic_iterations() == 100
    model.generator_steps = 25
    assert model.critic_iterations() == 5
    model.generator_steps = 500
    assert model.critic_iterations() == 100
    assert WGAN(**TINY).critic_iterations() == 5


def test_wgan_gp_critic_has_no_batch_norm() -> None:
    assert not has_batch_norm(WGANGP(**TINY).critic)
    assert not has_batch_norm(WGANGP(**TINY, critic_norm="none").critic)
    with pytest.raises(ValueError, match="must not use batch norm.*`critic_norm='layer'`"):
        WGANGP(**TINY, critic_norm="batch")
    assert has_batch_norm(DCGAN(**TINY).discriminator)


def test_max_generator_steps_stops_after_exactly_that_many() -> None:
    model = WGANGP(**TINY, n_critic=2, max_generator_steps=3)
    fit(model, 20)
    assert (model.generator_steps, model.critic_steps) == (3, 6)


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_counters_survive_save_and_load_of_a_checkpoint(cls, tmp_path) -> None:
    model = cls(**TINY, n_critic=3)
    trainer = fit(model, 7)
    assert (model.critic_steps, model.generator_steps) == (7, 2)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = cls.load_from_checkpoint(tmp_path / "model.ckpt")
    assert (restored.critic_steps, restored.generator_steps) == (7, 2)
    assert restored._critic_steps_at_last_generator_step == 6
    assert restored.hparams.n_critic == 3
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)


def test_loading_a_checkpoint_of_another_model_is_refused(tmp_path) -> None:
    trainer = fit(WGAN(**TINY), 1)
    trainer.save_checkpoint(tmp_path / "wgan.ckpt")
    with pytest.raises(ValueError, match="holds WGAN, not DCGAN"):
        DCGAN.load_from_checkpoint(tmp_path / "wgan.ckpt")


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_sample_returns_images_in_range_from_an_eval_mode_generator(cls) -> None:
    model = cls(**TINY)
    model.train()
    images = model.sample(5)
    assert images.shape == (5, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert model.generator.training  # the mode is restored
    noise = model.noise(5, torch.Generator().manual_seed(1))
    assert torch.equal(model.sample(5, noise=noise), model.sample(5, noise=noise))  # eval: no batch statistics


@pytest.mark.parametrize("name", ["n_critic", "latent_dim", "max_generator_steps"])
def test_non_positive_counts_are_refused_naming_the_flag(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got 0: set `{name}`"):
        WGANGP(**{**TINY, name: 0})


def test_data_that_does_not_match_the_model_shape_is_refused() -> None:
    model = DCGAN(**TINY)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"shape \(3, 16, 16\) but DCGAN was built for image_shape \(1, 16, 16\)"):
        trainer.fit(model, loader(1, shape=(3, 16, 16)))


def test_ema_generator_follows_the_formula_after_every_generator_update() -> None:
    torch.manual_seed(0)
    decay = 0.5
    model = WGANGP(**TINY, n_critic=2, ema_decay=decay)
    weights = []  # the generator's parameters after each generator update

    def record(network, before):
        if network == "generator":
            weights.append(snapshot(model.generator))

    fit(model, 6, callbacks=[OptimizerSteps(record)])
    assert len(weights) == 3
    expected = weights[0]  # the first update copies the weights
    for later in weights[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, later)]
    for e, p in zip(expected, model.generator_ema.module.parameters()):
        assert torch.allclose(e, p, atol=1e-7)
    assert not all(torch.equal(e, w) for e, w in zip(expected, weights[-1]))  # it is an average
    assert not any(p.requires_grad for p in model.generator_ema.parameters())


def test_sampling_uses_the_ema_generator_when_enabled() -> None:
    model = DCGAN(**TINY, ema_decay=0.999)
    with torch.no_grad():
        for p in model.generator_ema.module.parameters():
            p.mul_(0.5)  # make the average differ from the live generator
    noise = model.noise(3, torch.Generator().manual_seed(0))
    model.generator_ema.module.eval()
    model.generator.eval()
    expected = model.generator_ema.module(noise)
    assert torch.equal(model.sample(3, noise=noise), expected)
    assert not torch.equal(model.sample(3, noise=noise), model.generator(noise))
    assert DCGAN(**TINY).generator_ema is None  # off by default


def test_ema_decay_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), got 1.5: set `ema_decay`"):
        DCGAN(**TINY, ema_decay=1.5)


def test_the_ema_update_is_torchs_averaged_model_update_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = DCGAN(**TINY, ema_decay=0.9)  # batch norm: float buffers and an integer num_batches_tracked
    reference = AveragedModel(model.generator, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(1, 5):
        with torch.no_grad():  # a generator update: new weights and batch-norm statistics
            for tensor in (*model.generator.parameters(), *model.generator.buffers()):
                tensor.copy_(tensor * 1.5 + (torch.randn_like(tensor) if tensor.is_floating_point() else 3))
        model.generator_steps = step
        model._update_ema()
        reference.update_parameters(model.generator)
        mine, torchs = model.generator_ema.state_dict(), reference.state_dict()
        assert mine.keys() == torchs.keys()
        for name in mine:
            assert mine[name].dtype == torchs[name].dtype and torch.equal(mine[name], torchs[name]), (step, name)
    assert model.generator_ema.n_averaged.item() == 4


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_one_critic_update_lowers_the_critics_loss_on_its_batch(cls) -> None:
    # The sign conventions: a critic step descends its loss on the real and fake images it saw. The
    # second step is the one compared: WGAN's first clamps weights drawn beyond the clip bound.
    torch.manual_seed(0)
    model = cls(**TINY, n_critic=1 if cls is DCGAN else 3)
    seen = []
    critic_loss = model.critic_loss

    def recording(real, fake):  # the public method each family defines: the batch the step sees
        state = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
        seen.append((real.detach().clone(), fake.detach().clone(), state, model.train_rng.get_state()))
        return critic_loss(real, fake)

    model.critic_loss = recording
    fit(model, 2)
    real, fake, untrained, rng = seen[-1]

    def loss(state) -> float:
        model.discriminator.load_state_dict(state)
        model.train_rng.set_state(rng)  # the gradient penalty's mixing coefficients, as the step drew them
        return critic_loss(real, fake)["loss"].item()

    after = loss({k: v.clone() for k, v in model.discriminator.state_dict().items()})
    assert after < loss(untrained), (loss(untrained), after)


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, WGAN])
def test_one_generator_update_raises_the_critics_score_of_its_images(cls) -> None:
    torch.manual_seed(0)
    n_critic = 1 if cls is DCGAN else 2
    model = cls(**TINY, n_critic=n_critic)
    inputs, states = [], []
    model.generator.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    generator_loss = model.generator_loss

    def recording(fake):  # called once the generator step has drawn its images, before its update
        states.append((inputs[-1], {k: v.clone() for k, v in model.generator.state_dict().items()}))
        return generator_loss(fake)

    model.generator_loss = recording
    fit(model, n_critic)  # exactly one generator update, at the last batch
    assert len(states) == 1 and model.generator_steps == 1
    z, untrained = states[0]
    trained = {k: v.clone() for k, v in model.generator.state_dict().items()}

    def score(state) -> float:  # the critic as it ended, on the images of the same noise
        model.generator.load_state_dict(state)
        with torch.no_grad():
            return model.discriminator(model.generator(z)).mean().item()

    assert score(trained) > score(untrained)
