import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch

from npas_lightning.data import FashionMNISTDataModule
from npas_lightning.data.fashion_mnist import DEBIAN_ROOT, FILES, read_idx

needs_debian_files = pytest.mark.skipif(
    not (DEBIAN_ROOT / FILES["train_images"][0]).is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)


def _write_idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def test_read_idx_roundtrip(tmp_path):
    data = torch.arange(3 * 4 * 5, dtype=torch.uint8)
    _write_idx(tmp_path / "x.gz", 2051, [3, 4, 5], data.numpy().tobytes())
    assert torch.equal(read_idx(tmp_path / "x.gz", 2051, 3), data.reshape(3, 4, 5))


def test_read_idx_names_a_corrupt_file(tmp_path):
    _write_idx(tmp_path / "labels.gz", 1234, [3], b"\x00\x01\x02")
    with pytest.raises(ValueError, match=r"labels.gz is corrupt: magic number 1234, expected 2049"):
        read_idx(tmp_path / "labels.gz", 2049, 3)
    _write_idx(tmp_path / "short.gz", 2049, [3], b"\x00")
    with pytest.raises(ValueError, match=r"short.gz is corrupt: 1 bytes of data, expected 3"):
        read_idx(tmp_path / "short.gz", 2049, 3)


def test_missing_files_are_named_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*missing: .*train-images-idx3-ubyte.gz"):
        FashionMNISTDataModule(root=str(tmp_path))


@needs_debian_files
def test_reads_the_real_files(tmp_path):
    dm = FashionMNISTDataModule(image_size=28, channels=3, batch_size=32, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 3, 28, 28) and int(y.max()) < 10


@needs_debian_files
def test_corrupt_real_copy_is_named(tmp_path):
    for name, _, _ in FILES.values():
        shutil.copy(DEBIAN_ROOT / name, tmp_path / name)
    _write_idx(tmp_path / FILES["val_labels"][0], 2049, [10], bytes(10))
    dm = FashionMNISTDataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is corrupt: 10 items, expected 10000"):
        dm.setup("fit")
