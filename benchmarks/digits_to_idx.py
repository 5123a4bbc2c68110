"""Write scikit-learn's 1,797 handwritten digits as MNIST IDX files, for offline runs on real images.

    python benchmarks/digits_to_idx.py --out data/digits       # then --data.data_dir data/digits

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" test set (``load_digits``):
1,797 real 8 x 8 digits with values 0..16. Each is scaled to 0..255 (``x * 255 / 16``, rounded),
resized to ``size`` px (28 by default, MNIST's size) with bilinear, antialiased interpolation
(``torch.nn.functional.interpolate``), and written as uint8 in LeCun's IDX format to
``OUT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, the layout torchvision's ``MNIST`` and
``datamodules.MNISTDataModule`` read. The split is a seeded random permutation: ``num_test`` images
(300 by default) go to ``t10k`` (the validation split), the other 1,497 to ``train``.

scikit-learn is a dev/benchmark dependency only; the training code never imports it.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of LeCun's MNIST files (big-endian header)."""
    magic = 0x0800 | array.ndim  # 0x08: unsigned byte data
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def digits_uint8(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (1797, size, size) in 0..255 and labels (1797,)."""
    from sklearn.datasets import load_digits  # dev dependency, imported only here

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) * (255 / 16)  # (N, 1, 8, 8) in 0..255
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    return images, digits.target.astype(np.uint8)


def write_random_mnist(root: Path, num_train: int, num_test: int = 1000, seed: int = 0) -> Path:
    """MNIST's four IDX files under ``root/MNIST/raw``, of random 28 x 28 digits (what the benchmarks
    time: the compute is MNIST's, the content does not matter); returns ``root``."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count, dtype=np.uint8))
    return Path(root)


def write_digits(out: Path, size: int = 28, num_test: int = 300, seed: int = 0,
                 limit: int | None = None, num_train: int | None = None) -> Path:
    """Write the digits as MNIST IDX files under ``out/MNIST/raw``; returns ``out``.

    Args:
        out: folder to hold ``MNIST/raw/`` (pass it as ``--data.data_dir``).
        size: side of the written images (bilinear, antialiased resize of the 8 x 8 originals).
        num_test: images in the ``t10k`` (validation) split; the rest are the train split.
        seed: seed of the permutation that splits the digits.
        limit: keep only the first ``limit`` digits of the permutation (tiny data for tests).
        num_train: keep only this many training digits (a small-data study); the validation split is the
            same ``num_test`` digits whatever ``num_train``.
    """
    images, labels = digits_uint8(size)
    order = np.random.default_rng(seed).permutation(len(images))
    if limit is not None:
        order = order[:limit]
    if not 0 < num_test < len(order):
        raise ValueError(f"num_test must be between 1 and {len(order) - 1}, got {num_test}: set `--num_test`.")
    if num_train is not None and not 0 < num_train <= len(order) - num_test:
        raise ValueError(f"num_train must be between 1 and {len(order) - num_test}, got {num_train}: set `--num_train`.")
    splits = {"t10k": order[:num_test], "train": order[num_test:][:num_train]}
    raw = Path(out) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, index in splits.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[index])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[index])
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/digits"), help="folder to hold MNIST/raw/")
    parser.add_argument("--size", type=int, default=28, help="image side in px (default 28)")
    parser.add_argument("--num_test", type=int, default=300, help="images in the validation (t10k) split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--num_train", type=int, default=None,
                        help="keep only this many training digits (default: all 1,797 - num_test); the validation "
                             "split does not change")
    args = parser.parse_args(argv)
    out = write_digits(args.out, args.size, args.num_test, args.seed, num_train=args.num_train)
    print(f"Wrote {args.num_train or 1797 - args.num_test} train and {args.num_test} validation digits "
          f"({args.size} x {args.size}) to {out / 'MNIST' / 'raw'}")


if __name__ == "__main__":
    main()
