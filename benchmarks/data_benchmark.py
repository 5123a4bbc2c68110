"""Images per second of the data pipelines, on CelebA-like JPEGs this script writes itself.

    python benchmarks/data_benchmark.py                 # 2,000 JPEGs, batch 128, 64 px, 2 workers

Measures, through ``ImageFolderDataModule.train_dataloader()`` at the presets' batch size:

1. the JPEG path (``cache=False``): PIL decode + centre crop 178 + resize per image, in
   ``--workers`` DataLoader worker processes;
2. the one-off cache build (decode once into a uint8 ``.npy``, every core);
3. the cached path (``cache=True``; no workers, the default, then 1 and 2): one memmap gather +
   ``to_unit_range`` per batch;
4. for reference, the same cache read one image at a time with ``default_collate``.

and prints the DCGAN training step's FLOPs per image, to estimate how many images per second an
H100 consumes (an estimate: no GPU is measured here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from datamodules.image_cache import CachedImageDataset  # noqa: E402
from datamodules.image_folder import ImageFolderDataModule  # noqa: E402


def write_jpegs(folder: Path, count: int, seed: int = 0) -> float:
    """``count`` 178 x 218 JPEGs (quality 90) like CelebA's: smooth colour fields plus noise; returns mean KiB."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).resize((178, 218), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (218, 178, 3))
        path = folder / f"{index + 1:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total / count / 1024


def images_per_second(loader: DataLoader, epochs: int, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` steady-state rates (the first batch, with worker start-up, is not counted),
    and its ms per batch. The best, since other processes on the machine only ever slow a run down."""
    best = 0.0, float("inf")
    for _ in range(repeats):
        iterator_batches = (batch for _ in range(epochs) for batch in loader)
        next(iterator_batches)
        images, batches, start = 0, 0, time.perf_counter()
        for real, _ in iterator_batches:
            images += real.shape[0]
            batches += 1
        seconds = time.perf_counter() - start
        best = max(best, (images / seconds, 1e3 * seconds / batches))
    return best


class _OneByOne(Dataset):
    """The cache read per item, as ``UInt8ImageDataset`` would: ``to_unit_range`` per image, then stacking."""

    def __init__(self, cached: CachedImageDataset) -> None:
        self.cached = cached

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int):
        return self.cached[index]


def dcgan_step_gflops_per_image(image_size: int, batch: int = 8) -> float:
    """FLOPs of one DCGAN training step (critic update + generator update, as GANModule runs them) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from gan_modules.networks import Discriminator, Generator

    generator, discriminator = Generator(100, 3, image_size, 64), Discriminator(3, image_size, 64, "batch", False)
    real, noise = torch.randn(batch, 3, image_size, image_size), lambda: torch.randn(batch, 100)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():  # critic step: fakes without a graph, the critic on real and fake
            fake = generator(noise())
        (discriminator(real).mean() + discriminator(fake).mean()).backward()
        discriminator.requires_grad_(False)  # generator step: through the frozen critic into the generator
        discriminator(generator(noise())).mean().backward()
    return counter.get_total_flops() / batch / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the JPEG path")
    parser.add_argument("--cached-epochs", type=int, default=30, help="passes over the cache to time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path; the best is printed")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the JPEGs (default: a temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as temporary:
        folder = args.dir or Path(temporary) / "images"
        kib = write_jpegs(folder, args.num_images)
        print(f"{args.num_images} JPEGs of 178x218 ({kib:.1f} KiB each) in {folder}; batch {args.batch_size}, "
              f"{args.image_size}x{args.image_size}, crop center178; {os.cpu_count()} CPUs, torch threads "
              f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; best of {args.repeats} runs")
        settings = dict(data_dir=str(folder), batch_size=args.batch_size, image_size=args.image_size,
                        crop="center178", val_fraction=0.0, cache_dir=str(Path(temporary) / "cache"))

        jpeg = ImageFolderDataModule(**settings, num_workers=args.workers, cache=False)
        jpeg.setup("fit")
        jpeg_rate, jpeg_ms = images_per_second(jpeg.train_dataloader(), 1, args.repeats)
        print(f"JPEG decode+crop+resize, {args.workers} workers: {jpeg_rate:10,.0f} images/s ({jpeg_ms:.1f} ms/batch)")

        cached = ImageFolderDataModule(**settings, num_workers=0, cache=True)
        start = time.perf_counter()
        cached.prepare_data()
        build_seconds = time.perf_counter() - start
        cached.setup("fit")
        print(f"cache build (once):                {args.num_images / build_seconds:10,.0f} images/s")
        cached_rate, cached_ms = images_per_second(cached.train_dataloader(), args.cached_epochs, args.repeats)
        print(f"cached, batch gather, 0 workers:   {cached_rate:10,.0f} images/s ({cached_ms:.2f} ms/batch)")
        for workers in (1, 2):
            cached.num_workers = workers
            rate, ms = images_per_second(cached.train_dataloader(), args.cached_epochs, args.repeats)
            print(f"cached, batch gather, {workers} worker{'s' if workers > 1 else ' '}:   {rate:10,.0f} images/s "
                  f"({ms:.2f} ms/batch)")
        one_by_one = DataLoader(_OneByOne(cached.train_set), batch_size=args.batch_size, shuffle=True,
                                drop_last=True, collate_fn=default_collate)
        item_rate, item_ms = images_per_second(one_by_one, max(1, args.cached_epochs // 3), args.repeats)
        print(f"cached, per item (reference):      {item_rate:10,.0f} images/s ({item_ms:.2f} ms/batch)")
        print(f"cached / JPEG: {cached_rate / jpeg_rate:.0f}x (load average now {os.getloadavg()[0]:.1f})")

    gflops = dcgan_step_gflops_per_image(args.image_size)
    print(f"DCGAN training step ({args.image_size} px, width 64): {gflops:.2f} GFLOP per image; an H100 achieving "
          f"50-200 TFLOP/s on these small convolutions consumes about {50e3 / gflops:,.0f}-{200e3 / gflops:,.0f} images/s "
          f"(an estimate, not a measurement)")


if __name__ == "__main__":
    main()
