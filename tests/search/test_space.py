"""Search space from a real timm model: validity, configuration errors, fingerprints, plans."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from npas_lightning.plan import NPASScheme
from npas_lightning.schemes import get_scheme
from npas_lightning.search.agent import QLearningAgent
from npas_lightning.search.space import (
    Choice,
    LayerSpace,
    SearchSpace,
    SpaceConfig,
    SpaceError,
    space_config_from_dict,
)
from npas_lightning.transforms.candidates import build_candidate, candidate_filter_types


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def space(model):
    return SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), SpaceConfig())


def test_space_follows_table1(model, space):
    modules = dict(model.named_modules())
    assert "conv_stem" not in space.names and "classifier" not in space.names  # default exclusions
    from npas_lightning.layers import enumerate_layers

    infos = {li.name: li for li in enumerate_layers(model, torch.randn(1, 3, 32, 32))}
    for ls in space.layers:
        fts = {c.filter_type for c in ls.choices}
        assert fts <= set(candidate_filter_types(infos[ls.name]))
        for c in ls.choices:
            assert c.rate in (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)
            if c.rate == 1.0:
                assert c.scheme == "unstructured" and c.block is None
            else:
                assert c.scheme in ("filter", "pattern", "block_punched", "block_based")
                assert c.filter_type != "skip"
        if infos[ls.name].kernel_size == (1, 1):  # never a larger kernel: 1x1 layers only keep/skip
            assert fts <= {"keep", "skip"}
            assert "pattern" not in {c.scheme for c in ls.choices}
        assert isinstance(modules[ls.name], nn.Conv2d | nn.Linear)
    assert space.edge_method == "fx"
    assert len(space.edges) > len(space) - 1  # residual additions add edges beyond the chain


def _check_plan_on_real_weights(model, plan):
    """Every pruned layer's scheme runs on the real weights it will mask (after its filter type)."""
    modules = dict(model.named_modules())
    for name, lp in plan.items():
        if lp.rate == 1.0:
            continue
        mod = modules[name]
        cand = mod if lp.filter_type == "keep" else build_candidate(lp.filter_type, mod)
        for m in cand.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                mask = get_scheme(lp.scheme)(m.weight, lp.rate, layer_name=name, **lp.scheme_kwargs())
                assert mask.shape == m.weight.shape


def test_agent_never_emits_an_invalid_plan(model, space):
    agent = QLearningAgent(space, seed=0, epsilon={"name": "constant", "value": 1.0})
    rng = np.random.default_rng(1)
    q_noise = [rng.random(q.shape) for q in agent.q]
    for i in range(12):
        if i == 6:  # greedy on a random Q table too
            agent.q = q_noise
        traj = agent.generate(i, epsilon=1.0 if i < 6 else 0.0)
        plan = space.to_plan(traj)
        resolved = NPASScheme.resolve(plan, model)  # validates filter types and schemes against the model
        assert list(resolved) == space.names
        _check_plan_on_real_weights(model, plan)


def test_fingerprint_is_stable_and_sensitive(model, space):
    again = SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), SpaceConfig())
    assert again.fingerprint() == space.fingerprint()
    fewer = SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), SpaceConfig(rates=[1, 2, 5]))
    assert fewer.fingerprint() != space.fingerprint()
    assert fewer.size_log10() < space.size_log10()


def test_config_restricts_the_space(model):
    cfg = SpaceConfig(rates=[1, 3], filter_types=["keep"], schemes=["filter"], include=["blocks.1.*"])
    sp = SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), cfg)
    assert all(n.startswith("blocks.1.") for n in sp.names)
    for ls in sp.layers:
        assert set(ls.choices) == {Choice("keep", "unstructured", 1.0), Choice("keep", "filter", 3.0)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rates": [0.5, 2]}, r"rates=\[0.5, 2.0\]"), ({"filter_types": ["5x5"]}, r"unknown value\(s\) \['5x5'\]"),
     ({"blocks": {"block_punched": [[8]]}}, r"block \[8\] must be two positive ints")],
)
def test_bad_space_config(kwargs, match):
    with pytest.raises(SpaceError, match=match):
        SpaceConfig(**kwargs)


def test_unknown_space_key_and_empty_selection(model):
    with pytest.raises(SpaceError, match=r"unknown key\(s\) \['ratez'\]"):
        space_config_from_dict({"ratez": [1, 2]})
    with pytest.raises(SpaceError, match="left no layer"):
        SearchSpace.from_model(model, torch.randn(1, 3, 32, 32), SpaceConfig(include=["nope.*"]))


def test_trajectory_validation():
    sp = SearchSpace([LayerSpace("a", "conv", (Choice("keep", "unstructured", 1.0),))])
    with pytest.raises(SpaceError, match="trajectory has 2 entries"):
        sp.validate((0, 0))
    with pytest.raises(SpaceError, match=r"trajectory\[0\]=3 out of range"):
        sp.validate((3,))
    assert sp.to_plan((0,))["a"].rate == 1.0


def test_plan_round_trip_and_description(space):
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = space.random_trajectory(rng)
        assert space.trajectory_of(space.to_plan(t)) == t
        assert space.trajectory_of(space.to_plan_dict(t)) == t
    again = SearchSpace.from_description(space.describe())
    assert again.fingerprint() == space.fingerprint()
    with pytest.raises(SpaceError, match="plan has no entry"):
        space.trajectory_of({})
