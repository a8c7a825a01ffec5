"""Per-tile kernels for D8 flow accumulation and HAND over a grid split into tiles.

The tile-and-merge method of Barnes (2017): each tile is processed on its own, and
only what happens on its perimeter is passed on. Flow directions use the ESRI D8 code
of :mod:`models.terrain` (0 outlet, 255 nodata).

A tile is given as its D8 codes with a one-cell halo, ``fh`` of shape (h + 2, w + 2):
the halo holds the neighbouring tiles' codes, and 255 outside the grid (flow off the
grid and flow onto nodata both leave the model, so the two are the same here). Cell
indices inside a tile are local, ``r * w + c`` over the (h, w) interior.

The perimeter cells of a tile are listed in one fixed order, :func:`perimeter_cells`.
An *exit* is a valid cell whose receiver lies in another tile; that receiver is an
*entry* cell of the other tile, always on its perimeter.

Only the small per-perimeter arrays travel between tiles; the client-side kernels
(:func:`link_accumulate`, :func:`link_hand_reference`) resolve the graph of
tile-edge links in topological order.

References
----------
Barnes (2017), Parallel non-divergent flow accumulation for trillion cell digital
elevation models on desktops or clusters, Environmental Modelling & Software 92,
202-212.
"""

from __future__ import annotations

import numba
import numpy as np

from models.errors import ModelError
from models.terrain import _CODE_TO_K, _DC, _DR

__all__ = [
    "link_accumulate",
    "link_hand_reference",
    "perimeter_cells",
    "tile_accumulate",
    "tile_add_inflow",
    "tile_hand",
]

# states of the memoised walks
_UNKNOWN = -3
_NONE = -1  # the path ends in the tile (outlet, nodata, off the grid) / no drainage
_ONPATH = -4  # on the walk being followed (seeing it again means a cycle)


@numba.njit(cache=True, nogil=True)
def _perimeter_numba(h, w):
    """Local indices of the perimeter cells: row 0, row h-1, then columns 0 and w-1."""
    if h == 1 or w == 1:
        out = np.empty(h * w, dtype=np.int64)
        for i in range(h * w):
            out[i] = i
        return out
    out = np.empty(2 * w + 2 * (h - 2), dtype=np.int64)
    m = 0
    for c in range(w):
        out[m] = c
        m += 1
    for c in range(w):
        out[m] = (h - 1) * w + c
        m += 1
    for r in range(1, h - 1):
        out[m] = r * w
        m += 1
        out[m] = r * w + w - 1
        m += 1
    return out


def perimeter_cells(h: int, w: int) -> np.ndarray:
    """Local flat indices ``r * w + c`` of the perimeter cells of an (h, w) tile.

    Returns
    -------
    cells : ndarray (n,) int64
        Row 0, row h-1, then (column 0, column w-1) for rows 1..h-2.
    """
    return _perimeter_numba(int(h), int(w))


@numba.njit(cache=True, nogil=True, inline="always")
def _step(fh, r, c, h, w):
    """Receiver of interior cell (r, c): (kind, rr, cc). kind 0: ends here (outlet,
    nodata, flow off the grid or onto nodata), 1: receiver inside the tile,
    2: receiver in another tile, -1: not a D8 code."""
    k = _CODE_TO_K[fh[r + 1, c + 1]]
    if k < 0:
        return (-1 if k == -3 else 0), r, c
    rr = r + _DR[k]
    cc = c + _DC[k]
    if fh[rr + 1, cc + 1] == 255:
        return 0, rr, cc
    if rr >= 0 and rr < h and cc >= 0 and cc < w:
        return 1, rr, cc
    return 2, rr, cc


@numba.njit(cache=True, nogil=True)
def _exit_of_numba(fh, starts):
    """For each start cell, the exit cell its path reaches inside the tile (local
    index), or -1 if the path ends in the tile. Memoised: O(cells) in all."""
    h = fh.shape[0] - 2
    w = fh.shape[1] - 2
    memo = np.full(h * w, _UNKNOWN, dtype=np.int64)
    stack = np.empty(h * w, dtype=np.int64)
    out = np.empty(starts.size, dtype=np.int64)
    for s in range(starts.size):
        j = starts[s]
        ns = 0
        res = _NONE
        while True:
            if memo[j] == _ONPATH:  # a cycle (tile_accumulate reports it)
                break
            if memo[j] != _UNKNOWN:
                res = memo[j]
                break
            memo[j] = _ONPATH
            stack[ns] = j
            ns += 1
            r = j // w
            c = j - r * w
            kind, rr, cc = _step(fh, r, c, h, w)
            if kind == 1:
                j = rr * w + cc
                continue
            res = j if kind == 2 else _NONE
            break
        for t in range(ns):
            memo[stack[t]] = res
        out[s] = res
    return out


@numba.njit(cache=True, nogil=True)
def _tile_accumulate_numba(fh, acc, counts):
    """Kahn walk inside one tile (in place on acc, (h*w,) float64); flow to another
    tile is recorded, not passed on. Returns (visited, valid, bad codes, exit local
    indices, exit receivers (row, col) relative to the tile's origin)."""
    h = fh.shape[0] - 2
    w = fh.shape[1] - 2
    n = h * w
    indeg = np.zeros(n, dtype=np.uint8)
    nvalid = 0
    bad = 0
    for r in range(h):
        for c in range(w):
            i = r * w + c
            if fh[r + 1, c + 1] == 255:
                if counts:
                    acc[i] = 0.0
                continue
            nvalid += 1
            if counts:
                acc[i] = 1.0
            kind, rr, cc = _step(fh, r, c, h, w)
            if kind == -1:
                bad += 1
            elif kind == 1:
                indeg[rr * w + cc] += 1
    ex = np.empty(2 * (h + w), dtype=np.int64)
    er = np.empty(2 * (h + w), dtype=np.int64)
    ec = np.empty(2 * (h + w), dtype=np.int64)
    if bad:
        return 0, nvalid, bad, ex[:0], er[:0], ec[:0]
    nex = 0
    m = 0
    for i in range(n):
        if indeg[i] != 0 or fh[i // w + 1, i % w + 1] == 255:
            continue
        j = i
        while True:
            m += 1
            r = j // w
            c = j - r * w
            kind, rr, cc = _step(fh, r, c, h, w)
            if kind == 2:
                ex[nex] = j
                er[nex] = rr
                ec[nex] = cc
                nex += 1
                break
            if kind != 1:
                break
            d = rr * w + cc
            acc[d] += acc[j]
            indeg[d] -= 1
            if indeg[d] != 0:
                break
            indeg[d] = 255
            j = d
    return m, nvalid, 0, ex[:nex], er[:nex], ec[:nex]


def tile_accumulate(fh: np.ndarray, weights: np.ndarray | None = None, perimeter: bool = True):
    """First pass of tiled accumulation on one tile.

    Parameters
    ----------
    fh : ndarray (h + 2, w + 2) uint8
        The tile's D8 codes with a one-cell halo (255 outside the grid).
    weights : ndarray (h, w), optional
        Per-cell weights; None counts cells (the cell itself included).
    perimeter : bool
        Also trace the perimeter cells to their exits (``perimeter_exit``); False
        leaves it empty (pass 2 does not need it).

    Returns
    -------
    acc : ndarray (h, w) float64
        Accumulation of the flow that starts inside the tile (0 on nodata).
    info : dict
        ``visited``, ``valid``, ``bad`` (cell counts: visited < valid is a cycle inside
        the tile, bad > 0 codes that are not D8 codes); ``exit`` (local indices of the
        exit cells), ``exit_row``, ``exit_col`` (their receivers, relative to the tile's
        first cell), ``exit_acc`` (what leaves through each exit); ``perimeter_exit``
        (for each cell of :func:`perimeter_cells`, the local exit its path reaches
        inside the tile, -1 if the path ends in the tile).
    """
    fh = np.ascontiguousarray(fh, dtype=np.uint8)
    h, w = fh.shape[0] - 2, fh.shape[1] - 2
    if weights is None:
        acc = np.empty(h * w, dtype=np.float64)
    else:
        acc = np.where(fh[1:-1, 1:-1] != 255, weights, 0.0).astype(np.float64).ravel()
    m, nvalid, bad, ex, er, ec = _tile_accumulate_numba(fh, acc, weights is None)
    per = _perimeter_numba(h, w)
    info = {"visited": int(m), "valid": int(nvalid), "bad": int(bad), "exit": ex,
            "exit_row": er, "exit_col": ec, "exit_acc": acc[ex],
            "perimeter_exit": _exit_of_numba(fh, per) if perimeter and not bad else per[:0]}
    return acc.reshape(h, w), info


@numba.njit(cache=True, nogil=True)
def _tile_add_inflow_numba(fh, acc, entry, extra):
    h = fh.shape[0] - 2
    w = fh.shape[1] - 2
    for e in range(entry.size):
        j = entry[e]
        x = extra[e]
        while True:
            acc[j] += x
            r = j // w
            c = j - r * w
            kind, rr, cc = _step(fh, r, c, h, w)
            if kind != 1:
                break
            j = rr * w + cc


def tile_add_inflow(fh: np.ndarray, acc: np.ndarray, entry: np.ndarray, extra: np.ndarray) -> None:
    """Second pass: add the flow entering at each entry cell to every cell of its path
    inside the tile (in place on ``acc`` (h, w) float64)."""
    fh = np.ascontiguousarray(fh, dtype=np.uint8)
    flat = acc.reshape(-1)
    _tile_add_inflow_numba(fh, flat, np.ascontiguousarray(entry, dtype=np.int64),
                           np.ascontiguousarray(extra, dtype=np.float64))


@numba.njit(cache=True)
def _link_accumulate_numba(ex_cell, ex_acc, ex_next):
    """Total outflow of every exit: its own amount plus the outflow of the exits whose
    flow reaches it through other tiles, summed in topological order (Kahn)."""
    n = ex_cell.size
    out = ex_acc.copy()
    indeg = np.zeros(n, dtype=np.int64)
    for e in range(n):
        if ex_next[e] >= 0:
            indeg[ex_next[e]] += 1
    queue = np.empty(n, dtype=np.int64)
    qt = 0
    for e in range(n):
        if indeg[e] == 0:
            queue[qt] = e
            qt += 1
    qh = 0
    while qh < qt:
        e = queue[qh]
        qh += 1
        d = ex_next[e]
        if d >= 0:
            out[d] += out[e]
            indeg[d] -= 1
            if indeg[d] == 0:
                queue[qt] = d
                qt += 1
    return out, qt


def link_accumulate(ex_cell, ex_acc, ex_recv, per_cell, per_exit):
    """Resolve the graph of tile-edge links: what enters every entry cell.

    Parameters
    ----------
    ex_cell : ndarray (m,) int64
        Global flat indices of all exit cells (all tiles).
    ex_acc : ndarray (m,) float64
        What each exit's own tile sends out through it.
    ex_recv : ndarray (m,) int64
        Global flat index of each exit's receiver (an entry cell of another tile).
    per_cell, per_exit : ndarray (p,) int64
        Global flat indices of all perimeter cells, and the global exit cell each one's
        path reaches in its tile (-1 if none).

    Returns
    -------
    entry : ndarray (k,) int64
        Global flat indices of the entry cells, sorted.
    inflow : ndarray (k,) float64
        Total flow entering each entry cell from other tiles.

    Raises
    ------
    ModelError
        If the links form a cycle (flow directions with a cycle across tiles).
    """
    ex_cell = np.asarray(ex_cell, dtype=np.int64)
    o = np.argsort(ex_cell, kind="stable")
    ex_cell, ex_acc, ex_recv = ex_cell[o], np.asarray(ex_acc, np.float64)[o], np.asarray(ex_recv, np.int64)[o]
    po = np.argsort(per_cell, kind="stable")
    per_cell, per_exit = np.asarray(per_cell, np.int64)[po], np.asarray(per_exit, np.int64)[po]
    # exit -> the exit its receiver's path reaches in the receiver's tile
    p = np.searchsorted(per_cell, ex_recv)
    nxt_cell = per_exit[p]
    nxt = np.full(ex_cell.size, -1, dtype=np.int64)
    has = nxt_cell >= 0
    nxt[has] = np.searchsorted(ex_cell, nxt_cell[has])
    out, done = _link_accumulate_numba(ex_cell, ex_acc, nxt)
    if done != ex_cell.size:
        raise ModelError(f"fdir has a flow cycle across tiles ({ex_cell.size - done} tile exits never "
                         "reach an outlet); recompute it with flow_direction_d8 on a filled DEM.")
    entry, inv = np.unique(ex_recv, return_inverse=True)
    inflow = np.zeros(entry.size, dtype=np.float64)
    np.add.at(inflow, inv, out)
    return entry, inflow


@numba.njit(cache=True, nogil=True)
def _tile_hand_numba(fh, z, drain, exit_zref):
    """HAND inside one tile with memoised walks. exit_zref (h*w,) float64 holds, at
    exit cells, the elevation of the drainage cell found downstream in other tiles
    (NaN if none or unknown). Returns (hand float32 (h*w,), perimeter kind, perimeter
    reference) where kind is 1 (reference = drainage elevation), 2 (reference = local
    exit cell) or 0 (none)."""
    h = fh.shape[0] - 2
    w = fh.shape[1] - 2
    n = h * w
    # per cell: kind 0 none, 1 drainage at local index ref, 2 leaves through exit ref
    kind_of = np.full(n, -1, dtype=np.int8)
    ref = np.zeros(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    out = np.full(n, np.nan, dtype=np.float32)
    cycle = False
    for i in range(n):
        if kind_of[i] >= 0 or fh[i // w + 1, i % w + 1] == 255:
            continue
        j = i
        ns = 0
        kd = 0
        rf = 0
        while True:
            if kind_of[j] == -2:
                cycle = True
                break
            if kind_of[j] >= 0:
                kd = kind_of[j]
                rf = ref[j]
                break
            if drain[j]:
                kind_of[j] = 1
                ref[j] = j
                kd = 1
                rf = j
                break
            kind_of[j] = -2  # on this walk
            stack[ns] = j
            ns += 1
            r = j // w
            c = j - r * w
            st, rr, cc = _step(fh, r, c, h, w)
            if st == 1:
                j = rr * w + cc
                continue
            if st == 2:
                kd = 2
                rf = j
            else:
                kd = 0
            break
        for t in range(ns):
            kind_of[stack[t]] = kd
            ref[stack[t]] = rf
    for i in range(n):
        kd = kind_of[i]
        if kd == 1:
            out[i] = np.float64(z[i]) - np.float64(z[ref[i]])
        elif kd == 2:
            zr = exit_zref[ref[i]]
            if not np.isnan(zr):
                out[i] = np.float64(z[i]) - zr
    per = _perimeter_numba(h, w)
    pk = np.zeros(per.size, dtype=np.int8)
    pv = np.zeros(per.size, dtype=np.float64)
    pe = np.full(per.size, -1, dtype=np.int64)
    for t in range(per.size):
        i = per[t]
        kd = kind_of[i]
        if kd == 1:
            pk[t] = 1
            pv[t] = np.float64(z[ref[i]])
        elif kd == 2:
            pk[t] = 2
            pe[t] = ref[i]
    return out, pk, pv, pe, cycle


def tile_hand(fh: np.ndarray, z: np.ndarray, drain: np.ndarray, exit_zref: np.ndarray | None = None):
    """HAND on one tile (both passes).

    Parameters
    ----------
    fh : ndarray (h + 2, w + 2) uint8
        D8 codes with a one-cell halo (255 outside the grid).
    z : ndarray (h, w), m
        Filled elevations of the tile (float32 or float64).
    drain : ndarray (h, w) bool
        Drainage cells (already masked to valid cells).
    exit_zref : ndarray (h, w) float64, optional, m
        At exit cells, the elevation of the drainage cell reached downstream in other
        tiles (NaN: none). None in the first pass.

    Returns
    -------
    hand : ndarray (h, w) float32, m
        Final where the reference is known; NaN elsewhere.
    per_kind : ndarray (p,) int8
        For each perimeter cell: 1 drainage found in the tile, 2 leaves through an
        exit, 0 neither.
    per_z : ndarray (p,) float64, m
        Elevation of the drainage cell (kind 1).
    per_exit : ndarray (p,) int64
        Local index of the exit cell (kind 2), else -1.

    Raises
    ------
    ModelError
        If the codes form a cycle inside the tile.
    """
    fh = np.ascontiguousarray(fh, dtype=np.uint8)
    h, w = fh.shape[0] - 2, fh.shape[1] - 2
    if exit_zref is None:
        ez = np.full(h * w, np.nan)
    else:
        ez = np.ascontiguousarray(exit_zref, dtype=np.float64).ravel()
    out, pk, pv, pe, cycle = _tile_hand_numba(fh, np.ascontiguousarray(z).ravel(),
                                              np.ascontiguousarray(drain, dtype=np.bool_).ravel(), ez)
    if cycle:
        raise ModelError("fdir contains flow cycles; recompute it with flow_direction_d8 on a "
                         "filled DEM.")
    return out.reshape(h, w), pk, pv, pe


def link_hand_reference(per_cell, per_kind, per_z, per_exit_recv):
    """Resolve, for every perimeter cell, the elevation of the drainage cell its path
    first reaches, following the tile-edge links.

    Parameters
    ----------
    per_cell : ndarray (p,) int64
        Global flat indices of all perimeter cells.
    per_kind : ndarray (p,) int8
        1 drainage found in the tile, 2 leaves the tile, 0 neither.
    per_z : ndarray (p,) float64, m
        Drainage elevation for kind 1.
    per_exit_recv : ndarray (p,) int64
        For kind 2, global flat index of the receiver of the exit the path leaves by.

    Returns
    -------
    cell : ndarray (p,) int64
        ``per_cell`` sorted.
    zref : ndarray (p,) float64, m
        Drainage elevation reached from each cell (NaN: none).
    """
    o = np.argsort(per_cell, kind="stable")
    cell = np.asarray(per_cell, np.int64)[o]
    kind = np.asarray(per_kind, np.int8)[o]
    zz = np.asarray(per_z, np.float64)[o]
    nxt = np.full(cell.size, -1, dtype=np.int64)
    two = kind == 2
    nxt[two] = np.searchsorted(cell, np.asarray(per_exit_recv, np.int64)[o][two])
    zref, bad = _link_hand_numba(kind, zz, nxt)
    if bad:
        raise ModelError("fdir has a flow cycle across tiles; recompute it with flow_direction_d8 "
                         "on a filled DEM.")
    return cell, zref


@numba.njit(cache=True)
def _link_hand_numba(kind, zz, nxt):
    n = kind.size
    zref = np.full(n, np.nan)
    done = np.zeros(n, dtype=np.uint8)  # 0 unknown, 1 on the current path, 2 done
    stack = np.empty(n, dtype=np.int64)
    for s in range(n):
        j = s
        ns = 0
        val = np.nan
        while True:
            if done[j] == 2:
                val = zref[j]
                break
            if done[j] == 1:
                return zref, True
            done[j] = 1
            stack[ns] = j
            ns += 1
            if kind[j] == 1:
                val = zz[j]
                break
            if kind[j] == 2:
                j = nxt[j]
                continue
            break
        for t in range(ns):
            zref[stack[t]] = val
            done[stack[t]] = 2
    return zref, False
