"""FIDCallback: the score's sanity, DDP equals one process, the real-statistics cache, grayscale,
and the offline Inception error. Tiny feature extractors stand in for Inception (no downloads).

Run as a script (``python tests/test_fid.py OUT_DIR DATA_DIR``) it is the two-process DDP scenario that
``test_ddp_equals_one_process_and_reuses_the_cache`` launches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.image.fid import FrechetInceptionDistance

from conftest import write_mnist
from datamodules.mnist import MNISTDataModule
from gan_modules import DCGAN
from gan_modules.callbacks import RunMonitor
from gan_modules.fid import FIDCallback, build_extractor, metric_input

REPO = Path(__file__).resolve().parents[1]
SCORES = ("val/fid", "val/kid", "val/kid_std", "val/precision", "val/recall", "val/density", "val/coverage")


class PooledPixels(nn.Module):
    """16 features: the channel-mean image average-pooled to 4 x 4. Counts the images it sees."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.images_seen = 0
        self.inputs: list[tuple[tuple[int, ...], torch.dtype, float, float, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.images_seen += x.shape[0]
        self.inputs.append((tuple(x.shape), x.dtype, x.min().item(), x.max().item(),
                            bool((x == x[:, :1]).all())))  # channels equal: grayscale repeated
        return F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), 4).flatten(1)  # (N, 16)


def quiet_trainer(**kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return Trainer(**{**defaults, **kwargs})


def tiny_dcgan(**kwargs: object) -> DCGAN:
    seed_everything(0)
    return DCGAN(latent_dim=8, generator_width=8, critic_width=8, **kwargs)


def mnist(data_dir: Path) -> MNISTDataModule:
    return MNISTDataModule(str(data_dir), batch_size=16, download=False)


# --- the score -----------------------------------------------------------------------------------


class Replay(LightningModule):
    """Stands in for a GAN whose samples are fixed images: its "noise" is the next image indices."""

    def __init__(self, real: Tensor, fake: Tensor) -> None:
        super().__init__()
        self.real, self.fake = real, fake
        self.next_index = 0

    def on_validation_epoch_start(self) -> None:
        self.next_index = 0

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        indices = torch.arange(self.next_index, self.next_index + n) % len(self.fake)
        self.next_index += n
        return indices

    def sample(self, n: int, noise: Tensor) -> Tensor:
        return self.fake[noise]

    def validation_step(self, batch: object, batch_idx: int) -> None:
        pass

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.real, torch.zeros(len(self.real))), batch_size=16)


def smooth_rgb_images(n: int) -> Tensor:
    """(n, 3, 16, 16) images in [-1, 1]: tanh of random planes, one per channel."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    a, b, c = torch.randn(3, n, 3, 1, 1, generator=g) * 2
    return torch.tanh(a * x + b * y + c)


def replay_fid(real: Tensor, fake: Tensor, tmp_path: Path) -> float:
    callback = FIDCallback(feature=PooledPixels(), num_samples=len(fake), batch_size=16, cache_dir=str(tmp_path))
    results = quiet_trainer(callbacks=[callback]).validate(Replay(real, fake), verbose=False)
    return results[0]["val/fid"]


def test_fid_of_the_real_images_themselves_is_zero_and_of_noise_is_large(tmp_path: Path) -> None:
    real = smooth_rgb_images(64)
    noise = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    same = replay_fid(real, real, tmp_path)
    different = replay_fid(real, noise, tmp_path)
    assert abs(same) < 1e-6
    assert different > 0.1  # the real features' variances alone are about 0.1 each


def test_fid_is_torchmetrics_fid_bit_for_bit_beside_the_other_metrics(tmp_path: Path) -> None:
    real, fake = smooth_rgb_images(64), smooth_rgb_images(96)[32:].flip(-1)  # 64 and 64, partly overlapping
    reference = FrechetInceptionDistance(feature=PooledPixels(), normalize=True)
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(16):
            reference.update(metric_input(batch, as_float=True), real=is_real)
    callback = FIDCallback(feature=PooledPixels(), num_samples=64, batch_size=16, cache_dir=None)
    results = quiet_trainer(callbacks=[callback]).validate(Replay(real, fake), verbose=False)[0]
    assert results["val/fid"] == reference.compute().item()  # the same number, not merely close
    assert set(SCORES) <= set(results) and results["val/kid"] > 0 and 0 < results["val/precision"] < 1


# --- DDP -----------------------------------------------------------------------------------------


class SkewRankOneEMA(Callback):
    """Gives rank 1 other moving-average batch-norm statistics than rank 0, as training leaves them."""

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 1:
            for buffer in pl_module.generator_ema.module.buffers():
                if buffer.is_floating_point():
                    buffer.mul_(3).add_(0.5)


def ema_buffers(model: DCGAN) -> list[list[float]]:
    return [buffer.flatten().tolist() for buffer in model.generator_ema.module.buffers()]


def run_ddp_scenario(out_dir: Path, data_dir: Path) -> None:
    """Two CPU processes: validate (computes and caches), validate again (reads), fit two epochs,
    validate an EMA model whose rank 1 statistics differ, and fit one epoch with no validation in it."""
    strategy = "ddp_find_unused_parameters_true"  # Lightning wraps generator and critic in one DDP
    record: dict[str, object] = {}
    for run in ("fresh", "cached", "fit", "ema", "end"):
        model, extractor = tiny_dcgan(ema_decay=0.9 if run == "ema" else None), PooledPixels()
        callback = FIDCallback(feature=extractor, num_samples=50, batch_size=8, cache_dir=str(out_dir / "cache"),
                               every_n_epochs=5 if run == "end" else 1)
        computed = []
        compute = callback.compute
        callback.compute = lambda trainer, module: computed.append(trainer.global_step) or compute(trainer, module)
        trainer = quiet_trainer(devices=2, strategy=strategy, limit_train_batches=2,
                                callbacks=[callback] + ([SkewRankOneEMA()] if run == "ema" else []),
                                # "fit": training goes on after an FID evaluation; "end": FID only in on_train_end
                                max_epochs=1 if run == "end" else 2, check_val_every_n_epoch=2 if run == "end" else 1)
        if run in ("fit", "end"):
            trainer.fit(model, mnist(data_dir))
        else:
            trainer.validate(model, mnist(data_dir), verbose=False)
        record[run] = {"fid": trainer.callback_metrics["val/fid"].item(),
                       "scores": {name: trainer.callback_metrics[name].item() for name in SCORES},
                       "real_images": callback.real_images_processed,
                       "extractor_images": extractor.images_seen,
                       "computed_at": computed, "global_step": trainer.global_step,
                       "ema_buffers": ema_buffers(model) if run == "ema" else None}
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    """What each of the two processes of ``run_ddp_scenario`` recorded, and the data it used."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    data_dir = write_mnist(tmp_path / "data", n_train=32, n_test=51)  # 51: the ranks get 26 and 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, str(tmp_path), str(data_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)], data_dir


def single_process_scores(data_dir: Path, **model_kwargs: object) -> dict[str, float]:
    callback = FIDCallback(feature=PooledPixels(), num_samples=50, batch_size=8, cache_dir=None)
    single = quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(**model_kwargs), mnist(data_dir), verbose=False)
    return {name: single[0][name] for name in SCORES}


def single_process_fid(data_dir: Path, **model_kwargs: object) -> float:
    return single_process_scores(data_dir, **model_kwargs)["val/fid"]


@pytest.mark.slow
def test_ddp_equals_one_process_and_reuses_the_cache(ddp_ranks: tuple[list[dict], Path]) -> None:
    ranks, data_dir = ddp_ranks
    expected = single_process_fid(data_dir)
    for rank in ranks:
        assert rank["fresh"]["fid"] == pytest.approx(expected, rel=1e-4)
        assert rank["cached"]["fid"] == pytest.approx(expected, rel=1e-4)  # no double counting
        assert rank["cached"]["real_images"] == 0 and rank["fit"]["real_images"] == 0
        assert rank["fit"]["fid"] > 0
    # KID (the same subsets: features gathered in the one-process order) and the neighbour metrics too.
    expected_scores = single_process_scores(data_dir)
    assert expected_scores["val/kid"] > 0 and 0 < expected_scores["val/coverage"] < 1  # not a degenerate case
    for rank in ranks:
        for run in ("fresh", "cached"):  # computed, and read back from the cache with the real features
            assert rank[run]["scores"] == pytest.approx(expected_scores, rel=1e-4, abs=1e-7)
    # The validation set split without repeats (DistributedSampler would pad to 52) ...
    assert sorted(r["fresh"]["real_images"] for r in ranks) == [25, 26]
    # ... and the 50 samples split by chunks of 8: 7 chunks, rank 0 takes chunks 0, 2, 4, 6 (26 images), rank 1 the other 24.
    assert sorted(r["cached"]["extractor_images"] for r in ranks) == [24, 26]


@pytest.mark.slow
def test_ddp_fid_scores_rank_zeros_moving_average(ddp_ranks: tuple[list[dict], Path]) -> None:
    ranks, data_dir = ddp_ranks
    expected = single_process_fid(data_dir, ema_decay=0.9)  # rank 0's (unskewed) average
    assert [rank["ema"]["fid"] for rank in ranks] == pytest.approx([expected, expected], rel=1e-4)
    assert ranks[1]["ema"]["ema_buffers"] == ranks[0]["ema"]["ema_buffers"]  # broadcast from rank 0


@pytest.mark.slow
def test_ddp_fid_at_the_end_of_a_fit_without_validation(ddp_ranks: tuple[list[dict], Path]) -> None:
    ranks, _ = ddp_ranks
    for rank in ranks:  # both ranks computed, together, once, for the final state
        assert rank["end"]["computed_at"] == [rank["end"]["global_step"]] and rank["end"]["global_step"] > 0
    assert ranks[0]["end"]["fid"] == ranks[1]["end"]["fid"] > 0


# --- the real-statistics cache -------------------------------------------------------------------


def test_real_statistics_are_computed_once_and_read_back_by_a_second_fit(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=32, n_test=20)
    fits = []
    for _ in range(2):
        extractor = PooledPixels()
        callback = FIDCallback(feature=extractor, num_samples=24, batch_size=8, cache_dir=str(tmp_path / "cache"))
        trainer = quiet_trainer(callbacks=[callback], max_epochs=2, limit_train_batches=1)
        trainer.fit(tiny_dcgan(), mnist(data_dir))
        assert set(SCORES) <= set(trainer.callback_metrics)  # a cache hit gives KID and the rest too
        fits.append((callback, extractor))
    (first, first_extractor), (second, second_extractor) = fits
    assert first.real_images_processed == 20 and second.real_images_processed == 0
    assert first_extractor.images_seen == 20 + 2 * 24  # real once, samples at both validations
    assert second_extractor.images_seen == 2 * 24
    assert len(list((tmp_path / "cache").glob("fid_real_*.pt"))) == 1
    assert first.real_features.shape == (20, 16) and torch.equal(first.real_features, second.real_features)


def test_an_image_edited_in_place_is_seen_and_its_statistics_recomputed(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=8, n_test=20)
    images_file = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"

    def validate() -> FIDCallback:
        callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=str(tmp_path / "cache"))
        quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
        return callback

    first = validate()
    with open(images_file, "r+b") as file:  # image 15 of 20 (not among the first 8), same size, same mtime order
        file.seek(16 + 15 * 28 * 28)  # past the IDX header
        file.write(bytes(28 * 28))
    edited, again = validate(), validate()
    assert first.real_images_processed == 20 and edited.real_images_processed == 20  # recomputed, not reused
    assert again.real_images_processed == 0  # the edited content's own cache entry
    assert not torch.equal(first.real_features, edited.real_features) and torch.equal(edited.real_features,
                                                                                       again.real_features)
    assert torch.equal(first.real_features[:15], edited.real_features[:15])


def test_another_dataset_or_extractor_gets_its_own_cache_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for data_seed, extractor in ((0, PooledPixels()), (1, PooledPixels()), (1, nn.Sequential(PooledPixels()))):
        if isinstance(extractor, nn.Sequential):
            extractor.num_features = 16
        data_dir = write_mnist(tmp_path / f"data{data_seed}", n_train=8, n_test=20, seed=data_seed)
        callback = FIDCallback(feature=extractor, num_samples=16, batch_size=8, cache_dir=str(cache))
        quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
        assert callback.real_images_processed == 20
    assert len(list(cache.glob("fid_real_*.pt"))) == 3


def test_the_metric_stays_out_of_checkpoints(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=16, n_test=20)
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    trainer = quiet_trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1)
    trainer.fit(tiny_dcgan(), mnist(data_dir))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert not any("features" in key or "inception" in key for key in checkpoint["state_dict"])
    assert all(state == {} for state in checkpoint["callbacks"].values())


# --- FID at the end of every fit ----------------------------------------------------------------


class RecordingLogger(Logger):
    """Keeps what Lightning and the callbacks log: metrics per step and the hyperparameters' metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.hparam_metrics: list[dict[str, float]] = []

    name, version = "recording", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: object, metrics: dict[str, float] | None = None) -> None:
        if metrics is not None:
            self.hparam_metrics.append(metrics)


def counted_fit(callback: FIDCallback, data_dir: Path, **trainer_kwargs: object) -> tuple[Trainer, list[tuple[int, float]]]:
    """Fit a tiny DCGAN; returns the trainer and (global_step, fid) of every FID computation."""
    computed: list[tuple[int, float]] = []
    compute = callback.compute

    def counting(trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        scores = compute(trainer, pl_module)
        computed.append((trainer.global_step, scores["val/fid"].item()))
        return scores

    callback.compute = counting  # the public seam every evaluation goes through
    model = DCGAN(latent_dim=8, generator_width=8, critic_width=8, **trainer_kwargs.pop("model", {}))
    trainer = quiet_trainer(callbacks=[RunMonitor(), callback], **trainer_kwargs)  # RunMonitor first: order-independent
    trainer.fit(model, mnist(data_dir))
    return trainer, computed


@pytest.mark.parametrize("stop, at_validation", [
    (dict(max_epochs=3, limit_train_batches=2), True),  # 3 is no multiple of every_n_epochs=2
    (dict(max_epochs=5, model=dict(max_generator_steps=3)), True),  # should_stop in epoch 0: it validates there
    (dict(max_steps=6), False),  # 3 of epoch 0's 4 batches (2 optimiser steps each): no validation at the stop
    (dict(max_epochs=1, limit_val_batches=0), False),  # no validation at all
], ids=["max_epochs", "max_generator_steps", "max_steps", "no_validation"])
def test_fid_scores_the_state_every_fit_ends_in_exactly_once(stop: dict, at_validation: bool, tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=64, n_test=20)  # 4 batches of 16 per epoch
    logger = RecordingLogger()
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, every_n_epochs=2, cache_dir=None)
    trainer, computed = counted_fit(callback, data_dir, logger=logger, **stop)

    periodic = [(step, fid) for step, fid in computed if step != trainer.global_step]
    final = [fid for step, fid in computed if step == trainer.global_step]
    assert len(final) == 1, computed  # the final state, scored once
    assert len(periodic) == (1 if "limit_train_batches" in stop else 0)  # epoch 2 of 3
    assert trainer.callback_metrics["val/fid"].item() == pytest.approx(final[0])
    logged = [metrics for _, metrics in logger.metrics if "val/fid" in metrics]
    assert logged[-1]["val/fid"] == pytest.approx(final[0]) and len(logged) == len(computed)
    # Where a validation runs at the final state, its FID is logged with that validation's metrics.
    assert ("val/critic_loss" in logged[-1]) == at_validation
    assert len(logger.hparam_metrics) == 1 and logger.hparam_metrics[0]["hp/final_fid"] == pytest.approx(final[0])


def test_a_validation_inside_the_last_epoch_is_not_taken_for_its_end(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=64, n_test=20)
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, every_n_epochs=3, cache_dir=None)
    trainer, computed = counted_fit(callback, data_dir, max_epochs=2, val_check_interval=2)  # after batches 2 and 4
    assert [step for step, _ in computed] == [trainer.global_step]


def test_a_fit_without_validation_data_says_fid_was_not_computed(tmp_path: Path) -> None:
    images = smooth_rgb_images(32)[:, :1].contiguous()  # (32, 1, 16, 16)
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    model = DCGAN(image_shape=(1, 16, 16), latent_dim=8, generator_width=8, critic_width=8)
    with pytest.warns(UserWarning, match="FID was not computed at the end of training.*`val_dataloader`"):
        quiet_trainer(callbacks=[callback], max_steps=2).fit(model, DataLoader(images, batch_size=16))


# --- images, options and errors ------------------------------------------------------------------


def test_grayscale_generators_reach_the_extractor_as_rgb_in_unit_range(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=16, n_test=20)
    extractor = PooledPixels()
    callback = FIDCallback(feature=extractor, num_samples=16, batch_size=8, cache_dir=None)
    results = quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
    assert results[0]["val/fid"] > 0
    for shape, dtype, low, high, channels_equal in extractor.inputs:
        assert shape[1:] == (3, 28, 28) and dtype == torch.float32 and channels_equal
        assert 0 <= low <= high <= 1


def test_too_few_images_for_the_neighbour_metrics_leave_them_out_with_a_warning(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=8, n_test=3)  # 3 real images: no 3rd nearest neighbour
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    with pytest.warns(UserWarning, match=r"No precision.*got 3 and 16.*`prdc_k`"):
        results = quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)[0]
    assert "val/kid" in results and "val/fid" in results and "val/precision" not in results


def test_a_validation_split_of_one_image_is_refused_naming_the_count(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=16, n_test=1)
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    with pytest.raises(ValueError, match=r"at least 2 real images, and the validation split holds 1: .*turn the metrics off"):
        quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
    model = tiny_dcgan()
    with pytest.raises(ValueError, match=r"at least 2 real images, and the validation split holds 1"):
        quiet_trainer(callbacks=[callback], max_steps=4, num_sanity_val_steps=0).fit(model, mnist(data_dir))
    assert model.critic_steps == 0  # refused before training, not after it


def test_the_scores_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    # latent_dim 8: chunks of 5 draw 40 numbers each, of 16 draw 128; the CPU's normal sampler gives other
    # numbers for counts that are not multiples of 16, so drawing chunk by chunk changed the images.
    data_dir = write_mnist(tmp_path / "data", n_train=8, n_test=20)
    scores = []
    for batch_size in (5, 16):
        callback = FIDCallback(feature=PooledPixels(), num_samples=20, batch_size=batch_size, cache_dir=None)
        scores.append(quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)[0])
    assert scores[0] == scores[1]


class DroppedPixels(PooledPixels):
    """PooledPixels with dropout on its features: random in training mode."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(super().forward(x), 0.5, self.training)


def test_a_custom_extractor_runs_in_eval_mode(tmp_path: Path) -> None:
    real = smooth_rgb_images(32)
    callback = FIDCallback(feature=DroppedPixels(), num_samples=32, batch_size=16, cache_dir=None)
    fid = quiet_trainer(callbacks=[callback]).validate(Replay(real, real), verbose=False)[0]["val/fid"]
    assert abs(fid) < 1e-6 and not callback.extractor.training  # dropout would make the two feature sets differ


class PooledBy(PooledPixels):
    """PooledPixels by average or maximum: a setting that changes the features and no weight, named by extra_repr."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        pool = F.adaptive_avg_pool2d if self.mode == "avg" else F.adaptive_max_pool2d
        return pool(x.float().mean(1, keepdim=True), 4).flatten(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


def test_an_extractor_setting_named_in_its_repr_gets_its_own_cache_entry(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=8, n_test=20)
    for mode in ("avg", "max", "avg"):
        callback = FIDCallback(feature=PooledBy(mode), num_samples=16, batch_size=8, cache_dir=str(tmp_path / "cache"))
        quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
        fresh = callback.real_images_processed
    assert fresh == 0 and len(list((tmp_path / "cache").glob("fid_real_*.pt"))) == 2


def test_fewer_samples_than_features_warn() -> None:
    with pytest.warns(UserWarning, match="unreliable"):
        FIDCallback(feature=PooledPixels(), num_samples=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FIDCallback(feature=PooledPixels(), num_samples=16)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="`feature`"):
        FIDCallback(feature=100)
    with pytest.raises(ValueError, match="num_features"):
        FIDCallback(feature=nn.Flatten())
    with pytest.raises(ValueError, match="`num_samples`"):
        FIDCallback(feature=PooledPixels(), num_samples=1)


def test_inception_without_network_says_how_to_pass_local_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)  # offline even where there is network
    # From Python the advice names the arguments; train.py names the flags (tests/test_first_hour.py).
    with pytest.raises(RuntimeError, match=r"could not be downloaded.*`enabled=False`.*`weights_path=PATH`"):
        build_extractor(2048)
    callback = FIDCallback(feature=64, num_samples=64)
    with pytest.raises(RuntimeError, match="`weights_path=PATH`"):
        callback.setup(quiet_trainer(), tiny_dcgan(), "fit")


def test_fid_switched_off_does_nothing_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)  # weights would be an error
    data_dir = write_mnist(tmp_path / "data", n_train=16, n_test=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not even "unreliable": 64 samples, 2048 features
        callback = FIDCallback(num_samples=64, cache_dir=str(tmp_path / "cache"), enabled=False)
    trainer = quiet_trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1)
    trainer.fit(tiny_dcgan(), mnist(data_dir))
    results = trainer.validate(tiny_dcgan(), mnist(data_dir), verbose=False)
    assert "val/fid" not in trainer.callback_metrics and "val/fid" not in results[0]
    assert callback.extractor is None and callback.real_images_processed == 0
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_inception_runs_offline_from_a_local_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    from benchmarks.fid_benchmark import random_inception_weights

    # Random weights stand in for the real file.
    weights = torch.load(random_inception_weights(tmp_path / "inception.pth"), weights_only=True)
    monkeypatch.setattr(inception, "load_state_dict_from_url", None)  # any download attempt fails

    data_dir = write_mnist(tmp_path / "data", n_train=8, n_test=8)
    with pytest.warns(UserWarning, match="unreliable"):  # 8 images, 64 features
        callback = FIDCallback(feature=64, weights_path=str(tmp_path / "inception.pth"), num_samples=8,
                               batch_size=8, cache_dir=None)
        results = quiet_trainer(callbacks=[callback]).validate(tiny_dcgan(), mnist(data_dir), verbose=False)
    assert results[0]["val/fid"] > 0
    assert torch.equal(callback.extractor.Conv2d_1a_3x3.conv.weight, weights["Conv2d_1a_3x3.conv.weight"])


def test_an_unusable_weights_file_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"No Inception weights file at .*nowhere\.pth"):
        build_extractor(2048, weights_path=str(tmp_path / "nowhere.pth"))
    torch.save({"settings": argparse.Namespace(a=1)}, tmp_path / "objects.pth")  # loading it could run code
    (tmp_path / "page.pth").write_text("<html>quota exceeded</html>")
    for name, problem in (("objects", r"holds objects other than tensors .*\(argparse\.Namespace\): refused"),
                          ("page", r"is not a torch checkpoint \(it starts with b'<htm'\)")):
        with pytest.raises(RuntimeError, match=rf"{name}\.pth {problem}.*`weights_path` needs torch-fidelity") as error:
            build_extractor(2048, weights_path=str(tmp_path / f"{name}.pth"))
        assert "weights_only` set to `False`" not in str(error.value)  # torch's advice to load it unsafely


if __name__ == "__main__":
    run_ddp_scenario(Path(sys.argv[1]), Path(sys.argv[2]))


def test_a_resumed_fit_that_trains_nothing_does_not_score_its_checkpoint_again(tmp_path: Path) -> None:
    data_dir = write_mnist(tmp_path / "data", n_train=64, n_test=20)
    callback = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    trainer, computed = counted_fit(callback, data_dir, max_epochs=5, model=dict(max_generator_steps=3))
    assert len(computed) == 1  # the stopped run's end
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    again = FIDCallback(feature=PooledPixels(), num_samples=16, batch_size=8, cache_dir=None)
    scored = []
    compute = again.compute
    again.compute = lambda trainer, pl_module: scored.append(trainer.global_step) or compute(trainer, pl_module)
    model = DCGAN(latent_dim=8, generator_width=8, critic_width=8, max_generator_steps=3)  # its limit is reached
    quiet_trainer(callbacks=[again], max_epochs=5).fit(model, mnist(data_dir), ckpt_path=tmp_path / "stopped.ckpt")
    assert model.generator_steps == 3 and scored == []
