"""Pack pruned weights for the block-sparse kernels: compact weights + kept reduction indices per tile.

A sparse kernel computes ``ft`` filters (one register tile) at a time and reduces only over the
reduction entries that tile keeps: the union of its filters' nonzero columns. Tiles that keep
different numbers of entries are padded to the largest count ``K`` with a column the tile does not
keep (its weights are all 0 there, so the result is exact). ``counts`` says how many entries of each
row are real: the kernels given ``counts=`` stop there and skip the padding.

Block-punched pruning with a block of ``ft`` filters (or a multiple of it) gives tiles whose
filters share their kept columns exactly, so the packing wastes nothing but the padding; block-based
FC / 1x1 pruning the same with ``ft`` rows. Pattern pruning keeps different kernel positions per
filter: ``reorder=True`` first permutes the filters so that filters with similar kept columns share
a tile (PatDNN's filter-kernel reorder), and ``order`` tells the caller how to un-permute (``None``
when no permutation beats the original order).

Example:
    >>> w = np.zeros((4, 6), "float32"); w[0, 1] = 1; w[1, 3] = 2; w[2, 3] = 3
    >>> p = pack_sparse_rows(w, 2)
    >>> p.kept.tolist(), p.packed[:, :, :].tolist()
    ([[1, 3], [3, 0]], [[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 0.0]]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SparsePacking", "depthwise_block_counts", "pack_sparse_depthwise", "pack_sparse_rows", "reorder_rows"]


@dataclass(frozen=True)
class SparsePacking:
    """Compact weights of a row-sparse matrix ``[F, R]`` packed per tile of ``ft`` filters.

    ``packed[t, k, i]`` is the weight of filter slot ``t*ft + i`` at reduction index ``kept[t, k]``;
    filter slot ``j`` holds original filter ``order[j]`` (``order is None``: slot ``j`` is filter ``j``).
    Slots ``>= F`` (edge tile) hold zeros.
    """

    packed: np.ndarray  # [Fn, K, ft] float32
    kept: np.ndarray  # [Fn, K] int32
    order: np.ndarray | None  # [F] int64 permutation or None
    density: float  # Fn*K*ft / (F*R)
    kept_fraction: float  # nonzeros / (F*R)
    counts: np.ndarray | None = None  # [Fn] int32: real (non-padding) entries at the start of each kept row

    @property
    def work_fraction(self) -> float:
        """Fraction of the dense work a kernel given ``counts`` does (padding skipped): ``sum(counts)*ft / (F*R)``."""
        if self.counts is None:
            return self.density
        return self.density * float(self.counts.sum()) / (self.packed.shape[0] * self.packed.shape[1])

    @property
    def ft(self) -> int:
        return int(self.packed.shape[2])

    @property
    def k(self) -> int:
        return int(self.kept.shape[1])

    def unpack(self, f: int, r: int) -> np.ndarray:
        """The dense ``[F, R]`` matrix this packing represents (original filter order); tests and checks."""
        fn, k, ft = self.packed.shape
        dense = np.zeros((fn, ft, r), dtype="float32")
        np.put_along_axis(dense, np.broadcast_to(self.kept[:, None, :].astype(np.int64), (fn, ft, k)),
                          self.packed.transpose(0, 2, 1), axis=2)
        slots = dense.reshape(fn * ft, r)[:f]
        if self.order is None:
            return slots
        out = np.empty_like(slots)
        out[self.order] = slots
        return out


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _check_matrix(name: str, weight) -> np.ndarray:
    arr = np.asarray(weight)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} of shape {list(arr.shape)}: expected a non-empty 2-D matrix "
                         "[filters, reduction] (a conv weight reshaped to [F, C*KH*KW], or an FC weight [F, C])")
    return arr.astype("float32", copy=False)


def _tile_k(mask: np.ndarray, ft: int) -> int:
    """Largest per-tile union count of ``mask`` rows taken in order, tiles of ``ft``."""
    f, r = mask.shape
    fn = -(-f // ft)
    padded = np.zeros((fn * ft, r), dtype=bool)
    padded[:f] = mask
    return int(padded.reshape(fn, ft, r).any(1).sum(1).max())


def _greedy_seeded(mask: np.ndarray, ft: int) -> np.ndarray:
    """Per tile: the remaining row with the most kept columns seeds it, the ``ft - 1`` remaining rows
    whose union with the seed is smallest join it (one vectorised step per tile)."""
    f = mask.shape[0]
    bits = np.packbits(mask, axis=1)
    counts = np.bitwise_count(bits).sum(1, dtype=np.int64)
    remaining = np.ones(f, dtype=bool)
    order = np.empty(f, dtype=np.int64)
    pos = 0
    while pos < f:  # one iteration per tile
        idx = np.flatnonzero(remaining)
        seed = idx[np.argmax(counts[idx])]
        union = np.bitwise_count(bits[idx] | bits[seed]).sum(1, dtype=np.int64)
        union[idx == seed] = -1  # the seed first
        pick = idx[np.lexsort((idx, counts[idx], union))[:ft]]
        order[pos:pos + len(pick)] = pick
        remaining[pick] = False
        pos += len(pick)
    return order


def _greedy_grow(mask: np.ndarray, ft: int) -> np.ndarray:
    """Per tile: seed as above, then add one row at a time, the one growing the tile's union least
    (one vectorised step per filter, on bit-packed rows)."""
    f = mask.shape[0]
    bits = np.packbits(mask, axis=1)
    counts = np.bitwise_count(bits).sum(1, dtype=np.int64)
    remaining = np.ones(f, dtype=bool)
    order = np.empty(f, dtype=np.int64)
    for pos in range(f):  # one iteration per filter slot
        idx = np.flatnonzero(remaining)
        if pos % ft == 0:
            pick = idx[np.argmax(counts[idx])]
            union = bits[pick].copy()
        else:
            grown = np.bitwise_count(bits[idx] | union).sum(1, dtype=np.int64)
            pick = idx[np.lexsort((idx, -counts[idx], grown))[0]]
            union |= bits[pick]
        order[pos] = pick
        remaining[pick] = False
    return order


def reorder_rows(mask: np.ndarray, ft: int) -> np.ndarray | None:
    """Filter permutation putting rows with similar kept columns into the same tile of ``ft``.

    Candidates: the identity, a lexicographic sort of the row masks, and two greedy groupings (a
    seed row plus its nearest rows; a tile grown one row at a time by the smallest union growth).
    The one with the smallest padded work (largest per-tile union) wins, ties in that order.
    Returns ``order`` (slot ``j`` holds row ``order[j]``), or ``None`` when the identity wins.
    """
    mask = np.asarray(mask, dtype=bool)
    f = mask.shape[0]
    cands: list[np.ndarray | None] = [None, np.lexsort(mask.T[::-1]), _greedy_seeded(mask, ft)]
    if f <= 4096:
        cands.append(_greedy_grow(mask, ft))
    ks = [_tile_k(mask if o is None else mask[o], ft) for o in cands]
    return cands[int(np.argmin(ks))]


def pack_sparse_rows(weight2d: np.ndarray, ft: int, *, reorder: bool = False) -> SparsePacking:
    """Pack ``weight2d [F, R]`` (pruned weights exactly 0) per tile of ``ft`` filters.

    Each tile's kept list is the sorted union of its filters' nonzero columns, padded to the largest
    count ``K`` (>= 1) with columns the tile does not keep. ``reorder=True`` groups similar filters
    first (:func:`reorder_rows`).

    Example:
        >>> w = np.eye(4, dtype="float32")
        >>> p = pack_sparse_rows(w, 2); (p.kept.tolist(), p.density, p.kept_fraction)
        ([[0, 1], [2, 3]], 0.5, 0.25)
    """
    w = _check_matrix("weight2d", weight2d)
    ft = _check_int("ft", ft)
    f, r = w.shape
    mask = w != 0
    order = reorder_rows(mask, ft) if reorder and f > ft else None
    if order is not None:
        w, mask = w[order], mask[order]
    fn = -(-f // ft)
    wp = np.zeros((fn * ft, r), dtype="float32")
    wp[:f] = w
    wp = wp.reshape(fn, ft, r)
    tile_mask = np.zeros((fn * ft, r), dtype=bool)
    tile_mask[:f] = mask
    tile_mask = tile_mask.reshape(fn, ft, r).any(1)  # [Fn, R]
    counts = tile_mask.sum(1)
    k = max(int(counts.max()), 1)
    # kept columns first (sorted), then the unkept ones (sorted): the first K are kept + padding
    kept = np.argsort(~tile_mask, axis=1, kind="stable")[:, :k]
    packed = np.take_along_axis(wp, kept[:, None, :], axis=2).transpose(0, 2, 1)
    return SparsePacking(
        packed=np.ascontiguousarray(packed, dtype="float32"),
        kept=np.ascontiguousarray(kept, dtype="int32"),
        order=order,
        density=fn * k * ft / (f * r),
        kept_fraction=int(mask.sum()) / (f * r),
        counts=counts.astype("int32"),
    )


def _depthwise_blocks(weight: np.ndarray, block: int) -> tuple[np.ndarray, int, np.ndarray]:
    """``(w [C, KH*KW], block, mask [ceil(C/block), KH*KW])``: the validated depthwise weight and block,
    and the kernel positions some channel of each block keeps."""
    arr = np.asarray(weight)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr.reshape(arr.shape[0], -1)
    w = _check_matrix("weight", arr) if arr.ndim == 2 else None
    if w is None:
        raise ValueError(f"weight of shape {list(arr.shape)}: expected a depthwise weight [C, KH*KW] or [C, 1, KH, KW]")
    block = _check_int("block", block)
    c, p = w.shape
    cb = -(-c // block)
    mask = np.zeros((cb * block, p), dtype=bool)
    mask[:c] = w != 0
    return w, block, mask.reshape(cb, block, p).any(1)


def pack_sparse_depthwise(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack a depthwise weight ``[C, KH*KW]`` (or ``[C, 1, KH, KW]``) per block of ``block`` channels.

    Returns ``(packed [C, K] float32, kept [ceil(C/block), K] int32)``: ``kept[b]`` is the sorted
    union of the kernel positions channels ``b*block ... b*block+block-1`` keep, padded to the largest
    count ``K`` (>= 1) with positions the block does not keep (weight 0).

    Example:
        >>> w = np.array([[0, 1, 0, 2], [0, 3, 0, 0], [5, 0, 0, 0]], "float32")
        >>> packed, kept = pack_sparse_depthwise(w, 2); kept.tolist(), packed.tolist()
        ([[1, 3], [0, 1]], [[1.0, 2.0], [3.0, 0.0], [5.0, 0.0]])
    """
    w, block, block_mask = _depthwise_blocks(weight, block)
    k = max(int(block_mask.sum(1).max()), 1)
    kept = np.argsort(~block_mask, axis=1, kind="stable")[:, :k]
    packed = np.take_along_axis(w, kept[np.arange(w.shape[0]) // block], axis=1)
    return np.ascontiguousarray(packed, dtype="float32"), np.ascontiguousarray(kept, dtype="int32")


def depthwise_block_counts(weight: np.ndarray, block: int) -> np.ndarray:
    """``[ceil(C/block)]`` int32: the real entries of each row of :func:`pack_sparse_depthwise`'s
    ``kept`` (the kernel positions the block keeps; at least 1: a block keeping none reads one zero
    weight), for ``depthwise_primfunc(counts=...)``.

    Example:
        >>> w = np.array([[0, 1, 0, 2], [0, 3, 0, 0], [5, 0, 0, 0]], "float32")
        >>> depthwise_block_counts(w, 2).tolist(), depthwise_block_counts(w, 1).tolist()
        ([2, 1], [2, 1, 1])
    """
    return np.maximum(_depthwise_blocks(weight, block)[2].sum(1), 1).astype("int32")
