"""Checkpoint files: read safely with one clear error, written so that a kill cannot break them, and
saved at the end of every epoch and of the run."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import re
import signal
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

# The first bytes of the two formats torch.save writes: a zip archive (torch >= 1.6) or a bare pickle.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
# A writer's temporary file, ``.{name}.{pid}.tmp`` beside its target (``.{name}.{space}-{pid}.tmp`` before).
_TEMPORARY = re.compile(r"^\..+\.(?:[0-9a-f]{8}-)?\d+\.tmp$")
_ABANDONED_AFTER_S = 3600  # a temporary unchanged this long has no writer: a write takes seconds


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, unreadable, damaged or refused as unsafe."""


class CheckpointWriteError(OSError):
    """A checkpoint, or another file of a run, that cannot be written; ``errno`` is the operating system's."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Loads an intact checkpoint with ``weights_only=True`` (an explicit argument wins over
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``).

    Raises:
        CheckpointReadError: one line naming the file, what is wrong with it (:func:`damage`) and the newest
            intact ``*.ckpt`` beside it, if any, to pass to ``--ckpt_path``.
        Exception: torch's own error (e.g. ``torch.OutOfMemoryError``) with a note naming the file, when the
            intact file's tensors cannot be placed.
    """
    path = Path(path)
    problem = damage(path)
    if problem is not None:
        try:
            siblings = sorted((p for p in path.parent.glob("*.ckpt") if p.is_file() and p.name != path.name),
                              key=_mtime, reverse=True)
        except OSError:
            siblings = []
        alternative = next((p for p in siblings if damage(p) is None), None)
        hint = (f"; the newest intact checkpoint beside it is {alternative.name}: pass --ckpt_path {alternative}"
                if alternative else "; pass another file to --ckpt_path")
        raise CheckpointReadError(f"Checkpoint {path} {problem}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        where = map_location if isinstance(map_location, (str, torch.device)) else "the given map_location"
        error.add_note(f"While loading checkpoint {path} onto {where}: the file itself is complete "
                       "(it loads onto the meta device and its checksums match).")
        raise


def damage(path: Path) -> str | None:
    """What is wrong with the checkpoint file ``path``, or ``None``: intact means it loads as a dictionary
    (``weights_only``, onto ``meta``: no tensor is read) and every zip record matches its checksum, which
    ``torch.load`` does not check (a flipped bit in a weight loads silently)."""
    if not path.is_file():
        return ("is a folder, not a checkpoint file" if path.is_dir() else
                "is not a regular file (a pipe or a device)" if path.exists() else "does not exist")
    try:
        with open(path, "rb") as file:
            head = file.read(len(_ZIP_MAGIC))
        if not head:
            return "is empty (0 bytes): its write never finished"
        if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
            return f"is not a torch checkpoint (it starts with {head!r})"
        checkpoint = torch.load(path, map_location="meta", weights_only=True)
        if head == _ZIP_MAGIC:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return "is truncated or corrupt (a record does not match its checksum)"
    except pickle.UnpicklingError as error:  # torch names the offending global: "GLOBAL posix.system"
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        return (f"holds objects other than tensors and plain data{f' ({found.group(1)})' if found else ''}: "
                "refused for safety, since loading it could run code")
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError, ... here
        return f"is truncated or corrupt ({str(error).split('. ')[0].strip() or type(error).__name__})"
    if not isinstance(checkpoint, dict):
        return f"holds a {type(checkpoint).__name__}, not a checkpoint dictionary"
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def find_last_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` in ``folder``: a checkpoint folder, a run (``runs/dcgan_mnist/version_3``),
    a preset's runs (``runs/dcgan_mnist``) or all presets' (``runs``); ``None`` if there is none."""
    patterns = ("last*.ckpt", "checkpoints/last*.ckpt", "version_*/checkpoints/last*.ckpt",
                "*/version_*/checkpoints/last*.ckpt")
    found = [path for pattern in patterns for path in Path(folder).glob(pattern) if path.is_file()]
    return max(found, key=_mtime, default=None)


def resolve_checkpoint(spec: str | Path, runs_dir: str | Path = "runs") -> Path:
    """The checkpoint file ``spec`` stands for: ``last`` (the newest under ``runs_dir``), a folder (see
    :func:`find_last_checkpoint`) or a file, returned as it is.

    Raises:
        CheckpointReadError: ``last`` or a folder without any ``last*.ckpt``.
    """
    last = str(spec) == "last"
    folder = Path(runs_dir) if last else Path(spec)
    if not last and not folder.is_dir():
        return Path(spec)
    found = find_last_checkpoint(folder)
    if found is None:
        raise CheckpointReadError(f"No checkpoint to use for {spec}: no last*.ckpt in {folder} or its runs' "
                                  f"checkpoints/ folders (train a run first, or give the .ckpt file)")
    return found


def temporary_path(target: Path) -> Path:
    """Where this process writes ``target`` before renaming it into place: a hidden file beside it."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def sweep_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes and returns the temporaries (:func:`temporary_path`) in ``folder`` untouched for an hour:
    killed runs' leftovers (a write in flight, even another machine's, is newer). Nothing else is touched."""
    try:
        entries = [e for e in Path(folder).iterdir() if _TEMPORARY.match(e.name)]
    except OSError:
        return []
    removed = []
    for entry in (e for e in entries if time.time() - _mtime(e) > _ABANDONED_AFTER_S):
        with contextlib.suppress(OSError):  # a concurrent sweep, or no permission: it stays
            entry.unlink()
            removed.append(entry)
    return removed


def write_atomically(files: dict[Path, bytes | memoryview], what: str, elsewhere: str) -> None:
    """Write each of ``files`` (path: bytes) to a temporary beside it, flushed to disk, and rename them all into place
    only once all are complete: a full disk, a kill or an interrupt leaves the previous files, never part of one.

    Raises:
        CheckpointWriteError: naming the file, the reason and the fix (``elsewhere``: how to write elsewhere).
    """
    temporaries = {path: temporary_path(path) for path in files}
    target = next(iter(files))
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temporaries[target], "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        for target, temporary in temporaries.items():
            os.replace(temporary, target)
    except BaseException as error:  # a full disk, or a KeyboardInterrupt mid-write: no partial file
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):  # not written, or under a file
                temporary.unlink()
        if isinstance(error, OSError):
            raise CheckpointWriteError(
                error.errno if error.errno is not None else errno.EIO,
                f"Could not write {what} {target} (in folder {target.parent}): {error.strerror or error}. Free space "
                f"on that device, make the folder writable, or {elsewhere}") from error
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary beside its target, flushed to disk, then renamed over it: so
    ``last.ckpt`` is always complete, old or new. Reads go through :func:`read_checkpoint`."""

    def __init__(self) -> None:
        super().__init__()
        self.last_saved_path: Path | None = None  # the newest file this writer completed (rank 0 only)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Loads ``--ckpt_path`` (:func:`read_checkpoint`); a ValueError if ``weights_only=False`` is asked."""
        if weights_only is False:
            raise ValueError("weights_only=False was asked for, but this project loads checkpoints only "
                             "with weights_only=True (nothing in a checkpoint is executed): drop --weights_only")
        map_location = "cpu" if map_location is None else map_location
        if "://" in str(path):  # remote storage: Lightning's fsspec reader, still weights_only
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path, map_location=map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically (a CheckpointWriteError leaves no partial file);
        :class:`GANCheckpoint` sweeps what killed writers left when a fit starts."""
        if "://" in str(path):  # remote storage: fsspec's transaction is the best available
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically({Path(path): buffer.getbuffer()}, "checkpoint",
                         "write checkpoints elsewhere with --checkpoint.dirpath")
        self.last_saved_path = Path(path)


class GANCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments) that never loses the end of an epoch or of the run:
    ``every_n_train_steps``/``train_time_interval`` only add to the saves at every ``every_n_epochs``-th
    epoch's end (default 1), and the end of training is saved however it stopped (also as ``last.ckpt``
    with ``save_last``). A step is saved once, nothing after an exception (unless ``save_on_exception``),
    and the folder is test-written before training, so an unwritable one stops the run at once."""

    def __init__(self, every_n_epochs: int | None = None, **kwargs: Any) -> None:
        stepwise = bool(kwargs.get("every_n_train_steps")) or kwargs.get("train_time_interval") is not None
        # At the end of the training epoch unless told otherwise, not after validation: with validation every
        # 10 epochs Lightning would otherwise save every 10th epoch, and this class the rest by itself.
        kwargs["save_on_train_epoch_end"] = kwargs.get("save_on_train_epoch_end") is not False
        super().__init__(every_n_epochs=None if stepwise else every_n_epochs, **kwargs)
        self.epoch_interval = 1 if every_n_epochs is None else every_n_epochs
        self._saved_step: int | None = None  # global step of the newest save (or of the resumed state)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # resolves and broadcasts self.dirpath
        # Lightning warns that with manual optimisation a step checkpoint holds the state after the batch's
        # optimiser steps: the state an exact resume needs.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
        if stage != "fit" or not self.dirpath or "://" in str(self.dirpath):  # remote storage: not probed
            return
        # Probe with the longest name this run writes (a large epoch and step, as a temporary): a name too
        # long for the file system stops the run now, not after an epoch. A kill leaves the probe to be swept.
        folder, problem = Path(self.dirpath), None
        name = Path(self.format_checkpoint_name({"epoch": 10**6, "step": 10**9})).name
        if trainer.is_global_zero:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                temporary_path(folder / name).write_bytes(b"probe")
                temporary_path(folder / name).unlink()
                sweep_stale_temporaries(folder)
            except OSError as error:
                problem = (error.errno or errno.EIO, (
                    f"The checkpoint file name {name} (or the folder {folder}) is too long for the file system: "
                    "shorten --checkpoint.filename, or the run's folder and logger name")
                    if error.errno == errno.ENAMETOOLONG else (
                    f"The checkpoint folder {folder} cannot be written ({error.strerror or error}): fix its "
                    "permissions or choose another folder with --checkpoint.dirpath"))
        problem = trainer.strategy.broadcast(problem)  # every rank raises, none waits in a collective
        if problem is not None:
            raise CheckpointWriteError(*problem)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_step = trainer.global_step if trainer.ckpt_path else None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step  # called on every rank for every save

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # Lightning's own schedule
        # Lightning calls this hook also when training stops inside an epoch: the end of the run is saved
        # here, under the epoch's own name (on_train_end sees the epoch counter moved on). A should_stop
        # ignored for min_epochs or min_steps only adds a save.
        every, epochs, max_epochs = self.epoch_interval, trainer.current_epoch + 1, trainer.max_epochs
        if ((every >= 1 and epochs % every == 0) or trainer.should_stop or -1 != trainer.max_steps <= trainer.global_step
                or max_epochs not in (None, -1) and epochs >= max_epochs):
            self._save_unless_saved(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Instead of Lightning's, which writes last.ckpt (or a last-v1.ckpt beside it) again in a continued fit
        # that trained nothing; the end of a fit that trained is saved by on_train_epoch_end already.
        self._save_unless_saved(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A stop by a signal (``SIGTERMException`` at a batch boundary on every rank, from
        :class:`gan_modules.preemption.StopOnSignal` or Lightning; code 128 + the signal) saves that exact
        state as ``last.ckpt``; other exceptions save nothing (unless ``save_on_exception``)."""
        if not isinstance(exception, SIGTERMException):
            return super().on_exception(trainer, pl_module, exception)
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not self.dirpath:
            return None
        path = self.format_checkpoint_name(self._metrics(trainer), self.CHECKPOINT_NAME_LAST)
        if self._saved_step != trainer.global_step or not self.save_last:
            self.last_model_path = path  # as _save_unless_saved: the resumed run's save_last overwrites this file
            trainer.save_checkpoint(path, self.save_weights_only)
        code = exception.code if isinstance(exception.code, int) and exception.code > 128 else 128 + signal.SIGTERM
        rank_zero_info(f"Stopped by {signal.Signals(code - 128).name} after critic step {getattr(pl_module, 'critic_steps', '?')}: the exact "
                       f"state is saved in {path}; continue with `--ckpt_path last` (or that file).")
        return None

    @staticmethod
    def _metrics(trainer: Trainer) -> dict[str, Any]:
        return {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
                "step": torch.tensor(trainer.global_step)}

    def _save_unless_saved(self, trainer: Trainer) -> None:
        if (self._saved_step == trainer.global_step or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking or trainer.fast_dev_run):
            return
        metrics = self._metrics(trainer)
        if self.save_top_k:
            path, previous = self.format_checkpoint_name(metrics), self.best_model_path
            if self.monitor is None:  # as Lightning's own saves, recorded in the state they save
                self.best_model_path = path
            trainer.save_checkpoint(path, self.save_weights_only)
            # save_top_k 1 without a monitor keeps the newest only: of this folder, never the one resumed from
            path, previous = (Path(name).resolve() if name else None for name in (path, previous))
            if (self.monitor is None and self.save_top_k == 1 and previous and previous.parent == path.parent
                    and previous not in (path, Path(trainer.ckpt_path or path).resolve())):
                trainer.strategy.remove_checkpoint(previous)
        if self.save_last:  # Lightning's next save_last overwrites the file it knows, not a last-v1.ckpt beside it
            self.last_model_path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)

