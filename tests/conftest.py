"""Shared test fixtures: tiny MNIST IDX files written in the real on-disk format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch import nn

# One writer of MNIST IDX files, on the scripts' side of the import direction (tests <- scripts).
from benchmarks.digits_to_idx import write_idx, write_random_mnist

__all__ = ["assert_same_training_state", "has_batch_norm", "write_idx", "write_mnist"]


def write_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write the four MNIST files with random digits under ``root/MNIST/raw``; returns ``root``."""
    return write_random_mnist(root, n_train, n_test, seed)


def has_batch_norm(module: nn.Module) -> bool:
    """True if any submodule is a batch-norm layer (of any dimension)."""
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)) for m in module.modules())


def assert_same_training_state(model_a, optimizers_a, model_b, optimizers_b) -> None:
    """Two runs' modules hold bitwise the same weights and buffers, and their optimisers the same states."""
    import torch

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert list(state_a) == list(state_b) and state_a, "the two modules hold different (or no) tensors"
    for (name, a), b in zip(state_a.items(), state_b.values(), strict=True):
        assert torch.equal(a, b), name
    assert len(optimizers_a) == len(optimizers_b) > 0
    for opt_a, opt_b in zip(optimizers_a, optimizers_b, strict=True):
        assert len(opt_a.state) == len(opt_b.state) > 0, "an optimiser holds no state, or another count"
        for state_a, state_b in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            assert state_a.keys() == state_b.keys()
            for key in state_a:
                assert torch.equal(torch.as_tensor(state_a[key]), torch.as_tensor(state_b[key])), key


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture(autouse=True)
def restore_pl_global_seed():
    """Tests that seed like seed_everything set PL_GLOBAL_SEED, which the datamodules' shuffle reads:
    put it back after each, so no test depends on the ones that ran before it."""
    before = os.environ.get("PL_GLOBAL_SEED")
    yield
    if before is None:
        os.environ.pop("PL_GLOBAL_SEED", None)
    else:
        os.environ["PL_GLOBAL_SEED"] = before
