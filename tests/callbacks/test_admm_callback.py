"""ADMMPruning: the penalty reaches param.grad exactly, Z/U/rho evolve, the plan is reached, resume is exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from npas_lightning.algorithms.admm import rho_at
from npas_lightning.callbacks import ADMMPruning

PLAN = {"conv2": {"scheme": "filter", "rate": 2}, "*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}


def _block_punched_ok(w: torch.Tensor) -> bool:
    per_position = (w != 0).reshape(2, 8, 4, 4, 9).permute(0, 2, 4, 1, 3).reshape(2, 4, 9, 32)
    return bool(torch.all(per_position.all(-1) | ~per_position.any(-1)))


def test_penalty_gradient_reaches_the_optimizer_exactly(tiny, tmp_path):
    """grad seen by the optimizer = grad of the user's loss + rho * (W - Z + U), at every ADMM step."""
    checks = []

    class Before(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grads = {n: pl_module.net.get_submodule(n).weight.grad.clone() for n in ("conv2", "conv3")}

    class After(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if cb.phase != "penalty":
                return
            for n in ("conv2", "conv3"):
                w = pl_module.net.get_submodule(n).weight.detach()
                expected = before.grads[n] + cb.rho_current * (w - cb.admm.z[n] + cb.admm.u[n])
                grad = pl_module.net.get_submodule(n).weight.grad
                checks.append(torch.allclose(grad, expected, atol=1e-6))

    before, cb = Before(), ADMMPruning(PLAN, admm_epochs=2, rho=0.05, admm_interval=3)
    tiny.trainer(tmp_path, [before, cb, After()], max_epochs=3).fit(tiny.TinyModule(), tiny.loader())
    assert len(checks) == 2 * 8 and all(checks)  # 2 layers x 8 ADMM steps (4 batches x 2 epochs)


def test_z_u_and_rho_follow_the_updates(tiny, tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cb.phase == "penalty":
                seen.append((cb.penalty_steps, cb.zu_updates, cb.rho_current))
                w = pl_module.net.conv3.weight.detach()
                if cb.last_zu_step == cb.penalty_steps and cb.penalty_steps > 0:
                    # right after an update: Z is in the sparse set and U = U_prev + W - Z
                    assert torch.equal(cb.admm.z["conv3"] != 0, cb.admm.masks["conv3"] & (cb.admm.z["conv3"] != 0))
                    assert torch.allclose(cb.admm.u["conv3"], self.u_prev + w - cb.admm.z["conv3"], atol=1e-6)
                self.u_prev = cb.admm.u["conv3"].clone()

        def on_train_start(self, trainer, pl_module):
            self.u_prev = cb.admm.u["conv3"].clone()
            assert not self.u_prev.any()  # U starts at 0, Z = Proj(W)

    cb = ADMMPruning(PLAN, admm_epochs=2, rho=0.01, rho_schedule="geometric", admm_interval=2, rho_factor=2.0, rho_max=0.05)
    tiny.trainer(tmp_path, [cb, Probe()], max_epochs=2).fit(tiny.TinyModule(), tiny.loader())
    steps = [s for s, _, _ in seen]
    assert steps == list(range(1, 9))
    updates = [u for _, u, _ in seen]
    assert updates == [0, 1, 1, 2, 2, 3, 3, 4]
    assert [r for _, _, r in seen] == pytest.approx([rho_at("geometric", 0.01, k, factor=2.0, rho_max=0.05) for k in updates])
    assert cb.phase == "retrain"  # hard-pruned at the end of the last ADMM epoch


def test_reaches_the_planned_sparsity_with_the_scheme_structure_and_logs_residuals(tiny, tmp_path):
    L.seed_everything(0)
    module = tiny.TinyModule()
    cb = ADMMPruning(PLAN, admm_epochs=2, rho=0.05)
    trainer = tiny.trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(module, tiny.loader())
    w2, w3 = module.net.conv2.weight, module.net.conv3.weight
    assert torch.equal(w2 != 0, cb.masks["conv2"]) and torch.equal(w3 != 0, cb.masks["conv3"])
    assert int(w2.flatten(1).any(1).sum()) == 8 and torch.equal(w2.flatten(1).any(1), module.net.bn2.weight != 0)
    assert _block_punched_ok(w3) and w3.numel() / int((w3 != 0).sum()) == pytest.approx(3.0, rel=0.05)
    m = trainer.callback_metrics
    assert float(m["prune/sparsity/conv2"]) == 0.5 and float(m["prune/phase"]) == 1.0
    assert cb.zu_updates == 2 and not cb.admm.z  # Z/U freed after the hard prune


def test_residual_is_logged_per_layer_during_admm(tiny, tmp_path):
    cb = ADMMPruning(PLAN, admm_epochs=3, rho=0.1)
    module = tiny.TinyModule()
    with pytest.warns(UserWarning, match=r"training ends inside the penalty phase"):
        trainer = tiny.trainer(tmp_path, [cb], max_epochs=1)
        trainer.fit(module, tiny.loader())
    m = trainer.callback_metrics
    res = cb.residuals(module)
    for n in ("conv2", "conv3"):
        w = module.net.get_submodule(n).weight.detach()
        assert float(m[f"prune/admm_residual/{n}"]) == pytest.approx(float((w - cb.admm.z[n]).norm() / w.norm()), rel=1e-5)
        assert res[n] == pytest.approx(float(m[f"prune/admm_residual/{n}"]), rel=1e-5)
    assert float(m["prune/admm_rho"]) == pytest.approx(0.13)
    assert "prune/admm_penalty_epoch" in m and cb.phase == "penalty" and not cb.masks


def test_fit_stop_resume_equals_uninterrupted_run(tiny, tmp_path):
    """Stop inside the ADMM phase: Z, U, rho, counters and the optimizer state come back exactly."""
    stop = 1
    def make():
        return ADMMPruning(PLAN, admm_epochs=2, rho=0.05, admm_interval=3)

    L.seed_everything(1)
    straight = tiny.TinyModule()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    cb_a = make()
    tiny.trainer(tmp_path / "a", [cb_a], max_epochs=3).fit(straight, tiny.loader())

    first = tiny.TinyModule()
    first.load_state_dict(init)
    cb_b = make()
    trainer_b = tiny.trainer(tmp_path / "b", [cb_b], max_epochs=stop)
    trainer_b.fit(first, tiny.loader())
    ckpt = tmp_path / "stop.ckpt"
    trainer_b.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    saved = next(v for k, v in state.items() if "ADMMPruning" in k)
    assert {"phase", "rho", "admm", "zu_updates", "penalty_steps", "masks"} <= set(saved)
    assert saved["phase"] == "penalty" and saved["admm"]["z"] and saved["admm"]["u"]

    L.seed_everything(123)
    resumed = tiny.TinyModule()
    cb_c = make()
    tiny.trainer(tmp_path / "c", [cb_c], max_epochs=3).fit(resumed, tiny.loader(), ckpt_path=ckpt)
    assert cb_c.zu_updates == cb_a.zu_updates and cb_c.rho_current == cb_a.rho_current
    assert list(cb_c.masks) == list(cb_a.masks)
    for name in cb_a.masks:
        assert torch.equal(cb_a.masks[name], cb_c.masks[name]), name
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"admm_epochs": 0}, ValueError, r"admm_epochs=0 must be an integer >= 1"),
        ({"rho": 0}, ValueError, r"rho=0 must be a number > 0"),
        ({"rho_schedule": "exp"}, ValueError, r"rho_schedule='exp' is not a registered rho schedule"),
        ({"admm_interval": 0}, ValueError, r"admm_interval=0 must be an integer >= 1 .* or None"),
        ({"rho_factor": 0.5}, ValueError, r"rho_factor=0.5 must be >= 1"),
        ({"rho": 0.1, "rho_max": 0.01}, ValueError, r"rho_max=0.01 must be >= rho=0.1"),
        ({"plan": "conv2"}, TypeError, r"plan='conv2' must be an NPASScheme or its dict form"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = {"plan": PLAN, "admm_epochs": 1, **kwargs}
    with pytest.raises(error, match=match):
        ADMMPruning(**kwargs)


DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, sys.argv[2])
from conftest import TinyModule, loader
from npas_lightning.callbacks import ADMMPruning, GroupLassoPruning

class Diverge(L.Callback):
    # rank 1's weights drift before every projection, so masks computed per rank would differ
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            with torch.no_grad():
                g = torch.Generator().manual_seed(7)
                for p in pl_module.parameters():
                    p.add_(torch.randn(p.shape, generator=g))

plan = {"*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}
out = {}
for name, cb in (("admm", ADMMPruning(plan, admm_epochs=1, rho=0.05, admm_interval=1)),
                 ("group_lasso", GroupLassoPruning(plan, penalty_epochs=1, lam=0.01))):
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Diverge(), cb])
    trainer.fit(TinyModule(), loader(n=16, batch_size=4))
    out[name] = cb.masks
torch.save(out, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")
"""


@pytest.mark.slow
def test_ddp_ranks_hold_rank0_masks(tmp_path):
    """A real 2-process CPU (gloo) DDP fit: ADMM's projections and group-Lasso's hard prune give both ranks the same masks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for algo in ("admm", "group_lasso"):
        assert r0[algo] and list(r0[algo]) == list(r1[algo])
        for name in r0[algo]:
            assert torch.equal(r0[algo][name], r1[algo][name]), (algo, name)
