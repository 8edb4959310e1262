import pytest
import torch

from npas_lightning.data import DigitsDataModule


def test_shapes_split_and_determinism():
    dm = DigitsDataModule(image_size=24, channels=3, batch_size=16, seed=3)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32
    assert len(dm.train_set) + len(dm.val_set) == 1797
    # stratified: every class in both splits, in roughly the same proportion
    val_counts = torch.bincount(dm.val_set.labels, minlength=10)
    assert (val_counts >= 30).all()
    again = DigitsDataModule(image_size=24, seed=3)
    again.setup("fit")
    assert torch.equal(dm.val_set.labels, again.val_set.labels)
    assert torch.equal(dm.val_set.images, again.val_set.images)


def test_single_channel_and_attributes():
    dm = DigitsDataModule(channels=1)
    dm.setup("fit")
    x, _ = dm.train_set[0]
    assert x.shape == (1, 32, 32)
    assert dm.num_classes == 10 and dm.in_chans == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2}, r"data.channels=2 is not valid: expected 1 or 3"),
        ({"val_fraction": 1.5}, r"data.val_fraction=1.5 is not valid"),
        ({"image_size": 0}, r"data.image_size=0 is not valid: expected a positive integer"),
        ({"batch_size": -1}, r"data.batch_size=-1 is not valid"),
        ({"num_workers": -2}, r"data.num_workers=-2 is not valid"),
        ({"num_classes": 5}, r"data.num_classes=5 does not match the 10 classes"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
