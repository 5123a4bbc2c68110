"""Writing samples from a checkpoint: ``python train.py sample``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from gan_modules.base import GANModule


def load_generator_checkpoint(ckpt_path: str | Path, map_location: str = "cpu") -> GANModule:
    """Load a DCGAN, WGANGP or WGAN checkpoint; the class is read from the checkpoint itself."""
    import gan_modules

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: pass `--ckpt_path` a .ckpt file written by `train.py fit`.")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    name = checkpoint.get("gan_state", {}).get("model")
    if name not in gan_modules.__all__:
        raise ValueError(f"{path} was not written by this project's GAN modules (found model {name!r}).")
    return getattr(gan_modules, name).load_from_checkpoint(path, map_location=map_location)


def write_samples(model: GANModule, num_samples: int, output: str | Path, seed: int = 0, nrow: int = 8) -> Path:
    """Write ``num_samples`` images as a uint8 (N, C, H, W) tensor file and a PNG grid beside it.

    Returns:
        The path of the PNG grid.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    noise = model.noise(num_samples, torch.Generator().manual_seed(seed))
    images = model.sample(num_samples, noise=noise).cpu()  # (N, C, H, W) in [-1, 1]
    as_uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    torch.save(as_uint8, output)
    grid_path = output.with_suffix(".png")
    save_image(as_uint8.float() / 255, grid_path, nrow=nrow)
    return grid_path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="train.py sample", description="Write images from a checkpoint's generator."
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `train.py fit`")
    parser.add_argument("--num_samples", type=int, default=64, help="how many images (default 64)")
    parser.add_argument("--output", default="samples.pt",
                        help="uint8 N x C x H x W tensor file; the PNG grid goes beside it (default samples.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise (default 0)")
    parser.add_argument("--nrow", type=int, default=8, help="images per row of the grid (default 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run the generator on")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num_samples must be at least 1")
    try:
        model = load_generator_checkpoint(args.ckpt_path, map_location=args.device)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    grid = write_samples(model, args.num_samples, args.output, args.seed, args.nrow)
    print(f"wrote {args.num_samples} samples to {args.output} and the grid to {grid}")
