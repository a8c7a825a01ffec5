"""Time models.terrain against pysheds (and pyflwdir when installed).

Steps: fill (Priority-Flood), fdir (D8), acc (D8 accumulation, cell counts), hand
(HAND with drainage = acc >= --hand-threshold). Every tool first runs once on a small
DEM (JIT compile), then each step is timed --repeats times on warm code; the table
shows medians and the ratio to ours (>1: the peer is slower).

Notes on what is timed:
- ours: fill_depressions (no epsilon) -> flow_direction_d8 -> flow_accumulation_d8 ->
  hand; "fill_eps" is the epsilon variant, which replaces pysheds' fill + resolve_flats.
- pysheds 0.5: fill_depressions -> resolve_flats ("flats") -> flowdir -> accumulation ->
  compute_hand.
- pyflwdir: dem.fill_depressions (returns the D8 raster too, so its "fdir" is building
  the flow graph from it) -> upstream_area -> hand.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_terrain.py [--repeats 5] [--size 1000] [--dem PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import terrain as T

DEFAULT_DEM = ROOT.parent / "shared" / "data" / "dem" / "fortworth.tif"
NODATA = -9999.0


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


def load_geotiff(path: Path):
    import rasterio

    with rasterio.open(path) as src:
        a = src.read(1).astype(np.float64)
        nd = src.nodata
        t = src.transform
    if nd is not None:
        a[a == nd] = NODATA
    return a, (abs(t.a), abs(t.e)), (t.a, t.b, t.c, t.d, t.e, t.f)


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def run_ours(dem, cell, thr):
    t = {}
    dx, dy = cell
    t["fill"], filled = _timed(T.fill_depressions, dem, nodata=NODATA)
    t["fill_eps"], _ = _timed(T.fill_depressions, dem, nodata=NODATA, epsilon=True)
    t["fdir"], fd = _timed(T.flow_direction_d8, filled, nodata=NODATA, dx=dx, dy=dy)
    t["acc"], acc = _timed(T.flow_accumulation_d8, fd)
    t["hand"], _ = _timed(T.hand, filled, fd, acc >= thr)
    return t


class Pysheds:
    name = "pysheds"

    def __init__(self):
        if not hasattr(np, "in1d"):  # pysheds 0.5 calls np.in1d, removed in NumPy 2.4
            np.in1d = np.isin
        from affine import Affine
        from pysheds.grid import Grid
        from pysheds.sview import Raster, ViewFinder

        self.Affine, self.Grid, self.Raster, self.ViewFinder = Affine, Grid, Raster, ViewFinder

    def __call__(self, dem, cell, thr, transform):
        vf = self.ViewFinder(affine=self.Affine(*transform), shape=dem.shape, nodata=np.float64(NODATA))
        r = self.Raster(dem.copy(), viewfinder=vf)
        g = self.Grid(viewfinder=vf)
        t = {}
        t["fill"], fl = _timed(g.fill_depressions, r)
        t["flats"], inf = _timed(g.resolve_flats, fl)
        t["fdir"], fd = _timed(g.flowdir, inf)
        t["acc"], acc = _timed(g.accumulation, fd)
        t["hand"], _ = _timed(g.compute_hand, fd, fl, acc >= thr)
        return t


class Pyflwdir:
    name = "pyflwdir"

    def __init__(self):
        import pyflwdir

        self.m = pyflwdir

    def __call__(self, dem, cell, thr, transform):
        m = self.m
        t = {}
        t["fill"], (filled, d8) = _timed(m.dem.fill_depressions, dem, nodata=NODATA, outlets="edge")

        def graph():
            f = m.from_array(d8, ftype="d8", check_ftype=False)
            _ = f.idxs_seq
            return f

        t["fdir"], flw = _timed(graph)
        t["acc"], acc = _timed(flw.upstream_area, unit="cell")
        t["hand"], _ = _timed(flw.hand, drain=acc >= thr, elevtn=filled)
        return t


def bench(tool, dem, cell, thr, transform, repeats):
    runs = [tool(dem, cell, thr, transform) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=1000, help="side of the synthetic DEM (cells)")
    ap.add_argument("--dem", type=Path, default=DEFAULT_DEM, help="GeoTIFF DEM (default: ../shared Fort Worth)")
    ap.add_argument("--hand-threshold", type=float, default=100.0, help="drainage = acc >= this (cells)")
    a = ap.parse_args(argv)

    cases = []
    if a.dem.exists():
        dem, cell, tr = load_geotiff(a.dem)
        cases.append((a.dem.name, dem, cell, tr))
    else:
        print(f"# {a.dem} not found: Fort Worth case skipped")
    cases.append((f"synthetic_{a.size}x{a.size}", synthetic_dem(a.size), (30.0, 30.0),
                  (30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0)))

    peers = []
    for cls in (Pysheds, Pyflwdir):
        try:
            peers.append(cls())
        except ImportError as e:
            print(f"# {cls.name} not importable ({e}); skipped")

    ours = lambda dem, cell, thr, tr: run_ours(dem, cell, thr)
    warm = synthetic_dem(200)
    for tool in [ours, *peers]:  # JIT compile outside the timings
        tool(warm, (30.0, 30.0), a.hand_threshold, (30.0, 0.0, 0.0, 0.0, -30.0, 0.0))

    print(f"# numpy {np.__version__}; median of {a.repeats} warm runs; ratio = peer / ours")
    for name, dem, cell, tr in cases:
        res = {"ours": bench(ours, dem, cell, a.hand_threshold, tr, a.repeats)}
        for p in peers:
            res[p.name] = bench(p, dem, cell, a.hand_threshold, tr, a.repeats)
        steps = ["fill", "fill_eps", "flats", "fdir", "acc", "hand"]
        names = list(res)
        print(f"\n## {name}  shape={dem.shape}  cells={dem.size}")
        header = "| step | " + " | ".join(f"{n} s" for n in names) + " | " + \
                 " | ".join(f"{n}/ours" for n in names[1:]) + " |"
        print(header)
        print("|" + "---|" * (1 + 2 * len(names) - 1))
        for s in steps + ["total"]:
            vals = []
            for n in names:
                r = res[n]
                if s == "total":
                    v = sum(r.get(k, 0.0) for k in ("fill", "flats", "fdir", "acc", "hand"))
                else:
                    v = r.get(s)
                vals.append(v)
            if all(v is None for v in vals):
                continue
            cells = [f"{v:.4f}" if v is not None else "-" for v in vals]
            ours_v = vals[0]
            ratios = [f"{v / ours_v:.2f}" if (v is not None and ours_v) else "-" for v in vals[1:]]
            print(f"| {s} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
