"""Terrain preparation on Dask gives the site pipeline's products bit for bit.

The oracle is the single-machine chain of :mod:`models.terrain` (itself tested against
richdem, pysheds and the worked examples in ``tests/models``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models import terrain

from .test_tiled_fill import make_dem

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")


def _single_machine(z: np.ndarray, nodata, dx: float, threshold: float) -> dict[str, np.ndarray]:
    filled = terrain.fill_depressions(z, nodata=nodata, epsilon=True)
    fdir = terrain.flow_direction_d8(filled, nodata=nodata, dx=dx, dy=dx)
    acc = terrain.flow_accumulation_d8(fdir)
    valid = (z != nodata) & np.isfinite(z)
    drainage = terrain.drainage_network(acc, threshold) & valid
    return {"filled": filled, "fdir": fdir, "acc": acc, "drainage": drainage,
            "hand": terrain.hand(filled, fdir, drainage)}


@pytest.mark.parametrize("tile", [(13, 11), (32, 24)])
def test_prepare_tiled_is_the_single_machine_chain(tmp_path, tile):
    from warning.national.prepare import STAGES, prepare_tiled
    from warning.national.tiles import to_zarr

    nodata = np.float32(-9999.0)
    z = make_dem(4, (90, 77), nodata=float(nodata))
    ref = _single_machine(z, nodata, 30.0, 40.0)
    assert ref["drainage"].sum() > 50 and np.isfinite(ref["hand"]).sum() > 0.5 * z.size
    seen = []
    with dask.config.set(scheduler="threads", num_workers=2):
        src = to_zarr(z, tmp_path / "dem.zarr", tile=tile, nodata=float(nodata))
        stores = prepare_tiled(src, tmp_path / "work", nodata=nodata, dx=30.0, dy=30.0,
                               threshold_cells=40.0,
                               progress=lambda i, n, name, s: seen.append((i, n, name)))
    assert seen == [(i + 1, len(STAGES), name) for i, name in enumerate(STAGES)]
    got = stores.read()
    for k, want in ref.items():
        g = got[k].astype(bool) if k == "drainage" else got[k]
        assert g.dtype == want.dtype, k
        assert np.array_equal(g, want, equal_nan=g.dtype.kind == "f"), (
            f"{k}: {int((g != want).sum())} cells differ")


def test_demo_site_terrain_on_a_local_cluster_equals_local(demo_cfg, tmp_path):
    """[compute] engine = "dask" with a LocalCluster of 2 processes and tiles that cut the
    demo valley: every terrain product the cycle uses is identical to the local one."""
    from warning.config import ComputeConfig
    from warning.national.cluster import dask_client
    from warning.site import Site

    local = Site.load(demo_cfg).prepare(force=True)
    compute = ComputeConfig(engine="dask", workers=2, threads_per_worker=1,
                            memory_per_worker="1GiB", tile=(40, 56), store=tmp_path / "tiles")
    cfg = demo_cfg.model_copy(update={"compute": compute})
    site = Site.load(cfg)
    assert site.ny > 2 * compute.tile[0] and site.nx > 2 * compute.tile[1]  # several tiles each way
    stages = []
    with dask_client(compute) as client:
        on_dask = site.prepare(force=True, client=client,
                               progress=lambda i, n, name, s: stages.append(name))
    assert len(stages) == 5
    assert (tmp_path / "tiles").is_dir()  # the tile stores went where [compute] store said
    for f in dataclasses.fields(local):
        a, b = getattr(local, f.name), getattr(on_dask, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name
        else:
            assert a == b, f.name
