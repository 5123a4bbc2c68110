"""Checkpoint files: read safely with one clear error, written so that a kill cannot break them."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import socket
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

# The first bytes of the two formats torch.save writes: a zip archive (torch >= 1.6) or a bare
# pickle (the legacy format, protocol 2). Anything else was never a torch checkpoint.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
# The writers' temporary files beside their targets, ``.{name}.{space}-{pid}.tmp`` (``.{name}.{pid}.tmp``
# before the space was named); a kill leaves them behind. ``space`` tells apart the process-id spaces
# of the writers sharing a folder (machines on a cluster's file system, containers on one machine),
# whose process ids mean nothing to each other: a hash of the host name and, on Linux, the pid
# namespace.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<space>[0-9a-f]{8})-)?(?P<pid>\d+)\.tmp$")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux
        return ""


_PID_SPACE = hashlib.sha1(f"{socket.gethostname()}/{_pid_namespace()}".encode()).hexdigest()[:8]
# Another space's temporary is taken as abandoned once unchanged this long (no write lasts a day).
_FOREIGN_STALE_AFTER_S = 24 * 3600


class CheckpointReadError(ValueError):
    """A checkpoint file that is missing, unreadable, damaged or refused as unsafe."""


class CheckpointWriteError(OSError):
    """A checkpoint (or its folder) that cannot be written; ``errno`` is the operating system's."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True``, whatever torch's default or environment.

    An explicit ``weights_only=True`` wins over ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (torch only
    lets that variable override a call that left the argument unset), so nothing in the file is
    executed or imported.

    Args:
        path: the checkpoint file.
        map_location: where tensors go, as for :func:`torch.load`.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointReadError: with one line naming the file and what is wrong with it, and, when an
            intact ``*.ckpt`` lies beside it, the newest such file to pass to ``--ckpt_path``.
        Exception: torch's own error (e.g. ``torch.OutOfMemoryError``), with a note naming the
            file, when the file is intact but its tensors cannot be placed: memory ran out, or
            ``map_location`` names a device this machine does not have.
    """
    path = Path(path)
    try:
        return _load_dict(path, map_location)
    except CheckpointReadError as error:
        alternative = _newest_intact_sibling(path)
        hint = (f"; the newest intact checkpoint beside it is {alternative.name}: pass "
                f"--ckpt_path {alternative}" if alternative else "; pass another file to --ckpt_path")
        raise CheckpointReadError(f"{error}{hint}") from None


def _load_dict(path: Path, map_location: Any) -> dict[str, Any]:
    """Loads ``path`` or raises a :class:`CheckpointReadError` that says why it cannot be."""
    if not path.exists():
        raise CheckpointReadError(f"Checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointReadError(f"Checkpoint {path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as file:
            head = file.read(len(_ZIP_MAGIC))
    except OSError as error:
        raise CheckpointReadError(f"Checkpoint {path} cannot be read ({error.strerror})") from None
    if not head:
        raise CheckpointReadError(f"Checkpoint {path} is empty (0 bytes): its write never finished")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointReadError(f"Checkpoint {path} is not a torch checkpoint (it starts with {head!r})")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's refusal names the offending global ("Unsupported global: GLOBAL posix.system").
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointReadError(
            f"Checkpoint {path} holds objects other than tensors and plain data{what}: refused for "
            "safety, since loading it could run code") from None
    except OSError as error:
        raise CheckpointReadError(f"Checkpoint {path} cannot be read ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError, ... here
        if _intact(path):
            # The file is complete; placing its tensors failed (out of memory, a device that is not
            # there): torch's own error says so, and no other checkpoint would fare better.
            where = map_location if isinstance(map_location, (str, torch.device)) else "the given map_location"
            _add_note(error, f"While loading checkpoint {path} onto {where}: the file itself is complete "
                             "(it loads onto the meta device and its checksums match).")
            raise
        detail = str(error).split(". ")[0].strip() or type(error).__name__
        raise CheckpointReadError(f"Checkpoint {path} is truncated or corrupt ({detail})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(
            f"Checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def _newest_intact_sibling(path: Path) -> Path | None:
    """The most recently written ``*.ckpt`` beside ``path`` that is intact, or None.

    Tried newest first, stopping at the first that is intact (:func:`_intact`), so a folder of good
    checkpoints costs one read. Hidden files (the writer's temporaries) are skipped.
    """
    try:
        itself = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        itself = path.absolute()
    try:  # is_file is False for a link that leads nowhere, so only ``itself`` can loop
        candidates = [p for p in path.parent.glob("*.ckpt")
                      if p.is_file() and not p.name.startswith(".") and p.resolve() != itself]
    except OSError:
        return None
    for candidate in sorted(candidates, key=_mtime, reverse=True):
        if _intact(candidate):
            return candidate
    return None


def _intact(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint: it loads as a dictionary with ``weights_only=True``
    and, in the zip format torch has written since 1.6, every record matches its checksum (which
    ``torch.load`` does not check: a flipped bit in a weight loads silently).

    Loaded onto the ``meta`` device, so no tensor is placed anywhere (and torch 2.14 does not even
    read the tensors' bytes), and checksummed in chunks: a checkpoint larger than the free memory is
    judged by its file alone.
    """
    try:
        if not isinstance(torch.load(path, map_location="meta", weights_only=True), dict):
            return False
        with open(path, "rb") as file:
            zipped = file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if zipped:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        return True
    except Exception:  # noqa: BLE001 - whatever stops the read, the file is not sound
        return False


def _add_note(error: BaseException, note: str) -> None:
    if hasattr(error, "add_note"):  # Python >= 3.11, which prints the notes with the error
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def find_last_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` (by modification time) of the runs in ``folder``, or ``None``.

    ``folder`` may be a checkpoint folder, a run folder (``runs/dcgan_mnist/version_3``, which holds
    ``checkpoints/``), a preset's folder of runs (``runs/dcgan_mnist``) or a folder of presets
    (``runs``): the newest is the run trained (or continued) most recently.
    """
    folder = Path(folder)
    patterns = ("last*.ckpt", "checkpoints/last*.ckpt", "version_*/checkpoints/last*.ckpt",
                "*/version_*/checkpoints/last*.ckpt")
    found = [path for pattern in patterns for path in folder.glob(pattern) if path.is_file()]
    return max(found, key=_mtime, default=None)


def resolve_checkpoint(spec: str | Path, runs_dir: str | Path = "runs") -> Path:
    """The checkpoint file ``spec`` stands for: ``last`` (the newest run's under ``runs_dir``), a folder
    (its newest run's, see :func:`find_last_checkpoint`) or a file, returned as it is.

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
    """Where this process writes ``target`` before renaming it into place: a hidden file beside it
    that names this process and its process-id space (machine, container), so
    :func:`sweep_stale_temporaries` can tell whether its writer is gone."""
    return target.with_name(f".{target.name}.{_PID_SPACE}-{os.getpid()}.tmp")


def sweep_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes the temporary files that killed or failed writers of this project left in ``folder``.

    A temporary (:func:`temporary_path`) of this process-id space (this machine, or container) is
    stale when no process of its id is alive, or when it is this process's own, since this is called
    before this process writes in the folder (a pid can come back after a restart, in containers
    especially). One of another space sharing the folder (another machine on a cluster's file
    system, another container), whose processes cannot be seen from here, is stale once unchanged
    for a day. Other files are never touched.

    Args:
        folder: the checkpoint folder; a missing folder holds nothing to sweep.

    Returns:
        The files removed.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None:
            continue
        if match.group("space") in (None, _PID_SPACE):
            if _process_alive(int(match.group("pid"))):
                continue
        elif time.time() - _mtime(entry) < _FOREIGN_STALE_AFTER_S:
            continue
        try:
            entry.unlink()
        except OSError:  # a concurrent sweep, or no permission: it stays, as it would have anyway
            continue
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # see sweep_stale_temporaries: none of this process's writes is in flight
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: keep the file
        return True
    try:
        os.kill(pid, 0)  # signal 0 delivers nothing; it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _write_error(error: OSError, action: str, target: Path) -> CheckpointWriteError:
    """One message for every failed write: what, where, why, and the fix."""
    reason = error.strerror or str(error)
    code = error.errno if error.errno is not None else errno.EIO
    return CheckpointWriteError(
        code, f"Could not {action} {target} (in folder {target.parent}): {reason}. Free space on that device, "
        "make the folder writable, or write checkpoints elsewhere with --checkpoint.dirpath")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target's folder, flushes it to disk, then
    renames it over the target. A rename within one folder is atomic, so ``last.ckpt`` is always
    either the previous complete checkpoint or the new complete one.

    (Lightning's own writer renames from the system temp folder, which is a copy, not an atomic
    rename, when that folder is on another file system.)

    A failed write removes its temporary file and raises :class:`CheckpointWriteError` naming the
    file; the temporaries a killed process left are swept at the first write into each folder.
    Reads go through :func:`read_checkpoint`: always ``weights_only=True``, one clear error.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()
        self.last_saved_path: Path | None = None  # the newest file this writer completed (rank 0 only)

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Loads a checkpoint for ``fit/validate --ckpt_path``.

        Args:
            path: the checkpoint file (or a remote URL, read through fsspec).
            map_location: as for :func:`torch.load`; None keeps Lightning's default, the CPU.
            weights_only: must be None or True: this project never unpickles arbitrary objects.

        Raises:
            CheckpointReadError: the file is missing, damaged or refused (see :func:`read_checkpoint`).
            ValueError: ``weights_only=False`` was asked for.
        """
        if weights_only is False:
            raise ValueError("weights_only=False was asked for, but this project loads checkpoints only "
                             "with weights_only=True (nothing in a checkpoint is executed): drop --weights_only")
        map_location = "cpu" if map_location is None else map_location
        if "://" in str(path):  # remote storage: Lightning's fsspec reader, still weights_only
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path, map_location=map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically.

        Raises:
            CheckpointWriteError: the folder or the file cannot be written (full disk, permissions,
                file size limit); no partial file is left behind.
        """
        path = Path(path)
        if "://" in str(path):  # remote storage: fsspec's transaction is the best available
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _write_error(error, "create the folder for checkpoint", path) from error
        if path.parent not in self._swept:
            sweep_stale_temporaries(path.parent)
            self._swept.add(path.parent)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        temporary = temporary_path(path)
        try:
            with open(temporary, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            self.last_saved_path = path
        except BaseException as error:  # a full disk, or a KeyboardInterrupt mid-write: no partial file
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass  # the write's own error is the one to report
            if isinstance(error, OSError) and not isinstance(error, CheckpointWriteError):
                raise _write_error(error, "write checkpoint", path) from error
            raise


class GANCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments) that never loses the end of an epoch or a run.

    Lightning turns its epoch-end checkpoints off when ``every_n_train_steps`` or
    ``train_time_interval`` is set; here those only add checkpoints: the end of every
    ``every_n_epochs``-th epoch (every epoch unless set) is still saved, and so is the end of
    training, however it stopped (``max_epochs``, ``max_steps``, ``max_time``, the model's
    ``max_generator_steps`` or any ``trainer.should_stop``), with ``last.ckpt`` (when
    ``save_last``) holding the final state. A step that was already saved is not saved again, and
    nothing is saved after an exception (unless ``save_on_exception``, as in Lightning).

    Before training, the checkpoint folder is created and test-written, so an unwritable one stops
    the run at once rather than after an epoch, and stale temporary files there are swept.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # resolves and broadcasts self.dirpath
        # Lightning warns that with manual optimisation and every_n_train_steps a checkpoint holds the
        # state after the batch's optimiser steps: that is the state an exact resume needs.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
        if stage != "fit" or not self.dirpath or "://" in str(self.dirpath):  # remote storage: not probed here
            return
        problem = _check_writable(Path(self.dirpath)) if trainer.is_global_zero else None
        # Every rank raises the same error, so none is left waiting in a collective for rank 0.
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise CheckpointWriteError(*problem)
        if trainer.is_global_zero:
            sweep_stale_temporaries(self.dirpath)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning calls this hook also when training stops inside an epoch, so the end of the run
        # is saved here, under the epoch's own name (on_train_end sees the epoch counter moved on).
        every = self._every_n_epochs or (1 if self._step_or_time_triggered else 0)
        if (every >= 1 and (trainer.current_epoch + 1) % every == 0) or _training_ends_after_this_epoch(trainer):
            self._save_now(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # A resumed fit's starting state is its checkpoint's: one that trains nothing (its limit
        # already reached) writes nothing over it.
        if trainer.ckpt_path:
            self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A safety net only: the end of the run was saved at its epoch's end. Lightning calls this
        # hook when fit ends normally, never after an exception. Lightning's own on_train_end writes
        # last.ckpt whenever this callback saved nothing yet, even for a step that is saved already.
        if self._should_skip_saving_checkpoint(trainer):
            return
        self._save_now(trainer)
        super().on_train_end(trainer, pl_module)

    @property
    def _step_or_time_triggered(self) -> bool:
        return self._every_n_train_steps >= 1 or self._train_time_interval is not None

    def _save_now(self, trainer: Trainer) -> None:
        """Saves the top-k file and ``last.ckpt``, unless this step is already saved (or not fitting)."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        monitor_candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)


def _training_ends_after_this_epoch(trainer: Trainer) -> bool:
    """At a train epoch's end: whether the fit loop stops here (the conditions of its ``done``)."""
    fit_loop = trainer.fit_loop
    if trainer.should_stop and getattr(fit_loop, "_can_stop_early", True):  # max_generator_steps, max_time, ...
        return True
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return max_epochs is not None and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs


def _check_writable(folder: Path) -> tuple[int, str] | None:
    """Creates ``folder`` and writes and removes a probe file in it; ``(errno, message)`` if that fails."""
    probe = temporary_path(folder / "write-probe")  # a kill leaves it to be swept
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"probe")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        code = error.errno if error.errno is not None else errno.EIO
        return code, (f"The checkpoint folder {folder} cannot be written ({reason}): fix its permissions or "
                      "choose another folder with --checkpoint.dirpath")
    return None
