"""Time the rain ingest: listing a folder of forecast issues, and a cycle's rain assembled.

1. catalogue: ``issues()`` of the NetCDF source over a folder of ``--files`` copies of the
   demo forecasts (a site keeps days of issues), three ways, in ms per file:
   the reference time read alone (what ``issues()`` does), the time axis checked through
   the light header read (files without a ``forecast_reference_time``), and the same
   check through ``xr.open_dataset`` (what the header read replaces).
2. cycle: ``warning.pipeline.assemble_rain`` plus the gauges for the demo cycle at
   2025-11-14T16:00Z, fresh sources each time (as ``floodwarn run`` does): every unit,
   time-axis and plausibility check included.

Medians of ``--repeats`` runs. Usage (from the repository root, after ``make demo`` has
prepared the demo terrain):
    .venv/bin/python benchmarks/bench_ingest.py [--files 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from warning.config import load_config  # noqa: E402
from warning.ingest import get_source  # noqa: E402
from warning.pipeline import Inputs, assemble_rain  # noqa: E402
from warning.site import Site  # noqa: E402

FORECASTS = REPO / "sample_data" / "demo" / "forecasts"


def median_ms_per_file(fn, files: list[Path], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(files)
        times.append((time.perf_counter() - t0) / len(files) * 1000.0)
    return statistics.median(times)


def catalogue(n: int, repeats: int) -> None:
    demo = sorted(FORECASTS.glob("rain_*.nc"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k in range(n):
            shutil.copy(demo[k % len(demo)], folder / f"rain_{k:05d}.nc")
        files = sorted(folder.glob("*.nc"))

        def fresh():
            return get_source("netcdf", path=folder, pattern="rain_*.nc", variable="precipitation_rate")

        def listing(_files):
            assert len(fresh().issues()) == n

        def header(fs):
            src = fresh()
            for f in fs:
                with src._header(f) as ds:  # noqa: SLF001 - the path being compared
                    src._time_axis(ds, "time", f)  # noqa: SLF001

        def full(fs):
            src = fresh()
            for f in fs:
                with src._open(f) as ds:  # noqa: SLF001
                    src._time_axis(ds, "time", f)  # noqa: SLF001

        quick = median_ms_per_file(listing, files, repeats)
        light = median_ms_per_file(header, files, repeats)
        heavy = median_ms_per_file(full, files, repeats)
    print(f"catalogue of {n} files, ms per file (median of {repeats}):")
    print(f"  issues() (reference time alone)     {quick:7.2f}")
    print(f"  time axis, light header read        {light:7.2f}   ({light / quick:.1f}x)")
    print(f"  time axis, xr.open_dataset          {heavy:7.2f}   ({heavy / quick:.1f}x)")


def cycle(repeats: int) -> None:
    cfg = load_config(REPO / "config" / "demo.toml")
    site = Site.load(cfg)
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        inputs = Inputs(cfg)
        rain, _t, _now, _issue, problems = assemble_rain(inputs, site, cfg, at)
        inputs.gauges_or_last_good(problems)
        times.append(time.perf_counter() - t0)
    print(f"demo cycle ingest (rain {tuple(rain.shape)} onto the site grid, gauges): "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s of {repeats}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    catalogue(args.files, args.repeats)
    cycle(args.repeats)


if __name__ == "__main__":
    main()
