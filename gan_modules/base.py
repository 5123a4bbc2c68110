"""What DCGAN, WGAN-GP and WGAN share: the two networks, the critic/generator schedule, the
step counters and sampling. Each family's file adds only its losses and optimisers."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gan_modules.continuation import align_epoch_with_data
from gan_modules.networks import Discriminator, Generator, Norm, resolution_levels


class GANModule(LightningModule):
    """A GAN trained with manual optimisation, one critic (discriminator) update per batch.

    One ``training_step`` is one critic update on a fresh real batch and a fresh fake batch. The
    generator is updated after every ``n_critic``-th critic update. ``critic_steps`` and
    ``generator_steps`` count the updates and are saved in checkpoints; Lightning's
    ``trainer.global_step`` counts the optimiser steps of both networks, i.e. their sum.

    Subclasses implement :meth:`critic_loss`, :meth:`generator_loss`, :meth:`score_metrics` and
    ``configure_optimizers`` (critic optimiser first, generator optimiser second).

    Args:
        image_shape: (C, H, W) of the images; linked from the datamodule's ``image_shape`` by the CLI.
        latent_dim: size of the latent vector z ~ N(0, I).
        generator_width: channels of the generator's last hidden layer (DCGAN's ``ngf``).
        critic_width: channels of the critic's first layer (DCGAN's ``ndf``).
        critic_norm: normalisation in the critic: ``batch``, ``layer`` or ``none``.
        spectral_norm: wrap every critic convolution in spectral normalisation.
        n_critic: critic updates per generator update.
        max_generator_steps: stop training after this many generator updates, the iteration count
            the papers report (``None``: let the trainer's ``max_epochs``/``max_steps`` decide).
        check_finite_every_n_steps: check that the losses and gradient norms stayed finite every this
            many batches, stopping with an error that names them (``None``: every
            ``log_every_n_steps``, when the logs wait for the device anyway; 0: only before
            checkpoints). Every checkpoint also checks every weight, buffer and optimiser state first,
            so none holds a NaN or an infinity; the values are watched on the device in between.
        ema_decay: keep an exponential moving average of the generator's weights and buffers,
            ``ema = decay * ema + (1 - decay) * weights`` after every generator update, and sample
            from it (grids, FID, ``sample``); ``None`` turns it off.
        channels_last: keep the networks' weights and the images in channels-last memory layout, which
            convolutions on recent GPUs (tensor cores, especially under mixed precision) run faster;
            the same results up to float rounding. Off by default: on CPUs it rarely pays.
        compile: ``torch.compile`` the generator and the critic (in place, so checkpoints keep their
            keys); the same results up to float rounding, after a compilation of tens of seconds at
            the first steps. WGAN-GP's penalty runs the critic uncompiled: torch.compile does not
            support the double backward it needs.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 100,
        generator_width: int = 64,
        critic_width: int = 64,
        critic_norm: Norm = "batch",
        spectral_norm: bool = False,
        n_critic: int = 1,
        max_generator_steps: int | None = None,
        check_finite_every_n_steps: int | None = None,
        ema_decay: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(n_critic=n_critic, latent_dim=latent_dim,
                        generator_width=generator_width, critic_width=critic_width)
        if max_generator_steps is not None:
            _check_positive(max_generator_steps=max_generator_steps)
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}: set `--model.ema_decay` (e.g. 0.999).")
        if check_finite_every_n_steps is not None and check_finite_every_n_steps < 0:
            raise ValueError("check_finite_every_n_steps must be >= 0: set `--model.check_finite_every_n_steps`.")
        channels, height, width = image_shape
        if height != width:
            raise ValueError(f"image_shape {tuple(image_shape)} is not square: set `--data.image_size`.")
        resolution_levels(height)  # raises the unsupported-size error before any layer is built
        # Also records the subclass's own arguments (lr, betas, ...): Lightning collects every
        # __init__ frame of the object.
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, channels, height, generator_width)
        self.discriminator = Discriminator(channels, height, critic_width, critic_norm, spectral_norm)
        if channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        # A submodule, so checkpoints save and restore it; it never takes gradients (DDP skips it).
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True)
            self.generator_ema.requires_grad_(False)
        if compile:  # lazily, at the first forward; nn.Module.compile keeps the state-dict keys
            self.generator.compile()
            self.discriminator.compile()
        self.critic_steps = 0
        self.generator_steps = 0
        self._critic_steps_at_last_generator_step = 0
        # The noise and the penalty's mixing coefficients come from this generator, one per rank,
        # saved in checkpoints: a resumed run draws what the uninterrupted run would have drawn,
        # whatever validation or the dataloaders take from the global RNG meanwhile.
        self._train_rng: torch.Generator | None = None
        self._train_rng_state: Tensor | None = None
        # Per network, (loss, gradient norm) * 0 summed over steps on the device: NaN once either was
        # non-finite. Read back only at the finiteness checks (_raise_if_nonfinite).
        self._finite_probes: dict[str, Tensor] = {}
        self._checked_through = 0  # critic step of the last finiteness check that passed
        self._generator_terms: dict[str, Tensor] = {}  # the latest generator update's, logged until the next
        # The newest checkpoint this module saved (checked finite) or was restored from: (how, critic step).
        self._last_checkpoint: tuple[str, int] | None = None

    # --- the algorithm -------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_images(batch)
        critic_opt, generator_opt = self.optimizers()
        critic_terms = self._critic_step(real, critic_opt)
        if self.critic_steps - self._critic_steps_at_last_generator_step >= self.critic_iterations():
            self._generator_terms = self._generator_step(real.shape[0], generator_opt)
        self._stop_at_generator_limit()
        if self._log_due():
            self._log_terms(critic_terms)
        every = self.hparams.check_finite_every_n_steps
        every = self.trainer.log_every_n_steps if every is None else every
        if every and self.critic_steps % every == 0:
            self._raise_if_nonfinite()

    def _critic_step(self, real: Tensor, optimizer: Any) -> dict[str, Tensor]:
        """Critic: minimise the family's critic loss on a real batch and a fresh fake batch."""
        with torch.no_grad():  # so the generator takes no part in the critic's graph
            fake = self.generator(self.noise(real.shape[0], self.train_rng))
        terms = self.critic_loss(real, fake)
        grad_norm = self._descend(optimizer, terms["loss"], "d")
        self.critic_steps += 1
        self.on_critic_step_end()
        return {"d_loss": terms.pop("loss"), **terms, "d_grad_norm": grad_norm}

    def _generator_step(self, batch_size: int, optimizer: Any) -> dict[str, Tensor]:
        """Generator: minimise the family's generator loss on a fresh fake batch."""
        # The critic's weights take no gradient (its input still does); cheaper than Lightning's
        # toggle_optimizer, which walks every optimiser's parameters twice per step.
        trainable = [p for p in self.discriminator.parameters() if p.requires_grad]  # frozen ones stay so
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            fake = self.generator(self.noise(batch_size, self.train_rng))
            terms = self.generator_loss(fake)
            grad_norm = self._descend(optimizer, terms["loss"], "g")
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
        self.generator_steps += 1
        self._critic_steps_at_last_generator_step = self.critic_steps
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        return {"g_loss": terms.pop("loss"), **terms, "g_grad_norm": grad_norm}

    def _descend(self, optimizer: Any, loss: Tensor, network: str) -> Tensor:
        """One optimiser step of ``network`` ("d" or "g") on ``loss``; returns the gradient norm."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        optimizer.step()
        # Measured after the step: under `16-mixed` the GradScaler has unscaled the gradients in place
        # by then, so this is the true norm in every precision.
        grad_norm = torch.nn.utils.get_total_norm(grads)
        # A finite loss can still have an overflowing gradient, which would poison the weights and the
        # optimiser's moments at this step; under a GradScaler it cannot (the scaler skips the step and
        # lowers its scale, a normal event), so there only the loss is watched. On the device: x * 0
        # is 0 for a finite x and NaN otherwise, a sum with a NaN stays NaN, and the checks read it back.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        watched = torch.zeros_like(grad_norm) if scaled else grad_norm
        probe = torch.stack([loss.detach().float(), watched.float()]).mul_(0)
        previous = self._finite_probes.get(network)
        self._finite_probes[network] = probe if previous is None else previous.add_(probe)
        return grad_norm

    # --- logging -------------------------------------------------------------------------------

    def _log_due(self) -> bool:
        """Whether this batch's metrics are written, as Lightning decides for its own: every
        ``log_every_n_steps`` batches (one batch is one critic step) and the last batch of a
        stopped run."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.critic_steps % every == 0 or self.trainer.should_stop)

    def _log_terms(self, critic_terms: dict[str, Tensor]) -> None:
        """Write the named terms to the loggers and ``trainer.callback_metrics``, in one read-back.

        Written directly, as Lightning writes a batch's metrics (same step, same ``epoch`` value),
        not through ``self.log``: Lightning's result collection costs about a millisecond of host
        time per key and call (benchmarks/step_overhead.py), ten times what the rest of the logging
        costs. ``callback_metrics`` still sees every value, so checkpoint monitors and early
        stopping work as usual.
        """
        terms = {**critic_terms, **self._generator_terms}  # the generator's from its latest update
        values = torch.stack([value.detach().float().reshape(()).to(self.device) for value in terms.values()])
        metrics = dict(zip((f"train/{name}" for name in terms), values.tolist()))  # waits for the device
        metrics.update({"train/critic_steps": float(self.critic_steps),
                        "train/generator_steps": float(self.generator_steps)})
        self.trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        if self.trainer.is_global_zero:
            step = self.critic_steps - 1  # Lightning's step for a batch's metrics: batches before it
            for logger in self.loggers:
                logger.log_metrics({**metrics, "epoch": float(self.current_epoch)}, step=step)

    # --- distributed training, randomness and failures -----------------------------------------

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy)

    @property
    def train_rng(self) -> torch.Generator:
        """The generator of the training noise on this rank, seeded ``PL_GLOBAL_SEED + rank``."""
        if self._train_rng is None or self._train_rng.device != self.device:
            rng = torch.Generator(device=self.device)
            if self._train_rng_state is not None:
                # A fresh, contiguous uint8 tensor of its own: checkpoints written before the fix hold
                # views with a storage offset, which set_state cannot take.
                rng.set_state(self._train_rng_state.detach().to("cpu", torch.uint8).clone().contiguous())
            elif self._train_rng is not None:
                rng.set_state(self._train_rng.get_state())
            else:
                rng.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) + self.global_rank)
            self._train_rng, self._train_rng_state = rng, None
        return self._train_rng

    def _raise_if_nonfinite(self) -> None:
        """Raise on every rank together if any rank saw a non-finite loss or gradient norm since the
        last check (one read-back from the device)."""
        names = [f"train/{network}_{what}" for network in ("d", "g") for what in ("loss", "grad_norm")]
        zeros = torch.zeros(2, device=self.device)
        probes = torch.cat([self._finite_probes.get(network, zeros).to(self.device) for network in ("d", "g")])
        bad = (~torch.isfinite(probes)).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        first, self._checked_through = self._checked_through + 1, self.critic_steps
        for name, is_bad in zip(names, bad.tolist()):
            if is_bad:
                when = (f"at critic step {self.critic_steps}" if first >= self.critic_steps else
                        f"between critic steps {first} and {self.critic_steps} (checked every "
                        f"`--model.check_finite_every_n_steps` batches; 1 stops at the first)")
                raise FloatingPointError(
                    f"{name} became non-finite {when} (epoch {self.current_epoch}): training stopped and no "
                    f"checkpoint was written after it. {self._last_good_checkpoint()} "
                    f"Lower `--model.lr`, or for WGAN-GP check `--model.gp_weight`."
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
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        bad = bad.bool().tolist()
        if any(bad):
            local = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
            where = local[0] if local else next(name for (name, _), b in zip(named, bad) if b)
            raise FloatingPointError(
                f"The state to be checkpointed at critic step {self.critic_steps} (epoch {self.current_epoch}) "
                f"holds a non-finite value ({where}): training stopped and this checkpoint was not written. "
                f"{self._last_good_checkpoint()} Lower `--model.lr`, or for WGAN-GP check `--model.gp_weight`."
            )

    def _last_good_checkpoint(self) -> str:
        """Which checkpoint holds a good state, truthfully: every checkpoint saved by this module was
        checked finite, so the newest one saved or loaded is good."""
        if self._last_checkpoint is None:
            return ("No checkpoint was written before it, so there is no good state to resume from: "
                    "start again without `--ckpt_path`.")
        how, step = self._last_checkpoint
        if how == "loaded":
            path = self.trainer.ckpt_path if self._trainer is not None else None
            return (f"No checkpoint was written after the one this run resumed from ({path}, critic step {step}), "
                    f"which holds a finite state: resume from it again with `--ckpt_path {path}`.")
        path = getattr(self.trainer.strategy.checkpoint_io, "last_saved_path", None) if self._trainer else None
        where = f" ({path})" if path else ""  # only rank 0 writes, so only rank 0 knows the file
        return (f"The newest checkpoint{where}, from critic step {step}, holds a finite state: resume from it with "
                f"`--ckpt_path {path or 'last'}`.")

    def critic_scores(self, real: Tensor, fake: Tensor, together: bool | None = None) -> tuple[Tensor, Tensor]:
        """The critic's scores of ``real`` and ``fake``, (N, 1) each.

        Without batch norm each sample's score is independent of the rest of its batch, so on an
        accelerator both go through one forward of the concatenated batch (one launch of every layer
        instead of two). With batch norm they go separately, each batch normalised by its own
        statistics, as DCGAN trains; and on a CPU too, where the single forward measured 10-20 %
        slower at the presets' widths (twice the activations per layer fall out of the caches) though
        faster for tiny networks. With spectral norm a single forward is one power iteration per
        critic update instead of two.

        Args:
            real: real images (N, C, H, W).
            fake: generated images (N, C, H, W).
            together: force one forward (``True``) or two (``False``); ``None`` decides as above.
        """
        if together is None:
            together = self.hparams.critic_norm != "batch" and real.device.type != "cpu"
        if not together:
            return self.discriminator(real), self.discriminator(fake)
        scores = self.discriminator(torch.cat([real, fake]))
        return scores[: real.shape[0]], scores[real.shape[0]:]

    def critic_iterations(self) -> int:
        """Critic updates due before the next generator update (constant ``n_critic`` here)."""
        return self.hparams.n_critic

    def on_critic_step_end(self) -> None:
        """Called after every critic optimiser step (WGAN clips the weights here)."""

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The critic's objective on a real and a fake batch: ``loss`` (what it minimises) and named
        terms (scalars such as ``real_score``, ``fake_score``), each logged as ``train/<name>``
        (the loss as ``train/d_loss``)."""
        raise NotImplementedError

    def generator_loss(self, fake: Tensor) -> dict[str, Tensor]:
        """The generator's objective on a fake batch: ``loss`` (logged as ``train/g_loss``) and any
        named terms."""
        raise NotImplementedError

    def score_metrics(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        """Held-out metrics of the critic's scores, logged under ``val/``."""
        raise NotImplementedError

    # --- validation and sampling ---------------------------------------------------------------

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_images(batch)
        fake = self.sample(real.shape[0])
        metrics = self.score_metrics(self.discriminator(real), self.discriminator(fake))
        self.log_dict({f"val/{name}": value for name, value in metrics.items()}, sync_dist=True)

    def on_train_start(self) -> None:
        # A run continued with the limit it already reached: stop before any batch, not after one.
        self._stop_at_generator_limit()

    def _stop_at_generator_limit(self) -> None:
        limit = self.hparams.max_generator_steps
        if limit is not None and self.generator_steps >= limit:
            self.trainer.should_stop = True

    def on_validation_end(self) -> None:
        # DDP gives every rank rank 0's buffers (batch-norm statistics, spectral-norm vectors, the
        # EMA's) at each training forward, except the first after a validation, whose no-grad
        # forwards switch that off once. A run resumed after a validation starts from rank 0's
        # buffers (the checkpoint's), so the uninterrupted run must too: broadcast them here.
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for buffer in self.buffers():
                dist.broadcast(buffer, src=0)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Latent vectors z ~ N(0, I), shape (n, latent_dim), on the module's device.

        Args:
            n: how many.
            generator: a seeded ``torch.Generator`` for reproducible noise (any device).
        """
        device = generator.device if generator is not None else self.device
        z = torch.randn(n, self.hparams.latent_dim, device=device, generator=generator)
        return z.to(self.device)

    @torch.no_grad()
    def sample(self, n: int, noise: Tensor | None = None) -> Tensor:
        """``n`` images in [-1, 1], shape (n, C, H, W), from the generator in eval mode (its moving
        average when ``ema_decay`` is set).

        Args:
            n: how many images.
            noise: latent vectors (n, latent_dim) to use instead of fresh ones.
        """
        z = self.noise(n) if noise is None else noise.to(self.device)
        generator = self.sampling_generator
        was_training = generator.training
        generator.eval()
        try:
            return generator(z)
        finally:
            generator.train(was_training)

    def _real_images(self, batch: Any) -> Tensor:
        real = batch[0] if isinstance(batch, (tuple, list)) else batch
        if tuple(real.shape[1:]) != tuple(self.hparams.image_shape):
            raise ValueError(
                f"The data gives images of shape {tuple(real.shape[1:])} but {type(self).__name__} was "
                f"built for image_shape {tuple(self.hparams.image_shape)}. Let train.py link "
                f"`data.image_shape` to the model, or set `--model.image_shape` to match the data."
            )
        return real.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else real

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._raise_if_nonfinite()  # never save a broken state
            self._raise_if_state_nonfinite(checkpoint)
        self._last_checkpoint = ("saved", self.critic_steps)
        checkpoint["gan_state"] = {
            "model": type(self).__name__,
            "critic_steps": self.critic_steps,
            "generator_steps": self.generator_steps,
            "critic_steps_at_last_generator_step": self._critic_steps_at_last_generator_step,
            "train_rng_states": self._gather_rng_states(),
        }

    def _gather_rng_states(self) -> list[Tensor]:
        """Every rank's training-RNG state (called on all ranks, as checkpoints are saved)."""
        state = self.train_rng.get_state()
        if self._trainer is None or self.trainer.world_size == 1:
            return [state]
        gathered = self.all_gather(state.to(self.device))  # (world_size, state_bytes)
        # Clones: on a CPU each row is a view into one storage, torch.save keeps it so, and
        # Generator.set_state on a view with a storage offset crashes libtorch.
        return [row.cpu().clone() for row in gathered]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counters and RNG states, after checking that the checkpoint fits this model.

        The model is what the configuration says (the command line wins; nothing named in a
        checkpoint is imported): a checkpoint of another class, or of other layer shapes, is refused
        by name, and the configured optimiser settings (``lr``, ``betas``, ...) replace the saved ones.
        """
        source = f" {self.trainer.ckpt_path}" if self._trainer is not None and self.trainer.ckpt_path else ""
        state = checkpoint.get("gan_state")
        if state is None or state["model"] != type(self).__name__:
            raise mismatch_error(state["model"] if state else None, type(self).__name__, source)
        self._check_architecture(checkpoint.get("hyper_parameters", {}), source)
        self._prefer_configured_optimizer_settings(checkpoint)
        self.critic_steps = state["critic_steps"]
        self.generator_steps = state["generator_steps"]
        self._last_checkpoint = ("loaded", self.critic_steps)
        self._checked_through = self.critic_steps  # every checkpoint was checked finite when saved
        self._critic_steps_at_last_generator_step = state["critic_steps_at_last_generator_step"]
        rng_states = state.get("train_rng_states", [])
        rank = self.global_rank if self._trainer is not None else 0
        if len(rng_states) > rank:
            self._train_rng, self._train_rng_state = None, rng_states[rank]
        if self._trainer is not None:
            # Before Lightning restores its loops from the same dict: a run stopped inside an epoch
            # continues with the rest of that epoch, not with the next one.
            align_epoch_with_data(checkpoint, self.trainer)

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
                    f"The checkpoint{source} was trained with {name}={saved[name]!r}, but this run is configured with "
                    f"{self.hparams[name]!r}: set {flag} to match it (the weights' shapes depend on it), or start a "
                    f"new run without `--ckpt_path`."
                )

    def _prefer_configured_optimizer_settings(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores each optimiser's saved param_groups, learning rate included, which would
        # silently override `--model.lr` on a resumed run: the configured settings win, the moments stay.
        saved_states = checkpoint.get("optimizer_states")
        if not saved_states or self._trainer is None:
            return
        configured = self.configure_optimizers()
        configured = [o for o in (configured if isinstance(configured, (list, tuple)) else [configured])
                      if isinstance(o, torch.optim.Optimizer)]
        for optimizer, saved in zip(configured, saved_states):
            for group, saved_group in zip(optimizer.param_groups, saved.get("param_groups", [])):
                saved_group.update({key: value for key, value in group.items() if key != "params"})

    @property
    def sampling_generator(self) -> nn.Module:
        """The network :meth:`sample` runs: the moving average when ``ema_decay`` is set."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator


def check_strategy(strategy: Any) -> None:
    """Raise a clear error for a strategy the GAN modules cannot train with (two optimisers, manual
    optimisation, counters and RNG states kept in the module)."""
    if isinstance(strategy, DDPStrategy):
        # Pinned by tests/test_lightning_internals.py: private attributes of Lightning's DDPStrategy.
        if getattr(strategy, "_start_method", "popen") != "popen":
            raise ValueError(
                f"DDP with processes started by {strategy._start_method} (ddp_spawn, ddp_fork, ddp_notebook) is not "
                f"supported: it hands the run back to the first process by pickling, and only the weights "
                f"come back. Use `--trainer.strategy ddp_find_unused_parameters_true`, which starts one process "
                f"per device as a script (or launch with torchrun or SLURM)."
            )
        kwargs = strategy._ddp_kwargs
        if not kwargs.get("find_unused_parameters", False) or kwargs.get("static_graph", False):
            raise ValueError(
                "DDP must detect unused parameters to train a GAN: each of the two optimiser steps "
                "leaves the other network without gradients. Use `--trainer.strategy "
                "ddp_find_unused_parameters_true` (as configs/trainer/ddp.yaml does), or the "
                "strategy's `find_unused_parameters: true` without `static_graph`."
            )
        if strategy._layer_sync is not None and strategy.root_device.type != "cuda":
            raise ValueError(
                "`--trainer.sync_batchnorm true` needs GPUs (torch's SyncBatchNorm runs on CUDA only): "
                "drop it on CPUs, where batch-norm statistics then stay per device."
            )
    elif not isinstance(strategy, SingleDeviceStrategy):
        raise ValueError(
            f"{type(strategy).__name__} is not supported by the GAN modules (two optimisers, manual "
            f"optimisation): use one device or `--trainer.strategy ddp_find_unused_parameters_true`."
        )


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the configured model (another class, other layer shapes)."""


def mismatch_error(found: str | None, expected: str, source: str = "") -> CheckpointMismatchError:
    """The error for a checkpoint of model class ``found`` (``None``: not this project's) given to ``expected``."""
    if found is None:
        return CheckpointMismatchError(
            f"The checkpoint{source} was not written by this project's GAN modules: pass `--ckpt_path` a "
            f"checkpoint written by `train.py fit`, or start a new run without it.")
    return CheckpointMismatchError(
        f"The checkpoint{source} holds {found}, not {expected}: load it with the model class that wrote it "
        f"(`--model {found}`, or its preset), or start a new run without `--ckpt_path`.")


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


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}: set `--model.{name}` to 1 or more.")
