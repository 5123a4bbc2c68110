"""A newcomer's first hour: the main command offline, the run layout that `sample` and `--ckpt_path last`
rely on, the console, the logged hyperparameters and the outputs."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml

import gan_modules
from gan_modules.callbacks import OneDrawProgressBar, image_grid
from conftest import write_mnist
from train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "8",
        "--trainer.enable_progress_bar", "false"]


def run_main(monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str) -> None:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    main()


def test_offline_fid_stops_at_once_with_one_line_naming_both_ways_out(monkeypatch, capsys, tmp_path) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)  # offline even where there is network
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached weights either
    data = write_mnist(tmp_path / "data")
    with pytest.raises(SystemExit) as stop:
        run_main(monkeypatch, tmp_path, "fit", "--config", str(ROOT / "configs" / "dcgan_mnist.yaml"),
                 "--data.data_dir", str(data))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: FID needs the Inception-v3 weights"), err
    assert "`--fid.enabled false`" in err[0] and "`--fid.weights_path PATH`" in err[0]
    assert not (tmp_path / "runs").exists()  # stopped before any work: no empty TensorBoard run


@pytest.mark.parametrize("flag, value, message", [
    ("--data.batch_size", "0", "batch_size must be an integer >= 1, got 0: set `--data.batch_size`."),
    ("--model.n_critic", "0", "n_critic must be a positive integer, got 0: set `--model.n_critic` to 1 or more."),
    ("--model.lr_schedule", "linear", "`--model.lr_schedule linear` decays the rates to 0 over"),
])
def test_a_setting_that_cannot_work_stops_with_one_line_naming_its_flag(monkeypatch, capsys, tmp_path, flag, value,
                                                                         message) -> None:
    """The classes' own checks run inside jsonargparse, which wraps their errors in its own: one line still."""
    with pytest.raises(SystemExit) as stop:
        run_main(monkeypatch, tmp_path, "fit", "--config", str(ROOT / "configs" / "dcgan_mnist.yaml"),
                 "--fid.enabled", "false", flag, value)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"train.py: error: {message}"), err


@pytest.mark.slow
def test_a_run_that_stops_in_setup_leaves_no_run_folder(monkeypatch, capsys, tmp_path) -> None:
    data = write_mnist(tmp_path / "data", n_train=16)
    with pytest.raises(SystemExit):  # 16 training images, batches of 64: nothing to train on
        run_main(monkeypatch, tmp_path, "fit", "--config", str(ROOT / "configs" / "wgan_gp_mnist.yaml"),
                 "--data.data_dir", str(data), "--fid.enabled", "false", "--data.batch_size", "64")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than one batch of 64" in err[0] and "`--data.batch_size`" in err[0], err
    assert list((tmp_path / "runs" / "wgan_gp_mnist").glob("version_*")) == []


@pytest.mark.slow
def test_sample_last_takes_the_run_just_trained_and_resume_continues_it(monkeypatch, capsys, tmp_path) -> None:
    data = write_mnist(tmp_path / "data")
    preset = ["fit", "--config", str(ROOT / "configs" / "dcgan_mnist.yaml"), "--data.data_dir", str(data),
              "--fid.enabled", "false", "--trainer.max_epochs", "1", *TINY]
    for seed in (1, 2):  # two runs that differ
        run_main(monkeypatch, tmp_path, *preset, "--seed_everything", str(seed))
    runs = tmp_path / "runs" / "dcgan_mnist"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    samples = {}
    for spec in ("last", "runs/dcgan_mnist", "runs/dcgan_mnist/version_0", "runs/dcgan_mnist/version_1"):
        output = tmp_path / "out" / f"{spec.replace('/', '_')}.pt"
        run_main(monkeypatch, tmp_path, "sample", "--ckpt_path", spec, "--num_samples", "4", "--output", str(output))
        samples[spec] = torch.load(output, weights_only=True)
    assert torch.equal(samples["last"], samples["runs/dcgan_mnist/version_1"])  # the newest run
    assert torch.equal(samples["runs/dcgan_mnist"], samples["runs/dcgan_mnist/version_1"])
    assert not torch.equal(samples["last"], samples["runs/dcgan_mnist/version_0"])
    # Without --output the samples go into the run's own folder, not the working directory.
    run_main(monkeypatch, tmp_path, "sample", "--num_samples", "4")
    assert (runs / "version_1" / "samples.pt").is_file() and (runs / "version_1" / "samples.png").is_file()
    assert not (tmp_path / "samples.pt").exists()

    # `--ckpt_path last` continues the newest run in its own folder; continuing the older one makes it the newest.
    run_main(monkeypatch, tmp_path, *preset[:-2 - len(TINY)], *TINY, "--trainer.max_epochs", "2",
             "--ckpt_path", "runs/dcgan_mnist/version_0")
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    assert torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    run_main(monkeypatch, tmp_path, "sample", "--ckpt_path", "last", "--num_samples", "4",
             "--output", str(tmp_path / "again.pt"))
    assert "version_0" in capsys.readouterr().out

    # The HPARAMS: what runs are compared by, with FID off, in plain YAML.
    hparams = yaml.safe_load((runs / "version_0" / "hparams.yaml").read_text())
    assert hparams["model"] == "DCGAN" and hparams["data"] == "MNISTDataModule"
    assert hparams["data.batch_size"] == 8 and hparams["trainer.max_epochs"] == 2
    assert hparams["trainer.precision"] == "32-true" and hparams["model.image_shape"] == "[1, 28, 28]"
    assert "hp/final_critic_loss" in hparams and not any(key.startswith("model._") for key in hparams)


def test_ckpt_path_last_without_a_run_stops_naming_the_folder(monkeypatch, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as stop:
        run_main(monkeypatch, tmp_path, "fit", "--config", str(ROOT / "configs" / "wgan_mnist.yaml"),
                 "--fid.enabled", "false", "--ckpt_path", "last")
    assert stop.value.code == 2
    assert "there is no run to continue in runs/wgan_mnist" in capsys.readouterr().err


def test_the_cli_lists_only_subcommands_that_work(monkeypatch, capsys) -> None:
    for missing in ("test", "predict"):
        monkeypatch.setattr(sys, "argv", ["train.py", missing, "--help"])
        with pytest.raises(SystemExit):
            main()
        assert "invalid choice" in capsys.readouterr().err


def test_fit_help_is_short(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--help"])
    with pytest.raises(SystemExit):
        main()
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 400 and "--fid.feature" in text and "--trainer.max_epochs" in text


def test_forward_maps_noise_to_images() -> None:
    model = gan_modules.WGANGP(image_shape=(1, 16, 16), latent_dim=8, generator_width=4, critic_width=4)
    images = model(torch.randn(3, 8))
    assert images.shape == (3, 1, 16, 16) and images.requires_grad and images.abs().max() <= 1


def test_the_progress_bar_shows_the_losses(tmp_path) -> None:
    from lightning.pytorch import Trainer

    bar = OneDrawProgressBar()
    trainer = Trainer(logger=False, callbacks=[bar], default_root_dir=tmp_path)
    trainer.callback_metrics.update({"train/critic_loss": torch.tensor(-1.5), "train/wasserstein": torch.tensor(2.0),
                                     "train/real_score": torch.tensor(3.0)})
    shown = bar.get_metrics(trainer, gan_modules.WGAN(image_shape=(1, 16, 16)))
    assert shown["critic_loss"] == "-1.5" and shown["wasserstein"] == "2" and "real_score" not in shown


def test_the_progress_bar_ends_at_the_batch_the_run_stopped_after(tmp_path) -> None:
    from lightning.pytorch import Trainer

    from datamodules import MNISTDataModule

    bar = OneDrawProgressBar(refresh_rate=10)  # redrawn every 10 batches: not inside the cut epoch below
    data = MNISTDataModule(data_dir=str(write_mnist(tmp_path / "data", n_train=64)), batch_size=8, num_workers=0)
    model = gan_modules.DCGAN(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4)
    trainer = Trainer(accelerator="cpu", max_steps=2 * (8 + 3), logger=False, enable_checkpointing=False,
                      limit_val_batches=0, enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)  # two optimiser steps a batch: all of epoch 0, 3 batches of epoch 1
    assert model.critic_steps == 8 + 3 and bar.train_progress_bar.desc.startswith("Epoch 1")
    assert bar.train_progress_bar.n == 3  # the last redraw showed 0: refresh_rate 10 never came in the epoch
    assert bar.train_progress_bar.total == 8  # not 22 - 16 optimiser steps left: 6


def test_sample_grids_are_white_lined_and_readable() -> None:
    digits = -torch.ones(64, 1, 28, 28)  # black images, as MNIST's backgrounds
    grid = image_grid(digits, nrow=8)
    assert grid.shape[-1] >= 480  # 242 px before: scaled up by whole pixels
    assert grid[:, 0, :].min() == 1.0 and grid[:, :, 0].min() == 1.0  # the lines between images are white
    scale = (grid.shape[-1] - 2) // 8 // 28  # a 28-pixel digit plus its line, in whole pixels
    assert grid.shape[-1] == 8 * 28 * scale + 9 * 2 * scale


def test_python_errors_name_the_argument_and_the_command_line_its_flag() -> None:
    from datamodules import MNISTDataModule
    from gan_modules.callbacks import FIDCallback
    from train import build_cli

    for make, argument in ((lambda: gan_modules.DCGAN(n_critic=0), "`n_critic`"),
                           (lambda: MNISTDataModule(batch_size=0), "`batch_size`"),
                           (lambda: FIDCallback(num_samples=1), "`num_samples`")):
        with pytest.raises(ValueError) as error:
            make()
        assert argument in str(error.value) and "`--" not in str(error.value), str(error.value)
    with pytest.raises(ValueError, match="set `--model.n_critic` to 1 or more"):
        build_cli(["--config", str(ROOT / "configs" / "wgan_gp_mnist.yaml"), "--model.n_critic", "0"], run=False)


def test_fid_sizes_follow_the_device_unless_given() -> None:
    from lightning.pytorch import Trainer
    from torch import nn

    from gan_modules.callbacks import FIDCallback

    class Pixels(nn.Module):
        num_features = 4

        def forward(self, images):
            return images.flatten(1)[:, :4]

    model, cpu = gan_modules.DCGAN(image_shape=(1, 16, 16)), Trainer(accelerator="cpu", logger=False)
    left_unset = FIDCallback(feature=Pixels())
    left_unset.setup(cpu, model, "fit")
    assert (left_unset.num_samples, left_unset.num_real) == (2_500, 2_500)  # CPU-sized, both sides
    standard = FIDCallback(feature=Pixels(), num_samples=10_000)
    standard.setup(cpu, model, "fit")
    assert (standard.num_samples, standard.num_real) == (10_000, None)  # the whole validation split


@pytest.mark.slow
def test_the_console_shows_the_losses_and_no_adverts_or_internal_warnings(tmp_path) -> None:
    import subprocess

    data = write_mnist(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "wgan_gp_mnist.yaml"),
         "--data.data_dir", str(data), "--fid.enabled", "false", "--trainer.max_epochs", "1",
         "--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "8",
         "--trainer.log_every_n_steps", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert "critic_loss=" in console and "generator_loss=" in console and "wasserstein=" in console
    assert "WGANGP: generator" in console and "M parameters" in console
    for unwanted in ("Tip:", "LeafSpec", "FLOPs", "Traceback"):
        assert unwanted not in console, unwanted


def test_sample_last_before_any_run_says_there_is_none(monkeypatch, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as stop:
        run_main(monkeypatch, tmp_path, "sample")  # no runs/ folder at all
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py sample: error: No checkpoint to use for last: no last*.ckpt in runs"), err
