"""The schedule rule for every fused TIR function that is not a project kernel.

Elementwise chains, padding/cropping, pooling, softmax and the SE block's reduce and gate: inline
what can be inlined, then per block run one channel plane per parallel iteration and vectorise a
row when its width divides by a vector width (or the whole plane when every access is contiguous
over it), so no div/mod gathers or predicated vectors are emitted. A producer feeding a pad /
stride-phase copy is computed inside that copy's channel loop; reductions accumulate in vector
lanes (rfactor) where the plane allows. Last, a row that no vector width divides (7, 14, 30, 57,
114 wide) runs its longest prefix of whole vectors vectorised and the rest scalar (a loop partition,
:data:`VECTORIZE_RAGGED_ROWS`): LLVM vectorised such rows itself, with gathers and masks.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["SERIAL_MAX_ELEMENTS", "VECTORIZE_RAGGED_ROWS", "partition_width", "schedule_generic",
           "schedule_module"]

log = logging.getLogger(__name__)

#: rows no vector width divides run a vectorised prefix and a scalar rest (:func:`_vectorize_ragged_rows`;
#: ``bench_function_breakdown.py --compare ragged-rows`` times the models without it)
VECTORIZE_RAGGED_ROWS = True

#: a block writing at most this many elements runs on one thread (the squeeze-excite gates and
#: bias + activation passes on ``[1, C, 1, 1]`` tensors: less work than a parallel launch costs;
#: ``bench_function_breakdown.py --compare serial-small``). 0: every block parallel
SERIAL_MAX_ELEMENTS = 4096


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


def _vector_width(ext: int | None, lanes: int) -> int | None:
    """The widest vector width that divides ``ext`` (no predicated vectors), or ``None``."""
    return next((w for w in (lanes, 8, 4) if ext and ext % w == 0 and ext >= w), None)


def _vectorize_innermost(sch, loops, lanes: int) -> list:
    """Vectorise the innermost loop when its own extent divides by a vector width; returns the
    loops left serial/parallel (the vector loop excluded)."""
    width = _vector_width(_extent(sch, loops[-1]), lanes)
    if width is None:
        return list(loops)
    rest, vec = sch.split(loops[-1], [None, width])
    sch.vectorize(vec)
    return [*loops[:-1], rest]


def _leaf_blocks(sch) -> list[str]:
    """Names of the scheduled function's blocks that hold no other block."""
    import tvm_ffi
    from tvm.s_tir import SBlock

    names: list[str] = []
    tvm_ffi.structural_walk(sch.mod["main"].body, [(SBlock, lambda node: names.append(node.name_hint))],
                            order="post")
    return [n for n in names if not sch.get_child_blocks(sch.get_sblock(n))]


def _vectorize_ragged_rows(sch, lanes: int) -> None:
    """The last step: every spatial block whose innermost loop still runs serially over a row that
    no vector width divides (14, 30, 57, 114: LLVM vectorised those with gathers and masks) runs a
    prefix of whole vectors and the rest scalar (:func:`_partition_vectorize`)."""
    from tvm.tirx import ForKind

    for name in _leaf_blocks(sch):
        block = sch.get_sblock(name)
        if any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars):  # reductions have their own rule
            continue
        loops = sch.get_loops(block)
        if not loops:
            continue
        loop, ext = sch.get(loops[-1]), _extent(sch, loops[-1])
        if loop.kind != ForKind.SERIAL or ext is None or ext <= 4 or _vector_width(ext, lanes) is not None:
            continue
        if type(loop.body).__name__ != "SBlockRealize":  # more than this block in the loop
            continue
        try:
            _partition_vectorize(sch, loops[-1], ext, lanes)
        except Exception:  # noqa: BLE001 - a loop TVM cannot partition stays serial
            log.debug("ragged row of %s left serial", name, exc_info=True)


def partition_width(ext: int, lanes: int = 16) -> int | None:
    """The vector width for a row of ``ext`` that no width divides: the one needing the fewest
    vector plus scalar steps, wider on a tie (``None`` when the row is shorter than 4).

    Example:
        >>> [partition_width(e) for e in (14, 30, 57, 114, 3)]
        [4, 8, 8, 16, None]
    """
    widths = [w for w in (lanes, 8, 4) if ext >= w]
    return min(widths, key=lambda w: (ext // w + ext % w, -w)) if widths else None


def _partition_vectorize(sch, loop, ext: int, lanes: int) -> None:
    """Split ``loop`` into its longest prefix of whole vectors of :func:`partition_width`,
    vectorised, and the scalar rest."""
    w = partition_width(ext, lanes)
    if w is None:
        return
    parts = sch.loop_partition(loop, [ext - ext % w, None])
    _, vec = sch.split(parts[0], [None, w])
    sch.vectorize(vec)


def _contiguous_rows(stmt, outer_var, inner_var, inner_extent: int) -> bool:
    """True when every buffer access of block ``stmt`` is either independent of the two iteration
    variables or walks memory contiguously in row-major (outer, inner) order (row stride equals the
    row width): fusing their loops then gives a ramp index, not a div/mod gather per lane."""
    from tvm import sym

    analyzer = sym.Analyzer()
    for region in [*stmt.reads, *stmt.writes]:
        try:
            shape = [int(d) for d in region.source.shape]
            if any(int(rg.extent) != 1 for rg in region.region):
                return False
        except (TypeError, ValueError):
            return False
        flat, stride = None, 1  # row-major offset, in the indices' own integer type
        for rg, dim in zip(reversed(list(region.region)), reversed(shape), strict=True):
            term = rg.min * stride
            flat = term if flat is None else flat + term
            stride *= dim
        if flat is None:
            continue
        coeffs = sym.detect_linear_equation(flat, [outer_var, inner_var])
        if len(coeffs) != 3:
            return False
        try:
            a_outer, a_inner = int(analyzer.simplify(coeffs[0])), int(analyzer.simplify(coeffs[1]))
        except (TypeError, ValueError):
            return False
        if (a_outer, a_inner) != (0, 0) and (a_inner, a_outer) != (1, inner_extent):
            return False
    return True


def _fuse_contiguous_rows(sch, block, loops, lanes: int, min_width: int = 8) -> list:
    """Fuse the last two loops (rows x columns of a plane) when the row does not divide by a vector
    width, the plane divides by 8 or more lanes, and every access is contiguous over the plane
    (padding only rows: 16x14 copies as 14 vectors of 16). 4-lane vectors over a fused plane are
    not made: LLVM's own vectorisation of the serial 14-wide rows was as fast or faster."""
    if len(loops) < 2 or _vector_width(_extent(sch, loops[-1]), lanes) is not None:
        return list(loops)
    stmt = sch.get(block)
    iters = list(stmt.iter_vars)
    if len(iters) < 2:
        return list(loops)
    vh, vw = iters[-2], iters[-1]
    h, w = _extent(sch, loops[-2]), _extent(sch, loops[-1])
    if h != int(vh.dom.extent) or w != int(vw.dom.extent) or (_vector_width(h * w, lanes) or 0) < min_width:
        return list(loops)
    if not _contiguous_rows(stmt, vh.var, vw.var, w):
        return list(loops)
    return [*loops[:-2], sch.fuse(loops[-2], loops[-1])]


def _schedule_spatial(sch, block, loops, lanes: int, min_parallel: int = 8, outermost: bool = False):
    """Vectorise the innermost loop when it divides by a vector width, and run one plane per
    parallel iteration: the loops but the last two (a channel of an NCHW tensor) are fused and
    parallelised, widened inward until there are ``min_parallel`` iterations. Returns the
    parallel loop (or ``None``).

    Loops are fused to make a vector only over a contiguous plane (:func:`_fuse_contiguous_rows`),
    and the parallel loop never takes the row loops: a fused index turns every lane (and every row)
    into div/mod index arithmetic, slower than serial rows on every efficientnet_b0 activation
    tried (``benchmarks/bench_function_breakdown.py`` times each function). ``outermost`` starts
    from the first loop instead (a layout block whose producer is computed per channel: stride
    phases or a transposed axis must stay inside the channel's iteration).
    """
    loops = _vectorize_innermost(sch, _fuse_contiguous_rows(sch, block, loops, lanes), lanes)
    k = 1 if outermost else max(1, len(loops) - 2)
    extents = [_extent(sch, lp) or 1 for lp in loops]
    while k < len(loops) and int(np.prod(extents[:k])) < min_parallel:
        k += 1
    outer = loops[:k]
    outer = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    ext = _extent(sch, outer)
    if ext is None or (ext > 1 and not _tiny(sch, block)):
        sch.parallel(outer)
        return outer
    return None


def _tiny(sch, block) -> bool:
    """Whether ``block`` writes at most :data:`SERIAL_MAX_ELEMENTS` elements (then it runs serially)."""
    try:
        size = int(np.prod([int(d) for d in sch.get(block).writes[0].source.shape]))
    except (TypeError, ValueError, IndexError):
        return False
    return size <= SERIAL_MAX_ELEMENTS


def _compute_at_plane(sch, block, consumer_loop, lanes: int) -> bool:
    """Compute a producer inside its data-movement consumer's parallel plane loop (the activation
    of one channel is computed, then padded / phase-split while it is in cache)."""
    try:
        sch.compute_at(block, consumer_loop, preserve_unit_loops=False)
    except Exception:  # noqa: BLE001 - not computable there: scheduled on its own instead
        return False
    loops = sch.get_loops(block)
    depth = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(consumer_loop))]
    own = loops[depth[0] + 1:] if depth else []
    if own:
        _vectorize_innermost(sch, _fuse_contiguous_rows(sch, block, own, lanes), lanes)
    return True


def _rfactor_lanes(sch, block, s_loops, r_loops, lanes: int):
    """Vector accumulators for a reduction (a global average pool: one serial add chain per channel
    is bound by the add latency). The reduction's innermost loop is split by a vector width and the
    lanes become a spatial axis of an rfactor block, summed at the end. Contiguous planes whose row
    does not divide (14x14) are fused first; 7x7 planes stay serial (separate scalar chains were no
    faster). Returns ``(rf_block, loop)`` for
    :func:`decompose_reduction`, or ``None`` when it does not apply."""
    width = _vector_width(_extent(sch, r_loops[-1]), lanes)
    if width is None and len(r_loops) >= 2:
        fused = _fuse_contiguous_rows(sch, block, r_loops, lanes, min_width=4)
        if len(fused) < len(r_loops):
            r_loops = fused
            width = _vector_width(_extent(sch, r_loops[-1]), lanes)
    if width is None:
        return None
    try:
        _, lane = sch.split(r_loops[-1], [None, width])
        rf = sch.rfactor(lane, factor_axis=0)
    except Exception:  # noqa: BLE001 - not a plain commutative reduction
        return None
    loops = sch.get_loops(rf)  # spatial..., reduction..., lane
    sch.vectorize(loops[-1])
    spatial = loops[:len(s_loops)]
    outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if (_extent(sch, outer) or 2) > 1:
        sch.parallel(outer)
    return rf, sch.get_loops(rf)[1]


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
    planes: dict[str, object] = {}  # data-movement block name -> its parallel plane loop
    for info in reversed(infos):  # consumers first, so producers can be computed inside them
        block = info.block_rv
        kinds = info.dom_kind()
        loops = sch.get_loops(block)
        if len(loops) != len(kinds):
            continue
        s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
        r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
        if any(k == "O" for k in kinds) or not s_loops:
            continue
        if not r_loops:
            consumers = [sch.get(c).name_hint for c in sch.get_consumers(block)]
            if len(consumers) == 1 and consumers[0] in planes and \
                    _compute_at_plane(sch, block, planes[consumers[0]], lanes):
                continue
            moves = _is_data_movement(sch, block)
            par = _schedule_spatial(sch, block, s_loops, lanes, outermost=moves)
            if par is not None and moves:
                planes[sch.get(block).name_hint] = par
        else:
            sch.reorder(*s_loops, *r_loops)
            rf = _rfactor_lanes(sch, block, s_loops, r_loops, lanes)
            if rf is not None:
                reductions.append(rf)
                continue
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
    if VECTORIZE_RAGGED_ROWS:
        _vectorize_ragged_rows(sch, lanes)
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
