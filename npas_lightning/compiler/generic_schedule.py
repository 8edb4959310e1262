"""The schedule rule for every fused TIR function that is not a project kernel.

Elementwise chains, padding/cropping, pooling, softmax and the SE block's reduce and gate: inline
what can be inlined, then per remaining block parallelise the fused outer spatial loops and
vectorise the innermost spatial loop (only when its extent divides by a vector width, so no
predicated vector code is emitted). Reduction loops stay inside the parallel loop.
"""

from __future__ import annotations

import logging

__all__ = ["schedule_generic", "schedule_module"]

log = logging.getLogger(__name__)


def _extent(sch, loop) -> int | None:
    try:
        return int(sch.get(loop).extent)
    except (TypeError, ValueError):
        return None


def _loads_of(stmt, source) -> int:
    """How many loads of ``source`` (a block write region's source) ``stmt`` contains."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad

    count = 0

    def visit(node):
        nonlocal count
        if node.source.same_as(source):
            count += 1

    tvm_ffi.structural_walk(stmt, [(TensorLoad, visit)], order="post")
    return count


def _is_data_movement(sch, block) -> bool:
    """True when the block only moves data: ``out[...] = in[...]`` or a padding ``if_then_else``."""
    from tvm.ir.expr import TensorLoad

    body = sch.get(block).body
    value = getattr(body, "value", None)
    if value is None:
        return False
    if isinstance(value, TensorLoad):
        return True
    op = getattr(value, "op", None)
    if op is not None and "if_then_else" in str(getattr(op, "name", op)):
        args = list(value.args)
        return len(args) == 3 and any(isinstance(a, TensorLoad) for a in args[1:])
    return False


def _inline(sch, infos, max_uses: int = 2):
    """Inline producers into consumers, with two exceptions that keep vector code cheap:

    - arithmetic is never inlined into a data-movement consumer (pad / transpose / reshape /
      crop with gathered indices): the activation is computed once, contiguously and vectorised,
      and the layout block only copies;
    - a producer that a data-movement consumer reads more than ``max_uses`` times stays separate.
    """
    remaining = list(infos)
    changed = True
    while changed:
        changed = False
        for i, info in enumerate(remaining):
            block = info.block_rv
            try:
                writes = sch.get(block).writes
                consumers = sch.get_consumers(block)
            except Exception:  # noqa: BLE001
                continue
            if not consumers or len(writes) != 1:
                continue
            buf = writes[0].source
            producer_moves = _is_data_movement(sch, block)
            blocked = False
            for c in consumers:
                if _is_data_movement(sch, c) and (not producer_moves or _loads_of(sch.get(c).body, buf) > max_uses):
                    blocked = True
            if blocked:
                continue
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 - not inlinable (e.g. a reduction): keep it
                continue
            remaining.pop(i)
            changed = True
            break
    return remaining


def _schedule_spatial(sch, loops, lanes: int) -> None:
    """Parallel over the fused outer loops, vectorise the innermost loop by the widest width that
    divides it (no predicated vectors). A short innermost loop (< one vector) is fused in first."""
    inner_ext = _extent(sch, loops[-1])
    if inner_ext is not None and inner_ext < lanes and len(loops) > 1:
        loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
        inner_ext = _extent(sch, loops[-1])
    width = next((w for w in (lanes, 8, 4) if inner_ext and inner_ext % w == 0 and inner_ext >= w), None)
    inner = loops[-1]
    outer_loops = list(loops[:-1])
    if width is not None:
        rest, vec = sch.split(inner, [None, width])
        sch.vectorize(vec)
        outer_loops.append(rest)
    if outer_loops:
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        ext = _extent(sch, outer)
        if ext is None or ext > 1:
            sch.parallel(outer)


def schedule_generic(func, lanes: int = 16):
    """Return a scheduled copy of ``func`` (or ``func`` itself when no rule applies)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return func
    infos = _inline(sch, infos)
    reductions = []
    for info in infos:
        block = info.block_rv
        kinds = info.dom_kind()
        loops = sch.get_loops(block)
        if len(loops) != len(kinds):
            continue
        s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
        r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
        if any(k == "O" for k in kinds) or not s_loops:
            continue
        sch.reorder(*s_loops, *r_loops)
        if not r_loops:
            _schedule_spatial(sch, s_loops, lanes)
        else:
            fused = sch.fuse(*s_loops)
            total = _extent(sch, fused)
            if total is None or total > 1:
                sch.parallel(fused)
            reductions.append((block, r_loops[0]))
    for block, r_loop in reductions:
        try:
            sch.decompose_reduction(block, r_loop)
        except Exception:  # noqa: BLE001 - a reduction without init stays as it is
            log.debug("decompose_reduction failed", exc_info=True)
    return sch.mod["main"]


def schedule_module(mod, lanes: int = 16):
    """Apply :func:`schedule_generic` to every PrimFunc of ``mod`` without ``npas.kernel``."""
    from tvm import tirx

    out = mod
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs or {}
        if "npas.kernel" in attrs:
            continue
        try:
            new = schedule_generic(func, lanes)
        except Exception:  # noqa: BLE001 - keep the correct unscheduled function
            log.warning("generic schedule failed for %s; left unscheduled", gv.name_hint, exc_info=True)
            continue
        out = _update(out, gv, new)
    return out


def _update(mod, gv, func):
    mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
    mod[gv] = func
    return mod
