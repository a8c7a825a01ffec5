"""Time models.terrain against pysheds, pyflwdir, richdem and whitebox-workflows.

Every tool runs in its own subprocess (peak RSS = VmHWM of that process, reset after the
DEM is generated, so the peak covers the tool's steps with the input DEM held: once for
one run of the core pipeline alone, then for all steps and repeats), first
once on a 200x200 DEM (JIT compile, not timed), then ``--repeats`` warm runs per size;
the tables give medians, Mcells/s and the ratio to the fastest peer for the same step
(``x fastest``: < 1 means we are faster). All tools get the same synthetic DEMs as
``../shared/bench/peers.py`` (fractal + slope + lakes + noise, float64, 30 m cells).

Steps:
- ours: ``fill`` (Priority-Flood, no epsilon), ``flats`` (``flow_direction_d8(...,
  resolve_flats=True)`` minus the plain D8 time), ``fill_eps`` (Priority-Flood+epsilon:
  no flats left, so it replaces fill + flats), ``fdir`` (D8), ``acc`` (D8 accumulation,
  cell counts), ``hand`` (drainage = acc >= --hand-threshold), ``catch`` (catchments of
  the 100 largest-accumulation cells). ``core`` = fill_eps + fdir + acc;
  ``core_flats`` = fill + flats + fdir + acc.
- pysheds 0.5: fill_depressions, resolve_flats, flowdir, accumulation, compute_hand.
- pyflwdir: dem.fill_depressions (also returns D8: its ``fdir`` is building the flow
  graph), upstream_area, hand.
- richdem: FillDepressions, ResolveFlats, FlowProportions(D8), FlowAccumFromProps.
- whitebox-workflows: fill_depressions(fix_flats=True) (flats included), d8_pointer,
  d8_flow_accum, elevation_above_stream (numpy<->Raster copies not timed).
Peers' ``core`` = fill + flats + fdir + acc.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_terrain.py [--sizes 1000 3000] [--repeats 3]
        [--tools ours,pysheds,pyflwdir,richdem,whitebox]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NODATA = -9999.0
TRANSFORM = (30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0)
TOOLS = ["ours", "pysheds", "pyflwdir", "richdem", "whitebox"]
STEPS = ["fill", "flats", "fill_eps", "fdir", "acc", "hand", "catch"]


def synthetic_dem(n: int, seed: int = 42, cell: float = 30.0) -> np.ndarray:
    """Fractal surface + regional slope + a few lakes + noise (the peers' benchmark generator)."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    k[0, 0] = 1.0
    amp = k ** (-2.4 / 2.0)
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, size=amp.shape)
    field = np.fft.irfft2(amp * np.exp(1j * phase), s=(n, n))
    field = (field - field.min()) / (field.max() - field.min()) * 120.0
    yy, xx = np.mgrid[0:n, 0:n]
    dem = field + 0.005 * cell * ((n - xx) + (n - yy)) / 2.0 + 200.0
    for _ in range(max(3, n // 300)):
        cy, cx = rng.integers(n // 10, n - n // 10, size=2)
        r = rng.uniform(10, 40)
        dem -= 15.0 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    dem += rng.normal(0, 0.3, size=dem.shape)
    return dem.astype(np.float64)


def _t() -> float:
    return time.perf_counter()


# ----------------------------------------------------------------------------- tools
def run_ours(dem, thr, core_only=False):
    sys.path.insert(0, str(ROOT))
    from models import terrain as T

    t = {}
    if not core_only:
        t0 = _t(); filled = T.fill_depressions(dem, nodata=NODATA); t["fill"] = _t() - t0
        t0 = _t(); T.flow_direction_d8(filled, nodata=NODATA, dx=30.0, resolve_flats=True); tf = _t() - t0
        t0 = _t(); T.flow_direction_d8(filled, nodata=NODATA, dx=30.0); t["flats"] = max(tf - (_t() - t0), 0.0)
        del filled
    t0 = _t(); eps = T.fill_depressions(dem, nodata=NODATA, epsilon=True); t["fill_eps"] = _t() - t0
    t0 = _t(); fd = T.flow_direction_d8(eps, nodata=NODATA, dx=30.0); t["fdir"] = _t() - t0
    t0 = _t(); acc = T.flow_accumulation_d8(fd); t["acc"] = _t() - t0
    if core_only:
        return t
    t0 = _t(); T.hand(eps, fd, acc >= thr); t["hand"] = _t() - t0
    pts = np.argsort(acc.ravel())[-100:]
    t0 = _t(); T.catchments(fd, pts); t["catch"] = _t() - t0
    return t


def run_pysheds(dem, thr, core_only=False):
    if not hasattr(np, "in1d"):  # pysheds 0.5 calls np.in1d, removed in NumPy 2.4
        np.in1d = np.isin
    from affine import Affine
    from pysheds.grid import Grid
    from pysheds.sview import Raster, ViewFinder

    vf = ViewFinder(affine=Affine(*TRANSFORM), shape=dem.shape, nodata=np.float64(NODATA))
    g = Grid(viewfinder=vf)
    r = Raster(dem.copy(), viewfinder=vf)
    t = {}
    t0 = _t(); fl = g.fill_depressions(r); t["fill"] = _t() - t0
    t0 = _t(); inf = g.resolve_flats(fl); t["flats"] = _t() - t0
    t0 = _t(); fd = g.flowdir(inf); t["fdir"] = _t() - t0
    t0 = _t(); acc = g.accumulation(fd); t["acc"] = _t() - t0
    if core_only:
        return t
    t0 = _t(); g.compute_hand(fd, fl, acc >= thr); t["hand"] = _t() - t0
    return t


def run_pyflwdir(dem, thr, core_only=False):
    import pyflwdir as m

    t = {}
    t0 = _t(); filled, d8 = m.dem.fill_depressions(dem, nodata=NODATA, outlets="edge"); t["fill"] = _t() - t0
    t0 = _t(); flw = m.from_array(d8, ftype="d8", check_ftype=False); _ = flw.idxs_seq; t["fdir"] = _t() - t0
    t0 = _t(); acc = flw.upstream_area(unit="cell"); t["acc"] = _t() - t0
    if core_only:
        return t
    t0 = _t(); flw.hand(drain=acc >= thr, elevtn=filled); t["hand"] = _t() - t0
    return t


def run_richdem(dem, thr, core_only=False):
    import richdem as rd

    r = rd.rdarray(dem.copy(), no_data=NODATA)
    r.geotransform = [TRANSFORM[2], TRANSFORM[0], 0, TRANSFORM[5], 0, TRANSFORM[4]]
    t = {}
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = _t(); fl = rd.FillDepressions(r, epsilon=False, in_place=False); t["fill"] = _t() - t0
        t0 = _t(); inf = rd.ResolveFlats(fl, in_place=False); t["flats"] = _t() - t0
        t0 = _t(); props = rd.FlowProportions(dem=inf, method="D8"); t["fdir"] = _t() - t0
        t0 = _t(); rd.FlowAccumFromProps(props=props); t["acc"] = _t() - t0
    return t


_WB = {}


def run_whitebox(dem, thr, core_only=False):
    import rasterio
    import whitebox_workflows as wbw
    from affine import Affine

    if "wbe" not in _WB:
        _WB["wbe"] = wbw.WbEnvironment()
    wbe = _WB["wbe"]
    key = dem.shape
    if key not in _WB:
        p = os.path.join(tempfile.mkdtemp(prefix="wbbase"), "base.tif")
        with rasterio.open(p, "w", driver="GTiff", height=dem.shape[0], width=dem.shape[1], count=1,
                           dtype="float64", nodata=NODATA, transform=Affine(*TRANSFORM), crs="EPSG:32633") as d:
            d.write(dem, 1)
        _WB[key] = wbe.read_raster(p)
    h = wbe.hydrology
    r = wbw.Raster.from_numpy(dem, _WB[key])
    t = {}
    t0 = _t(); fl = h.depressions_storage.fill_depressions(dem=r, fix_flats=True); t["fill"] = _t() - t0
    t0 = _t(); pt = h.flow_routing.d8_pointer(dem=fl); t["fdir"] = _t() - t0
    t0 = _t(); acc = h.flow_routing.d8_flow_accum(input=pt, out_type="cells", input_is_pointer=True)
    t["acc"] = _t() - t0
    if core_only:
        return t
    t0 = _t(); h.hydrologic_indices.elevation_above_stream(dem=fl, streams=acc.ge(float(thr))); t["hand"] = _t() - t0
    return t


RUNNERS = {"ours": run_ours, "pysheds": run_pysheds, "pyflwdir": run_pyflwdir, "richdem": run_richdem,
           "whitebox": run_whitebox}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the DEM generator's temporaries
    do not count towards the tool's peak."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(tool: str, sizes, repeats: int, thr: float) -> dict:
    """Run one tool on every size in this process; return medians and peak RSS per size."""
    fn = RUNNERS[tool]
    fn(synthetic_dem(200), thr)  # JIT compile / library warm-up
    out = {}
    for n in sizes:
        dem = synthetic_dem(n)
        gc.collect()
        _reset_peak_rss()
        base = _status_mib("VmRSS")  # the library, the DEM (8 B/cell) and leftovers
        fn(dem, thr, core_only=True)  # the core pipeline alone: its peak
        core_peak = _status_mib("VmHWM")
        gc.collect()
        _reset_peak_rss()
        runs = [fn(dem, thr) for _ in range(repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out[str(n)] = {"median": med, "rss_before_mib": base, "core_peak_rss_mib": core_peak,
                       "peak_rss_mib": _status_mib("VmHWM")}
        del dem
    return out


def core(tool: str, med: dict) -> float:
    if tool == "ours":
        return med["fill_eps"] + med["fdir"] + med["acc"]
    return sum(med.get(k, 0.0) for k in ("fill", "flats", "fdir", "acc"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--hand-threshold", type=float, default=100.0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write all medians here")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.sizes, a.repeats, a.hand_threshold)))
        return 0

    res = {}
    for tool in a.tools.split(","):
        cmd = [sys.executable, __file__, "--worker", tool, "--repeats", str(a.repeats),
               "--hand-threshold", str(a.hand_threshold), "--sizes", *map(str, a.sizes)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            res[tool] = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"# {tool}: failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    print(f"# numpy {np.__version__}; medians of {a.repeats} warm runs, one subprocess per tool; "
          f"x fastest = time / fastest peer's time for that step (< 1: ours is faster)")
    for n in a.sizes:
        cells = n * n
        print(f"\n## synthetic_{n}x{n}  ({cells / 1e6:.0f} Mcells)")
        print("| tool | step | median s | Mcells/s | x fastest peer |")
        print("|---|---|---:|---:|---:|")
        rows = {t: r[str(n)]["median"] for t, r in res.items()}
        for t, r in rows.items():
            r["core"] = core(t, r)
            if t == "ours":
                r["core_flats"] = sum(r[k] for k in ("fill", "flats", "fdir", "acc"))
        for step in STEPS + ["core", "core_flats"]:
            pk = "core" if step == "core_flats" else ("fill" if step == "fill_eps" else step)
            peers = [rows[t][pk] for t in rows if t != "ours" and pk in rows[t]]
            best = min(peers) if peers else None
            for t, r in rows.items():
                if step not in r:
                    continue
                v = r[step]
                ratio = f"{v / best:.2f}" if best else "-"
                mcs = f"{cells / v / 1e6:.1f}" if v > 0 else "-"
                print(f"| {t} | {step} | {v:.4f} | {mcs} | {ratio} |")
        print("\n| tool | RSS before MiB | peak RSS, core pipeline MiB | peak RSS, all steps MiB |")
        print("|---|---:|---:|---:|")
        for t, r in res.items():
            rn = r[str(n)]
            print(f"| {t} | {rn['rss_before_mib']:.0f} | {rn['core_peak_rss_mib']:.0f} | {rn['peak_rss_mib']:.0f} |")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
