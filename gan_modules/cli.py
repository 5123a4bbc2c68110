"""The command line: ``python train.py fit|validate|sample`` in a clone, ``lightning-gans ...`` installed.

Each run logs and checkpoints into ``runs/<preset>/version_N/`` (Lightning's layout); ``--ckpt_path last``
continues the preset's newest run there, and ``sample`` takes ``last``, a run folder or a file.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import logging
import os
import re
import signal
import sys
import textwrap
import warnings
from importlib import resources
from pathlib import Path
from typing import NoReturn

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

import datamodules
import gan_modules
from gan_modules.base import GANModule
from gan_modules.callbacks import FIDCallback, RunMonitor, SampleGridCallback
from gan_modules.checkpoint_io import (CheckpointReadError, CheckpointWriteError, GANCheckpoint, find_last_checkpoint,
                                       read_checkpoint, resolve_checkpoint)
from gan_modules import evaluate
from gan_modules.fid import InceptionWeightsError
from gan_modules.flags import SettingError, on_the_command_line
from gan_modules.preemption import StopOnSignal
from gan_modules.run_integrity import CheckpointMismatchError, check_checkpoint_fits, check_strategy
from gan_modules.sampling import load_generator_checkpoint, output_problem, parse_device, write_samples

# Errors whose message says it all: one line on stderr, no traceback.
ONE_LINE_ERRORS = (CheckpointReadError, CheckpointWriteError, CheckpointMismatchError, InceptionWeightsError,
                   SettingError)
SAMPLE_HELP = "Write images from a checkpoint's generator: a uint8 tensor file and a PNG grid beside it."


class GANCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate``: a GAN has no test metric or predictions (``sample`` writes images)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: ArgumentParser) -> None:
        # The image shape is stated once, by the data, and handed to the model.
        parser.link_arguments("data.image_shape", "model.init_args.image_shape", apply_on="instantiate")
        # Checkpoints go to the run's own folder, runs/<preset>/version_N/checkpoints (Lightning's
        # default when `--checkpoint.dirpath` is unset), so each belongs to its TensorBoard run.
        parser.add_lightning_class_args(GANCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        # Groups of their own, so that every FID message can name a flag that exists (`--fid.*`).
        parser.add_lightning_class_args(FIDCallback, "fid")
        parser.add_lightning_class_args(SampleGridCallback, "sample_grid")
        parser.add_lightning_class_args(RunMonitor, "run_monitor")
        # `--help` lists the models' and datamodules' arguments too, each in a line or two.
        full_help = parser.format_help
        parser.format_help = lambda: _short_help(full_help() + _class_arguments_help())

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` (or a run folder) to a file (docs/training.md), and keep the configured model.

        LightningCLI's own version merges the checkpoint's hyperparameters, class path included, over
        the command line, and imports the module that class path names: a DCGAN checkpoint given to
        the WGAN-GP preset would train a DCGAN. Here the configuration (preset and command line) always
        decides, and nothing is imported. Once the classes are built, before any data are read,
        ``after_instantiate_classes`` refuses a checkpoint of another class or of other layer shapes.
        """
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # `build_cli(run=False)`: no subcommand
        logger = _named_tensorboard_args(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last" or (ckpt_path and Path(ckpt_path).is_dir()):
            config.ckpt_path = ckpt_path = str(self._checkpoint_to_continue(config, ckpt_path, logger))
            version = _run_version(Path(ckpt_path), logger)
            if subcommand == "fit" and version is not None and logger.get("version") is None:
                logger.version = version  # continue in the run's own folder, whose checkpoints are expected there:
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        if subcommand == "validate" and ckpt_path and config.checkpoint.dirpath is None:  # it saves nothing: its
            config.checkpoint.dirpath = str(Path(ckpt_path).parent)  # own folder, no "dirpath has changed" warning

    @staticmethod
    def _checkpoint_to_continue(config: Namespace, ckpt_path: str, logger: Namespace | None) -> Path:
        if ckpt_path != "last":
            return resolve_checkpoint(ckpt_path)
        if config.checkpoint.dirpath is not None:
            folder = Path(config.checkpoint.dirpath)
        elif logger is not None and logger.get("save_dir") and logger.get("name"):
            folder = Path(logger.save_dir) / logger.name
        else:
            folder = Path(config.trainer.get("default_root_dir") or ".")
        found = find_last_checkpoint(folder)
        if found is None:
            raise CheckpointReadError(
                f"--ckpt_path last: there is no run to continue in {folder} (no last*.ckpt in its "
                f"version_*/checkpoints/ folders): start a new run without --ckpt_path, or check the preset and "
                f"--trainer.logger.init_args.save_dir (or --checkpoint.dirpath) of the run to continue")
        return found

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        check_strategy(self.trainer.strategy)  # before any process is started
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():  # (not `best`, `hpc`, a URL: Lightning resolves them)
            # Another class, other layer shapes or a NaN are refused before the data are read (an image cache built).
            check_checkpoint_fits(self.model, read_checkpoint(ckpt_path), f" {ckpt_path}")
        # FID switched off (`--fid.enabled false`) is left out rather than carried along doing nothing.
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, FIDCallback) or c.enabled]
        self.trainer.callbacks.append(StopOnSignal())  # SIGTERM / SIGUSR1: last.ckpt, exit 128 + signal
        for callback in self.trainer.callbacks if self.subcommand else []:
            if isinstance(callback, FIDCallback):  # its weights, before any work: offline, a one-line error
                callback.load_extractor()

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if SLURMEnvironment.detect():  # one way to stop, SIGTERM -> last.ckpt and exit 143, not SLURM's requeue
            config.trainer.plugins = [*(config.trainer.plugins or []), SLURMEnvironment(auto_requeue=False)]
        _refresh_progress_bar_at_log_interval(config.trainer)


def _named_tensorboard_args(config: Namespace) -> Namespace | None:
    """The ``init_args`` of the configured TensorBoard logger (``None`` for another logger or none), with
    the default logger's name set to the preset's: runs/<preset>/ (build_cli leaves it unset)."""
    logger = config.trainer.get("logger")
    args = getattr(logger, "init_args", None)
    if args is None or "TensorBoardLogger" not in str(getattr(logger, "class_path", "")):
        return None
    if args.get("name") is None:
        args.name = _preset_name(config.get("config"))
    # Lightning expands $VARS in the logs' folder but not in the checkpoints' it derives from it: expand once.
    for owner, key, flag in ((args, "save_dir", "--trainer.logger.init_args.save_dir"),
                             (config.get("checkpoint") or {}, "dirpath", "--checkpoint.dirpath")):
        if owner.get(key):
            owner[key] = os.path.expanduser(os.path.expandvars(str(owner[key])))
            if "$" in owner[key]:
                raise CheckpointWriteError(errno.EINVAL, f"{flag} {owner[key]} names an environment variable that is "
                                                         "not set: set it, or give the folder itself")
    return args


def _run_version(checkpoint: Path, logger: Namespace | None) -> int | None:
    """N when ``checkpoint`` is ``<save_dir>/<name>/version_N/checkpoints/FILE`` of the configured logger."""
    run = checkpoint.parent.parent
    match = re.fullmatch(r"version_(\d+)", run.name)
    if logger is None or match is None or checkpoint.parent.name != "checkpoints" or not logger.get("save_dir"):
        return None
    same = run.parent.resolve() == (Path(logger.save_dir) / str(logger.get("name"))).resolve()
    return int(match.group(1)) if same else None


def _refresh_progress_bar_at_log_interval(trainer: Namespace) -> None:
    """Give the trainer a :class:`~gan_modules.callbacks.OneDrawProgressBar` (the losses shown) that redraws
    every ``log_every_n_steps`` batches, when they change, unless the bar is off or the configuration brings
    its own (Lightning's default redraws at every batch)."""
    callbacks = trainer.get("callbacks") or []
    if trainer.get("enable_progress_bar") is False or any(
            str(getattr(c, "class_path", "")).endswith("ProgressBar") for c in callbacks):
        return
    every = trainer.get("log_every_n_steps") or 50  # Lightning's default interval
    trainer.callbacks = [*callbacks, Namespace(class_path="gan_modules.callbacks.OneDrawProgressBar",
                                               init_args=Namespace(refresh_rate=every))]


def _preset_name(config_files: list | None) -> str:
    """The stem of the first ``--config`` file that sets ``model`` (a trainer fragment such as
    configs/trainer/cpu.yaml does not), else of the first file; ``lightning_logs`` without one."""
    files = [Path(path.absolute) for path in config_files or [] if getattr(path, "absolute", None)]
    for path in files:
        if "model" in (yaml.safe_load(path.read_text()) or {}):
            return path.stem
    return files[0].stem if files else "lightning_logs"


def _class_arguments_help() -> str:
    """The arguments of every model and datamodule; those every model shares (GANModule's) once."""
    sections = []
    for key, package, shared in (("model", gan_modules, GANModule), ("data", datamodules, None)):
        classes = [getattr(package, name) for name in package.__all__]
        for cls, title in ([(shared, f"every {key}")] if shared else []) + [(c, c.__name__) for c in classes]:
            parser = ArgumentParser(prog=f"--{key} {title}")
            own = inspect.signature(cls.__init__).parameters  # a model passes the shared rest on by **kwargs
            skip = None if shared is None else set(inspect.signature(shared.__init__).parameters) - set(own)
            parser.add_class_arguments(cls, key, skip=skip)
            arguments = parser.format_help().split("\n\n", 2)[2]  # drop the usage and -h blocks
            sections.append(f"\n=== --{key} {title} ===\n{arguments}")
    return "".join(sections)


def _short_help(text: str, width: int = 100) -> str:
    """argparse's help with a one-line usage and each option's description cut to its first sentence,
    type and default (``python train.py fit --help`` documents some 150 options)."""
    usage, _, body = text.partition("\n\n")
    prog = re.match(r"usage: (.*?) \[-", " ".join(usage.split()) + " [-").group(1)
    lines = [f"usage: {prog} [-h] [--config CONFIG] [--print_config[=flags]] [--KEY VALUE ...]", "",
             "Each option's first sentence; `--model.help CLASS` (and --trainer.logger.help, ...) show a class "
             "in full.", ""]
    for block in re.split(r"\n(?!    )", body.removesuffix("\n")):  # a line and the lines indented below it
        first, *rest = block.split("\n")
        if not first.startswith(("  -", "  data.image_shape")):
            lines.extend([first, *rest])
            continue
        invocation, _, description = first.strip().partition("  ")
        if invocation.endswith("[CLASS_PATH_OR_NAME]") or re.fullmatch(r"--\w+ CONFIG", invocation):
            continue  # `--X.help CLASS` (said once, at the top) and each group's own config file
        description = " ".join(" ".join([description, *rest]).split())
        cut = max(description.rfind(" (type: "), description.rfind(" (required, type: "))
        details = "" if cut < 0 else re.sub(r", known subclasses:.*\)$", ")", description[cut:])
        first = re.split(r"(?<=\.)\s", description[:cut] if cut >= 0 else description, maxsplit=1)[0]
        wrapped = textwrap.wrap(first + details, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
        while len(wrapped) > 2 and len(first) > 40:  # two lines at most, the type and default kept
            first = textwrap.shorten(first, len(first) - 10, placeholder=" ...")
            wrapped = textwrap.wrap(first + details, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
        lines.extend(["  " + invocation, *wrapped])
    return "\n".join(lines) + "\n"


def build_cli(args: list[str] | None = None, run: bool = True) -> GANCLI:
    """The LightningCLI of this project; ``args`` replace ``sys.argv`` (tests pass them). Its errors name
    command-line flags (``--model.n_critic``), where the Python API's name arguments (``n_critic``)."""
    with on_the_command_line():
        return GANCLI(
            GANModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            trainer_defaults={
                # name None: the preset's name, set in GANCLI._parse_ckpt_path
                "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "runs", "default_hp_metric": False, "name": None}},
                "plugins": [{"class_path": "gan_modules.checkpoint_io.AtomicCheckpointIO"}],
                # RunMonitor prints each network's size (Lightning's table says "FLOPs 0" for a GAN) and logs
                # the hyperparameters at the end, with the final metrics, not LightningCLI's internals.
                "enable_model_summary": False,
                "enable_autolog_hparams": False,
            },
            # A continued run (`--ckpt_path last`) writes its configuration into its own folder again.
            save_config_kwargs={"overwrite": True},
            # `sample` needs no Trainer, model or data: `main` runs it before LightningCLI; `--help` names it.
            parser_kwargs={"description": "Train and validate DCGAN, WGAN-GP and WGAN from a preset (`fit --config "
                                          "configs/dcgan_mnist.yaml`), and sample from their checkpoints.",
                           "epilog": f"Also `train.py sample`: {SAMPLE_HELP} And `train.py evaluate`: "
                                     f"{evaluate.EVALUATE_HELP} (`--help` after either lists its options)"},
            args=args,
            run=run,
        )


def sample(argv: list[str]) -> None:
    """``train.py sample ARGS``: check every argument, then write the samples (``gan_modules.sampling``).
    Every problem ends the process with one line ``train.py sample: error: ...`` on stderr and exit status 2,
    and leaves no file half-written."""
    parser = argparse.ArgumentParser(prog="train.py sample", description=SAMPLE_HELP)
    parser.add_argument("--ckpt_path", default="last",
                        help="a checkpoint written by `train.py fit`, a run folder (runs/dcgan_mnist/version_0: its "
                             "last checkpoint), a preset's folder (runs/dcgan_mnist: its newest run's), or `last`: "
                             "the newest run's under runs/ (default last)")
    parser.add_argument("--num_samples", type=int, default=64, help="how many images (default 64)")
    parser.add_argument("--output", default=None,
                        help="uint8 N x C x H x W tensor file (.pt); the PNG grid goes beside it "
                             "(default: samples.pt in the checkpoint's run folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise (default 0)")
    parser.add_argument("--nrow", type=int, default=8, help="images per row of the grid (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run the generator on")
    args = parser.parse_args(argv)

    def fail(message: str) -> NoReturn:
        # parser.error's format and exit status 2, without the usage block: one line on stderr.
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    for flag in ("num_samples", "nrow"):
        if getattr(args, flag) < 1:
            fail(f"--{flag} must be at least 1, got {getattr(args, flag)}.")
    try:
        ckpt_path = resolve_checkpoint(args.ckpt_path)
    except CheckpointReadError as error:
        fail(str(error))
    run_folder = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    output = args.output if args.output is not None else run_folder / "samples.pt"
    if (problem := output_problem(output)) is not None:
        fail(problem)
    try:
        with on_the_command_line():
            model = load_generator_checkpoint(ckpt_path, map_location=parse_device(args.device))
            grid = write_samples(model, args.num_samples, output, args.seed, args.nrow)
    except (OSError, ValueError) as error:
        fail(error.strerror if isinstance(error, OSError) and error.strerror else str(error))
    print(f"wrote {args.num_samples} samples of {ckpt_path} to {output} and the grid to {grid}")


def _no_tips(record: logging.LogRecord) -> bool:
    return "Tip:" not in str(record.msg)


def _quiet_console() -> None:
    """What a user should not have to read: Lightning's advert tips, a deprecation inside Lightning's
    own pytree use, and each warning's source line (warnings print on one line each)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_no_tips)  # added once however often main runs
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {' '.join(str(message).split())}\n"


def _packaged_presets(argv: list[str]) -> list[str]:
    """``--config configs/NAME.yaml`` (or ``NAME.yaml``) from the installed package's presets when no
    such file is here: an installed ``lightning-gans`` runs the presets without the repository."""
    presets = resources.files("gan_modules") / "configs"
    resolved = list(argv)
    for i, value in enumerate(argv[1:], start=1):
        if argv[i - 1] == "--config" and not Path(value).exists():
            candidate = presets.joinpath(*Path(value.removeprefix("configs/")).parts)
            if candidate.is_file():
                resolved[i] = str(candidate)
    return resolved


def main(argv: list[str] | None = None) -> None:
    """``train.py fit|validate|sample|evaluate ...``; ``argv`` replaces ``sys.argv[1:]``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["sample"]:
        sample(args[1:])
        return
    if args[:1] == ["evaluate"]:  # gan_modules/evaluate.py: scores and their protocol as JSON
        return evaluate.main(args[1:])
    _quiet_console()
    args = _packaged_presets(args)
    if argv is None:
        sys.argv[1:] = args  # LightningCLI warns when given both sys.argv and args
    try:
        build_cli(None if argv is None else args)
    except SIGTERMException as stop:  # stopped, its state saved (GANCheckpoint): not a success for a scheduler
        sys.exit(stop.code if isinstance(stop.code, int) else 128 + signal.SIGTERM)
    except Exception as error:
        reason = error  # jsonargparse raises its own error for an argument's, with the argument's as the cause
        while reason is not None and not isinstance(reason, ONE_LINE_ERRORS):
            reason = reason.__cause__
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG and reason is None:
            reason = (f"a file name is too long for the file system ({error.filename}): shorten "
                      "`--trainer.logger.init_args.name`, `--trainer.logger.init_args.save_dir` or "
                      "`--checkpoint.filename`")
        if reason is None:
            raise
        print(f"train.py: error: {reason}", file=sys.stderr)  # the message says it all
        sys.exit(2)
