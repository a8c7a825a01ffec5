"""The [compute] section: which engine, and the Dask cluster it starts or joins."""

from __future__ import annotations

import re
import socket

import pytest

from tests.conftest import demo_config_text
from warning.config import load_config
from warning.errors import ConfigError
from warning.national.cluster import dask_client


def _cfg(tmp_path, compute: str):
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    p = tmp_path / "site.toml"
    p.write_text(text + "\n[compute]\n" + compute)
    return load_config(p)


def test_default_is_local_and_bad_values_are_reported(tmp_path):
    cfg = _cfg(tmp_path, 'engine = "local"\n')
    assert cfg.compute.engine == "local" and cfg.compute.workers == 2
    with pytest.raises(ConfigError, match="compute.engine"):
        _cfg(tmp_path, 'engine = "spark"\n')
    with pytest.raises(ConfigError, match="at least 3 x 3"):
        _cfg(tmp_path, 'engine = "dask"\ntile = [2, 100]\n')
    with pytest.raises(ConfigError, match="no Dask cluster"):
        with dask_client(cfg.compute):
            pass


def test_local_cluster_has_the_asked_workers_and_memory(tmp_path):
    cfg = _cfg(tmp_path, 'engine = "dask"\nworkers = 2\nmemory_per_worker = "512MiB"\n')
    with dask_client(cfg.compute) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 2
        assert all(w["memory_limit"] == 512 * 2**20 for w in workers)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert client.dashboard_link.startswith("http")


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(tmp_path, f'engine = "dask"\nscheduler_address = "tcp://127.0.0.1:{port}"\n'
                          'connect_timeout_s = 2\n')
    with pytest.raises(ConfigError, match="no Dask scheduler answers"):
        with dask_client(cfg.compute):
            pass
