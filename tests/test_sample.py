"""`train.py sample`: arguments checked before any work, one-line errors naming the file, outputs
written atomically, and checkpoints that are unreadable, unsafe or non-finite refused."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import MNISTDataModule
from gan_modules import DCGAN
from gan_modules.sampling import load_generator_checkpoint
from train import build_cli
from train import sample as sample_command
from conftest import write_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = {"image_shape": (1, 28, 28), "latent_dim": 8, "generator_width": 4, "critic_width": 4}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of a tiny DCGAN with an EMA generator, after one critic and one generator step."""
    root = tmp_path_factory.mktemp("sample")
    trainer = Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DCGAN(**TINY, ema_decay=0.5), MNISTDataModule(data_dir=str(write_mnist(root / "data")), batch_size=8))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def sample(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run `sample` in-process, expecting the one-line error with exit status 2; returns that line."""
    with pytest.raises(SystemExit) as exited:
        sample_command(list(args))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("train.py sample: error: ")
    return stderr


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_sample_writes_the_tensor_and_the_grid_and_nothing_else(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "samples.pt"
    sample_command(["--ckpt_path", str(checkpoint), "--num_samples", "5", "--nrow", "2", "--output", str(output)])
    images = torch.load(output, weights_only=True)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 28, 28)
    assert files_in(output.parent) == ["samples.png", "samples.pt"]  # no temporary file is left


def test_sample_reads_the_checkpoint_once_with_weights_only(checkpoint: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    load = torch.load

    def counting_load(*args, **kwargs):
        calls.append((kwargs.get("weights_only"), str(kwargs.get("map_location"))))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    sample_command(["--ckpt_path", str(checkpoint), "--num_samples", "2", "--output", str(tmp_path / "s.pt")])
    # The check that the file is intact (onto the meta device: no tensor read), then the one real load.
    assert calls == [(True, "meta"), (True, "cpu")]


def test_sample_uses_the_ema_generator_of_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    model = load_generator_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    assert model.generator_ema is not None and model.generator_steps == state["gan_state"]["generator_steps"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["state_dict"][key]), key


def test_sample_never_imports_what_the_hyperparameters_name(checkpoint: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # LightningCLI writes `_class_path` and `_instantiator` into the hyperparameters; a planted
    # checkpoint could name any module there. Importing this one would write the marker.
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"].update({"_class_path": "planted_module.Evil", "_instantiator": "planted_module.Evil"})
    planted = tmp_path / "planted.ckpt"
    torch.save(state, planted)
    sample_command(["--ckpt_path", str(planted), "--num_samples", "2", "--output", str(tmp_path / "s.pt")])
    assert not marker.exists() and "planted_module" not in sys.modules
    assert (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--nrow", "0"], "--nrow must be at least 1, got 0."),
    (["--num_samples", "0"], "--num_samples must be at least 1, got 0."),
    (["--output", "{tmp}/grid.png"], "--output {tmp}/grid.png must end in .pt"),
    (["--output", "{tmp}/folder.pt"], "--output: {tmp}/folder.pt is a folder, not a file"),
    (["--output", "{tmp}/a_file/sub/samples.pt"], "lies under {tmp}/a_file, which is a file, not a folder"),
    (["--device", "gpu0"], "--device 'gpu0' is not a device"),
    (["--device", "cuda:99"], "--device cuda:99 is not a CUDA device of this machine"),
], ids=["nrow-0", "num_samples-0", "png-suffix", "folder", "under-a-file", "bad-device", "missing-device"])
def test_bad_sample_arguments_are_refused_before_any_work(args: list[str], expected: str, checkpoint: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    before = files_in(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    message = sample(capsys, "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "s.pt"), *args)
    assert expected.replace("{tmp}", str(tmp_path)) in message
    assert files_in(tmp_path) == before and files_in(tmp_path / "folder.pt") == []


def test_a_full_disk_leaves_the_previous_samples_and_no_temporary_file(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "samples.pt"
    output.write_bytes(b"previous tensor")
    output.with_suffix(".png").write_bytes(b"previous grid")
    fsync, synced = os.fsync, []

    def full_at_the_grid(fd: int) -> None:  # the tensor file fits, the grid does not
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_the_grid)
    message = sample(capsys, "--ckpt_path", str(checkpoint), "--output", str(output))
    assert (f"Could not write samples {tmp_path / 'samples.png'} (in folder {tmp_path}): No space left on device. "
            "Free space on that device" in message and "`--output`" in message)
    assert files_in(tmp_path) == ["samples.png", "samples.pt"]  # both temporaries removed
    assert output.read_bytes() == b"previous tensor" and output.with_suffix(".png").read_bytes() == b"previous grid"


class _WritesAMarker:
    """Unpickling this would run `touch marker`; a weights-only load refuses it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncated(checkpoint: Path, path: Path) -> None:
    data = checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("write, expected", [
    (lambda ckpt, path: path.write_text("step: 3\nthis is not a checkpoint\n"), "is not a torch checkpoint"),
    (lambda ckpt, path: path.write_bytes(b""), "is empty (0 bytes)"),
    (_truncated, ""),  # the wording is read_checkpoint's (tests/ of checkpoint_io); here: one line, the file
    (lambda ckpt, path: torch.save({"state_dict": _WritesAMarker(path.parent / "marker")}, path), "refused for safety"),
], ids=["text", "empty", "truncated", "unsafe-pickle"])
def test_unreadable_checkpoints_give_one_line_naming_the_file(write, expected: str, checkpoint: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an explicit weights_only must still win
    bad = tmp_path / "ckpts" / "broken.ckpt"
    bad.parent.mkdir()
    write(checkpoint, bad)
    message = sample(capsys, "--ckpt_path", str(bad), "--output", str(tmp_path / "out" / "s.pt"))
    assert f"Checkpoint {bad} " in message and expected in message
    assert not (tmp_path / "ckpts" / "marker").exists()
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("poisoned", ["generator", "generator_ema"])
def test_a_checkpoint_with_non_finite_weights_is_refused(poisoned: str, checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    state = torch.load(checkpoint, weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if k.startswith(f"{poisoned}.") and v.is_floating_point())
    state["state_dict"][key].view(-1)[0] = float("nan")
    bad = tmp_path / "diverged.ckpt"
    torch.save(state, bad)
    message = sample(capsys, "--ckpt_path", str(bad), "--output", str(tmp_path / "out" / "s.pt"))
    assert f"{bad} holds a non-finite value (state_dict.{key})" in message and "an earlier checkpoint" in message
    assert files_in(tmp_path / "out") == []


def test_a_checkpoint_of_no_model_of_this_project_is_refused(checkpoint: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["gan_state"]["model"] = "GANModule"  # importable from gan_modules, but not one of __all__
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    message = sample(capsys, "--ckpt_path", str(other), "--output", str(tmp_path / "s.pt"))
    assert f"{other} was not written by this project's GAN modules (found model 'GANModule')" in message


@pytest.mark.slow
def test_sample_with_a_missing_checkpoint_names_the_flag(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "sample", "--ckpt_path", "nope.ckpt"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "No checkpoint at nope.ckpt: pass `--ckpt_path`" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_sample_does_not_compile_a_generator_trained_with_compile(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"].update(compile=True, channels_last=True)
    trained_compiled = tmp_path / "compiled.ckpt"
    torch.save(state, trained_compiled)
    model = load_generator_checkpoint(trained_compiled)
    assert model.generator._compiled_call_impl is None and not model.hparams.channels_last


def test_help_lists_sample_beside_fit_and_validate(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exited:
        build_cli(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    listed = text.split("Available subcommands:")[1]
    commands = [line.split()[0] for line in listed.splitlines() if re.match(r"    \w", line)]  # not continuations
    assert commands[:2] == ["fit", "validate"], listed
    assert "Also `train.py sample`: Write images from a checkpoint's generator" in " ".join(text.split())
    assert "And `train.py evaluate`: Score a checkpoint with FID" in " ".join(text.split())


@pytest.mark.slow
def test_sample_help_documents_its_arguments() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "sample", "--help"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: train.py sample")
    for flag in ("--ckpt_path", "--num_samples", "--output", "--seed", "--nrow", "--device"):
        assert flag in result.stdout, flag


def test_samples_are_generated_in_batches_with_the_same_images_and_a_bounded_grid(tmp_path: Path) -> None:
    # 100,000 samples in one forward needed gigabytes: the generator now sees batch_size at a time.
    from torchvision.io import decode_png, read_file

    from gan_modules.sampling import write_samples

    model = DCGAN(image_shape=(1, 16, 16), latent_dim=8, generator_width=4, critic_width=4)
    seen = []
    model.generator.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    grid = write_samples(model, 50, tmp_path / "batched.pt", nrow=4, batch_size=16)
    assert seen == [16, 16, 16, 2]
    write_samples(model, 50, tmp_path / "whole.pt", nrow=4, batch_size=50)
    assert torch.equal(torch.load(tmp_path / "batched.pt"), torch.load(tmp_path / "whole.pt"))
    # The grid shows nrow x nrow images (16 px digits scaled up to about 480 px), not all 50.
    assert decode_png(read_file(str(grid))).shape[1] < 600
