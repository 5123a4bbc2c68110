"""compare.py end to end on a handful of real digits, its timing arithmetic, and digits_to_idx."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import compare  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from digits_to_idx import digits_uint8, write_digits  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_digits_are_mnist_files_with_the_right_split(tmp_path: Path) -> None:
    write_digits(tmp_path, num_test=300, seed=0)
    data = MNISTDataModule(str(tmp_path), batch_size=8, download=False)
    data.setup()
    assert (len(data.train_set), len(data.val_set)) == (1497, 300)
    image, label = data.train_set[0]
    assert image.shape == (1, 28, 28) and -1 <= image.min() < image.max() <= 1
    test = MNIST(str(tmp_path), train=False, download=False)
    assert test.data.shape == (300, 28, 28) and set(test.targets.tolist()) == set(range(10))
    # Seeded: the same split again, and every digit exactly once across the two splits.
    write_digits(tmp_path / "again", num_test=300, seed=0)
    assert torch.equal(MNIST(str(tmp_path / "again"), train=False, download=False).data, test.data)
    train = MNIST(str(tmp_path), train=True, download=False)
    sums = torch.cat([train.data, test.data]).flatten(1).sum(1).sort().values
    assert torch.equal(sums, torch.from_numpy(digits_uint8(28)[0].astype(np.int64)).flatten(1).sum(1).sort().values)


def test_digits_are_scaled_to_0_255() -> None:
    from sklearn.datasets import load_digits

    images, labels = digits_uint8(size=8)  # no resize: exactly round(x * 255 / 16)
    assert np.array_equal(images, np.round(load_digits().images * 255 / 16).astype(np.uint8))
    assert images.dtype == np.uint8 and images.max() == 255 and labels.shape == (1797,)


def test_timing_arithmetic() -> None:
    # critic steps 10 -> 30 over 4 s at batch 8: 20 * 8 / 4 = 40 images/s; epochs end at 5, 8, 12 s.
    result = compare.RunResult("m", start=100.0, end=120.0, batch_size=8, scalars={
        "train/critic_steps": [(101.0, 10, 10.0), (103.0, 20, 20.0), (105.0, 30, 30.0)],
        "val/fid": [(105.0, 0, 9.0), (108.0, 0, 7.0), (112.0, 0, 8.0)],
    })
    assert result.images_per_second() == pytest.approx(40.0)
    assert result.seconds_per_epoch() == pytest.approx(3.5)  # median of 3 and 4
    assert result.final("val/fid") == 8.0 and min(result.fid) == 7.0
    assert compare.max_time(3 * 86400 + 3725) == "03:01:02:05"


def test_compare_runs_end_to_end_and_writes_table_and_plots(tmp_path: Path) -> None:
    data = write_digits(tmp_path / "digits", num_test=40, limit=120)  # 80 train, 40 validation digits
    out = tmp_path / "compare"
    report = compare.main([
        "--data_dir", str(data), "--out", str(out), "--budget_seconds", "120", "--max_epochs", "2",
        "--fid_samples", "64", "--classifier_epochs", "1", "--jobs", "2",
        "--", "--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "16",
        "--trainer.log_every_n_steps", "1",
    ])
    text = report.read_text()
    assert "not Inception" in text and "--trainer.max_time 00:00:02:00" in text
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in text.splitlines() if re.match(r"\| \w+ \| [\d.]", line)}
    assert sorted(rows) == sorted(compare.DEFAULT_MODELS)
    for model, (final, best, evaluations, per_epoch, per_second, batch, g_steps, c_steps, _) in rows.items():
        assert float(best) <= float(final) and evaluations == "2", model
        assert float(per_epoch) > 0 and float(per_second.replace(",", "")) > 0, model
        assert (batch, c_steps) == ("16", "10"), model  # 2 epochs of 80 // 16 batches
        n_critic = 1 if model.startswith("dcgan") else 5
        assert int(g_steps) == 10 // n_critic, model
    for name in ("fid_vs_time.png", "losses.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
        import matplotlib.image

        assert matplotlib.image.imread(out / name).ndim == 3
