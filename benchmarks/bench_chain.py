"""Time the forecast chain: SCS-CN runoff -> kinematic routing -> HAND depth.

One member on a synthetic fractal DEM (``bench_terrain.synthetic_dem``, seeded), 30 m
cells, ``--steps`` five-minute steps of a seeded storm (a storm cell crossing the grid
over a light widespread rain). Terrain (filled DEM, D8, HAND, reaches, rating curves) is
prepared once and not timed. Every stage first runs once on the full problem (JIT and
first-touch), then ``--repeats`` warm runs; the table shows the median seconds of
each stage and cell-steps per second (valid cells x steps / seconds).

- runoff: ``runoff.scs_excess_rate`` (member, time, y, x) float32.
- routing: ``routing.route_kinematic_d8`` (1 sub-step per 5-minute step, the pipeline's
  default), recording every reach outlet, with the parallel "parts" kernel; with
  ``--serial`` also the plain sweep (one member: serial) for comparison.
- depth: ``inundation.stage_from_discharge`` on the reach outlets' discharge, then
  ``inundation.depth_from_stage`` for every step (a (time, y, x) float32 depth grid).

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_chain.py [--size 1000] [--steps 288] [--repeats 3] [--serial]
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_terrain import synthetic_dem

from models import inundation as I
from models import routing as RT
from models import runoff as R
from models import terrain as T

STAGES = (np.linspace(0.0, 1.0, 41) ** 2 * 12.0).astype(np.float64)


def prepare(n: int, cell: float):
    dem = synthetic_dem(n, cell=cell)
    filled = T.fill_depressions(dem, epsilon=True)
    fd = T.flow_direction_d8(filled, dx=cell)
    acc = T.flow_accumulation_d8(fd)
    drainage = T.drainage_network(acc, 1e6 / cell**2)  # 1 km2
    reach = T.label_reaches(fd, drainage, max_length=20)
    roc = T.reach_catchments(fd, reach)
    hand = T.hand(filled, fd, drainage)
    slope = T.d8_slope(filled, fd, cell, cell)
    length, rslope = T.reach_properties(reach, fd, filled, cell, cell)
    nreach = int(reach.max())
    outlet = T.reach_outlets(reach, acc)
    length = np.maximum(length, cell)
    rating = I.synthetic_rating_curves(np.nan_to_num(hand, nan=np.inf), roc, length, rslope, 0.06, cell * cell,
                                       STAGES)
    rating_q = np.maximum.accumulate(rating.discharge, axis=1)
    width = np.where(drainage, 12.0, cell).astype(np.float32)
    manning = np.where(drainage, 0.035, 0.08).astype(np.float32)
    return {"fd": fd, "slope": slope, "hand": hand, "roc": roc, "outlet": outlet, "rating_q": rating_q,
            "width": width, "manning": manning, "nreach": nreach, "drainage": drainage}


def storm(n: int, steps: int, seed: int = 7) -> np.ndarray:
    """(time, y, x) float32 mm/h: a Gaussian cell (peak ~40 mm/h, radius ~8 km at 30 m)
    crossing diagonally, over 1-3 mm/h widespread rain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    base = rng.uniform(1.0, 3.0, size=(n, n)).astype(np.float32)
    rain = np.empty((steps, n, n), dtype=np.float32)
    r2 = np.float32((0.25 * n) ** 2)
    for t in range(steps):
        f = t / max(steps - 1, 1)
        cy, cx = np.float32(n * (-0.1 + 1.2 * f)), np.float32(n * (0.1 + 0.6 * f))
        np.multiply(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r2), np.float32(40.0), out=rain[t])
        rain[t] += base
    return rain


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=288)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cell", type=float, default=30.0)
    ap.add_argument("--serial", action="store_true", help="also time the serial routing sweep")
    args = ap.parse_args()
    n, nt, cell = args.size, args.steps, args.cell
    dt_h = 5.0 / 60.0
    t0 = time.perf_counter()
    site = prepare(n, cell)
    rain = storm(n, nt)
    cn = np.random.default_rng(3).uniform(60.0, 90.0, size=(n, n)).astype(np.float32)
    valid = site["fd"] != 255
    nvalid = int(valid.sum())
    print(f"grid {n}x{n} ({nvalid} valid cells), {nt} steps of 5 min, 1 member, {site['nreach']} reaches, "
          f"threads {numba.get_num_threads()} ({numba.threading_layer() if nt else ''}); "
          f"setup {time.perf_counter() - t0:.1f} s", flush=True)

    rec = site["outlet"][1:]

    def run_runoff():
        return R.scs_excess_rate(rain, dt_h, cn)

    def run_routing(excess, serial=False):
        return RT._route(site["fd"], excess, dt_h * 3600.0, cell, cell, site["slope"], site["manning"],
                         site["width"], substeps=1, record=rec, kernel="members" if serial else "parts")

    def run_depth(res):
        q_reach = np.zeros((res.q_record.shape[1], site["nreach"] + 1))
        q_reach[:, 1:] = res.q_record[0]
        stage = I.stage_from_discharge(STAGES, site["rating_q"], q_reach)
        stage[:, 0] = 0.0
        return I.depth_from_stage(site["hand"], site["roc"], stage)

    times: dict[str, list[float]] = {"runoff": [], "routing": [], "depth": []}
    if args.serial:
        times["routing_serial"] = []
    for k in range(args.repeats + 1):  # run 0 is the warm-up
        t_r, excess = timed(run_runoff)
        t_q, res = timed(run_routing, excess)
        t_d, depth = timed(run_depth, res)
        if args.serial:
            t_s, ser = timed(run_routing, excess, True)
            if k == 0:
                same = all(np.array_equal(getattr(res, f), getattr(ser, f)) for f in RT.RoutingResult._fields)
                print(f"parallel == serial bit for bit: {same}", flush=True)
        if k:
            times["runoff"].append(t_r)
            times["routing"].append(t_q)
            times["depth"].append(t_d)
            if args.serial:
                times["routing_serial"].append(t_s)
        del depth
        print(f"run {k}{' (warm-up)' if k == 0 else ''}: runoff {t_r:.2f} s, routing {t_q:.2f} s, "
              f"depth {t_d:.2f} s" + (f", serial routing {t_s:.2f} s" if args.serial else ""), flush=True)
    wet = float((excess[:, valid] > 0).mean())
    bal = (res.outflow_volume[0] + res.storage_final[0] - res.storage_initial[0]) / (
        excess[:, valid].astype(np.float64).sum() / 3.6e6 * cell * cell * dt_h * 3600.0) - 1.0
    cs = nvalid * nt
    print(f"\nshare of cell-steps with runoff > 0: {wet:.3f}; routing mass balance error {bal:.2e}")
    print(f"{'stage':<16}{'median s':>10}{'M cell-steps/s':>16}{'ns/cell-step':>14}")
    total = 0.0
    for name, v in times.items():
        med = statistics.median(v)
        if name != "routing_serial":
            total += med
        print(f"{name:<16}{med:>10.3f}{cs / med / 1e6:>16.1f}{med / cs * 1e9:>14.2f}")
    print(f"{'chain':<16}{total:>10.3f}{cs / total / 1e6:>16.1f}{total / cs * 1e9:>14.2f}")


if __name__ == "__main__":
    main()
