"""`train.py fit|validate --ckpt_path`: the configuration decides the model in both spellings (a
file or `last`), nothing named in a checkpoint is imported, and bad checkpoints or strategies stop
with one clear message."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from datamodules import MNISTDataModule
from gan_modules.run_integrity import CheckpointMismatchError
from train import build_cli

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])


def fit_args(preset: str, mnist_dir: Path, runs: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / f"{preset}.yaml"), "--data.data_dir", str(mnist_dir),
            "--data.batch_size", "8", "--model.latent_dim", "8", "--model.generator_width", "4",
            "--model.critic_width", "4", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--fid.enabled", "false", "--trainer.logger.init_args.save_dir", str(runs), *extra]


def last_checkpoint(runs: Path, preset: str) -> Path:
    return runs / preset / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture
def dcgan_checkpoint(mnist_dir: Path, tmp_path: Path) -> Path:
    build_cli(fit_args("dcgan_mnist", mnist_dir, tmp_path / "dcgan_runs", "--model.max_generator_steps", "3"))
    return last_checkpoint(tmp_path / "dcgan_runs", "dcgan_mnist")


def test_a_checkpoint_of_another_model_is_refused_as_a_file_path(dcgan_checkpoint, mnist_dir, tmp_path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(CheckpointMismatchError, match=r"holds DCGAN, not WGANGP: load it with .*`--model DCGAN`"):
        build_cli(fit_args("wgan_gp_mnist", mnist_dir, runs, "--ckpt_path", str(dcgan_checkpoint)))
    assert not (runs / "wgan_gp_mnist").exists()  # refused before anything was built or trained


def test_a_checkpoint_of_another_model_is_refused_as_last(dcgan_checkpoint, mnist_dir, tmp_path) -> None:
    runs = tmp_path / "runs"
    last_checkpoint(runs, "wgan_gp_mnist").parent.mkdir(parents=True)
    last_checkpoint(runs, "wgan_gp_mnist").write_bytes(dcgan_checkpoint.read_bytes())
    with pytest.raises(CheckpointMismatchError, match="holds DCGAN, not WGANGP"):
        build_cli(fit_args("wgan_gp_mnist", mnist_dir, runs, "--ckpt_path", "last"))


@pytest.mark.parametrize("spelling", ["file", "last"])
def test_the_command_line_wins_over_the_checkpoints_hyperparameters(spelling, dcgan_checkpoint, mnist_dir,
                                                                      tmp_path) -> None:
    runs = tmp_path / "dcgan_runs"  # the run that wrote the checkpoint, continued
    ckpt_path = str(dcgan_checkpoint) if spelling == "file" else "last"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(fit_args("dcgan_mnist", mnist_dir, runs, "--ckpt_path", ckpt_path,
                                 "--model.max_generator_steps", "5", "--model.lr", "1e-5", "--trainer.max_epochs", "2"))
    assert cli.model.hparams.max_generator_steps == 5 and cli.model.generator_steps == 5
    assert not [w for w in caught if "not empty" in str(w.message)]  # its own run's folder, as it should be
    # The optimisers' restored param_groups take the configured learning rate, not the saved one.
    assert [group["lr"] for opt in cli.trainer.optimizers for group in opt.param_groups] == [1e-5, 1e-5]


def test_a_module_named_in_a_checkpoint_is_never_imported(dcgan_checkpoint, mnist_dir, tmp_path,
                                                          monkeypatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom gan_modules import DCGAN as Planted\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = torch.load(dcgan_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "planted_module.Planted"
    planted = tmp_path / "planted.ckpt"
    torch.save(checkpoint, planted)
    cli = build_cli(fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--ckpt_path", str(planted),
                             "--model.max_generator_steps", "4", "--trainer.max_epochs", "2"))
    assert type(cli.model).__module__ == "gan_modules.dcgan" and cli.model.generator_steps == 4
    assert not marker.exists() and "planted_module" not in sys.modules


def test_a_setting_that_changes_the_weights_shapes_is_refused_by_its_flag(dcgan_checkpoint, mnist_dir,
                                                                          tmp_path, monkeypatch) -> None:
    def read(*args) -> None:
        raise AssertionError("the data were read before the checkpoint was refused")

    monkeypatch.setattr(MNISTDataModule, "prepare_data", read)  # refused before an image cache could be built
    args = fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--ckpt_path", str(dcgan_checkpoint))
    args[args.index("--model.generator_width") + 1] = "8"
    with pytest.raises(CheckpointMismatchError, match=r"generator_width=4, but this run is configured with 8: "
                                                      r"set `--model.generator_width` to match it"):
        build_cli(args)
    with pytest.raises(CheckpointMismatchError, match=r"image_shape=\(1, 28, 28\), but this run is configured with "
                                                      r"\(1, 32, 32\): set `--data.image_size`"):
        build_cli(fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--ckpt_path", str(dcgan_checkpoint),
                           "--data.image_size", "32"))


def run_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_an_unreadable_checkpoint_is_one_line_naming_the_file(mnist_dir, tmp_path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    result = run_train(fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--ckpt_path", str(text)), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"train.py: error: Checkpoint {text}")


def test_a_broken_last_checkpoint_names_the_intact_one_beside_it(dcgan_checkpoint, mnist_dir, tmp_path) -> None:
    folder = dcgan_checkpoint.parent
    intact = folder / "epoch=0-step=6.ckpt"
    intact.write_bytes(dcgan_checkpoint.read_bytes())
    dcgan_checkpoint.write_bytes(dcgan_checkpoint.read_bytes()[:1000])  # truncated
    result = run_train(fit_args("dcgan_mnist", mnist_dir, tmp_path / "dcgan_runs", "--ckpt_path", "last"), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert str(dcgan_checkpoint) in last_line and "epoch=0-step=6.ckpt" in last_line


@pytest.mark.parametrize("strategy", ["ddp_spawn_find_unused_parameters_true", "ddp_fork_find_unused_parameters_true"])
def test_strategies_that_start_processes_from_inside_are_refused_before_starting(strategy, mnist_dir,
                                                                                  tmp_path) -> None:
    # ddp_spawn used to die with a pickling error from train.py's own parser.
    args = fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--trainer.strategy", strategy,
                    "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true`, which starts one process per device"):
        build_cli(args)


def test_one_check_decides_whose_checkpoint_it_is() -> None:
    # Hand-made damage to gan_state gives the one refusal, not a KeyError; another class is named.
    from gan_modules import DCGAN
    from gan_modules.run_integrity import check_checkpoint_fits, refuse_another_model

    model = DCGAN(image_shape=(1, 16, 16))
    for damaged in ({}, {"gan_state": {}}, {"gan_state": {"model": 3}}, {"gan_state": "DCGAN"}):
        with pytest.raises(CheckpointMismatchError, match="not written by this project's GAN modules"):
            check_checkpoint_fits(model, damaged)
    with pytest.raises(CheckpointMismatchError, match="holds WGAN, not DCGAN"):
        refuse_another_model({"gan_state": {"model": "WGAN"}}, "DCGAN")
    refuse_another_model({"gan_state": {"model": "DCGAN"}}, "DCGAN")  # its own: no error


def test_validate_last_restores_the_run_without_a_dirpath_warning(dcgan_checkpoint, mnist_dir, tmp_path) -> None:
    args = fit_args("dcgan_mnist", mnist_dir, tmp_path / "dcgan_runs", "--ckpt_path", "last",
                    "--trainer.limit_val_batches", "1")
    args[0] = "validate"
    saved = sorted(p.name for p in dcgan_checkpoint.parent.iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cli(args)
    assert not [w for w in caught if "dirpath" in str(w.message)], [str(w.message) for w in caught]
    assert sorted(p.name for p in dcgan_checkpoint.parent.iterdir()) == saved


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_checkpoint_holding_a_nan_weight_is_refused_at_load_naming_it(subcommand, dcgan_checkpoint, mnist_dir,
                                                                         tmp_path) -> None:
    # What an older version left in users' last.ckpt: fit would fail and call it good, validate report NaN.
    checkpoint = torch.load(dcgan_checkpoint, weights_only=True)
    checkpoint["state_dict"]["generator.main.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    args = fit_args("dcgan_mnist", mnist_dir, tmp_path / "runs", "--ckpt_path", str(tmp_path / "nan.ckpt"))
    args[0] = subcommand
    with pytest.raises(CheckpointMismatchError, match=r"nan\.ckpt holds a non-finite value "
                                                      r"\(state_dict\.generator\.main\.0\.weight\): it cannot be"):
        build_cli(args)
