"""What keeps a GAN run honest, called by :mod:`gan_modules.base`: the finiteness guard, the strategy
check and whether a checkpoint fits a model. Private Lightning attributes read here are pinned by
tests/test_lightning_internals.py."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from gan_modules.flags import SettingError, advice

# Each network's loss at every step and the gradient norm of its latest update, by logged name.
_WATCHED = ("train/critic_loss", "train/critic_grad_norm", "train/generator_loss", "train/generator_grad_norm")
_FOLD_AT = 256  # watched losses kept per network before they are folded into one

# Hyperparameters that decide the shapes of the weights, with the flag that sets each.
_ARCHITECTURE_FLAGS = {"image_shape": "`--data.image_size` (and the data's channels)",
                       "ema_decay": "`--model.ema_decay` (an EMA generator or none)",
                       **{name: f"`--model.{name}`" for name in ("latent_dim", "generator_width", "critic_width",
                                                                  "critic_norm", "spectral_norm")}}

_ADVICE = ("Lower `--model.lr` (or `--model.critic_lr`/`--model.generator_lr`), or for WGAN-GP check "
           "`--model.gp_weight`.")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the configured model (another class, other layer shapes)."""


class FiniteGuard:
    """Stops a run at a non-finite loss, gradient norm or checkpointed state, naming it and the last good
    checkpoint. The module calls :meth:`watch` after each optimiser step, :meth:`check_if_due` after each
    batch, :meth:`check_state` before each save and :meth:`loaded` after a restore."""

    def __init__(self) -> None:
        self.losses: dict[str, list[Tensor]] = {}  # since the last check, on the device, by logged name
        self.checked_through = 0  # critic step of the last check that passed
        self.last_checkpoint: tuple[str, int] | None = None  # ("saved" or "loaded", critic step)

    def watch(self, network: str, loss: Tensor) -> None:
        """Keep this step's loss of ``network`` (``critic``/``generator``) for the next check, not read back."""
        losses = self.losses.setdefault(f"train/{network}_loss", [])
        losses.append(loss.detach())
        if len(losses) >= _FOLD_AT:  # x * 0 is 0 for a finite x and NaN otherwise: a bounded list
            losses[:] = [torch.stack(losses).float().mul_(0).sum()]

    def check_if_due(self, module: LightningModule) -> None:
        """Check every ``check_finite_every_n_steps`` critic steps (``None``: at the logs, which wait anyway)."""
        every = module.hparams.check_finite_every_n_steps
        every = module.trainer.log_every_n_steps if every is None else every
        if every and module.critic_steps % every == 0:
            self.check(module)

    def check(self, module: LightningModule) -> None:
        """Raise on every rank together if any rank saw a non-finite loss since the last check or gradient
        norm of a network's latest update (one read-back; a non-finite gradient in between makes the next
        loss non-finite). Under a GradScaler, where that is the signal to skip a step, only losses count."""
        trainer = module.trainer
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        norms = {} if scaled else {f"train/{name}": norm for name, norm in module.gradient_norms().items()}
        names, values = [], []  # the same on every rank: they step in lockstep
        for name in _WATCHED:
            watched = [*self.losses.get(name, []), *([norms[name]] if name in norms else [])]
            names += [name] * len(watched)
            values += watched
        self.losses = {}
        first, self.checked_through = self.checked_through + 1, module.critic_steps
        if not values:
            return
        bad = torch.isfinite(torch.stack(values)).logical_not_()  # the stack promotes half-precision losses
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad.float(), reduce_op="max")
        for name, is_bad in zip(names, bad.tolist()):
            if is_bad:
                step = module.critic_steps
                when = (f"at critic step {step}" if first >= step else f"between critic steps {first} and {step} "
                        f"(checked every `--model.check_finite_every_n_steps` batches; 1 stops at the first)")
                raise FloatingPointError(
                    f"{name} became non-finite {when} (epoch {module.current_epoch}): training stopped and no "
                    f"checkpoint was written after it. {self._last_good(module)} {_ADVICE}")

    def check_state(self, module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Before a save while fitting: run :meth:`check`, then refuse non-finite weights, buffers or optimiser
        states (one read-back; reduced over the ranks, whose batch-norm buffers differ), naming the first."""
        trainer = attached_trainer(module)
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self.check(module)
            named = _float_tensors(checkpoint) or [("", torch.zeros(()))]  # a stack of at least one
            bad = torch.stack([torch.isfinite(t).all().logical_not().to(module.device) for _, t in named]).float()
            if trainer.world_size > 1:
                bad = trainer.strategy.reduce(bad, reduce_op="max")
            where = next((name for (name, _), is_bad in zip(named, bad.tolist()) if is_bad), None)
            if where is not None:
                raise FloatingPointError(
                    f"The state to be checkpointed at critic step {module.critic_steps} (epoch "
                    f"{module.current_epoch}) holds a non-finite value ({where}): training stopped and this "
                    f"checkpoint was not written. {self._last_good(module)} {_ADVICE}")
        self.last_checkpoint = ("saved", module.critic_steps)

    def loaded(self, critic_steps: int) -> None:
        """A restored checkpoint counts as checked: every checkpoint was checked when saved."""
        self.last_checkpoint, self.checked_through = ("loaded", critic_steps), critic_steps

    def _last_good(self, module: LightningModule) -> str:
        """Which checkpoint holds a good state: the newest saved or loaded (each was checked)."""
        if self.last_checkpoint is None:
            return ("No checkpoint was written before it, so there is no good state to resume from: "
                    "start again without `--ckpt_path`.")
        how, step = self.last_checkpoint
        trainer = attached_trainer(module)
        path = (None if trainer is None else trainer.ckpt_path if how == "loaded"
                else getattr(trainer.strategy.checkpoint_io, "last_saved_path", None))  # known to rank 0 only
        return (f"The newest checkpoint{f' ({path})' if path else ''}, from critic step {step}, holds a finite state: "
                f"resume from it with `--ckpt_path {path or 'last'}`.")


def _float_tensors(checkpoint: dict[str, Any]) -> list[tuple[str, Tensor]]:
    """Every floating-point weight, buffer and optimiser state in ``checkpoint``, by a name for messages."""
    named = [(f"state_dict.{key}", value) for key, value in checkpoint.get("state_dict", {}).items()]
    for index, optimizer_state in enumerate(checkpoint.get("optimizer_states", [])):
        for param_id, param_state in optimizer_state.get("state", {}).items():
            named += [(f"optimizer_states[{index}].state[{param_id}].{key}", value) for key, value in param_state.items()]
    return [(name, t) for name, t in named if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]


def attached_trainer(module: LightningModule) -> Any | None:
    """The Trainer ``module`` is attached to, or ``None`` (Lightning raises a RuntimeError then)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def check_strategy(strategy: Any) -> None:
    """Raise a clear error for a strategy the GAN modules (two optimisers, manual optimisation) cannot use."""
    problem = None
    if isinstance(strategy, DDPStrategy):
        if getattr(strategy, "_start_method", "popen") != "popen":
            problem = (f"DDP with processes started by {strategy._start_method} (ddp_spawn, ddp_fork, ddp_notebook) "
                       "is not supported: it hands the run back to the first process by pickling, and only the "
                       "weights come back. Use `--trainer.strategy ddp_find_unused_parameters_true`, which starts "
                       "one process per device as a script (or launch with torchrun or SLURM).")
        elif not strategy._ddp_kwargs.get("find_unused_parameters", False) or strategy._ddp_kwargs.get("static_graph"):
            problem = ("DDP must detect unused parameters to train a GAN: each of the two optimiser steps leaves the "
                       "other network without gradients. Use `--trainer.strategy ddp_find_unused_parameters_true` "
                       "(as configs/trainer/ddp.yaml does), or the strategy's `find_unused_parameters: true` "
                       "without `static_graph`.")
        elif strategy._layer_sync is not None and strategy.root_device.type != "cuda":
            problem = ("`--trainer.sync_batchnorm true` needs GPUs (torch's SyncBatchNorm runs on CUDA only): drop "
                       "it on CPUs, where batch-norm statistics then stay per device.")
    elif not isinstance(strategy, SingleDeviceStrategy):
        problem = (f"{type(strategy).__name__} is not supported by the GAN modules (two optimisers, manual "
                   "optimisation): use one device or `--trainer.strategy ddp_find_unused_parameters_true`.")
    if problem is not None:
        raise SettingError(problem)


def saved_model_class(checkpoint: dict[str, Any]) -> str | None:
    """The name of the GAN module class that wrote ``checkpoint`` (``None``: not this project's)."""
    state = checkpoint.get("gan_state")
    found = state.get("model") if isinstance(state, dict) else None
    return found if isinstance(found, str) else None


def refuse_another_model(checkpoint: dict[str, Any], expected: str, source: str = "") -> None:
    """Raise a :class:`CheckpointMismatchError` unless the class named ``expected`` wrote ``checkpoint``."""
    found = saved_model_class(checkpoint)
    if found is None:
        raise CheckpointMismatchError(
            advice(f"The checkpoint{source} was not written by this project's GAN modules: pass `--ckpt_path` a "
            f"checkpoint written by `train.py fit`, or start a new run without it."))
    if found != expected:
        raise CheckpointMismatchError(
            advice(f"The checkpoint{source} holds {found}, not {expected}: load it with the model class that wrote "
            f"it (`--model {found}`, or its preset), or start a new run without `--ckpt_path`."))


def refuse_nonfinite_weights(checkpoint: dict[str, Any], source: str = "") -> None:
    """Raise a :class:`CheckpointMismatchError` naming a non-finite tensor in ``checkpoint`` (written before
    the guard existed, or by hand: it would train, score or sample NaN)."""
    bad = next((name for name, tensor in _float_tensors(checkpoint) if not torch.isfinite(tensor).all()), None)
    if bad is not None:
        raise CheckpointMismatchError(
            f"The checkpoint{source} holds a non-finite value ({bad}): it cannot be continued, validated or "
            f"sampled. Pass an earlier checkpoint (an epoch=*.ckpt beside it) to `--ckpt_path`, or train anew.")


def check_checkpoint_fits(module: LightningModule, checkpoint: dict[str, Any],
                          source: str | None = None) -> dict[str, Any]:
    """Refuse a checkpoint of another model class, other layer shapes or non-finite values (``source``: `` PATH``,
    for messages; the trainer's by default); when fitting, make the configured optimiser settings replace the saved
    ones; return its ``gan_state``."""
    trainer = attached_trainer(module)
    if source is None:
        source = f" {trainer.ckpt_path}" if trainer is not None and trainer.ckpt_path else ""
    refuse_another_model(checkpoint, type(module).__name__, source)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointMismatchError(f"The checkpoint{source} holds no state_dict (no weights): it is damaged; pass "
                                      "another file to `--ckpt_path`, or start a new run without it.")
    refuse_nonfinite_weights(checkpoint, source)
    saved = checkpoint.get("hyper_parameters", {})
    for name, flag in _ARCHITECTURE_FLAGS.items():
        if name not in saved or name not in module.hparams:
            continue
        mine, theirs = module.hparams[name], saved[name]
        if name == "ema_decay":  # the decay may change; having an average or not changes the weights
            mine, theirs = mine is not None, theirs is not None
        elif name == "image_shape":
            mine, theirs = list(mine), list(theirs)
        if mine != theirs:
            raise CheckpointMismatchError(
                advice(f"The checkpoint{source} was trained with {name}={saved[name]!r}, but this run is configured "
                f"with {module.hparams[name]!r}: set {flag} to match it (the weights' shapes depend on it), or start "
                f"a new run without `--ckpt_path`."))
    if trainer is not None and trainer.state.fn == TrainerFn.FITTING:  # only a fit restores optimisers
        _prefer_configured_optimizer_settings(module, checkpoint, source)
    return checkpoint["gan_state"]


def _prefer_configured_optimizer_settings(module: LightningModule, checkpoint: dict[str, Any], source: str) -> None:
    """The configured optimiser settings replace the saved ones (`--model.lr` wins on a resume; the moments
    stay). Under a schedule a group keeps its place: its saved rate is rescaled by configured / saved
    initial rate, and the schedulers take the configured length."""
    saved_states = checkpoint.get("optimizer_states")
    if not saved_states:
        return
    configured = module.configure_optimizers()
    optimizers, schedulers = configured if isinstance(configured, tuple) else (configured, [])
    saved_schedulers = checkpoint.get("lr_schedulers") or []
    if schedulers and not saved_schedulers:
        raise CheckpointMismatchError(
            advice(f"The checkpoint{source} was trained without a learning-rate schedule, so it has no place in one: "
            f"continue it with `--model.lr_schedule none`, or start a new run with `--model.lr_schedule linear`."))
    elif schedulers:
        done, length = saved_schedulers[0].get("last_epoch", 0), saved_schedulers[0].get("total_iters", 0)
        if done >= length and schedulers[0].total_iters > done:
            raise CheckpointMismatchError(
                advice(f"The checkpoint{source} finished its linear decay at generator update {done}, where the "
                f"learning rates reached 0: continued to `--model.max_generator_steps {schedulers[0].total_iters}` "
                f"it would train at rate 0. Continue it with `--model.lr_schedule none` (the configured rates), or "
                f"start a new run with the longer schedule."))
    for index, (optimizer, saved) in enumerate(zip(optimizers, saved_states)):
        scheduled = index < len(schedulers)
        for group, saved_group in zip(optimizer.param_groups, saved.get("param_groups", [])):
            rate = group["lr"]  # without a schedule: the configured rate
            if scheduled and "initial_lr" in saved_group:
                rate = saved_group["lr"] * group["lr"] / saved_group["initial_lr"]
            saved_group.update({key: value for key, value in group.items() if key != "params"}, lr=rate)
        if scheduled and index < len(saved_schedulers):
            saved_schedulers[index].update(  # keys of torch's LRScheduler.state_dict (pinned by a test)
                base_lrs=list(schedulers[index].base_lrs), total_iters=schedulers[index].total_iters,
                _last_lr=[group["lr"] for group in saved["param_groups"]])
