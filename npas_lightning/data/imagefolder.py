"""ImageNet-style folders (``root/train/<class>/*``, ``root/val/<class>/*``) with timm transforms."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets

from npas_lightning.data.base import ClassificationDataModule

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


class ImageFolderDataModule(ClassificationDataModule):
    """Any dataset in ImageNet's folder layout; transforms resolved by timm for ``model_name``.

    The folder structure is checked when the module is built, before any training: a missing
    root or split, an empty folder, or a class count that differs from ``num_classes`` (the model's)
    is an error naming the path.
    """

    def __init__(
        self,
        *,
        root: str,
        model_name: str = "efficientnet_b0",
        image_size: int | None = None,
        num_classes: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        if not root:
            raise ValueError("data.root is not set: point it at a folder holding train/ and val/ (ImageNet layout)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} does not exist")
        self.train_dir, self.val_dir = self.root / train_split, self.root / val_split
        for split_dir in (self.train_dir, self.val_dir):
            if not split_dir.is_dir():
                raise FileNotFoundError(f"data.root={str(self.root)!r}: split folder {split_dir} does not exist")
        classes: list[str] = []
        for split_dir in (self.train_dir, self.val_dir):
            found = _class_dirs(split_dir)
            if not found:
                raise ValueError(f"data.root={str(self.root)!r}: {split_dir} has no class folders (it is empty)")
            if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in split_dir.rglob("*") if f.is_file()):
                raise ValueError(f"data.root={str(self.root)!r}: {split_dir} holds no image files")
            classes = classes or found
            if found != classes:
                raise ValueError(
                    f"data.root={str(self.root)!r}: {self.train_dir} and {self.val_dir} hold different class folders"
                )
        self.classes = classes
        self.num_classes, self.in_chans = len(classes), 3
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"data.num_classes={num_classes} does not match the {self.num_classes} class folders in "
                f"{self.train_dir}; set data.num_classes={self.num_classes}"
            )
        self.model_name, self.image_size = model_name, image_size

    def transforms(self, train: bool):
        """timm's transforms for the model (``resolve_data_config`` + ``create_transform``)."""
        import timm
        from timm.data import create_transform, resolve_data_config

        pretrained_cfg = timm.models.get_pretrained_cfg(self.model_name)
        config = resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
        if self.image_size:
            config["input_size"] = (3, self.image_size, self.image_size)
        return create_transform(**config, is_training=train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = datasets.ImageFolder(str(self.train_dir), transform=self.transforms(True))
        self.val_set = datasets.ImageFolder(str(self.val_dir), transform=self.transforms(False))
