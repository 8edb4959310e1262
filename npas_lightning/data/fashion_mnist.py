"""Fashion-MNIST read from the four standard IDX ``.gz`` files (Debian's package or a download)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import torch
from torchvision.transforms import v2

from npas_lightning.data.base import (
    ClassificationDataModule,
    TensorImageDataset,
    check_channels,
    check_positive_int,
    resize_uint8,
)

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 2049, 60000),
    "val_images": ("t10k-images-idx3-ubyte.gz", 2051, 10000),
    "val_labels": ("t10k-labels-idx1-ubyte.gz", 2049, 10000),
}


def default_root(data_dir: str | Path | None = None) -> Path:
    """Debian's install location when present, else ``<data_dir>/fashion-mnist``."""
    if DEBIAN_ROOT.is_dir():
        return DEBIAN_ROOT
    return Path(data_dir or "data") / "fashion-mnist"


def _find(root: Path, filename: str) -> Path | None:
    for candidate in (root / filename, root / "FashionMNIST" / "raw" / filename):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int, count: int) -> torch.Tensor:
    """Read one gzipped IDX file, checking its magic number and item count."""
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(8)
            if len(header) < 8:
                raise ValueError("truncated header")
            found_magic, found_count = struct.unpack(">II", header)
            if found_magic != magic:
                raise ValueError(f"magic number {found_magic}, expected {magic}")
            if found_count != count:
                raise ValueError(f"{found_count} items, expected {count}")
            dims = [struct.unpack(">I", f.read(4))[0] for _ in range((magic & 0xFF) - 1)]
            data = f.read()
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise ValueError(f"Fashion-MNIST file {path} is corrupt: {err}") from err
    expected = count * math.prod(dims)
    if len(data) != expected:
        raise ValueError(f"Fashion-MNIST file {path} is corrupt: {len(data)} bytes of data, expected {expected}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(count, *dims)


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST (10 classes, 60k train / 10k val) from IDX files on disk.

    ``root=None`` uses Debian's ``/usr/share/datasets/fashion-mnist`` when present, else
    ``<data_dir>/fashion-mnist``, downloaded with torchvision when ``download=True``.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        data_dir: str | None = None,
        download: bool = False,
        image_size: int = 32,
        channels: int = 1,
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
        self.root = Path(root) if root else default_root(data_dir)
        self.download = bool(download)
        self.image_size = check_positive_int("data.image_size", image_size)
        self.in_chans = check_channels(channels)
        self.augment = bool(augment)
        self.num_classes = 10
        self.check_num_classes(num_classes)
        missing = self.missing_files()
        if missing and not self.download:
            names = ", ".join(str(self.root / FILES[k][0]) for k in missing)
            raise FileNotFoundError(
                f"data.root={str(self.root)!r}: Fashion-MNIST file(s) missing: {names}. Install Debian's "
                "dataset-fashion-mnist package, point data.root at a folder holding the four IDX .gz "
                "files, or set data.download=true"
            )

    def missing_files(self) -> list[str]:
        return [key for key, (name, _, _) in FILES.items() if _find(self.root, name) is None]

    def prepare_data(self) -> None:
        if self.missing_files() and self.download:
            from torchvision.datasets import FashionMNIST

            self.root.mkdir(parents=True, exist_ok=True)
            FashionMNIST(str(self.root), train=True, download=True)
            FashionMNIST(str(self.root), train=False, download=True)

    def _load(self, key: str) -> torch.Tensor:
        name, magic, count = FILES[key]
        path = _find(self.root, name)
        if path is None:
            raise FileNotFoundError(f"data.root={str(self.root)!r}: Fashion-MNIST file {name} is missing")
        return read_idx(path, magic, count)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_x = resize_uint8(self._load("train_images").unsqueeze(1), self.image_size)
        val_x = resize_uint8(self._load("val_images").unsqueeze(1), self.image_size)
        train_y, val_y = self._load("train_labels"), self._load("val_labels")
        augment = (
            v2.Compose([v2.RandomCrop(self.image_size, padding=max(1, self.image_size // 8)), v2.RandomHorizontalFlip()])
            if self.augment
            else None
        )
        self.train_set = TensorImageDataset(
            train_x, train_y, channels=self.in_chans, mean=0.286, std=0.353, transform=augment
        )
        self.val_set = TensorImageDataset(val_x, val_y, channels=self.in_chans, mean=0.286, std=0.353)
