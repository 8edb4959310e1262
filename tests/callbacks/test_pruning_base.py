"""PruningCallback machinery: fit/save/resume equality, state_dict, plan checks, DDP broadcast."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from npas_lightning.callbacks import MagnitudePruning, PruningCallback

PLAN = {"conv2": {"scheme": "filter", "rate": 2}, "*": {"scheme": "block_punched", "rate": 3}}
ROOT = Path(__file__).resolve().parents[2]


def _gradual() -> MagnitudePruning:
    return MagnitudePruning(PLAN, start_epoch=0, end_epoch=2, frequency=1)


def test_fit_stop_resume_equals_uninterrupted_run(tiny, tmp_path):
    L.seed_everything(1)
    straight = tiny.TinyModule()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    cb_a = _gradual()
    tiny.trainer(tmp_path / "a", [cb_a], max_epochs=4).fit(straight, tiny.loader())

    L.seed_everything(1)
    first = tiny.TinyModule()
    first.load_state_dict(init)
    cb_b = _gradual()
    trainer_b = tiny.trainer(tmp_path / "b", [cb_b], max_epochs=2)
    trainer_b.fit(first, tiny.loader())
    ckpt = tmp_path / "stop.ckpt"
    trainer_b.save_checkpoint(ckpt)

    L.seed_everything(123)  # a different init: everything must come from the checkpoint
    resumed = tiny.TinyModule()
    cb_c = _gradual()
    tiny.trainer(tmp_path / "c", [cb_c], max_epochs=4).fit(resumed, tiny.loader(), ckpt_path=ckpt)

    assert cb_c.mask_updates == cb_a.mask_updates == 3
    assert cb_c.rate_scale == cb_a.rate_scale == 1.0
    assert list(cb_c.masks) == list(cb_a.masks)
    for name in cb_a.masks:
        assert torch.equal(cb_a.masks[name], cb_c.masks[name]), name
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_state_dict_round_trip(tiny, tmp_path):
    cb = MagnitudePruning(PLAN)
    module = tiny.TinyModule()
    tiny.trainer(tmp_path, [cb], max_epochs=1).fit(module, tiny.loader())
    state = cb.state_dict()
    assert set(state) == {"masks", "rate_scale", "mask_updates", "last_update_epoch", "last_update_step", "plan", "root"}
    assert all(m.dtype == torch.bool for m in state["masks"].values())
    other = MagnitudePruning(PLAN)
    other.load_state_dict(state)
    assert other.mask_updates == 1 and other.last_update_epoch == 0 and other.rate_scale == 1.0
    assert all(torch.equal(other.masks[k], state["masks"][k]) for k in state["masks"])


def test_checkpoint_holds_plain_keys_and_the_plan(tiny, tmp_path):
    module = tiny.TinyModule()
    cb = MagnitudePruning(PLAN)
    trainer = tiny.trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, tiny.loader())
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    ckpt = torch.load(tmp_path / "p.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(tiny.TinyModule().state_dict())  # no weight_orig / weight_mask
    assert ckpt["npas_plan"] == cb.plan.to_dict() and ckpt["npas_root"] == "net"


def test_resume_with_another_plan_is_refused(tiny, tmp_path):
    module = tiny.TinyModule()
    trainer = tiny.trainer(tmp_path, [MagnitudePruning(PLAN)], max_epochs=1)
    trainer.fit(module, tiny.loader())
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    other = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 5}})
    with pytest.raises(ValueError, match=r"state was saved with a different plan .* resume with the same plan"):
        tiny.trainer(tmp_path, [other], max_epochs=2).fit(tiny.TinyModule(), tiny.loader(), ckpt_path=tmp_path / "p.ckpt")


def test_subclass_hooks_validate_plan_and_set_masks(tiny, tmp_path):
    """The contract ADMM/FPGM/group-Lasso build on: validate_plan + set_masks from any hook."""

    class OnlyFilter(PruningCallback):
        def validate_plan(self, plan):
            bad = [n for n, lp in plan.items() if lp.scheme != "filter"]
            if bad:
                raise ValueError(f"OnlyFilter prunes filters only; layers {bad} use another scheme")

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                model = self.pruned_model(pl_module)
                masks = {n: torch.ones_like(model.get_submodule(n).weight, dtype=torch.bool) for n in self.plan}
                masks["conv2"][:4] = False
                self.set_masks(trainer, pl_module, masks, rate_scale=1.0)

    with pytest.raises(ValueError, match=r"OnlyFilter prunes filters only; layers \['conv3'\]"):
        tiny.trainer(tmp_path, [OnlyFilter(PLAN)], max_epochs=1).fit(tiny.TinyModule(), tiny.loader())
    module = tiny.TinyModule()
    tiny.trainer(tmp_path, [OnlyFilter({"conv2": {"scheme": "filter", "rate": 2}})], max_epochs=1).fit(module, tiny.loader())
    assert not module.net.conv2.weight[:4].any() and module.net.conv2.weight[4:].all()
    assert not module.net.bn2.weight[:4].any()


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, lightning as L
    sys.path.insert(0, sys.argv[2])
    from conftest import TinyModule, loader
    from npas_lightning.callbacks import MagnitudePruning

    class Diverge(L.Callback):
        # Simulates ranks whose weights drifted apart (e.g. non-deterministic kernels): rank 1
        # perturbs its weights before masks are computed, so independently computed masks would differ.
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.global_rank == 1:
                with torch.no_grad():
                    g = torch.Generator().manual_seed(7)
                    for p in pl_module.parameters():
                        p.add_(torch.randn(p.shape, generator=g))

    L.seed_everything(0)
    cb = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 3}}, start_epoch=0, end_epoch=1)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Diverge(), cb])
    trainer.fit(TinyModule(), loader(n=16, batch_size=4))
    torch.save({"masks": cb.masks, "zeros": {n: (trainer.lightning_module.net.get_submodule(n).weight == 0) for n in cb.masks}},
               f"{sys.argv[1]}/rank{trainer.global_rank}.pt")
    """
)


@pytest.mark.slow
def test_ddp_ranks_hold_rank0_masks(tmp_path):
    """A real 2-process CPU (gloo) DDP fit: both ranks end with identical masks and zeros."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert list(r0["masks"]) == ["conv2", "conv3"]
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name])
        assert torch.equal(r0["zeros"][name], ~r0["masks"][name]) and torch.equal(r1["zeros"][name], ~r1["masks"][name])
