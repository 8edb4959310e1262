"""CIFAR-10 through torchvision (downloads only when ``download=true``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from npas_lightning.data.base import ClassificationDataModule, check_positive_int

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 (10 classes, 50k train / 10k val) stored under ``root`` in torchvision's layout."""

    def __init__(
        self,
        *,
        root: str = "data/cifar10",
        download: bool = False,
        image_size: int = 32,
        augment: bool = True,
        num_classes: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self.root, self.download = Path(root), bool(download)
        self.image_size = check_positive_int("data.image_size", image_size)
        self.augment = bool(augment)
        self.num_classes, self.in_chans = 10, 3
        self.check_num_classes(num_classes)
        if not self.download and not (self.root / "cifar-10-batches-py").is_dir():
            raise FileNotFoundError(
                f"data.root={str(self.root)!r} holds no CIFAR-10 (expected {self.root / 'cifar-10-batches-py'}); "
                "set data.download=true or point data.root at an existing copy"
            )

    def prepare_data(self) -> None:
        if self.download:
            datasets.CIFAR10(str(self.root), train=True, download=True)
            datasets.CIFAR10(str(self.root), train=False, download=True)

    def _transform(self, train: bool) -> v2.Compose:
        steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if self.image_size != 32:
            steps.append(v2.Resize(self.image_size, antialias=True))
        if train and self.augment:
            steps += [v2.RandomCrop(self.image_size, padding=self.image_size // 8), v2.RandomHorizontalFlip()]
        steps.append(v2.Normalize(CIFAR_MEAN, CIFAR_STD))
        return v2.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = datasets.CIFAR10(str(self.root), train=True, transform=self._transform(True))
        self.val_set = datasets.CIFAR10(str(self.root), train=False, transform=self._transform(False))
