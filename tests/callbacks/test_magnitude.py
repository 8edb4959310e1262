"""MagnitudePruning: one-shot and gradual pruning, masks kept through training, logging, refusals."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from npas_lightning.algorithms.schedules import get_schedule, rate_at_fraction
from npas_lightning.callbacks import MagnitudePruning
from npas_lightning.plan import PlanError

PLAN = {"conv2": {"scheme": "filter", "rate": 2}, "*": {"scheme": "block_punched", "rate": 3, "block": [8, 4]}}


def test_one_shot_reaches_the_planned_rates_with_the_scheme_structure(tiny, tmp_path):
    L.seed_everything(0)
    module = tiny.TinyModule()
    cb = MagnitudePruning(PLAN)
    tiny.trainer(tmp_path, [cb], max_epochs=2).fit(module, tiny.loader())
    assert list(cb.plan) == ["conv2", "conv3"]  # stem and head excluded by default
    assert cb.root_name == "net" and cb.mask_updates == 1 and cb.rate_scale == 1.0
    w2, w3 = module.net.conv2.weight, module.net.conv3.weight
    # real zeros equal the masks after training (masks survived every optimizer step)
    assert torch.equal(w2 != 0, cb.masks["conv2"]) and torch.equal(w3 != 0, cb.masks["conv3"])
    # filter: 8 of 16 whole filters kept, and their BatchNorm channels zeroed too
    kept = w2.flatten(1).any(1)
    assert int(kept.sum()) == 8
    assert torch.equal(kept, module.net.bn2.weight != 0) and not module.net.bn2.bias[~kept].any()
    # block_punched (8, 4): in each block a kernel position is all kept or all removed
    blocks = (w3 != 0).reshape(2, 8, 4, 4, 9)  # F/8, 8, C/4, 4, kh*kw
    per_position = blocks.permute(0, 2, 4, 1, 3).reshape(2, 4, 9, 32)
    assert torch.all(per_position.all(-1) | ~per_position.any(-1))
    assert w3.numel() / int((w3 != 0).sum()) == pytest.approx(3.0, rel=0.1)


def test_logs_sparsity_overall_per_layer_and_rate_from_real_zeros(tiny, tmp_path):
    module = tiny.TinyModule()
    cb = MagnitudePruning(PLAN)
    trainer = tiny.trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, tiny.loader())
    m = trainer.callback_metrics
    w2, w3 = module.net.conv2.weight, module.net.conv3.weight
    zeros = int((w2 == 0).sum() + (w3 == 0).sum())
    assert float(m["prune/sparsity"]) == pytest.approx(zeros / (w2.numel() + w3.numel()))
    assert float(m["prune/sparsity/conv2"]) == pytest.approx(0.5)
    assert float(m["prune/sparsity/conv3"]) == pytest.approx(float((w3 == 0).float().mean()))
    assert float(m["prune/rate"]) == pytest.approx((w2.numel() + w3.numel()) / (w2.numel() + w3.numel() - zeros))
    assert float(m["prune/rate_scale"]) == 1.0


def test_gradual_follows_the_cubic_schedule(tiny, tmp_path):
    seen = []

    class Recorder(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((cb.rate_scale, cb.sparsity(pl_module)["layers"]["conv3"]["rate"]))

    cb = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 4}}, start_epoch=1, end_epoch=3, frequency=1)
    tiny.trainer(tmp_path, [cb, Recorder()], max_epochs=5).fit(tiny.TinyModule(), tiny.loader())
    fractions = [s for s, _ in seen]
    cubic = get_schedule("cubic")
    assert fractions == pytest.approx([0.0, cubic(1 / 3), cubic(2 / 3), 1.0, 1.0])
    rates = [r for _, r in seen]
    assert rates[0] == 1.0
    for (fraction, rate) in seen[1:]:
        assert rate == pytest.approx(rate_at_fraction(4.0, fraction), rel=0.02)
    assert cb.mask_updates == 3


def test_momentum_and_adam_state_cannot_revive_pruned_weights(tiny, tmp_path):
    """Prune after a dense epoch filled the optimizer state; pruned weights stay exactly zero."""
    grads_at_pruned = []

    class GradProbe(L.Callback):  # runs after MagnitudePruning's on_before_optimizer_step
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if cb.masks:
                grads_at_pruned.append(float(pl_module.net.conv3.weight.grad[~cb.masks["conv3"]].abs().sum()))

    for opt in ("sgd", "adam"):
        grads_at_pruned.clear()
        module = tiny.TinyModule(optimizer=opt, lr=0.05)
        cb = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 4}}, start_epoch=1, end_epoch=1)
        trainer = tiny.trainer(tmp_path, [cb, GradProbe()], max_epochs=3)
        trainer.fit(module, tiny.loader())
        w = module.net.conv3.weight
        assert not w[~cb.masks["conv3"]].any()
        assert grads_at_pruned and max(grads_at_pruned) == 0.0
        state = trainer.optimizers[0].state[w]
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == w.shape:
                assert not value[~cb.masks["conv3"]].any(), f"{opt} state {key!r} not masked"


def test_works_with_layers_on_the_lightning_module_itself(tiny, tmp_path):
    module = tiny.FlatModule()
    cb = MagnitudePruning({"features.*": {"scheme": "pattern", "rate": 3}})
    tiny.trainer(tmp_path, [cb], max_epochs=1).fit(module, tiny.loader())
    assert cb.root_name == "" and list(cb.plan) == ["features.2"]  # features.0 is the first conv
    w = module.features[2].weight
    assert torch.equal(w != 0, cb.masks["features.2"])
    assert set((w != 0).flatten(2).sum(-1).unique().tolist()) <= {0, 4}


def test_plan_matching_no_layer_is_refused_before_training(tiny, tmp_path):
    module = tiny.TinyModule()
    before = module.net.conv2.weight.detach().clone()
    cb = MagnitudePruning({"blocks.*.conv_pw": {"scheme": "filter", "rate": 2}})
    with pytest.raises(PlanError, match=r"plan pattern 'blocks\.\*\.conv_pw' matches no Conv2d/Linear layer"):
        tiny.trainer(tmp_path, [cb], max_epochs=1).fit(module, tiny.loader())
    assert torch.equal(module.net.conv2.weight, before)


def test_explicit_root_that_does_not_exist_is_refused(tiny, tmp_path):
    cb = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 2}}, root="backbone")
    with pytest.raises(ValueError, match=r"root='backbone' is not a submodule of TinyModule"):
        tiny.trainer(tmp_path, [cb], max_epochs=1).fit(tiny.TinyModule(), tiny.loader())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"plan": ["conv2"]}, TypeError, r"plan=\['conv2'\] must be an NPASScheme or its dict form"),
        ({"start_epoch": -1}, ValueError, r"start_epoch=-1 must be >= 0"),
        ({"start_epoch": 3, "end_epoch": 1}, ValueError, r"end_epoch=1 must be >= start_epoch=3"),
        ({"end_epoch": 2, "frequency": 0}, ValueError, r"frequency=0 must be an integer >= 1"),
        ({"schedule": "exp"}, ValueError, r"schedule='exp' is not a registered schedule; expected one of"),
        ({"root": 3}, TypeError, r"root=3 must be a str"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = {"plan": PLAN, **kwargs}
    with pytest.raises(error, match=match):
        MagnitudePruning(**kwargs)


def test_warns_when_training_ends_before_end_epoch(tiny, tmp_path):
    cb = MagnitudePruning({"*": {"scheme": "unstructured", "rate": 4}}, start_epoch=0, end_epoch=5)
    with pytest.warns(UserWarning, match=r"end_epoch=5 is past the last epoch \(0, max_epochs=1\)"):
        tiny.trainer(tmp_path, [cb], max_epochs=1).fit(tiny.TinyModule(), tiny.loader(n=8))
