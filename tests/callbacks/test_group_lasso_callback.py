"""GroupLassoPruning: penalty gradient on the scheme's groups, the plan reached at the end, exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from npas_lightning.algorithms.group_lasso import GroupingError
from npas_lightning.callbacks import GroupLassoPruning

PLAN = {"conv2": {"scheme": "filter", "rate": 2}, "*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}


def test_penalty_gradient_is_added_on_the_schemes_groups(tiny, tmp_path):
    checks = []

    class Before(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grads = {n: pl_module.net.get_submodule(n).weight.grad.clone() for n in ("conv2", "conv3")}

    class After(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if cb.phase != "penalty":
                return
            w2 = pl_module.net.conv2.weight
            filt = w2.detach().flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)  # filter groups
            checks.append(torch.allclose(w2.grad, before.grads["conv2"] + cb.lam * w2.detach() / filt, atol=1e-6))
            w3 = pl_module.net.conv3.weight  # block_punched (8, 4): a kernel position inside a block
            norms = w3.detach().reshape(2, 8, 4, 4, 3, 3).norm(dim=(1, 3), keepdim=True)
            expected = before.grads["conv3"] + cb.lam * (w3.detach().reshape(2, 8, 4, 4, 3, 3) / norms).reshape(w3.shape)
            checks.append(torch.allclose(w3.grad, expected, atol=1e-6))

    before, cb = Before(), GroupLassoPruning(PLAN, penalty_epochs=1, lam=0.01)
    trainer = tiny.trainer(tmp_path, [before, cb, After()], max_epochs=2)
    trainer.fit(tiny.TinyModule(), tiny.loader())
    assert len(checks) == 2 * 4 and all(checks)
    assert "prune/group_lasso_penalty_epoch" in trainer.callback_metrics


def test_reaches_the_planned_sparsity_and_the_penalty_shrinks_the_pruned_groups(tiny, tmp_path):
    L.seed_everything(0)
    residual = []

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            weights = {n: pl_module.net.get_submodule(n).weight for n in ("conv2", "conv3")}
            residual.append(sum(v ** 2 * float(weights[n].square().sum()) for n, v in cb.residuals(pl_module).items())
                            / sum(float(w.square().sum()) for w in weights.values()))
            residual[-1] **= 0.5

        def on_train_epoch_end(self, trainer, pl_module):
            if cb.phase == "penalty":
                residual.append(float(trainer.callback_metrics["prune/group_lasso_residual"]))

    module = tiny.TinyModule()
    cb = GroupLassoPruning(PLAN, penalty_epochs=2, lam=0.05)
    trainer = tiny.trainer(tmp_path, [cb, Probe()], max_epochs=3)
    trainer.fit(module, tiny.loader())
    w2, w3 = module.net.conv2.weight, module.net.conv3.weight
    assert torch.equal(w2 != 0, cb.masks["conv2"]) and torch.equal(w3 != 0, cb.masks["conv3"])
    assert int(w2.flatten(1).any(1).sum()) == 8
    blocks = (w3 != 0).reshape(2, 8, 4, 4, 9).permute(0, 2, 4, 1, 3).reshape(2, 4, 9, 32)
    assert torch.all(blocks.all(-1) | ~blocks.any(-1))
    assert w3.numel() / int((w3 != 0).sum()) == pytest.approx(3.0, rel=0.05)
    m = trainer.callback_metrics
    assert float(m["prune/sparsity/conv2"]) == 0.5 and cb.phase == "retrain"
    assert "prune/group_lasso_residual/conv3" in m
    assert len(residual) == 2 and residual[1] < residual[0]  # the groups the scheme prunes shrink


def test_fit_stop_resume_equals_uninterrupted_run(tiny, tmp_path):
    def make():
        return GroupLassoPruning(PLAN, penalty_epochs=2, lam=0.02)

    L.seed_everything(1)
    straight = tiny.TinyModule()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    cb_a = make()
    tiny.trainer(tmp_path / "a", [cb_a], max_epochs=3).fit(straight, tiny.loader())
    first = tiny.TinyModule()
    first.load_state_dict(init)
    trainer_b = tiny.trainer(tmp_path / "b", [make()], max_epochs=1)
    trainer_b.fit(first, tiny.loader())
    trainer_b.save_checkpoint(tmp_path / "stop.ckpt")
    L.seed_everything(123)
    resumed = tiny.TinyModule()
    cb_c = make()
    tiny.trainer(tmp_path / "c", [cb_c], max_epochs=3).fit(resumed, tiny.loader(), ckpt_path=tmp_path / "stop.ckpt")
    assert cb_c.phase == cb_a.phase == "retrain" and cb_c.penalty_steps == cb_a.penalty_steps == 8
    for name in cb_a.masks:
        assert torch.equal(cb_a.masks[name], cb_c.masks[name]), name
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_unstructured_refused_on_request_before_training(tiny, tmp_path):
    module = tiny.TinyModule()
    before = module.net.conv3.weight.detach().clone()
    cb = GroupLassoPruning({"*": {"scheme": "unstructured", "rate": 2}}, penalty_epochs=1, unstructured="refuse")
    with pytest.raises(GroupingError, match=r"layer 'conv2' uses scheme 'unstructured', which has no group structure"):
        tiny.trainer(tmp_path, [cb], max_epochs=2).fit(module, tiny.loader())
    assert torch.equal(module.net.conv3.weight, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"penalty_epochs": 0}, r"penalty_epochs=0 must be an integer >= 1"),
        ({"lam": -1.0}, r"lam=-1.0 must be a number > 0"),
        ({"unstructured": "drop"}, r"unstructured='drop': accepted values are \['l1', 'refuse'\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupLassoPruning(**{"plan": PLAN, "penalty_epochs": 1, **kwargs})
