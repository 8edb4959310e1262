"""One parametrised tester over every registered scheme x layer shape x rate, plus identities and errors."""

from __future__ import annotations

import math

import pytest
import torch

from npas_lightning.schemes import (
    CANDIDATES,
    SchemeError,
    achieved_rate,
    block_matrix_mask,
    block_punched_mask,
    get_scheme,
    list_schemes,
    register_scheme,
    schemes_for_kind,
    schemes_for_weight,
    weight_kind,
)

# name -> (weight shape, kind)
SHAPES = {
    "conv3x3": ((32, 16, 3, 3), "conv"),
    "conv5x5": ((16, 8, 5, 5), "conv"),
    "conv7x7": ((24, 12, 7, 7), "conv"),
    "pointwise": ((64, 32, 1, 1), "pointwise"),
    "depthwise3x3": ((48, 1, 3, 3), "depthwise"),
    "depthwise5x5": ((40, 1, 5, 5), "depthwise"),
    "fc": ((40, 64), "fc"),
    "odd_conv3x3": ((13, 6, 3, 3), "conv"),      # F, C not multiples of the (8, 4) block
    "odd_pointwise": ((20, 10, 1, 1), "pointwise"),  # not multiples of (16, 4)
    "odd_fc": ((10, 37), "fc"),
}
RATES = [2, 3, 5, 10]
# Independent statement of which layer a scheme fits (the registry must agree; see test_fit_table).
FITS = {
    "unstructured": set(SHAPES),
    "filter": set(SHAPES),
    "pattern": {"conv3x3", "depthwise3x3", "odd_conv3x3"},
    "block_punched": {n for n, (_, k) in SHAPES.items() if k != "fc"},
    "block_based": {"pointwise", "odd_pointwise", "fc", "odd_fc"},
}
DEFAULT_BLOCK = {"block_punched": (8, 4), "block_based": (16, 4)}


def _weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def _target(numel, rate):
    return max(1, math.floor(numel / rate + 0.5))


def _blocks(F, C, bf, bc):
    """(filter slice, channel slice) of every block, edge blocks included (reference, loops on purpose)."""
    return [(slice(f, min(f + bf, F)), slice(c, min(c + bc, C))) for f in range(0, F, bf) for c in range(0, C, bc)]


def _check_structure(scheme, w, mask, rate, kind):
    """Assert the scheme's structural property; return (expected kept, structural unit)."""
    numel = w.numel()
    target = _target(numel, rate)
    if scheme == "unstructured":
        kept = w.abs()[mask]
        removed = w.abs()[~mask]
        assert int(mask.sum()) == target  # exact count
        if removed.numel():
            assert kept.min() >= removed.max()
        return target, 0
    if scheme == "filter":
        rows = mask.reshape(mask.shape[0], -1)
        assert torch.equal(rows.all(1), rows.any(1)), "filters must be all kept or all removed"
        return target, rows.shape[1]
    if scheme == "block_punched":
        bf, bc = DEFAULT_BLOCK[scheme]
        if kind == "depthwise":
            bc = 1
        F, C = mask.shape[:2]
        for fs, cs in _blocks(F, C, bf, bc):
            blk = mask[fs, cs].reshape(-1, *mask.shape[2:])
            assert torch.equal(blk.all(0), blk.any(0)), f"block {fs},{cs}: a kernel position is split"
        return target, bf * bc
    if scheme == "block_based":
        br, bc = DEFAULT_BLOCK[scheme]
        m = mask.reshape(mask.shape[0], mask.shape[1])
        for fs, cs in _blocks(*m.shape, br, bc):
            blk = m[fs, cs]
            assert torch.equal(blk.all(0), blk.any(0)), f"block {fs},{cs}: a column is split"
        return target, br
    if scheme == "pattern":
        kern = mask.reshape(-1, 9)
        alive = kern.any(1)
        assert torch.equal(kern[alive].sum(1), torch.full((int(alive.sum()),), 4)), "kept kernels keep 4"
        assert kern[alive][:, 4].all(), "the centre is always kept"
        on_candidate = (kern[alive][:, None, :] == CANDIDATES[None]).all(-1).any(-1)
        assert on_candidate.all()
        assert torch.unique(kern[alive], dim=0).shape[0] <= 8, "at most k=8 distinct patterns"
        n_kernels = kern.shape[0]
        return min(target, 4 * n_kernels), 4
    raise AssertionError(f"no structural check for scheme {scheme!r}: add one")


CASES = [(s, n, r) for s in sorted(FITS) for n in SHAPES for r in RATES]


def test_every_registered_scheme_is_covered():
    assert list_schemes() == ["block_based", "block_punched", "filter", "pattern", "unstructured"]
    assert set(FITS) == set(list_schemes())


@pytest.mark.parametrize(("scheme", "shape_name", "rate"), CASES, ids=[f"{s}-{n}-{r}" for s, n, r in CASES])
def test_scheme(scheme, shape_name, rate):
    shape, kind = SHAPES[shape_name]
    w = _weight(shape)
    fn = get_scheme(scheme)
    if shape_name not in FITS[scheme]:
        with pytest.raises(SchemeError, match=rf"scheme '{scheme}' does not fit layer 'L'.*schemes that fit"):
            fn(w, rate, layer_name="L", kind=kind)
        return
    mask = fn(w, rate, layer_name="L", kind=kind)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    expected, unit = _check_structure(scheme, w, mask, rate, kind)
    kept = int(mask.sum())
    assert abs(kept - expected) <= unit, f"kept {kept}, expected {expected} +- {unit}"
    assert achieved_rate(mask) == pytest.approx(w.numel() / kept)
    # determinism: same call, and a copy of the weight, give the same mask
    assert torch.equal(fn(w.clone(), rate, layer_name="L", kind=kind), mask)


BALANCED_CASES = [(n, r) for n in sorted(FITS["block_punched"]) for r in RATES]


@pytest.mark.parametrize(("shape_name", "rate"), BALANCED_CASES, ids=[f"{n}-{r}" for n, r in BALANCED_CASES])
def test_block_punched_balanced(shape_name, rate):
    """balanced=True: block structure as usual, and every band of bf filters keeps the same group count."""
    shape, kind = SHAPES[shape_name]
    w = _weight(shape)
    fn = get_scheme("block_punched")
    mask = fn(w, rate, layer_name="L", kind=kind, balanced=True)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    _check_structure("block_punched", w, mask, rate, kind)  # whole (block, position) groups
    bf, bc = DEFAULT_BLOCK["block_punched"]
    bc = 1 if kind == "depthwise" else bc
    groups = mask[::bf, ::bc]  # one entry per (band, channel block, position), structure checked above
    per_band = groups[0].numel()
    expected = min(per_band, max(1, math.floor(per_band / rate + 0.5)))
    assert groups.reshape(groups.shape[0], -1).sum(1).tolist() == [expected] * groups.shape[0]
    if shape[0] % bf == 0 and shape[1] % bc == 0:  # no edge blocks: rate off by at most half a group per band
        assert abs(int(mask.sum()) - _target(w.numel(), rate)) <= groups.shape[0] * bf * bc / 2
    assert torch.equal(fn(w.clone(), rate, layer_name="L", kind=kind, balanced=True), mask)


def test_block_punched_balanced_chooses_inside_each_band():
    w = _weight((16, 8, 3, 3), seed=11)
    w[:8] *= 100.0  # band 0 holds almost all the energy
    plain = get_scheme("block_punched")(w, 4, block=(8, 4))
    bal = get_scheme("block_punched")(w, 4, block=(8, 4), balanced=True)
    assert int(plain[8:].sum()) == 0  # global ranking starves band 1
    assert int(bal[:8].sum()) == int(bal[8:].sum()) == 8 * 4 * 5  # round(18 / 4) half up
    # inside band 1 the kept groups are the highest-energy ones
    energy = w[8:].square().reshape(8, 2, 4, 9).sum(dim=(0, 2)).flatten()
    kept = bal[8, ::4].flatten()
    assert energy[kept].min() >= energy[~kept].max()
    with pytest.raises(SchemeError, match=r"scheme 'block_punched' on layer 'L': balanced='yes': expected True or False"):
        get_scheme("block_punched")(w, 4, layer_name="L", balanced="yes")


def test_fit_table_matches_registry():
    for name, (shape, kind) in SHAPES.items():
        assert set(schemes_for_weight(shape, kind)) == {s for s, fit in FITS.items() if name in fit}, name


@pytest.mark.parametrize("scheme", sorted(FITS))
def test_rate_one_keeps_everything(scheme):
    w = _weight((16, 8, 3, 3)) if scheme != "block_based" else _weight((32, 16))
    assert get_scheme(scheme)(w, 1).all()


# ------------------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("shape_name", ["conv3x3", "conv5x5", "pointwise", "depthwise3x3", "odd_conv3x3"])
@pytest.mark.parametrize("rate", [2, 5, 10])
def test_unstructured_is_block_punched_with_1x1_block(shape_name, rate):
    shape, kind = SHAPES[shape_name]
    w = _weight(shape, seed=3)
    unstructured = get_scheme("unstructured")(w, rate, kind=kind)
    punched = get_scheme("block_punched")(w, rate, block=(1, 1), kind=kind)
    assert torch.equal(unstructured, punched)
    assert torch.equal(unstructured, block_punched_mask(w, rate, (1, 1)))


def test_unstructured_on_fc_is_block_punched_of_the_matrix_as_1x1_conv():
    w = _weight((40, 64), seed=4)
    assert torch.equal(
        get_scheme("unstructured")(w, 3), block_punched_mask(w[:, :, None, None], 3, (1, 1)).squeeze(-1).squeeze(-1)
    )


@pytest.mark.parametrize("shape_name", ["conv3x3", "conv7x7", "pointwise", "depthwise3x3", "fc", "odd_fc"])
@pytest.mark.parametrize("rate", [2, 3, 10])
def test_filter_is_one_whole_tensor_block(shape_name, rate):
    shape, _ = SHAPES[shape_name]
    w = _weight(shape, seed=5)
    matrix = w.reshape(shape[0], -1)
    whole_block = block_matrix_mask(matrix, rate, tuple(matrix.shape), prune="rows").reshape(shape)
    assert torch.equal(get_scheme("filter")(w, rate), whole_block)
    if len(shape) == 2 or shape[2:] == (1, 1):  # the registered block_based accepts these as-is
        assert torch.equal(
            get_scheme("filter")(w, rate), get_scheme("block_based")(w, rate, block=matrix.shape, prune="rows")
        )


# --------------------------------------------------------------------------------- scheme specifics
def test_block_based_rows_and_balanced():
    w = _weight((40, 64), seed=6)
    rows = get_scheme("block_based")(w, 4, block=(8, 16), prune="rows")
    for fs, cs in _blocks(40, 64, 8, 16):
        blk = rows[fs, cs]
        assert torch.equal(blk.all(1), blk.any(1)), "a row segment is split"
    bal = get_scheme("block_based")(w, 4, block=(16, 4), balanced=True)
    counts = [int(bal[fs, :].all(0).sum()) for fs in (slice(0, 16), slice(16, 32), slice(32, 40))]
    assert counts == [16, 16, 16]  # every block-row keeps round(64 / 4) columns, edge band included
    assert achieved_rate(bal) == pytest.approx(4.0)
    bal_rows = get_scheme("block_based")(w, 5, block=(8, 16), prune="rows", balanced=True)
    assert [int(bal_rows[:, c : c + 16].all(1).sum()) for c in range(0, 64, 16)] == [8, 8, 8, 8]


def test_block_punched_depthwise_blocks_run_over_filters():
    w = _weight((48, 1, 5, 5), seed=7)
    mask = get_scheme("block_punched")(w, 3, block=(8, 4))
    groups = mask.reshape(6, 8, 25)
    assert torch.equal(groups.all(1), groups.any(1))
    assert not torch.equal(groups.all(1)[0], groups.all(1)[1]) or not torch.equal(groups.all(1)[1], groups.all(1)[2])


def test_pattern_low_rate_and_library_size():
    w = _weight((32, 16, 3, 3), seed=8)
    mask = get_scheme("pattern")(w, 2)
    assert achieved_rate(mask) == pytest.approx(9 / 4)  # the pattern alone; every kernel kept
    one = get_scheme("pattern")(w, 3, k=1).reshape(-1, 9)
    assert torch.unique(one[one.any(1)], dim=0).shape[0] == 1


def test_pattern_picks_the_dominant_pattern():
    w = torch.full((4, 4, 3, 3), 0.01)
    w.view(16, 9)[:, [4, 0, 1, 2]] = 1.0  # every kernel has its energy on centre + top row
    mask = get_scheme("pattern")(w, 9 / 4).reshape(16, 9)
    assert mask[:, [4, 0, 1, 2]].all() and mask.sum() == 64


def test_block_exactly_the_layer_is_allowed():
    w = _weight((6, 3, 3, 3))
    mask = get_scheme("block_punched")(w, 3, block=(6, 3))
    per_pos = mask.reshape(18, 9)
    assert torch.equal(per_pos.all(0), per_pos.any(0))  # whole-layer kernel positions


def test_half_precision_weights_give_bool_masks():
    w = _weight((16, 8, 3, 3)).half()
    for s in ("unstructured", "filter", "pattern", "block_punched"):
        assert get_scheme(s)(w, 3).dtype == torch.bool


# ----------------------------------------------------------------------------- registry and errors
def test_registry_helpers():
    assert schemes_for_kind("fc") == ["block_based", "filter", "unstructured"]
    assert schemes_for_kind("conv") == ["block_punched", "filter", "pattern", "unstructured"]
    assert schemes_for_kind("pointwise") == ["block_based", "block_punched", "filter", "unstructured"]
    assert weight_kind(torch.empty(10, 5)) == "fc"
    assert weight_kind(torch.empty(8, 4, 1, 1)) == "pointwise"
    assert weight_kind(torch.empty(8, 1, 3, 3)) == "depthwise"
    assert weight_kind(torch.empty(8, 1, 3, 3), groups=1) == "conv"
    assert weight_kind(torch.empty(8, 4, 5, 5)) == "conv"
    assert achieved_rate(torch.zeros(4, dtype=torch.bool)) == math.inf


@pytest.mark.parametrize(
    ("scheme", "shape", "kwargs", "match"),
    [
        ("pattern", (16, 8, 5, 5), {}, r"'pattern' does not fit layer 'L'.*needs 3x3 kernels.*fit this layer: \['block_punched', 'filter', 'unstructured'\]"),
        ("pattern", (16, 8, 1, 1), {}, r"'pattern' does not fit layer 'L' \(pointwise.*\['block_based', 'block_punched', 'filter', 'unstructured'\]"),
        ("pattern", (16, 8), {}, r"'pattern' does not fit layer 'L' \(fc.*\['block_based', 'filter', 'unstructured'\]"),
        ("block_based", (16, 8, 3, 3), {}, r"'block_based' does not fit layer 'L' \(conv.*\['block_punched', 'filter', 'pattern', 'unstructured'\]"),
        ("block_punched", (16, 8), {}, r"'block_punched' does not fit layer 'L' \(fc"),
        ("block_punched", (6, 3, 3, 3), {}, r"block \(8, 4\) is larger than the whole layer \(6 x 3.*no larger than \(6, 3\)"),
        ("block_based", (10, 3), {}, r"block \(16, 4\) is larger than the whole layer"),
        ("block_punched", (16, 8, 3, 3), {"block": (0, 4)}, r"block=\(0, 4\): expected two positive integers"),
        ("block_punched", (16, 8, 3, 3), {"block": (8,)}, r"block=\(8,\): expected two positive integers"),
        ("block_punched", (16, 8, 3, 3), {"block": "84"}, r"block='84': expected two positive integers"),
        ("block_based", (16, 8), {"block": (8, 4), "prune": "diag"}, r"prune='diag': accepted values are \['columns', 'rows'\]"),
        ("block_based", (16, 8), {"block": (8, 4), "balanced": "yes"}, r"balanced='yes': expected True or False"),
        ("pattern", (16, 8, 3, 3), {"k": 0}, r"k=0: the library size must be an integer in \[1, 56\]"),
        ("pattern", (16, 8, 3, 3), {"k": 57}, r"k=57"),
        ("unstructured", (16, 8, 3, 3), {"block": (8, 4)}, r"unknown parameter\(s\) \['block'\]; accepted: none"),
        ("pattern", (16, 8, 3, 3), {"blok": 1}, r"unknown parameter\(s\) \['blok'\]; accepted: \['k'\]"),
    ],
)
def test_refusals(scheme, shape, kwargs, match):
    with pytest.raises(SchemeError, match=match):
        get_scheme(scheme)(_weight(shape), 3, layer_name="L", **kwargs)


@pytest.mark.parametrize("rate", [0.5, 0, -2, float("nan"), float("inf"), "3", True, None])
def test_bad_rate(rate):
    with pytest.raises(SchemeError, match=r"rate=.* for layer 'L' \(scheme 'filter'\): expected a finite number >= 1"):
        get_scheme("filter")(_weight((8, 4, 3, 3)), rate, layer_name="L")


def test_bad_inputs():
    with pytest.raises(SchemeError, match=r"unknown scheme 'blocky'; registered schemes: \['block_based'"):
        get_scheme("blocky")
    with pytest.raises(SchemeError, match=r"weight of shape \[2, 3, 4\] is neither a Linear"):
        get_scheme("filter")(torch.zeros(2, 3, 4), 2, layer_name="L")
    with pytest.raises(SchemeError, match=r"weight dtype torch.int64 is not floating point"):
        get_scheme("filter")(torch.zeros(2, 3, dtype=torch.long), 2, layer_name="L")
    with pytest.raises(SchemeError, match=r"weight must be a torch.Tensor, got list"):
        get_scheme("filter")([1.0, 2.0], 2, layer_name="L")
    with pytest.raises(SchemeError, match=r"kind='dense' for layer 'L': accepted kinds are"):
        get_scheme("filter")(torch.zeros(2, 3), 2, layer_name="L", kind="dense")
    with pytest.raises(SchemeError, match=r"kind='dense': accepted kinds are"):
        schemes_for_kind("dense")
    with pytest.raises(SchemeError, match=r"weight of shape \[3\] is neither"):
        weight_kind(torch.zeros(3))
    with pytest.raises(ValueError, match=r"a scheme named 'filter' is already registered"):
        register_scheme("filter", applies_to={"fc"})(lambda weight, rate: weight)
    with pytest.raises(ValueError, match=r"applies_to=\['gru'\] must be a non-empty subset"):
        register_scheme("x", applies_to={"gru"})


def test_docstring_examples_run():
    import doctest

    from npas_lightning.schemes import block_based, block_punched, registry

    for module in (registry, block_punched, block_based):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
