"""Train, validate and sample GANs from the command line.

    python train.py fit --config configs/dcgan_mnist.yaml
    python train.py fit --help
    python train.py sample --ckpt_path CKPT --num_samples 64 --output samples.pt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

import datamodules
import gan_modules
from gan_modules.base import CheckpointMismatchError, GANModule, check_strategy, mismatch_error
from gan_modules.callbacks import RunMonitor, SampleGridCallback
from gan_modules.checkpoint_io import CheckpointReadError, CheckpointWriteError, GANCheckpoint, read_checkpoint


class GANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The image shape is stated once, by the data, and handed to the model.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        parser.add_lightning_class_args(GANCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
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

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.trainer is not None:
            check_strategy(self.trainer.strategy)  # before any process is started

    def before_instantiate_classes(self) -> None:
        # Checkpoints of every run of a preset go to one folder, runs/<preset>/checkpoints, not to the
        # run's version folder, so that `--ckpt_path last` finds the latest run's last.ckpt (a new
        # run writes last-v1.ckpt beside an older last.ckpt rather than over it).
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        logger = config.trainer.logger
        if config.checkpoint.dirpath is None and getattr(logger, "init_args", None) is not None:
            args = logger.init_args
            if args.get("save_dir") and args.get("name"):
                config.checkpoint.dirpath = str(Path(args.save_dir) / args.name / "checkpoints")


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
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
            "plugins": [{"class_path": "gan_modules.checkpoint_io.AtomicCheckpointIO"}],
        },
        args=args,
        run=run,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sample":
        from gan_modules.sampling import main as sample_main

        sample_main(sys.argv[2:])
        return
    try:
        build_cli()
    except (CheckpointReadError, CheckpointWriteError, CheckpointMismatchError) as error:  # the message says it all
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
