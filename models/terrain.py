"""Terrain analysis on a raster DEM: depressions, D8 flow, accumulation, drainage, HAND.

D8 encoding
-----------
Flow directions are ``uint8`` rasters in the ESRI / pysheds power-of-two code, with
row 0 the northern edge of the grid (array row index grows southwards)::

     32  64  128          NW   N   NE
     16   .    1    =      W   .   E
      8   4    2          SW   S   SE

``0`` marks an outlet or pit (no strictly lower valid neighbour: the water leaves the
model there; with ``flow_direction_d8(..., resolve_flats=True)`` on a filled DEM only
grid-edge cells and cells next to nodata keep it) and ``255`` marks a nodata cell.
Ties between equally steep neighbours go
to the first in the order E, SE, S, SW, W, NW, N, NE. Flow towards a neighbour outside
the grid or onto a nodata cell leaves the model.

Flat indices are ``y * nx + x`` (C order) as ``int64``.

All heavy work is done by private Numba kernels (``_*_numba``) on plain arrays; the
public functions validate their inputs and raise :class:`models.errors.ModelError`.
``fill_depressions``, ``flow_direction_d8``, ``resolve_flats`` and
``flow_accumulation_d8`` also take an ``xarray.DataArray`` (cell sizes from its
coordinates, nodata from ``_FillValue``) and return one (:mod:`models._xarray`).

References
----------
Barnes, Lehman & Mulla (2014), Priority-Flood, Computers & Geosciences 62, 117-127.
Barnes, Lehman & Mulla (2014b), An efficient assignment of drainage direction over flat
surfaces in raster digital elevation models, Computers & Geosciences 62, 128-135.
O'Callaghan & Mark (1984), The extraction of drainage networks from digital elevation
data, CVGIP 28, 323-344.
Nobre et al. (2011), Height Above the Nearest Drainage, J. Hydrol. 404, 13-29.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from models._xarray import grid_function
from models.errors import ModelError, as_2d, positive_scalar, same_shape

__all__ = [
    "D8_CODES",
    "D8_ENCODING",
    "catchments",
    "d8_slope",
    "downstream_index",
    "drainage_network",
    "fill_depressions",
    "flow_accumulation_d8",
    "flow_direction_d8",
    "hand",
    "label_reaches",
    "nearest_drainage",
    "reach_catchments",
    "reach_properties",
    "resolve_flats",
    "topological_order",
]

D8_ENCODING = "esri"
#: codes in neighbour order E, SE, S, SW, W, NW, N, NE
D8_CODES = (1, 2, 4, 8, 16, 32, 64, 128)
D8_OUTLET = 0
D8_NODATA = 255

# neighbour offsets in the same order as D8_CODES (row 0 is north)
_DR = np.array([0, 1, 1, 1, 0, -1, -1, -1], dtype=np.int64)
_DC = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)
_CODES = np.array(D8_CODES, dtype=np.uint8)
# code -> neighbour index 0..7; -1 outlet (0), -2 nodata (255), -3 not a D8 code
_CODE_TO_K = np.full(256, -3, dtype=np.int64)
for _k, _c in enumerate(D8_CODES):
    _CODE_TO_K[_c] = _k
_CODE_TO_K[0] = -1
_CODE_TO_K[255] = -2
del _k, _c


# --------------------------------------------------------------------------- helpers
def _valid_mask(dem: np.ndarray, nodata) -> np.ndarray:
    """Boolean mask of valid cells: not equal to ``nodata`` and, for floats, not NaN/inf."""
    if dem.dtype.kind == "f":
        valid = np.isfinite(dem)
        if nodata is not None and not np.isnan(nodata):
            valid &= dem != nodata
    else:
        if nodata is not None and np.isnan(float(nodata)):
            raise ModelError(
                f"nodata is NaN but the DEM has integer dtype {dem.dtype}; pass the integer "
                "nodata value of the raster (e.g. -32768) or None."
            )
        valid = np.ones(dem.shape, dtype=bool) if nodata is None else dem != nodata
    return valid


def _check_fdir(fdir) -> np.ndarray:
    fd = as_2d("fdir", fdir, kinds="iu")
    if fd.dtype != np.uint8:
        if fd.size and (fd.min() < 0 or fd.max() > 255):
            raise ModelError(
                "fdir holds values outside 0..255; it must use the ESRI D8 codes "
                "(1,2,4,...,128, 0 = outlet, 255 = nodata). Map pysheds' -1/-2 to 0 first."
            )
        fd = fd.astype(np.uint8)
    return np.ascontiguousarray(fd)


def _check_mask(name: str, mask, shape) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ModelError(f"{name} must have the grid's shape {shape}; got {m.shape}.")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biu":
            raise ModelError(f"{name} must be a boolean mask; got dtype {m.dtype} (use acc >= threshold).")
        m = m != 0
    return np.ascontiguousarray(m)


def _check_int32_size(a: np.ndarray) -> None:
    if a.size >= 2**31:
        raise ModelError(
            f"grid has {a.size} cells; flat resolution handles up to 2**31 - 1 cells per call. "
            "Split the grid by drainage basin (see DESIGN.md, Scale)."
        )


def _dy(dx: float, dy) -> tuple[float, float]:
    dxv = positive_scalar("dx", dx)
    dyv = dxv if dy is None else positive_scalar("dy", dy)
    return dxv, dyv


# --------------------------------------------------------------------------- kernels
@numba.njit(cache=True, inline="always")
def _neighbour(r, c, k, ny, nx):
    """Flat index of the ``k``-th 8-neighbour (``_DR``, ``_DC``) of (r, c), -1 off the grid."""
    rr = r + _DR[k]
    cc = c + _DC[k]
    if rr < 0 or rr >= ny or cc < 0 or cc >= nx:
        return -1
    return rr * nx + cc


@numba.njit(cache=True, inline="always")
def _heap_push(hz, hi, size, z, idx):
    """Push (z, idx) onto a 4-ary min-heap on z stored in two arrays; return the new size.

    Four children per node halve the depth of a binary heap and keep siblings in one
    cache line. Equal elevations leave in no particular order: the fill's result does
    not depend on it (without epsilon every raised cell gets the lowest spill level of
    its reaching cell; with epsilon the fill pops cells in nondecreasing order, see
    ``_fill_depressions_numba``).
    """
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 2
        pz = hz[parent]
        if z < pz:
            hz[pos] = pz
            hi[pos] = hi[parent]
            pos = parent
        else:
            break
    hz[pos] = z
    hi[pos] = idx
    return size + 1


@numba.njit(cache=True, inline="always")
def _heap_pop(hz, hi, size):
    """Remove the top of the heap (read it first from index 0); return the new size."""
    size -= 1
    z = hz[size]
    idx = hi[size]
    pos = 0
    while True:
        first = 4 * pos + 1
        if first >= size:
            break
        best = first
        bz = hz[first]
        for ch in range(first + 1, min(first + 4, size)):
            cz = hz[ch]
            if cz < bz:
                bz = cz
                best = ch
        if bz < z:
            hz[pos] = bz
            hi[pos] = hi[best]
            pos = best
        else:
            break
    if size > 0:
        hz[pos] = z
        hi[pos] = idx
    return size


@numba.njit(cache=True)
def _heap_grow(hz, hi, size):
    """Double the heap's capacity, keeping its first ``size`` entries."""
    hz2 = np.empty(2 * hz.size, dtype=hz.dtype)
    hi2 = np.empty(2 * hi.size, dtype=hi.dtype)
    hz2[:size] = hz[:size]
    hi2[:size] = hi[:size]
    return hz2, hi2


@numba.njit(cache=True)
def _fill_depressions_numba(z, valid, epsilon, inf):
    """Priority-Flood (+pit queue; +epsilon) in place on ``z`` (2-D float array).

    ``valid`` is a 2-D boolean mask; ``inf`` is +inf in ``z``'s dtype (for nextafter).
    Seeds: valid grid-edge cells and valid cells with a nodata neighbour. The open
    queue is a 4-ary heap on elevation (int32 cell indices); raised cells go through a
    FIFO pit queue (Barnes et al. 2014, Alg. 2 and 3).

    The heap grows on demand (it holds the flood front, typically well under 1 % of
    the cells); the pit queue is int32. An upslope-tracing variant (Zhou, Sun & Fu
    2016: cells climbing from the front skip the heap) was measured slower on the
    benchmark DEMs (noisy terrain: most traced cells still border lower unclosed cells
    and end up on the heap after an extra neighbour scan), so it is not used.
    Grids must have fewer than 2**31 cells (int32 indices).
    """
    ny, nx = z.shape
    n = ny * nx
    zf = z.ravel()
    vf = valid.ravel()
    closed = np.empty(n, dtype=np.uint8)
    has_nodata = False
    for i in range(n):
        if vf[i]:
            closed[i] = 0
        else:
            closed[i] = 1
            has_nodata = True
    off = _DR * nx + _DC
    cap = max(1024, 4 * (ny + nx))
    hz = np.empty(cap, dtype=z.dtype)
    hi = np.empty(cap, dtype=np.int32)
    pit = np.empty(n, dtype=np.int32)  # every cell enters at most once
    size = 0
    phead = 0
    ptail = 0
    for r in range(ny):
        for c in range(nx):
            i = r * nx + c
            if not vf[i]:
                continue
            seed = r == 0 or r == ny - 1 or c == 0 or c == nx - 1
            if has_nodata and not seed:
                for k in range(8):
                    if not vf[i + off[k]]:
                        seed = True
                        break
            if seed:
                if size == hz.size:
                    hz, hi = _heap_grow(hz, hi, size)
                size = _heap_push(hz, hi, size, zf[i], i)
                closed[i] = 1
    while size > 0 or phead < ptail:
        if phead < ptail:
            # epsilon: the pit queue is sorted (its values are nextafter of popped
            # values, which never decrease), so taking the lower of its head and the
            # heap's top pops cells in nondecreasing order: a Dijkstra, whose result is
            # the unique solution of f = max(dem, nextafter(min over neighbours of f))
            # whatever the tie order (the tiled fill relies on that).
            if epsilon and size > 0 and hz[0] <= zf[pit[phead]]:
                i = hi[0]
                size = _heap_pop(hz, hi, size)
            else:
                i = pit[phead]
                phead += 1
        else:
            i = hi[0]
            size = _heap_pop(hz, hi, size)
        zc = zf[i]
        spill = np.nextafter(zc, inf) if epsilon else zc
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
                continue
            closed[j] = 1
            if zf[j] <= spill:
                zf[j] = spill
                pit[ptail] = j
                ptail += 1
                continue
            if size == hz.size:
                hz, hi = _heap_grow(hz, hi, size)
            size = _heap_push(hz, hi, size, zf[j], j)
    return z


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _flow_direction_d8_numba(z, valid, dx, dy):
    """Steepest-descent D8 codes (uint8) for a 2-D elevation array."""
    ny, nx = z.shape
    out = np.empty((ny, nx), dtype=np.uint8)
    dd = math.sqrt(dx * dx + dy * dy)
    dist = np.array([dx, dd, dy, dd, dx, dd, dy, dd])
    for r in prange(ny):
        inner_row = r > 0 and r < ny - 1
        for c in range(nx):
            if not valid[r, c]:
                out[r, c] = 255
                continue
            zc = np.float64(z[r, c])
            best = 0.0
            code = 0
            if inner_row and c > 0 and c < nx - 1:
                for k in range(8):
                    rr = r + _DR[k]
                    cc = c + _DC[k]
                    if not valid[rr, cc]:
                        continue
                    s = (zc - np.float64(z[rr, cc])) / dist[k]
                    if s > best:
                        best = s
                        code = _CODES[k]
            else:
                for k in range(8):
                    rr = r + _DR[k]
                    cc = c + _DC[k]
                    if rr < 0 or rr >= ny or cc < 0 or cc >= nx:
                        continue
                    if not valid[rr, cc]:
                        continue
                    s = (zc - np.float64(z[rr, cc])) / dist[k]
                    if s > best:
                        best = s
                        code = _CODES[k]
            out[r, c] = code
    return out


@numba.njit(cache=True)
def _resolve_flats_numba(z, valid, fd, dx, dy, assign):
    """Flat resolution (Barnes, Lehman & Mulla 2014b) on a D8 grid of a filled DEM.

    Flat cells: valid cells with code 0 that are not outlets (not on the grid edge, no
    nodata neighbour). Low edges: non-flat cells at the same elevation next to a flat
    cell (they drain). High edges: flat cells with a higher valid neighbour. Two
    breadth-first gradients inside each flat (8-connected): ``tow`` = steps to the
    nearest low edge, ``away`` = steps from the nearest high edge; combined as
    ``2 * tow + (max_away - away)`` (or ``2 * tow`` on a flat without high edges).
    Along a shortest path to a low edge this strictly decreases (``tow`` falls by 1,
    ``away`` changes by at most 1), so pointing each flat cell at its steepest-falling
    neighbour in this mask (same elevation, mask 0 for low edges) drains every flat that
    has an outlet, without cycles. Needs fewer than 2**31 cells (int32 ids).

    Returns (mask int32 (n,), number of flat cells). With ``assign`` the D8 codes of the
    flat cells are written into ``fd`` (in place). Flats with no low edge (a DEM that
    was not filled) keep 0.
    """
    ny, nx = z.shape
    n = ny * nx
    zf = z.ravel()
    vf = valid.ravel()
    ff = fd.ravel()
    off = _DR * nx + _DC
    mask = np.zeros(n, dtype=np.int32)
    # pass 1: flat cells get a compact id (stored as id + 1 in mask)
    nflat = 0
    for r in range(1, ny - 1):
        for c in range(1, nx - 1):
            i = r * nx + c
            if ff[i] != 0 or not vf[i]:
                continue
            seed = False
            for k in range(8):
                if not vf[i + off[k]]:
                    seed = True
                    break
            if not seed:
                nflat += 1
                mask[i] = nflat
    if nflat == 0:
        return mask, 0
    cells = np.empty(nflat, dtype=np.int32)
    for i in range(n):
        if mask[i] > 0:
            cells[mask[i] - 1] = i
    # pass 2: low edges (mark -1) and high edges
    nlow = 0
    nhigh = 0
    tow = np.zeros(nflat, dtype=np.int32)
    away = np.zeros(nflat, dtype=np.int32)
    for f in range(nflat):
        i = cells[f]
        zc = zf[i]
        high = False
        for k in range(8):
            j = i + off[k]
            if not vf[j]:
                continue
            if zf[j] > zc:
                high = True
            elif zf[j] == zc and mask[j] == 0:
                mask[j] = -1
                nlow += 1
        if high:
            away[f] = -1  # provisional high-edge flag
            nhigh += 1
    queue = np.empty(max(nlow, nhigh) + nflat, dtype=np.int32)
    # towards-lower BFS from the low edges
    qt = 0
    for f in range(nflat):
        i = cells[f]
        for k in range(8):
            j = i + off[k]
            if mask[j] == -1:
                mask[j] = -2  # queued once
                queue[qt] = j
                qt += 1
    qh = 0
    while qh < qt:
        i = queue[qh]
        qh += 1
        m = mask[i]
        d = 0 if m < 0 else tow[m - 1]
        zc = zf[i]
        r = i // nx
        c = i - r * nx
        for k in range(8):
            rr = r + _DR[k]
            cc = c + _DC[k]
            if rr < 0 or rr >= ny or cc < 0 or cc >= nx:
                continue
            j = rr * nx + cc
            mj = mask[j]
            if mj > 0 and tow[mj - 1] == 0 and zf[j] == zc:
                tow[mj - 1] = d + 1
                queue[qt] = j
                qt += 1
    # away-from-higher BFS. Barnes uses the largest ``away`` of each flat; any constant
    # >= it gives the same order inside a flat (flats never touch each other: two
    # neighbouring flat cells have the same elevation), so one global maximum serves.
    height = 0
    qt = 0
    for f in range(nflat):
        if away[f] == -1:
            away[f] = 1
            queue[qt] = cells[f]
            qt += 1
    qh = 0
    while qh < qt:
        i = queue[qh]
        qh += 1
        a = away[mask[i] - 1]
        height = max(height, a)
        for k in range(8):
            j = i + off[k]
            mj = mask[j]
            if mj > 0 and away[mj - 1] == 0:
                away[mj - 1] = a + 1
                queue[qt] = j
                qt += 1
    # combined gradient; low edges back to 0
    for f in range(nflat):
        t = tow[f]
        if t == 0:
            continue  # no outlet (not a filled DEM): stays a pit
        a = away[f]
        v = 2 * t
        if a > 0:
            v += height - a
        tow[f] = v
    for f in range(nflat):
        mask[cells[f]] = tow[f]
    for i in range(n):
        mask[i] = max(mask[i], 0)
    if assign:
        dd = math.sqrt(dx * dx + dy * dy)
        dist = np.array([dx, dd, dy, dd, dx, dd, dy, dd])
        for f in range(nflat):
            i = cells[f]
            mc = mask[i]
            if mc == 0:
                continue
            zc = zf[i]
            best = 0.0
            code = 0
            for k in range(8):
                j = i + off[k]
                if not vf[j] or zf[j] != zc:
                    continue
                s = (mc - mask[j]) / dist[k]
                if s > best:
                    best = s
                    code = _CODES[k]
            ff[i] = code
    return mask, nflat


@numba.njit(cache=True)
def _catchments_numba(order, down, pid):
    """Label of the first point on each cell's flow path (itself included), 0 if none."""
    lab = np.zeros(down.size, dtype=np.int32)
    for t in range(order.size - 1, -1, -1):
        i = order[t]
        p = pid[i]
        if p > 0:
            lab[i] = p
        else:
            d = down[i]
            if d >= 0:
                lab[i] = lab[d]
    return lab


@numba.njit(cache=True, parallel=True)
def _downstream_numba(fdir):
    """Flat receiver index per cell (-1: outlet, off-grid, nodata) and bad-code count per row."""
    ny, nx = fdir.shape
    down = np.empty(ny * nx, dtype=np.int64)
    bad = np.zeros(ny, dtype=np.int64)
    for r in prange(ny):
        for c in range(nx):
            i = r * nx + c
            k = _CODE_TO_K[fdir[r, c]]
            if k < 0:
                down[i] = -1
                if k == -3:
                    bad[r] += 1
                continue
            rr = r + _DR[k]
            cc = c + _DC[k]
            if rr < 0 or rr >= ny or cc < 0 or cc >= nx or fdir[rr, cc] == 255:
                down[i] = -1
            else:
                down[i] = rr * nx + cc
    return down, bad


@numba.njit(cache=True)
def _topological_order_numba(down, valid):
    """Kahn ordering (upstream first) of the valid cells of a D8 graph given as receivers.

    Returns (order, m); m < number of valid cells means the graph has a cycle.
    """
    n = down.size
    indeg = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        d = down[i]
        if d >= 0:
            indeg[d] += 1
    order = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        if indeg[i] != 0 or not valid[i]:
            continue
        j = i
        while True:
            order[m] = j
            m += 1
            d = down[j]
            if d < 0:
                break
            indeg[d] -= 1
            if indeg[d] != 0:
                break
            indeg[d] = 255  # reached: never a start cell for the outer loop
            j = d
    return order[:m], m


@numba.njit(cache=True, inline="always")
def _pass_on(acc, indeg, j, d):
    """acc[d] += acc[j], one donor of d fewer; True when d has no donor left (it is then
    marked 255: reached, never a start cell of a walk)."""
    acc[d] += acc[j]
    indeg[d] -= 1
    if indeg[d] != 0:
        return False
    indeg[d] = 255
    return True


@numba.njit(cache=True)
def _accumulate_numba(down, valid, acc):
    """acc[receiver] += acc[cell] for every cell, upstream first (Kahn walk, in place).

    Returns the number of cells visited; fewer than the valid cells means a cycle.
    """
    n = down.size
    indeg = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        d = down[i]
        if d >= 0:
            indeg[d] += 1
    m = 0
    for i in range(n):
        if indeg[i] != 0 or not valid[i]:
            continue
        j = i
        while True:
            m += 1
            d = down[j]
            if d < 0:
                break
            if not _pass_on(acc, indeg, j, d):
                break
            j = d
    return m


@numba.njit(cache=True, inline="always")
def _walk_down(ff, acc, indeg, j, r, c, ny, nx, r_lo, r_hi, off, pend, npend):
    """Kahn walk from the finished cell j at (r, c): add it to its receiver, and go on
    while the receiver has no donor left. A receiver outside rows [r_lo, r_hi) is not
    touched: j goes to ``pend`` instead. Returns (cells finished, npend)."""
    m = 0
    while True:
        m += 1
        k = _CODE_TO_K[ff[j]]
        if k < 0:
            break
        r += _DR[k]
        c += _DC[k]
        if r < 0 or r >= ny or c < 0 or c >= nx:
            break
        d = j + off[k]
        if ff[d] == 255:
            break
        if r < r_lo or r >= r_hi:
            pend[npend] = j
            npend += 1
            break
        if not _pass_on(acc, indeg, j, d):
            break
        j = d
    return m, npend


@numba.njit(cache=True, parallel=True)
def _accumulate_fdir_numba(fdir, acc, counts, nband):
    """acc[receiver] += acc[cell], upstream first, straight from the D8 codes (in place).

    In-degree countdown (Kahn) walking downstream as pyflwdir/richdem do: no receiver
    or order array, only a uint8 in-degree per cell, counted by gathering (each cell
    looks at which neighbours point to it), so rows go in parallel. With ``counts`` the
    accumulator is first set to 1 on valid cells (0 elsewhere). The walk runs in
    ``nband`` row bands in parallel; a finished cell whose receiver lies in another band
    is set aside, and those cells are walked on one by one afterwards, so every cell is
    still added to its receiver once, after all its donors. Returns (cells visited,
    valid cells, cells with codes that are not D8 codes); visited < valid means a cycle.
    """
    ny, nx = fdir.shape
    ff = fdir.ravel()
    indeg = np.empty(ny * nx, dtype=np.uint8)
    bad = 0
    nvalid = 0
    for r in prange(ny):
        for c in range(nx):
            i = r * nx + c
            code = ff[i]
            kc = _CODE_TO_K[code]
            if kc == -3:
                bad += 1
            if code == 255:
                indeg[i] = 0
                if counts:
                    acc[i] = 0.0
                continue
            nvalid += 1
            if counts:
                acc[i] = 1.0
            cnt = 0
            for k in range(8):
                rr = r - _DR[k]
                cc = c - _DC[k]
                if rr >= 0 and rr < ny and cc >= 0 and cc < nx and ff[rr * nx + cc] == _CODES[k]:
                    cnt += 1
            indeg[i] = cnt
    if bad:
        return 0, nvalid, bad
    off = _DR * nx + _DC
    nband = max(1, min(nband, ny // 64))
    pend = np.empty((nband, 2 * nx + 2), dtype=np.int64)  # cells of a band's first and last rows
    npend = np.zeros(nband, dtype=np.int64)
    mb = np.zeros(nband, dtype=np.int64)
    for b in prange(nband):
        r_lo = b * ny // nband
        r_hi = (b + 1) * ny // nband
        m = 0
        npb = 0
        for r0 in range(r_lo, r_hi):
            for c0 in range(nx):
                i = r0 * nx + c0
                if indeg[i] != 0 or ff[i] == 255:
                    continue
                dm, npb = _walk_down(ff, acc, indeg, i, r0, c0, ny, nx, r_lo, r_hi, off, pend[b], npb)
                m += dm
        mb[b] = m
        npend[b] = npb
    m = mb.sum()
    dummy = np.empty(1, dtype=np.int64)
    for b in range(nband):
        for e in range(npend[b]):
            j = pend[b, e]
            r = j // nx
            c = j - r * nx
            k = _CODE_TO_K[ff[j]]
            d = j + off[k]
            if _pass_on(acc, indeg, j, d):
                dm, _ = _walk_down(ff, acc, indeg, d, r + _DR[k], c + _DC[k], ny, nx, 0, ny, off, dummy, 0)
                m += dm
    return m, nvalid, 0


@numba.njit(cache=True)
def _nearest_drainage_numba(order, down, drain):
    """First drainage cell on each cell's flow path (-1 if none), walking order reversed."""
    n = down.size
    near = np.full(n, -1, dtype=np.int64)
    for t in range(order.size - 1, -1, -1):
        i = order[t]
        if drain[i]:
            near[i] = i
        else:
            d = down[i]
            if d >= 0:
                near[i] = near[d]
    return near


@numba.njit(cache=True)
def _hand_numba(order, down, drain, z):
    """HAND (float32): z - z[nearest drainage cell along the flow path]; NaN if none."""
    n = down.size
    near = np.full(n, -1, dtype=np.int64)
    out = np.full(n, np.nan, dtype=np.float32)
    for t in range(order.size - 1, -1, -1):
        i = order[t]
        if drain[i]:
            near[i] = i
            out[i] = 0.0
        else:
            d = down[i]
            if d >= 0:
                nd = near[d]
                near[i] = nd
                if nd >= 0:
                    out[i] = np.float64(z[i]) - np.float64(z[nd])
    return out


@numba.njit(cache=True)
def _label_reaches_numba(order, down, drain, max_length):
    """Reach ids 1..n on drainage cells, in topological order; 0 elsewhere."""
    n = down.size
    inflow = np.zeros(n, dtype=np.uint8)
    for t in range(order.size):
        i = order[t]
        if drain[i]:
            d = down[i]
            if d >= 0 and drain[d]:
                inflow[d] += 1
    label = np.zeros(n, dtype=np.int32)
    length = np.zeros(n, dtype=np.int64)
    nid = 0
    for t in range(order.size):
        i = order[t]
        if not drain[i]:
            continue
        if label[i] == 0:
            nid += 1
            label[i] = nid
            length[i] = 1
        d = down[i]
        if d >= 0 and drain[d] and inflow[d] == 1:
            if max_length > 0 and length[i] >= max_length:
                nid += 1
                label[d] = nid
                length[d] = 1
            else:
                label[d] = label[i]
                length[d] = length[i] + 1
    return label, nid


@numba.njit(cache=True)
def _flow_length_numba(fdir, dx, dy):
    """Distance to the receiver along the D8 direction (m); outlets get (dx + dy) / 2."""
    ny, nx = fdir.shape
    dd = math.sqrt(dx * dx + dy * dy)
    lengths = np.array([dx, dd, dy, dd, dx, dd, dy, dd])
    out = np.empty(ny * nx, dtype=np.float64)
    for r in range(ny):
        for c in range(nx):
            k = _CODE_TO_K[fdir[r, c]]
            out[r * nx + c] = lengths[k] if k >= 0 else 0.5 * (dx + dy)
    return out


@numba.njit(cache=True, error_model="numpy")
def _d8_slope_numba(z, fdir, down, dx, dy, min_slope):
    """Drop over distance to the receiver, >= min_slope; outlets take the steepest inflow."""
    ny, nx = fdir.shape
    n = ny * nx
    length = _flow_length_numba(fdir, dx, dy)
    zf = z.ravel()
    ff = fdir.ravel()
    out = np.full(n, np.nan, dtype=np.float64)
    for i in range(n):
        d = down[i]
        if d >= 0:
            s = (np.float64(zf[i]) - np.float64(zf[d])) / length[i]
            out[i] = max(min_slope, s)
    for i in range(n):
        d = down[i]
        if d >= 0 and down[d] < 0 and not (out[d] >= out[i]):
            out[d] = out[i]
    for i in range(n):
        if ff[i] != 255 and not (out[i] >= min_slope):
            out[i] = min_slope
    return out.astype(np.float32)


@numba.njit(cache=True)
def _reach_properties_numba(order, down, reaches, z, length, nreach):
    """Per-reach channel length (m) and elevation drop (m) along the reach's cells."""
    total = np.zeros(nreach + 1, dtype=np.float64)
    ztop = np.full(nreach + 1, -np.inf, dtype=np.float64)
    zbot = np.full(nreach + 1, np.inf, dtype=np.float64)
    for t in range(order.size):
        i = order[t]
        r = reaches[i]
        if r <= 0:
            continue
        total[r] += length[i]
        zi = np.float64(z[i])
        ztop[r] = max(ztop[r], zi)
        d = down[i]
        zend = np.float64(z[d]) if d >= 0 else zi
        zbot[r] = min(zbot[r], zend)
    drop = np.zeros(nreach + 1, dtype=np.float64)
    for r in range(1, nreach + 1):
        if total[r] > 0.0:
            drop[r] = ztop[r] - zbot[r]
    return total, drop


# --------------------------------------------------------------------------- public API
@grid_function(units="m")
def fill_depressions(dem, nodata=None, epsilon: bool = False) -> np.ndarray:
    """Fill depressions with Priority-Flood (Barnes et al. 2014), 8-connected.

    Without ``epsilon`` this is Algorithm 2 (priority queue + pit queue): every cell is
    raised to the lowest level at which it can spill to an outlet, so depressions become
    flats. With ``epsilon`` it is Algorithm 3: cells that would be raised to (or already
    lie at) the level of the cell they were reached from are set to ``np.nextafter`` of
    it, so every cell that is not an outlet has a strictly lower neighbour on its way to
    an outlet (no flats to resolve afterwards). Cells leave the two queues in
    nondecreasing order, so the result is the unique solution of
    ``f = max(dem, nextafter(min of f over the 8 neighbours))`` off the outlets and
    ``f = dem`` on them, independent of tie order and of how the grid is traversed
    (Barnes et al. 2014 pop the pit queue first; where the heap holds a lower cell
    that order makes the result depend on ties, which a tiled fill cannot reproduce).

    Outlets (the queue's seeds) are the valid cells on the grid edge and every valid
    cell next to a nodata cell: water drains into nodata as it does off the grid edge.

    Parameters
    ----------
    dem : ndarray (y, x), m
        Elevations, float32, float64 or integer.
    nodata : float or int, optional
        Value marking missing cells. For float DEMs NaN is always treated as nodata.
    epsilon : bool
        Use Priority-Flood+epsilon: depressions and flats are raised by one float ULP
        per cell away from the outlet, so every cell drains strictly downhill. Integer
        DEMs are returned as float64 in that case.

    Returns
    -------
    filled : ndarray (y, x), m
        Same dtype as a float input; integer input keeps its dtype without ``epsilon``
        and becomes float64 with it. Nodata cells keep the nodata value.

    Raises
    ------
    ModelError
        If ``dem`` is not a 2-D numeric array.
    """
    a = as_2d("dem", dem, kinds="fiu")
    if a.size >= 2**31:
        raise ModelError(
            f"dem has {a.size} cells; fill_depressions handles up to 2**31 - 1 cells per call. "
            "Split the grid by drainage basin (see DESIGN.md, Scale)."
        )
    valid = np.ascontiguousarray(_valid_mask(a, nodata))
    if a.dtype.kind == "f" and a.dtype in (np.float32, np.float64):
        work = np.array(a, dtype=a.dtype, order="C", copy=True)
        out_dtype = a.dtype
    elif a.dtype.kind == "f":
        raise ModelError(f"dem has dtype {a.dtype}; convert it to float32 or float64.")
    else:
        # integer DEM: every filled value is a copy of an input value (exact in float64
        # up to 2**53) unless epsilon adds ULPs, which needs a float result
        if np.abs(a).max(initial=0) > 2**53:
            raise ModelError("integer dem has values beyond 2**53; convert it to float64 first.")
        work = np.ascontiguousarray(a, dtype=np.float64).copy()
        out_dtype = np.dtype(np.float64) if epsilon else a.dtype
    work = _fill_depressions_numba(work, valid, bool(epsilon), work.dtype.type(np.inf))
    if out_dtype != work.dtype:
        work = work.astype(out_dtype)
    if not valid.all():
        work[~valid] = a[~valid]
    return work


@grid_function()
def flow_direction_d8(filled, nodata=None, dx: float = 1.0, dy: float | None = None,
                      resolve_flats: bool = False) -> np.ndarray:
    """D8 flow directions by steepest descent (O'Callaghan & Mark 1984, pysheds' rule).

    Each valid cell points to the valid neighbour maximising drop / distance, with
    distances ``dx`` (E, W), ``dy`` (N, S) and ``sqrt(dx**2 + dy**2)`` (diagonals). Only
    strictly lower neighbours count; ties go to the first in E, SE, S, SW, W, NW, N, NE.

    A cell with no strictly lower valid neighbour gets 0 (outlet/pit). That covers true
    pits, flats of a filled DEM, grid-edge cells with no lower neighbour inside the grid
    and, by choice, valid cells next to nodata with no lower valid neighbour: they do not
    point into the nodata cell, they are outlets (code 0) themselves.

    Parameters
    ----------
    filled : ndarray (y, x), m
        Depression-filled elevations (use ``fill_depressions(..., epsilon=True)`` to avoid
        flats).
    nodata : float or int, optional
        Nodata value of ``filled`` (NaN is always nodata for float input).
    dx, dy : float, m (or the raster's units)
        Cell size along x and y; ``dy`` defaults to ``dx``.
    resolve_flats : bool
        Give the flat cells of a (no-epsilon) filled DEM a direction as well, with the
        flat mask of :func:`resolve_flats` (Barnes, Lehman & Mulla 2014b): on a flat each
        cell points at its same-elevation neighbour with the steepest fall of the mask,
        i.e. along the flat towards its outlet and away from higher ground. On a
        Priority-Flood filled DEM every valid cell that is not on the grid edge or next
        to nodata then drains (no interior 0, no cycles). Non-flat cells are unchanged.

    Returns
    -------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes (see the module docstring), 0 outlet/pit, 255 nodata.
    """
    a = as_2d("filled", filled, kinds="fiu")
    dxv, dyv = _dy(dx, dy)
    valid = np.ascontiguousarray(_valid_mask(a, nodata))
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    a = np.ascontiguousarray(a)
    fd = _flow_direction_d8_numba(a, valid, dxv, dyv)
    if resolve_flats:
        _check_int32_size(a)
        _resolve_flats_numba(a, valid, fd, dxv, dyv, True)
    return fd


@grid_function()
def resolve_flats(filled, nodata=None) -> np.ndarray:
    """Flat mask (drainage increments) of a filled DEM (Barnes, Lehman & Mulla 2014b).

    Flat cells are valid cells without a strictly lower valid neighbour that are not
    outlets (not on the grid edge, no nodata neighbour). Inside each flat two
    breadth-first gradients are combined: ``towards`` (steps to the nearest cell of the
    same elevation that drains, a "low edge") and ``away`` (steps from the nearest flat
    cell next to higher ground); ``mask = 2 * towards + (max(away) - away)`` (Barnes
    takes the maximum per flat; one grid-wide maximum gives the same order inside each
    flat, hence the same directions, without labelling the flats).
    Following the falling mask leads every flat cell to its outlet, preferring paths
    away from higher terrain. ``flow_direction_d8(..., resolve_flats=True)`` applies it.

    Parameters
    ----------
    filled : ndarray (y, x), m
        Depression-filled elevations (``fill_depressions(dem)``, no epsilon).
    nodata : float or int, optional
        Nodata value (NaN is always nodata for float input).

    Returns
    -------
    mask : ndarray (y, x) int32
        > 0 on flat cells that can drain (larger = further from the outlet), 0 elsewhere
        (including flats with no outlet, i.e. pits of a DEM that was not filled).
    """
    a = as_2d("filled", filled, kinds="fiu")
    valid = np.ascontiguousarray(_valid_mask(a, nodata))
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    a = np.ascontiguousarray(a)
    _check_int32_size(a)
    fd = _flow_direction_d8_numba(a, valid, 1.0, 1.0)
    mask, _ = _resolve_flats_numba(a, valid, fd, 1.0, 1.0, False)
    return mask.reshape(a.shape)


def downstream_index(fdir) -> np.ndarray:
    """Flat index of each cell's receiver.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.

    Returns
    -------
    down : ndarray (y, x) int64
        ``y * nx + x`` of the receiving cell; -1 for outlets (0), nodata (255) and flow
        that leaves the grid or enters a nodata cell.
    """
    fd = _check_fdir(fdir)
    return _downstream(fd).reshape(fd.shape)


def _downstream(fd: np.ndarray) -> np.ndarray:
    down, bad = _downstream_numba(fd)
    nbad = int(bad.sum())
    if nbad:
        vals = np.setdiff1d(np.unique(fd), np.array([0, 255, *D8_CODES], dtype=np.uint8))
        raise ModelError(
            f"fdir has {nbad} cells with codes that are not ESRI D8 codes (e.g. {vals[:5].tolist()}); "
            "use 1,2,4,...,128 with 0 = outlet and 255 = nodata (see models.terrain)."
        )
    return down


def _check_visited(m: int, valid: np.ndarray) -> None:
    nvalid = int(np.count_nonzero(valid))
    if m != nvalid:
        raise ModelError(
            f"fdir contains flow cycles ({nvalid - m} cells never reach an outlet); "
            "recompute it with flow_direction_d8 on a filled DEM."
        )


def _order(fd: np.ndarray, down: np.ndarray) -> np.ndarray:
    valid = (fd != 255).ravel()
    order, m = _topological_order_numba(down, valid)
    _check_visited(m, valid)
    return order


def topological_order(fdir) -> np.ndarray:
    """Valid cells ordered so that every cell comes after all cells upstream of it.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.

    Returns
    -------
    order : ndarray (n_valid,) int64
        Flat indices ``y * nx + x``. Reversed, it lists every cell after its receiver.

    Raises
    ------
    ModelError
        If ``fdir`` has invalid codes or a flow cycle.
    """
    fd = _check_fdir(fdir)
    return _order(fd, _downstream(fd))


@grid_function()
def flow_accumulation_d8(fdir, weights=None) -> np.ndarray:
    """Upstream cell count (the cell itself included) or upstream sum of ``weights``.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    weights : ndarray (y, x), optional
        Any per-cell quantity (e.g. runoff m3/s, area m2). NaN weights propagate.

    Returns
    -------
    acc : ndarray (y, x) float64
        Count (cells) or sum (units of ``weights``); NaN on nodata cells. Flow to a
        neighbour outside the grid or onto nodata leaves the model.
    """
    fd = _check_fdir(fdir)
    if weights is None:
        acc = np.empty(fd.size, dtype=np.float64)
    else:
        w = np.asarray(weights)
        same_shape("weights", w, "fdir", fd)
        if w.dtype.kind not in "fiub":
            raise ModelError(f"weights must be numeric; got dtype {w.dtype}.")
        acc = np.where(fd != 255, w, 0.0).astype(np.float64).ravel()
    m, nvalid, nbad = _accumulate_fdir_numba(fd, acc, weights is None, numba.get_num_threads())
    if nbad:
        _downstream(fd)  # raises the ModelError that names the bad codes
    if m != nvalid:
        _check_visited(m, fd != 255)
    acc = acc.reshape(fd.shape)
    if nvalid != fd.size:
        acc[fd == 255] = np.nan
    return acc


def catchments(fdir, points) -> np.ndarray:
    """Label the cells upstream of a set of points (one pass, O(n)).

    Each cell gets the label of the first point on its D8 flow path, the cell itself
    included, so nested points split a basin: a cell upstream of two points belongs to
    the first one its water reaches.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    points : array_like
        Flat indices ``y * nx + x`` (shape (k,)) or ``(row, col)`` pairs (shape (k, 2)).
        Point ``p`` (0-based position in ``points``) gets label ``p + 1``; if a cell is
        given twice, its first position counts.

    Returns
    -------
    labels : ndarray (y, x) int32
        1..k upstream of (and at) the points, 0 where no point is reached and on nodata.

    Raises
    ------
    ModelError
        If a point lies outside the grid or on a nodata cell, or ``fdir`` is invalid or
        has a cycle.
    """
    fd = _check_fdir(fdir)
    ny, nx = fd.shape
    p = np.asarray(points)
    if p.dtype.kind not in "iu":
        raise ModelError(f"points must be integer flat indices or (row, col) pairs; got dtype {p.dtype}.")
    if p.ndim == 2 and p.shape[1] == 2:
        rows, cols = p[:, 0].astype(np.int64), p[:, 1].astype(np.int64)
        if np.any((rows < 0) | (rows >= ny) | (cols < 0) | (cols >= nx)):
            raise ModelError(f"points have (row, col) pairs outside the grid of shape {fd.shape}.")
        flat = rows * nx + cols
    elif p.ndim <= 1:
        flat = p.reshape(-1).astype(np.int64)
        if np.any((flat < 0) | (flat >= fd.size)):
            raise ModelError(f"points have flat indices outside 0..{fd.size - 1}.")
    else:
        raise ModelError(f"points must have shape (k,) or (k, 2); got {p.shape}.")
    if np.any(fd.ravel()[flat] == 255):
        raise ModelError("some points lie on nodata cells (fdir == 255); move them onto the channel.")
    pid = np.zeros(fd.size, dtype=np.int32)
    uniq, first = np.unique(flat, return_index=True)  # the first position of a repeated cell wins
    pid[uniq] = (first + 1).astype(np.int32)
    down = _downstream(fd)
    order = _order(fd, down)
    return _catchments_numba(order, down, pid).reshape(fd.shape)


def drainage_network(acc, threshold: float) -> np.ndarray:
    """Channel mask: cells whose accumulation reaches ``threshold``.

    Parameters
    ----------
    acc : ndarray (y, x), cells (or units of the accumulated weights)
    threshold : float, same units as ``acc``

    Returns
    -------
    drainage : ndarray (y, x) bool
        ``acc >= threshold`` (False where ``acc`` is NaN).
    """
    a = as_2d("acc", acc, kinds="fiu")
    thr = float(threshold)
    if not np.isfinite(thr):
        raise ModelError(f"threshold must be a finite number; got {threshold!r}.")
    with np.errstate(invalid="ignore"):
        return a >= thr


def label_reaches(fdir, drainage, max_length: int | None = None) -> np.ndarray:
    """Split the drainage network into reaches and number them 1..n.

    A reach starts at a channel head (a drainage cell with no drainage cell flowing in)
    or at a confluence cell (a drainage cell with two or more drainage cells flowing
    in) and runs downstream until the next confluence or the outlet. With
    ``max_length`` a reach is also split every ``max_length`` cells. Ids are assigned
    in topological order (upstream reaches first).

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    drainage : ndarray (y, x) bool
        Channel cells (e.g. ``drainage_network(acc, threshold)``).
    max_length : int, optional, cells
        Longest reach; None for no limit.

    Returns
    -------
    reaches : ndarray (y, x) int32
        Reach id on drainage cells, 0 elsewhere.
    """
    fd = _check_fdir(fdir)
    drain = _check_mask("drainage", drainage, fd.shape) & (fd != 255)
    if max_length is None:
        ml = 0
    else:
        if int(max_length) != max_length or max_length < 1:
            raise ModelError(f"max_length must be a whole number of cells >= 1 or None; got {max_length!r}.")
        ml = int(max_length)
    down = _downstream(fd)
    order = _order(fd, down)
    label, _ = _label_reaches_numba(order, down, drain.ravel(), ml)
    return label.reshape(fd.shape)


def nearest_drainage(fdir, drainage) -> np.ndarray:
    """First drainage cell reached along each cell's D8 flow path.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    drainage : ndarray (y, x) bool
        Channel cells.

    Returns
    -------
    nearest : ndarray (y, x) int64
        Flat index of that cell (the cell itself if it is drainage), -1 if the path
        leaves the model without meeting the network, and on nodata cells.
    """
    fd = _check_fdir(fdir)
    drain = _check_mask("drainage", drainage, fd.shape) & (fd != 255)
    down = _downstream(fd)
    order = _order(fd, down)
    return _nearest_drainage_numba(order, down, drain.ravel()).reshape(fd.shape)


def reach_catchments(fdir, reaches) -> np.ndarray:
    """Reach id of the drainage cell each cell drains to (its HAND reference cell).

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    reaches : ndarray (y, x) int32
        Reach ids on drainage cells, 0 elsewhere (from :func:`label_reaches`).

    Returns
    -------
    reach_of_cell : ndarray (y, x) int32
        0 where no drainage cell is reached, and on nodata.
    """
    fd = _check_fdir(fdir)
    rc = as_2d("reaches", reaches, kinds="iu")
    same_shape("reaches", rc, "fdir", fd)
    if rc.size and rc.min() < 0:
        raise ModelError("reaches must be >= 0 (0 = not a channel cell); use label_reaches.")
    near = nearest_drainage(fd, rc > 0).ravel()
    flat = rc.ravel().astype(np.int32)
    out = np.where(near >= 0, flat[np.maximum(near, 0)], 0).astype(np.int32)
    return out.reshape(fd.shape)


def reach_outlets(reaches, acc) -> np.ndarray:
    """Flat index of each reach's most downstream cell (its largest accumulation).

    Parameters
    ----------
    reaches : ndarray (y, x) int
        Reach ids 1..n on channel cells, 0 elsewhere (:func:`label_reaches`).
    acc : ndarray (y, x)
        Flow accumulation (:func:`flow_accumulation_d8`).

    Returns
    -------
    outlet : ndarray (n + 1,) int64
        ``y * nx + x`` of reach r's outlet at index r; -1 at index 0 and for ids not used.
    """
    r = as_2d("reaches", reaches, kinds="iu")
    a = as_2d("acc", acc, kinds="fiu")
    if a.shape != r.shape:
        raise ModelError(f"acc has shape {a.shape} but reaches has {r.shape}; use the same grid.")
    flat = r.ravel()
    idx = np.flatnonzero(flat)
    ids = flat[idx]
    outlet = np.full(int(flat.max(initial=0)) + 1, -1, dtype=np.int64)
    if idx.size:
        order = np.lexsort((a.ravel()[idx], ids))
        last = np.r_[np.flatnonzero(np.diff(ids[order])), ids.size - 1]
        outlet[ids[order][last]] = idx[order][last]
    return outlet


def reach_properties(reaches, fdir, filled, dx: float = 1.0, dy: float | None = None,
                     min_slope: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Channel length and mean bed slope of every reach.

    Parameters
    ----------
    reaches : ndarray (y, x) int32
        Reach ids on drainage cells (0 elsewhere).
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    filled : ndarray (y, x), m
        Filled elevations.
    dx, dy : float, m
        Cell sizes (``dy`` defaults to ``dx``).
    min_slope : float, m/m
        Lower bound of the returned slope.

    Returns
    -------
    length : ndarray (n_reach + 1,) float64, m
        Sum of the D8 flow lengths of the reach's cells (index = reach id, [0] unused = 0).
    slope : ndarray (n_reach + 1,) float64, m/m
        Drop from the reach's highest cell to the cell below its last cell, divided by
        ``length``; at least ``min_slope`` ([0] = ``min_slope``).
    """
    fd = _check_fdir(fdir)
    rc = as_2d("reaches", reaches, kinds="iu")
    z = as_2d("filled", filled, kinds="fiu")
    same_shape("reaches", rc, "fdir", fd)
    same_shape("filled", z, "fdir", fd)
    dxv, dyv = _dy(dx, dy)
    nreach = int(rc.max(initial=0))
    down = _downstream(fd)
    order = _order(fd, down)
    length = _flow_length_numba(fd, dxv, dyv)
    zz = np.ascontiguousarray(z, dtype=np.float64).ravel()
    rr = np.where(fd != 255, rc, 0).astype(np.int64).ravel()
    total, drop = _reach_properties_numba(order, down, rr, zz, length, nreach)
    slope = np.full(nreach + 1, float(min_slope))
    ok = total > 0
    slope[ok] = np.maximum(drop[ok] / total[ok], float(min_slope))
    return total, slope


def hand(filled, fdir, drainage) -> np.ndarray:
    """Height Above the Nearest Drainage (Nobre et al. 2011).

    ``HAND[c] = filled[c] - filled[d]`` where ``d`` is the first drainage cell on the D8
    flow path from ``c``. One pass over the cells in reversed topological order (O(n)).

    Parameters
    ----------
    filled : ndarray (y, x), m
        Depression-filled elevations (the DEM the flow directions came from).
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    drainage : ndarray (y, x) bool
        Channel cells.

    Returns
    -------
    hand : ndarray (y, x) float32, m
        0 on drainage cells; NaN where no drainage cell is reached and on nodata.
    """
    fd = _check_fdir(fdir)
    z = as_2d("filled", filled, kinds="fiu")
    same_shape("filled", z, "fdir", fd)
    drain = _check_mask("drainage", drainage, fd.shape) & (fd != 255)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    down = _downstream(fd)
    order = _order(fd, down)
    out = _hand_numba(order, down, drain.ravel(), np.ascontiguousarray(z).ravel())
    return out.reshape(fd.shape)


def d8_slope(filled, fdir, dx: float = 1.0, dy: float | None = None, min_slope: float = 1e-4) -> np.ndarray:
    """Bed slope along the D8 direction: drop / distance to the receiver.

    Parameters
    ----------
    filled : ndarray (y, x), m
        Filled elevations.
    fdir : ndarray (y, x) uint8
        ESRI D8 codes.
    dx, dy : float, m
        Cell sizes (``dy`` defaults to ``dx``).
    min_slope : float, m/m
        Lower bound (flats of a filled DEM would otherwise give 0).

    Returns
    -------
    slope : ndarray (y, x) float32, m/m
        At least ``min_slope``. Cells without a receiver (outlets, pits, flow off the
        grid) take the steepest slope of the cells draining into them, or ``min_slope``
        if none. NaN on nodata.
    """
    fd = _check_fdir(fdir)
    z = as_2d("filled", filled, kinds="fiu")
    same_shape("filled", z, "fdir", fd)
    dxv, dyv = _dy(dx, dy)
    ms = positive_scalar("min_slope", min_slope)
    down = _downstream(fd)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    return _d8_slope_numba(np.ascontiguousarray(z), fd, down, dxv, dyv, ms).reshape(fd.shape)
