"""train.py end to end: the presets parse, `fit --help` documents every hyperparameter, each
model fits from the CLI on MNIST IDX files, and `sample` writes images from the checkpoint."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import datamodules
import gan_modules
from gan_modules.callbacks import FIDCallback
from train import GANCLI, build_cli, main

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
FRAGMENTS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the CLI must see only the args a test passes


def cli(args: list[str]) -> GANCLI:
    """Parse ``args`` and instantiate the model, data and trainer, without running."""
    return build_cli(args, run=False)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_is_parsed_and_instantiated(preset: Path) -> None:
    first_line = preset.read_text().splitlines()[0]
    assert first_line.startswith("# "), "a preset starts with a comment saying what it reproduces"
    parsed = cli(["--config", str(preset)])
    assert isinstance(parsed.model, gan_modules.base.GANModule)
    assert parsed.model.hparams.image_shape == parsed.datamodule.image_shape  # linked, stated once


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_every_trainer_fragment_is_parsed(fragment: Path) -> None:
    # Parsed, not instantiated: the GPU fragment must parse on a machine without a GPU.
    preset = str(ROOT / "configs" / "dcgan_mnist.yaml")
    config = cli(["--config", preset]).parser.parse_args(["--config", preset, "--config", str(fragment)])
    settings = yaml.safe_load(fragment.read_text())["trainer"]
    assert settings, f"{fragment.name} sets nothing"
    for key, value in settings.items():  # the fragment's own settings win over the preset's defaults
        assert config.trainer[key] == value, (fragment.name, key)


@pytest.mark.slow
def test_the_default_logger_is_named_after_the_preset(tmp_path: Path) -> None:
    # The presets carry no logger block: runs/<preset>/ comes from the --config file, also after a fragment.
    cpu = str(ROOT / "configs" / "trainer" / "cpu.yaml")
    built = cli(["--config", cpu, "--config", str(ROOT / "configs" / "wgan_mnist.yaml")])
    assert (built.trainer.logger.save_dir, built.trainer.logger.name) == ("runs", "wgan_mnist")
    assert built.trainer.logger._default_hp_metric is False
    assert type(built.trainer.logger).__name__ == "TensorBoardLogger"
    assert built.config.checkpoint.dirpath is None  # Lightning's layout: runs/wgan_mnist/version_N/checkpoints
    named = cli(["--config", str(ROOT / "configs" / "dcgan_mnist.yaml"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", "mine"])
    assert named.trainer.logger.name == "mine"  # a name the user gives is kept
    assert Path(named.trainer.log_dir) == tmp_path / "mine" / "version_0"


def test_fit_help_lists_every_hyperparameter_with_its_doc(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--help"])
    with pytest.raises(SystemExit):
        main()
    help_text = capsys.readouterr().out
    for key, package in (("model", gan_modules), ("data", datamodules)):
        for name in package.__all__:
            cls = getattr(package, name)
            assert f"=== --{key} {name} ===" in help_text
            own = help_text.split(f"=== --{key} {name} ===")[1].split("===")[0]
            # The arguments every model shares are listed once, with GANModule's defaults, which a
            # model that passes them on unchanged (by **kwargs) keeps.
            shared = help_text.split(f"=== --{key} every {key} ===")[1].split("===")[0] if key == "model" else ""
            for parameter, default in init_parameters(cls).items():
                section = own if f"--{key}.{parameter} " in own else shared
                assert f"--{key}.{parameter} " in section, f"{name}.{parameter} missing from fit --help"
                entry = " ".join(section.split(f"--{key}.{parameter} ", 1)[1].split("\n  --")[0].split())
                assert "default:" in entry, f"{name}.{parameter} has no documented default"
                if isinstance(default, (int, float, str)) and not isinstance(default, bool):
                    assert f"default: {default})" in entry, f"{name}.{parameter}: not its own default {default}"
    assert "Adam learning rate" in help_text and "--trainer.max_epochs" in help_text


def init_parameters(cls: type) -> dict[str, object]:
    """Every argument ``cls`` takes with its default for ``cls``: its own, then the shared ones its
    ``__init__`` passes on by ``**kwargs`` to the classes above it."""
    parameters: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__).parameters.values()
        parameters.update({p.name: p.default for p in signature if p.name not in parameters and p.name != "self"
                           and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
        if not any(p.kind == p.VAR_KEYWORD for p in signature):
            break  # the classes above get only what this one passes them
    return parameters


@pytest.mark.slow
def test_each_model_shows_its_own_defaults_of_the_shared_arguments() -> None:
    for cls, norm, n_critic in ((gan_modules.DCGAN, "batch", 1), (gan_modules.WGANGP, "layer", 5),
                                (gan_modules.WGAN, "batch", 5)):
        parameters = init_parameters(cls)
        assert len(parameters) >= 14 and "latent_dim" in parameters and "lr" in parameters
        assert (parameters["critic_norm"], parameters["n_critic"]) == (norm, n_critic), cls.__name__
        config = cli(["--config", str(ROOT / "configs" / "dcgan_mnist.yaml"), "--model", cls.__name__]).config
        assert config.model.init_args.critic_norm == norm and config.model.init_args.n_critic == n_critic
        assert config.model.init_args.latent_dim == 100  # a shared argument reaches every class


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("preset, tags", [
    ("dcgan_mnist", {"train/critic_loss", "train/generator_loss"}),
    ("wgan_gp_mnist", {"train/critic_loss", "train/generator_loss", "train/wasserstein", "train/gradient_penalty"}),
    ("wgan_mnist", {"train/critic_loss", "train/generator_loss", "train/wasserstein"}),
])
@pytest.mark.slow
def test_fit_from_the_cli_then_sample(preset: str, tags: set[str], mnist_dir: Path, tmp_path: Path) -> None:
    run(["fit", "--config", str(ROOT / "configs" / f"{preset}.yaml"),
         "--data.data_dir", str(mnist_dir), "--data.batch_size", "8",
         "--model.generator_width", "8", "--model.critic_width", "8",
         "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
         "--fid.enabled", "false",  # no FID: Inception weights cannot be downloaded here (tests/test_fid.py)
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], cwd=tmp_path)
    run_dir = tmp_path / "runs" / preset / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"  # the run's own folder: Lightning's layout
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True)["gan_state"]
    assert state["critic_steps"] == 2 * 64 // 8  # one critic step per batch, two epochs
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert tags | {"train/critic_steps", "train/generator_steps"} <= set(events.Tags()["scalars"])
    assert "samples/fixed_noise" in events.Tags()["images"]

    if preset == "dcgan_mnist":  # `--ckpt_path last` finds the run's last.ckpt and continues it
        run(["fit", "--config", str(ROOT / "configs" / f"{preset}.yaml"), "--data.data_dir", str(mnist_dir),
             "--data.batch_size", "8", "--model.generator_width", "8", "--model.critic_width", "8",
             "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--fid.enabled", "false",
             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--ckpt_path", "last"], cwd=tmp_path)
        assert torch.load(checkpoint, weights_only=True)["gan_state"]["critic_steps"] == 3 * 64 // 8
        assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]  # continued in its own folder

    output = tmp_path / "out" / "samples.pt"
    run(["sample", "--ckpt_path", str(checkpoint), "--num_samples", "10", "--output", str(output)], cwd=tmp_path)
    images = torch.load(output, weights_only=True)
    assert images.dtype == torch.uint8 and images.shape == (10, 1, 28, 28)
    assert output.with_suffix(".png").stat().st_size > 0


def test_unsupported_image_size_from_the_cli(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="Unsupported image size 30"):
        cli(["--config", str(ROOT / "configs" / "dcgan_mnist.yaml"), "--data.data_dir", str(mnist_dir),
             "--data.image_size", "30"])


def test_n_critic_zero_from_the_cli() -> None:
    with pytest.raises(ValueError, match="n_critic must be a positive integer, got 0: set `--model.n_critic`"):
        cli(["--config", str(ROOT / "configs" / "wgan_gp_mnist.yaml"), "--model.n_critic", "0"])


@pytest.mark.slow
def test_the_progress_bar_redraws_at_the_log_interval_unless_configured() -> None:
    preset = ["--config", str(ROOT / "configs" / "dcgan_mnist.yaml")]
    assert cli(preset).trainer.progress_bar_callback.refresh_rate == 10  # the preset's log_every_n_steps
    assert cli([*preset, "--trainer.log_every_n_steps", "7"]).trainer.progress_bar_callback.refresh_rate == 7
    assert cli([*preset, "--trainer.enable_progress_bar", "false"]).trainer.progress_bar_callback is None
    own = '{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {"refresh_rate": 3}}'
    assert cli([*preset, f"--trainer.callbacks+={own}"]).trainer.progress_bar_callback.refresh_rate == 3


def test_fid_switched_off_is_not_among_the_trainers_callbacks() -> None:
    preset = ["--config", str(ROOT / "configs" / "dcgan_mnist.yaml")]
    assert any(isinstance(c, FIDCallback) for c in cli(preset).trainer.callbacks)
    assert not any(isinstance(c, FIDCallback) for c in cli([*preset, "--fid.enabled", "false"]).trainer.callbacks)


@pytest.mark.slow
@pytest.mark.parametrize("name, norm, n_critic", [("DCGAN", "batch", 1), ("WGANGP", "layer", 5), ("WGAN", "batch", 5)])
def test_model_help_and_print_config_show_every_argument_with_the_classs_default(
    name, norm, n_critic, monkeypatch, capsys
) -> None:
    import yaml

    cls = getattr(gan_modules, name)
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--model.help", name])
    with pytest.raises(SystemExit):
        main()
    help_text = " ".join(capsys.readouterr().out.split())
    for parameter in init_parameters(cls):
        assert f"--model.{parameter} " in help_text, f"--model.help {name} lacks {parameter}"
    assert "--model.critic_norm {batch,layer,none} " in help_text and f"default: {norm})" in help_text

    preset = str(ROOT / "configs" / "dcgan_mnist.yaml")
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", preset, "--model", name, "--print_config"])
    with pytest.raises(SystemExit):
        main()
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert set(init_parameters(cls)) - {"image_shape"} <= set(init_args)  # image_shape comes from the data
    assert (init_args["critic_norm"], init_args["n_critic"]) == (norm, n_critic)
