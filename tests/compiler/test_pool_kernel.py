"""The mean over kernel output rows (squeeze-excite squeeze, global pool) as a kernel."""

import doctest

import numpy as np
import pytest

from npas_lightning.compiler import pool_kernel
from npas_lightning.compiler.numerics import _run
from npas_lightning.compiler.pool_kernel import rows_mean_primfunc
from npas_lightning.compiler.targets import resolve_target

TARGET = resolve_target("host", threads=2).tvm_target


@pytest.mark.parametrize("n, c, mp, lanes, keepdims", [
    (1, 8, 64, 16, True),      # four vectors: one per chain
    (1, 5, 112, 16, True),     # seven vectors: a chain gets two, the tail one each
    (2, 3, 32, 16, False),     # fewer vectors than chains, batched, [N, C] out
    (1, 4, 12, 4, True),       # narrow vectors
    (1, 2, 7, 1, True),        # scalars
])
def test_rows_mean_is_the_weighted_sum_of_each_row(n, c, mp, lanes, keepdims):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((n, c, mp)).astype("float32")
    w = rng.random(mp).astype("float32")
    w[-3:] = 0  # garbage columns and the tail weigh 0
    out = _run(rows_mean_primfunc(n, c, mp, lanes, keepdims), TARGET, [y, w],
               (n, c, 1, 1) if keepdims else (n, c))
    np.testing.assert_allclose(out.reshape(n, c), y @ w, rtol=1e-5, atol=1e-6)


def test_rows_mean_ignores_whatever_the_zero_weights_hide():
    y = np.full((1, 2, 32), np.float32(1e30))
    y[:, :, :16] = 2.0
    w = np.zeros(32, "float32")
    w[:16] = 1 / 16
    out = _run(rows_mean_primfunc(1, 2, 32, 16), TARGET, [y.astype("float32"), w], (1, 2, 1, 1))
    np.testing.assert_allclose(out.reshape(2), [2.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("lanes, mp", [(16, 40), (12, 48), (0, 16)])
def test_rows_mean_refuses_rows_that_are_not_whole_vectors(lanes, mp):
    with pytest.raises(ValueError, match=rf"lanes={lanes}, mp={mp}: expected lanes a power of two dividing mp"):
        rows_mean_primfunc(1, 4, mp, lanes)


def test_doctests():
    assert doctest.testmod(pool_kernel).failed == 0


def test_rows_mean_reads_the_stack_scope_when_built(monkeypatch):
    """Like the conv kernels, the pooling kernel keeps its accumulators in ``STACK_SCOPE`` as set when it
    is built; ``clear_kernel_caches`` forgets the memoised one (the benchmarks' ablations rebuild)."""
    from npas_lightning.compiler import conv_kernel
    from npas_lightning.compiler.rewrite import clear_kernel_caches

    clear_kernel_caches()
    assert "alloc_local" not in rows_mean_primfunc(1, 8, 64).script()
    monkeypatch.setattr(conv_kernel, "STACK_SCOPE", "local")
    assert "alloc_local" not in rows_mean_primfunc(1, 8, 64).script()  # memoised
    clear_kernel_caches()
    assert "alloc_local" in rows_mean_primfunc(1, 8, 64).script()
    monkeypatch.undo()
    clear_kernel_caches()
