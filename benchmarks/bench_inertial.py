"""Time models.inertial.simulate_inertial against Landlab's OverlandFlow (de Almeida).

Both run on the same synthetic DEM (benchmarks/bench_terrain.synthetic_dem, 30 m cells)
with the same uniform rain (default 50 mm/h for 10 simulated minutes), the same scheme
parameters (alpha 0.7, theta 0.8, n 0.03; Landlab with steep_slopes=True) and the same
initial film (Landlab's h_init = 1e-5 m, given to ours as h0), closed edges, and the
same step cap (--max-dt, default 5 s: on a 1e-5 m film the CFL step is over half an
hour, so without a cap the whole run is one or two steps). Each tool
first runs once on a small grid (JIT compile / imports), then each case is timed
--repeats times and the median is shown.

Rates are cell updates per second: cells (ny * nx, the same count for both) times time
steps divided by seconds. Each model picks its own adaptive steps, so the step counts
differ (ours adds the flow speed to the CFL step; Landlab caps the Froude number).
Landlab is slow at large sizes: with --landlab-steps K it runs only its first K steps
there and the table then reports its per-step rate (marked "K steps").

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_inertial.py [--repeats 3] [--sizes 256 1000]
        [--minutes 10] [--rain 50] [--landlab-steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_terrain import synthetic_dem

from models.inertial import simulate_inertial

DX = 30.0
H_INIT = 1e-5


def run_ours(dem, minutes, rain_mm_h, max_dt):
    rain = np.full(dem.shape, rain_mm_h, dtype=np.float32)
    t0 = time.perf_counter()
    r = simulate_inertial(
        dem,
        dx=DX,
        duration_s=minutes * 60.0,
        rain=rain,
        h0=np.full(dem.shape, H_INIT),
        manning_n=0.03,
        theta=0.8,
        alpha=0.7,
        max_dt_s=max_dt,
    )
    sec = time.perf_counter() - t0
    bal = r.volume_initial + r.volume_in - r.volume_out - r.volume_infiltrated
    return (
        sec,
        r.steps,
        {
            "mean_h": float(r.depth.mean()),
            "max_h": float(r.depth.max()),
            "mass_err": abs(r.volume_final - bal) / r.volume_in,
        },
    )


def run_landlab(dem, minutes, rain_mm_h, max_dt, max_steps=None):
    from landlab import RasterModelGrid
    from landlab.components import OverlandFlow

    ny, nx = dem.shape
    grid = RasterModelGrid((ny, nx), xy_spacing=DX)
    grid.add_field("topographic__elevation", dem.ravel().copy(), at="node")
    grid.add_zeros("surface_water__depth", at="node")
    grid.set_closed_boundaries_at_grid_edges(True, True, True, True)
    of = OverlandFlow(
        grid,
        h_init=H_INIT,
        alpha=0.7,
        theta=0.8,
        mannings_n=0.03,
        rainfall_intensity=rain_mm_h / 3.6e6,
        steep_slopes=True,
    )
    duration = minutes * 60.0
    elapsed = 0.0
    steps = 0
    t0 = time.perf_counter()
    while elapsed < duration and (max_steps is None or steps < max_steps):
        dt = min(of.calc_time_step(), max_dt, duration - elapsed)
        of.overland_flow(dt=dt)  # one internal step: its own CFL step equals dt
        elapsed += dt
        steps += 1
    sec = time.perf_counter() - t0
    h = grid.at_node["surface_water__depth"]
    return sec, steps, {"mean_h": float(h.mean()), "max_h": float(h.max()), "elapsed": elapsed}


def median_run(fn, repeats):
    out = [fn() for _ in range(repeats)]
    secs = [o[0] for o in out]
    med = statistics.median(secs)
    o = out[secs.index(med)] if med in secs else out[0]
    return med, o[1], o[2], secs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1000])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rain", type=float, default=50.0, help="uniform rain, mm/h")
    ap.add_argument(
        "--max-dt",
        type=float,
        default=5.0,
        help="step cap, s, for both models (a thin rain film allows minutes-long steps)",
    )
    ap.add_argument(
        "--landlab-steps",
        type=int,
        default=10,
        help="steps Landlab runs on grids larger than 256 x 256 (0: all)",
    )
    args = ap.parse_args()

    print(
        f"numba threads: {numba.get_num_threads()}; rain {args.rain} mm/h for {args.minutes} min; "
        f"dx {DX} m; max step {args.max_dt} s; median of {args.repeats}"
    )
    warm = synthetic_dem(64)
    run_ours(warm, 1.0, args.rain, args.max_dt)
    run_landlab(warm, 1.0, args.rain, args.max_dt)

    rows = []
    for n in args.sizes:
        dem = synthetic_dem(n)
        cells = n * n
        s, k, info, secs = median_run(
            lambda dem=dem: run_ours(dem, args.minutes, args.rain, args.max_dt), args.repeats
        )
        ours_rate = cells * k / s / 1e6
        rows.append((f"{n} x {n}", "floodwarn", s, k, ours_rate, "", info, secs))
        lim = args.landlab_steps if (n > 256 and args.landlab_steps > 0) else None
        s2, k2, info2, secs2 = median_run(
            lambda dem=dem, lim=lim: run_landlab(dem, args.minutes, args.rain, args.max_dt, lim),
            args.repeats,
        )
        ll_rate = cells * k2 / s2 / 1e6
        note = (
            f"{k2} steps only" if lim is not None and info2["elapsed"] < args.minutes * 60 else ""
        )
        rows.append((f"{n} x {n}", "landlab OverlandFlow", s2, k2, ll_rate, note, info2, secs2))
        rows.append(
            (f"{n} x {n}", "ratio (ours faster by)", None, None, ours_rate / ll_rate, "", {}, [])
        )

    print()
    print(
        "| grid | model | median s | steps | M cell-updates/s | note | runs s | mean h m "
        "| max h m |"
    )
    print("|---|---|---:|---:|---:|---|---|---:|---:|")
    for grid, model, s, k, rate, note, info, secs in rows:
        if s is None:
            print(f"| {grid} | {model} | | | **{rate:.1f}x** | per cell-update | | | |")
            continue
        runs = ", ".join(f"{v:.2f}" for v in secs)
        extra = f" (mass err {info['mass_err']:.1e})" if "mass_err" in info else ""
        print(
            f"| {grid} | {model} | {s:.3f} | {k} | {rate:.2f} | {note}{extra} | {runs} | "
            f"{info['mean_h']:.4f} | {info['max_h']:.3f} |"
        )


if __name__ == "__main__":
    main()
