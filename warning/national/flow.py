"""D8 flow directions, flow accumulation and HAND over tiles on Dask.

Grids live in chunked Zarr arrays; one chunk is one tile and one Dask task. Every
task reads its tile (plus a one-cell halo) from the store and writes its tile back, so
no worker holds the whole grid; the client only sees the small per-perimeter arrays.
The results are bit-for-bit those of :mod:`models.terrain` (see each function).

Tasks run on the current Dask scheduler (a ``distributed.Client`` if one is active,
else the threaded scheduler); pass ``scheduler=`` to choose another. Stores are given
as paths (str or Path) so workers on other processes or machines can open them (they
must see the same file system, or use a URL that zarr understands).

Method (Barnes 2017): accumulation runs in two passes over the tiles. Pass 1
accumulates inside each tile, keeps only the perimeter records (for each perimeter cell
the exit cell its path leaves the tile by, or none, and what leaves through each exit)
and returns them. The client links each exit to the exit reached from its receiver in
the next tile, sums the outflows through that graph in topological order, and hands
each tile the flow entering at its entry cells. Pass 2 accumulates the tile again, adds
that flow down each entry cell's path inside the tile and writes the tile. HAND works
the same way with the drainage elevation in place of the flow.

On a ``LocalCluster`` give the workers ``env={"NUMBA_NUM_THREADS": "1"}`` when they
share the machine's cores: the D8 kernel is itself parallel.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr

from models import terrain
from models import tiled_flow as tf
from models.errors import ModelError

log = logging.getLogger(__name__)

__all__ = [
    "flow_accumulation_d8",
    "flow_accumulation_d8_array",
    "flow_direction_d8",
    "flow_direction_d8_array",
    "hand",
    "hand_array",
    "tiles",
    "write_array",
]


# --------------------------------------------------------------------------- store helpers
def _open(path) -> zarr.Array:
    return zarr.open_array(store=str(path), mode="r")


def _create(path, shape, chunks, dtype, fill_value) -> zarr.Array:
    return zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype,
                             fill_value=fill_value, overwrite=True)


def write_array(path, a: np.ndarray, tile: tuple[int, int]) -> str:
    """Write ``a`` to a new Zarr array at ``path`` with chunks of ``tile`` (rows, cols).

    Returns
    -------
    path : str
    """
    a = np.asarray(a)
    fill = np.nan if a.dtype.kind == "f" else 0
    z = _create(path, a.shape, tuple(int(t) for t in tile), a.dtype, fill)
    z[...] = a
    return str(path)


def tiles(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of every tile of a grid of ``shape`` split into ``chunks``."""
    ny, nx = shape
    ty, tx = chunks
    return [(r0, min(r0 + ty, ny), c0, min(c0 + tx, nx))
            for r0 in range(0, ny, ty) for c0 in range(0, nx, tx)]


def _read_halo(arr: zarr.Array, r0: int, r1: int, c0: int, c1: int, fill) -> np.ndarray:
    """The tile [r0:r1, c0:c1] with a one-cell halo; ``fill`` outside the grid."""
    ny, nx = arr.shape
    out = np.full((r1 - r0 + 2, c1 - c0 + 2), fill, dtype=arr.dtype)
    a0, a1, b0, b1 = max(r0 - 1, 0), min(r1 + 1, ny), max(c0 - 1, 0), min(c1 + 1, nx)
    out[a0 - r0 + 1:a1 - r0 + 1, b0 - c0 + 1:b1 - c0 + 1] = arr[a0:a1, b0:b1]
    return out


def _compute(tasks: list, scheduler) -> list:
    return list(dask.compute(*tasks, scheduler=scheduler))


def _chunks(arr: zarr.Array) -> tuple[int, ...]:
    return tuple(int(c) for c in arr.chunks)


# --------------------------------------------------------------------------- D8
def _d8_task(src, dst, r0, r1, c0, c1, nodata, dx, dy) -> None:
    a = _open(src)
    ny, nx = a.shape
    a0, a1, b0, b1 = max(r0 - 1, 0), min(r1 + 1, ny), max(c0 - 1, 0), min(c1 + 1, nx)
    block = a[a0:a1, b0:b1]
    fd = terrain.flow_direction_d8(block, nodata=nodata, dx=dx, dy=dy)
    zarr.open_array(store=str(dst), mode="r+")[r0:r1, c0:c1] = fd[r0 - a0:r1 - a0, c0 - b0:c1 - b0]


def flow_direction_d8(filled, out, nodata=None, dx: float = 1.0, dy: float | None = None,
                      resolve_flats: bool = False, scheduler=None) -> str:
    """Tiled :func:`models.terrain.flow_direction_d8`, one task per chunk of ``filled``.

    Steepest descent only looks at the 3x3 neighbourhood, so each tile is computed from
    itself plus a one-cell halo and equals the single-machine result exactly (grid
    edges, nodata and flats crossing tile edges included: flats keep code 0 there too).

    Parameters
    ----------
    filled : str or Path
        Zarr array (y, x) of depression-filled elevations, m (the site pipeline uses
        ``fill_depressions(..., epsilon=True)``, which leaves no flats).
    out : str or Path
        Where to write the D8 codes (uint8 Zarr array, same chunks).
    nodata, dx, dy
        As in :func:`models.terrain.flow_direction_d8`.
    resolve_flats : bool
        Not supported: flat resolution (Barnes 2014b) needs breadth-first distances
        across each whole flat, which is not a local operation.
    scheduler : optional
        Passed to ``dask.compute``.

    Returns
    -------
    out : str
    """
    if resolve_flats:
        raise ModelError(
            "resolve_flats=True is not available on tiles: flat resolution measures distances "
            "across whole flats, which can span many tiles. Fill with "
            "fill_depressions(..., epsilon=True) (no flats) and use resolve_flats=False."
        )
    src = _open(filled)
    _create(out, src.shape, _chunks(src), np.uint8, 255)
    tasks = [dask.delayed(_d8_task)(str(filled), str(out), *t, nodata, dx, dy)
             for t in tiles(src.shape, _chunks(src))]
    _compute(tasks, scheduler)
    return str(out)


# --------------------------------------------------------------------------- accumulation
def _acc_pass1(fdir, weights, r0, r1, c0, c1) -> dict[str, Any]:
    fa = _open(fdir)
    nx = fa.shape[1]
    fh = _read_halo(fa, r0, r1, c0, c1, 255)
    w = None if weights is None else np.asarray(_open(weights)[r0:r1, c0:c1])
    _, info = tf.tile_accumulate(fh, w)
    tw = c1 - c0

    def glob(local):
        return (r0 + local // tw) * nx + c0 + local % tw

    per = tf.perimeter_cells(r1 - r0, tw)
    pe = info["perimeter_exit"]
    return {"visited": info["visited"], "valid": info["valid"], "bad": info["bad"],
            "exit": glob(info["exit"]), "exit_acc": info["exit_acc"],
            "exit_recv": (r0 + info["exit_row"]) * nx + c0 + info["exit_col"],
            "per_cell": glob(per), "per_exit": np.where(pe >= 0, glob(pe), -1)}


def _acc_pass2(fdir, weights, out, r0, r1, c0, c1, entry, inflow) -> None:
    # the tile's own accumulation is computed again rather than stored by pass 1: the
    # kernel costs less than writing and reading back a float64 tile
    fh = _read_halo(_open(fdir), r0, r1, c0, c1, 255)
    w = None if weights is None else np.asarray(_open(weights)[r0:r1, c0:c1])
    acc, _ = tf.tile_accumulate(fh, w, perimeter=False)
    if entry.size:
        tf.tile_add_inflow(fh, acc, entry, inflow)
    acc[fh[1:-1, 1:-1] == 255] = np.nan
    zarr.open_array(store=str(out), mode="r+")[r0:r1, c0:c1] = acc


def flow_accumulation_d8(fdir, out, weights=None, scheduler=None) -> str:
    """Tiled :func:`models.terrain.flow_accumulation_d8` (Barnes 2017), one task per chunk.

    Cell counts (``weights=None``) are whole numbers in float64, so they equal the
    single-machine result bit for bit whatever the summation order. With float
    ``weights`` the sums are the same up to rounding only: the single-machine walk adds
    donors in an order that itself depends on the number of Numba threads, so neither
    result is a reference to the last bit (whole-number weights below 2**53 are exact).

    Parameters
    ----------
    fdir : str or Path
        Zarr array (y, x) uint8 of ESRI D8 codes; its chunks are the tiles.
    out : str or Path
        Where to write the accumulation (float64 Zarr array, same chunks), cells or units
        of ``weights``; NaN on nodata.
    weights : str or Path, optional
        Zarr array of per-cell weights on the same grid.
    scheduler : optional
        Passed to ``dask.compute``.

    Returns
    -------
    out : str

    Raises
    ------
    ModelError
        If ``fdir`` has codes that are not D8 codes or a flow cycle.
    """
    fa = _open(fdir)
    ch = _chunks(fa)
    _create(out, fa.shape, ch, np.float64, np.nan)
    ts = tiles(fa.shape, ch)
    wpath = None if weights is None else str(weights)
    res = _compute([dask.delayed(_acc_pass1)(str(fdir), wpath, *t) for t in ts], scheduler)
    if any(r["bad"] for r in res):
        raise ModelError("fdir has codes that are not ESRI D8 codes; use 1,2,4,...,128 with "
                         "0 = outlet and 255 = nodata (see models.terrain).")
    if any(r["visited"] != r["valid"] for r in res):
        raise ModelError("fdir contains flow cycles; recompute it with flow_direction_d8 on a "
                         "filled DEM.")
    def cat(k: str) -> np.ndarray:
        return np.concatenate([r[k] for r in res])

    entry, inflow = tf.link_accumulate(cat("exit"), cat("exit_acc"), cat("exit_recv"),
                                       cat("per_cell"), cat("per_exit"))
    log.debug("tiled accumulation: %d tiles, %d tile-edge links", len(ts), entry.size)
    nx = fa.shape[1]
    er, ec = entry // nx, entry % nx
    tasks = []
    for (r0, r1, c0, c1) in ts:
        sel = (er >= r0) & (er < r1) & (ec >= c0) & (ec < c1)
        local = (er[sel] - r0) * (c1 - c0) + (ec[sel] - c0)
        tasks.append(dask.delayed(_acc_pass2)(str(fdir), wpath, str(out), r0, r1, c0, c1, local,
                                              inflow[sel]))
    _compute(tasks, scheduler)
    return str(out)


# --------------------------------------------------------------------------- HAND
def _hand_read(filled, fdir, drainage, r0, r1, c0, c1):
    fh = _read_halo(_open(fdir), r0, r1, c0, c1, 255)
    if np.any(terrain._CODE_TO_K[fh[1:-1, 1:-1]] == -3):
        raise ModelError("fdir has codes that are not ESRI D8 codes; use 1,2,4,...,128 with "
                         "0 = outlet and 255 = nodata (see models.terrain).")
    z = np.asarray(_open(filled)[r0:r1, c0:c1])
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    d = np.asarray(_open(drainage)[r0:r1, c0:c1]) != 0
    d &= fh[1:-1, 1:-1] != 255
    return fh, z, d


def _hand_pass1(filled, fdir, drainage, r0, r1, c0, c1) -> dict[str, Any]:
    fh, z, d = _hand_read(filled, fdir, drainage, r0, r1, c0, c1)
    _, pk, pv, pe = tf.tile_hand(fh, z, d)
    nx = _open(fdir).shape[1]
    tw = c1 - c0
    per = tf.perimeter_cells(r1 - r0, tw)
    # receiver of each exit, from its code
    recv = np.full(per.size, -1, dtype=np.int64)
    two = pk == 2
    if two.any():
        e = pe[two]
        er, ec = e // tw, e % tw
        k = terrain._CODE_TO_K[fh[er + 1, ec + 1]]
        recv[two] = (r0 + er + terrain._DR[k]) * nx + c0 + ec + terrain._DC[k]
    return {"per_cell": (r0 + per // tw) * nx + c0 + per % tw, "per_kind": pk, "per_z": pv,
            "per_recv": recv, "per_exit_local": pe}


def _hand_pass2(filled, fdir, drainage, out, r0, r1, c0, c1, cell, zref) -> None:
    fh, z, d = _hand_read(filled, fdir, drainage, r0, r1, c0, c1)
    h, w = r1 - r0, c1 - c0
    ez = np.full(h * w, np.nan)
    ez[cell] = zref
    hnd, _, _, _ = tf.tile_hand(fh, z, d, ez)
    zarr.open_array(store=str(out), mode="r+")[r0:r1, c0:c1] = hnd


def hand(filled, fdir, drainage, out, scheduler=None) -> str:
    """Tiled :func:`models.terrain.hand`, one task per chunk of ``fdir``.

    Each tile finds, for every cell, the first drainage cell on its path inside the
    tile, or the exit its path leaves by; the client follows the exits through the
    tiles to a drainage elevation; a second pass fills in those cells. The arithmetic
    (``float64(z) - float64(z_drain)`` stored as float32) is the single-machine one, so
    the result is bit-identical.

    Parameters
    ----------
    filled : str or Path
        Zarr array (y, x) of filled elevations, m.
    fdir : str or Path
        Zarr array (y, x) uint8 of ESRI D8 codes (same grid; its chunks are the tiles).
    drainage : str or Path
        Zarr array (y, x) of channel cells (bool or 0/1).
    out : str or Path
        Where to write HAND (float32 Zarr array), m; 0 on drainage, NaN where no
        drainage cell is reached and on nodata.
    scheduler : optional
        Passed to ``dask.compute``.

    Returns
    -------
    out : str

    Raises
    ------
    ModelError
        If the grids differ in shape, or ``fdir`` has codes that are not D8 codes or a
        flow cycle.
    """
    fa = _open(fdir)
    for name, p in (("filled", filled), ("drainage", drainage)):
        if _open(p).shape != fa.shape:
            raise ModelError(f"{name} has shape {_open(p).shape} but fdir has {fa.shape}; "
                             "both must be on the same grid.")
    ch = _chunks(fa)
    _create(out, fa.shape, ch, np.float32, np.nan)
    ts = tiles(fa.shape, ch)
    args = (str(filled), str(fdir), str(drainage))
    res = _compute([dask.delayed(_hand_pass1)(*args, *t) for t in ts], scheduler)
    def cat(k: str) -> np.ndarray:
        return np.concatenate([r[k] for r in res])

    cell, zref = tf.link_hand_reference(cat("per_cell"), cat("per_kind"), cat("per_z"),
                                        cat("per_recv"))
    # each exit of a tile takes the reference of its receiver (a perimeter cell of
    # the next tile); every exit is itself a perimeter cell of kind 2
    tasks = []
    for r, (r0, r1, c0, c1) in zip(res, ts):
        two = r["per_kind"] == 2
        recv = r["per_recv"][two]
        zr = zref[np.searchsorted(cell, recv)]
        tasks.append(dask.delayed(_hand_pass2)(*args, str(out), r0, r1, c0, c1,
                                               r["per_exit_local"][two], zr))
    _compute(tasks, scheduler)
    return str(out)



# --------------------------------------------------------------------------- array wrappers
def flow_direction_d8_array(filled: np.ndarray, tile: tuple[int, int], nodata=None,
                            dx: float = 1.0, dy: float | None = None, resolve_flats: bool = False,
                            scheduler=None) -> np.ndarray:
    """:func:`flow_direction_d8` on an in-memory grid, through a temporary Zarr store.

    Parameters
    ----------
    filled : ndarray (y, x), m
    tile : (int, int)
        Tile (chunk) shape, rows and columns.

    Returns
    -------
    fdir : ndarray (y, x) uint8
    """
    with tempfile.TemporaryDirectory() as d:
        src = write_array(Path(d) / "filled.zarr", np.asarray(filled), tile)
        out = flow_direction_d8(src, Path(d) / "fdir.zarr", nodata=nodata, dx=dx, dy=dy,
                                resolve_flats=resolve_flats, scheduler=scheduler)
        return np.asarray(_open(out)[...])


def flow_accumulation_d8_array(fdir: np.ndarray, tile: tuple[int, int], weights=None,
                               scheduler=None) -> np.ndarray:
    """:func:`flow_accumulation_d8` on an in-memory grid, through a temporary Zarr store.

    Returns
    -------
    acc : ndarray (y, x) float64
        Cells (or units of ``weights``); NaN on nodata.
    """
    with tempfile.TemporaryDirectory() as d:
        src = write_array(Path(d) / "fdir.zarr", np.asarray(fdir, dtype=np.uint8), tile)
        w = None if weights is None else write_array(Path(d) / "w.zarr", np.asarray(weights), tile)
        out = flow_accumulation_d8(src, Path(d) / "acc.zarr", weights=w, scheduler=scheduler)
        return np.asarray(_open(out)[...])


def hand_array(filled: np.ndarray, fdir: np.ndarray, drainage: np.ndarray,
               tile: tuple[int, int], scheduler=None) -> np.ndarray:
    """:func:`hand` on in-memory grids, through temporary Zarr stores.

    Returns
    -------
    hand : ndarray (y, x) float32, m
    """
    with tempfile.TemporaryDirectory() as d:
        z = write_array(Path(d) / "filled.zarr", np.asarray(filled), tile)
        f = write_array(Path(d) / "fdir.zarr", np.asarray(fdir, dtype=np.uint8), tile)
        dr = write_array(Path(d) / "drain.zarr", np.asarray(drainage, dtype=np.uint8), tile)
        out = hand(z, f, dr, Path(d) / "hand.zarr", scheduler=scheduler)
        return np.asarray(_open(out)[...])
