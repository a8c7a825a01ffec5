#!/usr/bin/env python
"""What the first call of each kernel costs in a new process, with the JIT cache on disk.

Each repeat starts a fresh interpreter that imports ``models`` and calls the terrain,
runoff, routing and inundation kernels twice on a small grid; the first call loads the
compiled code from Numba's cache, the second is warm. The difference is what a freshly
started service pays once. Run it twice: the first run may compile and fill the cache.

    python benchmarks/bench_first_call.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
from models import inundation, routing, runoff, terrain
t_import = time.perf_counter() - t0

def chain():
    rng = np.random.default_rng(0)
    dem = (rng.random((64, 64)) * 5 + np.arange(64)[None, :] * 0.1).astype(np.float32)
    f = terrain.fill_depressions(dem, epsilon=True)
    fd = terrain.flow_direction_d8(f, dx=25.0)
    acc = terrain.flow_accumulation_d8(fd)
    dr = terrain.drainage_network(acc, 30)
    reach = terrain.label_reaches(fd, dr, max_length=10)
    near = terrain.nearest_drainage(fd, dr)
    h = terrain.hand(f, fd, dr)
    s = terrain.d8_slope(f, fd, 25.0, 25.0)
    rain = np.ones((1, 4, 64, 64), np.float32)
    ex = runoff.scs_excess_rate(rain, 1.0, np.full((64, 64), 80, np.float32))
    res = routing.route_kinematic_d8(fd, ex, 3600.0, 25.0, 25.0, s, 0.05, 10.0,
                                     record=np.flatnonzero(dr.ravel()))
    roc = np.where(near >= 0, reach.ravel()[np.maximum(near, 0)], 0).reshape(reach.shape)
    n = int(reach.max())
    stages = np.linspace(0, 5, 21)
    rc = inundation.synthetic_rating_curves(np.nan_to_num(h, nan=np.inf), roc.astype(np.int32),
                                            np.full(n + 1, 250.0), np.full(n + 1, 0.01), 0.06,
                                            625.0, stages)
    q = np.maximum.accumulate(rc.discharge, axis=1)
    st = inundation.stage_from_discharge(stages, q, np.ones((1, n + 1), np.float32))
    inundation.depth_from_stage(np.nan_to_num(h, nan=np.inf), roc.astype(np.int32), st[0])

t1 = time.perf_counter(); chain(); first = time.perf_counter() - t1
t2 = time.perf_counter(); chain(); warm = time.perf_counter() - t2
print(json.dumps({"import": t_import, "first": first, "warm": warm}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True,
                             text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"# {args.repeats} fresh processes, medians (s)")
    print("| import models | first chain call | warm chain call | added by the first call |")
    print("|---:|---:|---:|---:|")
    print(f"| {med['import']:.3f} | {med['first']:.3f} | {med['warm']:.3f} | "
          f"{med['first'] - med['warm']:.3f} |")


if __name__ == "__main__":
    main()
