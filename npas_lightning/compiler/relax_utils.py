"""Helpers shared by the project's Relax passes."""

from __future__ import annotations

from typing import Any


def rewrite_relax_functions(mutator: Any) -> Any:
    """Visit every Relax function of ``mutator.mod_`` with ``mutator``; return the rewritten IRModule.

    ``mutator`` is a ``PyExprMutator`` (``@mutator``-decorated) constructed on that module.
    """
    from tvm import relax

    for gv, func in mutator.mod_.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
