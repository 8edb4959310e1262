"""scikit-learn's bundled 8x8 digits as a LightningDataModule: the embedded default data."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.transforms import v2

from npas_lightning.data.base import (
    ClassificationDataModule,
    TensorImageDataset,
    check_channels,
    check_positive_int,
    resize_uint8,
)


class DigitsDataModule(ClassificationDataModule):
    """1797 handwritten digits (10 classes) that ship with scikit-learn; never downloads.

    The 8x8 images are resized to ``image_size`` (default 32) with ``channels`` copies and split
    into train/val with a stratified, seeded split.

    Example:
        >>> dm = DigitsDataModule(image_size=32, batch_size=16)
        >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape)
        (16, 3, 32, 32)
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        channels: int = 3,
        val_fraction: float = 0.2,
        augment: bool = True,
        seed: int = 42,
        num_classes: int | None = None,
        batch_size: int = 64,
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
        self.image_size = check_positive_int("data.image_size", image_size)
        self.in_chans = check_channels(channels)
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction!r} is not valid: expected a number in (0, 1)")
        self.val_fraction, self.augment, self.seed = float(val_fraction), bool(augment), int(seed)
        self.num_classes = 10
        self.check_num_classes(num_classes)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(digits.target).long()
        images = resize_uint8(images, self.image_size)
        train_idx, val_idx = train_test_split(
            range(len(labels)), test_size=self.val_fraction, stratify=labels.numpy(), random_state=self.seed
        )
        pad = max(1, self.image_size // 16)
        augment = v2.RandomCrop(self.image_size, padding=pad) if self.augment else None
        train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
        self.train_set = TensorImageDataset(
            images[train_idx], labels[train_idx], channels=self.in_chans, transform=augment
        )
        self.val_set = TensorImageDataset(images[val_idx], labels[val_idx], channels=self.in_chans)
