"""What keeps a GAN run honest and resumable, apart from the algorithm in :mod:`gan_modules.base`.

- **Randomness per rank**: the training noise and the penalty's mixing coefficients come from one
  ``torch.Generator`` per rank, saved in every checkpoint, so a resumed run draws what the
  uninterrupted run would have drawn.
- **The finiteness guard**: every step's losses are kept on the device and read back only at the
  checks, with the gradient norms of each network's latest update; no checkpoint is written with a
  non-finite weight, buffer or optimiser state.
- **Refusals**: strategies the modules cannot train with, and checkpoints of another model class or
  of other layer shapes, each stopped by one error that names the flag to change.

The private Lightning attributes read here are pinned by tests/test_lightning_internals.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from gan_modules.checkpoint_io import read_checkpoint
from gan_modules.flags import advice

# The values the finiteness checks watch, by the names they are logged under: each network's loss at
# every step and the gradient norms of its latest update.
_WATCHED = ("train/critic_loss", "train/critic_grad_norm", "train/generator_loss", "train/generator_grad_norm")
_FOLD_AT = 256  # watched losses kept per network before they are folded into one

# Hyperparameters that decide the shapes of the weights, with the flag that sets each.
_ARCHITECTURE_FLAGS = {
    "image_shape": "`--data.image_size` (and the data's channels)",
    "latent_dim": "`--model.latent_dim`",
    "generator_width": "`--model.generator_width`",
    "critic_width": "`--model.critic_width`",
    "critic_norm": "`--model.critic_norm`",
    "spectral_norm": "`--model.spectral_norm`",
    "ema_decay": "`--model.ema_decay` (an EMA generator or none)",
}

_ADVICE = ("Lower `--model.lr` (or `--model.critic_lr`/`--model.generator_lr`), or for WGAN-GP check "
           "`--model.gp_weight`.")


class RunIntegrity(LightningModule):
    """The run-integrity half of :class:`~gan_modules.base.GANModule`; see the module docstring.

    The algorithm calls :meth:`watch_finite` after each optimiser step and :meth:`check_finite_if_due`
    after each batch; its checkpoint hooks call :meth:`guard_checkpoint_save`,
    :meth:`check_checkpoint_fits` and :meth:`restore_run_state`. Expects the hyperparameters
    ``check_finite_every_n_steps`` and the keys of ``_ARCHITECTURE_FLAGS``, ``critic_steps``, and
    ``gradient_norms()`` (the ``critic_grad_norm`` and ``generator_grad_norm`` of each network's
    latest update).
    """

    @property
    def attached_trainer(self) -> Any | None:
        """The Trainer this module is attached to, or ``None`` (outside a fit, validation or test)."""
        try:
            return self.trainer  # Lightning raises a RuntimeError when no Trainer is attached
        except RuntimeError:
            return None

    def __init__(self) -> None:
        super().__init__()
        self._train_rng: torch.Generator | None = None
        self._train_rng_state: Tensor | None = None  # a saved state, installed at the first use
        # Each network's losses since the last finiteness check, on the device, by logged name.
        self._watched_losses: dict[str, list[Tensor]] = {}
        self._checked_through = 0  # critic step of the last finiteness check that passed
        # The newest checkpoint this module saved (checked finite) or was restored from: (how, critic step).
        self._last_checkpoint: tuple[str, int] | None = None

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy)

    # --- randomness per rank -------------------------------------------------------------------

    @property
    def train_rng(self) -> torch.Generator:
        """The generator of the training noise on this rank, seeded ``PL_GLOBAL_SEED + rank``.

        It continues from a checkpoint's state (or, when the module moves, from its own on the old
        device). A state of another device type's generator (CPU and CUDA generators differ in
        algorithm and state) cannot be installed: the generator is then seeded from a hash of that
        state, with a warning, so a run continued on another kind of device still draws the same
        noise each time it is continued from that checkpoint, though not the noise the original
        device would have drawn.
        """
        if self._train_rng is None or self._train_rng.device != self.device:
            rng = torch.Generator(device=self.device)
            if self._train_rng_state is not None:
                _continue_from(rng, self._saved_rng_state(), "the checkpoint")
            elif self._train_rng is not None:
                _continue_from(rng, self._train_rng.get_state(), f"the module's {self._train_rng.device} generator")
            else:
                rng.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) + self.global_rank)
            self._train_rng, self._train_rng_state = rng, None
        return self._train_rng

    def _saved_rng_state(self) -> Tensor:
        """The checkpoint's state, not installed yet, as a fresh, contiguous uint8 CPU tensor of its
        own: checkpoints written before the fix hold views with a storage offset, which
        ``Generator.set_state`` cannot take."""
        return self._train_rng_state.detach().to("cpu", torch.uint8).clone().contiguous()

    def _gather_rng_states(self) -> list[Tensor]:
        """Every rank's training-RNG state (called on all ranks, as checkpoints are saved).

        The state of the generator that drew the noise (or the checkpoint's, not drawn from yet),
        wherever the module is now: Lightning moves it to the CPU after a GPU fit, and a checkpoint
        saved then holds the GPU generator's state, not one converted to the CPU.
        """
        if self._train_rng is not None:
            state = self._train_rng.get_state()
        elif self._train_rng_state is not None:
            state = self._saved_rng_state()
        else:
            state = self.train_rng.get_state()
        if self.attached_trainer is None or self.trainer.world_size == 1:
            return [state]
        gathered = self.all_gather(state.to(self.device))  # (world_size, state_bytes)
        # Clones: on a CPU each row is a view into one storage, torch.save keeps it so, and
        # Generator.set_state on a view with a storage offset crashes libtorch.
        return [row.cpu().clone() for row in gathered]

    def on_validation_end(self) -> None:
        # DDP gives every rank rank 0's buffers (batch-norm statistics, spectral-norm vectors, the
        # EMA's) at each training forward, except the first after a validation, whose no-grad
        # forwards switch that off once. A run resumed after a validation starts from rank 0's
        # buffers (the checkpoint's), so the uninterrupted run must too: broadcast them here.
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for buffer in self.buffers():
                dist.broadcast(buffer, src=0)

    # --- the finiteness guard ------------------------------------------------------------------

    def watch_finite(self, network: str, loss: Tensor) -> None:
        """Keep this step's loss of ``network`` (``critic`` or ``generator``) for the next finiteness
        check, on the device, without a read-back."""
        losses = self._watched_losses.setdefault(f"train/{network}_loss", [])
        losses.append(loss.detach())
        if len(losses) >= _FOLD_AT:  # checks far apart (or only at checkpoints) keep a bounded list
            # x * 0 is 0 for a finite x and NaN otherwise, and a sum with a NaN stays NaN.
            losses[:] = [torch.stack(losses).float().mul_(0).sum()]

    def check_finite_if_due(self) -> None:
        """Run the finiteness check every ``check_finite_every_n_steps`` critic steps (``None``: at
        the log interval, when the logs wait for the device anyway)."""
        every = self.hparams.check_finite_every_n_steps
        every = self.trainer.log_every_n_steps if every is None else every
        if every and self.critic_steps % every == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        """Raise on every rank together if any rank saw a non-finite loss since the last check, or a
        non-finite gradient norm of a network's latest update (one read-back from the device).

        The losses of every step are watched, the gradients at the checks only: a finite loss with a
        non-finite gradient at a step between two checks leaves non-finite weights (Adam's and
        RMSprop's updates are then NaN), so the next step's loss is non-finite and the next check
        stops the run. Under a GradScaler a non-finite gradient is a normal event (the scaler skips
        the step and lowers its scale), so there only the losses are watched.
        """
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        norms = {} if scaled else {f"train/{name}": norm for name, norm in self.gradient_norms().items()}
        names, values = [], []  # the same on every rank: they step in lockstep
        for name in _WATCHED:
            watched = [*self._watched_losses.get(name, []), *([norms[name]] if name in norms else [])]
            names += [name] * len(watched)
            values += watched
        self._watched_losses = {}
        first, self._checked_through = self._checked_through + 1, self.critic_steps
        if not values:
            return
        bad = torch.isfinite(torch.stack(values)).logical_not_()  # the stack promotes half-precision losses
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad.float(), reduce_op="max")
        for name, is_bad in zip(names, bad.tolist()):
            if is_bad:
                when = (f"at critic step {self.critic_steps}" if first >= self.critic_steps else
                        f"between critic steps {first} and {self.critic_steps} (checked every "
                        f"`--model.check_finite_every_n_steps` batches; 1 stops at the first)")
                raise FloatingPointError(
                    f"{name} became non-finite {when} (epoch {self.current_epoch}): training stopped and no "
                    f"checkpoint was written after it. {self._last_good_checkpoint()} {_ADVICE}"
                )

    def _raise_if_state_nonfinite(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save weights, buffers or optimiser states that hold NaN or infinity.

        One ``isfinite`` reduction per tensor on the device and one read-back per save; under DDP
        the verdict is reduced over the ranks (batch-norm buffers differ per rank), so every rank
        raises together.
        """
        named = [(f"state_dict.{key}", value) for key, value in checkpoint.get("state_dict", {}).items()]
        for index, optimizer_state in enumerate(checkpoint.get("optimizer_states", [])):
            for param_id, param_state in optimizer_state.get("state", {}).items():
                named += [(f"optimizer_states[{index}].state[{param_id}].{key}", value)
                          for key, value in param_state.items()]
        named = [(name, t) for name, t in named if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(t).all().to(self.device) for _, t in named])
        bad = (~finite).float()
        if self.attached_trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        bad = bad.bool().tolist()
        if any(bad):
            local = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
            where = local[0] if local else next(name for (name, _), b in zip(named, bad) if b)
            raise FloatingPointError(
                f"The state to be checkpointed at critic step {self.critic_steps} (epoch {self.current_epoch}) "
                f"holds a non-finite value ({where}): training stopped and this checkpoint was not written. "
                f"{self._last_good_checkpoint()} {_ADVICE}"
            )

    def _last_good_checkpoint(self) -> str:
        """Which checkpoint holds a good state, truthfully: every checkpoint saved by this module was
        checked finite, so the newest one saved or loaded is good."""
        if self._last_checkpoint is None:
            return ("No checkpoint was written before it, so there is no good state to resume from: "
                    "start again without `--ckpt_path`.")
        how, step = self._last_checkpoint
        if how == "loaded":
            path = self.trainer.ckpt_path if self.attached_trainer is not None else None
            return (f"No checkpoint was written after the one this run resumed from ({path}, critic step {step}), "
                    f"which holds a finite state: resume from it again with `--ckpt_path {path}`.")
        path = getattr(self.trainer.strategy.checkpoint_io, "last_saved_path", None) if self.attached_trainer is not None else None
        where = f" ({path})" if path else ""  # only rank 0 writes, so only rank 0 knows the file
        return (f"The newest checkpoint{where}, from critic step {step}, holds a finite state: resume from it with "
                f"`--ckpt_path {path or 'last'}`.")

    # --- checkpoints ---------------------------------------------------------------------------

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, refusing first, by name, a checkpoint of another model
        class (its hyperparameters would otherwise reach this class's ``__init__`` as unknown arguments)."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and Path(checkpoint_path).is_file():
            refuse_another_model(read_checkpoint(checkpoint_path), cls.__name__, f" {checkpoint_path}")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def guard_checkpoint_save(self, checkpoint: dict[str, Any]) -> list[Tensor]:
        """Refuse a non-finite state while fitting; returns every rank's RNG state to save."""
        if self.attached_trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._raise_if_nonfinite()
            self._raise_if_state_nonfinite(checkpoint)
        self._last_checkpoint = ("saved", self.critic_steps)
        return self._gather_rng_states()

    def check_checkpoint_fits(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Refuse a checkpoint of another model class or of other layer shapes; make the configured
        optimiser settings replace the saved ones. Returns the checkpoint's ``gan_state``.

        The model is what the configuration says (the command line wins; nothing named in a
        checkpoint is imported).
        """
        source = self._checkpoint_source()
        refuse_another_model(checkpoint, type(self).__name__, source)
        state = checkpoint["gan_state"]
        self._check_architecture(checkpoint.get("hyper_parameters", {}), source)
        self._prefer_configured_optimizer_settings(checkpoint)
        return state

    def _checkpoint_source(self) -> str:
        """`` PATH`` of the checkpoint being loaded, for messages (empty outside a Trainer)."""
        return f" {self.trainer.ckpt_path}" if self.attached_trainer is not None and self.trainer.ckpt_path else ""

    def restore_run_state(self, state: dict[str, Any]) -> None:
        """Install this rank's saved RNG state; the checkpoint counts as checked finite."""
        self._last_checkpoint = ("loaded", self.critic_steps)
        self._checked_through = self.critic_steps  # every checkpoint was checked finite when saved
        rng_states = state.get("train_rng_states", [])
        rank = self.global_rank if self.attached_trainer is not None else 0
        if len(rng_states) > rank:
            self._train_rng, self._train_rng_state = None, rng_states[rank]

    def _check_architecture(self, saved: dict[str, Any], source: str) -> None:
        """Refuse, by flag, a configured value that would change the shapes of the saved weights."""
        for name, flag in _ARCHITECTURE_FLAGS.items():
            if name not in saved or name not in self.hparams:
                continue
            mine, theirs = self.hparams[name], saved[name]
            if name == "ema_decay":  # the decay may change; having an average or not changes the weights
                mine, theirs = mine is not None, theirs is not None
            elif name == "image_shape":
                mine, theirs = list(mine), list(theirs)
            if mine != theirs:
                raise CheckpointMismatchError(
                    advice(f"The checkpoint{source} was trained with {name}={saved[name]!r}, but this run is configured with "
                    f"{self.hparams[name]!r}: set {flag} to match it (the weights' shapes depend on it), or start a "
                    f"new run without `--ckpt_path`.")
                )

    def _prefer_configured_optimizer_settings(self, checkpoint: dict[str, Any]) -> None:
        """Lightning restores each optimiser's saved param_groups, learning rate included, which would
        silently override `--model.lr` on a resumed run: the configured settings win, the moments stay.

        Under a learning-rate schedule a group keeps its place in the schedule: its saved rate is
        rescaled by configured / saved initial rate (the same rate when nothing changed), the
        schedulers' saved states with it, and they take the configured length (a run continued to a
        higher ``max_generator_steps`` decays linearly from its current rate to 0 at the new limit).
        Without a schedule (``lr_schedule none``) the configured rates apply as they are, whatever
        the checkpoint's schedule was. Only a fit restores optimisers; ``validate`` checks nothing here.
        """
        saved_states = checkpoint.get("optimizer_states")
        if not saved_states or self.attached_trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        configured = self.configure_optimizers()
        optimizers, schedulers = configured if isinstance(configured, tuple) else (configured, [])
        saved_schedulers = checkpoint.get("lr_schedulers") or []
        if schedulers:
            self._check_schedule_continues(saved_schedulers, schedulers)
        for index, (optimizer, saved) in enumerate(zip(optimizers, saved_states)):
            scheduled = index < len(schedulers)
            for group, saved_group in zip(optimizer.param_groups, saved.get("param_groups", [])):
                rate = group["lr"]  # without a schedule: the configured rate
                if scheduled and "initial_lr" in saved_group:
                    rate = saved_group["lr"] * group["lr"] / saved_group["initial_lr"]
                saved_group.update({key: value for key, value in group.items() if key != "params"})
                saved_group["lr"] = rate
            if scheduled and index < len(saved_schedulers):
                saved_schedulers[index].update(  # keys of torch's LRScheduler.state_dict (pinned by a test)
                    base_lrs=list(schedulers[index].base_lrs),
                    _last_lr=[group["lr"] for group in saved["param_groups"]],
                    total_iters=schedulers[index].total_iters,
                )

    def _check_schedule_continues(self, saved: list[dict[str, Any]], configured: list[Any]) -> None:
        """Refuse a configured schedule the checkpoint has no place in, or one it already finished."""
        source = self._checkpoint_source()
        if not saved:
            raise CheckpointMismatchError(
                advice(f"The checkpoint{source} was trained without a learning-rate schedule, so it has no place in one: "
                f"continue it with `--model.lr_schedule none`, or start a new run with `--model.lr_schedule linear`.")
            )
        done, length = saved[0].get("last_epoch", 0), saved[0].get("total_iters", 0)
        if done >= length and configured[0].total_iters > done:
            raise CheckpointMismatchError(
                advice(f"The checkpoint{source} finished its linear decay at generator update {done}, where the learning "
                f"rates reached 0: continued to `--model.max_generator_steps {configured[0].total_iters}` it would "
                f"train at rate 0. Continue it with `--model.lr_schedule none` (the configured rates), or start a "
                f"new run with the longer schedule.")
            )


def _continue_from(rng: torch.Generator, state: Tensor, source: str) -> None:
    """Install ``state`` (from ``source``, for the warning) in ``rng``; if it is another device type's
    (its size differs: 5056 bytes on a CPU, 16 on CUDA), seed ``rng`` from a hash of it and warn (see
    ``RunIntegrity.train_rng``). A damaged state of the right size still raises."""
    expected = rng.get_state().numel()
    if state.numel() == expected:
        rng.set_state(state)
        return
    digest = hashlib.sha256(state.numpy().tobytes()).digest()
    rng.manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # a seed below 2**63
    # Every rank is in the same case (one device type per run): rank 0 speaks for all.
    rank_zero_warn(
        f"The training noise's random state from {source} ({state.numel()} bytes) is another kind of "
        f"device's than this run's {rng.device.type} generator ({expected} bytes), so it cannot be "
        "continued: the noise is seeded from a hash of that state instead. Continuing from it on this "
        "kind of device is reproducible, but does not draw the noise the original device would have.")


def check_strategy(strategy: Any) -> None:
    """Raise a clear error for a strategy the GAN modules cannot train with (two optimisers, manual
    optimisation, counters and RNG states kept in the module)."""
    if isinstance(strategy, DDPStrategy):
        # Pinned by tests/test_lightning_internals.py: private attributes of Lightning's DDPStrategy.
        if getattr(strategy, "_start_method", "popen") != "popen":
            raise ValueError(
                advice(f"DDP with processes started by {strategy._start_method} (ddp_spawn, ddp_fork, ddp_notebook) is not "
                f"supported: it hands the run back to the first process by pickling, and only the weights "
                f"come back. Use `--trainer.strategy ddp_find_unused_parameters_true`, which starts one process "
                f"per device as a script (or launch with torchrun or SLURM).")
            )
        kwargs = strategy._ddp_kwargs
        if not kwargs.get("find_unused_parameters", False) or kwargs.get("static_graph", False):
            raise ValueError(
                advice("DDP must detect unused parameters to train a GAN: each of the two optimiser steps "
                "leaves the other network without gradients. Use `--trainer.strategy "
                "ddp_find_unused_parameters_true` (as configs/trainer/ddp.yaml does), or the "
                "strategy's `find_unused_parameters: true` without `static_graph`.")
            )
        if strategy._layer_sync is not None and strategy.root_device.type != "cuda":
            raise ValueError(
                advice("`--trainer.sync_batchnorm true` needs GPUs (torch's SyncBatchNorm runs on CUDA only): "
                "drop it on CPUs, where batch-norm statistics then stay per device.")
            )
    elif not isinstance(strategy, SingleDeviceStrategy):
        raise ValueError(
            advice(f"{type(strategy).__name__} is not supported by the GAN modules (two optimisers, manual "
            f"optimisation): use one device or `--trainer.strategy ddp_find_unused_parameters_true`.")
        )


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the configured model (another class, other layer shapes)."""


def saved_model_class(checkpoint: dict[str, Any]) -> str | None:
    """The name of the GAN module class that wrote ``checkpoint`` (``None``: not this project's)."""
    state = checkpoint.get("gan_state")
    found = state.get("model") if isinstance(state, dict) else None
    return found if isinstance(found, str) else None


def refuse_another_model(checkpoint: dict[str, Any], expected: str, source: str = "") -> None:
    """The one check of whether a checkpoint is a model's: raise unless ``expected`` (a class name) wrote it.

    Raises:
        CheckpointMismatchError: naming the class found, or that the file is not this project's.
    """
    found = saved_model_class(checkpoint)
    if found != expected:
        raise mismatch_error(found, expected, source)


def mismatch_error(found: str | None, expected: str, source: str = "") -> CheckpointMismatchError:
    """The error for a checkpoint of model class ``found`` (``None``: not this project's) given to ``expected``."""
    if found is None:
        return CheckpointMismatchError(
            advice(f"The checkpoint{source} was not written by this project's GAN modules: pass `--ckpt_path` a "
            f"checkpoint written by `train.py fit`, or start a new run without it."))
    return CheckpointMismatchError(
        advice(f"The checkpoint{source} holds {found}, not {expected}: load it with the model class that wrote it "
        f"(`--model {found}`, or its preset), or start a new run without `--ckpt_path`."))
