"""What a short fit writes for TensorBoard, read back with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from datamodules import MNISTDataModule
from gan_modules import DCGAN, WGANGP
from gan_modules.callbacks import FIDCallback, RunMonitor, SampleGridCallback
from test_fid import PooledPixels

pytestmark = pytest.mark.slow  # every test here trains, or starts processes

TINY = dict(image_shape=(1, 28, 28), latent_dim=8, generator_width=4, critic_width=4, n_critic=2)
COMMON = {"train/critic_loss", "train/generator_loss", "train/critic_grad_norm", "train/generator_grad_norm",
          "train/critic_lr", "train/generator_lr", "train/critic_steps", "train/generator_steps", "train/real_score",
          "train/fake_score", "train/seconds_per_epoch", "train/images_per_second", "val/fid"}


@pytest.mark.parametrize("model_cls, family_tags", [
    (WGANGP, {"train/wasserstein", "train/gradient_penalty", "val/wasserstein"}),
    (DCGAN, {"val/critic_loss"}),
])
def test_a_short_fit_writes_the_health_signals(model_cls, family_tags, mnist_dir: Path, tmp_path: Path) -> None:
    model = model_cls(**TINY)
    fid = FIDCallback(feature=PooledPixels(), num_samples=32, batch_size=16, cache_dir=None)
    trainer = Trainer(
        accelerator="cpu", max_epochs=2, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
        logger=TensorBoardLogger(tmp_path, name="run", default_hp_metric=False),
        callbacks=[SampleGridCallback(num_samples=4, nrow=2), RunMonitor(), fid],
    )
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_dir), batch_size=8))

    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert COMMON | family_tags <= scalars, sorted(COMMON | family_tags - scalars)
    assert len(events.Scalars("train/seconds_per_epoch")) == 2  # once per epoch
    assert {"samples/fixed_noise", "samples/interpolation", "data/real"} <= set(events.Tags()["images"])
    assert len(events.Images("data/real")) == 1 and len(events.Images("samples/fixed_noise")) == 2

    # The hyperparameters, with the final FID as their metric, in the HPARAMS tab.
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.n_critic"].number_value == 2
    assert start.session_start_info.hparams["data.batch_size"].number_value == 8  # the data's settings too
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert "hp/final_fid" in [m.name.tag for m in experiment.experiment.metric_infos]
    final_fid = events.Scalars("hp/final_fid")[-1].value
    assert final_fid == pytest.approx(events.Scalars("val/fid")[-1].value)
