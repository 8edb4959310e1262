"""Bayesian predictor: GP regression with a Weisfeiler-Lehman subtree kernel (paper section 5.2.4).

A plan is a directed graph: one node per searched layer labelled by its choice
(``filter_type|scheme|rate|block``), edges = the model's data flow (``SearchSpace.edges``, residual
additions included). WL iteration m relabels each node with (its label, sorted labels of its
predecessors); ``phi_m(s)`` is the histogram of the labels of iteration m. With equal weights
``w_m = 1 / (M + 1)`` and the dot product as base kernel (eq. 2)::

    k(s, s') = sum_m w_m <phi_m(s), phi_m(s')>,    normalised: k(s, s') / sqrt(k(s, s) k(s', s'))

The GP (gpytorch ``ExactGP``) takes integer row indices into a precomputed WL feature matrix; the
:class:`WLKernel` turns indices into normalised dot products of the weighted histograms, scaled by a
learned output scale; the noise is learned by a Gaussian likelihood. Targets are standardised.
Acquisition: Expected Improvement over the best observed reward.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Sequence

import gpytorch
import numpy as np
import torch

from npas_lightning.search.space import SearchSpace

__all__ = ["GPPredictor", "WLFeaturizer", "WLKernel", "expected_improvement", "wl_kernel_matrix"]


class WLFeaturizer:
    """WL subtree histograms of labelled directed graphs.

    Args:
        iterations: M (number of relabelling rounds; features of rounds 0..M are used).

    :meth:`matrix` is a pure function of the graphs it is given: columns are the sorted union of
    their subtree labels, so equal inputs give bit-identical kernels (needed for exact resume).
    """

    def __init__(self, iterations: int = 2) -> None:
        if iterations < 0:
            raise ValueError(f"search.predictor.wl_iterations={iterations}: must be >= 0")
        self.iterations = int(iterations)

    def histograms(self, labels: Sequence[str], edges: Sequence[tuple[int, int]]) -> Counter:
        """Counter ``{(m, subtree label): count}`` for m = 0..M (labels are full subtree strings)."""
        preds: list[list[int]] = [[] for _ in labels]
        for i, j in edges:
            preds[j].append(i)
        cur = list(labels)
        hist: Counter = Counter((0, lab) for lab in cur)
        for m in range(1, self.iterations + 1):
            cur = [f"{cur[v]}<({','.join(sorted(cur[u] for u in preds[v]))})" for v in range(len(cur))]
            hist.update((m, lab) for lab in cur)
        return hist

    def matrix(self, graphs: Sequence[tuple[Sequence[str], Sequence[tuple[int, int]]]],
               hists: Sequence[Counter] | None = None) -> torch.Tensor:
        """Weighted feature matrix: row g = concat_m sqrt(w_m) * phi_m(g) (so dot = eq. 2)."""
        if hists is None:
            hists = [self.histograms(lab, e) for lab, e in graphs]
        vocab = {key: i for i, key in enumerate(sorted(set().union(*hists)))} if hists else {}
        x = torch.zeros(len(hists), max(len(vocab), 1), dtype=torch.float64)
        w = math.sqrt(1.0 / (self.iterations + 1))
        for r, h in enumerate(hists):
            for key, c in h.items():
                x[r, vocab[key]] = w * c
        return x


def wl_kernel_matrix(graphs: Sequence[tuple[Sequence[str], Sequence[tuple[int, int]]]], iterations: int = 2,
                     normalise: bool = True) -> torch.Tensor:
    """The WL kernel matrix of ``graphs`` (each ``(node labels, directed edges)``)."""
    x = WLFeaturizer(iterations).matrix(graphs)
    k = x @ x.T
    if normalise:
        d = torch.sqrt(torch.diagonal(k)).clamp_min(1e-12)
        k = k / d[:, None] / d[None, :]
    return k


class WLKernel(gpytorch.kernels.Kernel):
    """Normalised WL kernel over integer indices into a precomputed feature matrix (``set_features``)."""

    has_lengthscale = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("features", torch.zeros(1, 1, dtype=torch.float64))

    def set_features(self, features: torch.Tensor) -> None:
        norms = features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.features = (features / norms).to(torch.float64)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params) -> torch.Tensor:
        f1 = self.features[x1[..., 0].long()]
        f2 = self.features[x2[..., 0].long()]
        if diag:
            return (f1 * f2).sum(-1)
        return f1 @ f2.transpose(-1, -2)


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood, kernel: WLKernel) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel)

    def forward(self, x: torch.Tensor):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI for maximisation: ``(mu - best - xi) Phi(z) + sigma phi(z)``, ``z = (mu - best - xi) / sigma``."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.maximum(np.asarray(std, dtype=np.float64), 1e-12)
    imp = mean - best - xi
    z = imp / std
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return imp * cdf + std * pdf


@contextlib.contextmanager
def _one_thread():
    """GP matrices are tiny (n <= a few hundred): one intra-op thread avoids spin-waits on busy CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GPPredictor:
    """GP + WL kernel predicting the reward of a trajectory of ``space``.

    Args:
        space: the search space (node labels from its choices, edges from its data flow).
        wl_iterations: M.
        train_iters: Adam steps on the exact marginal log-likelihood per fit.
        lr: Adam learning rate.
        xi: EI exploration margin (in standardised reward units).
    """

    def __init__(self, space: SearchSpace, *, wl_iterations: int = 2, train_iters: int = 50, lr: float = 0.1,
                 xi: float = 0.01) -> None:
        if train_iters < 0:
            raise ValueError(f"search.predictor.train_iters={train_iters}: must be >= 0")
        self.space = space
        self.featurizer = WLFeaturizer(wl_iterations)
        self.train_iters = int(train_iters)
        self.lr = float(lr)
        self.xi = float(xi)
        self._graphs: dict[tuple[int, ...], tuple[list[str], tuple]] = {}
        self._hists: dict[tuple[int, ...], Counter] = {}
        self._train: list[tuple[int, ...]] = []
        self._y: np.ndarray = np.zeros(0)
        self._model: _ExactGP | None = None
        self._likelihood = None
        self._kernel: WLKernel | None = None
        self.hyper: dict[str, float] = {}

    def graph(self, trajectory: Sequence[int]) -> tuple[list[str], tuple]:
        traj = tuple(trajectory)
        if traj not in self._graphs:
            self._graphs[traj] = ([c.label() for c in self.space.choices_of(traj)], self.space.edges)
        return self._graphs[traj]

    def _matrix(self, trajectories: Sequence[tuple[int, ...]]) -> torch.Tensor:
        hists = []
        for t in trajectories:
            if t not in self._hists:
                self._hists[t] = self.featurizer.histograms(*self.graph(t))
            hists.append(self._hists[t])
        return self.featurizer.matrix([], hists=hists)

    @property
    def n_train(self) -> int:
        return len(self._train)

    def fit(self, trajectories: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        """(Re)fit the GP on all data from a fixed initialisation (deterministic)."""
        with _one_thread():
            self._fit(trajectories, rewards)

    def _fit(self, trajectories: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        if len(trajectories) != len(rewards):
            raise ValueError(f"GPPredictor.fit: {len(trajectories)} trajectories but {len(rewards)} rewards")
        if len(trajectories) < 2:
            raise ValueError(f"GPPredictor.fit: need at least 2 evaluated plans, got {len(trajectories)}")
        self._train = [tuple(t) for t in trajectories]
        y = np.asarray(rewards, dtype=np.float64)
        self._mu, self._sd = float(y.mean()), float(y.std()) or 1.0
        self._y = (y - self._mu) / self._sd
        self._kernel = WLKernel()
        self._kernel.set_features(self._matrix(self._train))
        x = torch.arange(len(self._train), dtype=torch.float64)[:, None]
        yt = torch.as_tensor(self._y)
        self._likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-4)).double()
        self._model = _ExactGP(x, yt, self._likelihood, self._kernel).double()
        self._model.train()
        self._likelihood.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self._likelihood, self._model)
        params = [p for p in self._model.parameters() if p.requires_grad]
        m1 = [torch.zeros_like(p) for p in params]
        m2 = [torch.zeros_like(p) for p in params]
        b1, b2 = 0.9, 0.999
        # plain Adam written out: torch.optim's first construction imports torch._dynamo (~4 s per process)
        with gpytorch.settings.cholesky_jitter(1e-6):
            for it in range(1, self.train_iters + 1):
                loss = -mll(self._model(x), yt)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                        a.mul_(b1).add_(g, alpha=1 - b1)
                        b.mul_(b2).addcmul_(g, g, value=1 - b2)
                        step = self.lr * math.sqrt(1 - b2**it) / (1 - b1**it)
                        p.sub_(step * a / (b.sqrt() + 1e-8))
        self._model.eval()
        self._likelihood.eval()
        self.hyper = {"outputscale": float(self._model.covar_module.outputscale.detach()),
                      "noise": float(self._likelihood.noise.item()),
                      "mean": float(self._model.mean_module.constant.item())}

    def predict(self, trajectories: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of the reward (original units) of ``trajectories``."""
        with _one_thread():
            return self._predict(trajectories)

    def _predict(self, trajectories: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        if self._model is None:
            raise RuntimeError("GPPredictor.predict called before fit")
        trajs = [tuple(t) for t in trajectories]
        feats = self._matrix(self._train + trajs)
        self._kernel.set_features(feats)
        self._model.prediction_strategy = None  # features changed shape: rebuild the cached solves
        x = torch.arange(len(self._train), len(self._train) + len(trajs), dtype=torch.float64)[:, None]
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.cholesky_jitter(1e-6):
            post = self._likelihood(self._model(x))
            mean = post.mean.numpy() * self._sd + self._mu
            std = post.variance.clamp_min(0).sqrt().numpy() * self._sd
        return mean, std

    def expected_improvement(self, trajectories: Sequence[Sequence[int]]) -> np.ndarray:
        """EI of each trajectory over the best observed reward."""
        mean, std = self.predict(trajectories)
        best = float(self._y.max()) * self._sd + self._mu
        return expected_improvement(mean, std, best, self.xi * self._sd)

    def state_dict(self) -> dict:
        return {"train": [list(t) for t in self._train], "y": [float(v) * self._sd + self._mu for v in self._y]
                if len(self._y) else [], "hyper": dict(self.hyper)}
