"""Jobs on clusters and preemptible machines: a signal is not success, SLURM's own requeue is off,
shared folders named by environment variables, file names too long for the file system."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from conftest import write_mnist
from gan_modules.preemption import StopOnSignal
from train import build_cli, main

ROOT = Path(__file__).resolve().parents[1]
PRESET = str(ROOT / "configs" / "dcgan_mnist.yaml")
TINY = ["--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "8",
        "--trainer.enable_progress_bar", "false", "--fid.enabled", "false", "--trainer.limit_val_batches", "0"]


def run_main(monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str) -> int:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code


def test_a_variable_in_save_dir_sends_logs_and_checkpoints_to_the_expanded_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)
    data = write_mnist(tmp_path / "data")
    cli = build_cli(["--config", PRESET, "--data.data_dir", str(data), *TINY,
                     "--trainer.logger.init_args.save_dir", "$SCRATCH/runs"], run=False)
    assert cli.trainer.logger.save_dir == str(tmp_path / "scratch" / "runs")  # where checkpoints/ is derived from
    cli = build_cli(["--config", PRESET, "--data.data_dir", str(data), *TINY, "--checkpoint.dirpath", "$SCRATCH/ck"],
                    run=False)
    assert [c.dirpath for c in cli.trainer.checkpoint_callbacks] == [str(tmp_path / "scratch" / "ck")]


def test_a_variable_that_is_not_set_is_named_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    code = run_main(monkeypatch, tmp_path, "fit", "--config", PRESET, "--data.data_dir", str(tmp_path), *TINY,
                    "--trainer.logger.init_args.save_dir", "$NOT_SET_HERE/runs")
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert "--trainer.logger.init_args.save_dir $NOT_SET_HERE/runs names an environment variable that is not set" in error
    assert not (tmp_path / "$NOT_SET_HERE").exists()


@pytest.mark.slow
def test_slurms_own_requeue_is_switched_off(monkeypatch, tmp_path) -> None:
    # One way to stop (SIGTERM or SIGUSR1: last.ckpt, exit 128 + signal) and one file to continue from;
    # docs/ddp.md. With its auto-requeue on, Lightning would handle SLURM's SIGUSR1 (save hpc_ckpt, requeue).
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    handlers = []

    class SeeHandlers(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            handlers.append(signal.getsignal(signal.SIGUSR1))

    cli = build_cli(["--config", PRESET, "--data.data_dir", str(write_mnist(tmp_path / "data")), *TINY,
                     "--trainer.max_steps", "2"], run=False)
    assert any(isinstance(plugin, SLURMEnvironment) for plugin in cli.config_init.trainer.plugins)
    cli.trainer.callbacks.append(SeeHandlers())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert len(handlers) == 1 and isinstance(getattr(handlers[0], "__self__", None), StopOnSignal), handlers
    assert not list(tmp_path.rglob("hpc_ckpt*"))


@pytest.mark.slow
def test_sigterm_exits_143_after_saving_the_exact_state(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # ddp_helpers, by class path
    data = write_mnist(tmp_path / "data")
    code = run_main(monkeypatch, tmp_path, "fit", "--config", PRESET, "--data.data_dir", str(data), *TINY,
                    "--trainer.callbacks+=ddp_helpers.SignalAt", "--trainer.callbacks.epoch", "0",
                    "--trainer.callbacks.batch_idx", "2")
    assert code == 143  # 128 + SIGTERM: a scheduler, or `fit ... && sample`, does not take it for success
    last = tmp_path / "runs" / "dcgan_mnist" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["gan_state"]["critic_steps"] == 3


@pytest.mark.slow
def test_a_logger_name_too_long_for_the_file_system_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    code = run_main(monkeypatch, tmp_path, "fit", "--config", PRESET, "--data.data_dir",
                    str(write_mnist(tmp_path / "data")), *TINY, "--trainer.logger.init_args.name", "x" * 300)
    error = capsys.readouterr().err.strip()
    assert code == 2 and "a file name is too long for the file system" in error
    assert "shorten `--trainer.logger.init_args.name`" in error.splitlines()[-1]
