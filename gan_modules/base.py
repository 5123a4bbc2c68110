"""What DCGAN, WGAN-GP and WGAN share: the two networks, the critic/generator schedule, the
step counters and sampling, read as the algorithm box. Each family's file adds only its losses and
optimisers; the checks that keep a run honest (the finiteness guard, strategy and checkpoint checks)
live in :mod:`gan_modules.run_integrity`, which the module calls."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LinearLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gan_modules.augment import diff_augment, parse_policies
from gan_modules.checkpoint_io import read_checkpoint
from gan_modules.continuation import align_epoch_with_data
from gan_modules.flags import SettingError
from gan_modules.networks import Discriminator, Generator, Norm, resolution_levels
from gan_modules.run_integrity import (FiniteGuard, attached_trainer, check_checkpoint_fits, check_strategy,
                                       refuse_another_model)


class GANModule(LightningModule):
    """A GAN trained with manual optimisation, one critic (discriminator) update per batch.

    One ``training_step`` is one critic update on a fresh real batch and a fresh fake batch. The
    generator is updated after every ``n_critic``-th critic update. ``critic_steps`` and
    ``generator_steps`` count the updates and are saved in checkpoints; Lightning's
    ``trainer.global_step`` counts the optimiser steps of both networks, i.e. their sum. The training
    noise (and WGAN-GP's mixing coefficients) of each step come from ``train_rng``, seeded from
    (seed, rank, critic step), so a resumed run draws what the uninterrupted run drew.

    Subclasses implement :meth:`critic_loss`, :meth:`generator_loss`, :meth:`score_metrics` and
    :meth:`make_optimizer`, and declare the hyperparameter ``lr``. Their ``__init__``
    takes their own arguments and passes the shared ones below on by keyword (``**kwargs``), naming
    only those whose default they change: each shared argument is declared and documented here once,
    and the CLI's help shows it under every class with the class's default.

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
        check_finite_every_n_steps: every this many batches, check that every step's losses since
            the last check and the gradient norms of each network's latest update are finite, and
            stop naming the value if not (``None``: every ``log_every_n_steps``, when the logs wait
            for the device anyway; 0: only before checkpoints, which are never written non-finite).
        ema_decay: keep an exponential moving average of the generator's weights and buffers,
            ``ema = decay * ema + (1 - decay) * weights`` after every generator update, and sample
            from it (grids, FID, ``sample``); ``None`` turns it off.
        channels_last: channels-last memory layout for the weights and images, faster on recent GPUs
            (tensor cores); the same results up to float rounding. Rarely pays on CPUs.
        compile: ``torch.compile`` both networks in place (checkpoints keep their keys); the same results
            up to float rounding. WGAN-GP's penalty runs the critic uncompiled (no double backward).
        critic_lr: the critic's learning rate (``None``: ``lr``). Unequal rates are the two time-scale update
            rule (TTUR, Heusel et al., arXiv:1706.08500), configs/dcgan_celeba_ttur.yaml.
        generator_lr: the generator's learning rate (``None``: ``lr``).
        lr_schedule: ``none``: constant rates (the papers the presets reproduce); ``linear``: both
            rates decay linearly to 0 over ``max_generator_steps`` generator updates (which it
            needs), as the WGAN-GP authors' ResNet code does: after k generator updates each rate is
            ``rate * (1 - k / max_generator_steps)``. The schedulers step once per generator update,
            so ``n_critic`` does not change the schedule's length; their state is saved in checkpoints.
        augment: DiffAugment of all the critic sees: ``color``, ``translation``, ``cutout``, joined by commas.
    """

    def __init__(
        self,
        *,
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
        critic_lr: float | None = None,
        generator_lr: float | None = None,
        lr_schedule: Literal["none", "linear"] = "none",
        augment: str | None = None,
    ) -> None:
        super().__init__()
        _check_positive(n_critic=n_critic, latent_dim=latent_dim,
                        generator_width=generator_width, critic_width=critic_width)
        if max_generator_steps is not None:
            _check_positive(max_generator_steps=max_generator_steps)
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise SettingError(f"ema_decay must be in [0, 1), got {ema_decay}: set `--model.ema_decay` (e.g. 0.999).")
        for name, rate in (("critic_lr", critic_lr), ("generator_lr", generator_lr)):
            if rate is not None and not rate > 0:
                raise SettingError(f"{name} must be > 0, got {rate}: set `--model.{name}` (or leave it unset for "
                                   f"`lr`).")
        if lr_schedule == "linear" and max_generator_steps is None:
            raise SettingError("`--model.lr_schedule linear` decays the rates to 0 over `--model.max_generator_steps` "
                               "generator updates: set `--model.max_generator_steps`, or use `--model.lr_schedule "
                               "none`.")
        if check_finite_every_n_steps is not None and check_finite_every_n_steps < 0:
            raise SettingError("check_finite_every_n_steps must be >= 0: set `--model.check_finite_every_n_steps`.")
        self._policies = parse_policies(augment)
        channels, height, width = image_shape
        if height != width:
            raise SettingError(f"image_shape {tuple(image_shape)} is not square: set `--data.image_size`.")
        resolution_levels(height)  # raises the unsupported-size error before any layer is built
        # Also records the subclass's own arguments (lr, betas, ...): Lightning collects every
        # __init__ frame of the object.
        self.save_hyperparameters()
        if not self.hparams.get("lr", 1.0) > 0:  # each family declares its own `lr`
            raise SettingError(f"lr must be > 0, got {self.hparams.lr}: set `--model.lr`.")
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
        self._image_shape, self._channels_last = tuple(image_shape), channels_last  # checked at every batch
        self.critic_steps = 0
        self.generator_steps = 0
        self._critic_steps_at_last_generator_step = 0
        self._generator_terms: dict[str, Tensor] = {}  # the latest generator update's, logged until the next
        self._gradient_norms: dict[str, Tensor] | None = None  # gradient_norms' since the latest update
        self.guard = FiniteGuard()
        self.noise_seed: int | None = None  # the run's seed, saved in checkpoints
        self.train_rng: torch.Generator | None = None  # reseeded at every training step

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy)
        if self.noise_seed is None:  # a restored checkpoint's seed comes later and wins
            self.noise_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    # --- the algorithm -------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real_images(batch)
        self._seed_step_noise()
        critic_opt, generator_opt = self.optimizers()
        critic_terms = self._critic_step(real, critic_opt)
        if self.critic_steps - self._critic_steps_at_last_generator_step >= self.critic_iterations():
            self._generator_terms = self._generator_step(real.shape[0], generator_opt)
        self._stop_at_generator_limit()
        if self._log_due():
            self._log_terms(critic_terms)
        self.guard.check_if_due(self)

    def _seed_step_noise(self) -> None:
        """Seed ``train_rng`` from (seed, rank, critic step): the noise is derived, not saved (edm2's rule),
        so a resume needs no random state, and each rank draws its own. CPU and CUDA generators draw
        different numbers from one seed: a run continued on another kind of device draws that device's."""
        if self.train_rng is None or self.train_rng.device != self.device:
            self.train_rng = torch.Generator(self.device)
        self.train_rng.manual_seed(step_seed(self.noise_seed, self.global_rank, self.critic_steps))

    def _critic_step(self, real: Tensor, optimizer: Any) -> dict[str, Tensor]:
        """Critic: minimise the family's critic loss on a real batch and a fresh fake batch."""
        with torch.no_grad():  # so the generator takes no part in the critic's graph
            fake = self.generator(self.noise(real.shape[0], self.train_rng))
        terms = self.critic_loss(self.critic_view(real), self.critic_view(fake))
        self._descend(optimizer, terms["loss"], "critic")
        self.critic_steps += 1
        self.on_critic_step_end()
        return {"critic_loss": terms.pop("loss"), **terms}

    def _generator_step(self, batch_size: int, optimizer: Any) -> dict[str, Tensor]:
        """Generator: minimise the family's generator loss on a fresh fake batch."""
        # The critic's weights take no gradient (its input still does); cheaper than Lightning's
        # toggle_optimizer, which walks every optimiser's parameters twice per step.
        trainable = [p for p in self.discriminator.parameters() if p.requires_grad]  # frozen ones stay so
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            fake = self.generator(self.noise(batch_size, self.train_rng))
            terms = self.generator_loss(self.critic_view(fake))
            self._descend(optimizer, terms["loss"], "generator")
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
        self.generator_steps += 1
        self._critic_steps_at_last_generator_step = self.critic_steps
        for scheduler in self._schedulers():  # both rates follow the generator updates
            scheduler.step()
        if self.generator_ema is not None:
            self._update_ema()
        return {"generator_loss": terms.pop("loss"), **terms}

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``AveragedModel.update_parameters`` for the EMA generator, bit for bit, without its two
        read-backs of the update count (each a wait for the device): the count is ``generator_steps``."""
        ema, decay = self.generator_ema, self.hparams.ema_decay
        averaged = [t.detach() for t in (*ema.module.parameters(), *ema.module.buffers())]
        current = [t.detach() for t in (*self.generator.parameters(), *self.generator.buffers())]
        for average, value in zip(averaged, current, strict=True):
            if self.generator_steps == 1:
                average.copy_(value)
            elif average.is_floating_point():  # get_ema_multi_avg_fn's lerp
                average.lerp_(value, 1 - decay)
            else:  # batch norm's num_batches_tracked: its formula
                average.copy_(average * decay + value * (1 - decay))
        ema.n_averaged += 1

    def _descend(self, optimizer: Any, loss: Tensor, network: str) -> None:
        """One optimiser step of ``network`` ("critic" or "generator") on ``loss``."""
        optimizer.zero_grad(set_to_none=True)  # the gradients stay until this network's next step
        self.manual_backward(loss)
        optimizer.step()
        self._gradient_norms = None  # new gradients: gradient_norms computes them afresh
        self.guard.watch(network, loss)

    def gradient_norms(self) -> dict[str, Tensor]:
        """The L2 norm of each network's gradients from its latest update, as ``critic_grad_norm`` and
        ``generator_grad_norm`` (a network without an update in this fit is left out), on the device.

        Computed only when the logs or the finiteness checks ask, from the ``.grad`` each optimiser's
        parameters keep until that network's next update; after the step, so under ``16-mixed`` the
        GradScaler has unscaled them already.
        """
        if self._gradient_norms is None:
            grads = {name: [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                     for name, optimizer in zip(("critic_grad_norm", "generator_grad_norm"),
                                                self.optimizers() if attached_trainer(self) is not None else [])}
            self._gradient_norms = {name: torch.nn.utils.get_total_norm(network_grads)  # on the device
                                    for name, network_grads in grads.items() if network_grads}
        return self._gradient_norms

    # --- logging -------------------------------------------------------------------------------

    def _log_due(self) -> bool:
        """Whether this batch's metrics are written, as Lightning decides for its own: every
        ``log_every_n_steps`` batches and the last batch of a stopped run."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.critic_steps % every == 0 or self.trainer.should_stop)

    def _log_terms(self, critic_terms: dict[str, Tensor]) -> None:
        """Write the named terms (each as its mean) to the loggers and ``trainer.callback_metrics``, in
        one read-back, with the step and ``epoch`` Lightning would give them; not through ``self.log``,
        whose result collection costs about a millisecond of host time per key and call
        (benchmarks/step_overhead.py). Checkpoint monitors and early stopping still see every value.
        """
        # The generator's terms and gradient norm are those of its latest update.
        terms = {**critic_terms, **self._generator_terms, **self.gradient_norms()}
        with torch.no_grad():  # float32 means (a batch's scores) in one stack, with no autograd graph
            values = torch.stack([value.mean(dtype=torch.float32) if value.ndim else value for value in terms.values()])
        metrics = dict(zip((f"train/{name}" for name in terms), values.tolist()))  # waits for the device
        critic_opt, generator_opt = self.optimizers()
        metrics.update({"train/critic_steps": float(self.critic_steps),
                        "train/generator_steps": float(self.generator_steps),
                        "train/critic_lr": critic_opt.param_groups[0]["lr"],
                        "train/generator_lr": generator_opt.param_groups[0]["lr"]})
        self.trainer.callback_metrics.update(zip(metrics, torch.tensor(list(metrics.values())).unbind()))
        if self.trainer.is_global_zero:
            step = self.critic_steps - 1  # Lightning's step for a batch's metrics: batches before it
            for logger in self.loggers:
                logger.log_metrics({**metrics, "epoch": float(self.current_epoch)}, step=step)

    def critic_view(self, images: Tensor) -> Tensor:
        """The images as the critic sees them in training: through ``--model.augment``'s DiffAugment policies,
        drawn from ``train_rng`` (so a resumed run augments as the uninterrupted one), else unchanged. Real and
        fake batches are augmented independently, as in the paper; WGAN-GP's penalty is then taken on
        interpolates of the augmented images, the critic's actual inputs."""
        return diff_augment(images, self._policies, self.train_rng) if self._policies else images

    def critic_scores(self, real: Tensor, fake: Tensor, together: bool | None = None) -> tuple[Tensor, Tensor]:
        """The critic's scores of ``real`` and ``fake``, (N, 1) each.

        Without batch norm a sample's score does not depend on its batch, so on an accelerator both go
        through one forward of the concatenated batch. With batch norm they go separately, each batch
        normalised by its own statistics, as DCGAN trains; and on a CPU, where one forward measured
        10-20 % slower at the presets' widths.

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

    def configure_optimizers(self) -> Any:
        """The critic's optimiser and the generator's, each from :meth:`make_optimizer` at its rate
        (:meth:`learning_rates`), and with ``lr_schedule: linear`` a ``LinearLR`` for each, which
        :meth:`training_step` steps after every generator update (manual optimisation)."""
        critic_lr, generator_lr = self.learning_rates()
        optimizers = [self.make_optimizer(self.discriminator.parameters(), critic_lr),
                      self.make_optimizer(self.generator.parameters(), generator_lr)]
        if self.hparams.lr_schedule == "none":
            return optimizers
        steps = self.hparams.max_generator_steps
        return optimizers, [LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=steps) for o in optimizers]

    def learning_rates(self) -> tuple[float, float]:
        """The configured (critic, generator) learning rates: ``critic_lr``/``generator_lr``, else ``lr``."""
        lr, critic_lr, generator_lr = self.hparams.lr, self.hparams.critic_lr, self.hparams.generator_lr
        return (lr if critic_lr is None else critic_lr, lr if generator_lr is None else generator_lr)

    def make_optimizer(self, parameters: Any, lr: float) -> torch.optim.Optimizer:
        """The family's optimiser of one network's ``parameters`` at learning rate ``lr``."""
        raise NotImplementedError

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        return [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]

    @staticmethod
    def score_terms(real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        """The critic's scores of a real and a fake batch as named terms, logged as their means
        (``train/real_score``, ``train/fake_score``) by every family."""
        return {"real_score": real_scores, "fake_score": fake_scores}

    def critic_iterations(self) -> int:
        """Critic updates due before the next generator update (constant ``n_critic`` here)."""
        return self.hparams.n_critic

    def on_critic_step_end(self) -> None:
        """Called after every critic optimiser step (WGAN clips the weights here)."""

    def critic_loss(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The critic's objective on a real and a fake batch: ``loss`` (what it minimises) and named
        terms (tensors such as the gradient penalty, or the batch's scores from :meth:`score_terms`),
        each logged as its mean, ``train/<name>`` (the loss as ``train/critic_loss``), at the log
        interval only."""
        raise NotImplementedError

    def generator_loss(self, fake: Tensor) -> dict[str, Tensor]:
        """The generator's objective on a fake batch: ``loss`` (logged as ``train/generator_loss``) and any
        named terms (each logged as its mean)."""
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

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Latent vectors z ~ N(0, I), shape (n, latent_dim), on the module's device.

        Args:
            n: how many.
            generator: a seeded ``torch.Generator`` for reproducible noise (any device).
        """
        device = generator.device if generator is not None else self.device
        z = torch.randn(n, self.hparams.latent_dim, device=device, generator=generator)
        return z.to(self.device)

    def forward(self, z: Tensor) -> Tensor:
        """Images in [-1, 1], (N, C, H, W), from latent vectors ``z`` (N, latent_dim): the generator as it
        is (train or eval mode, with gradients); :meth:`sample` draws from the sampling network in
        eval mode without them."""
        return self.generator(z)

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
        if real.shape[1:] != self._image_shape:
            raise SettingError(f"The data gives images of shape {tuple(real.shape[1:])} but {type(self).__name__} was "
                               f"built for image_shape {tuple(self.hparams.image_shape)}. Let train.py link "
                               f"`data.image_shape` to the model, or set `--model.image_shape` to match the data.")
        return real.contiguous(memory_format=torch.channels_last) if self._channels_last else real

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.check_state(self, checkpoint)  # never saves a non-finite state
        checkpoint["gan_state"] = {
            "model": type(self).__name__,
            "critic_steps": self.critic_steps,
            "generator_steps": self.generator_steps,
            "critic_steps_at_last_generator_step": self._critic_steps_at_last_generator_step,
            "noise_seed": self.noise_seed,
            "world_size": trainer.world_size if (trainer := attached_trainer(self)) is not None else 1,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the counters and the seed, after checking that the checkpoint fits this model."""
        state = check_checkpoint_fits(self, checkpoint)
        self.critic_steps = state["critic_steps"]
        self.generator_steps = state["generator_steps"]
        self._critic_steps_at_last_generator_step = state["critic_steps_at_last_generator_step"]
        self.noise_seed = state.get("noise_seed", self.noise_seed)
        self.guard.loaded(self.critic_steps)
        if attached_trainer(self) is not None:
            saved, now = state.get("world_size", self.trainer.world_size), self.trainer.world_size
            if saved != now:
                rank_zero_warn(f"The checkpoint was written by {saved} process(es) and continues on {now}: the run goes "
                               f"on, but not bitwise as it would on {saved} (each rank draws its own noise and its "
                               f"own share of the data).")
            # Before Lightning restores its loops from the same dict: a run stopped inside an epoch
            # continues with the rest of that epoch, not with the next one.
            align_epoch_with_data(checkpoint, self.trainer)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, refusing first, by name, a checkpoint of another model
        class (its hyperparameters would otherwise reach this class's ``__init__`` as unknown arguments)."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and Path(checkpoint_path).is_file():
            refuse_another_model(read_checkpoint(checkpoint_path), cls.__name__, f" {checkpoint_path}")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_validation_end(self) -> None:
        # DDP gives every rank rank 0's buffers (batch-norm statistics, spectral-norm vectors) at each
        # training forward, except the first after a validation, whose no-grad forwards switch that off
        # once. A run resumed after a validation starts from rank 0's buffers (the checkpoint's), so the
        # uninterrupted run must too: broadcast them here.
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for buffer in self.buffers():
                dist.broadcast(buffer, src=0)

    @property
    def sampling_generator(self) -> nn.Module:
        """The network :meth:`sample` runs: the moving average when ``ema_decay`` is set."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a training step's noise on a rank: a hash of (seed, rank, critic step), below 2**63."""
    key = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8)
    return int.from_bytes(key.digest(), "little") >> 1


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise SettingError(f"{name} must be a positive integer, got {value}: set `--model.{name}` to 1 or more.")
