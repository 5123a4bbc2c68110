"""Train, validate and sample GANs from the command line.

    python train.py fit --config configs/dcgan_mnist.yaml
    python train.py fit --help
    python train.py sample --ckpt_path CKPT --num_samples 64 --output samples.pt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI

import datamodules
import gan_modules
from gan_modules.base import GANModule
from gan_modules.callbacks import FIDCallback, RunMonitor, SampleGridCallback, skip_unused_batch_hooks
from gan_modules.checkpoint_io import CheckpointReadError, CheckpointWriteError, GANCheckpoint, read_checkpoint
from gan_modules.run_integrity import CheckpointMismatchError, check_strategy, mismatch_error
from gan_modules.sampling import load_generator_checkpoint, output_problem, write_samples


SAMPLE_HELP = "Write images from a checkpoint's generator: a uint8 tensor file and a PNG grid beside it."


class GANCLI(LightningCLI):
    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        """LightningCLI's parser, with ``sample`` listed beside its subcommands in ``train.py --help``.

        LightningCLI builds a Trainer, a model and a datamodule for each of its subcommands, all of
        which ``sample`` has no use for, so ``main`` runs ``sample`` before LightningCLI starts; it is
        listed here only. jsonargparse keeps its subcommands in a private attribute: should an
        upgrade drop it, ``--help`` omits ``sample`` (tests/test_sample.py says so) and nothing else
        changes.
        """
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        subcommands = getattr(self.parser, "_subcommands_action", None)
        if add_subcommands and subcommands is not None:
            subcommands.add_subcommand("sample", ArgumentParser(description=SAMPLE_HELP), help=SAMPLE_HELP)

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The image shape is stated once, by the data, and handed to the model.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        parser.add_lightning_class_args(GANCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        # FID is a group of its own, `--fid.*` (`--fid.enabled false` turns it off), so that every
        # FID message can name a flag that exists.
        parser.add_lightning_class_args(FIDCallback, "fid")
        parser.add_lightning_class_args(SampleGridCallback, "sample_grid")
        parser.add_lightning_class_args(RunMonitor, "run_monitor")
        # `--help` lists the models' and datamodules' arguments too, not only `--model.help CLASS`.
        trainer_help = parser.format_help
        parser.format_help = lambda: trainer_help() + _class_arguments_help()

    def _parse_ckpt_path(self) -> None:
        """Keep the configured model when a checkpoint file is given.

        LightningCLI's own version merges the checkpoint's hyperparameters, class path included, over
        the command line, and imports the module that class path names: a DCGAN checkpoint given to
        the WGAN-GP preset would train a DCGAN, and flags such as `--model.max_generator_steps` would
        be dropped for a file path but kept for `last`. Here the configuration (preset and command
        line) always decides, in both spellings; the checkpoint is only read (``weights_only``) to
        refuse another model class before anything is built. ``GANModule.on_load_checkpoint`` then
        refuses, by flag, settings that would change the saved weights' shapes.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():  # `last`, `best`, ...: Lightning resolves them
            return
        found = read_checkpoint(ckpt_path).get("gan_state", {}).get("model")
        configured = str(self.config[subcommand].model.class_path).rsplit(".", 1)[-1]
        if found != configured:
            raise mismatch_error(found, configured, f" {ckpt_path}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Lightning calls every hook of every callback on every batch, so FID switched off
        # (`--fid.enabled false`) is left out rather than carried along doing nothing, and the
        # per-batch hooks a callback does not implement are skipped.
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [c for c in trainer.callbacks if not (isinstance(c, FIDCallback) and not c.enabled)]
        skip_unused_batch_hooks(trainer.callbacks)
        return trainer

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.trainer is not None:
            check_strategy(self.trainer.strategy)  # before any process is started

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        logger = config.trainer.logger
        # The default TensorBoard logger writes to runs/<preset>/ (build_cli leaves its name unset):
        # the presets need no logger block of their own.
        if getattr(logger, "init_args", None) is not None and "name" in logger.init_args \
                and logger.init_args.name is None:
            logger.init_args.name = _preset_name(config.get("config"))
        # Checkpoints of every run of a preset go to one folder, runs/<preset>/checkpoints, not to the
        # run's version folder, so that `--ckpt_path last` finds the latest run's last.ckpt (a new
        # run writes last-v1.ckpt beside an older last.ckpt rather than over it).
        if config.checkpoint.dirpath is None and getattr(logger, "init_args", None) is not None:
            args = logger.init_args
            if args.get("save_dir") and args.get("name"):
                config.checkpoint.dirpath = str(Path(args.save_dir) / args.name / "checkpoints")
        _refresh_progress_bar_at_log_interval(config.trainer)


def _refresh_progress_bar_at_log_interval(trainer: Namespace) -> None:
    """Give the trainer a progress bar that redraws once every ``log_every_n_steps`` batches, and at
    most every quarter of a second, unless the bar is off or the configuration brings its own.

    Lightning's default bar redraws the terminal line twice after every batch, a fixed host cost per
    step of about 5 % of a small network's step on a CPU (benchmarks/step_overhead.py), for a line
    whose figures (the batch count and rate; the metrics are in TensorBoard) change little between
    logs (:class:`~gan_modules.callbacks.OneDrawProgressBar`).
    """
    if trainer.get("enable_progress_bar") is False:
        return
    callbacks = trainer.get("callbacks") or []
    if any(str(getattr(c, "class_path", "")).endswith("ProgressBar") for c in callbacks):
        return
    every = trainer.get("log_every_n_steps") or 50  # Lightning's default interval
    trainer.callbacks = [*callbacks, Namespace(class_path="gan_modules.callbacks.OneDrawProgressBar",
                                               init_args=Namespace(refresh_rate=every))]


def _preset_name(config_files: list | None) -> str:
    """The stem of the preset among the ``--config`` files: the first that sets ``model`` (trainer
    fragments such as configs/trainer/cpu.yaml do not), else the first file; Lightning's
    ``lightning_logs`` without one."""
    files = [Path(path.absolute) for path in config_files or [] if getattr(path, "absolute", None)]
    for path in files:
        if "model" in (yaml.safe_load(path.read_text()) or {}):
            return path.stem
    return files[0].stem if files else "lightning_logs"


def _class_arguments_help() -> str:
    sections = []
    for key, package in (("model", gan_modules), ("data", datamodules)):
        for name in package.__all__:
            parser = ArgumentParser(prog=f"--{key} {name}")
            parser.add_class_arguments(getattr(package, name), key)
            arguments = parser.format_help().split("\n\n", 2)[2]  # drop the usage and -h blocks
            arguments = re.sub(rf"  --{key} CONFIG +Path to a configuration file.\n", "", arguments)
            sections.append(f"\n=== --{key} {name} ===\n{arguments}")
    return "".join(sections)


def build_cli(args: list[str] | None = None, run: bool = True) -> GANCLI:
    """The LightningCLI of this project; ``args`` replace ``sys.argv`` (tests pass them)."""
    return GANCLI(
        GANModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={
            # name None: the preset's name, set in GANCLI.before_instantiate_classes
            "logger": {"class_path": "gan_modules.tensorboard.OneEventTensorBoardLogger",
                       "init_args": {"save_dir": "runs", "default_hp_metric": False, "name": None}},
            "plugins": [{"class_path": "gan_modules.checkpoint_io.AtomicCheckpointIO"}],
        },
        args=args,
        run=run,
    )


def sample_parser() -> argparse.ArgumentParser:
    """The arguments of ``train.py sample``."""
    parser = argparse.ArgumentParser(prog="train.py sample", description=SAMPLE_HELP)
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `train.py fit`")
    parser.add_argument("--num_samples", type=int, default=64, help="how many images (default 64)")
    parser.add_argument("--output", default="samples.pt",
                        help="uint8 N x C x H x W tensor file (.pt); the PNG grid goes beside it "
                             "(default samples.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise (default 0)")
    parser.add_argument("--nrow", type=int, default=8, help="images per row of the grid (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run the generator on")
    return parser


def sample(argv: list[str]) -> None:
    """``train.py sample ARGS``: check every argument, then write the samples (``gan_modules.sampling``).

    Every problem, with an argument, the checkpoint or the output, ends the process with one line
    ``train.py sample: error: ...`` on stderr and exit status 2, and leaves no file half-written.
    """
    parser = sample_parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> NoReturn:
        # parser.error's format and exit status 2, without the usage block: one line on stderr.
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    # Every argument is checked before the checkpoint is read or anything is written.
    if args.num_samples < 1:
        fail(f"--num_samples must be at least 1, got {args.num_samples}.")
    if args.nrow < 1:
        fail(f"--nrow must be at least 1, got {args.nrow}.")
    problem = output_problem(args.output)
    if problem is not None:
        fail(problem)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        fail(f"--device {args.device!r} is not a device: pass `--device cpu` or `--device cuda`.")
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= found:
        choices = "`--device cpu`" + (f" or `--device cuda:N` with N from 0 to {found - 1}" if found else "")
        fail(f"--device {args.device} is not a CUDA device of this machine ({found} found): pass {choices}.")

    try:
        model = load_generator_checkpoint(args.ckpt_path, map_location=args.device)
        grid = write_samples(model, args.num_samples, args.output, args.seed, args.nrow)
    except (OSError, ValueError) as error:
        fail(error.strerror if isinstance(error, OSError) and error.strerror else str(error))
    print(f"wrote {args.num_samples} samples to {args.output} and the grid to {grid}")


def main() -> None:
    # `sample` reads a checkpoint and needs no Trainer, model or data, which LightningCLI would build.
    if len(sys.argv) > 1 and sys.argv[1] == "sample":
        sample(sys.argv[2:])
        return
    try:
        build_cli()
    except (CheckpointReadError, CheckpointWriteError, CheckpointMismatchError) as error:  # the message says it all
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
