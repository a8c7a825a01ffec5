"""Per-tile kernels for tiled Priority-Flood depression filling (Barnes 2016).

A grid too large for one machine is split into tiles. Each tile is processed alone,
three times as small steps, and the result is bit-for-bit the same as
:func:`models.terrain.fill_depressions` (without epsilon) on the whole grid:

1. :func:`flood_tile` runs Priority-Flood on one tile, seeded from the tile's perimeter
   and from the tile's true outlets (cells on the grid edge or next to nodata, found
   with a one-cell halo). Every valid cell gets the local fill level ``f`` and a label:
   ``1`` ("ocean") for cells that drain to a true outlet inside the tile, ``2..`` for
   regions that drain to the tile's perimeter, ``0`` for nodata. It also returns the
   tile's spill graph: for every pair of labels that touch, the lowest
   ``max(f(u), f(v))`` over touching cells ``u``, ``v`` (8-connected), and the labels and
   elevations of the perimeter cells, from which the caller links neighbouring tiles.
2. :func:`solve_spill_graph` (on the client, over all tiles' labels) gives each label
   its water level: the lowest elevation at which water in it can reach the ocean,
   a minimax Dijkstra over the label graph from the ocean node.
3. :func:`fixup_tile` raises each cell to ``max(f, level[label])``.

Why it is exact: the single-machine result is, for every valid cell, the minimum over
8-connected paths to a true outlet of the highest elevation on the path, a value
that does not depend on processing order (no arithmetic, only min and max of input
values). Any such path leaves the cell's tile through a perimeter cell or ends at an
outlet inside it, which is what ``f``, the label graph and the level compose.

The epsilon variant is tiled differently. Its result is the unique solution of
``f = max(dem, nextafter(min of f over the neighbours))`` off the outlets (see
:func:`models.terrain.fill_depressions`), which holds cell by cell, so a tile whose
neighbours' values are known is solved exactly by the single-machine kernel run on the
tile with those values as a fixed ring around it (:func:`epsilon_tile`). The caller
starts every ring at +inf (an upper bound) and re-solves the tiles whose ring changed
until none does: values only decrease, and the exact ones travel one tile per round
from the outlets, so the rounds number about the tiles the longest drainage path
crosses. At the end every tile satisfies the equation with its true neighbours, so the
grid is the single-machine result. (Starting from the plain fill, a lower bound, is
also exact but slow: two tiles sharing a raised flat lift each other's edge by one ULP
per round, so the rounds grow with the flat's width.)

Reference: Barnes, R. (2016), Parallel priority-flood depression filling for trillion
cell digital elevation models on desktops or clusters, Computers & Geosciences 96,
56-68.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from models.errors import ModelError, as_2d
from models.terrain import (_DC, _DR, _fill_depressions_numba, _heap_grow, _heap_pop, _heap_push, _neighbour,
                            _valid_mask)

__all__ = ["OCEAN", "TileFlood", "epsilon_tile", "fixup_tile", "flood_tile", "perimeter_values",
           "solve_spill_graph", "work_dtype"]

#: the four sides of a tile, in the order :func:`perimeter_values` returns them
SIDES = ("top", "bottom", "left", "right")

#: label of cells that drain to a true outlet (grid edge or nodata) inside their tile
OCEAN = 1
#: label of nodata cells
NODATA_LABEL = 0


# --------------------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True)
def _label_flood_numba(z, valid, outlet):
    """Priority-Flood (+pit queue, no epsilon) with labels, in place on ``z``.

    Seeds: valid cells on the array's perimeter and valid cells marked in ``outlet``.
    Outlet seeds start with label OCEAN (1); other seeds get a new label when they are
    popped unlabelled, or the label of the first popped neighbour (they are never
    below its level: the queue releases levels in non-decreasing order). Returns the
    int32 labels (0 for nodata) and the number of labels used (labels < n).
    """
    ny, nx = z.shape
    n = ny * nx
    zf = z.ravel()
    vf = valid.ravel()
    of = outlet.ravel()
    lab = np.zeros(n, dtype=np.int32)
    closed = np.zeros(n, dtype=np.uint8)
    cap = max(1024, 4 * (ny + nx))
    hz = np.empty(cap, dtype=z.dtype)
    hi = np.empty(cap, dtype=np.int32)
    pit = np.empty(n, dtype=np.int32)
    off = _DR * nx + _DC
    size = 0
    phead = 0
    ptail = 0
    for r in range(ny):
        for c in range(nx):
            i = r * nx + c
            if not vf[i]:
                closed[i] = 1
                continue
            if of[i] or r == 0 or r == ny - 1 or c == 0 or c == nx - 1:
                if size == hz.size:
                    hz, hi = _heap_grow(hz, hi, size)
                size = _heap_push(hz, hi, size, zf[i], i)
                closed[i] = 1
                if of[i]:
                    lab[i] = 1
    nlab = 2
    while size > 0 or phead < ptail:
        if phead < ptail:
            i = pit[phead]
            phead += 1
        else:
            i = hi[0]
            size = _heap_pop(hz, hi, size)
        if lab[i] == 0:
            lab[i] = nlab
            nlab += 1
        li = lab[i]
        zc = zf[i]
        r = i // nx
        c = i - r * nx
        interior = r > 0 and r < ny - 1 and c > 0 and c < nx - 1
        for k in range(8):
            if interior:
                j = i + off[k]
            else:
                rr = r + _DR[k]
                cc = c + _DC[k]
                if rr < 0 or rr >= ny or cc < 0 or cc >= nx:
                    continue
                j = rr * nx + cc
            if closed[j]:
                if vf[j] and lab[j] == 0:
                    lab[j] = li  # an unpopped perimeter seed at or above this level
                continue
            closed[j] = 1
            lab[j] = li
            if zf[j] <= zc:
                zf[j] = zc
                pit[ptail] = j
                ptail += 1
            else:
                if size == hz.size:
                    hz, hi = _heap_grow(hz, hi, size)
                size = _heap_push(hz, hi, size, zf[j], j)
    return lab.reshape(ny, nx), nlab


@numba.njit(cache=True, nogil=True)
def _label_edges_numba(f, lab, nlab):
    """Spill edges between touching labels: (lo, hi, min over touching pairs of max f)."""
    ny, nx = f.shape
    cap = 1024
    ea = np.empty(cap, dtype=np.int64)
    ew = np.empty(cap, dtype=np.float64)
    m = 0
    for r in range(ny):
        for c in range(nx):
            a = lab[r, c]
            if a == 0:
                continue
            for k in range(4):  # E, SE, S, SW: every unordered pair once
                rr = r + _DR[k]
                cc = c + _DC[k]
                if rr >= ny or cc < 0 or cc >= nx:
                    continue
                b = lab[rr, cc]
                if b == 0 or b == a:
                    continue
                w = max(f[r, c], f[rr, cc])
                if m == cap:
                    cap *= 2
                    ea2 = np.empty(cap, dtype=np.int64)
                    ew2 = np.empty(cap, dtype=np.float64)
                    ea2[:m] = ea[:m]
                    ew2[:m] = ew[:m]
                    ea = ea2
                    ew = ew2
                lo = min(a, b)
                hi = max(a, b)
                ea[m] = np.int64(lo) * nlab + hi
                ew[m] = w
                m += 1
    order = np.argsort(ea[:m], kind="mergesort")
    out_a = np.empty(m, dtype=np.int32)
    out_b = np.empty(m, dtype=np.int32)
    out_w = np.empty(m, dtype=np.float64)
    q = -1
    last = np.int64(-1)
    for t in range(m):
        e = order[t]
        key = ea[e]
        if key != last:
            q += 1
            out_a[q] = key // nlab
            out_b[q] = key - (key // nlab) * nlab
            out_w[q] = ew[e]
            last = key
        elif ew[e] < out_w[q]:
            out_w[q] = ew[e]
    return out_a[:q + 1], out_b[:q + 1], out_w[:q + 1]


@numba.njit(cache=True, nogil=True)
def _solve_spill_graph_numba(n, a, b, w):
    """Minimax Dijkstra from node 0 (ocean): level[v] = min over paths of max edge weight."""
    m = a.size
    start = np.zeros(n + 1, dtype=np.int64)
    for e in range(m):
        start[a[e] + 1] += 1
        start[b[e] + 1] += 1
    for v in range(n):
        start[v + 1] += start[v]
    fill = start[:n].copy()
    adj = np.empty(2 * m, dtype=np.int64)
    adjw = np.empty(2 * m, dtype=np.float64)
    for e in range(m):
        u = a[e]
        v = b[e]
        adj[fill[u]] = v
        adjw[fill[u]] = w[e]
        fill[u] += 1
        adj[fill[v]] = u
        adjw[fill[v]] = w[e]
        fill[v] += 1
    level = np.full(n, np.inf)
    done = np.zeros(n, dtype=np.uint8)
    hz = np.empty(1024, dtype=np.float64)
    hi = np.empty(1024, dtype=np.int64)
    level[0] = -np.inf
    size = _heap_push(hz, hi, 0, -np.inf, np.int64(0))
    while size > 0:
        zc = hz[0]
        u = hi[0]
        size = _heap_pop(hz, hi, size)
        if done[u]:
            continue
        done[u] = 1
        for t in range(start[u], start[u + 1]):
            v = adj[t]
            if done[v]:
                continue
            cand = max(zc, adjw[t])
            if cand < level[v]:
                level[v] = cand
                if size == hz.size:
                    hz, hi = _heap_grow(hz, hi, size)
                size = _heap_push(hz, hi, size, cand, v)
    return level


@numba.njit(cache=True, nogil=True)
def _epsilon_lower_numba(f, z, fixed, inf):
    """Lower an epsilon-filled padded tile ``f`` in place after its ring went down.

    ``f`` holds the tile's previous solution inside and the new ring values on its
    border; ``z`` the elevations; ``fixed`` marks cells never changed (outlets, nodata,
    the ring). Every valid ring cell is a start; a popped cell offers each neighbour
    ``max(z, nextafter(f))`` and a lower offer replaces the neighbour's value and pushes
    it. Values only go down, in increasing order (a Dijkstra from the ring), so the
    result is the fixed point of the tile's equation with the new ring, the same as
    solving the tile again, but the work is only where values change.
    """
    ny, nx = f.shape
    ff = f.ravel()
    zf = z.ravel()
    fx = fixed.ravel()
    cap = max(1024, 4 * (ny + nx))
    hz = np.empty(cap, dtype=f.dtype)
    hi = np.empty(cap, dtype=np.int32)
    size = 0
    for r in range(ny):
        for c in range(nx):
            if r == 0 or r == ny - 1 or c == 0 or c == nx - 1:
                i = r * nx + c
                if ff[i] == ff[i] and ff[i] < inf:  # a valid ring cell with a value
                    if size == hz.size:
                        hz, hi = _heap_grow(hz, hi, size)
                    size = _heap_push(hz, hi, size, ff[i], i)
    changed = 0
    while size > 0:
        zc = hz[0]
        i = hi[0]
        size = _heap_pop(hz, hi, size)
        if zc > ff[i]:  # stale: lowered again after this entry was pushed
            continue
        spill = np.nextafter(zc, inf)
        r = i // nx
        c = i - r * nx
        for k in range(8):
            j = _neighbour(r, c, k, ny, nx)
            if j < 0 or fx[j]:
                continue
            offer = zf[j] if zf[j] > spill else spill
            if offer < ff[j]:
                ff[j] = offer
                changed += 1
                if size == hz.size:
                    hz, hi = _heap_grow(hz, hi, size)
                size = _heap_push(hz, hi, size, offer, j)
    return changed


def _outlets(valid: np.ndarray) -> np.ndarray:
    """Valid cells with an invalid 8-neighbour or on the array's edge."""
    inv = np.ones((valid.shape[0] + 2, valid.shape[1] + 2), dtype=bool)
    inv[1:-1, 1:-1] = ~valid
    nb = np.zeros(valid.shape, dtype=bool)
    for dr, dc in zip(_DR, _DC, strict=True):
        nb |= inv[1 + dr:1 + dr + valid.shape[0], 1 + dc:1 + dc + valid.shape[1]]
    return valid & nb


# --------------------------------------------------------------------------- public API
def work_dtype(dtype) -> np.dtype:
    """The float dtype a DEM of ``dtype`` is filled in (float32 stays, others float64)."""
    dt = np.dtype(dtype)
    if dt == np.float32 or dt == np.float64:
        return dt
    if dt.kind == "f":
        raise ModelError(f"dem has dtype {dt}; convert it to float32 or float64.")
    if dt.kind not in "iu":
        raise ModelError(f"dem has dtype {dt}; expected a float or integer DEM.")
    return np.dtype(np.float64)


@dataclass
class TileFlood:
    """One tile after :func:`flood_tile` (core cells only, no halo).

    Attributes
    ----------
    filled : ndarray (y, x), m
        Local Priority-Flood level, in :func:`work_dtype` of the DEM.
    labels : ndarray (y, x) int32
        0 nodata, 1 ocean (drains to a true outlet inside the tile), 2.. perimeter regions.
    n_labels : int
        Labels used are ``0 .. n_labels - 1``.
    edge_a, edge_b, edge_w : ndarray (k,)
        Spill edges inside the tile between labels ``edge_a < edge_b`` at elevation
        ``edge_w`` (float64, m), one per touching pair.
    valid : ndarray (y, x) bool
        Valid (not nodata) cells.
    """

    filled: np.ndarray
    labels: np.ndarray
    n_labels: int
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_w: np.ndarray
    valid: np.ndarray

    def perimeter(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Labels and elevations (float64) of the core's four sides.

        Keys ``"top"``, ``"bottom"`` (left to right) and ``"left"``, ``"right"`` (top to
        bottom). Perimeter cells are seeds and never raised, so their ``filled`` is
        their elevation.
        """
        f, lab = self.filled, self.labels
        return {
            "top": (lab[0, :].copy(), f[0, :].astype(np.float64)),
            "bottom": (lab[-1, :].copy(), f[-1, :].astype(np.float64)),
            "left": (lab[:, 0].copy(), f[:, 0].astype(np.float64)),
            "right": (lab[:, -1].copy(), f[:, -1].astype(np.float64)),
        }


def flood_tile(block, core: tuple[slice, slice], nodata=None, *, edges: bool = True) -> TileFlood:
    """Priority-Flood one tile from its perimeter and true outlets, with labels.

    Parameters
    ----------
    block : ndarray (y, x), m
        The tile with a one-cell halo on every side where the grid continues (no halo
        on sides that are the grid's edge).
    core : (slice, slice)
        The tile inside ``block`` (e.g. ``(slice(1, -1), slice(1, -1))`` for an
        interior tile).
    nodata : float or int, optional
        As in :func:`models.terrain.fill_depressions`; NaN/inf are always nodata.
    edges : bool
        Also find the spill edges between labels (not needed when only fixing up).

    Returns
    -------
    TileFlood
    """
    a = as_2d("block", block, kinds="fiu")
    wdt = work_dtype(a.dtype)
    valid = np.ascontiguousarray(_valid_mask(a, nodata))
    # a cell is a true outlet when a neighbour is nodata or outside the block: the block
    # only ends where the grid ends (elsewhere the halo continues it)
    outlet = np.ascontiguousarray(_outlets(valid)[core])
    cv = np.ascontiguousarray(valid[core])
    core_z = a[core]
    if core_z.dtype.kind in "iu" and np.abs(core_z).max(initial=0) > 2**53:
        raise ModelError("integer dem has values beyond 2**53; convert it to float64 first.")
    f = np.array(core_z, dtype=wdt, order="C", copy=True)
    if f.size >= 2**31:
        raise ModelError(f"tile has {f.size} cells; use tiles under 2**31 cells.")
    lab, nlab = _label_flood_numba(f, cv, outlet)
    if edges:
        ea, eb, ew = _label_edges_numba(f, lab, np.int64(nlab))
    else:
        ea = eb = np.zeros(0, dtype=np.int32)
        ew = np.zeros(0, dtype=np.float64)
    return TileFlood(filled=f, labels=lab, n_labels=int(nlab), edge_a=ea, edge_b=eb,
                     edge_w=ew, valid=cv)


def solve_spill_graph(n_nodes: int, a, b, w) -> np.ndarray:
    """Water level of every node of a spill graph whose node 0 is the ocean.

    Parameters
    ----------
    n_nodes : int
        Nodes are ``0 .. n_nodes - 1``; node 0 is the ocean (level -inf).
    a, b : ndarray (k,) int
        Edge end points (undirected; repeated edges are fine).
    w : ndarray (k,) float64, m
        Spill elevation of each edge.

    Returns
    -------
    level : ndarray (n_nodes,) float64, m
        Lowest elevation at which water at the node reaches the ocean (minimum over
        paths of the highest edge); +inf for nodes not connected to the ocean.
    """
    a = np.ascontiguousarray(a, dtype=np.int64)
    b = np.ascontiguousarray(b, dtype=np.int64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not (a.shape == b.shape == w.shape) or a.ndim != 1:
        raise ModelError("a, b and w must be 1-D arrays of the same length (one per edge).")
    if n_nodes < 1:
        raise ModelError("n_nodes must be at least 1 (node 0 is the ocean).")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_nodes):
        raise ModelError(f"edge end points must lie in 0 .. {n_nodes - 1}.")
    return _solve_spill_graph_numba(np.int64(n_nodes), a, b, w)


def fixup_tile(tile: TileFlood, levels, original) -> np.ndarray:
    """Final filled tile: ``max(filled, levels[label])`` on valid cells.

    Parameters
    ----------
    tile : TileFlood
        From :func:`flood_tile` on the same tile.
    levels : ndarray (tile.n_labels,) float64, m
        Level of each local label (entries 0 and 1, nodata and ocean, are ignored).
    original : ndarray (y, x)
        The tile's input elevations (core only); its dtype is the output's, and nodata
        cells keep its values.

    Returns
    -------
    filled : ndarray (y, x), m, dtype of ``original``
    """
    lv = np.asarray(levels, dtype=np.float64).copy()
    if lv.shape != (tile.n_labels,):
        raise ModelError(f"levels must have one entry per label ({tile.n_labels}); got {lv.shape}.")
    lv[:2] = -np.inf
    raised = lv.astype(tile.filled.dtype)[tile.labels]
    out = np.maximum(tile.filled, raised)
    orig = np.asarray(original)
    if out.dtype != orig.dtype:
        out = out.astype(orig.dtype)
    if not tile.valid.all():
        out[~tile.valid] = orig[~tile.valid]
    return out


def perimeter_values(filled, valid) -> dict[str, np.ndarray]:
    """The four sides of a tile's values, NaN where a cell is nodata.

    Keys as :data:`SIDES`: ``"top"`` and ``"bottom"`` left to right, ``"left"`` and
    ``"right"`` top to bottom; float copies in ``filled``'s dtype.
    """
    f = np.where(valid, filled, np.nan).astype(work_dtype(np.asarray(filled).dtype), copy=False)
    return {"top": f[0, :].copy(), "bottom": f[-1, :].copy(), "left": f[:, 0].copy(),
            "right": f[:, -1].copy()}


def epsilon_tile(core, halo: dict[str, np.ndarray], nodata=None, previous=None) -> np.ndarray:
    """Priority-Flood+epsilon of one tile, given the values of the cells around it.

    Parameters
    ----------
    core : ndarray (h, w), m
        The tile's elevations (no halo).
    halo : dict
        The ring of neighbouring cells' current epsilon-filled values, NaN where the
        neighbour is nodata or outside the grid: ``"top"`` and ``"bottom"`` (``w + 2``
        each, corners included), ``"left"`` and ``"right"`` (``h`` each).
    nodata : float or int, optional
        As in :func:`models.terrain.fill_depressions`.
    previous : ndarray (h, w), optional
        This function's result for the same tile with a ring that was nowhere lower
        than ``halo`` (and nodata in the same places). The tile is then lowered from
        the ring where the ring went down instead of being solved from scratch: the
        same result, with work only where values change.

    Returns
    -------
    filled : ndarray (h, w), m, in :func:`work_dtype` (float32 stays, others float64)
        The tile's values of the global epsilon fill if the ring holds the global
        values; nodata cells keep their input value.

    Notes
    -----
    The ring cells are the kernel's seeds at their given values (never changed); the
    tile's cells on the grid edge or next to nodata are seeds at their own elevation,
    as on the whole grid, because the ring is NaN (nodata) there.
    """
    a = as_2d("core", core, kinds="fiu")
    h, w = a.shape
    wdt = work_dtype(a.dtype)
    want = {"top": w + 2, "bottom": w + 2, "left": h, "right": h}
    for side, n in want.items():
        if np.shape(halo[side]) != (n,):
            raise ModelError(f"halo[{side!r}] must have {n} values for a {h}x{w} tile; "
                             f"got shape {np.shape(halo[side])}.")
    if a.dtype.kind in "iu" and np.abs(a).max(initial=0) > 2**53:
        raise ModelError("integer dem has values beyond 2**53; convert it to float64 first.")
    cv = _valid_mask(a, nodata)
    p = np.empty((h + 2, w + 2), dtype=wdt)
    p[1:-1, 1:-1] = a
    p[0, :] = halo["top"]
    p[-1, :] = halo["bottom"]
    p[1:-1, 0] = halo["left"]
    p[1:-1, -1] = halo["right"]
    valid = ~np.isnan(p)
    valid[1:-1, 1:-1] = cv
    if p.size >= 2**31:
        raise ModelError(f"tile has {a.size} cells; use tiles under 2**31 cells.")
    if previous is None:
        _fill_depressions_numba(p, np.ascontiguousarray(valid), True, wdt.type(np.inf))
    else:
        prev = np.asarray(previous)
        if prev.shape != a.shape:
            raise ModelError(f"previous has shape {prev.shape}; the tile is {a.shape}.")
        z = p.copy()
        p[1:-1, 1:-1] = prev
        fixed = ~valid | _outlets(valid)
        fixed[[0, -1], :] = True
        fixed[:, [0, -1]] = True
        _epsilon_lower_numba(p, z, np.ascontiguousarray(fixed), wdt.type(np.inf))
    out = p[1:-1, 1:-1].copy()
    if not cv.all():
        out[~cv] = a[~cv]
    return out
