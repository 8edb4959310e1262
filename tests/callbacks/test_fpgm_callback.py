"""GeometricMedianPruning: filter plans only, the plan reached (one-shot and gradual), exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from npas_lightning.algorithms.fpgm import FPGMError, fpgm_mask
from npas_lightning.algorithms.schedules import get_schedule, rate_at_fraction
from npas_lightning.callbacks import GeometricMedianPruning
from npas_lightning.plan import LayerPlan, NPASScheme

PLAN = {"conv2": {"scheme": "filter", "rate": 2}, "conv3": {"scheme": "filter", "rate": 4}}


def test_one_shot_removes_the_median_filters_and_reaches_the_plan(tiny, tmp_path):
    L.seed_everything(0)
    module = tiny.TinyModule()
    start = {n: module.net.get_submodule(n).weight.detach().clone() for n in PLAN}

    class AtPrune(L.Callback):  # masks computed from the weights at the start of epoch 0
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                for n, lp in PLAN.items():
                    assert torch.equal(cb.masks[n], fpgm_mask(start[n], lp["rate"]))

    cb = GeometricMedianPruning(PLAN)
    trainer = tiny.trainer(tmp_path, [cb, AtPrune()], max_epochs=2)
    trainer.fit(module, tiny.loader())
    w2, w3 = module.net.conv2.weight, module.net.conv3.weight
    assert int(w2.flatten(1).any(1).sum()) == 8 and int(w3.flatten(1).any(1).sum()) == 4
    assert torch.equal(w2.flatten(1).any(1), module.net.bn2.weight != 0)  # coupled BatchNorm channels
    assert not module.net.conv3.bias[~w3.flatten(1).any(1)].any()
    assert float(trainer.callback_metrics["prune/sparsity/conv3"]) == 0.75


def test_gradual_follows_the_schedule(tiny, tmp_path):
    seen = []

    class Recorder(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append((cb.rate_scale, cb.sparsity(pl_module)["layers"]["conv3"]["rate"]))

    cb = GeometricMedianPruning({"conv3": {"scheme": "filter", "rate": 4}, "*": None}, start_epoch=0, end_epoch=2, schedule="linear")
    tiny.trainer(tmp_path, [cb, Recorder()], max_epochs=3).fit(tiny.TinyModule(), tiny.loader())
    assert [s for s, _ in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [r for _, r in seen] == pytest.approx([16 / round(16 / rate_at_fraction(4, f)) for f in (1 / 3, 2 / 3, 1.0)])
    assert get_schedule("linear")(1.0) == 1.0


def test_fit_stop_resume_equals_uninterrupted_run(tiny, tmp_path):
    def make():
        return GeometricMedianPruning(PLAN, start_epoch=0, end_epoch=2)

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
    assert cb_c.mask_updates == cb_a.mask_updates == 3
    for name in cb_a.masks:
        assert torch.equal(cb_a.masks[name], cb_c.masks[name]), name
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_non_filter_plan_is_refused_naming_the_layer_before_training(tiny, tmp_path):
    module = tiny.TinyModule()
    before = module.net.conv2.weight.detach().clone()
    cb = GeometricMedianPruning({"conv2": {"scheme": "filter", "rate": 2}, "*": {"scheme": "block_punched", "rate": 3}})
    with pytest.raises(FPGMError, match=r"prunes whole filters only: layer 'conv3' uses scheme 'block_punched'"):
        tiny.trainer(tmp_path, [cb], max_epochs=1).fit(module, tiny.loader())
    assert torch.equal(module.net.conv2.weight, before)
    resolved = NPASScheme({"conv3": LayerPlan(scheme="pattern", rate=3)})
    with pytest.raises(FPGMError, match=r"layer 'conv3' uses scheme 'pattern'"):
        GeometricMedianPruning(resolved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distance": "cos"}, r"distance='cos': accepted values are \['l1', 'l2'\]"),
        ({"start_epoch": 2, "end_epoch": 1}, r"end_epoch=1 must be >= start_epoch=2"),
        ({"schedule": "exp"}, r"schedule='exp' is not a registered schedule"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometricMedianPruning(PLAN, **kwargs)
