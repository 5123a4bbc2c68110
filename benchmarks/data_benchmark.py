"""Images per second of the data pipelines, on CelebA-like JPEGs and MNIST-sized digits this script
writes itself.

    python benchmarks/data_benchmark.py                 # 2,000 JPEGs, batch 128, 64 px, 2 workers
    python benchmarks/data_benchmark.py --only mnist    # 60,000 random 28 x 28 digits, batch 128

On MNIST (random digits in the real IDX files), through ``MNISTDataModule.train_dataloader()``:
``UInt8ImageDataset`` read one image at a time with ``default_collate`` (the path before batched
gathers), its batched ``__getitems__`` (one gather + one ``to_unit_range`` per batch, the default),
and ``on_device`` (the training set on the trainer's device: the CPU here, and a CUDA GPU as well
when there is one, timed with synchronisation).

On the JPEGs, through ``ImageFolderDataModule.train_dataloader()`` at the presets' batch size:

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
import logging
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

from benchmarks.digits_to_idx import write_random_mnist  # noqa: E402
from datamodules.image_folder import ImageFolderDataModule  # noqa: E402
from datamodules.mnist import MNISTDataModule  # noqa: E402
from datamodules.pipeline import ResumableSampler  # noqa: E402


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
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(repeats):
        iterator_batches = (batch for epoch in range(epochs) for batch in _epoch(loader, epoch))
        next(iterator_batches)
        synchronize()  # device-resident batches are gathered asynchronously: time the work, not its launch
        images, batches, start = 0, 0, time.perf_counter()
        for real, _ in iterator_batches:
            images += real.shape[0]
            batches += 1
        synchronize()
        seconds = time.perf_counter() - start
        best = max(best, (images / seconds, 1e3 * seconds / batches))
    return best


def _epoch(loader: DataLoader, epoch: int) -> DataLoader:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)  # a new shuffle per epoch, as Lightning does
    return loader


class _OneByOne(Dataset):
    """A dataset read per item, hiding its ``__getitems__``: ``to_unit_range`` per image, then ``default_collate``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def benchmark_mnist(folder: Path, args: argparse.Namespace) -> None:
    """MNIST images/s: per item, one gather per batch, and the training set on the device."""
    from lightning.pytorch import Trainer

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the Trainer's start-up lines

    root = write_random_mnist(folder, args.mnist_images)
    print(f"MNIST: {args.mnist_images:,} random 28x28 digits, batch {args.batch_size}, 0 workers; torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; best of {args.repeats} runs")
    settings = dict(data_dir=str(root), batch_size=args.batch_size, num_workers=0, download=False)
    batched = MNISTDataModule(**settings)
    batched.setup("fit")
    per_item = DataLoader(_OneByOne(batched.train_set), batch_size=args.batch_size, drop_last=True,
                          sampler=ResumableSampler(batched.train_set), collate_fn=default_collate)
    item_rate, item_ms = images_per_second(per_item, args.mnist_epochs, args.repeats)
    print(f"MNIST per item + default_collate:  {item_rate:10,.0f} images/s ({item_ms:.3f} ms/batch)")
    gather_rate, gather_ms = images_per_second(batched.train_dataloader(), args.mnist_epochs, args.repeats)
    print(f"MNIST one gather per batch:        {gather_rate:10,.0f} images/s ({gather_ms:.3f} ms/batch), "
          f"{gather_rate / item_rate:.1f}x per item")
    for accelerator in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        on_device = MNISTDataModule(**settings, on_device=True)
        on_device.trainer = Trainer(accelerator=accelerator, devices=1, logger=False)  # gives the root device
        on_device.setup("fit")
        rate, ms = images_per_second(on_device.train_dataloader(), args.mnist_epochs, args.repeats)
        print(f"MNIST on_device ({accelerator}):{' ' * (18 - len(accelerator))}{rate:10,.0f} images/s ({ms:.3f} "
              f"ms/batch)")


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
    parser.add_argument("--only", choices=("mnist", "images"), default=None, help="run one of the two benchmarks")
    parser.add_argument("--mnist-images", type=int, default=60000, help="MNIST training images (MNIST's 60,000)")
    parser.add_argument("--mnist-epochs", type=int, default=2, help="passes over MNIST to time, per run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.only != "images":
        with tempfile.TemporaryDirectory() as temporary:
            benchmark_mnist(Path(temporary), args)
    if args.only != "mnist":
        benchmark_images(args)


def benchmark_images(args: argparse.Namespace) -> None:
    """JPEG decoding, the cache build and the cached batches, then the DCGAN step's FLOPs per image."""
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
