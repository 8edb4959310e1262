"""Relax converters for the sparse layers' custom ops (``torch.ops.npas.sparse_conv2d`` / ``sparse_linear``).

``from_exported_program(..., custom_convert_map=sparse_convert_map(program))`` turns each call into the
ordinary Relax ``conv2d`` / ``matmul`` whose constant weight is the layer's compact weights scattered to
their positions (the removed ones exactly zero). Batch-norm folding then works as for any conv, and the
kernel rewrite (:mod:`npas_lightning.compiler.rewrite`) lowers the layer to the block-sparse kernel the
plan asks for, building its index buffers from those zeros: nothing removed is ever read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["SPARSE_OPS", "has_sparse_ops", "sparse_convert_map"]

#: ``node.target.__name__`` of the custom ops, as the importer looks them up.
SPARSE_OPS = {"conv2d": "sparse_conv2d.default", "linear": "sparse_linear.default"}


def has_sparse_ops(program: torch.export.ExportedProgram) -> bool:
    names = set(SPARSE_OPS.values())
    return any(n.op == "call_function" and getattr(n.target, "__name__", "") in names for n in program.graph.nodes)


def _tensor_of(program: torch.export.ExportedProgram) -> Callable[[Any], np.ndarray | None]:
    """Value of a parameter/buffer/constant placeholder node of ``program`` (None for other nodes)."""
    sig = program.graph_signature
    table = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    state = {**program.state_dict, **program.constants}

    def get(node) -> np.ndarray | None:
        if node is None:
            return None
        key = table.get(getattr(node, "name", None))
        if key is None or key not in state:
            return None
        return state[key].detach().cpu().numpy()

    return get


def _dense(values: np.ndarray, index: np.ndarray, reduction: int) -> np.ndarray:
    """[F, R] float32 weight: the sparse layer's own reconstruction (padding index R dropped)."""
    from npas_lightning.sparse import dense_from_compact

    dense = dense_from_compact(torch.from_numpy(values).float(), torch.from_numpy(index).long(), reduction)
    return dense.numpy()


def sparse_convert_map(program: torch.export.ExportedProgram) -> dict[str, Callable]:
    """``custom_convert_map`` for :func:`tvm.relax.frontend.torch.from_exported_program`."""
    from tvm import relax

    value_of = _tensor_of(program)

    def constants(node, what: str):
        values, index, bias = (value_of(a) for a in node.args[1:4])
        if values is None or index is None:
            raise ValueError(f"{what}: compact weights and indices must be module parameters/buffers "
                             f"(node {node.name})")
        if node.args[3] is not None and bias is None:
            raise ValueError(f"{what}: bias must be a module parameter (node {node.name})")
        return values, index, bias

    def conv(node, importer) -> relax.Var:
        x = importer.env[node.args[0]]
        values, index, bias = constants(node, "npas.sparse_conv2d")
        in_channels, kernel, stride, padding, groups = node.args[4:9]
        kh, kw = (int(k) for k in kernel)
        f = values.shape[0]
        cg = int(in_channels) // int(groups)
        weight = _dense(values, index, cg * kh * kw).reshape(f, cg, kh, kw)
        bb = importer.block_builder
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), strides=[int(s) for s in stride],
                                       padding=[int(p) for p in padding], groups=int(groups)))
        if bias is not None:
            y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, f, 1, 1).astype("float32"))))
        return y

    def linear(node, importer) -> relax.Var:
        x = importer.env[node.args[0]]
        values, index, bias = constants(node, "npas.sparse_linear")
        weight = _dense(values, index, int(node.args[4]))
        bb = importer.block_builder
        y = bb.emit(relax.op.matmul(x, relax.const(np.ascontiguousarray(weight.T))))
        if bias is not None:
            y = bb.emit(relax.op.add(y, relax.const(bias.astype("float32"))))
        return y

    return {SPARSE_OPS["conv2d"]: conv, SPARSE_OPS["linear"]: linear}
