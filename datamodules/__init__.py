"""LightningDataModules that yield images in [-1, 1], NCHW."""

from datamodules.celeba import CelebADataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.mnist import MNISTDataModule

__all__ = ["CelebADataModule", "ImageFolderDataModule", "MNISTDataModule"]
