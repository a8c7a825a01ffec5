"""Tiled terrain preparation on Dask against the single-machine pipeline, same grid.

For each size N the synthetic float32 DEM of ``bench_national.make_dem`` (N x N cells,
tile by tile) is written to a tile-chunked Zarr array, its NaN lakes set to the site
pipeline's nodata (-9999, as ``Site._compute_terrain`` does); cells are ``--dx`` m square
and a channel starts at ``--threshold`` cells. Then:

- ``single``: the five steps of ``Site._compute_terrain`` (epsilon fill, D8, accumulation,
  channel mask ``acc >= threshold & valid``, HAND) on the whole grid in a subprocess (JIT
  warmed on 200 x 200 first); wall time per step; peak RSS = VmHWM, reset after the DEM
  and its valid mask are loaded. Skipped with ``--no-single`` and above ``--single-max``;
- ``tiled``: ``warning.national.prepare.prepare_tiled`` on a ``LocalCluster`` of
  ``--workers`` worker processes, one thread each (NUMBA_NUM_THREADS = OMP_NUM_THREADS =
  1), ``--memory-limit`` per worker. The JIT is warmed on every worker (prepare_tiled on
  a 200 x 200 grid in the worker) and in the client (the same through the cluster), VmHWM
  reset in every worker and in the client, then one timed run; stage times come from the
  ``progress`` callback, peak RSS per worker and of the client process is VmHWM. The
  number of epsilon relaxation rounds is read from the filled store's attributes.

When both ran, the five products are compared tile by tile, bit for bit (NaN where NaN;
the channel mask as bool). A table is printed and the figures are written as JSON
(``--json``; cells/s = N * N / total seconds; ratio = tiled / single total seconds).

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_national_prepare.py [--sizes 2000 12000]
        [--tile 1000 1000] [--workers 2] [--memory-limit 1GiB] [--threshold 1000]
        [--dx 30] [--no-single] [--single-max 16000] [--workdir /tmp/bench-prepare]
        [--keep] [--json out.json]
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_national import _clear_peak, _mem, make_dem  # also puts the repository on sys.path

NODATA = np.float32(-9999.0)
PRODUCTS = ("filled", "fdir", "acc", "drainage", "hand")
STEPS = ("fill", "d8", "accumulation", "channels", "hand")


def make_site_dem(path: str, n: int, tile: tuple[int, int]) -> None:
    """``make_dem``, then its NaN cells set to NODATA (the site pipeline's float32 DEM)."""
    import zarr

    from warning.national.tiles import TileGrid

    make_dem(path, n, tile)
    arr = zarr.open_array(path, mode="r+")
    for tl in TileGrid((n, n), tile):
        z = np.asarray(arr[tl.slices])
        arr[tl.slices] = np.where(np.isnan(z), NODATA, z).astype(np.float32)
    arr.attrs["nodata"] = float(NODATA)


# ------------------------------------------------------------------------- single machine
def _site_steps(dem: np.ndarray, valid: np.ndarray, dx: float, threshold: float,
                times: dict | None = None) -> dict[str, np.ndarray]:
    """The five steps of ``Site._compute_terrain``; wall seconds per step into ``times``."""
    from models import terrain

    out: dict[str, np.ndarray] = {}
    steps = (
        ("filled", lambda: terrain.fill_depressions(dem, nodata=NODATA, epsilon=True)),
        ("fdir", lambda: terrain.flow_direction_d8(out["filled"], nodata=NODATA, dx=dx, dy=dx)),
        ("acc", lambda: terrain.flow_accumulation_d8(out["fdir"])),
        ("drainage", lambda: terrain.drainage_network(out["acc"], threshold) & valid),
        ("hand", lambda: terrain.hand(out["filled"], out["fdir"], out["drainage"])),
    )
    for (key, run), step in zip(steps, STEPS, strict=True):
        t0 = time.perf_counter()
        out[key] = run()
        if times is not None:
            times[step] = time.perf_counter() - t0
            times[step + "_hwm_mib"] = _mem()["hwm_mib"]
    return out


def run_single(src: str, outdir: str, dx: float, threshold: float) -> None:
    """Subprocess body: the five steps on the whole grid; products saved as .npy."""
    import zarr

    from models.terrain import _valid_mask

    warm = np.random.default_rng(0).random((200, 200)).astype(np.float32) * 50
    warm[90:110, 90:110] = NODATA
    _site_steps(warm, _valid_mask(warm, NODATA), dx, 50.0)
    dem = np.asarray(zarr.open_array(src, mode="r")[:])
    valid = _valid_mask(dem, NODATA)
    loaded = _mem()
    _clear_peak()
    times: dict = {}
    t0 = time.perf_counter()
    out = _site_steps(dem, valid, dx, threshold, times)
    total = time.perf_counter() - t0
    mem = _mem()
    for k in PRODUCTS:
        np.save(os.path.join(outdir, f"{k}.npy"), out[k])
    print(json.dumps({"seconds": total, "steps": times, "rss_loaded_mib": loaded["rss_mib"],
                      "dtypes": {k: str(out[k].dtype) for k in PRODUCTS}, **mem}))


# ------------------------------------------------------------------------------ tiled
def _warm_worker(dx: float) -> dict:
    """In a worker: prepare_tiled on a 200 x 200 grid with the synchronous scheduler."""
    import dask

    from warning.national.prepare import prepare_tiled

    tmp = tempfile.mkdtemp(prefix="warm-prepare-")
    try:
        make_site_dem(os.path.join(tmp, "dem.zarr"), 200, (50, 50))
        with dask.config.set(scheduler="synchronous"):
            prepare_tiled(os.path.join(tmp, "dem.zarr"), os.path.join(tmp, "out"), nodata=NODATA,
                          dx=dx, dy=dx, threshold_cells=20)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _reset()


def _reset() -> dict:
    _clear_peak()
    return {**_mem(), "pid": os.getpid()}


def run_tiled(src: str, workdir: str, workers: int, memory_limit: str, dx: float,
              threshold: float) -> dict:
    import zarr
    from distributed import Client, LocalCluster

    from warning.national.prepare import prepare_tiled

    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    stages: dict[str, float] = {}

    def progress(i: int, n: int, name: str, seconds: float) -> None:
        stages[name] = seconds
        print(f"    stage {i}/{n} {name}: {seconds:.1f} s", flush=True)

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0", env=env) as cluster, \
            Client(cluster) as client:
        client.run(_warm_worker, dx)
        warm = os.path.join(workdir, "warm")
        make_site_dem(os.path.join(warm, "dem.zarr"), 200, (50, 50))
        prepare_tiled(os.path.join(warm, "dem.zarr"), os.path.join(warm, "out"), nodata=NODATA,
                      dx=dx, dy=dx, threshold_cells=20, client=client)
        shutil.rmtree(warm, ignore_errors=True)
        worker_env = client.run(lambda: {k: os.environ.get(k) for k in env})
        before = client.run(_reset)
        _clear_peak()
        t0 = time.perf_counter()
        stores = prepare_tiled(src, os.path.join(workdir, "tiled"), nodata=NODATA, dx=dx, dy=dx,
                               threshold_cells=threshold, client=client, progress=progress)
        total = time.perf_counter() - t0
        client_mem = _mem()
        after = client.run(_mem)
        pids = client.run(os.getpid)
    rounds = zarr.open_array(stores.filled, mode="r").attrs.get("epsilon_rounds")
    return {"seconds": total, "stages": stages, "stores": stores, "epsilon_rounds": rounds,
            "client": client_mem, "workers_before": list(before.values()),
            "workers_after": list(after.values()),
            "restarted": sorted({b["pid"] for b in before.values()} - set(pids.values())),
            "worker_env": list(worker_env.values())}


# ---------------------------------------------------------------------------- compare
def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb):
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a[~na].view(u), b[~nb].view(u)))


def compare(stores, refdir: str, tile: tuple[int, int]) -> dict[str, bool]:
    """Each product, tile by tile: tiled store against the single-machine .npy."""
    import zarr

    from warning.national.tiles import TileGrid

    same = {}
    for k in PRODUCTS:
        out = zarr.open_array(getattr(stores, k), mode="r")
        ref = np.load(os.path.join(refdir, f"{k}.npy"), mmap_mode="r")
        ok = out.shape == ref.shape
        for tl in TileGrid(out.shape, tile) if ok else ():
            a, b = np.asarray(out[tl.slices]), np.asarray(ref[tl.slices])
            if k == "drainage":
                a, b = a.astype(bool), b.astype(bool)
            if not _bits_equal(a, b):
                ok = False
                break
        same[k] = ok
    return same


# ------------------------------------------------------------------------------- main
def _bench_size(a, n: int, tile: tuple[int, int], work: str) -> dict:
    cells = n * n
    rec: dict = {"n": n, "tile": list(tile), "cells": cells, "threshold_cells": a.threshold,
                 "dx": a.dx, "load_before": os.getloadavg()}
    src = os.path.join(work, f"dem{n}.zarr")
    t0 = time.perf_counter()
    make_site_dem(src, n, tile)
    rec["dem_seconds"] = time.perf_counter() - t0
    print(f"N={n}: DEM {n}x{n} float32 ({cells * 4 / 2**20:.0f} MiB), tile {tile}, written in "
          f"{rec['dem_seconds']:.1f} s; load {rec['load_before']}", flush=True)
    refdir = os.path.join(work, f"ref{n}")
    if not a.no_single and n <= a.single_max:
        os.makedirs(refdir, exist_ok=True)
        res = subprocess.run([sys.executable, __file__, "--single-only", src, refdir,
                              str(a.dx), str(a.threshold)],
                             check=True, capture_output=True, text=True)
        single = json.loads(res.stdout.strip().splitlines()[-1])
        single["cells_per_s"] = cells / single["seconds"]
        rec["single"] = single
        steps = "  ".join(f"{s} {single['steps'][s]:.1f}" for s in STEPS)
        print(f"  single: {steps}  total {single['seconds']:.1f} s  "
              f"{single['cells_per_s'] / 1e6:.2f} Mcells/s  peak RSS {single['hwm_mib']:.0f} MiB "
              f"(DEM+mask loaded {single['rss_loaded_mib']:.0f} MiB)", flush=True)
    if not a.no_tiled:
        print(f"  tiled ({a.workers} workers x 1 thread, limit {a.memory_limit}):", flush=True)
        tiled = run_tiled(src, os.path.join(work, f"tiled{n}"), a.workers, a.memory_limit, a.dx,
                          a.threshold)
        stores = tiled.pop("stores")
        tiled["cells_per_s"] = cells / tiled["seconds"]
        tiled["cells_per_s_per_worker"] = tiled["cells_per_s"] / a.workers
        rec["tiled"] = tiled
        print(f"  tiled: total {tiled['seconds']:.1f} s  {tiled['cells_per_s'] / 1e6:.2f} Mcells/s "
              f"({tiled['cells_per_s_per_worker'] / 1e6:.2f} per worker)  epsilon rounds "
              f"{tiled['epsilon_rounds']}  client peak {tiled['client']['hwm_mib']:.0f} MiB"
              f"{'  RESTARTED workers ' + str(tiled['restarted']) if tiled['restarted'] else ''}",
              flush=True)
        for k, (b, af) in enumerate(zip(tiled["workers_before"], tiled["workers_after"],
                                        strict=True)):
            print(f"    worker {k}: RSS after warm-up {b['rss_mib']:.0f} MiB, peak during run "
                  f"{af['hwm_mib']:.0f} MiB", flush=True)
        if "single" in rec:
            rec["identical"] = compare(stores, refdir, tile)
            rec["ratio_tiled_over_single"] = tiled["seconds"] / rec["single"]["seconds"]
            print(f"  bit-identical: {rec['identical']}  tiled/single time "
                  f"{rec['ratio_tiled_over_single']:.2f}", flush=True)
    rec["load_after"] = os.getloadavg()
    return rec


def _table(recs: list[dict]) -> str:
    rows = ["| N | path | " + " | ".join(STEPS) + " | total s | Mcells/s | peak MiB | identical |",
            "|---|---|" + "---:|" * (len(STEPS) + 3) + "---|"]
    for r in recs:
        if "single" in r:
            s = r["single"]
            rows.append(f"| {r['n']} | single | " + " | ".join(f"{s['steps'][k]:.1f}" for k in STEPS)
                        + f" | {s['seconds']:.1f} | {s['cells_per_s'] / 1e6:.2f} | "
                        f"{s['hwm_mib']:.0f} | |")
        if "tiled" in r:
            t = r["tiled"]
            peaks = " / ".join(f"{w['hwm_mib']:.0f}" for w in t["workers_after"])
            same = r.get("identical")
            rows.append(f"| {r['n']} | tiled {r['tile'][0]}x{r['tile'][1]} | "
                        + " | ".join(f"{v:.1f}" for v in t["stages"].values())
                        + f" | {t['seconds']:.1f} | {t['cells_per_s'] / 1e6:.2f} | workers "
                        f"{peaks}, client {t['client']['hwm_mib']:.0f} | "
                        f"{'-' if same is None else all(same.values())} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000])
    p.add_argument("--tile", type=int, nargs=2, default=[1000, 1000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="1GiB")
    p.add_argument("--threshold", type=float, default=1000.0, help="channel threshold, cells")
    p.add_argument("--dx", type=float, default=30.0, help="cell size, m (dx = dy)")
    p.add_argument("--no-single", action="store_true")
    p.add_argument("--no-tiled", action="store_true")
    p.add_argument("--single-max", type=int, default=16000,
                   help="largest N the single-machine path runs at")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the stores in --workdir")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--single-only", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.single_only:
        src, outdir, dx, threshold = a.single_only
        run_single(src, outdir, float(dx), float(threshold))
        return
    tile = (a.tile[0], a.tile[1])
    work = a.workdir or tempfile.mkdtemp(prefix="bench-prepare-")
    os.makedirs(work, exist_ok=True)
    recs = []
    try:
        for n in a.sizes:
            recs.append(_bench_size(a, n, tile, work))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"workers": a.workers, "memory_limit": a.memory_limit,
                               "results": recs}, f, indent=1)
            if not a.keep:
                for name in (f"dem{n}.zarr", f"ref{n}", f"tiled{n}"):
                    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        print(_table(recs))
    finally:
        if a.workdir is None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
