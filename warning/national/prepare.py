"""Terrain preparation of a grid over tiles on Dask: the site pipeline's first four steps.

:meth:`warning.site.Site.prepare` computes, in this order, the epsilon depression fill,
D8 flow directions, flow accumulation (cells), the channel mask
(``accumulation >= threshold`` on valid cells) and HAND. :func:`prepare_tiled` runs the
same steps tile by tile on Dask, each step reading and writing tile-chunked Zarr
arrays in ``workdir``, so no worker holds more than a tile and its halo; every product
is bit-for-bit the single-machine one (see :mod:`warning.national.fill` and
:mod:`warning.national.flow`).

The reach network, rating curves and the model state that follow are per drainage basin
and are computed from these stores (on a single machine for a site; per basin group for
a national grid, see :mod:`warning.national.cycle`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import zarr

from models import terrain
from models.terrain import _valid_mask

from . import flow
from .fill import fill_tiled
from .tiles import TileGrid, open_grid

log = logging.getLogger(__name__)

__all__ = ["STAGES", "TerrainStores", "prepare_tiled"]

#: the stages :func:`prepare_tiled` reports to its ``progress`` callback, in order
STAGES = ("depression filling (Priority-Flood+epsilon)", "D8 flow directions", "flow accumulation",
          "channel network", "height above nearest drainage (HAND)")

#: ``progress(stage_number, n_stages, stage_name, seconds)`` after each stage (1-based)
Progress = Callable[[int, int, str, float], None]


@dataclass(frozen=True)
class TerrainStores:
    """Paths of the Zarr arrays :func:`prepare_tiled` wrote (all chunked by the tile)."""

    filled: str
    fdir: str
    acc: str
    drainage: str
    hand: str

    def read(self) -> dict[str, np.ndarray]:
        """Every product as a numpy array (for a site-sized grid only)."""
        return {k: np.asarray(zarr.open_array(getattr(self, k), mode="r")[...])
                for k in ("filled", "fdir", "acc", "drainage", "hand")}


def _drainage_task(acc: str, dem, out: str, r0: int, r1: int, c0: int, c1: int, nodata,
                   threshold: float) -> None:
    a = np.asarray(zarr.open_array(acc, mode="r")[r0:r1, c0:c1])
    z = np.asarray(open_grid(dem)[r0:r1, c0:c1])
    mask = terrain.drainage_network(a, threshold) & _valid_mask(z, nodata)
    zarr.open_array(out, mode="r+")[r0:r1, c0:c1] = mask.astype(np.uint8)


def prepare_tiled(dem, workdir, *, nodata, dx: float, dy: float, threshold_cells: float,
                  client=None, progress: Progress | None = None) -> TerrainStores:
    """Fill, D8, accumulation, channels and HAND of a Zarr DEM, tile by tile on Dask.

    Parameters
    ----------
    dem : str or Path or zarr.Array
        Tile-chunked DEM (y, x), m (see :func:`warning.national.tiles.to_zarr`); its
        chunks are the tiles. Float32 as the site pipeline writes it.
    workdir : str or Path
        Folder for the product stores (replaced if present); every worker must see it.
    nodata : float
        The DEM's nodata value.
    dx, dy : float
        Cell size, m.
    threshold_cells : float
        Accumulation (cells) at which a cell is a channel.
    client : distributed.Client, optional
        The cluster; without it Dask's default scheduler runs the tasks.
    progress : callable, optional
        Called after each of :data:`STAGES` with (number, total, name, seconds).

    Returns
    -------
    TerrainStores
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = open_grid(dem)
    tile = (int(src.chunks[0]), int(src.chunks[1]))
    stores = TerrainStores(*(str(work / f"{k}.zarr") for k in ("filled", "fdir", "acc", "drainage", "hand")))
    sched = client  # None: Dask's default scheduler
    n = len(STAGES)

    def stage(i: int, run: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        run()
        took = time.perf_counter() - t0
        log.info("stage %d/%d %s: %.1f s", i, n, STAGES[i - 1], took)
        if progress is not None:
            progress(i, n, STAGES[i - 1], took)

    stage(1, lambda: fill_tiled(src, stores.filled, nodata=nodata, client=client, overwrite=True,
                                epsilon=True))
    stage(2, lambda: flow.flow_direction_d8(stores.filled, stores.fdir, nodata=nodata, dx=dx, dy=dy,
                                            scheduler=sched))
    stage(3, lambda: flow.flow_accumulation_d8(stores.fdir, stores.acc, scheduler=sched))

    def channels() -> None:
        zarr.create_array(store=stores.drainage, shape=src.shape, chunks=tile, dtype=np.uint8,
                          fill_value=0, overwrite=True)
        task = dask.delayed(_drainage_task, pure=True)
        jobs = [task(stores.acc, src, stores.drainage, t.r0, t.r1, t.c0, t.c1, nodata,
                     float(threshold_cells)) for t in TileGrid(src.shape, tile)]
        dask.compute(*jobs, scheduler=sched)

    stage(4, channels)
    stage(5, lambda: flow.hand(stores.filled, stores.fdir, stores.drainage, stores.hand,
                               scheduler=sched))
    return stores
