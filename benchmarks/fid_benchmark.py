"""Seconds one evaluation of FIDCallback takes here: FID alone and the added KID, precision/recall and
density/coverage (from the same features), and what the real-statistics cache and its content key cost.

    python benchmarks/fid_benchmark.py                          # 1,000 samples, 1,000 real; added metrics at 10,000
    python benchmarks/fid_benchmark.py --num-samples 200 --num-real 200 --feature-sizes 1000   # a quick look

It runs the callback as training does: ``Trainer.validate`` of a default DCGAN (MNIST size, 1 x 28 x 28)
on MNIST-format files, Inception-v3 pool3 features (2048, the standard FID) loaded through
``weights_path``. Without network no trained Inception weights can be had, so the file holds the
same architecture with random He-initialised weights: the same arithmetic, so the same time, but
meaningless FID values. Pass ``--weights-path`` with the real file to use it instead. The added metrics'
cost depends only on the image counts and the feature width, not on the features' values: at the
``--feature-sizes`` it is timed on random (N, 2048) tensors, beside FID alone extrapolated from the
measured seconds per generated image (10,000 Inception forwards take about 20 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from benchmarks.digits_to_idx import write_random_mnist  # noqa: E402
from datamodules.mnist import MNISTDataModule  # noqa: E402
from gan_modules import DCGAN  # noqa: E402
from gan_modules import fid  # noqa: E402
from gan_modules.fid import KNN_CHUNK, FIDCallback  # noqa: E402
from gan_modules.metrics import kid, prdc  # noqa: E402


def random_inception_weights(path: Path) -> Path:
    """Write torch-fidelity's Inception-v3 state dict with random weights (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None), \
            mock.patch.object(NoTrainInceptionV3, "load_state_dict", lambda self, state: None):
        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            # PyTorch's default init shrinks activations layer by layer into denormal floats, which
            # a CPU computes many times slower; He init keeps them at the scale trained weights give.
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), path)
    return path


class TimedFID(FIDCallback):
    """Records the seconds of each FID evaluation and of its real-statistics step."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.evaluation_s: list[float] = []
        self.real_statistics_s: list[float] = []
        self.distance_s: list[float] = []
        self.evaluation_cpu_s: list[float] = []  # CPU seconds of all threads: less sensitive to a busy machine
        self.real_statistics_cpu_s: list[float] = []
        self.added_metrics_s: list[float] = []  # KID and the neighbour metrics, from the kept features
        self.content_key_s: list[float] = []  # reading and hashing every real image (once per fit)

    def _feature_scores(self, trainer: Trainer, fake: torch.Tensor) -> dict[str, float]:
        distance = fid.frechet_distance

        def timed_distance(*features: torch.Tensor) -> float:  # the Fréchet distance from the features
            start = time.perf_counter()
            value = distance(*features)
            self.distance_s.append(time.perf_counter() - start)
            return value

        start = time.perf_counter()
        with mock.patch.object(fid, "frechet_distance", timed_distance):
            scores = super()._feature_scores(trainer, fake)
        self.added_metrics_s.append(time.perf_counter() - start - self.distance_s[-1])
        return scores

    def _real_content(self, loader, trainer: Trainer) -> str:
        start = time.perf_counter()
        digest = super()._real_content(loader, trainer)
        self.content_key_s.append(time.perf_counter() - start)
        return digest

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: DCGAN) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        super().on_validation_epoch_end(trainer, pl_module)
        self.evaluation_s.append(time.perf_counter() - start)
        self.evaluation_cpu_s.append(time.process_time() - cpu_start)

    def _ensure_real_statistics(self, trainer: Trainer) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        super()._ensure_real_statistics(trainer)
        self.real_statistics_s.append(time.perf_counter() - start)
        self.real_statistics_cpu_s.append(time.process_time() - cpu_start)


def evaluate(data_dir: Path, cache_dir: Path, weights: Path, num_samples: int, batch_size: int) -> TimedFID:
    seed_everything(0, verbose=False)
    callback = TimedFID(feature=2048, weights_path=str(weights), num_samples=num_samples,
                        batch_size=batch_size, cache_dir=str(cache_dir))
    trainer = Trainer(accelerator="cpu", devices=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(DCGAN(), MNISTDataModule(str(data_dir), batch_size=batch_size, download=False), verbose=False)
    return callback


def added_metrics_seconds(num_samples: int, num_real: int, width: int = 2048) -> tuple[float, float]:
    """Seconds of KID and of precision/recall/density/coverage on random (N, width) features, as the callback
    runs them."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(num_real, width, generator=g).relu(), torch.randn(num_samples, width, generator=g).relu()
    start = time.perf_counter()
    kid(real, fake)
    middle = time.perf_counter()
    prdc(real, fake, k=3, chunk=KNN_CHUNK)
    return middle - start, time.perf_counter() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, nargs="+", default=[1000], help="generated samples")
    parser.add_argument("--num-real", type=int, default=1000, help="real validation images (MNIST has 10,000)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per Inception forward")
    parser.add_argument("--weights-path", default=None, help="trained Inception weights, if you have them")
    parser.add_argument("--feature-sizes", type=int, nargs="*", default=[1000, 10000],
                        help="sizes (generated = real) at which the added metrics are timed on random features")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # "GPU available: False" and tips
    warnings.filterwarnings("ignore", message="FID from")  # the few-samples warning: said once below
    warnings.filterwarnings("ignore", message="No precision")  # the 2-sample run that times the cache
    warnings.filterwarnings("ignore", message=".*LeafSpec")  # a deprecation inside Lightning

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = write_random_mnist(tmp / "data", 8, args.num_real)
        if args.weights_path:
            weights, kind = Path(args.weights_path), "trained weights from --weights-path"
        else:
            weights = random_inception_weights(tmp / "inception-random.pth")
            kind = ("RANDOM He-initialised weights (no trained Inception weights exist on this machine and it has "
                    "no network): same architecture and arithmetic as the real network, so the same time; the "
                    "FID values are meaningless")
        print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"Feature extractor: Inception-v3 pool3 (2048 features), {kind}.")
        print(f"Generator: DCGAN defaults (latent 100, width 64), 1 x 28 x 28, upsampled to 299 px for Inception; "
              f"batch size {args.batch_size}; {args.num_real:,} real images.\n")

        if min(args.num_samples + [args.num_real]) < 2048:
            print("(The callback warns that fewer than 2,048 samples give an unreliable 2048-feature FID.)\n")
        cache_dir = tmp / "cache"
        print(f"{'generated samples':>18} {'s per evaluation':>17} {'FID alone':>10} {'of which Fréchet':>17} "
              f"{'KID+PR+DC':>10} {'added':>7} {'CPU s (all threads)':>20}")
        fresh = None
        for num_samples in args.num_samples:
            run = evaluate(data_dir, cache_dir, weights, num_samples, args.batch_size)
            fresh = fresh or run  # the first run computes the real statistics and writes the cache
            seconds = run.evaluation_s[0] - run.real_statistics_s[0]
            added = run.added_metrics_s[0]
            alone = seconds - added
            cpu_seconds = run.evaluation_cpu_s[0] - run.real_statistics_cpu_s[0]
            print(f"{num_samples:>18,} {seconds:>17.1f} {alone:>10.1f} {run.distance_s[0]:>17.1f} {added:>10.1f} "
                  f"{added / alone:>7.1%} {cpu_seconds:>20.1f}", flush=True)
        per_sample = alone / num_samples  # the Inception and generator forwards dominate FID alone

        if args.feature_sizes:
            print(f"\nThe added metrics on random (N, 2048) features, N generated = N real, beside FID alone "
                  f"extrapolated at {per_sample * 1000:.0f} ms per generated image (real statistics cached):")
            print(f"{'N':>8} {'KID s':>7} {'PR+DC s':>8} {'FID alone s':>12} {'added':>7}")
            for size in args.feature_sizes:
                kid_s, prdc_s = added_metrics_seconds(size, size)
                print(f"{size:>8,} {kid_s:>7.1f} {prdc_s:>8.1f} {per_sample * size:>12.0f} "
                      f"{(kid_s + prdc_s) / (per_sample * size):>7.1%}", flush=True)

        cached = evaluate(data_dir, cache_dir, weights, 2, args.batch_size) if len(args.num_samples) == 1 else run
        computed, read = fresh.real_statistics_s[0], cached.real_statistics_s[0]
        per_image = computed / args.num_real
        print(f"\nReal statistics of {args.num_real:,} validation images: computed in {computed:.1f} s "
              f"({fresh.real_statistics_cpu_s[0]:.1f} CPU s), read from "
              f"the cache in {read:.2f} s: the cache saves {computed - read:.1f} s at every later run start "
              f"(MNIST's 10,000 validation images: about {per_image * 10_000:.0f} s, extrapolated at "
              f"{per_image * 1000:.2f} ms per image).")
        key_s = cached.content_key_s[0]
        print(f"Of the cached read, the content key (reading and hashing all {args.num_real:,} real images, once "
              f"per fit) took {key_s:.2f} s ({key_s / args.num_real * 1e6:.0f} µs per image).")


if __name__ == "__main__":
    main()
