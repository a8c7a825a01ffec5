"""`floodwarn prepare` and `floodwarn run` with ``[compute] engine = "dask"``, and the
service keeping one cluster for its cycles: same products and metrics as the local engine
(the oracle: the same commands with ``engine = "local"``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import demo_config_text
from warning.cli import app

pytest.importorskip("distributed")

AT = "2025-11-14T15:00Z"
DASK = '\n[compute]\nengine = "dask"\nworkers = 2\nmemory_per_worker = "1GiB"\ntile = [96, 80]\n'


def _config(tmp_path, name: str, extra: str = "") -> str:
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / name}"', demo_config_text())
    p = tmp_path / f"{name}.toml"
    p.write_text(text + extra)
    return str(p)


def _summary(path: str) -> dict:
    from warning.config import load_config
    from warning.storage import Run, Store

    store = Store(load_config(path).db_url)
    with store.session() as s:
        (run,) = s.query(Run).all()
        out = {"metrics": run.summary["metrics"], "decisions": run.summary["decisions"]}
    store.dispose()
    return out


def test_prepare_and_run_on_dask_match_local(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    local, on_dask = _config(tmp_path, "local"), _config(tmp_path, "dask", DASK)
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "--config", on_dask])
    assert res.exit_code == 0, res.output
    assert "2 workers on a LocalCluster" in res.output and "tiles of 96 x 80" in res.output
    assert re.search(r"Dask dashboard \(tasks, worker memory\): http://\S+/status", res.output)
    for i in range(1, 6):  # one line per tiled stage, in order
        assert f"[{i}/5]" in res.output
    assert "terrain ready" in res.output
    assert list((tmp_path / "dask" / "tiles").glob("MILLBROOK-*/filled.zarr"))
    for path in (local, on_dask):
        res = runner.invoke(app, ["run", "--config", path, "--at", AT])
        assert res.exit_code == 0, res.output
    assert "2 workers on a LocalCluster" in res.output  # the last run was the Dask one
    a, b = _summary(local), _summary(on_dask)
    assert a["decisions"] and a == b
    # the peak-depth map written by each run is the same grid
    import rasterio

    name = "peak_depth_20251114T1500Z.tif"
    with rasterio.open(tmp_path / "local" / "depth" / name) as f1, \
            rasterio.open(tmp_path / "dask" / "depth" / name) as f2:
        assert np.array_equal(f1.read(1), f2.read(1), equal_nan=True)


def test_service_keeps_one_cluster_for_its_cycles(tmp_path, monkeypatch):
    from tests.conftest import Clock
    from warning.config import load_config
    from warning.service import Service

    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    cfg = load_config(_config(tmp_path, "svc", DASK.replace("workers = 2", "workers = 1")))
    clock = Clock(datetime(2025, 11, 14, 12, tzinfo=UTC))
    svc = Service(cfg, clock=clock)
    try:
        first = svc.cycle(force=True)
        client = svc.dask_client()
        assert first is not None and first.ok, first
        clock.t = datetime(2025, 11, 14, 13, tzinfo=UTC)
        second = svc.cycle(force=True)
        assert second is not None and second.ok
        assert svc.dask_client() is client  # the same cluster served both cycles
        assert client.status == "running"
    finally:
        svc.close()
    assert client.status in ("closed", "closing")
    assert svc.dask_client() is not client  # a new one would be opened on demand
    svc.close()
