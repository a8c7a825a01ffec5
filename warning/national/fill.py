"""Depression filling of a national grid over tiles on Dask (Barnes 2016).

The result is bit-for-bit :func:`models.terrain.fill_depressions` (without epsilon) on
the whole grid, but no worker ever holds more than one tile and its one-cell halo:

1. one task per tile reads the tile + halo from the source Zarr array and runs
   :func:`models.tiled_fill.flood_tile` (Priority-Flood from the tile's perimeter and
   true outlets, with labels); it returns only the tile's spill graph and the labels
   and elevations of its perimeter cells;
2. the client numbers all labels globally, links touching perimeter cells of
   neighbouring tiles (8-connected, corners included) with edges at
   ``max(z_u, z_v)``, and solves the graph from the ocean (grid edge and nodata) with
   :func:`models.tiled_fill.solve_spill_graph`;
3. one task per tile writes ``max(f, level[label])`` to the destination, whose chunks
   are the tiles. ``f`` and the labels come either from flooding the tile again (Barnes'
   "recompute" strategy, the default: no extra storage; the kernel is deterministic) or,
   with ``scratch=``, from a Zarr group the first round wrote them to ("cache": about
   twice the grid's size on disk, half the compute).

With ``epsilon=True`` (the fill the site pipeline uses) there is no spill graph: rounds
of :func:`models.tiled_fill.epsilon_tile` solve each tile with the ring of its
neighbours' current sides, which the client keeps (+inf before a neighbour is solved;
the first round reads the DEM's halo to know which ring cells are nodata). After each
round, the tiles next to a tile whose sides changed are solved again; the rounds stop
when no side changes. The grid then satisfies the epsilon fill's defining equation
everywhere, so it is bit-for-bit ``fill_depressions(dem, nodata, epsilon=True)``.
Values only decrease from the +inf start, so the rounds number about the tiles that the
longest drainage path crosses, and each round solves only the tiles around a change.

Tasks are pure functions of the stored input, so Dask may rerun any of them (a lost
worker) without changing the result.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from dataclasses import dataclass

import dask
import numpy as np

from models.terrain import _valid_mask
from models.tiled_fill import (SIDES, TileFlood, epsilon_tile, fixup_tile, flood_tile, perimeter_values,
                               solve_spill_graph, work_dtype)

from .tiles import Tile, TileGrid, create_like, open_grid, read_block, to_zarr, write_tile

log = logging.getLogger(__name__)

__all__ = ["fill_array", "fill_tiled"]


@dataclass
class _TileGraph:
    """What a first-round task sends back: small, O(tile perimeter + region contacts)."""

    n_labels: int
    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    perimeter: dict[str, tuple[np.ndarray, np.ndarray]]


def _flood_task(src, tile: Tile, nodata, scratch=None) -> _TileGraph:
    block, core = read_block(src, tile)
    tf = flood_tile(block, core, nodata)
    if scratch is not None:  # "cache" strategy: keep f and labels for the fix-up
        write_tile(scratch["filled"], tile, tf.filled)
        write_tile(scratch["labels"], tile, tf.labels)
    return _TileGraph(tf.n_labels, tf.edge_a, tf.edge_b, tf.edge_w, tf.perimeter())


def _fixup_task(src, dst, tile: Tile, nodata, levels: np.ndarray) -> int:
    block, core = read_block(src, tile)
    tf = flood_tile(block, core, nodata, edges=False)
    out = fixup_tile(tf, levels, block[core])
    write_tile(dst, tile, out)
    return tile.row


def _fixup_cached_task(src, scratch, dst, tile: Tile, levels: np.ndarray) -> int:
    labels = np.asarray(scratch["labels"][tile.slices])
    tf = TileFlood(filled=np.asarray(scratch["filled"][tile.slices]), labels=labels,
                   n_labels=levels.size, edge_a=_EMPTY_I, edge_b=_EMPTY_I, edge_w=_EMPTY_F,
                   valid=labels != 0)  # every valid cell gets a label, nodata keeps 0
    write_tile(dst, tile, fixup_tile(tf, levels, np.asarray(src[tile.slices])))
    return tile.row


_EMPTY_I = np.zeros(0, dtype=np.int32)
_EMPTY_F = np.zeros(0, dtype=np.float64)


def _make_scratch(scratch, src, tile: tuple[int, int]) -> dict:
    import zarr

    group = zarr.open_group(os.fspath(scratch) if isinstance(scratch, (str, os.PathLike))
                            else scratch, mode="w")
    return {"filled": group.create_array("filled", shape=src.shape, chunks=tile,
                                         dtype=work_dtype(src.dtype), fill_value=0),
            "labels": group.create_array("labels", shape=src.shape, chunks=tile,
                                         dtype=np.int32, fill_value=0)}


def _pairs(lu, zu, lv, zv):
    """Edges between two facing strips (cell k of one touches k-1, k, k+1 of the other)."""
    n = lu.size
    out_a, out_b, out_w = [], [], []
    for d in (-1, 0, 1):
        k0, k1 = max(0, -d), min(n, lv.size - d)
        if k1 <= k0:
            continue
        a, b = lu[k0:k1], lv[k0 + d:k1 + d]
        w = np.maximum(zu[k0:k1], zv[k0 + d:k1 + d])
        keep = (a >= 0) & (b >= 0) & (a != b)
        out_a.append(a[keep])
        out_b.append(b[keep])
        out_w.append(w[keep])
    return out_a, out_b, out_w


def _solve(grid: TileGrid, graphs: list[_TileGraph]) -> list[np.ndarray]:
    """Global label levels, split back into one array per tile (indexed by local label)."""
    own = np.array([g.n_labels - 2 for g in graphs], dtype=np.int64)
    off = np.zeros(len(graphs) + 1, dtype=np.int64)
    np.cumsum(own, out=off[1:])
    n_nodes = 1 + int(off[-1])
    # local label -> global node: 0 (nodata) -> -1, 1 (ocean) -> 0, k >= 2 -> 1 + off + k - 2
    luts = [np.concatenate(([-1, 0], 1 + off[t] + np.arange(own[t], dtype=np.int64)))
            for t in range(len(graphs))]
    ea, eb, ew = [], [], []
    for t, g in enumerate(graphs):
        ea.append(luts[t][g.a])
        eb.append(luts[t][g.b])
        ew.append(g.w)

    def strip(t: int, side: str, sl=slice(None)):
        lab, z = graphs[t].perimeter[side]
        return luts[t][lab[sl]], z[sl]

    for tl in grid:
        t = grid.index(tl)
        links = []
        if tl.col + 1 < grid.n_cols:
            links.append((strip(t, "right"), strip(grid.index(grid[tl.row, tl.col + 1]), "left")))
        if tl.row + 1 < grid.n_rows:
            below = grid.index(grid[tl.row + 1, tl.col])
            links.append((strip(t, "bottom"), strip(below, "top")))
            if tl.col + 1 < grid.n_cols:
                t2 = grid.index(grid[tl.row + 1, tl.col + 1])
                links.append((strip(t, "bottom", slice(-1, None)), strip(t2, "top", slice(0, 1))))
            if tl.col > 0:
                t2 = grid.index(grid[tl.row + 1, tl.col - 1])
                links.append((strip(t, "bottom", slice(0, 1)), strip(t2, "top", slice(-1, None))))
        for (lu, zu), (lv, zv) in links:
            a, b, w = _pairs(lu, zu, lv, zv)
            ea += a
            eb += b
            ew += w
    a = np.concatenate(ea)
    b = np.concatenate(eb)
    w = np.concatenate(ew)
    log.info("spill graph: %d labels, %d edges over %d tiles", n_nodes, a.size, len(grid))
    level = solve_spill_graph(n_nodes, a, b, w)
    return [np.concatenate(([-np.inf, -np.inf], level[1 + off[t]:1 + off[t + 1]]))
            for t in range(len(graphs))]


def _epsilon_task(src, dst, tile: Tile, nodata, halo: dict[str, np.ndarray],
                  again: bool) -> dict[str, np.ndarray]:
    """One tile of the epsilon fill given its ring; returns its sides (NaN on nodata).

    In the first round the client does not know yet which ring cells are nodata: it
    sends +inf for every ring cell, and the task masks the ring with the DEM's own halo.
    A tile solved ``again`` is lowered from its stored values where its ring went down.
    """
    if any(np.isposinf(v).any() for v in halo.values()):
        block, core = read_block(src, tile)
        ring_valid = _valid_mask(block, nodata)
        dem = block[core]
        halo = {k: v.copy() for k, v in halo.items()}
        r0, c0 = core[0].start, core[1].start
        h, w = dem.shape
        rows = {"top": r0 - 1, "bottom": r0 + h}
        for side, r in rows.items():
            ring = halo[side]
            if 0 <= r < block.shape[0]:  # else the grid ends there: the ring stays NaN
                cols = np.arange(c0 - 1, c0 + w + 1)
                inside = (cols >= 0) & (cols < block.shape[1])
                ok = np.zeros(w + 2, dtype=bool)
                ok[inside] = ring_valid[r, cols[inside]]
                ring[~ok] = np.nan
        for side, c in {"left": c0 - 1, "right": c0 + w}.items():
            if 0 <= c < block.shape[1]:
                halo[side][~ring_valid[r0:r0 + h, c]] = np.nan
    else:
        dem = np.asarray(src[tile.slices])
    out = epsilon_tile(dem, halo, nodata, previous=np.asarray(dst[tile.slices]) if again else None)
    write_tile(dst, tile, out)
    return perimeter_values(out, _valid_mask(dem, nodata))


def _halo(grid: TileGrid, sides: list[dict[str, np.ndarray] | None], tl: Tile, wdt: np.dtype
          ) -> dict[str, np.ndarray]:
    """The ring of cells around ``tl`` from its neighbours' current sides: NaN off the
    grid, +inf where a neighbour has not been solved yet (an upper bound)."""
    h, w = tl.shape
    top = np.full(w + 2, np.nan, dtype=wdt)
    bottom = np.full(w + 2, np.nan, dtype=wdt)
    left = np.full(h, np.nan, dtype=wdt)
    right = np.full(h, np.nan, dtype=wdt)

    def at(r: int, c: int) -> dict[str, np.ndarray] | None:
        if 0 <= r < grid.n_rows and 0 <= c < grid.n_cols:
            return sides[grid.index(grid[r, c])] or _UNKNOWN
        return None

    r, c = tl.row, tl.col
    for ring, rr, near in ((top, r - 1, "bottom"), (bottom, r + 1, "top")):
        if (s := at(rr, c)) is not None:
            ring[1:-1] = s.get(near, np.inf)
        if (s := at(rr, c - 1)) is not None:
            ring[0] = s[near][-1] if near in s else np.inf
        if (s := at(rr, c + 1)) is not None:
            ring[-1] = s[near][0] if near in s else np.inf
    if (s := at(r, c - 1)) is not None:
        left[:] = s.get("right", np.inf)
    if (s := at(r, c + 1)) is not None:
        right[:] = s.get("left", np.inf)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


#: the sides of a tile not solved yet: every cell +inf
_UNKNOWN: dict[str, np.ndarray] = {}


def _facing(old: dict[str, np.ndarray] | None, new: dict[str, np.ndarray]) -> set[tuple[int, int]]:
    """Offsets (rows, cols) of the neighbour tiles whose ring holds a side cell that changed."""
    out: set[tuple[int, int]] = set()
    for side, (dr, dc) in {"top": (-1, 0), "bottom": (1, 0), "left": (0, -1), "right": (0, 1)}.items():
        v = new[side]
        was = np.full_like(v, np.inf) if old is None else old[side]
        diff = ~((v == was) | (np.isnan(v) & np.isnan(was)) | (np.isnan(v) & np.isposinf(was)))
        if not diff.any():
            continue
        out.add((dr, dc))
        # a corner cell is also in the ring of the diagonal neighbour (and of the one
        # across the other side, which that side's own check covers)
        if diff[0]:
            out.add((dr, -1) if dr else (-1, dc))
        if diff[-1]:
            out.add((dr, 1) if dr else (1, dc))
    return out


def _epsilon_rounds(grid: TileGrid, src, dst, nodata, wdt: np.dtype, client, run: str) -> int:
    """Solve tiles, starting from +inf sides, until no tile's sides change; the number of
    rounds. The sides only decrease (from an upper bound), so the rounds end after about
    as many as tile edges that the longest drainage path crosses, plus one."""
    task = dask.delayed(_epsilon_task, pure=True)
    sides: list[dict[str, np.ndarray] | None] = [None] * len(grid)
    dirty = set(range(len(grid)))
    rounds = 0
    while dirty:
        rounds += 1
        todo = sorted(dirty)
        tiles = [grid[divmod(t, grid.n_cols)] for t in todo]
        new = _run([task(src, dst, tl, nodata, _halo(grid, sides, tl, wdt), sides[t] is not None,
                         dask_key_name=f"fill-eps-{run}-{rounds}-{t}")
                    for t, tl in zip(todo, tiles, strict=True)], client)
        dirty = set()
        for t, tl, got in zip(todo, tiles, new, strict=True):
            old, sides[t] = sides[t], got
            for dr, dc in _facing(old, got):
                r, c = tl.row + dr, tl.col + dc
                if 0 <= r < grid.n_rows and 0 <= c < grid.n_cols:
                    dirty.add(grid.index(grid[r, c]))
        log.info("epsilon round %d: %d tiles solved, %d to redo", rounds, len(todo), len(dirty))
    return rounds


def _run(tasks: list, client) -> list:
    if client is None:
        return list(dask.compute(*tasks))
    return client.gather(client.compute(tasks))


def fill_tiled(source, dest, *, tile: tuple[int, int] | None = None, nodata=None, client=None,
               overwrite: bool = False, scratch=None, epsilon: bool = False):
    """Fill depressions of a Zarr grid tile by tile on Dask; write the result to ``dest``.

    Parameters
    ----------
    source : zarr.Array or str or PathLike
        The DEM (y, x), m, as a Zarr array (see :func:`warning.national.tiles.to_zarr`).
        Tasks get the array's handle (store location and metadata, never its data), so
        its store must be reachable from every worker: a local directory on one
        machine, a shared file system or object store on several; an in-memory store
        only with the threaded scheduler.
    dest : zarr.Array or str or PathLike
        Where the filled DEM goes: a path (a Zarr array chunked by ``tile`` is created
        there) or an existing array of the same shape whose chunks divide ``tile``.
    tile : (rows, cols), optional
        Tile shape; defaults to the source's chunk shape.
    nodata : float or int, optional
        Nodata value; defaults to ``source.attrs["nodata"]``. NaN/inf are always nodata.
    client : distributed.Client, optional
        Runs the tasks on this cluster; without it Dask's default scheduler is used
        (threads, unless a ``distributed.Client`` is the default).
    overwrite : bool
        Replace an existing array at a ``dest`` path.
    scratch : str or PathLike or zarr Store, optional
        Barnes' "cache" strategy: the first round stores each tile's local fill and
        labels in a Zarr group here (about 2x the grid's size, overwritten), and the
        second round reads them instead of flooding every tile again. Without it the
        second round recomputes the flood (no extra storage, twice the compute).
        Not used with ``epsilon`` (which has no fix-up round).
    epsilon : bool
        Priority-Flood+epsilon (the fill the site pipeline uses). The result is float:
        float32 for a float32 DEM, float64 otherwise, as on a single machine. The
        number of rounds is stored in ``dest.attrs["epsilon_rounds"]``; ``scratch`` is
        not used.

    Returns
    -------
    zarr.Array
        ``dest``, holding bit-for-bit
        ``models.terrain.fill_depressions(dem, nodata, epsilon=epsilon)``.
    """
    src = open_grid(source)
    if src.ndim != 2:
        raise ValueError(f"source must be a 2-D grid (y, x); got shape {src.shape}")
    shape_t = tile or src.chunks
    tile = (int(shape_t[0]), int(shape_t[1]))
    grid = TileGrid(src.shape, tile)
    if nodata is None:
        nodata = src.attrs.get("nodata")
    out_dtype = work_dtype(src.dtype) if epsilon else np.dtype(src.dtype)
    if isinstance(dest, (str, os.PathLike)):
        dst = create_like(src, dest, tile=tile, dtype=out_dtype, overwrite=overwrite)
    else:
        dst = open_grid(dest)
        if dst.shape != src.shape:
            raise ValueError(f"dest has shape {dst.shape}; source has {src.shape}")
        if dst.dtype != out_dtype:
            raise ValueError(f"dest has dtype {dst.dtype}; this fill writes {out_dtype}")
        if any(t % c for t, c in zip(tile, dst.chunks, strict=True)):
            raise ValueError(f"dest chunks {dst.chunks} must divide the tile {tile}: tasks writing "
                             "parts of one chunk at once would overwrite each other")
    tiles = list(grid)
    run = uuid.uuid4().hex[:12]  # unique task keys per call (a retry keeps its key)
    log.info("tiled fill of %s cells in %d tiles of %s", src.shape, len(tiles), tile)
    if epsilon:
        rounds = _epsilon_rounds(grid, src, dst, nodata, work_dtype(src.dtype), client, run)
        dst.attrs["epsilon_rounds"] = rounds
        return dst
    flood = dask.delayed(_flood_task, pure=True)
    cache = None if scratch is None else _make_scratch(scratch, src, tile)
    graphs = _run([flood(src, tl, nodata, cache, dask_key_name=f"fill-flood-{run}-{grid.index(tl)}")
                   for tl in tiles], client)
    levels = _solve(grid, graphs)
    if cache is None:
        fix = dask.delayed(_fixup_task, pure=True)
        fixups = [fix(src, dst, tl, nodata, levels[grid.index(tl)],
                      dask_key_name=f"fill-fixup-{run}-{grid.index(tl)}") for tl in tiles]
    else:
        fix = dask.delayed(_fixup_cached_task, pure=True)
        fixups = [fix(src, cache, dst, tl, levels[grid.index(tl)],
                      dask_key_name=f"fill-fixup-{run}-{grid.index(tl)}") for tl in tiles]
    _run(fixups, client)
    return dst


def fill_array(dem, *, tile: tuple[int, int], nodata=None, client=None,
               cache: bool = False, epsilon: bool = False) -> np.ndarray:
    """:func:`fill_tiled` on an in-memory DEM through a temporary Zarr store (for tests).

    Without ``client`` the store is in memory (threads share it); with one it is a
    temporary directory every worker can open. Returns the filled grid as a numpy array
    (the DEM's dtype, or the epsilon fill's float dtype). ``cache`` uses a temporary
    scratch store and ``epsilon`` the epsilon fill (see :func:`fill_tiled`).
    """
    from zarr.storage import MemoryStore

    dem = np.asarray(dem)
    dt = work_dtype(dem.dtype) if epsilon else dem.dtype
    if client is None:
        src = to_zarr(dem, MemoryStore(), tile=tile, nodata=nodata)
        dst = create_like(src, MemoryStore(), tile=tile, dtype=dt)
        return np.asarray(fill_tiled(src, dst, tile=tile, nodata=nodata, epsilon=epsilon,
                                     scratch=MemoryStore() if cache else None)[:])
    with tempfile.TemporaryDirectory(prefix="floodwarn-fill-") as tmp:
        src = to_zarr(dem, os.path.join(tmp, "dem.zarr"), tile=tile, nodata=nodata)
        out = fill_tiled(src, os.path.join(tmp, "filled.zarr"), tile=tile, nodata=nodata,
                         client=client, epsilon=epsilon,
                         scratch=os.path.join(tmp, "scratch.zarr") if cache else None)
        return np.asarray(out[:])
