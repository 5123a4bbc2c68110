"""Every `--fid.*` flag that a message, a preset or the README names exists: `train.py fit` parses
it and the value reaches the FIDCallback the trainer runs. A renamed FIDCallback argument, or a
message naming a flag that never existed, fails here."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest

from gan_modules.fid import FIDCallback
from train import build_cli

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"--fid\.([a-z][a-z0-9_]*)\b")  # a flag, not a placeholder such as `--fid.NAME`
# Where users read flag names: the library's messages, the entry point, the presets and the README.
SOURCES = sorted([*(ROOT / "gan_modules").glob("*.py"), *(ROOT / "datamodules").glob("*.py"), ROOT / "train.py",
                  *(ROOT / "configs").glob("*.yaml"), ROOT / "README.md"])
# A valid command-line value for each flag, and the attribute value it must give the callback.
VALUES = {
    "feature": ("64", 64),
    "weights_path": ("inception.pth", "inception.pth"),
    "num_samples": ("4096", 4096),
    "num_real": ("500", 500),
    "every_n_epochs": ("2", 2),
    "batch_size": ("16", 16),
    "seed": ("3", 3),
    "cache_dir": ("fid_cache", "fid_cache"),
    "enabled": ("false", False),
    "kid_subsets": ("10", 10),
    "kid_subset_size": ("500", 500),
    "prdc_k": ("5", 5),
}


def named_flags() -> set[str]:
    names = {name for path in SOURCES for name in FLAG.findall(path.read_text())}
    # Messages that build the name at run time (`--fid.{name}`): read it from the messages themselves.
    for bad in ({"num_samples": 1}, {"every_n_epochs": 0}, {"batch_size": 0}, {"kid_subsets": 0},
                {"kid_subset_size": 1}, {"prdc_k": 0}):
        with pytest.raises(ValueError) as error:
            FIDCallback(feature=64, **bad)
        names |= set(FLAG.findall(str(error.value)))
    return names


def test_the_messages_name_flags() -> None:
    # The scan itself works: fid.py names at least the flags of its offline and cost messages.
    assert {"weights_path", "num_samples", "batch_size", "every_n_epochs", "cache_dir", "prdc_k"} <= named_flags()


@pytest.mark.parametrize("name", sorted(named_flags() | set(VALUES)))  # named, or documented (docs/evaluation.md)
def test_every_named_fid_flag_parses_and_reaches_the_callback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the CLI sees only these args
    assert name in inspect.signature(FIDCallback).parameters, f"`--fid.{name}` is named, but FIDCallback has no {name}"
    assert name in VALUES, f"`--fid.{name}` is named: add a valid value for it to VALUES"
    value, expected = VALUES[name]
    cli = build_cli(["--config", str(ROOT / "configs" / "dcgan_mnist.yaml"), f"--fid.{name}", value], run=False)
    callback = cli.config_init.fid  # a switched-off callback is built, then left out of the trainer's
    assert isinstance(callback, FIDCallback) and getattr(callback, name) == expected
    assert (callback in cli.trainer.callbacks) == callback.enabled
