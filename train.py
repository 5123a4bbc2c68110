"""Train, validate and sample GANs from the command line (the CLI lives in :mod:`gan_modules.cli`,
so that an installed package has it too, as the ``lightning-gans`` command).

    python train.py fit --config configs/dcgan_mnist.yaml
    python train.py fit --help
    python train.py sample --ckpt_path last
"""

from gan_modules.cli import GANCLI, build_cli, main, sample

__all__ = ["GANCLI", "build_cli", "main", "sample"]

if __name__ == "__main__":
    main()
