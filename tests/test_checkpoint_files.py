"""Checkpoint files: safe, clear reads; writes that clean up; the end of every epoch and run saved."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules import MNISTDataModule
from gan_modules import DCGAN
from gan_modules.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointReadError,
    CheckpointWriteError,
    GANCheckpoint,
    read_checkpoint,
    sweep_stale_temporaries,
    temporary_path,
)

TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4, n_critic=1)


class WritesMarker:
    """Unpickling this runs ``touch MARKER``: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _good(path: Path, step: int = 0) -> Path:
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": step}, path)
    return path


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [read_checkpoint, AtomicCheckpointIO().load_checkpoint],
                         ids=["read_checkpoint", "AtomicCheckpointIO"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_even_when_torch_is_told_to_allow_it(
        load, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "payload": WritesMarker(marker)}, tmp_path / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load's default becomes unsafe
    with pytest.raises(CheckpointReadError, match=r"last\.ckpt holds objects other than tensors and plain data "
                                                  r"\(posix\.system\): refused for safety"):
        load(tmp_path / "last.ckpt")
    assert not marker.exists()


def test_fit_refuses_a_planted_checkpoint_before_it_runs_anything(mnist_dir: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "payload": WritesMarker(marker)}, tmp_path / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointReadError, match="refused for safety"):
        trainer.fit(DCGAN(**TINY), MNISTDataModule(data_dir=str(mnist_dir), batch_size=8),
                    ckpt_path=str(tmp_path / "last.ckpt"))
    assert not marker.exists()


def _text(path: Path) -> None:
    path.write_text("not a checkpoint\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    _good(path)
    path.write_bytes(path.read_bytes()[:200])


def _corrupt(path: Path) -> None:
    _good(path)
    data = bytearray(path.read_bytes())
    data[100:400] = bytes(300)  # the zip's first records, zeroed
    path.write_bytes(bytes(data))


def _not_a_dict(path: Path) -> None:
    torch.save([torch.ones(1)], path)


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make, problem", [
    (_text, "is not a torch checkpoint"), (_empty, "is empty"), (_truncated, "is truncated or corrupt"),
    (_corrupt, "is truncated or corrupt"), (_not_a_dict, "holds a list, not a checkpoint dictionary"),
    (_folder, "is a folder"), (lambda path: None, "does not exist"),
], ids=["text", "empty", "truncated", "corrupt", "not_a_dict", "folder", "missing"])
def test_an_unreadable_checkpoint_gives_one_line_naming_it_and_the_newest_intact_one_beside_it(
        make, problem, tmp_path: Path) -> None:
    old, newest_intact, broken_newer = (tmp_path / name for name in
                                        ("epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "epoch=2-step=30.ckpt"))
    _good(old, 10), _good(newest_intact, 20)
    broken_newer.write_bytes(b"")  # newer, but not intact: must be passed over
    for age, path in enumerate((broken_newer, newest_intact, old)):
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
    last = tmp_path / "last.ckpt"
    make(last)

    with pytest.raises(CheckpointReadError) as caught:
        read_checkpoint(last)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"Checkpoint {last} {problem}")
    assert message.endswith(f"the newest intact checkpoint beside it is epoch=1-step=20.ckpt: "
                            f"pass --ckpt_path {newest_intact}")


def test_an_unreadable_checkpoint_alone_in_its_folder_asks_for_another_file(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_text("x")
    with pytest.raises(CheckpointReadError, match=r"last\.ckpt is not a torch checkpoint .*; pass another file "
                                                  r"to --ckpt_path$"):
        read_checkpoint(tmp_path / "last.ckpt")


def _out_of_memory(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
    """A ``map_location`` that fails as a full device does, when the first tensor is placed."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_sound_checkpoint_that_cannot_be_placed_gives_torchs_error_not_a_damage_report(tmp_path: Path) -> None:
    last = _good(tmp_path / "last.ckpt", 20)
    _good(tmp_path / "epoch=0-step=10.ckpt", 10)  # an older file it must not send the user back to
    for map_location, error in ((_out_of_memory, torch.OutOfMemoryError), ("cuda:99", RuntimeError)):
        with pytest.raises(error) as caught:
            read_checkpoint(last, map_location=map_location)
        assert not isinstance(caught.value, CheckpointReadError)
        where = "cuda:99" if map_location == "cuda:99" else "the given map_location"
        assert caught.value.__notes__ == [f"While loading checkpoint {last} onto {where}: the file itself is "
                                          "complete (it loads onto the meta device and its checksums match)."]
    _truncated(last)  # the same failure on a damaged file is reported as the damage
    with pytest.raises(CheckpointReadError, match=r"last\.ckpt is truncated or corrupt .*epoch=0-step=10\.ckpt"):
        read_checkpoint(last, map_location=_out_of_memory)


def _flip_a_weight_byte(path: Path) -> None:
    """One flipped bit in a tensor's data: torch.load reads it without complaint."""
    torch.save({"state_dict": {"w": torch.full((64,), 3.0)}, "global_step": 0}, path)
    data = bytearray(path.read_bytes())
    at = data.index(torch.full((64,), 3.0).numpy().tobytes()) + 10
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_suggested_checkpoint_is_one_whose_checksums_match(tmp_path: Path) -> None:
    sound, rotten = _good(tmp_path / "epoch=0-step=10.ckpt", 10), tmp_path / "epoch=1-step=20.ckpt"
    _flip_a_weight_byte(rotten)
    assert torch.load(rotten, weights_only=True)["state_dict"]["w"].ne(3.0).sum() == 1  # torch does not notice
    os.utime(sound, (1e9, 1e9))  # the rotten one is newer
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=r"the newest intact checkpoint beside it is epoch=0-step=10\.ckpt"):
        read_checkpoint(tmp_path / "last.ckpt")


def test_a_symlink_loop_gives_the_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").symlink_to(tmp_path / "last.ckpt")
    _good(tmp_path / "epoch=0-step=10.ckpt", 10)
    with pytest.raises(CheckpointReadError, match=r"last\.ckpt does not exist; the newest intact checkpoint beside "
                                                  r"it is epoch=0-step=10\.ckpt"):
        read_checkpoint(tmp_path / "last.ckpt")


def test_an_intact_checkpoint_loads_onto_the_cpu(tmp_path: Path) -> None:
    checkpoint = read_checkpoint(_good(tmp_path / "a.ckpt", 7))
    assert checkpoint["global_step"] == 7 and checkpoint["state_dict"]["w"].device.type == "cpu"
    assert AtomicCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")["global_step"] == 7


# --- writing -------------------------------------------------------------------------------------


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_a_full_disk_leaves_no_partial_file_and_names_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointWriteError) as caught:
        io.save_checkpoint({"step": 2, "payload": torch.zeros(1000)}, path)
    assert caught.value.errno == errno.ENOSPC
    assert f"Could not write checkpoint {path} (in folder {tmp_path}): No space left on device" in str(caught.value)
    assert "--checkpoint.dirpath" in str(caught.value)
    assert _temporaries(tmp_path) == []
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_an_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_under_a_file_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where the folder should be")
    expected = r"Could not write checkpoint .*runs/ckpt/last\.ckpt .*Not a directory.*--checkpoint\.dirpath"
    with pytest.raises(CheckpointWriteError, match=expected):
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "runs" / "ckpt" / "last.ckpt")


def _age(path: Path, seconds: float) -> Path:
    path.write_bytes(b"partial")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_temporaries_untouched_for_an_hour_are_swept_and_nothing_else(tmp_path: Path) -> None:
    # Whoever wrote them (this machine or another sharing the folder), a write in flight is newer.
    assert temporary_path(tmp_path / "last.ckpt") == tmp_path / f".last.ckpt.{os.getpid()}.tmp"
    abandoned = [_age(tmp_path / ".last.ckpt.123.tmp", 3700),
                 _age(tmp_path / ".last.ckpt.0123abcd-456.tmp", 3700)]  # as named before
    kept = [_age(tmp_path / ".last.ckpt.124.tmp", 60),  # a write in flight, or just killed
            _age(tmp_path / ".notes.tmp", 3700), _age(tmp_path / "last.ckpt", 3700), _age(tmp_path / "x.123.tmp", 3700)]
    assert sorted(sweep_stale_temporaries(tmp_path)) == sorted(abandoned)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


# --- GANCheckpoint: writable folder, end of every epoch and of the run ----------------------------


class Record(Callback):
    """Counts training batches and notes the global step at each epoch end."""

    def __init__(self, crash_at_batch: int | None = None) -> None:
        self.batches, self.epoch_end_steps, self.crash_at_batch = 0, [], crash_at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.crash_at_batch:
            raise RuntimeError("crash")
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_end_steps.append(trainer.global_step)


def _fit(data_dir: Path, checkpoint: GANCheckpoint, record: Record, max_epochs: int = 2, model_args=None,
         **trainer_args) -> tuple[DCGAN, Trainer]:
    torch.manual_seed(0)
    model = DCGAN(**TINY, **(model_args or {}))
    trainer = Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      plugins=[AtomicCheckpointIO()], callbacks=[checkpoint, record], **trainer_args)
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8))
    return model, trainer


@pytest.mark.parametrize("dirpath", ["a_file", "a_file/checkpoints"], ids=["folder_is_a_file", "folder_under_a_file"])
def test_an_unwritable_checkpoint_folder_stops_the_run_before_any_batch(dirpath, mnist_dir: Path,
                                                                        tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")  # tests run as root, which ignores permissions
    record = Record()
    with pytest.raises(CheckpointWriteError, match=rf"The checkpoint folder {tmp_path / dirpath} cannot be written "
                                                   r"\(.*\): fix its permissions or choose another folder with "
                                                   r"--checkpoint\.dirpath"):
        _fit(mnist_dir, GANCheckpoint(dirpath=tmp_path / dirpath), record)
    assert record.batches == 0


def test_setup_sweeps_stale_temporaries_and_leaves_no_probe(mnist_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    _age(tmp_path / "ckpt" / ".last.ckpt.123.tmp", 2 * 3600)
    with pytest.raises(RuntimeError, match="crash"):  # stops at the first batch: only setup has run
        _fit(mnist_dir, GANCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), Record(crash_at_batch=0))
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_saves_say_nothing_on_the_console(mnist_dir: Path, tmp_path: Path) -> None:
    # Each of GANCheckpoint's own saves (here the epochs' ends, next to the steps') logged "`weights_only` was
    # not set, defaulting to `False`" on the console.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        _fit(mnist_dir, GANCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_last=True, save_top_k=-1),
             Record(), max_epochs=2)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    assert {"epoch=0-step=16.ckpt", "epoch=1-step=32.ckpt", "last.ckpt"} <= {p.name for p in tmp_path.glob("*.ckpt")}
    assert [r.getMessage() for r in records if "weights_only" in r.getMessage()] == []


def test_saves_of_its_own_keep_to_save_top_k_and_one_last_ckpt(mnist_dir: Path, tmp_path: Path) -> None:
    # The epochs' ends next to the steps' are this class's own saves: they used to pile up (every epoch's file
    # kept) and made Lightning write last-v1.ckpt beside the last.ckpt it did not know.
    folder = tmp_path / "ckpt"
    _fit(mnist_dir, GANCheckpoint(dirpath=folder, every_n_train_steps=5, save_last=True), Record(), max_epochs=3)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=2-step=48.ckpt", "last.ckpt"]
    assert _saved_state(folder / "last.ckpt") == (48, 24)


def test_a_run_continued_elsewhere_leaves_the_first_runs_checkpoints(mnist_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # Only this class saves (steps 1000 apart): its newest file is in the state of first/last.ckpt.
    _fit(mnist_dir, GANCheckpoint(dirpath=first, every_n_train_steps=1000, save_last=True), Record(), max_epochs=1)
    before = sorted(p.name for p in first.iterdir())
    assert before == ["epoch=0-step=16.ckpt", "last.ckpt"]
    model = DCGAN(**TINY)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      plugins=[AtomicCheckpointIO()],
                      callbacks=[GANCheckpoint(dirpath=second, every_n_train_steps=1000, save_last=True)])
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8), ckpt_path=first / "last.ckpt")
    assert sorted(p.name for p in first.iterdir()) == before
    assert sorted(p.name for p in second.iterdir()) == ["epoch=1-step=32.ckpt", "last.ckpt"]


class StopAt(Callback):
    """Stops the run as a signal does (a SIGTERMException at a batch boundary) before the given batch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            raise SIGTERMException(143)


def test_a_run_stopped_by_a_signal_continues_in_the_same_last_ckpt(mnist_dir: Path, tmp_path: Path) -> None:
    # The signal's save is the first of the fit: the resumed run must know that last.ckpt as its own, not write
    # a last-v1.ckpt beside it.
    folder = tmp_path / "ckpt"
    with pytest.raises(SIGTERMException):
        _fit(mnist_dir, GANCheckpoint(dirpath=folder, save_last=True), StopAt(batch=3), max_epochs=1)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    model = DCGAN(**TINY)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      plugins=[AtomicCheckpointIO()], callbacks=[GANCheckpoint(dirpath=folder, save_last=True)])
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8), ckpt_path=folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=16.ckpt", "last.ckpt"]
    assert _saved_state(folder / "last.ckpt") == (16, 8)


def _saved_state(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["global_step"], checkpoint["gan_state"]["critic_steps"]


@pytest.mark.slow
def test_every_n_train_steps_keeps_the_end_of_every_epoch_and_of_the_run(mnist_dir: Path, tmp_path: Path) -> None:
    record = Record()
    checkpoint = GANCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True, save_top_k=-1)
    model, trainer = _fit(mnist_dir, checkpoint, record)
    # 8 batches of a critic and a generator step: epochs end at global steps 16 and 32, not multiples of 3.
    assert record.epoch_end_steps == [16, 32]
    for epoch, step in enumerate(record.epoch_end_steps):
        assert (tmp_path / f"epoch={epoch}-step={step}.ckpt").is_file()
    assert (tmp_path / "epoch=0-step=6.ckpt").is_file()  # and the step checkpoints (steps come in pairs)
    assert _saved_state(tmp_path / "last.ckpt") == (trainer.global_step, model.critic_steps) == (32, 16)


@pytest.mark.parametrize("model_args, trainer_args", [({"max_generator_steps": 3}, {}), ({}, {"max_steps": 6})],
                         ids=["max_generator_steps", "max_steps"])
def test_a_stop_mid_epoch_leaves_last_ckpt_at_the_final_state(model_args, trainer_args, mnist_dir: Path,
                                                              tmp_path: Path) -> None:
    checkpoint = GANCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True)
    model, trainer = _fit(mnist_dir, checkpoint, Record(), model_args=model_args, **trainer_args)
    assert trainer.global_step == 6  # inside the first epoch (16 steps), between the saves at 4 and 8
    assert _saved_state(tmp_path / "last.ckpt") == (trainer.global_step, model.critic_steps)


def test_nothing_is_saved_after_an_exception(mnist_dir: Path, tmp_path: Path) -> None:
    checkpoint = GANCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_last=True)
    with pytest.raises(RuntimeError, match="crash"):
        _fit(mnist_dir, checkpoint, Record(crash_at_batch=3))  # after 3 batches: global step 6
    assert _saved_state(tmp_path / "last.ckpt") == (4, 2)  # the last planned save, not the crashed state


def test_every_n_epochs_is_still_honoured_and_the_end_of_the_run_saved(mnist_dir: Path, tmp_path: Path) -> None:
    checkpoint = GANCheckpoint(dirpath=tmp_path, every_n_epochs=2, save_top_k=-1)
    _fit(mnist_dir, checkpoint, Record(), max_epochs=3)
    # Epoch 1 by the schedule; epoch 2, the last, because the run ends there; never epoch 0.
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=1-step=32.ckpt", "epoch=2-step=48.ckpt"]


def test_a_flipped_bit_and_a_named_pipe_are_refused_not_loaded(tmp_path: Path) -> None:
    _flip_a_weight_byte(tmp_path / "rotten.ckpt")  # torch.load would read it without complaint
    with pytest.raises(CheckpointReadError, match=r"rotten\.ckpt is truncated or corrupt \(a record does not "
                                                  r"match its checksum\)"):
        read_checkpoint(tmp_path / "rotten.ckpt")
    os.mkfifo(tmp_path / "pipe.ckpt")  # opening it to read would wait for a writer forever
    with pytest.raises(CheckpointReadError, match=r"pipe\.ckpt is not a regular file"):
        read_checkpoint(tmp_path / "pipe.ckpt")


def test_a_checkpoint_name_too_long_for_the_file_system_stops_the_run_before_any_batch(mnist_dir: Path,
                                                                                       tmp_path: Path) -> None:
    record = Record()
    with pytest.raises(CheckpointWriteError, match=r"is too long for the file system: shorten --checkpoint\.filename"):
        _fit(mnist_dir, GANCheckpoint(dirpath=tmp_path, filename="x" * 250 + "-{epoch}"), record)
    assert record.batches == 0
