#!/usr/bin/env python
"""Generate the floodwarn demo site, deterministically, from a fixed seed.

The site is "Millbrook", an invented river valley on a 25 m grid in UTM zone 31N:

* the Millbrook flows west to east down a 700 m wide floodplain between wooded hills;
* a steep tributary, the Steep Beck, falls out of the northern hills and joins it
  just upstream of Millbrook Town, which sits on the floodplain's south bank;
* Hilltop Village sits high on the southern hills and should never flood.

Everything the demo needs is written to ``sample_data/demo/``:

``dem.tif``               terrain, float32 metres, EPSG:32631, 25 m cells
``curve_number.tif``      SCS curve number (AMC II) per cell, uint8
``zones.geojson``         warning zones (WGS 84 polygons with ``code`` and ``name``)
``gauges/readings.csv``   observed river stage, 15-minute, at the three gauges
``forecasts/*.nc``        rainfall forecasts (NetCDF-CF, mm/h on a 0.01 degree lat/lon
                          grid), issued every 3 h; the 00/06/12/18 UTC issues are
                          6-member ensembles, the others deterministic
``subscribers.csv``       invented residents (Ofcom drama-range numbers) for the drill
``storm.json``            the storm's true timing, for documentation only
``events/*.toml``         the storm as an event file for ``floodwarn replay`` and
                          ``floodwarn tune``: its period and the observed flood onsets,
                          i.e. when each gauge's record first reached the minor flood
                          stage given in ``config/demo.toml``

Run ``python sample_data/make_demo.py`` to regenerate; the output is byte-stable for a
given numpy/rasterio/h5netcdf version. Nothing here reads data from outside.
"""

from __future__ import annotations

import csv
import json
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from scipy.ndimage import gaussian_filter

SEED = 20251114
OUT = Path(__file__).resolve().parent / "demo"
CRS = "EPSG:32631"
CELL = 25.0
NY = NX = 256
X0, Y0 = 600_000.0, 5_700_000.0  # upper-left corner (UTM 31N, about 51.4 N 4.4 E)
T0 = datetime(2025, 11, 14, 0, 0, tzinfo=timezone.utc)  # storm day
STORM_CENTRE_H = 15.0  # hours after T0 of the heaviest rain
STORM_SIGMA_H = 4.0
STORM_PEAK_MM_H = 24.0

# Gauges: (id, name, row, col) on the generated channels
GAUGES = [
    ("MB-WEST", "Millbrook at Westford", None, 40),
    ("MB-TOWN", "Millbrook at Town Bridge", None, 176),
    ("SB-MILL", "Steep Beck at Mill Lane", 95, None),
]


def river_row(col: np.ndarray) -> np.ndarray:
    """Row of the Millbrook's centreline at each column (a gentle meander)."""
    return 132.0 + 10.0 * np.sin(2.0 * np.pi * col / 170.0)


def beck_col(row: np.ndarray) -> np.ndarray:
    """Column of the Steep Beck's centreline at each row (north of the river)."""
    return 158.0 + 6.0 * np.sin(row / 22.0)


def make_dem(rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:NY, 0:NX].astype(np.float64)
    # --- main valley
    d_main = np.abs(rows - river_row(cols)) * CELL  # m from the centreline
    bed = 40.0 - 0.0022 * cols * CELL  # 2.2 m/km down-valley
    bank = 1.4  # channel depth below the floodplain, m
    plain_half = 300.0
    z_main = bed + bank + 0.0025 * d_main
    hills = d_main > plain_half
    z_main[hills] += 38.0 * np.tanh((d_main[hills] - plain_half) / 450.0) + 0.02 * (
        d_main[hills] - plain_half
    )
    channel = d_main <= 0.6 * CELL
    z_main[channel] = bed[channel] + 0.002 * d_main[channel]
    # --- tributary valley, north of the river, steep (2 %)
    junction_row = river_row(beck_col(np.array([132.0])))[0]
    up_m = np.clip(junction_row - rows, 0.0, None) * CELL
    d_trib = np.abs(cols - beck_col(rows)) * CELL
    bed_t = bed[int(round(junction_row)), 158] + 0.02 * up_m
    z_trib = bed_t + 0.9 + 0.12 * d_trib
    z_trib[d_trib <= 0.6 * CELL] = bed_t[d_trib <= 0.6 * CELL]
    z_trib[rows > junction_row] = np.inf
    dem = np.minimum(z_main, z_trib)
    # --- roughness: smooth noise, stronger on the hills; an old quarry pit on the hill
    noise = gaussian_filter(rng.normal(0.0, 1.0, (NY, NX)), 4.0)
    noise /= np.abs(noise).max()
    beck = (d_trib <= CELL) & (rows <= junction_row)
    dem += np.where(d_main > plain_half, 2.5, 0.25) * noise * (~channel) * (~beck)
    qr, qc = 215, 60
    pit = np.exp(-((rows - qr) ** 2 + (cols - qc) ** 2) / (2 * 4.0**2))
    dem -= 6.0 * pit
    return dem.astype(np.float32)


def make_cn(dem: np.ndarray, town_mask: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[0:NY, 0:NX].astype(np.float64)
    d_main = np.abs(rows - river_row(cols)) * CELL
    cn = np.full((NY, NX), 74, dtype=np.uint8)  # pasture, soil group B/C
    cn[d_main > 500.0] = 66  # woodland on the hills
    cn[town_mask] = 90  # town: roofs and roads
    cn[d_main <= 0.6 * CELL] = 98  # open water
    return cn


def grid_xy(row: float, col: float) -> tuple[float, float]:
    return X0 + (col + 0.5) * CELL, Y0 - (row + 0.5) * CELL


def to_lonlat(xs, ys):
    lon, lat = warp_transform(CRS, "EPSG:4326", list(xs), list(ys))
    return np.round(np.asarray(lon), 6), np.round(np.asarray(lat), 6)


def polygon_lonlat(rc: list[tuple[float, float]]) -> list[list[float]]:
    xs, ys = zip(*(grid_xy(r, c) for r, c in rc))
    lon, lat = to_lonlat(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def _along_river(c0: int, c1: int, near: float, far: float, n: int = 8) -> list[tuple[float, float]]:
    """A band following the river from column c0 to c1, between ``near`` and ``far`` rows
    from its centreline (positive: south bank)."""
    cols = np.linspace(c0, c1, n)
    rows = river_row(cols)
    return [(float(r + near), float(c)) for r, c in zip(rows, cols)] + [
        (float(r + far), float(c)) for r, c in zip(rows[::-1], cols[::-1])]


ZONES = [
    # code, name, polygon as (row, col) vertices
    ("MB-TOWN", "Millbrook Town", _along_river(150, 205, 4.0, 20.0)),
    ("MB-WESTFORD", "Westford Meadows", _along_river(15, 70, -16.0, -4.0)),
    ("SB-LANE", "Steep Beck Lane", [(60, 146), (60, 170), (108, 170), (108, 146)]),
    ("HILLTOP", "Hilltop Village", [(200, 80), (200, 120), (230, 120), (230, 80)]),
]


def zone_mask(rc) -> np.ndarray:
    from matplotlib.path import Path as PolyPath

    rows, cols = np.mgrid[0:NY, 0:NX]
    pts = np.column_stack([rows.ravel() + 0.5, cols.ravel() + 0.5])
    return PolyPath(rc).contains_points(pts).reshape(NY, NX)


# ----------------------------------------------------------------------------- rain
def forecast_grid():
    """The forecast model's own grid: 0.01 degree lat/lon cells around the site."""
    xs = [X0 - 3000, X0 + NX * CELL + 3000]
    ys = [Y0 + 3000, Y0 - NY * CELL - 3000]
    lon, lat = to_lonlat([xs[0], xs[1], xs[0], xs[1]], [ys[0], ys[0], ys[1], ys[1]])
    lon0, lon1 = np.floor(lon.min() * 100) / 100, np.ceil(lon.max() * 100) / 100
    lat0, lat1 = np.floor(lat.min() * 100) / 100, np.ceil(lat.max() * 100) / 100
    lons = np.round(np.arange(lon0 + 0.005, lon1, 0.01), 3)
    lats = np.round(np.arange(lat1 - 0.005, lat0, -0.01), 3)  # north to south
    return lons, lats


def storm_rate(hours: np.ndarray, lons: np.ndarray, lats: np.ndarray, amp=1.0, shift_h=0.0,
               dx_deg=0.0) -> np.ndarray:
    """Rain rate (mm/h) of a front crossing west to east with an embedded heavier cell."""
    t = hours[:, None, None] - shift_h
    lon = lons[None, None, :] - dx_deg
    lat = lats[None, :, None]
    lon_c = 4.40 + 0.05 * (t - STORM_CENTRE_H) / 3.0  # front moves east ~1.2 km/h
    envelope = np.exp(-0.5 * ((t - STORM_CENTRE_H) / STORM_SIGMA_H) ** 2)
    band = 0.65 + 0.35 * np.exp(-0.5 * ((lon - lon_c) / 0.05) ** 2)
    cell = 0.25 * np.exp(-0.5 * (((lon - 4.46) / 0.03) ** 2 + ((lat - 51.42) / 0.03) ** 2))
    drizzle = 0.4 * np.exp(-0.5 * ((t - STORM_CENTRE_H) / (3 * STORM_SIGMA_H)) ** 2)
    return (amp * STORM_PEAK_MM_H * envelope * (band + cell) + drizzle).astype(np.float32)


def write_forecasts(rng: np.random.Generator) -> list[str]:
    lons, lats = forecast_grid()
    out = OUT / "forecasts"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.nc"):
        old.unlink()
    names = []
    horizon = 36
    for k in range(-12, 13):  # issues every 3 h from T0-36h to T0+36h
        issue_h = 3.0 * k
        issue = T0 + timedelta(hours=issue_h)
        lead_to_peak = np.clip((STORM_CENTRE_H - issue_h) / 27.0, 0.0, 1.0)
        amp = 1.0 - 0.50 * lead_to_peak  # far-ahead forecasts under-predict ...
        shift = 3.0 * lead_to_peak  # ... and are late
        hours = issue_h + np.arange(horizon, dtype=np.float64)
        ensemble = issue.hour % 6 == 0
        n_members = 6 if ensemble else 1
        z = rng.normal(0.0, 1.0, (n_members, 3))
        z[0] = 0.0  # member 0 is the control
        spread = 0.35 * lead_to_peak + 0.08
        fields = np.stack([
            storm_rate(hours, lons, lats, amp=amp * (1.0 + spread * z[m, 0]),
                       shift_h=shift + 1.5 * spread * z[m, 1] / 0.43, dx_deg=0.02 * z[m, 2])
            for m in range(n_members)
        ])
        times = [issue + timedelta(hours=float(h - issue_h)) for h in hours]
        data = fields if ensemble else fields[0]
        dims = ("member", "time", "lat", "lon") if ensemble else ("time", "lat", "lon")
        coords = {
            "time": ("time", np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in times])),
            "lat": ("lat", lats, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("lon", lons, {"standard_name": "longitude", "units": "degrees_east"}),
        }
        if ensemble:
            coords["member"] = ("member", np.arange(n_members, dtype=np.int32),
                                {"standard_name": "realization"})
        da = xr.DataArray(
            np.round(data, 2), dims=dims, coords=coords, name="precipitation_rate",
            attrs={"standard_name": "lwe_precipitation_rate", "units": "mm h-1",
                   "long_name": "rainfall rate, mean over the hour starting at time",
                   "grid_mapping": "crs", "cell_methods": "time: mean"},
        )
        ds = da.to_dataset()
        ds["crs"] = xr.DataArray(np.int32(0), attrs={"grid_mapping_name": "latitude_longitude",
                                                     "epsg_code": "EPSG:4326"})
        ds["forecast_reference_time"] = xr.DataArray(
            np.datetime64(issue.replace(tzinfo=None), "ns"),
            attrs={"standard_name": "forecast_reference_time"})
        ds.attrs = {"Conventions": "CF-1.8", "title": "Millbrook demo rainfall forecast",
                    "source": "synthetic, sample_data/make_demo.py",
                    "institution": "floodwarn demo"}
        enc = {"precipitation_rate": {"zlib": True, "complevel": 4, "dtype": "float32"},
               "time": {"units": "hours since 2025-11-14 00:00:00", "calendar": "standard",
                        "dtype": "float64"},
               "forecast_reference_time": {"units": "hours since 2025-11-14 00:00:00",
                                           "dtype": "float64"}}
        name = f"rain_{issue:%Y%m%dT%H%MZ}.nc"
        ds.to_netcdf(out / name, engine="h5netcdf", encoding=enc)
        names.append(name)
    return names


# ----------------------------------------------------------------------------- gauges
def gamma_uh(lag_h: float, dt_h: float, n: int) -> np.ndarray:
    t = (np.arange(n) + 0.5) * dt_h
    k = 3.0
    theta = lag_h / (k - 1.0)
    uh = t ** (k - 1) * np.exp(-t / theta)
    return uh / uh.sum()


def write_gauges(rng: np.random.Generator, dem: np.ndarray) -> list[dict]:
    """Observed stage: SCS excess of the true storm through a gamma unit hydrograph and a
    power-law rating. It is an independent stand-in for a real gauge, not the model."""
    (OUT / "gauges").mkdir(parents=True, exist_ok=True)
    dt_h = 0.25
    hours = np.arange(-24.0, 48.0, dt_h)
    lons, lats = forecast_grid()
    truth = storm_rate(hours, lons, lats).mean(axis=(1, 2))  # areal mean, mm/h
    cum = np.cumsum(truth * dt_h)
    gauges = []
    rows_out = []
    specs = {"MB-WEST": (9.0, 2.0, 1.1), "MB-TOWN": (38.0, 3.0, 0.9), "SB-MILL": (4.5, 1.0, 0.8)}
    for gid, name, row, col in GAUGES:
        # put the gauge on the channel: the lowest cell across the valley near the centreline
        if row is None:
            r_c = int(round(river_row(np.array([float(col)]))[0]))
            row = r_c - 3 + int(np.argmin(dem[r_c - 3 : r_c + 4, col]))
        else:
            c_c = int(round(beck_col(np.array([float(row)]))[0]))
            col = c_c - 3 + int(np.argmin(dem[row, c_c - 3 : c_c + 4]))
        area_km2, lag_h, base = specs[gid]
        s = 25400.0 / 76.0 - 254.0
        q_cum = np.where(cum > 0.2 * s, (cum - 0.2 * s) ** 2 / (cum + 0.8 * s), 0.0)
        excess = np.diff(q_cum, prepend=0.0)  # mm per step
        flow = np.convolve(excess, gamma_uh(lag_h, dt_h, 96))[: hours.size]
        q = base + flow / 1000.0 * area_km2 * 1e6 / (dt_h * 3600.0)  # m3/s
        stage = 0.25 * q ** 0.55 + 0.2 + rng.normal(0.0, 0.01, q.size)
        x, y = grid_xy(row, col)
        lon, lat = to_lonlat([x], [y])
        gauges.append({"id": gid, "name": name, "row": row, "col": col,
                       "lon": float(lon[0]), "lat": float(lat[0]),
                       "bed_elevation_m": round(float(dem[row, col]), 2),
                       "peak_stage_m": round(float(stage.max()), 2)})
        for h, st in zip(hours, stage):
            rows_out.append((gid, (T0 + timedelta(hours=float(h))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                             f"{st:.3f}"))
    with open(OUT / "gauges" / "readings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["station", "time", "stage_m"])
        w.writerows(rows_out)
    return gauges


def write_subscribers(rng: np.random.Generator) -> None:
    zones = ["MB-TOWN", "MB-TOWN", "MB-TOWN", "MB-WESTFORD", "SB-LANE", "HILLTOP", "MB-TOWN"]
    langs = ["en", "es", "en", "en", "en", "en", "es"]
    with open(OUT / "subscribers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["phone", "zones", "language", "consent_source"])
        for i, (z, lang) in enumerate(zip(zones, langs)):
            # Ofcom's drama range 07700 900000-900999: never a real subscriber
            w.writerow([f"07700 900{100 + 7 * i:03d}", z, lang, "demo sign-up form"])


def write_event() -> Path:
    """The storm as an event file. Observed onsets come from the gauge records (the
    first reading at or above the zone's gauge's minor flood stage in the site config);
    a zone without a gauge is recorded as seen dry (Hilltop is high on the hills)."""
    cfg = tomllib.loads((OUT.parent.parent / "config" / "demo.toml").read_text())
    minor = {g["id"]: g["flood_stages"]["minor"] for g in cfg["gauges"]}
    first: dict[str, str] = {}
    with open(OUT / "gauges" / "readings.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["station"] not in first and float(row["stage_m"]) >= minor[row["station"]]:
                first[row["station"]] = row["time"]
    lines = ["# The Millbrook storm of 14 November 2025, for floodwarn replay and tune.",
             "# Written by sample_data/make_demo.py: observed onsets are the first gauge",
             "# readings at or above each gauge's minor flood stage in config/demo.toml.",
             'name = "Millbrook storm of 14 November 2025"',
             "start = 2025-11-13T18:00:00Z",
             "end = 2025-11-15T12:00:00Z",
             "tolerance_minutes = 60", "", "[observed]"]
    for zone in cfg["zones"]:
        onset = first.get(zone.get("gauge", ""))
        lines.append(f'{zone["code"]} = [{onset}]' if onset else f'{zone["code"]} = []')
    (OUT / "events").mkdir(exist_ok=True)
    path = OUT / "events" / "storm-2025-11-14.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    dem = make_dem(rng)
    transform = from_origin(X0, Y0, CELL, CELL)
    profile = dict(driver="GTiff", height=NY, width=NX, count=1, crs=CRS, transform=transform,
                   compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(OUT / "dem.tif", "w", dtype="float32", nodata=-9999.0,
                       predictor=3, **profile) as dst:
        dst.write(dem, 1)
        dst.update_tags(units="m", source="synthetic, sample_data/make_demo.py")
    town = zone_mask(ZONES[0][2])
    with rasterio.open(OUT / "curve_number.tif", "w", dtype="uint8", nodata=0, **profile) as dst:
        dst.write(make_cn(dem, town), 1)
        dst.update_tags(units="1", meaning="SCS curve number, AMC II")
    features = [{"type": "Feature", "properties": {"code": code, "name": name},
                 "geometry": {"type": "Polygon", "coordinates": [polygon_lonlat(rc)]}}
                for code, name, rc in ZONES]
    (OUT / "zones.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": features}, indent=1) + "\n")
    forecasts = write_forecasts(rng)
    gauges = write_gauges(rng, dem)
    write_subscribers(rng)
    write_event()
    (OUT / "storm.json").write_text(json.dumps({
        "storm_day": T0.isoformat(), "heaviest_rain": (T0 + timedelta(hours=STORM_CENTRE_H)).isoformat(),
        "forecasts": forecasts, "gauges": gauges}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote the demo site to {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
