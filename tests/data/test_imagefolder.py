from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npas_lightning.data import CIFAR10DataModule, ImageFolderDataModule


def _make_folder(root: Path, classes=("cat", "dog", "fox"), per_class=2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_loads_with_timm_transforms(tmp_path):
    dm = ImageFolderDataModule(root=str(_make_folder(tmp_path)), model_name="resnet18", image_size=32,
                               num_classes=3, batch_size=4, num_workers=0, persistent_workers=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and dm.num_classes == 3 and dm.classes == ["cat", "dog", "fox"]


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere' does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere"))


def test_missing_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split folder .*val does not exist"):
        ImageFolderDataModule(root=str(tmp_path))


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match=r"train has no class folders \(it is empty\)"):
        ImageFolderDataModule(root=str(tmp_path))


def test_class_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"data.num_classes=1000 does not match the 3 class folders"):
        ImageFolderDataModule(root=str(_make_folder(tmp_path)), num_classes=1000)


def test_cifar10_without_download_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.* holds no CIFAR-10 .*set data.download=true"):
        CIFAR10DataModule(root=str(tmp_path))
