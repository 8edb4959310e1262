"""Shared fixtures: every compiler test writes its tile cache into a temporary directory; helpers
that build test models with folded BatchNorm, list the functions a build generates, and prune
random weights with the project's schemes."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _isolated_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NPAS_CACHE_DIR", str(tmp_path / "npas-cache"))


@pytest.fixture
def bn_model():
    """``bn_model(cls)``: ``cls()`` (seeded, eval mode) with non-trivial BatchNorm running statistics,
    so that BN folding into the conv weights and biases is exercised."""

    def build(cls: type[nn.Module]) -> nn.Module:
        torch.manual_seed(0)
        model = cls().eval()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        return model

    return build


@pytest.fixture
def built_function_names():
    """``built_function_names(model, x)``: names of the functions ``build_relax`` generates for
    ``model`` (project kernels, fused elementwise / layout functions, pooling)."""
    from npas_lightning.compiler.frontend import import_model
    from npas_lightning.compiler.pipeline import build_relax
    from npas_lightning.compiler.rewrite import TilePlanner
    from npas_lightning.compiler.targets import resolve_target
    from npas_lightning.compiler.tuning import TileCache

    def names(model: nn.Module, x: torch.Tensor) -> list[str]:
        spec = resolve_target("host", threads=1)
        imported = import_model(model, x)
        result = build_relax(imported.mod, spec, planner=TilePlanner(spec, cache=TileCache()), names=imported.names)
        return [gv.name_hint for gv in result.mod.get_global_vars()]

    return names


def _masked_weight(shape, scheme: str, rate: float, seed: int, **params):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if scheme == "dense":
        return w.numpy()
    from npas_lightning.schemes import get_scheme

    return (w * get_scheme(scheme)(w, rate, **params)).numpy()


@pytest.fixture
def masked_weight():
    """``masked_weight(shape, scheme, rate, seed, **params)``: a seeded random weight pruned by a real
    scheme (pruned entries exactly 0), as NumPy; ``scheme="dense"`` leaves it unpruned."""
    return _masked_weight
