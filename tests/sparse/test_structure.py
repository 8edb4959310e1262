"""structural_mask / check_structure: real scheme masks pass, mismatched zeros are refused by name."""

from __future__ import annotations

import pytest
import torch

from npas_lightning.plan import LayerPlan
from npas_lightning.schemes import get_scheme
from npas_lightning.sparse import StructureError, check_structure, structural_mask

# (scheme, weight shape, block, params, rate)
CASES = [
    ("block_punched", (32, 16, 3, 3), None, {}, 4),
    ("block_punched", (13, 6, 5, 5), (8, 4), {}, 3),          # edge blocks
    ("block_punched", (48, 1, 3, 3), (8, 4), {}, 3),          # depthwise: bc = 1
    ("block_punched", (64, 32, 1, 1), (16, 4), {}, 5),        # pointwise
    ("block_punched", (32, 16, 3, 3), (8, 4), {"balanced": True}, 3),
    ("block_based", (40, 64), None, {}, 4),
    ("block_based", (20, 10, 1, 1), (8, 4), {}, 3),           # 1x1 conv, edge band
    ("block_based", (40, 64), (8, 16), {"prune": "rows"}, 4),
    ("block_based", (40, 64), (16, 4), {"balanced": True}, 5),
    ("pattern", (16, 8, 3, 3), None, {}, 3),
    ("pattern", (24, 1, 3, 3), None, {"k": 4}, 2.25),
    ("filter", (16, 8, 3, 3), None, {}, 2),
    ("filter", (10, 37), None, {}, 3),
    ("unstructured", (16, 8, 3, 3), None, {}, 5),
]


def _weight(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("scheme", "shape", "block", "params", "rate"), CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[3]}" for c in CASES])
def test_every_schemes_real_mask_passes(scheme, shape, block, params, rate):
    lp = LayerPlan(scheme=scheme, rate=rate, block=block, params=params)
    w = _weight(shape)
    mask = get_scheme(scheme)(w, rate, layer_name="L", **lp.scheme_kwargs())
    pruned = w * mask
    structural = check_structure("L", pruned, lp)
    assert structural.dtype == torch.bool and structural.shape == w.shape
    assert torch.equal(structural, mask)  # a scheme's own mask is already its structure
    if scheme in ("pattern", "unstructured"):
        return  # per-weight structure: the mask is the zeros themselves
    # stray extra zeros inside kept groups do not change the structure
    pruned.view(-1)[torch.nonzero(mask.view(-1))[0]] = 0.0
    assert torch.equal(check_structure("L", pruned, lp), mask)


@pytest.mark.parametrize(("scheme", "shape", "block", "params"),
                         [("block_punched", (13, 6, 3, 3), (8, 4), {}), ("block_punched", (24, 1, 5, 5), (8, 4), {}),
                          ("block_based", (20, 10, 1, 1), (8, 4), {}), ("block_based", (20, 10), (8, 4), {"prune": "rows"}),
                          ("filter", (10, 3, 3, 3), None, {}), ("unstructured", (5, 4), None, {})])
def test_structural_mask_is_the_smallest_structured_cover(scheme, shape, block, params):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(shape, generator=g) < 0.05
    lp = LayerPlan(scheme=scheme, rate=2, block=block, params=params)
    s = structural_mask(mask, lp)
    assert bool((s | ~mask).all()), "covers the mask"
    # every kept group contains a kept weight of the mask, and groups are whole: re-covering changes nothing
    assert torch.equal(structural_mask(s, lp), s)
    if scheme == "block_punched":
        bf, bc = block if shape[1] > 1 else (block[0], 1)
        for f in range(0, shape[0], bf):
            for c in range(0, shape[1], bc):
                blk, m = s[f:f + bf, c:c + bc], mask[f:f + bf, c:c + bc]
                assert torch.equal(blk.all(0).all(0), m.any(0).any(0))
    if scheme == "filter":
        assert torch.equal(s.reshape(shape[0], -1).all(1), mask.reshape(shape[0], -1).any(1))


def test_unstructured_zeros_against_a_block_punched_plan_are_refused():
    lp = LayerPlan(scheme="block_punched", rate=5, block=(8, 4))
    w = _weight((32, 16, 1, 1))
    w = w * get_scheme("unstructured")(w, 5)
    with pytest.raises(StructureError, match=r"layer 'blocks.1.0.conv_pw': the plan says block_punched \(8, 4\) at "
                                             r"5.0x but its zeros give 1.\dx in that structure; prune it with the plan"):
        check_structure("blocks.1.0.conv_pw", w, lp)


def test_an_unpruned_layer_is_refused():
    with pytest.raises(StructureError, match=r"layer 'fc': the plan says block_based \(16, 4\) at 3.0x but its zeros "
                                             r"give 1.0x"):
        check_structure("fc", _weight((32, 20)), LayerPlan(scheme="block_based", rate=3))
    with pytest.raises(StructureError, match=r"layer 'c': the plan says block_based \(8, 16\) rows at 2.5x"):
        check_structure("c", _weight((32, 20)), LayerPlan(scheme="block_based", rate=2.5, block=(8, 16),
                                                           params={"prune": "rows"}))


def test_rate_tolerance_and_one_group_of_slack():
    w = _weight((32, 16, 3, 3))
    lp = LayerPlan(scheme="block_punched", rate=4, block=(8, 4))
    at3 = w * get_scheme("block_punched")(w, 3, block=(8, 4))
    with pytest.raises(StructureError, match=r"at 4.0x but its zeros give 3.0x"):
        check_structure("L", at3, lp)
    check_structure("L", at3, lp, tolerance=0.3)  # 3 >= 4 * 0.7
    at37 = w * get_scheme("block_punched")(w, 3.7, block=(8, 4))
    check_structure("L", at37, lp)  # within 10 %
    with pytest.raises(ValueError, match=r"tolerance=1.5: expected a fraction in \[0, 1\)"):
        check_structure("L", at37, lp, tolerance=1.5)


def test_pattern_refusals():
    lp = LayerPlan(scheme="pattern", rate=3)
    w = _weight((8, 4, 3, 3))
    w = w * get_scheme("pattern")(w, 3)
    alive = torch.nonzero(w.reshape(-1, 9).ne(0).any(1))[0, 0]
    kernel = w.reshape(-1, 9)[alive]
    kernel[kernel == 0] = 0.5  # that kernel now keeps 9 weights
    with pytest.raises(StructureError, match=r"layer 'p': the plan says pattern \(at most 4 weights per 3x3 kernel\) "
                                             r"but 1 of 32 kernels keep more \(up to 9\)"):
        check_structure("p", w, lp)
    five = _weight((8, 4, 3, 3)) * get_scheme("pattern")(_weight((8, 4, 3, 3)), 3)
    k = torch.nonzero(five.reshape(-1, 9).ne(0).any(1))[0, 0]
    empty = torch.nonzero(five.reshape(-1, 9)[k] == 0)[0, 0]
    five.reshape(-1, 9)[k, empty] = 1.0  # 5 weights in one kernel
    with pytest.raises(StructureError, match=r"1 of 32 kernels keep more \(up to 5\)"):
        check_structure("p", five, lp)
    with pytest.raises(StructureError, match=r"layer 'q': the plan says pattern, which needs 3x3 kernels; its weight "
                                             r"has shape \[8, 4, 5, 5\]"):
        check_structure("q", torch.zeros(8, 4, 5, 5), lp)


def test_balanced_plans_round_per_band_and_still_pass():
    """2 of 16 columns per band is 8x where 10x was asked: the scheme's own balanced mask must pass."""
    import torch

    from npas_lightning.plan import LayerPlan
    from npas_lightning.schemes import get_scheme
    from npas_lightning.sparse import check_structure

    w = torch.randn(96, 16, 1, 1)
    lp = LayerPlan(scheme="block_based", rate=10.0, block=(16, 4), params={"balanced": True})
    mask = get_scheme("block_based")(w, 10.0, block=(16, 4), balanced=True)
    check_structure("pw", w * mask, lp)
