"""recipe=phase1 through Hydra compose: smoke run, reload of its checkpoint, refusals."""

from __future__ import annotations

import hydra
import pytest
import timm
import torch

from npas_lightning.models import ClassifierModule
from npas_lightning.transforms import activation_counts, swap_activations


@pytest.fixture(autouse=True)
def _one_thread():
    """Batch-8 32x32 steps: intra-op threads only add sync overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_phase1_smoke_from_init_checkpoint(make_cfg, tmp_path):
    torch.manual_seed(0)
    init = timm.create_model("efficientnet_b0", num_classes=10, pretrained=False)
    init_path = tmp_path / "init.pth"
    torch.save(init.state_dict(), init_path)
    cfg = make_cfg("recipe=phase1", "debug=smoke", f"recipe.init_checkpoint={init_path}",
                   "recipe.measure_latency=false")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    assert result["recipe"] == "phase1"
    m = result["metrics"]
    for key in ("phase1/acc1_before_swap", "phase1/acc1_after_swap", "phase1/acc1_after_finetune"):
        assert 0.0 <= m[key] <= 1.0
    assert m["phase1/swapped_activations"] == 65.0
    assert result["swap"]["replaced"] == {"SiLU -> Hardswish": 49, "Sigmoid -> Hardsigmoid": 16}
    assert result["latency"]["before"]["status"] == "not measured: recipe.measure_latency=false"
    assert "latency/before_ms" not in m
    # the fine-tuned checkpoint reloads as the swapped network (hard_activations=True in its hparams)
    ckpt = result["artifacts"]["phase1 checkpoint"]
    module = ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    assert module.hparams.hard_activations is True
    assert activation_counts(module.net) == {"Hardsigmoid": 16, "Hardswish": 49}
    assert swap_activations(module.net).nothing_to_swap
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(state["net.conv_stem.weight"], module.net.conv_stem.weight)
    assert not torch.equal(module.net.conv_stem.weight, init.conv_stem.weight)  # it was fine-tuned


@pytest.mark.slow
def test_phase1_nothing_to_swap_resnet(make_cfg):
    cfg = make_cfg("recipe=phase1", "debug=smoke", "model=resnet18", "recipe.measure_latency=false",
                   "recipe.epochs=0")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    assert result["swap"]["nothing_to_swap"] is True
    assert result["metrics"]["phase1/swapped_activations"] == 0.0
    assert "starting point" in result["artifacts"]  # no init checkpoint: trained its own start
    assert "phase1 checkpoint" not in result["artifacts"]  # epochs=0: no fine-tune
    m = result["metrics"]
    assert m["phase1/acc1_after_swap"] == m["phase1/acc1_before_swap"] == m["phase1/acc1_after_finetune"]


@pytest.mark.slow
def test_phase1_smoke_with_compiled_latency(make_cfg):
    cfg = make_cfg("recipe=phase1", "debug=smoke", "compiler.threads=1")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    for key in ("before", "after"):
        lat = result["latency"][key]
        assert lat["status"] == "measured", lat
        assert lat["median_ms"] > 0 and lat["input_shape"] == [1, 3, 32, 32] and lat["target"] == "host"
    assert result["metrics"]["latency/speedup"] > 0


def test_phase1_refusals(make_cfg):
    cfg = make_cfg("recipe=phase1", "recipe.init_checkpoint=/nope.ckpt")
    with pytest.raises(FileNotFoundError, match=r"recipe.init_checkpoint='/nope.ckpt' does not exist"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=phase1", "recipe.epochs=-1")
    with pytest.raises(ValueError, match=r"recipe.epochs=-1 is not valid: expected an integer >= 0"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=phase1", "recipe.save_name=a/b.ckpt")
    with pytest.raises(ValueError, match=r"recipe.save_name='a/b.ckpt' must be a plain file name"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
