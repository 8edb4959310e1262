"""WL kernel (symmetry, PSD, hand computation) and the GP + EI predictor."""

import math

import numpy as np
import pytest
import torch

from npas_lightning.search.predictor import (
    GPPredictor,
    WLFeaturizer,
    WLKernel,
    expected_improvement,
    wl_kernel_matrix,
)
from npas_lightning.search.space import Choice, LayerSpace, SearchSpace


def _random_graph(rng, n_nodes: int):
    labels = [str(rng.choice(["a", "b", "c"])) for _ in range(n_nodes)]
    edges = [(i, j) for i in range(n_nodes) for j in range(i + 1, n_nodes) if rng.random() < 0.3]
    return labels, edges


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_wl_kernel_symmetric_psd_on_random_graphs(iterations):
    rng = np.random.default_rng(iterations)
    graphs = [_random_graph(rng, int(rng.integers(2, 9))) for _ in range(25)]
    k = wl_kernel_matrix(graphs, iterations=iterations)
    assert torch.allclose(k, k.T)
    assert torch.allclose(torch.diagonal(k), torch.ones(25, dtype=k.dtype))
    assert torch.linalg.eigvalsh(k).min() > -1e-9


def test_wl_kernel_equals_hand_computation():
    # A: a -> b ; B: a -> a ; M = 1, equal weights 1/2, dot-product base kernel.
    # iteration 0: phi(A) = {a:1, b:1}, phi(B) = {a:2}         -> <A,B> = 2, <A,A> = 2, <B,B> = 4
    # iteration 1: A: {a<():1, b<(a):1}, B: {a<():1, a<(a):1}   -> <A,B> = 1, <A,A> = 2, <B,B> = 2
    # k(A,B) = (2+1)/2 = 1.5, k(A,A) = 2, k(B,B) = 3, normalised 1.5 / sqrt(6)
    graphs = [(["a", "b"], [(0, 1)]), (["a", "a"], [(0, 1)])]
    raw = wl_kernel_matrix(graphs, iterations=1, normalise=False)
    assert torch.allclose(raw, torch.tensor([[2.0, 1.5], [1.5, 3.0]], dtype=raw.dtype))
    norm = wl_kernel_matrix(graphs, iterations=1)
    assert float(norm[0, 1]) == pytest.approx(1.5 / math.sqrt(6.0))


def test_wl_direction_and_residual_edges_matter():
    chain = (["a", "b", "c"], [(0, 1), (1, 2)])
    residual = (["a", "b", "c"], [(0, 1), (1, 2), (0, 2)])
    k = wl_kernel_matrix([chain, residual], iterations=1)
    assert float(k[0, 1]) < 1.0 - 1e-6


def test_gpytorch_kernel_matches_matrix():
    rng = np.random.default_rng(0)
    graphs = [_random_graph(rng, 5) for _ in range(6)]
    feats = WLFeaturizer(2).matrix(graphs)
    kern = WLKernel()
    kern.set_features(feats)
    idx = torch.arange(6, dtype=torch.float64)[:, None]
    with torch.no_grad():
        dense = kern(idx, idx).to_dense()
        diag = kern(idx, idx, diag=True)
    assert torch.allclose(dense, wl_kernel_matrix(graphs, iterations=2))
    assert torch.allclose(diag, torch.ones(6, dtype=torch.float64))


def test_expected_improvement_properties():
    ei = expected_improvement(np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.1, 1.0]), best=1.0)
    assert (ei >= 0).all()
    assert ei[3] > ei[1] > ei[0]
    assert ei[1] > ei[2]  # same mean, more uncertainty -> more expected improvement
    assert ei[1] == pytest.approx(1.0 / math.sqrt(2 * math.pi))


def test_gp_predictor_learns_a_graph_function():
    choices = (Choice("keep", "unstructured", 1.0),) + tuple(
        Choice("keep", s, r) for s in ("filter", "pattern") for r in (2.0, 5.0))
    space = SearchSpace([LayerSpace(f"l{i}", "conv", choices) for i in range(6)], [(i, i + 1) for i in range(5)])
    rng = np.random.default_rng(0)
    trajs = [space.random_trajectory(rng) for _ in range(50)]
    y = [-sum(space.choice(d, i).rate for d, i in enumerate(t)) / 30 for t in trajs]
    gp = GPPredictor(space, train_iters=30)
    gp.fit(trajs[:35], y[:35])
    mean, std = gp.predict(trajs[35:])
    assert (std > 0).all()
    rho = np.corrcoef(np.argsort(np.argsort(mean)), np.argsort(np.argsort(y[35:])))[0, 1]
    assert rho > 0.7
    with pytest.raises(ValueError, match="at least 2"):
        gp.fit(trajs[:1], y[:1])
