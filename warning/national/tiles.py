"""Tiling helpers for national grids kept in chunked Zarr arrays.

A national grid is a 2-D Zarr array (one chunk per tile is the natural layout). Tasks
read one tile plus a one-cell halo and write back only their own tile, so no worker
ever holds the whole grid. Writes must go to whole chunks: :func:`create_like` makes
the destination with ``chunks == tile`` so concurrent tasks never share a chunk.

Public API (small on purpose, shared by the fill and the flow code):

- :class:`Tile`, :class:`TileGrid` -- the tile layout of a grid;
- :func:`open_grid` -- a Zarr array from a path (or the array itself);
- :func:`read_block` -- a tile with its halo, and where the tile sits in it;
- :func:`write_tile` -- a tile's values into a (tile-chunked) array;
- :func:`create_like` -- an empty tile-chunked array shaped like another;
- :func:`to_zarr` -- a numpy array or a GeoTIFF (read window by window) as Zarr.

The nodata value travels in the array's attributes (``attrs["nodata"]``); NaN is
always nodata for float grids.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "TileGrid", "create_like", "open_grid", "read_block", "to_zarr", "write_tile"]


@dataclass(frozen=True)
class Tile:
    """One tile: grid rows ``r0:r1`` and columns ``c0:c1``, at ``(row, col)`` of the layout."""

    row: int
    col: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """The tile's cells in the grid."""
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0


@dataclass(frozen=True)
class TileGrid:
    """A grid of ``shape`` cut into tiles of ``tile`` cells (the last row/column smaller)."""

    shape: tuple[int, int]
    tile: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or len(self.tile) != 2:
            raise ValueError(f"shape and tile must be (rows, cols); got {self.shape}, {self.tile}")
        if min(self.tile) < 1 or min(self.shape) < 1:
            raise ValueError(f"tile {self.tile} and shape {self.shape} must be at least 1x1")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "tile", (int(self.tile[0]), int(self.tile[1])))

    @property
    def n_rows(self) -> int:
        """Tiles down the grid."""
        return math.ceil(self.shape[0] / self.tile[0])

    @property
    def n_cols(self) -> int:
        """Tiles across the grid."""
        return math.ceil(self.shape[1] / self.tile[1])

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def __getitem__(self, rc: tuple[int, int]) -> Tile:
        i, j = rc
        if not (0 <= i < self.n_rows and 0 <= j < self.n_cols):
            raise IndexError(f"tile {rc} outside the {self.n_rows}x{self.n_cols} layout")
        th, tw = self.tile
        return Tile(i, j, i * th, min((i + 1) * th, self.shape[0]),
                    j * tw, min((j + 1) * tw, self.shape[1]))

    def __iter__(self) -> Iterator[Tile]:
        """Tiles in row-major order (``index = row * n_cols + col``)."""
        for i in range(self.n_rows):
            for j in range(self.n_cols):
                yield self[i, j]

    def index(self, tile: Tile) -> int:
        """Row-major position of ``tile``."""
        return tile.row * self.n_cols + tile.col


def open_grid(grid, mode: str = "r"):
    """The Zarr array at path or zarr Store ``grid`` (a ``zarr.Array`` is returned as is)."""
    import zarr
    from zarr.abc.store import Store

    if isinstance(grid, zarr.Array):
        return grid
    if isinstance(grid, (str, os.PathLike)):
        return zarr.open_array(os.fspath(grid), mode=mode)
    if isinstance(grid, Store):
        return zarr.open_array(grid, mode=mode)
    raise TypeError(f"expected a zarr.Array or a path to one; got {type(grid).__name__}")


def read_block(array, tile: Tile, halo: int = 1) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Read ``tile`` with ``halo`` cells around it, clipped at the grid's edge.

    Returns the block and the slices of the tile inside it; the block has no halo on
    the sides where the grid ends, so a cell on the block's edge is on the grid's edge.
    """
    ny, nx = array.shape
    r0, r1 = max(tile.r0 - halo, 0), min(tile.r1 + halo, ny)
    c0, c1 = max(tile.c0 - halo, 0), min(tile.c1 + halo, nx)
    block = np.asarray(array[r0:r1, c0:c1])
    core = (slice(tile.r0 - r0, tile.r1 - r0), slice(tile.c0 - c0, tile.c1 - c0))
    return block, core


def write_tile(array, tile: Tile, data) -> None:
    """Write ``data`` (the tile's shape) into ``array``; the tile must cover whole chunks."""
    data = np.asarray(data)
    if data.shape != tile.shape:
        raise ValueError(f"data has shape {data.shape}; tile {tile.row},{tile.col} is {tile.shape}")
    array[tile.r0:tile.r1, tile.c0:tile.c1] = data


def _store(path):
    """A path as a string; a zarr Store (e.g. ``zarr.storage.MemoryStore()``) as is."""
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else path


def _fill_value(dtype: np.dtype, nodata):
    if dtype.kind == "f":
        return np.nan if nodata is None else nodata
    return 0 if nodata is None else nodata


def create_like(like, path, *, tile: tuple[int, int] | None = None, dtype=None,
                overwrite: bool = False):
    """An empty Zarr array at ``path`` (or zarr Store) with ``like``'s shape and nodata, chunked by ``tile``.

    ``tile`` defaults to ``like``'s chunks; ``dtype`` to ``like``'s dtype.
    """
    import zarr

    like = open_grid(like)
    dt = np.dtype(dtype or like.dtype)
    chunks = tuple(tile or like.chunks)
    nodata = like.attrs.get("nodata")
    out = zarr.open_array(_store(path), mode="w" if overwrite else "w-", shape=like.shape,
                          chunks=chunks, dtype=dt, fill_value=_fill_value(dt, nodata))
    if nodata is not None:
        out.attrs["nodata"] = nodata
    return out


def to_zarr(data, path, *, tile: tuple[int, int], nodata=None, overwrite: bool = False):
    """Store a DEM as a tile-chunked Zarr array at ``path`` and return it.

    Parameters
    ----------
    data : ndarray (y, x) or str or PathLike
        A numpy array, or the path of a GeoTIFF (band 1, read one tile-sized window at
        a time with rasterio so the file is never loaded whole; its nodata is used when
        ``nodata`` is not given).
    path : str or PathLike or zarr Store
        Where the Zarr array is written (a ``zarr.storage.MemoryStore()`` for tests).
    tile : (rows, cols)
        Chunk shape (the tile shape of later tiled runs).
    nodata : float or int, optional
        Stored as ``attrs["nodata"]`` (NaN need not be given: it is always nodata).
    """
    import zarr

    mode = "w" if overwrite else "w-"
    if isinstance(data, (str, os.PathLike)):
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(data) as src:
            nd = src.nodata if nodata is None else nodata
            if nd is not None and np.isnan(nd):
                nd = None
            dt = np.dtype(src.dtypes[0])
            out = zarr.open_array(_store(path), mode=mode, shape=(src.height, src.width),
                                  chunks=tuple(tile), dtype=dt, fill_value=_fill_value(dt, nd))
            for tl in TileGrid((src.height, src.width), tile):
                h, w = tl.shape
                write_tile(out, tl, src.read(1, window=Window(tl.c0, tl.r0, w, h)))
    else:
        a = np.asarray(data)
        if a.ndim != 2:
            raise ValueError(f"data must be 2-D (y, x); got shape {a.shape}")
        nd = None if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)) else nodata
        out = zarr.open_array(_store(path), mode=mode, shape=a.shape, chunks=tuple(tile),
                              dtype=a.dtype, fill_value=_fill_value(a.dtype, nd))
        out[:] = a
    if nd is not None:
        out.attrs["nodata"] = nd.item() if isinstance(nd, np.generic) else nd
    return out
