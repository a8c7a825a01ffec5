"""The models of a forecast cycle on Dask, one task per group of whole drainage basins.

A drainage basin is every cell whose water reaches the same terminal cell (an outlet, a
pit, or a cell whose flow leaves the grid or runs onto nodata). No water crosses from
one basin to another, so the models (runoff, kinematic routing, reach stage, HAND
inundation) can run on each basin alone. :func:`basin_groups` packs whole basins into
groups of about the same cell count; :func:`simulate_on_dask` gives each group one task
that gets only its window of the inputs (rain, curve numbers, D8 directions with the
cells of other groups set to nodata, slope, channels, HAND, reaches, the reach outlets
and gauges inside it) and runs ``warning.pipeline.run_models``, the same function the
local path runs on the whole site. Each task returns its reaches' stages, its gauges'
discharge, its depth windows and, for every zone with cells in it, the zone's depth
maximum and flooded-cell count per member and time step; the client takes the maximum
of the maxima and the sum of the counts (``warning.pipeline.merge_runs``).

The results are bit-for-bit those of the local path: runoff and inundation work cell
by cell, and the routing kernel visits a basin's cells in the same relative order
whether the grid holds one basin or many (its Kahn walk starts from source cells in
row-major order and never leaves a basin), so every cell adds up its inflows in the
same order; the zone metrics are formed from maxima and integer counts, which do not
depend on how the cells were split.
"""

from __future__ import annotations

import heapq
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from models import terrain

from ..config import Config
from ..ingest.forecast_netcdf import ForecastIssue
from ..pipeline import Simulation, merge_runs, run_models, site_domain, step_hours
from ..site import Site
from .cluster import dask_client

log = logging.getLogger(__name__)

__all__ = ["BasinGroup", "basin_groups", "default_group_count", "simulate_on_dask"]


@dataclass(frozen=True)
class BasinGroup:
    """Whole drainage basins that one task models together."""

    index: int  # 0 holds the largest basin
    rows: slice  # bounding window of the group's cells on the grid
    cols: slice
    cells: np.ndarray  # (window y, window x) bool, the group's cells in the window
    n_cells: int
    n_basins: int

    def flat_cells(self, nx: int) -> np.ndarray:
        """Flat indices ``y * nx + x`` of the group's cells on a grid ``nx`` wide."""
        r, c = np.nonzero(self.cells)
        return (r + self.rows.start) * nx + (c + self.cols.start)


def basin_groups(fdir: np.ndarray, n_groups: int) -> list[BasinGroup]:
    """Label every valid cell with its drainage basin and pack whole basins into groups.

    Packing is greedy, largest basin first, each into the group with the fewest cells so
    far (longest-processing-time first): no group exceeds the mean by more than the
    largest basin. Ties go to the basin with the lower terminal cell (flat index) and to
    the lower group index, so the same ``fdir`` always gives the same groups.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes (see :mod:`models.terrain`); 255 = nodata.
    n_groups : int
        Groups wanted (>= 1); fewer come back when there are fewer basins.

    Returns
    -------
    list of BasinGroup
        Ordered by index; none is empty. Empty when ``fdir`` has no valid cell.

    Raises
    ------
    ValueError
        If ``n_groups`` < 1.
    models.errors.ModelError
        If ``fdir`` has invalid codes or a flow cycle.
    """
    if int(n_groups) != n_groups or n_groups < 1:
        raise ValueError(f"n_groups must be a whole number >= 1; got {n_groups!r}")
    fd = np.asarray(fdir)
    down = terrain.downstream_index(fd).ravel()
    valid = fd.ravel() != terrain.D8_NODATA
    terminal = np.flatnonzero(valid & (down < 0))  # ascending: basin b drains to terminal[b - 1]
    if terminal.size == 0:
        return []
    basin = terrain.catchments(fd, terminal).ravel()  # 1..n_basin, 0 on nodata
    size = np.bincount(basin, minlength=terminal.size + 1)[1:]
    n = min(int(n_groups), terminal.size)  # each group gets a basin: sizes are >= 1
    owner = _pack(size, n)
    cells = np.flatnonzero(basin)
    group = owner[basin[cells] - 1]
    row, col = np.divmod(cells, fd.shape[1])
    # rows and columns each group touches, for its bounding window
    rows_hit = np.zeros((n, fd.shape[0]), dtype=bool)
    cols_hit = np.zeros((n, fd.shape[1]), dtype=bool)
    rows_hit[group, row] = True
    cols_hit[group, col] = True
    label = np.full(fd.shape, -1, dtype=np.int64)
    label.flat[cells] = group
    out = []
    for g in range(n):
        r = np.flatnonzero(rows_hit[g])
        c = np.flatnonzero(cols_hit[g])
        rows, cols = slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
        mask = label[rows, cols] == g
        out.append(BasinGroup(index=g, rows=rows, cols=cols, cells=mask,
                              n_cells=int(np.count_nonzero(mask)),
                              n_basins=int(np.count_nonzero(owner == g))))
    return out


def _pack(size: np.ndarray, n: int) -> np.ndarray:
    """Group (0..n-1) of every basin: largest first into the least-loaded group (ties: the
    lower basin, the lower group)."""
    owner = np.empty(size.size, dtype=np.int64)
    heap = [(0, g) for g in range(n)]  # (cells so far, group): sorted, hence a heap
    for b in np.argsort(-size, kind="stable").tolist():
        load, g = heapq.heappop(heap)
        owner[b] = g
        heapq.heappush(heap, (load + int(size[b]), g))
    return owner


def default_group_count(client: Any) -> int:
    """Two groups per worker of ``client`` (at least one): a worker gets a second task
    while the first one's results travel back, and uneven groups even out."""
    return max(1, 2 * len(client.nthreads()))


def simulate_on_dask(site: Site, cfg: Config, rain: np.ndarray, times: np.ndarray,
                     now_index: int, forecast: ForecastIssue, *, client: Any = None,
                     n_groups: int | None = None) -> Simulation:
    """``warning.pipeline.simulate`` on Dask, one task per group of whole basins.

    Parameters
    ----------
    site, cfg, rain, times, now_index, forecast
        As for ``warning.pipeline.simulate``; ``rain`` (member, time, y, x) mm/h.
    client : distributed.Client, optional
        The cluster to run on (the caller keeps it open across cycles). Without it a
        cluster is opened from ``cfg.compute`` for this call and closed after it.
    n_groups : int, optional
        Groups of basins (tasks); default :func:`default_group_count`, at most the
        number of basins.

    Returns
    -------
    Simulation
        Equal, array for array, to ``simulate(site, cfg, rain, times, now_index, forecast)``.
    """
    if client is None:
        with dask_client(cfg.compute) as own:
            return simulate_on_dask(site, cfg, rain, times, now_index, forecast, client=own,
                                    n_groups=n_groups)
    groups = basin_groups(site.terrain.fdir, n_groups or default_group_count(client))
    dt_h = step_hours(times)
    run = uuid.uuid4().hex[:8]  # task keys unique per call: a key still held would be reused
    domains, futures = [], []
    for g in groups:
        dom = site_domain(site, g.rows, g.cols, g.cells)
        # the group's inputs go to the cluster once, as data, not inside the task graph
        dom_f, rain_f = client.scatter([dom, np.ascontiguousarray(rain[:, :, g.rows, g.cols])],
                                       hash=False)
        futures.append(client.submit(run_models, dom_f, cfg.model, rain_f, dt_h, now_index,
                                     key=f"cycle-group-{g.index}-{run}"))
        domains.append(dom)
    log.info("models on Dask: %d groups of basins (cells %s, reaches %s)", len(groups),
             [g.n_cells for g in groups], [d.reaches.size for d in domains])
    runs = client.gather(futures)
    return merge_runs(site, list(zip(domains, runs, strict=True)), times, now_index, forecast)
