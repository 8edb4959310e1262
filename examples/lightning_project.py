"""Adding npas-lightning pruning to an existing plain Lightning project (no Hydra, no timm).

The model, data and LightningModule below stand for "your project": a small CNN on scikit-learn's
bundled digits (1797 real 8x8 images, no download). The pruning part is the three marked lines.

Run:
    python examples/lightning_project.py            # a few seconds on a laptop CPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from npas_lightning.callbacks import MagnitudePruning
from npas_lightning.checkpoint import load_pruned


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean(dim=(2, 3)))


class LitClassifier(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc1", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    train, val = order[:1500], order[1500:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=256),
    )


def main(epochs: int = 4, out_dir: str | None = None) -> dict:
    L.seed_everything(0)
    train, val = digits_loaders()
    out = Path(out_dir or tempfile.mkdtemp(prefix="npas-example-"))

    # --- pruning: a per-layer plan (glob -> scheme/rate) and one callback ---------------------
    plan = {"*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}  # stem + head excluded by default
    pruning = MagnitudePruning(plan, start_epoch=0, end_epoch=2)  # gradual, cubic schedule
    trainer = L.Trainer(max_epochs=epochs, callbacks=[pruning], default_root_dir=out, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    # ---------------------------------------------------------------------------------------

    module = LitClassifier()
    trainer.fit(module, train, val)
    ckpt = out / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)

    report = pruning.sparsity(module)
    reloaded = load_pruned(ckpt, model=SmallCNN())  # plain keys + plan; weights_only load
    x, _ = next(iter(val))
    same = torch.allclose(reloaded(x), module.net.eval()(x))
    acc = float(trainer.callback_metrics["val/acc1"])
    print(f"pruned layers: {', '.join(pruning.plan)}")
    for name, layer in report["layers"].items():
        print(f"  {name:8s} sparsity {layer['sparsity']:.3f}  rate {layer['rate']:.2f} (target {layer['target_rate']:g})")
    print(f"overall sparsity {report['sparsity']:.3f}  val/acc1 {acc:.3f}  reload identical: {same}  checkpoint: {ckpt}")
    return {"sparsity": report["sparsity"], "val_acc1": acc, "reload_identical": same, "checkpoint": str(ckpt)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    main(args.epochs, args.out_dir)
