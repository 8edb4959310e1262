"""Errors raised by the compiler (all subclasses of ValueError so bad input is uniformly catchable)."""

from __future__ import annotations

__all__ = ["CompileError", "UnsupportedOpError", "NumericsError"]


class CompileError(ValueError):
    """The model cannot be compiled as requested."""


class UnsupportedOpError(CompileError):
    """An operator the TVM frontend cannot import; names the op and the module it came from."""

    def __init__(self, op: str, module: str, module_type: str = ""):
        self.op, self.module, self.module_type = op, module, module_type
        where = f"module {module!r}" + (f" ({module_type})" if module_type else "")
        super().__init__(f"unsupported op {op} in {where}: TVM's Relax frontend has no converter for it; "
                         "replace the module or its op (see the frontend's convert map for supported ops)")


class NumericsError(CompileError):
    """Compiled output differs from PyTorch beyond tolerance."""

    def __init__(self, message: str, report: dict):
        self.report = report
        super().__init__(message)
