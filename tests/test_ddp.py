"""Data-parallel training on CPU processes (gloo) through train.py, as a user would launch it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def tiny_fit_args(preset: str, mnist_dir: Path, tmp_path: Path) -> list[str]:
    return ["--config", str(ROOT / "configs" / f"{preset}.yaml"),
            "--config", str(ROOT / "configs" / "trainer" / "ddp.yaml"), "--trainer.accelerator", "cpu",
            "--data.data_dir", str(mnist_dir), "--data.batch_size", "8",
            "--model.generator_width", "8", "--model.critic_width", "8", "--model.n_critic", "2",
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.callbacks=[]",  # no FID: Inception weights cannot be downloaded here (test_fid.py)
            "--trainer.callbacks+=ddp_helpers.SaveRankState", "--trainer.callbacks.dirpath", str(tmp_path / "state")]


@pytest.mark.parametrize("preset, extra", [
    ("dcgan_mnist", []),
    ("wgan_gp_mnist", []),
    ("wgan_mnist", []),
], ids=["dcgan", "wgan_gp", "wgan"])
def test_two_process_fit_keeps_the_ranks_identical(preset, extra, mnist_dir: Path, tmp_path: Path) -> None:
    result = train(tiny_fit_args(preset, mnist_dir, tmp_path) + extra, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "state" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world_size"] == 2
    assert rank0["critic_steps"] == 64 // 8 // 2  # each rank trains on its half of the 64 images
    # Gradients are averaged, so the same update is applied on both ranks: bitwise equal weights.
    for name, value in rank0["parameters"].items():
        assert torch.equal(value, rank1["parameters"][name]), name
    # ...while each rank draws its own noise.
    assert rank0["train_rng_seed"] != rank1["train_rng_seed"]
    if preset != "wgan_gp_mnist":
        assert rank0["batch_norm_types"] == ["BatchNorm2d"]  # per-device statistics by default


def test_sync_batchnorm_on_cpu_is_refused_naming_the_setting(mnist_dir: Path, tmp_path: Path) -> None:
    args = tiny_fit_args("dcgan_mnist", mnist_dir, tmp_path) + ["--trainer.sync_batchnorm", "true",
                                                               "--trainer.devices", "1"]
    result = train(args, tmp_path)
    assert result.returncode != 0
    assert "`--trainer.sync_batchnorm true` needs GPUs" in result.stderr


def test_a_sync_batchnorm_model_saves_weights_the_single_device_model_loads() -> None:
    # What Lightning does with sync_batchnorm on GPUs: convert every BatchNorm2d in place.
    from gan_modules import DCGAN

    model = DCGAN(image_shape=(1, 16, 16), generator_width=4, critic_width=4)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(DCGAN(image_shape=(1, 16, 16), generator_width=4,
                                                                 critic_width=4))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    model.load_state_dict(synced.state_dict())  # same keys and shapes: strict loading succeeds
    for a, b in zip(model.state_dict().values(), synced.state_dict().values()):
        assert torch.equal(a, b)


def test_ddp_without_unused_parameter_detection_is_refused(mnist_dir: Path, tmp_path: Path) -> None:
    args = tiny_fit_args("wgan_gp_mnist", mnist_dir, tmp_path) + ["--trainer.strategy", "ddp", "--trainer.devices", "1"]
    result = train(args, tmp_path)
    assert result.returncode != 0
    assert "DDP must detect unused parameters" in result.stderr
    assert "--trainer.strategy ddp_find_unused_parameters_true" in result.stderr


def test_nan_on_one_rank_stops_every_rank_with_the_step(mnist_dir: Path, tmp_path: Path) -> None:
    args = tiny_fit_args("dcgan_mnist", mnist_dir, tmp_path) + [
        "--model", "ddp_helpers.NaNOnLastRank", "--checkpoint.every_n_train_steps", "1"]
    result = train(args, tmp_path)
    assert result.returncode != 0
    assert "train/d_loss became non-finite at critic step 3" in result.stderr
    assert not (tmp_path / "state").exists()  # no rank went on to finish training
    checkpoint = tmp_path / "runs" / "dcgan_mnist" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["gan_state"]["critic_steps"] == 2  # the last good state
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
