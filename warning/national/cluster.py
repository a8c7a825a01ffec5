"""The Dask cluster a command runs on, from the config's ``[compute]`` section.

``engine = "dask"`` with ``scheduler_address`` connects to an existing scheduler (several
machines); without it a ``LocalCluster`` of ``workers`` processes, each limited to
``memory_per_worker``, is started for the command and closed after it. The dashboard
link is given back so the CLI can print it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..config import ComputeConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["dask_client"]


@contextlib.contextmanager
def dask_client(compute: ComputeConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for ``compute`` (engine must be "dask"), closed on exit."""
    if compute.engine != "dask":
        raise ConfigError(f"compute.engine is {compute.engine!r}: no Dask cluster is used")
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency
        raise ConfigError("compute.engine = 'dask' needs the 'distributed' package "
                          "(pip install 'dask[distributed]')") from None
    if compute.scheduler_address:
        try:
            client = Client(compute.scheduler_address, timeout=f"{compute.connect_timeout_s}s")
        except OSError as exc:
            raise ConfigError(f"compute.scheduler_address: no Dask scheduler answers at "
                              f"{compute.scheduler_address} ({exc})") from None
        try:
            log.info("connected to the Dask scheduler at %s (%d workers)", compute.scheduler_address,
                     len(client.scheduler_info().get("workers", {})))
            yield client
        finally:
            client.close()
        return
    # the Numba kernels are parallel themselves: one Numba/OpenMP thread per Dask thread,
    # so the workers do not oversubscribe the machine's cores
    threads = str(compute.threads_per_worker)
    cluster = LocalCluster(n_workers=compute.workers, threads_per_worker=compute.threads_per_worker,
                           memory_limit=compute.memory_per_worker, processes=True,
                           dashboard_address=":0",
                           env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads})
    client = Client(cluster)
    try:
        log.info("started a LocalCluster: %d workers x %d threads, %s each", compute.workers,
                 compute.threads_per_worker, compute.memory_per_worker)
        yield client
    finally:
        client.close()
        cluster.close()
