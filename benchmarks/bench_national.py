"""Tiled depression filling on Dask against the single-machine fill, same grid.

For each size N a synthetic float32 DEM of N x N cells (slope + sinusoidal basins +
seeded noise + nodata lakes, made tile by tile so the generator never holds the grid)
is written to a tile-chunked Zarr array. Then:

- ``single``: ``models.terrain.fill_depressions`` (no epsilon) on the whole grid in a
  subprocess (JIT warmed on 200 x 200 first); peak RSS = VmHWM, reset after the grid is
  loaded, so it covers the fill with the input held;
- ``tiled/recompute`` and ``tiled/cache``: ``warning.national.fill.fill_tiled`` (without
  and with a scratch store) on a ``LocalCluster`` of ``--workers`` worker processes, one
  thread each, ``--memory-limit`` per worker; the JIT is warmed on every worker first,
  VmHWM reset, then one timed run; peak RSS per worker is VmHWM.

The tiled result is compared with the single-machine result tile by tile (bit-for-bit).

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_national.py [--sizes 4000 12000] [--tile 1000 1000]
        [--workers 2] [--memory-limit 512MiB] [--workdir /tmp/bench-national]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _clear_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _mem() -> dict:
    return {"hwm_mib": _status_kb("VmHWM") / 1024, "rss_mib": _status_kb("VmRSS") / 1024}


def make_dem(path: str, n: int, tile: tuple[int, int], seed: int = 0) -> None:
    """Write the synthetic DEM tile by tile (a function of global coordinates + tile seed)."""
    import zarr

    from warning.national.tiles import TileGrid, write_tile

    arr = zarr.open_array(path, mode="w", shape=(n, n), chunks=tile, dtype="f4",
                          fill_value=np.nan)
    rng = np.random.default_rng(seed)
    lakes = rng.uniform(0, n, size=(max(4, n // 400), 2))
    lake_r = rng.uniform(3, n / 60, size=len(lakes))
    for tl in TileGrid((n, n), tile):
        y, x = np.mgrid[tl.r0:tl.r1, tl.c0:tl.c1].astype(np.float64)
        z = 0.002 * (x + y) + 3 * np.sin(x / 97.0) * np.cos(y / 131.0)
        z += 1.5 * np.sin(x / 23.0 + y / 37.0) + 0.7 * np.cos(x / 7.3) * np.sin(y / 5.9)
        z += np.random.default_rng([seed, tl.row, tl.col]).normal(0, 0.3, z.shape)
        z = np.round(z / 0.1) * 0.1 + 100.0
        for (cy, cx), r in zip(lakes, lake_r, strict=True):
            z[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = np.nan
        write_tile(arr, tl, z.astype(np.float32))


def run_single(src: str, out_npy: str) -> None:
    """Subprocess body: fill the whole grid with the single-machine function."""
    import zarr

    from models import terrain

    terrain.fill_depressions(np.random.default_rng(0).random((200, 200)).astype(np.float32))
    dem = np.asarray(zarr.open_array(src, mode="r")[:])
    _clear_peak()
    t0 = time.perf_counter()
    filled = terrain.fill_depressions(dem)
    dt = time.perf_counter() - t0
    mem = _mem()
    np.save(out_npy, filled)
    print(json.dumps({"seconds": dt, **mem}))


def _warm_worker() -> dict:
    from warning.national.fill import fill_array

    dem = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    fill_array(dem, tile=(16, 16))
    _clear_peak()
    return _mem()


def run_tiled(src: str, dst: str, tile: tuple[int, int], workers: int, memory_limit: str,
              scratch: str | None) -> dict:
    from distributed import Client, LocalCluster

    from warning.national.fill import fill_tiled

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        before = client.run(_warm_worker)
        t0 = time.perf_counter()
        fill_tiled(src, dst, tile=tile, client=client, overwrite=True, scratch=scratch)
        dt = time.perf_counter() - t0
        after = client.run(_mem)
    return {"seconds": dt, "workers_before": list(before.values()),
            "workers_after": list(after.values())}


def compare(dst: str, ref_npy: str, tile: tuple[int, int]) -> bool:
    import zarr

    from warning.national.tiles import TileGrid

    out = zarr.open_array(dst, mode="r")
    ref = np.load(ref_npy, mmap_mode="r")
    return all(np.array_equal(np.asarray(out[tl.slices]), ref[tl.slices], equal_nan=True)
               for tl in TileGrid(out.shape, tile))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4000])
    p.add_argument("--tile", type=int, nargs=2, default=[1000, 1000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="512MiB")
    p.add_argument("--workdir", default=None)
    p.add_argument("--strategies", nargs="+", default=["recompute", "cache"],
                   choices=["recompute", "cache"],
                   help="fix-up round floods each tile again, or reads f and labels cached "
                        "by the first round in a scratch Zarr group")
    p.add_argument("--single-only-src", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.single_only_src:
        run_single(*a.single_only_src)
        return
    tile = (a.tile[0], a.tile[1])
    work = a.workdir or tempfile.mkdtemp(prefix="bench-national-")
    os.makedirs(work, exist_ok=True)
    try:
        for n in a.sizes:
            src, dst = os.path.join(work, f"dem{n}.zarr"), os.path.join(work, f"filled{n}.zarr")
            ref = os.path.join(work, f"ref{n}.npy")
            t0 = time.perf_counter()
            make_dem(src, n, tile)
            print(f"N={n}: DEM {n}x{n} float32 ({n * n * 4 / 2**20:.0f} MiB) written in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            res = subprocess.run([sys.executable, __file__, "--single-only-src", src, ref],
                                 check=True, capture_output=True, text=True)
            single = json.loads(res.stdout.strip().splitlines()[-1])
            cells = n * n
            print(f"  single: {single['seconds']:.2f} s  {cells / single['seconds'] / 1e6:.1f} Mcells/s"
                  f"  peak RSS {single['hwm_mib']:.0f} MiB", flush=True)
            for strategy in a.strategies:
                scratch = os.path.join(work, f"scratch{n}.zarr") if strategy == "cache" else None
                tiled = run_tiled(src, dst, tile, a.workers, a.memory_limit, scratch)
                same = compare(dst, ref, tile)
                print(f"  tiled/{strategy} ({a.workers} workers x 1 thread, limit {a.memory_limit}, "
                      f"tile {tile}): {tiled['seconds']:.2f} s  "
                      f"{cells / tiled['seconds'] / 1e6:.1f} Mcells/s  bit-identical: {same}")
                for k, (b, af) in enumerate(zip(tiled["workers_before"], tiled["workers_after"],
                                                strict=True)):
                    print(f"    worker {k}: RSS after warm-up {b['rss_mib']:.0f} MiB, "
                          f"peak during fill {af['hwm_mib']:.0f} MiB", flush=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
