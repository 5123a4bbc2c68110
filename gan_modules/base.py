"""What DCGAN, WGAN-GP and WGAN share: the two networks, the critic/generator schedule, the
step counters and sampling. Each family's file adds only its losses and optimisers."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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
        check_finite_every_n_steps: check that the losses are finite every this many batches (and
            before every checkpoint), stopping with an error naming the step; each check waits for
            the device. 0 checks only before checkpoints.
        ema_decay: keep an exponential moving average of the generator's weights and buffers,
            ``ema = decay * ema + (1 - decay) * weights`` after every generator update, and sample
            from it (grids, FID, ``sample``); ``None`` turns it off.
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
        check_finite_every_n_steps: int = 1,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        _check_positive(n_critic=n_critic, latent_dim=latent_dim,
                        generator_width=generator_width, critic_width=critic_width)
        if max_generator_steps is not None:
            _check_positive(max_generator_steps=max_generator_steps)
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}: set `--model.ema_decay` (e.g. 0.999).")
        if check_finite_every_n_steps < 0:
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
        # A submodule, so checkpoints save and restore it; it never takes gradients (DDP skips it).
        self.generator_ema: AveragedModel | None = None
        if ema_decay is not None:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True)
            self.generator_ema.requires_grad_(False)
        self.critic_steps = 0
        self.generator_steps = 0
        self._critic_steps_at_last_generator_step = 0
        # The noise and the penalty's mixing coefficients come from this generator, one per rank,
        # saved in checkpoints: a resumed run draws what the uninterrupted run would have drawn,
        # whatever validation or the dataloaders take from the global RNG meanwhile.
        self._train_rng: torch.Generator | None = None
        self._train_rng_state: Tensor | None = None
        self._first_nonfinite = {"train/d_loss": None, "train/g_loss": None}

    # --- the algorithm -------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_images(batch)
        critic_opt, generator_opt = self.optimizers()
        self._critic_step(real, critic_opt)
        if self.critic_steps - self._critic_steps_at_last_generator_step >= self.critic_iterations():
            self._generator_step(real.shape[0], generator_opt)
        self.log_dict(
            {"train/critic_steps": float(self.critic_steps), "train/generator_steps": float(self.generator_steps)},
            on_step=True,
        )
        every = self.hparams.check_finite_every_n_steps
        if every and self.critic_steps % every == 0:
            self._raise_if_nonfinite()
        limit = self.hparams.max_generator_steps
        if limit is not None and self.generator_steps >= limit:
            self.trainer.should_stop = True

    def _critic_step(self, real: Tensor, optimizer: Any) -> None:
        """Critic: minimise the family's critic loss on a real batch and a fresh fake batch."""
        with torch.no_grad():
            fake = self.generator(self.noise(real.shape[0], self.train_rng))
        with self.toggled_optimizer(optimizer):  # the generator's parameters stop requiring grad
            self._descend(optimizer, self.critic_loss(real, fake), "d")
        self.critic_steps += 1
        self.on_critic_step_end()

    def _generator_step(self, batch_size: int, optimizer: Any) -> None:
        """Generator: minimise the family's generator loss on a fresh fake batch."""
        with self.toggled_optimizer(optimizer):  # the critic's parameters stop requiring grad
            fake = self.generator(self.noise(batch_size, self.train_rng))
            self._descend(optimizer, self.generator_loss(fake), "g")
        self.generator_steps += 1
        self._critic_steps_at_last_generator_step = self.critic_steps
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)

    def _descend(self, optimizer: Any, loss: Tensor, network: str) -> None:
        """One optimiser step of ``network`` ("d" or "g") on ``loss``; logs the gradient norm."""
        self._track_finite(f"train/{network}_loss", loss)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # A tensor, not a float: Lightning reads it only every log_every_n_steps batches.
        self.log(f"train/{network}_grad_norm", torch.nn.utils.get_total_norm(grads))
        optimizer.step()

    # --- distributed training, randomness and failures -----------------------------------------

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
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

    @property
    def train_rng(self) -> torch.Generator:
        """The generator of the training noise on this rank, seeded ``PL_GLOBAL_SEED + rank``."""
        if self._train_rng is None or self._train_rng.device != self.device:
            rng = torch.Generator(device=self.device)
            if self._train_rng_state is not None:
                rng.set_state(self._train_rng_state)
            elif self._train_rng is not None:
                rng.set_state(self._train_rng.get_state())
            else:
                rng.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) + self.global_rank)
            self._train_rng, self._train_rng_state = rng, None
        return self._train_rng

    def _track_finite(self, name: str, loss: Tensor) -> None:
        # Remember the first critic step with a non-finite loss without waiting for the device.
        step = torch.full((), self.critic_steps + 1, device=loss.device)
        first = self._first_nonfinite[name]
        first = torch.full((), -1, device=loss.device) if first is None else first
        self._first_nonfinite[name] = torch.where((first < 0) & ~torch.isfinite(loss.detach()), step, first)

    def _raise_if_nonfinite(self) -> None:
        """Raise on every rank together if any rank saw a non-finite loss since training started."""
        firsts = [self._first_nonfinite[name] for name in self._first_nonfinite]
        flags = torch.stack([torch.as_tensor(f if f is not None else -1, device=self.device) for f in firsts])
        flags = self.trainer.strategy.reduce(flags.float(), reduce_op="max") if self.trainer.world_size > 1 else flags
        for name, step in zip(self._first_nonfinite, flags.tolist()):
            if step >= 0:
                raise FloatingPointError(
                    f"{name} became non-finite at critic step {int(step)} (epoch {self.current_epoch}): "
                    f"training stopped and no checkpoint was written after it; the last checkpoint holds "
                    f"the last good state. Lower `--model.lr`, or for WGAN-GP check `--model.gp_weight`, "
                    f"and resume with `--ckpt_path last`."
                )

    def critic_iterations(self) -> int:
        """Critic updates due before the next generator update (constant ``n_critic`` here)."""
        return self.hparams.n_critic

    def on_critic_step_end(self) -> None:
        """Called after every critic optimiser step (WGAN clips the weights here)."""

    def critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def generator_loss(self, fake: Tensor) -> Tensor:
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
        generator = self.generator_ema.module if self.generator_ema is not None else self.generator
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
        return real

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._raise_if_nonfinite()  # never save a broken state
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
        return [row.cpu() for row in gathered]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("gan_state")
        if state is None or state["model"] != type(self).__name__:
            found = state["model"] if state else "no GAN model of this project"
            raise ValueError(
                f"This checkpoint holds {found}, not {type(self).__name__}: load it with the model "
                f"class that wrote it (`--model {found}`), or start a new run without `--ckpt_path`."
            )
        self.critic_steps = state["critic_steps"]
        self.generator_steps = state["generator_steps"]
        self._critic_steps_at_last_generator_step = state["critic_steps_at_last_generator_step"]
        rng_states = state.get("train_rng_states", [])
        rank = self.global_rank if self._trainer is not None else 0
        if len(rng_states) > rank:
            self._train_rng, self._train_rng_state = None, rng_states[rank]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}: set `--model.{name}` to 1 or more.")
