"""Shared plumbing of the classification data modules: loaders, tensor datasets, checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor ``[N, C, H, W]`` plus int64 labels.

    Items are normalised to float on the fly and optionally augmented by ``transform``
    (any callable on a ``[C, H, W]`` float tensor, e.g. a torchvision v2 transform).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        channels: int,
        mean: float = 0.5,
        std: float = 0.5,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        self.images, self.labels = images, labels.long()
        self.channels, self.mean, self.std, self.transform = channels, mean, std, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().div_(255.0)
        if x.shape[0] != self.channels:
            x = x.expand(self.channels, -1, -1)
        if self.transform is not None:
            x = self.transform(x)
        return (x - self.mean) / self.std, self.labels[index]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize a uint8 ``[N, C, H, W]`` tensor to ``size x size`` (kept uint8)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} is not valid: expected a positive integer")
    return value


def check_channels(value: Any) -> int:
    if value not in (1, 3):
        raise ValueError(f"data.channels={value!r} is not valid: expected 1 or 3")
    return value


class ClassificationDataModule(L.LightningDataModule):
    """Base for the image-classification data modules.

    Subclasses set ``num_classes`` and ``in_chans`` in ``__init__`` and ``train_set``/``val_set``
    in ``setup``; this class builds the loaders from the common loader settings.
    """

    num_classes: int
    in_chans: int

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_positive_int("data.batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers!r} is not valid: expected an integer >= 0")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, *, shuffle: bool) -> DataLoader:
        if dataset is None:
            self.setup("fit")
            dataset = self.train_set if shuffle else self.val_set
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def check_num_classes(self, expected: int | None) -> None:
        """Raise when a configured class count disagrees with the data's own."""
        if expected is not None and int(expected) != self.num_classes:
            raise ValueError(
                f"data.num_classes={expected} does not match the {self.num_classes} classes of "
                f"{type(self).__name__}; set data.num_classes={self.num_classes}"
            )
