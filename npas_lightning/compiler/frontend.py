"""PyTorch -> Relax: ``torch.export``, unsupported-op check, import, parameter binding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import CompileError, UnsupportedOpError

__all__ = ["ImportedModel", "export_program", "import_model", "layer_names", "check_supported", "sparse_schemes"]

_CONV_TARGETS = {"conv2d", "convolution", "_convolution", "sparse_conv2d"}
_LINEAR_TARGETS = {"linear", "addmm", "mm", "matmul", "sparse_linear"}


@dataclass
class ImportedModel:
    mod: object  # tvm.IRModule with parameters bound as constants
    program: torch.export.ExportedProgram
    names: dict[str, list[str]]
    #: module name -> pruning scheme of the model's sparse layers (:mod:`npas_lightning.sparse`)
    sparse: dict[str, str] = field(default_factory=dict)


def export_program(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    if not isinstance(model, nn.Module):
        raise CompileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dtype != torch.float32:
        raise CompileError(
            f"example_input must be a float32 torch.Tensor, got "
            f"{type(example_input).__name__}{'' if not isinstance(example_input, torch.Tensor) else ' ' + str(example_input.dtype)}"
        )
    with torch.no_grad():
        return torch.export.export(model.eval(), (example_input,))


def _module_of(node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top-level>", ""
    path, typ = list(stack.values())[-1]
    typ_name = getattr(typ, "__name__", None) or str(typ).rsplit(".", 1)[-1].strip("'>")
    return str(path), typ_name


def _target_name(node) -> str:
    t = node.target
    return getattr(t, "__name__", str(t))


def check_supported(program: torch.export.ExportedProgram) -> None:
    """Raise :class:`UnsupportedOpError` for the first op TVM's importer cannot convert."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    from .sparse_import import SPARSE_OPS

    supported = set(ExportedProgramImporter().create_convert_map().keys()) | set(SPARSE_OPS.values())
    for node in program.graph.nodes:
        if node.op == "call_function" and _target_name(node) not in supported:
            module, typ = _module_of(node)
            op = str(node.target)
            raise UnsupportedOpError(op if op.startswith("aten") else _target_name(node), module, typ)


def layer_names(program: torch.export.ExportedProgram) -> dict[str, list[str]]:
    """Qualified module names of conv and linear ops in graph order (matches the Relax op order)."""
    out: dict[str, list[str]] = {"conv2d": [], "linear": []}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        base = _target_name(node).split(".")[0]
        if base in _CONV_TARGETS:
            out["conv2d"].append(_module_of(node)[0])
        elif base in _LINEAR_TARGETS:
            out["linear"].append(_module_of(node)[0])
    return out


def import_model(model: nn.Module, example_input: torch.Tensor) -> ImportedModel:
    """Export, check ops, import to Relax and bind the parameters as constants.

    Sparse layers (:mod:`npas_lightning.sparse`, ``torch.ops.npas.*`` custom ops) are converted by
    :func:`~npas_lightning.compiler.sparse_import.sparse_convert_map`.
    """
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from .sparse_import import has_sparse_ops, sparse_convert_map

    program = export_program(model, example_input)
    check_supported(program)
    custom = sparse_convert_map(program) if has_sparse_ops(program) else None
    mod = from_exported_program(program, keep_params_as_input=True, unwrap_unit_return_tuple=True,
                                custom_convert_map=custom)
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else 1
    values = params.get("main", [])
    bind = {p.name: np.asarray(v.numpy()) for p, v in zip(main.params[num_input:], values, strict=False)}
    if bind:
        mod = relax.transform.BindParams("main", bind)(mod)
    return ImportedModel(mod, program, layer_names(program), sparse_schemes(model))


def sparse_schemes(model: nn.Module) -> dict[str, str]:
    """``{module name: scheme}`` of the sparse custom-op layers in ``model``."""
    from npas_lightning.sparse import SparseConv2d, SparseLinear

    return {name: str(m.scheme) for name, m in model.named_modules() if isinstance(m, (SparseConv2d, SparseLinear))}
