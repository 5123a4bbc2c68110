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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import datamodules
import gan_modules
from gan_modules.base import GANModule
from gan_modules.callbacks import RunMonitor, SampleGridCallback


class GANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The image shape is stated once, by the data, and handed to the model.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(SampleGridCallback, "sample_grid")
        parser.add_lightning_class_args(RunMonitor, "run_monitor")
        # `--help` lists the models' and datamodules' arguments too, not only `--model.help CLASS`.
        trainer_help = parser.format_help
        parser.format_help = lambda: trainer_help() + _class_arguments_help()

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
    build_cli()


if __name__ == "__main__":
    main()
