"""Milliseconds per training batch of the presets, run as a user runs them, against a plain PyTorch loop.

    python benchmarks/step_overhead.py                     # widths 8, batch 16: per-step host work in full
    python benchmarks/step_overhead.py --setting preset    # the presets' widths (64) and batch sizes
    python benchmarks/step_overhead.py --quick             # a smoke run of a few seconds per model
    python benchmarks/step_overhead.py --device cuda --image-size 64    # on a GPU

What it measures, for DCGAN, WGAN-GP and WGAN on 28 px MNIST-format files it writes itself
(random digits; 60,000 training images, or more if the run needs them, so that no epoch ends
while it measures, and 1,000 validation images):

- **project**: ``train.py``'s own CLI, built in-process with ``build_cli`` from the preset YAML
  (``configs/<preset>.yaml``), with its TensorBoard logger (to a temporary folder), checkpointing,
  sample grids and progress bar as the preset has them, FID off (``--fid.enabled false``),
  then ``trainer.fit`` as ``train.py fit`` calls it. **project, no bar** is the same with
  ``--trainer.enable_progress_bar false``.
- **plain**: a hand-written PyTorch loop over the same networks, losses (``gan_modules.losses``,
  the gradient penalty with its per-sample mixing), optimisers and hyperparameters (the preset's
  model's own ``configure_optimizers``), ``n_critic`` schedule and weight clipping, iterating the
  preset datamodule's ``train_dataloader``: no logging, no checks. It is the textbook loop: two
  critic forwards (real, fake) per critic step, float32, eager; where the project does better (one
  forward of both for a critic without batch norm, or the speed options given with
  ``--project-args``), ``plain/project`` may exceed ``plain/floor``, and that is a real gain.
- **floor**: Lightning's own per-batch cost: a minimal manual-optimisation ``LightningModule`` doing
  exactly the plain loop's tensor work (``manual_backward``, Lightning's optimiser wrappers, the
  ``Trainer`` loop) and nothing else, with no logger, checkpoint, progress bar or validation.

How: the four run side by side in one process, each in a thread of its own that only runs while
the others wait, so each keeps one continuous run (a single ``fit``, a single loop) for the whole
measurement. Each round gives every run a turn, in an order that rotates from round to round: a
turn runs ``--warmup`` batches, then ``--batches`` timed ones. A first, untimed round lets every
run start (the fit's setup, the sanity validation, the first calls of every kernel). A batch is
timed from the start of one batch to the start of the next (Lightning: ``on_train_batch_start``),
so it includes fetching the data, the step, and everything Lightning and the callbacks do in
between; periodic work (logging every ``log_every_n_steps``, the generator step every ``n_critic``
batches) falls into the turns in proportion, since ``--batches`` is a multiple of both. A turn's
figure is its mean ms/batch; the table gives the median over the rounds, and each ratio is the
median of the rounds' own ratios (the turns of one round run seconds apart, so a slow spell of a
shared machine touches both sides of a ratio and mostly cancels), with the interquartile range of
those ratios in brackets: the median's own uncertainty is roughly that range over the square root
of the number of rounds.

On a CPU the clock is the process's CPU time (``time.process_time``) with torch on one thread:
time the machine gives to other processes does not count, though they still slow this one through
shared cores and caches. It includes the TensorBoard writer's background thread, which is the
project's work. On a GPU it is wall-clock time, with ``torch.cuda.synchronize()`` at the start and
end of each turn only, so host work can overlap device work as it does in a real run.

How to read it: ``plain/project`` is the share of a hand-written loop's speed the preset keeps
(1.00: no overhead; 0.65: the preset takes 1/0.65 = 1.54 times as long per batch). ``plain/floor``
is what Lightning itself costs with nothing on top; the project's own overhead is the gap between
the two ratios. The plain loop and the floor train exactly the project's weights from the same
seeds and batches (bitwise where the critic forwards are the same), so the work compared is the
same. The widths-8 setting stands in for a GPU, where the networks' compute takes milliseconds and
host work per step shows in full. On a machine shared with other jobs expect a few per cent of
noise: the per-round figures are printed too, to judge it.

On a GPU: ``--device cuda`` (add ``--image-size 64`` for the 64 px networks). The project then runs
with ``configs/trainer/gpu.yaml``, the floor on ``accelerator="gpu"``, the plain loop on
``cuda``; torch keeps its default threads. Nothing here needs CUDA otherwise. To measure a speed
option, give it to the project runs only (the plain loop and the floor stay the float32 eager
reference), e.g. ``--project-args "--trainer.precision bf16-mixed --data.on_device true"``.

The progress bar of the "project" run writes to stdout as it would for a user; the figures come
after it (``2>/dev/null`` hides Lightning's warnings, not the bar).
"""

from __future__ import annotations

import argparse
import logging
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from gan_modules import DCGAN, WGAN, WGANGP  # noqa: E402
from gan_modules.base import GANModule, step_seed  # noqa: E402
from gan_modules.losses import (  # noqa: E402
    dcgan_discriminator_loss,
    dcgan_generator_loss,
    gradient_penalty,
    wasserstein_estimate,
    wasserstein_generator_loss,
)
from benchmarks.digits_to_idx import write_random_mnist  # noqa: E402
from train import build_cli  # noqa: E402

PRESETS = {"dcgan": "dcgan_mnist", "wgan_gp": "wgan_gp_mnist", "wgan": "wgan_mnist"}
SETTINGS = {  # extra CLI arguments over the preset
    "tiny": ["--model.generator_width", "8", "--model.critic_width", "8", "--data.batch_size", "16"],
    "preset": [],
}
SEED = 42  # the presets' seed_everything


# --- one run, one turn at a time -----------------------------------------------------------------

class Turns:
    """Runs ``train`` in a thread of its own, one turn at a time, and times each turn's batches.

    ``train(turns)`` calls :meth:`tick` at the start of every batch. A turn is ``warmup`` untimed batches
    and ``batches`` timed ones; at the start of the batch after them the thread pauses until the next
    :meth:`turn`. Only one thread runs at a time, so the process clock counts one run's work.
    """

    def __init__(self, name: str, train: Callable[[Turns], None], warmup: int, batches: int, device: str) -> None:
        self.name, self.warmup, self.batches, self.device = name, warmup, batches, device
        self.ms_per_batch: list[float] = []  # one mean per turn
        self._train = train
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._go, self._paused = threading.Event(), threading.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._count, self._started_at = 0, 0.0

    def turn(self) -> None:
        """Run the next turn and wait until it has paused."""
        done = len(self.ms_per_batch)
        self._paused.clear()
        if self._thread.ident is None:
            self._thread.start()
        elif self._thread.is_alive():
            self._go.set()
        else:
            raise RuntimeError(f"the {self.name} run has already ended")
        self._paused.wait()
        if self._error is not None:
            raise RuntimeError(f"the {self.name} run failed: {self._error!r}") from self._error
        if len(self.ms_per_batch) == done:
            raise RuntimeError(f"the {self.name} run ended before its turn did (an epoch ended): write more "
                               f"training images with `--train-images`, or lower `--rounds` or `--batches`.")

    def finish(self) -> None:
        """Let the run stop after one more batch, and wait for it (its end-of-run work included)."""
        self._stopping = True
        self._paused.clear()
        self._go.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the {self.name} run failed while stopping: {self._error!r}") from self._error

    def tick(self) -> bool:
        """Called at the start of every batch; False: stop the run after this batch."""
        self._count += 1
        if self._count == self.warmup + 1:
            self._started_at = self._clock()
        elif self._count == self.warmup + self.batches + 1:
            self.ms_per_batch.append(1e3 * (self._clock() - self._started_at) / self.batches)
            self._paused.set()
            self._go.wait()
            self._go.clear()
            self._count = 1  # this batch is the next turn's first warm-up batch
            if self.warmup == 0:
                self._started_at = self._clock()
        return not self._stopping

    def _clock(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()  # the turn ends when the device has done its work
            return time.perf_counter()
        return time.process_time()

    def _main(self) -> None:
        if self.device == "cpu":
            torch.set_num_threads(1)
        try:
            self._train(self)
        except BaseException as error:  # handed to the main thread, which raises it
            self._error = error
        finally:
            self._paused.set()


class _Tick(Callback):
    """Calls ``turns.tick()`` at the start of every training batch; stops the fit when told to."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch > 0:
            raise RuntimeError("an epoch ended while measuring: write more images with `--train-images`.")
        if not self.turns.tick():
            trainer.should_stop = True


# --- the tensor work, shared by the plain loop and the floor -------------------------------------

def images(batch: Any) -> Tensor:
    """The images of a batch, which is ``(images, labels)`` or ``images`` (DESIGN.md)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class GANStep:
    """One batch of the preset's algorithm with the preset's own networks, losses and optimisers.

    One critic update on the real batch and a fresh fake batch; after every ``n_critic``-th, one
    generator update with the critic frozen; WGAN clamps the critic's weights after its step. Noise
    and the penalty's mixing come from a ``torch.Generator`` seeded as the presets are. No logging,
    no finiteness checks.

    Args:
        model: a preset's model as the CLI built it; its networks and ``configure_optimizers`` are used.
    """

    def __init__(self, model: GANModule) -> None:
        if not isinstance(model, (DCGAN, WGANGP, WGAN)):
            raise TypeError(f"no plain loop for {type(model).__name__}: use a DCGAN, WGAN-GP or WGAN preset.")
        if model.hparams.get("warmup"):
            raise ValueError("the plain loop has WGAN's constant n_critic schedule only: run the preset "
                             "with `model.init_args.warmup: false`.")
        self.model = model
        self.generator, self.critic = model.generator, model.discriminator
        self.n_critic = model.hparams.n_critic
        self.critic_steps = 0
        self.rng: torch.Generator | None = None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The preset's optimisers (critic first), on the networks' parameters wherever they are now."""
        return list(self.model.configure_optimizers())

    def __call__(self, real: Tensor, critic_opt: Any, generator_opt: Any, backward: Callable[[Tensor], None]) -> None:
        if self.rng is None or self.rng.device != real.device:
            self.rng = torch.Generator(device=real.device)
        self.rng.manual_seed(step_seed(SEED, 0, self.critic_steps))  # the project's noise of this step
        with torch.no_grad():
            fake = self.generator(self._noise(real))
        self._descend(critic_opt, self._critic_loss(real, fake), backward)
        if isinstance(self.model, WGAN):
            clip = self.model.hparams.clip_value
            with torch.no_grad():
                for param in self.critic.parameters():
                    param.clamp_(-clip, clip)
        self.critic_steps += 1
        if self.critic_steps % self.n_critic == 0:
            self.critic.requires_grad_(False)  # the generator's step computes no critic weight gradients
            fake = self.generator(self._noise(real))
            scores = self.critic(fake)
            loss = dcgan_generator_loss(scores) if isinstance(self.model, DCGAN) else wasserstein_generator_loss(scores)
            self._descend(generator_opt, loss, backward)
            self.critic.requires_grad_(True)

    def _noise(self, real: Tensor) -> Tensor:
        return torch.randn(real.shape[0], self.model.hparams.latent_dim, device=real.device, generator=self.rng)

    def _critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        real_scores, fake_scores = self.critic(real), self.critic(fake)
        if isinstance(self.model, DCGAN):
            return dcgan_discriminator_loss(real_scores, fake_scores)
        loss = -wasserstein_estimate(real_scores, fake_scores)
        if isinstance(self.model, WGANGP):
            loss = loss + self.model.hparams.gp_weight * gradient_penalty(self.critic, real, fake, self.rng)
        return loss

    @staticmethod
    def _descend(optimizer: Any, loss: Tensor, backward: Callable[[Tensor], None]) -> None:
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        optimizer.step()


class FloorModule(LightningModule):
    """Lightning's floor: manual optimisation around :class:`GANStep`, and nothing else."""

    def __init__(self, step: GANStep) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.step = step
        self.generator, self.discriminator = step.generator, step.critic

    def training_step(self, batch: Any, batch_idx: int) -> None:
        critic_opt, generator_opt = self.optimizers()
        self.step(images(batch), critic_opt, generator_opt, self.manual_backward)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return self.step.optimizers()


# --- the four runs -------------------------------------------------------------------------------

def cli_args(preset: str, setting: str, data_dir: Path, save_dir: Path, device: str,
             image_size: int | None) -> list[str]:
    """The command line a user would give ``train.py fit`` for this preset and setting (FID off)."""
    args = ["--config", str(REPO / "configs" / f"{preset}.yaml"),
            "--config", str(REPO / "configs" / "trainer" / ("gpu.yaml" if device == "cuda" else "cpu.yaml")),
            "--data.data_dir", str(data_dir), "--fid.enabled", "false",
            "--trainer.logger.init_args.save_dir", str(save_dir), *SETTINGS[setting]]
    if image_size is not None:
        args += ["--data.image_size", str(image_size)]
    return args


class Run(NamedTuple):
    """One way of training a preset: ``train(turns)`` trains, calling ``turns.tick()`` per batch."""

    train: Callable[[Turns], None]
    generator: nn.Module  # the network it trains, to check that the runs do the same work


def plain_run(args: list[str], device: str) -> Run:
    cli = build_cli(args, run=False)  # the model and datamodule exactly as the preset builds them
    datamodule = cli.datamodule
    datamodule.setup("fit")
    step = GANStep(cli.model.to(device))
    critic_opt, generator_opt = step.optimizers()

    def run(turns: Turns) -> None:
        for batch in datamodule.train_dataloader():
            if not turns.tick():
                return
            step(images(batch).to(device, non_blocking=True), critic_opt, generator_opt, Tensor.backward)

    return Run(run, step.generator)


def floor_run(args: list[str], device: str) -> Run:
    cli = build_cli(args, run=False)
    datamodule = cli.datamodule
    datamodule.setup("fit")
    floor = FloorModule(GANStep(cli.model))

    def run(turns: Turns) -> None:
        trainer = Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          callbacks=[_Tick(turns)])
        trainer.fit(floor, train_dataloaders=datamodule.train_dataloader())

    return Run(run, floor.generator)


def project_run(args: list[str]) -> Run:
    cli = build_cli(args, run=False)  # what `train.py fit ...` builds, FID off

    def run(turns: Turns) -> None:
        cli.trainer.callbacks.append(_Tick(turns))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # what LightningCLI's `fit` calls

    return Run(run, cli.model.generator)


def measure(model: str, setting: str, data_dir: Path, work_dir: Path,
            options: argparse.Namespace) -> dict[str, list[float]]:
    """Per-turn ms/batch of each run of one preset in one setting, the runs interleaved."""
    def args(run: str) -> list[str]:
        save_dir = work_dir / f"{setting}_{model}_{run.replace(', ', '_').replace(' ', '_')}"
        return cli_args(PRESETS[model], setting, data_dir, save_dir, options.device, options.image_size)

    made = {
        "plain": plain_run(args("plain"), options.device),
        "floor": floor_run(args("floor"), options.device),
        "project": project_run(args("project") + options.project_args),
        "project, no bar": project_run(args("project, no bar") + options.project_args
                                       + ["--trainer.enable_progress_bar", "false"]),
    }
    runs = [Turns(name, run.train, options.warmup, options.batches, options.device) for name, run in made.items()]
    try:
        for round_index in range(options.rounds + 1):
            shift = round_index % len(runs)
            for run in runs[shift:] + runs[:shift]:  # a rotating order: no run always follows another
                run.turn()
            if round_index == 0:  # the untimed start-up round
                for run in runs:
                    run.ms_per_batch.clear()
    finally:
        for run in runs:
            if run._thread.is_alive():
                run.finish()
    return {run.name: run.ms_per_batch for run in runs}


# --- report --------------------------------------------------------------------------------------

def table(rows: list[tuple[str, str, dict[str, list[float]]]]) -> str:
    header = ["setting", "model", "plain ms/batch", "floor ms/batch", "project ms/batch", "plain/floor",
              "plain/project", "no bar ms/batch", "plain/no bar"]
    lines = [header]
    for setting, model, figures in rows:
        m = {name: statistics.median(values) for name, values in figures.items()}

        def ratio(run: str) -> str:  # the median of the rounds' own ratios, plain over ``run``, and their IQR
            ratios = [p / r for p, r in zip(figures["plain"], figures[run])]
            low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            return f"{statistics.median(ratios):.3f} [{low:.2f}, {high:.2f}]"

        lines.append([setting, model, f"{m['plain']:.2f}", f"{m['floor']:.2f}", f"{m['project']:.2f}",
                      ratio("floor"), ratio("project"), f"{m['project, no bar']:.2f}", ratio("project, no bar")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(" | ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="tiny",
                        help="tiny: widths 8, batch 16; preset: the presets' widths and batch sizes")
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--image-size", type=int, default=None, help="resize the 28 px digits (e.g. 64)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed turns per run, after one untimed (default: 15 tiny, 7 preset; --quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches per turn (default: 3; --quick 2)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per turn, a multiple of 10 "
                        "(n_critic 5, log_every_n_steps 10) (default: 50 tiny, 20 preset; --quick 10)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="training images to write (default: 60,000, or what --quick needs)")
    parser.add_argument("--project-args", type=shlex.split, default=[],
                        help='more train.py flags for the project runs only, in one string, e.g. '
                             '"--trainer.precision bf16-mixed"')
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 2 rounds of 10 batches")
    options = parser.parse_args(argv)
    tiny = options.setting == "tiny"
    defaults = (2, 2, 10) if options.quick else (15, 3, 50) if tiny else (7, 3, 20)
    for name, default in zip(("rounds", "warmup", "batches"), defaults):
        if getattr(options, name) is None:
            setattr(options, name, default)
    if options.rounds < 1 or options.batches < 1 or options.warmup < 0:
        parser.error("--rounds and --batches must be >= 1 and --warmup >= 0")
    if options.batches % 10:
        parser.error(f"--batches {options.batches} is not a multiple of 10: a turn would hold the generator "
                     f"steps (every 5th batch) or the logging (every 10th) out of proportion")
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU: run on the CPU with `--device cpu` (the default)")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if options.device == "cpu":
        torch.set_num_threads(1)
    # Lightning's per-fit INFO lines and the few-workers hint would bury the figures; neither is per batch.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers", "LightningCLI's args parameter", ".*LeafSpec"):
        warnings.filterwarnings("ignore", message=message)
    # Every run takes (warmup + batches) per turn, plus the batch its stop lands on: keep them in one epoch.
    largest_batch = 16 if options.setting == "tiny" else 128
    needed = ((options.rounds + 1) * (options.warmup + options.batches) + 2) * largest_batch
    if options.train_images is not None and options.train_images < needed:
        sys.exit(f"step_overhead.py: error: --train-images {options.train_images:,} is too few: every run trains "
                 f"{needed:,} images in one epoch here; give at least that, or lower --rounds or --batches.")
    train_images = options.train_images or (needed if options.quick else max(60_000, needed))
    started = time.perf_counter()
    clock = "wall-clock, CUDA synchronised per turn" if options.device == "cuda" else "process CPU time, 1 torch thread"
    device = torch.cuda.get_device_name() if options.device == "cuda" else platform.processor() or platform.machine()
    extra = f"; project runs with {shlex.join(options.project_args)}" if options.project_args else ""
    print(f"step overhead: {options.setting} setting, {options.device} ({device}), {clock}; torch {torch.__version__}, "
          f"lightning {lightning.__version__}; {options.rounds} timed rounds (after an untimed one) of "
          f"{options.warmup} + {options.batches} batches per run; {train_images:,} training images{extra}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="step_overhead_") as tmp:
        data_dir = write_random_mnist(Path(tmp) / "data", train_images, 1_000)
        for model in options.models:
            figures = measure(model, options.setting, data_dir, Path(tmp) / "runs", options)
            rows.append((options.setting, model, figures))
            for name, values in figures.items():
                print(f"  {model:8s} {name:16s} ms/batch per round: {' '.join(f'{v:.2f}' for v in values)}", flush=True)
    print()
    print(table(rows))
    print(f"\nwall time {time.perf_counter() - started:.0f} s (after imports)")


if __name__ == "__main__":
    main()
