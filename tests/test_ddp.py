"""Data-parallel training on CPU processes (gloo) through train.py, as a user would launch it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

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
            "--fid.enabled", "false",  # no FID: Inception weights cannot be downloaded here (test_fid.py)
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


def assert_same_rank_states(reference: Path, resumed: Path) -> None:
    for rank in (0, 1):
        a, b = (torch.load(folder / f"rank{rank}.pt", weights_only=True) for folder in (reference, resumed))
        for key in ("critic_steps", "generator_steps", "global_step"):
            assert a[key] == b[key], (rank, key)
        for group in ("parameters", "buffers"):
            assert a[group].keys() == b[group].keys()
            for name, value in a[group].items():
                assert torch.equal(value, b[group][name]), (rank, name)
        for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"]):
            assert state_a.keys() == state_b.keys()
            for index, moments in state_a.items():
                for key, value in moments.items():
                    assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][key])), (rank, index, key)


def test_two_process_resume_ends_bitwise_equal_to_the_uninterrupted_run(mnist_dir: Path, tmp_path: Path) -> None:
    # The training-RNG states of both ranks are saved as rows of one gathered tensor; on a CPU those
    # were views of one storage, and rank 1 segfaulted in Generator.set_state when resuming.
    def fit(name: str, *extra: str) -> subprocess.CompletedProcess:
        # With DiffAugment: each rank augments its own batch, from its own derived noise.
        args = tiny_fit_args("wgan_gp_mnist", mnist_dir, tmp_path / name) + ["--model.augment", "color,translation,cutout"]
        args[args.index("--trainer.max_epochs") + 1] = "2"
        return train(args + ["--checkpoint.every_n_train_steps", "1", *extra], tmp_path)

    result = fit("reference")
    assert result.returncode == 0, result.stderr[-3000:]
    # Stopped after the first epoch, then continued to the second.
    assert fit("after_epoch", "--trainer.max_epochs", "1").returncode == 0
    result = fit("after_epoch", "--ckpt_path", str(tmp_path / "after_epoch" / "runs" / "wgan_gp_mnist" /
                                                   "version_0" / "checkpoints" / "last.ckpt"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rank_states(tmp_path / "reference" / "state", tmp_path / "after_epoch" / "state")
    # Killed in the middle of the second epoch, then resumed from the checkpoint of the batch before.
    crashed = fit("mid_epoch", "--trainer.callbacks+=ddp_helpers.CrashAt", "--trainer.callbacks.epoch", "1",
                  "--trainer.callbacks.batch_idx", "2")
    assert crashed.returncode != 0 and "crash before epoch 1 batch 2" in crashed.stderr
    result = fit("mid_epoch", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rank_states(tmp_path / "reference" / "state", tmp_path / "mid_epoch" / "state")
    # Stopped by a signal in the second epoch: SIGTERM on every rank (as SLURM and torchrun send it), or SLURM's
    # SIGUSR1 on rank 1 only. Every rank stops after that batch and exits 128 + signal; `last` continues bitwise.
    for name, extra, code in (("sigterm", [], 143),
                              ("sigusr1", ["--trainer.callbacks.rank", "1", "--trainer.callbacks.signum", "10"], 138)):
        stopped = fit(name, "--trainer.callbacks+=ddp_helpers.SignalAt", "--trainer.callbacks.epoch", "1",
                      "--trainer.callbacks.batch_idx", "1", *extra)
        assert stopped.returncode == code, stopped.stderr[-3000:]
        assert f"Stopped by {'SIGTERM' if code == 143 else 'SIGUSR1'}" in stopped.stdout + stopped.stderr
        result = fit(name, "--ckpt_path", "last")
        assert result.returncode == 0, result.stderr[-3000:]
        assert_same_rank_states(tmp_path / "reference" / "state", tmp_path / name / "state")


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
    assert "train/critic_loss became non-finite at critic step 3" in result.stderr
    assert not (tmp_path / "state").exists()  # no rank went on to finish training
    checkpoint = tmp_path / "runs" / "dcgan_mnist" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["gan_state"]["critic_steps"] == 2  # the last good state
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_run_continued_on_another_number_of_processes_says_so_and_skips_what_was_trained(mnist_dir: Path,
                                                                                            tmp_path: Path) -> None:
    # 64 training images, batch 8, n_critic 2. Two processes stop after one generator step: 2 batches a rank,
    # 32 images. One process then trains the other 32 images of the epoch (4 batches), and two processes the
    # next epoch (4 batches a rank). Not bitwise (each rank draws its own noise and data share): it says so.
    def fit(devices: str, *extra: str) -> subprocess.CompletedProcess:
        args = tiny_fit_args("dcgan_mnist", mnist_dir, tmp_path) + ["--trainer.devices", devices, *extra]
        result = train(args, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def critic_steps() -> list[int]:
        return [torch.load(path, weights_only=True)["critic_steps"] for path in sorted((tmp_path / "state").glob("*.pt"))]

    first = fit("2", "--model.max_generator_steps", "1")
    assert "not bitwise" not in first.stderr and critic_steps() == [2, 2]
    for path in (tmp_path / "state").glob("*.pt"):
        path.unlink()
    second = fit("1", "--ckpt_path", "last")
    assert "written by 2 process(es) and continues on 1" in second.stderr and "not bitwise" in second.stderr
    assert critic_steps() == [2 + 32 // 8]
    third = fit("2", "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert "written by 1 process(es) and continues on 2" in third.stderr
    assert critic_steps() == [6 + 4, 6 + 4]
