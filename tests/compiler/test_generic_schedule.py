"""The schedule rule for fused non-kernel functions: same numbers as the unscheduled function, and the
loop structure the rule promises (plane-parallel rows, producer computed inside its layout consumer,
vector accumulation for pooling, no div/mod vector gathers)."""

import numpy as np
import pytest
import tvm
from tvm import te, topi

from npas_lightning.compiler import generic_schedule
from npas_lightning.compiler.generic_schedule import partition_width, schedule_generic
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=2).tvm_target
DEV = tvm.cpu()


@pytest.fixture(autouse=True)
def parallel_small_blocks(monkeypatch):
    """The loop-structure tests use small tensors, which the rule would otherwise run serially
    (``SERIAL_MAX_ELEMENTS``; its own tests set it back)."""
    monkeypatch.setattr(generic_schedule, "SERIAL_MAX_ELEMENTS", 0)


def _run(func, inputs, out_shape):
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=TARGET)
    out = tvm.runtime.empty(out_shape, "float32", DEV)
    lib(*[tvm.runtime.tensor(a, DEV) for a in inputs], out)
    return out.numpy()


def _check(tensors, out, *, seed=0):
    """Scheduled and unscheduled builds agree on random inputs; returns the scheduled script."""
    func = te.create_prim_func([*tensors, out])
    scheduled = schedule_generic(func, 16)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in tensors]
    shape = [int(d) for d in out.shape]
    np.testing.assert_allclose(_run(scheduled, inputs, shape), _run(func, inputs, shape), rtol=1e-6, atol=1e-6)
    return scheduled.script()


def _silu(x, b):
    y = topi.add(x, b)
    return topi.multiply(y, topi.sigmoid(y))


@pytest.mark.parametrize("hw", [16, 7])
def test_activation_then_pad_is_computed_per_plane(hw):
    x = te.placeholder((1, 12, hw, hw), name="x")
    b = te.placeholder((1, 12, 1, 1), name="b")
    out = topi.nn.pad(_silu(x, b), [0, 0, 1, 1], [0, 0, 2, 1])
    script = _check([x, b], out)
    assert script.count("T.parallel(") == 1  # the activation runs inside the pad's channel loop


def test_stride_phase_split_keeps_each_plane_computed_once():
    x = te.placeholder((1, 8, 12, 12), name="x")
    b = te.placeholder((1, 8, 1, 1), name="b")
    y = topi.nn.pad(_silu(x, b), [0, 0, 1, 1], [0, 0, 1, 1])
    y = topi.transpose(topi.reshape(y, (1, 8, 7, 2, 7, 2)), (0, 1, 3, 5, 2, 4))
    script = _check([x, b], y)
    assert script.count("T.parallel(") == 1
    assert "T.parallel(8)" in script  # one channel per iteration, its four phases inside


def test_odd_rows_vectorise_a_prefix_not_through_div_mod():
    """A 7-wide row: one vector of 4, then 3 scalars (a loop partition), no fused div/mod index."""
    x = te.placeholder((1, 24, 7, 7), name="x")
    b = te.placeholder((1, 24, 1, 1), name="b")
    script = _check([x, b], _silu(x, b))
    assert "T.vectorized(4)" in script and "range(4, 7)" in script
    assert "//" not in script and "%" not in script
    assert "T.parallel(24)" in script


def test_ragged_rows_stay_serial_without_the_flag(monkeypatch):
    monkeypatch.setattr(generic_schedule, "VECTORIZE_RAGGED_ROWS", False)
    x = te.placeholder((1, 24, 7, 7), name="x")
    b = te.placeholder((1, 24, 1, 1), name="b")
    assert "T.vectorized" not in _check([x, b], _silu(x, b))


def test_residual_add_into_padded_planes_vectorises_both_rows():
    """The function between a split projection and the next block (mobilenetv3 @14): the two partial
    sums' rows (stride 16) plus the residual read inside the padded input, then padded to 19x16
    planes. The 14-wide add rows run as vectors of 4 with a scalar rest; the 16-wide pad rows as one
    vector of 16."""
    parts = te.placeholder((2, 1, 8, 14 * 16), name="parts")
    res = te.placeholder((1, 8, 19, 16), name="res")
    added = te.compute((1, 8, 14, 14), lambda n, c, h, w: parts[0, n, c, h * 16 + w] + parts[1, n, c, h * 16 + w]
                       + res[n, c, h + 1, w + 1], name="T_add")
    out = topi.nn.pad(added, [0, 0, 1, 1], [0, 0, 4, 1])
    script = _check([parts, res], out)
    assert "T.vectorized(4)" in script and "T.vectorized(16)" in script


@pytest.mark.parametrize("ext,width", [(7, 4), (14, 4), (30, 8), (57, 8), (114, 16), (3, None)])
def test_partition_width_needs_fewest_steps(ext, width):
    assert partition_width(ext, 16) == width


def test_even_rows_vectorise_the_row_loop():
    x = te.placeholder((1, 4, 8, 32), name="x")
    b = te.placeholder((1, 4, 1, 1), name="b")
    script = _check([x, b], _silu(x, b))
    assert "T.vectorized(16)" in script


@pytest.mark.parametrize("hw,vector", [(16, True), (14, True), (7, False)])
def test_global_average_pool_accumulates_in_vectors(hw, vector):
    x = te.placeholder((1, 10, hw, hw), name="x")
    out = topi.divide(topi.sum(x, axis=(2, 3), keepdims=True), float(hw * hw))
    script = _check([x], out)
    assert ("_rf" in script) is vector
    assert ("T.vectorized" in script) is vector


def test_contiguous_plane_fuses_rows_to_vectorise():
    """Padding only rows (a row of 14 does not divide by a vector, the 16x14 plane does): the copy
    runs as vectors of 16 over the fused plane, because both sides are contiguous."""
    x = te.placeholder((1, 6, 14, 14), name="x")
    out = topi.nn.pad(x, [0, 0, 0, 0], [0, 0, 2, 0])
    script = _check([x], out)
    assert "T.vectorized(16)" in script


def test_strided_columns_are_not_fused():
    """A crop (row stride 18, row width 14) is not contiguous over the plane: rows are not fused into
    vectors of 16 over the plane; each row runs vectors of 4 and a scalar rest."""
    x = te.placeholder((1, 6, 14 * 18), name="x")
    out = te.compute((1, 6, 14, 14), lambda n, c, h, w: x[n, c, h * 18 + w] * 2.0, name="crop")
    script = _check([x], out)
    assert "T.vectorized(16)" not in script and "T.vectorized(4)" in script


@pytest.mark.parametrize("channels,serial", [(72, True), (960, True), (8192, False)])
def test_tiny_blocks_run_on_the_calling_thread(monkeypatch, channels, serial):
    """A squeeze-excite gate on [1, C, 1, 1]: at most SERIAL_MAX_ELEMENTS outputs run serially."""
    monkeypatch.setattr(generic_schedule, "SERIAL_MAX_ELEMENTS", 4096)
    x = te.placeholder((1, channels, 1, 1), name="x")
    b = te.placeholder((1, channels, 1, 1), name="b")
    assert ("T.parallel" not in _check([x, b], _silu(x, b))) is serial
