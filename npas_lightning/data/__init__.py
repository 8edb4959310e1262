"""LightningDataModules: digits (embedded default), fashion_mnist, cifar10, imagefolder."""

from npas_lightning.data.base import ClassificationDataModule, TensorImageDataset
from npas_lightning.data.cifar10 import CIFAR10DataModule
from npas_lightning.data.digits import DigitsDataModule
from npas_lightning.data.fashion_mnist import FashionMNISTDataModule
from npas_lightning.data.imagefolder import ImageFolderDataModule

__all__ = [
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "TensorImageDataset",
]
