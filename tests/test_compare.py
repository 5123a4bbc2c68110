"""The comparison study (`python -m study.compare`): its statistics against hand-computed values, its
tables, every model run with every seed end to end on a handful of real digits, the CelebA command
it documents, the FID features its runs load from the library, and benchmarks/digits_to_idx.py."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from benchmarks.digits_to_idx import digits_uint8, write_digits
from datamodules import MNISTDataModule
from gan_modules.digit_features import DigitFeatures
from study import compare, report, stats
from study.report import VAL_CRITIC_LOSS, VAL_WASSERSTEIN, WASSERSTEIN, RunResult

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
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
    # A small-data study's 500 training digits: the first 500 of the same training split, the same validation.
    write_digits(tmp_path / "small", num_test=300, seed=0, num_train=500)
    assert torch.equal(MNIST(str(tmp_path / "small"), train=False, download=False).data, test.data)
    assert torch.equal(MNIST(str(tmp_path / "small"), train=True, download=False).data, train.data[:500])
    with pytest.raises(ValueError, match="num_train must be between 1 and 1497"):
        write_digits(tmp_path / "too_many", num_test=300, num_train=1498)


def test_digits_are_scaled_to_0_255() -> None:
    from sklearn.datasets import load_digits

    images, labels = digits_uint8(size=8)  # no resize: exactly round(x * 255 / 16)
    assert np.array_equal(images, np.round(load_digits().images * 255 / 16).astype(np.uint8))
    assert images.dtype == np.uint8 and images.max() == 255 and labels.shape == (1797,)


def test_timing_arithmetic() -> None:
    # critic steps 10 -> 30 over 4 s at batch 8: 20 * 8 / 4 = 40 images/s; epochs end at 5, 8, 12 s.
    result = RunResult("m", start=100.0, end=120.0, batch_size=8, scalars={
        "train/critic_steps": [(101.0, 10, 10.0), (103.0, 20, 20.0), (105.0, 30, 30.0)],
        "val/fid": [(105.0, 0, 9.0), (108.0, 0, 7.0), (112.0, 0, 8.0)],
    })
    assert result.images_per_second() == pytest.approx(40.0)
    assert result.seconds_per_epoch() == pytest.approx(3.5)  # median of 3 and 4
    assert result.final("val/fid") == 8.0 and min(result.fid) == 7.0
    assert compare.max_time(3 * 86400 + 3725) == "03:01:02:05"


@pytest.mark.slow
def test_the_runs_load_the_digit_features_from_the_library_not_the_study(tmp_path: Path) -> None:
    # The `--fid.feature` value the study hands to every `train.py fit`, instantiated as the `--fid`
    # group does, in a fresh interpreter with the repository on its path, as `train.py` has it: the
    # class it names must come from the library, and building it must import no script.
    weights = tmp_path / "digit_features.pt"
    torch.save(DigitFeatures().state_dict(), weights)
    args, _ = compare.parse_args(["--data_dir", str(tmp_path), "--out", str(tmp_path / "out"),
                                  "--generator_steps", "1"])
    command = compare.train_command("dcgan", 0, args, compare.digit_feature(weights), [])
    feature = command[command.index("--fid.feature") + 1]
    probe = (
        "import sys; from jsonargparse import ArgumentParser; from gan_modules.fid import FIDCallback\n"
        "parser = ArgumentParser(); parser.add_class_arguments(FIDCallback, 'fid')\n"
        "fid = parser.instantiate_classes(parser.parse_args(['--fid.feature', sys.argv[1]])).fid\n"
        "scripts = sorted(m for m in sys.modules if m.split('.')[0] in ('study', 'compare', 'benchmarks', 'train'))\n"
        "print(type(fid.feature).__module__, fid.num_features, scripts)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, feature], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["gan_modules.digit_features", "64", "[]"]
    assert json.loads(feature)["init_args"] == {"weights": str(weights)}


# --- statistics, against values computed by hand ---------------------------------------------------

def test_mean_and_sample_standard_deviation() -> None:
    assert stats.mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))  # n - 1: 5 / 3, not 5 / 4
    assert stats.mean_std([math.nan, 2, 4]) == pytest.approx((3.0, math.sqrt(2)))  # NaN: not defined, left out
    mean, std = stats.mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)
    assert all(math.isnan(v) for v in stats.mean_std([]))


def test_late_spread_is_the_std_over_the_last_third_of_the_evaluations() -> None:
    assert stats.last_third(list(range(9))) == [6, 7, 8]
    assert stats.last_third([1, 2, 3, 4]) == [3, 4]  # ceil(4 / 3) = 2
    assert stats.last_third([1, 2]) == [1, 2]  # at least two
    assert stats.late_spread([100, 50, 30, 31, 29, 30]) == pytest.approx(math.sqrt(0.5))  # std of [29, 30]
    assert stats.late_spread([9, 9, 7, 9, 11]) == pytest.approx(math.sqrt(2))  # [9, 11]: not the early 7
    assert math.isnan(stats.late_spread([9.0]))


def test_divergence_rule() -> None:
    assert not stats.diverged([40, 20, 40], failed=False)  # exactly 2 x best: not above it
    assert stats.diverged([40, 20, 41], failed=False)
    assert stats.diverged([40, 20, 30], failed=True)  # a failed run diverged, whatever its FID
    assert stats.diverged([40, 20, math.inf], failed=False) and stats.diverged([40, math.nan], failed=False)
    assert stats.diverged([], failed=False)
    assert not stats.diverged([30, 20, 50], failed=False, factor=3.0)
    assert stats.diverged([math.nan, 20, 41], failed=False)  # an earlier NaN does not hide the rise


def test_ranks_average_ties() -> None:
    assert stats.ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert stats.ranks([3, 1, 2]).tolist() == [3, 1, 2]
    assert stats.ranks([7, 7, 7]).tolist() == [2, 2, 2]


def test_spearman() -> None:
    assert stats.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert stats.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)  # ranks, not values
    # Ties: y ranks [1, 2.5, 2.5, 4]; centred x . centred y = 4.5, |x|^2 = 5, |y|^2 = 4.5.
    assert stats.spearman([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert stats.spearman([1, 2, 3, math.nan, 4], [1, 3, 2, 5, 4]) == pytest.approx(0.8)  # the NaN pair dropped
    assert math.isnan(stats.spearman([1, 2, 3], [5, 5, 5]))  # constant: undefined
    assert math.isnan(stats.spearman([1, 2], [1, 2]))  # too few pairs
    with pytest.raises(ValueError, match="one length"):
        stats.spearman([1, 2, 3], [1, 2])


def test_signals_are_sampled_at_the_fid_steps() -> None:
    events = [(0, 1.0), (5, 2.0), (10, 3.0)]
    assert stats.values_at(events, [4, 5, 12], exact=False) == [1.0, 2.0, 3.0]  # last at or before
    exact = stats.values_at(events, [4, 5, 12], exact=True)
    assert math.isnan(exact[0]) and exact[1] == 2.0 and math.isnan(exact[2])
    assert math.isnan(stats.values_at(events, [-1], exact=False)[0])


def test_band_over_seeds_on_a_common_grid() -> None:
    # A evaluates at 0, 10, 20 s and B at 5, 15, 25 s: both cover 5..20 s, on the grid 5, 10, 15, 20.
    grid, mean, low, high = stats.band_on_grid([([0, 10, 20], [10, 20, 30]), ([5, 15, 25], [0, 10, 20])])
    assert grid.tolist() == [5, 10, 15, 20]
    assert high.tolist() == [15, 20, 25, 30] and low.tolist() == [0, 5, 10, 15]  # A, B interpolated
    assert mean.tolist() == [7.5, 12.5, 17.5, 22.5]
    grid, mean, low, high = stats.band_on_grid([([1, 2, 4], [9, 8, 7]), ([], [])])  # one run (and an empty one)
    assert grid.tolist() == [1, 2, 4] and mean.tolist() == low.tolist() == high.tolist() == [9, 8, 7]


def fake_run(model: str, seed: int, fids: list[float], signal: list[float], returncode: int = 0) -> RunResult:
    """A run with FID and a `train/wasserstein` at steps 10, 20, ..., speed 100 images/s."""
    steps = [10 * (i + 1) for i in range(len(fids))]
    return RunResult(model, start=0.0, end=50.0, batch_size=10, seed=seed, returncode=returncode, scalars={
        "val/fid": [(float(s), s, f) for s, f in zip(steps, fids)],
        WASSERSTEIN: [(float(s), s, w) for s, w in zip(steps, signal)],
        "train/critic_steps": [(0.0, 0, 0.0), (10.0, 99, 100.0)],
        "train/generator_steps": [(10.0, 99, 20.0 + 2 * seed)],
    })


def test_report_tables_summarise_the_seeds() -> None:
    runs = [fake_run("m", 0, [90, 40, 30, 20], [4, 3, 2, 1]),  # final 20, best 20, spread std[30, 20]
            fake_run("m", 1, [80, 30, 10, 25], [4, 2, 3, 1]),  # final 25 > 2 x 10: diverged
            fake_run("m", 2, [70, 60], [1, 2], returncode=1)]  # failed: counted as diverged, figures left out
    summary = compare_rows(report.summary_table(runs))["m"]
    # Spreads std[30, 20] = 7.07 and std[10, 25] = 10.61: mean 8.84, std 2.50.
    assert summary[:5] == ["3", "22.50 ± 3.54", "15.00 ± 7.07", "8.84 ± 2.50", "2/3"]
    assert summary[7] == "100 ± 0" and summary[9] == "21 ± 1"  # images/s; generator steps 20 and 22
    # rho: 1 for seed 0; seed 1's ranks [4, 2, 3, 1] vs FID ranks [4, 3, 1, 2] give 0.4.
    assert compare_rows(report.correlation_table(runs))["m"] == ["—", "0.70 ± 0.42", "—", "—", "—"]
    single = compare_rows(report.summary_table(runs[:1]))["m"]
    assert single[1:3] == ["20.00", "20.00"]  # one seed: the value, no ± n/a


def test_quality_table_and_the_wasserstein_estimate_against_kid() -> None:
    runs = [fake_run("m", 0, [90, 40, 30, 20], [4, 3, 2, 1]), fake_run("m", 1, [80, 30, 10, 25], [4, 2, 3, 1])]
    for r, (kid, precision, recall) in zip(runs, ((0.010, 0.9, 0.5), (0.014, 0.7, 0.3))):
        steps = [s for _, s, _ in r.scalars["val/fid"]]
        r.scalars.update({tag: [(float(s), s, v) for s in steps] for tag, v in
                          (("val/kid", kid), ("val/kid_std", kid / 10), ("val/precision", precision),
                           ("val/recall", recall))})
        r.scalars["val/kid"] = [(float(s), s, v) for s, v in zip(steps, [4, 2, 3, 1])]  # ranks [4, 2, 3, 1]
        r.scalars["val/kid"][-1] = (float(steps[-1]), steps[-1], kid)
    quality = compare_rows(report.quality_table(runs))["m"]
    # KID 0.010 and 0.014 -> 0.012 ± 0.0028; precision 0.8 ± 0.14, recall 0.4 ± 0.14; no density logged.
    assert quality == ["22.50 ± 3.54", "0.0120 ± 0.0028", "0.0012 ± 0.0003", "0.80 ± 0.14", "0.40 ± 0.14", "n/a", "n/a"]
    # train/wasserstein [4, 3, 2, 1] and [4, 2, 3, 1] against KID's ranks [4, 2, 3, 1] (last value 0.01, 0.014:
    # the smallest): rho 0.8 and 1.
    rows = compare_rows(report.correlation_table(runs, report.KID_TAG, (VAL_WASSERSTEIN, WASSERSTEIN)))
    assert rows["m"] == ["—", "0.90 ± 0.14"]


def compare_rows(table: str) -> dict[str, list[str]]:
    """The cells of a markdown table's body rows, by their first cell."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


# --- the study end to end ----------------------------------------------------------------------------

MEAN_STD = r"-?[\d,]+\.?\d* ± [\d,]+\.?\d*"


@pytest.mark.slow
def test_compare_runs_every_model_with_every_seed_and_reports_the_statistics(tmp_path: Path) -> None:
    data = write_digits(tmp_path / "digits", num_test=40, limit=120)  # 80 train, 40 validation digits
    out = tmp_path / "compare"
    report_path = compare.main([
        "--data_dir", str(data), "--out", str(out), "--models", "dcgan", "wgan_gp", "--seeds", "2", "--seed", "0",
        "--budget_seconds", "120", "--max_epochs", "3", "--fid_samples", "64", "--classifier_epochs", "1",
        "--jobs", "2",
        "--", "--model.generator_width", "4", "--model.critic_width", "4", "--data.batch_size", "16",
        "--trainer.log_every_n_steps", "1",
    ])
    text = report_path.read_text()
    assert "not Inception" in text and "--trainer.max_time 00:00:02:00" in text and "Seeds: 0, 1" in text
    summary_text, correlation_text, runs_text = (text.split(heading)[1].split("\n\n")[1] for heading in
                                                 ("## Per model", "## Do the losses", "## Per run"))
    summary = compare_rows(summary_text)
    assert sorted(summary) == ["dcgan", "wgan_gp"]
    for model, (seeds, final, best, spread, diverged, evaluations, *_, batch, g_steps, c_steps, _) in summary.items():
        assert seeds == "2" and re.fullmatch(r"[012]/2", diverged), model
        for cell in (final, best, spread):
            assert re.fullmatch(MEAN_STD, cell), (model, cell)
        assert (evaluations, batch, c_steps) == ("3 ± 0", "16", "15 ± 0"), model  # 3 epochs of 80 // 16 batches
        assert g_steps == ("15 ± 0" if model == "dcgan" else "3 ± 0"), model
    correlations = compare_rows(correlation_text)
    header = [cell.strip("` ") for cell in correlation_text.splitlines()[0].split("|")[2:-1]]
    not_logged = {"dcgan": {VAL_WASSERSTEIN, WASSERSTEIN}, "wgan_gp": {VAL_CRITIC_LOSS}}
    for model, absent in not_logged.items():
        for tag, cell in zip(header, correlations[model]):
            assert cell == "—" if tag in absent else re.fullmatch(MEAN_STD, cell), (model, tag, cell)
    assert len(runs_text.splitlines()) == 2 + 4 and runs_text.count("| dcgan |") == 2
    quality_text = text.split("## Sharpness or modes")[1].split("\n\n")[1]
    for model, cells in compare_rows(quality_text).items():  # KID, precision, recall, ... from each run's events
        assert all(re.fullmatch(MEAN_STD, cell) for cell in cells), (model, cells)
    assert "## Does the Wasserstein estimate track KID?" in text
    for model in ("dcgan", "wgan_gp"):
        for seed in (0, 1):
            folder = out / "runs" / model / f"seed_{seed}"
            assert list(folder.glob("events.out.tfevents.*")) and (folder / "checkpoints" / "last.ckpt").is_file()
            assert f"seed_everything: {seed}" in (folder / "config.yaml").read_text()
    for name in ("fid_vs_time.png", "losses.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
        import matplotlib.image

        assert matplotlib.image.imread(out / name).ndim == 3
    with pytest.raises(SystemExit, match="seed_0"):  # a second study into the same folders would mix events
        compare.main(["--data_dir", str(data), "--out", str(out), "--models", "dcgan", "--seed", "0"])


@pytest.mark.slow
def test_a_study_whose_every_run_fails_stops_with_the_log(tmp_path: Path) -> None:
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")  # never read: the run stops at its bad flag first
    with pytest.raises(RuntimeError, match=r"Every train.py run failed(.|\n)*no_such_flag"):
        compare.main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "out"), "--models", "dcgan",
                      "--fid", "inception", "--fid_weights", str(weights), "--", "--model.no_such_flag", "1"])
    assert (tmp_path / "out" / "logs" / "dcgan_seed_42.log").is_file()


# --- CelebA --------------------------------------------------------------------------------------------

def documented_celeba_command() -> list[str]:
    """The CelebA study command of docs/comparison.md's "CelebA" section, split into arguments."""
    section = (REPO / "docs" / "comparison.md").read_text().split("## CelebA")[1]
    block = section.split("```bash\n")[1].split("```")[0]
    line = block.replace("\\\n", " ")
    assert line.startswith("python -m study.compare "), line
    return shlex.split(line)[3:]


@pytest.mark.slow
def test_the_documented_celeba_study_builds_each_model_on_celeba_at_64_px(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from datamodules.celeba import CelebADataModule
    from train import build_cli

    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    argv = documented_celeba_command()
    assert {"--dataset", "celeba", "--fid", "inception", "--seeds", "--generator_steps"} <= set(argv)
    argv[argv.index("--fid_weights") + 1] = str(weights)
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    args, extra = compare.parse_args(argv)
    monkeypatch.setattr("sys.argv", ["train.py"])
    expected = {"dcgan": ("DCGAN", 128), "wgan_gp": ("WGANGP", 64), "wgan": ("WGAN", 64), "dcgan_sn": ("DCGAN", 128)}
    assert args.models == list(expected) and args.seeds >= 3
    for model, (family, batch_size) in expected.items():
        command = compare.train_command(model, args.seed + 1, args, "2048", extra)
        assert command[2] == "fit"
        # Parsed as `train.py fit` parses it, on this CPU instead of the documented GPU.
        cli = build_cli(command[3:] + ["--trainer.accelerator", "cpu"], run=False)
        assert type(cli.model).__name__ == family and isinstance(cli.datamodule, CelebADataModule), model
        assert cli.model.hparams.image_shape == (3, 64, 64) and cli.datamodule.batch_size == batch_size, model
        assert cli.model.hparams.max_generator_steps == args.generator_steps, model
        assert cli.model.hparams.spectral_norm == model.endswith("_sn"), model
        assert cli.config.fid.weights_path == str(weights) and cli.config.fid.feature == 2048, model
        assert cli.trainer.logger.log_dir == str(tmp_path / "out" / "runs" / model / f"seed_{args.seed + 1}")
        assert cli.datamodule.crop == "center178", model
        if model == "wgan":  # its MNIST preset's model on CelebA's data
            assert cli.model.hparams.clip_value == 0.01 and cli.model.hparams.critic_norm == "batch"


def test_celeba_needs_inception_features(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(["--data_dir", str(tmp_path), "--dataset", "celeba", "--fid", "digits"])
    assert "--fid inception" in capsys.readouterr().err
    args, _ = compare.parse_args(["--data_dir", str(tmp_path), "--dataset", "celeba"])
    assert args.fid == "inception"
