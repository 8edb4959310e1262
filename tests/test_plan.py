"""NPASScheme / LayerPlan: glob resolution on real timm models, exclusions, JSON, hashing, table, errors."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

from npas_lightning.plan import LayerPlan, NPASScheme, PlanError, _fmt, default_exclusions, prunable_layers
from npas_lightning.schemes import get_scheme

ISSUE_PLAN = {
    "blocks.*.conv_pw": {"scheme": "block_based", "rate": 5, "block": [16, 4]},
    "*": {"scheme": "block_punched", "rate": 3},
}


@pytest.fixture(scope="module")
def effnet():
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


def test_glob_resolution_first_match_wins_on_efficientnet(effnet):
    plan = NPASScheme.resolve(ISSUE_PLAN, effnet)
    layers = prunable_layers(effnet)
    assert list(plan) == [n for n in layers if n not in ("conv_stem", "classifier")]  # model order
    assert plan["blocks.1.0.conv_pw"] == LayerPlan(scheme="block_based", rate=5.0, block=(16, 4))
    assert plan["blocks.0.0.conv_pw"].scheme == "block_based"  # '*' in the pattern spans "0.0"
    assert plan["blocks.1.0.conv_dw"] == LayerPlan(scheme="block_punched", rate=3.0)
    assert plan["blocks.1.0.conv_pwl"].scheme == "block_punched"  # conv_pw* is not conv_pw
    assert plan["conv_head"].scheme == "block_punched"
    # reversing the order makes '*' claim everything: the conv_pw pattern is then an error (shadowed)
    with pytest.raises(PlanError, match=r"pattern 'blocks\.\*\.conv_pw' is shadowed.*earlier pattern\(s\) \['\*'\]"):
        NPASScheme.resolve(dict(reversed(list(ISSUE_PLAN.items()))), effnet)


def test_resnet_default_exclusions_and_patterns(resnet):
    assert default_exclusions(resnet) == ["conv1", "fc"]
    plan = NPASScheme.resolve({"layer*.*.conv2": {"scheme": "pattern", "rate": 3, "params": {"k": 4}}}, resnet)
    assert list(plan) == [f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2)]
    assert plan["layer3.1.conv2"].params == {"k": 4}


def test_exclusions_are_configurable(effnet):
    everything = NPASScheme.resolve({"*": {"scheme": "unstructured", "rate": 2}}, effnet, exclude=[])
    assert "conv_stem" in everything and "classifier" in everything
    fewer = NPASScheme.resolve({"*": {"scheme": "filter", "rate": 2}}, effnet,
                               exclude=[*default_exclusions(effnet), "blocks.6.*"])
    assert not any(n.startswith("blocks.6.") for n in fewer) and "conv_stem" not in fewer
    assert "blocks.5.0.conv_dw" in fewer


def test_none_value_claims_but_leaves_unpruned(effnet):
    plan = NPASScheme.resolve({"conv_head": None, "*": {"scheme": "block_punched", "rate": 3}}, effnet)
    assert "conv_head" not in plan and "blocks.6.0.conv_pwl" in plan


def test_fallback_exclusions_without_timm_cfg():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 32),
                          nn.Linear(32, 4))
    assert default_exclusions(model) == ["0", "5"]
    plan = NPASScheme.resolve({"*": {"scheme": "filter", "rate": 2}}, model)
    assert list(plan) == ["2", "4"]


def test_hydra_dictconfig_plan(effnet):
    cfg = OmegaConf.create({"plan": ISSUE_PLAN})
    assert NPASScheme.resolve(cfg.plan, effnet) == NPASScheme.resolve(ISSUE_PLAN, effnet)


def test_filter_type_replacements_are_validated(effnet):
    ok = NPASScheme.resolve(
        {"blocks.2.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "block_punched", "rate": 2}}, effnet)
    assert ok["blocks.2.0.conv_dw"].filter_type == "3x3dw_1x1"
    with pytest.raises(PlanError, match=r"'pattern' does not fit layer 'blocks\.2\.0\.conv_dw\[3x3dw_1x1\]\.pw'"):
        NPASScheme.resolve({"blocks.2.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "pattern", "rate": 3}},
                           effnet)
    with pytest.raises(PlanError, match=r"layer 'blocks\.1\.0\.conv_pw' \(pointwise\): filter_type='3x3' is not "
                                        r"offered; filter types this layer accepts: \['keep'\]"):
        NPASScheme.resolve({"blocks.1.0.conv_pw": {"filter_type": "3x3"}}, effnet)


# ---------------------------------------------------------------------------------- serialisation
def test_json_round_trip(effnet, tmp_path):
    plan = NPASScheme.resolve(
        {"blocks.1.*.conv_dw": {"scheme": "pattern", "rate": 3, "params": {"k": 6}},
         "blocks.*.conv_pw": {"scheme": "block_based", "rate": 5, "block": [16, 4],
                              "params": {"balanced": True, "prune": "rows"}},
         "*": {"scheme": "block_punched", "rate": 2.5, "block": (8, 4)}}, effnet)
    assert NPASScheme.from_json(plan.to_json()) == plan
    assert NPASScheme.from_dict(plan.to_dict()) == plan
    path = plan.save(tmp_path / "sub" / "plan.json")
    loaded = NPASScheme.load(path)
    assert loaded == plan and list(loaded) == list(plan)
    assert loaded["blocks.1.0.conv_pw"].block == (16, 4)
    assert loaded.structural_hash() == plan.structural_hash()
    # a resolved plan is its own glob plan
    assert NPASScheme.resolve(plan.to_dict(), effnet, exclude=[]) == plan
    assert NPASScheme.resolve(plan, effnet) is plan


def test_structural_hash_is_stable_across_processes(tmp_path):
    plan = NPASScheme({"a.conv": LayerPlan(scheme="block_punched", rate=5, block=(8, 4)),
                       "b.fc": LayerPlan(scheme="block_based", rate=3, params={"balanced": True})})
    path = plan.save(tmp_path / "plan.json")
    code = f"from npas_lightning.plan import NPASScheme; print(NPASScheme.load({str(path)!r}).structural_hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == plan.structural_hash()
    assert len(plan.structural_hash()) == 64


def test_structural_hash_tracks_structure_only():
    base = NPASScheme({"a": LayerPlan(scheme="block_punched", rate=5, block=(8, 4)),
                       "b": LayerPlan(scheme="pattern", rate=3)})
    same = [
        NPASScheme({"b": LayerPlan(scheme="pattern", rate=3.0), "a": LayerPlan(scheme="block_punched", rate=5.0)}),
        NPASScheme({**base, "c": LayerPlan()}),  # an explicit no-op entry
        NPASScheme({**base, "b": LayerPlan(scheme="pattern", rate=3, params={"k": 8})}),  # default k
    ]
    for other in same:
        assert other.structural_hash() == base.structural_hash()
    different = [
        NPASScheme({**base, "a": LayerPlan(scheme="block_punched", rate=5, block=(16, 4))}),
        NPASScheme({**base, "a": LayerPlan(scheme="block_punched", rate=3, block=(8, 4))}),
        NPASScheme({**base, "b": LayerPlan(scheme="filter", rate=3)}),
        NPASScheme({**base, "b": LayerPlan(scheme="pattern", rate=3, params={"k": 4})}),
        NPASScheme({**base, "c": LayerPlan(filter_type="skip")}),
        NPASScheme({"a": base["a"], "b2": base["b"]}),
    ]
    hashes = {p.structural_hash() for p in different}
    assert base.structural_hash() not in hashes and len(hashes) == len(different)


def test_layer_plan_is_hashable_and_immutable():
    lp = LayerPlan(scheme="block_based", rate=2, block=[16, 4], params={"prune": "rows"})
    assert lp.block == (16, 4) and isinstance(lp.rate, float)
    assert hash(lp) == hash(LayerPlan(scheme="block_based", rate=2.0, block=(16, 4), params={"prune": "rows"}))
    assert lp.scheme_kwargs() == {"prune": "rows", "block": (16, 4)}
    with pytest.raises(TypeError):
        lp.params["prune"] = "columns"
    assert not LayerPlan().pruned and lp.pruned and not LayerPlan(filter_type="skip").pruned


def test_plans_pickle_and_copy():
    plan = NPASScheme({"a": LayerPlan(scheme="block_based", rate=2, block=(16, 4), params={"balanced": True}),
                       "b": LayerPlan(scheme="pattern", rate=3)})
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and list(again) == ["a", "b"] and again.structural_hash() == plan.structural_hash()
    assert copy.deepcopy(plan) == plan


# ------------------------------------------------------------------------------------------- table
def test_table_on_efficientnet(effnet):
    plan = NPASScheme.resolve({"blocks.2.0.conv_dw": {"filter_type": "3x3dw_1x1"}, **ISSUE_PLAN}, effnet)
    table = plan.table(effnet, torch.randn(1, 3, 32, 32))
    headers = [c.header for c in table.columns]
    assert headers == ["layer", "kind", "shape", "filter type", "scheme", "rate", "kept weights", "MACs before",
                       "MACs after"]
    assert table.row_count == len(prunable_layers(effnet)) + 1  # every layer + total
    console = Console(record=True, width=250)
    console.print(table)
    text = console.export_text()
    w = effnet.get_submodule("blocks.1.0.conv_pw").weight
    kept = int(get_scheme("block_based")(w, 5, block=(16, 4)).sum())
    row = next(line for line in text.splitlines() if "blocks.1.0.conv_pw " in line)
    assert f"{_fmt(kept)}/{_fmt(w.numel())}" in row and "block_based 16x4" in row
    assert "3x3dw_1x1" in text and "~" in text and "conv_stem" in text


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"blocks.*.conv_pww": {"rate": 2}}, r"plan pattern 'blocks\.\*\.conv_pww' matches no Conv2d/Linear layer"),
        ({"conv_stem": {"rate": 2}}, r"plan pattern 'conv_stem' matches only excluded layers \['conv_stem'\].*exclude=\[\]"),
        ({"blocks.2.*.conv_dw": {"scheme": "pattern", "rate": 3}},
         r"plan pattern 'blocks\.2\.\*\.conv_dw': scheme 'pattern' does not fit layer 'blocks\.2\.0\.conv_dw' "
         r"\(depthwise, weight shape \[144, 1, 5, 5\]\).*schemes that fit this layer: \['block_punched', 'filter', 'unstructured'\]"),
        ({"*": {"scheme": "block_based", "rate": 3}}, r"'block_based' does not fit layer 'blocks\.0\.0\.conv_dw' \(depthwise"),
        ({"blocks.1.0.conv_pw": {"scheme": "block_punched", "rate": 3, "block": [96, 32]}},
         r"block \(96, 32\) is larger than the whole layer \(96 x 16"),
        ({"*": {"scheme": "blocky"}}, r"plan\['\*'\]: unknown scheme 'blocky'; registered schemes"),
        ({"*": {"rate": 0.5}}, r"plan\['\*'\]: rate=0\.5 .*expected a finite number >= 1"),
        ({"*": {"rate": 2, "shceme": "filter"}}, r"plan\['\*'\]: unknown field\(s\) \['shceme'\]; accepted: \['filter_type'"),
        ({"*": {"filter_type": "5x5"}}, r"filter_type='5x5': accepted values are \['keep', '1x1'"),
        ({"*": {"scheme": "pattern", "rate": 3, "block": [8, 4]}}, r"block=\[8, 4\] given for scheme 'pattern', which takes no block"),
        ({"*": {"scheme": "block_based", "rate": 3, "params": {"block": [8, 4]}}},
         r"params \['block'\] are not parameters of scheme 'block_based' \(give the block as LayerPlan\.block\)"),
        ({"*": {"scheme": "block_punched", "rate": 3, "block": [8, 0]}}, r"block=\[8, 0\]: expected two positive integers"),
        ({"*": {"filter_type": "skip", "rate": 3}}, r"filter_type='skip' removes the layer, so rate must be 1"),
        ({"*": "block_punched"}, r"plan\['\*'\]: expected a mapping of LayerPlan fields"),
        ({"*": None}, r"plan matches no layer of EfficientNet to prune"),
        ({}, r"plan is empty"),
        ([("*", {"rate": 2})], r"plan must be an NPASScheme or a mapping \{glob pattern: LayerPlan fields\}, got list"),
    ],
)
def test_resolve_errors(effnet, plan, match):
    with pytest.raises(PlanError, match=match):
        NPASScheme.resolve(plan, effnet)


def test_other_errors(effnet, tmp_path):
    with pytest.raises(PlanError, match=r"plan names \['blocks\.9\.conv'\] which are not Conv2d/Linear layers of EfficientNet"):
        NPASScheme.resolve(NPASScheme({"blocks.9.conv": LayerPlan(rate=2)}), effnet)
    with pytest.raises(PlanError, match=r"exclude='conv_stem': expected a list of glob patterns"):
        NPASScheme.resolve({"*": {"rate": 2}}, effnet, exclude="conv_stem")
    with pytest.raises(PlanError, match=r"model must be a torch\.nn\.Module, got dict"):
        NPASScheme.resolve({"*": {"rate": 2}}, {})
    with pytest.raises(PlanError, match=r"from_json: not valid JSON"):
        NPASScheme.from_json("{not json")
    with pytest.raises(PlanError, match=r"plan file '.*missing\.json' does not exist"):
        NPASScheme.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match=r"layer 'x': unknown field\(s\) \['rat'\]"):
        NPASScheme.from_dict({"x": {"rat": 2}})
    with pytest.raises(PlanError, match=r"layer name '': expected a non-empty module name"):
        NPASScheme({"": LayerPlan()})
    with pytest.raises(PlanError, match=r"params=3: expected a mapping of scheme parameters"):
        LayerPlan(params=3)


def test_plan_resolves_on_a_model_with_its_filter_types_applied():
    from npas_lightning.transforms import apply_filter_types

    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    plan = NPASScheme.resolve(
        {
            "blocks.1.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "block_punched", "rate": 2},
            "blocks.2.1.conv_dw": {"filter_type": "skip", "scheme": "unstructured", "rate": 1},
            "blocks.3.*": {"scheme": "block_punched", "rate": 3},
        },
        net,
    )
    applied = apply_filter_types(net, plan)
    again = NPASScheme.resolve(plan.to_dict(), applied)
    assert again.structural_hash() == plan.structural_hash()
    assert "blocks.1.0.conv_dw.dw" not in dict(again)  # the candidate counts as one layer
    with pytest.raises(PlanError, match=r"layer 'blocks.1.0.conv_dw' already has filter type '3x3dw_1x1' applied"):
        NPASScheme.resolve({"blocks.1.0.conv_dw": {"filter_type": "keep", "scheme": "unstructured", "rate": 2}}, applied)


def test_table_on_a_model_with_its_filter_types_applied():
    from npas_lightning.transforms import apply_filter_types

    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    plan = NPASScheme.resolve({"blocks.1.0.conv_dw": {"filter_type": "3x3dw_1x1", "scheme": "block_punched",
                                                       "rate": 2}}, net)
    applied = apply_filter_types(net, plan)
    console = Console(record=True, width=250)
    console.print(plan.table(applied, torch.randn(1, 3, 32, 32)))
    text = console.export_text()
    assert "blocks.1.0.conv_dw.dw" in text and "blocks.1.0.conv_dw.pw" in text and "3x3dw_1x1" in text
