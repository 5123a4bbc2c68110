"""``train.py evaluate``: scores a checkpoint against its run's validation images and writes them with their protocol;
a checkpoint, data split, config or weights file that cannot be used ends in one line and exit status 2. A tiny
DCGAN trained a few steps, random Inception weights in torch-fidelity's format, Inception's 64-feature layer."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fid_benchmark import random_inception_weights
from conftest import write_mnist
from gan_modules.cli import main

pytestmark = pytest.mark.slow  # every test here uses a run trained in a process of its own
ROOT = Path(__file__).resolve().parents[1]
METRICS = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/, runs/dcgan_mnist/version_0/ (a two-step DCGAN) and inception.pth."""
    folder = tmp_path_factory.mktemp("evaluate")
    write_mnist(folder / "data", n_train=16, n_test=30)
    random_inception_weights(folder / "inception.pth")
    # In its own process (fit seeds every generator and sets PL_* variables); from `folder`, as the run's
    # config.yaml names data/ relative to where the user trained.
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "dcgan_mnist.yaml"),
         "--data.data_dir", "data", "--fid.enabled", "false", "--trainer.max_epochs", "1",
         "--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "8",
         "--trainer.enable_progress_bar", "false"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def evaluate(run: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run)
    main(["evaluate", "--weights_path", "inception.pth", "--feature", "64", "--device", "cpu", "--num_samples", "40",
          "--batch_size", "20", "--cache_dir", "cache", *args])


def test_evaluate_writes_every_metric_with_its_protocol(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    evaluate(run, "--ckpt_path", "last", "--seed", "3", monkeypatch=monkeypatch)
    written = run / "runs" / "dcgan_mnist" / "version_0" / "evaluation.json"  # the run folder, by default
    report = json.loads(written.read_text())
    assert set(report["metrics"]) == METRICS and all(math.isfinite(v) for v in report["metrics"].values())
    protocol = report["protocol"]
    assert (protocol["generated_images"], protocol["real_images"], protocol["seed"]) == (40, 30, 3)
    assert protocol["real_split"] == "validation" and protocol["real_data"]["datamodule"] == "MNISTDataModule"
    weights = protocol["feature_extractor"]
    assert weights["layer"] == 64
    assert weights["weights_sha256"] == hashlib.sha256((run / "inception.pth").read_bytes()).hexdigest()
    assert "299x299" in protocol["resize"] and protocol["kid"]["subset_size"] == 30
    assert protocol["versions"]["lightning-gans"] and protocol["versions"]["torch-fidelity"] == "0.4.0"
    assert report["checkpoint"]["model"] == "DCGAN" and report["checkpoint"]["generator_steps"] == 2
    console = capsys.readouterr()
    assert "FID: generated images" in console.out + console.err and str(written.name) in console.out

    # The same seed gives the same scores (the real features now from the cache); the real subset is honoured.
    evaluate(run, "--seed", "3", "--num_real", "20", "--output", "again.json", monkeypatch=monkeypatch)
    again = json.loads((run / "again.json").read_text())
    assert again["protocol"]["real_images"] == 20 and again["metrics"]["fid"] != report["metrics"]["fid"]
    evaluate(run, "--seed", "3", "--output", "same.json", monkeypatch=monkeypatch)
    assert json.loads((run / "same.json").read_text())["metrics"] == report["metrics"]


def unusable(run: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Arguments that cannot be used, and what the one-line error must say."""
    not_a_checkpoint = tmp_path / "broken.ckpt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    alone = tmp_path / "alone" / "last.ckpt"  # a checkpoint without its run's config.yaml
    alone.parent.mkdir()
    shutil.copy(run / "runs" / "dcgan_mnist" / "version_0" / "checkpoints" / "last.ckpt", alone)
    not_weights = tmp_path / "weights.pth"
    not_weights.write_bytes(b"\x80\x04 not a state dict")
    (tmp_path / "empty").mkdir()
    return {
        "checkpoint": (["--ckpt_path", str(not_a_checkpoint)], "broken.ckpt"),
        "no checkpoint": (["--ckpt_path", str(tmp_path / "missing.ckpt")], "--ckpt_path"),
        "no config": (["--ckpt_path", str(alone)], "--config"),
        "split": (["--data_dir", str(tmp_path / "empty")], "--data_dir"),
        "weights file": (["--weights_path", str(tmp_path / "nowhere.pth")], "--weights_path"),
        "weights": (["--weights_path", str(not_weights)], "--weights_path"),
        "output": (["--output", "scores.txt"], "--output"),
        "device": (["--device", "cuda:7"], "--device"),
    }


@pytest.mark.parametrize("case", ["checkpoint", "no checkpoint", "no config", "split", "weights file", "weights",
                                  "output", "device"])
def test_what_cannot_be_used_is_named_in_one_line(case: str, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    args, named = unusable(run, tmp_path)[case]
    with pytest.raises(SystemExit) as exit_:
        evaluate(run, *args, monkeypatch=monkeypatch)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and error.startswith("train.py evaluate: error: ") and named in error, error
    assert "--fid." not in error and "--data." not in error  # the flags of this command, not of `fit`
