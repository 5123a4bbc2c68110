"""LightningDataModules that yield images in [-1, 1], NCHW."""

from datamodules.mnist import MNISTDataModule

__all__ = ["MNISTDataModule"]
