"""Data-flow edges between searched layers (the graph the WL kernel compares).

The model is traced with ``torch.fx`` treating every searched layer as a leaf; for each searched
layer we find the nearest searched layers upstream of its input, walking through everything else
(BN, activations, pooling, squeeze-excite gates, residual ``add`` ...). A residual addition
``y = f(x) + x`` therefore gives edges from both the branch's last layer and the layer that produced
``x`` to whatever consumes ``y``. Layers left out of the search are walked through, not nodes.

If the model cannot be traced symbolically, the edges fall back to the execution-order chain
(layer i -> layer i+1) and the method is reported as ``"chain"`` (it enters the space fingerprint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx
from torch import nn

__all__ = ["layer_edges"]


class _LeafTracer(torch.fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self._leaves or super().is_leaf_module(m, qualname)


def fx_layer_edges(model: nn.Module, names: Sequence[str]) -> list[tuple[int, int]]:
    """Edges (i, j) between ``names`` from a torch.fx trace of ``model`` (raises if untraceable)."""
    index = {n: i for i, n in enumerate(names)}
    graph = _LeafTracer(set(names)).trace(model)
    upstream: dict[torch.fx.Node, frozenset[int]] = {}
    edges: set[tuple[int, int]] = set()
    for node in graph.nodes:
        srcs: set[int] = set()
        for inp in node.all_input_nodes:
            srcs |= upstream.get(inp, frozenset())
        if node.op == "call_module" and node.target in index:
            j = index[node.target]
            edges.update((i, j) for i in srcs if i != j)
            upstream[node] = frozenset({j})
        else:
            upstream[node] = frozenset(srcs)
    seen = {n.target for n in graph.nodes if n.op == "call_module"}
    missing = [n for n in names if n not in seen]
    if missing:
        raise RuntimeError(f"fx trace did not call layer(s) {missing[:5]}")
    return sorted(edges)


def layer_edges(model: nn.Module, names: Sequence[str]) -> tuple[list[tuple[int, int]], str]:
    """``(edges, method)``: fx data-flow edges when the model traces, else the chain fallback."""
    try:
        return fx_layer_edges(model, names), "fx"
    except Exception:  # noqa: BLE001 - any tracing failure means: use the documented fallback
        return [(i, i + 1) for i in range(len(names) - 1)], "chain"
