"""Bad input ends in a clear error naming the file and the problem, never a traceback
(issue 14): zone polygons (WGS 84, valid, inside the DEM, unique codes, UTF-8 JSON), the
config file itself, the output folder, the subscribers CSV and the public notice routes;
and the CAP polygons of every zone we publish are valid CAP 1.2."""

from __future__ import annotations

import copy
import json
import logging
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import DEMO_CONFIG, REPO, demo_config_text, shared_path
from warning.cli import app
from warning.config import load_config, read_zones
from warning.errors import ConfigError

DEMO_ZONES = REPO / "sample_data" / "demo" / "zones.geojson"
#: MB-TOWN's outline in UTM 31N metres, as a GIS exports it when the layer is not reprojected
UTM_RING = [[612345, 5698000], [613000, 5698000], [613000, 5699000], [612345, 5699000], [612345, 5698000]]


def demo_zones() -> dict:
    return json.loads(DEMO_ZONES.read_text())


def with_town(geometry: dict) -> dict:
    """The demo zones with MB-TOWN's geometry replaced."""
    gj = demo_zones()
    gj["features"][0]["geometry"] = geometry
    return gj


def write_site(tmp_path: Path, zones: dict | bytes | None = None, edit=lambda t: t,
               output_dir: Path | None = None) -> Path:
    """The demo config in tmp_path with its zones file there (``zones``: GeoJSON as a dict,
    or raw bytes) and its outputs in tmp_path (or ``output_dir``)."""
    zfile = tmp_path / "zones.geojson"
    if isinstance(zones, bytes):
        zfile.write_bytes(zones)
    else:
        zfile.write_text(json.dumps(zones if zones is not None else demo_zones()))
    text = demo_config_text()
    text = re.sub(r'zones = "[^"]*"', f'zones = "{zfile}"', text, count=1)
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{output_dir or tmp_path / "out"}"', text)
    p = tmp_path / "site.toml"
    p.write_text(edit(text))
    return p


def check_config(path: Path) -> tuple[int, str]:
    """`floodwarn check-config PATH`: exit code and everything printed, unwrapped."""
    res = CliRunner().invoke(app, ["check-config", str(path)])
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(out.split())  # the console wraps long lines


def refused(path: Path, *expected: str) -> str:
    code, out = check_config(path)
    assert code != 0, out
    for text in expected:
        assert text in out, out
    return out


# ============================================================================ zone polygons
def test_demo_zones_are_valid():
    zf = read_zones(DEMO_ZONES)
    assert zf.problems == [] and [z.code for z in zf.zones] == ["MB-TOWN", "MB-WESTFORD", "SB-LANE",
                                                                 "HILLTOP"]
    assert all(z.geometry.is_valid for z in zf.zones)


def test_a_zone_in_metres_is_refused_with_the_fix(tmp_path):
    path = write_site(tmp_path, with_town({"type": "Polygon", "coordinates": [UTM_RING]}))
    refused(path, "site.zones: zone 'MB-TOWN' has coordinates outside WGS 84 longitude/latitude "
                  "(x=612345, y=5698000); GeoJSON zones must be lon/lat (RFC 7946); reproject them")


def test_a_zone_in_metres_stops_floodwarn_run_before_any_gdal_error(tmp_path):
    path = write_site(tmp_path, with_town({"type": "Polygon", "coordinates": [UTM_RING]}))
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--at", "2025-11-14T16:00Z"])
    out = " ".join((res.output + (res.stderr if res.stderr_bytes is not None else "")).split())
    assert res.exit_code == 1 and "Traceback" not in out
    assert "zone 'MB-TOWN' has coordinates outside WGS 84" in out


@pytest.mark.parametrize("ring, reason", [
    # a bow-tie: the ring crosses itself
    ([[4.49, 51.41], [4.50, 51.42], [4.50, 51.41], [4.49, 51.42], [4.49, 51.41]], "Self-intersection"),
    # not closed: RFC 7946 rings end where they start
    ([[4.49, 51.41], [4.50, 51.41], [4.50, 51.42], [4.49, 51.42]], "do not form a closed linestring"),
    # closed, but only three positions
    ([[4.49, 51.41], [4.50, 51.41], [4.49, 51.41]], "Too few points"),
])
def test_an_invalid_polygon_is_named_with_shapely_reason(tmp_path, ring, reason):
    path = write_site(tmp_path, with_town({"type": "Polygon", "coordinates": [ring]}))
    out = refused(path, "site.zones: zone 'MB-TOWN' is not a valid polygon:", reason,
                  "does not repair zones")
    assert "zone 'MB-WESTFORD'" not in out  # the good zones are not blamed


@pytest.mark.parametrize("geometry, expected", [
    ({"type": "Polygon", "coordinates": []}, "zone 'MB-TOWN' has an empty geometry"),
    ({"type": "MultiPolygon", "coordinates": []}, "zone 'MB-TOWN' has an empty geometry"),
    (None, "zone 'MB-TOWN' is not a Polygon or MultiPolygon (no geometry)"),
    ({"type": "Point", "coordinates": [4.5, 51.4]}, "zone 'MB-TOWN' is not a Polygon or MultiPolygon (a Point)"),
    ({"type": "Polygon", "coordinates": [[["4.49", "51.41"], [4.5, 51.41], [4.5, 51.42], ["4.49", "51.41"]]]},
     "zone 'MB-TOWN' has a position that is not a longitude, latitude pair of finite numbers"),
    ({"type": "Polygon", "coordinates": [[4.49, 51.41], [4.5, 51.41], [4.5, 51.42], [4.49, 51.41]]},
     "zone 'MB-TOWN' has malformed coordinates"),
])
def test_empty_or_malformed_geometry_is_named(tmp_path, geometry, expected):
    refused(write_site(tmp_path, with_town(geometry)), "site.zones:", expected)


def test_nan_coordinates_are_refused(tmp_path):
    text = json.dumps(with_town({"type": "Polygon", "coordinates": [
        [[float("nan"), 51.41], [4.5, 51.41], [4.5, 51.42], [float("nan"), 51.41]]]}))
    assert "NaN" in text  # Python's json writes (and reads) NaN, which is not JSON
    refused(write_site(tmp_path, text.encode()), "zone 'MB-TOWN' has a position that is not")


def test_duplicate_zone_codes_are_refused(tmp_path):
    gj = demo_zones()
    gj["features"].append(copy.deepcopy(gj["features"][0]))
    refused(write_site(tmp_path, gj),
            "site.zones: zone 'MB-TOWN' (feature 4) has the code of feature 0; zone codes must be unique")
    gj["features"][4]["properties"]["code"] = "mb-town"
    refused(write_site(tmp_path, gj), "zone 'mb-town' (feature 4) has the code of feature 0, 'MB-TOWN', "
                                      "letter case aside")


def test_a_zone_code_that_cannot_name_a_notice_is_refused(tmp_path):
    gj = demo_zones()
    gj["features"][3]["properties"]["code"] = "HILL TOP"
    refused(write_site(tmp_path, gj, edit=lambda t: t.replace('code = "HILLTOP"', 'code = "HILL TOP"')),
            "site.zones: feature 3: zone code 'HILL TOP' may hold only letters, digits")


def test_a_zone_outside_the_dem_is_refused(tmp_path):
    # a valid lon/lat polygon, but 20 km east of the demo DEM
    ring = [[4.80, 51.41], [4.81, 51.41], [4.81, 51.42], [4.80, 51.42], [4.80, 51.41]]
    refused(write_site(tmp_path, with_town({"type": "Polygon", "coordinates": [ring]})),
            "site.zones: zone 'MB-TOWN' lies wholly outside the DEM (site.dem)")


def test_a_swapped_lat_lon_zone_is_refused(tmp_path):
    town = demo_zones()["features"][0]["geometry"]
    swapped = [[[lat, lon] for lon, lat in town["coordinates"][0]]]
    refused(write_site(tmp_path, with_town({"type": "Polygon", "coordinates": swapped})),
            "zone 'MB-TOWN' lies wholly outside the DEM")


def test_a_zone_partly_outside_the_dem_passes_check_config_and_is_logged_at_load(tmp_path, caplog, terrain_dir):
    import rasterio
    from rasterio.warp import transform as warp_transform

    from warning.site import Site

    with rasterio.open(REPO / "sample_data" / "demo" / "dem.tif") as src:
        (east,), _ = warp_transform(src.crs, "EPSG:4326", [src.bounds.right], [src.bounds.top - 1500])
        (lat,) = _
    # a box astride the DEM's eastern edge: about half of it outside
    ring = _square(east, lat, 0.01)
    path = write_site(tmp_path, with_town({"type": "Polygon", "coordinates": [ring]}), output_dir=terrain_dir)
    code, out = check_config(path)
    assert code == 0, out  # accepted: check-config has no channel for warnings
    with caplog.at_level(logging.WARNING, logger="warning.site"):
        site = Site.load(load_config(path))
    assert any(re.search(r"zone MB-TOWN: \d+% of its area is outside the DEM", r.getMessage())
               for r in caplog.records), caplog.text
    assert next(z for z in site.zones if z.code == "MB-TOWN").mask.any()


def test_zones_file_not_utf8_names_the_file_and_line(tmp_path):
    text = json.dumps(demo_zones(), indent=1).replace("Millbrook Town", "Millbrück Town")
    line = next(i for i, s in enumerate(text.splitlines(), start=1) if "Millbr" in s and "ck Town" in s)
    path = write_site(tmp_path, text.encode("latin-1"))
    refused(path, f"site.zones: {tmp_path / 'zones.geojson'} is not UTF-8 text (byte 0xfc at line {line},",
            "save it as UTF-8")


def test_zones_file_with_a_utf8_bom_is_read(tmp_path):
    data = "\ufeff".encode() + json.dumps(demo_zones()).encode()
    code, out = check_config(write_site(tmp_path, data))
    assert code == 0, out


@pytest.mark.parametrize("data, expected", [
    (b"{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
    (b"[1, 2]", "is not a GeoJSON FeatureCollection"),
    (b'{"type": "FeatureCollection", "features": [42]}', "site.zones: feature 0 needs properties 'code' and 'name'"),
])
def test_zones_file_that_is_not_geojson_is_named(tmp_path, data, expected):
    out = refused(write_site(tmp_path, data), expected)
    if b"features" not in data:
        assert str(tmp_path / "zones.geojson") in out


def test_an_empty_feature_collection_leaves_every_configured_zone_unmatched(tmp_path):
    out = refused(write_site(tmp_path, {"type": "FeatureCollection", "features": []}),
                  "zones[0].code: 'MB-TOWN' is not in")
    assert "(zones there: none)" in out


def test_site_load_checks_zones_too(tmp_path):
    """A config that skipped check-config (or a zones file changed since) is refused when
    the site loads, before any terrain work, with the zones file named."""
    from warning.site import Site

    cfg = load_config(write_site(tmp_path))
    (tmp_path / "zones.geojson").write_text(json.dumps(with_town({"type": "Polygon", "coordinates": [UTM_RING]})))
    with pytest.raises(ConfigError) as exc:
        Site.load(cfg)
    assert exc.value.source == str(tmp_path / "zones.geojson")
    assert "zone 'MB-TOWN' has coordinates outside WGS 84" in str(exc.value)
    assert not (tmp_path / "out" / "cache").exists()  # refused before the terrain was computed


def test_gauge_site_zones_are_checked_too(tmp_path):
    from warning.site import GaugeOnlySite

    cfg = load_config(DEMO_CONFIG)
    zfile = tmp_path / "zones.geojson"
    zfile.write_bytes(b"\xff\xfe{\x00")
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"zones": zfile, "dem": None,
                                                                     "curve_number": None})})
    with pytest.raises(ConfigError, match=r"zones\.geojson is not UTF-8 text .*looks like UTF-16"):
        GaugeOnlySite(cfg)


# ============================================================================ CAP polygons
@pytest.fixture(scope="module")
def terrain_dir(tmp_path_factory):
    """An output folder holding the demo terrain cache (the zones do not enter its key)."""
    from warning.site import Site

    out = tmp_path_factory.mktemp("terrain")
    cfg = load_config(DEMO_CONFIG)
    Site.load(cfg.model_copy(update={"site": cfg.site.model_copy(update={"output_dir": out})}))
    return out


def _square(lon: float, lat: float, half: float) -> list[list[float]]:
    return [[lon - half, lat - half], [lon + half, lat - half], [lon + half, lat + half],
            [lon - half, lat + half], [lon - half, lat - half]]


def test_multipolygon_with_a_hole_gives_valid_cap_outer_rings(tmp_path, terrain_dir):
    """MB-TOWN as two parts, the first with a hole: one CAP <polygon> per outer ring, in
    lat,lon order, closed, schema-valid; the hole is left out of the model's cells but
    cannot be expressed in CAP 1.2, so the notice covers it."""
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is needed to check CAP XML")
    schema = xmlschema.XMLSchema(str(shared_path("standards", "cap", "CAP-v1.2.xsd")))
    from alerts.cap import CAP_NS, parse_cap, to_xml
    from alerts.levels import ZonePolicy, ZoneState, decide
    from alerts.notices import NoticeContext, ZoneInfo, build_notice
    from warning.site import Site

    outer, hole, second = _square(4.497, 51.4115, 0.004), _square(4.497, 51.4115, 0.0015), _square(4.48, 51.405, 0.002)
    geometry = {"type": "MultiPolygon", "coordinates": [[outer, hole[::-1]], [second]]}
    path = write_site(tmp_path, with_town(geometry), output_dir=terrain_dir)
    code, out = check_config(path)
    assert code == 0, out
    cfg = load_config(path)
    site = Site.load(cfg)
    town = next(z for z in site.zones if z.code == "MB-TOWN")

    # one ring per part, outer rings only, (lat, lon) and closed
    assert len(town.polygons) == 2
    assert town.polygons[0] == [(lat, lon) for lon, lat in outer]
    assert town.polygons[1] == [(lat, lon) for lon, lat in second]
    # the model's cells leave the hole out
    from rasterio.warp import transform as warp_transform

    xs, ys = warp_transform("EPSG:4326", site.crs, [4.497, 4.497 + 0.0028], [51.4115, 51.4115])
    (c0, r0), (c1, r1) = (~site.transform @ (x, y) for x, y in zip(xs, ys, strict=True))
    in_hole, in_ring = (int(r0), int(c0)), (int(r1), int(c1))
    assert not town.mask[in_hole]
    assert town.mask[in_ring] or site.terrain.drainage[in_ring] or not site.valid[in_ring]

    # the notice as the cycle builds it, through the CAP 1.2 schema and back
    zcfg = next(z for z in cfg.zones if z.code == "MB-TOWN")
    specs = cfg.level_specs(zcfg)
    at = datetime(2025, 11, 14, 16, 0, tzinfo=UTC)
    metrics = {"forecast_peak_depth_m": 3.0, "flooded_share": 1.0, "depth_exceedance_probability": 1.0,
               "forecast_stage_m": 9.0, "observed_stage_m": 9.0, "observed_rise_m_per_h": 1.0}
    decision = decide(ZoneState(), metrics, at, specs, ZonePolicy(), zone="MB-TOWN")
    level = next(s for s in specs if s.rank == decision.level)
    ctx = NoticeContext(sender=cfg.notices.sender, sender_name=cfg.notices.sender_name,
                        web_base=cfg.notices.web_base, run={"model_run": "test"})
    alert = build_notice(decision, ZoneInfo(town.code, town.name, town.polygons), level, [], ctx,
                         identifier=f"MB-TOWN.{at:%Y%m%dT%H%M}", expires=at + timedelta(hours=12),
                         details={})
    xml = to_xml(alert)
    errors = list(schema.iter_errors(xml.decode("utf-8")))
    assert not errors, errors[:3]
    texts = [p.text for p in ET.fromstring(xml).iter(f"{{{CAP_NS}}}polygon")]
    assert len(texts) == 2 * len(alert.infos)  # one <polygon> per outer ring, in every <info>
    for text in texts:
        pairs = [tuple(float(v) for v in pair.split(",")) for pair in text.split(" ")]
        assert len(pairs) >= 4 and pairs[0] == pairs[-1]
        assert all(51.3 < lat < 51.5 and 4.4 < lon < 4.6 for lat, lon in pairs)  # lat,lon order
    assert parse_cap(xml).infos[0].areas[0].polygons == [[(round(a, 6), round(b, 6)) for a, b in ring]
                                                         for ring in town.polygons]


# ============================================================================ the config file
def test_config_not_utf8_names_file_and_line(tmp_path):
    text = demo_config_text().replace("Millbrook (demo site)", "Millbrück (demo site)")
    line = next(i for i, s in enumerate(text.splitlines(), start=1) if "Millbrück" in s)
    p = tmp_path / "latin1.toml"
    p.write_bytes(text.encode("latin-1"))
    refused(p, str(p), f"not UTF-8 text (byte 0xfc at line {line}, column", "save it as UTF-8")


def test_config_with_a_utf8_bom_is_read(tmp_path):
    p = tmp_path / "bom.toml"
    p.write_bytes("\ufeff".encode() + demo_config_text().encode())
    code, out = check_config(p)
    assert code == 0, out


def test_config_path_that_is_a_folder(tmp_path):
    refused(tmp_path, f"config file {tmp_path} is a folder; give the TOML file itself")


def test_base_dir_in_the_config_file_is_refused_not_ignored(tmp_path):
    path = write_site(tmp_path, edit=lambda t: 'base_dir = "/elsewhere"\n' + t)
    refused(path, "base_dir: unknown key")


# ============================================================================ the output folder
def test_output_dir_naming_a_file(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    refused(write_site(tmp_path, output_dir=a_file), f"site.output_dir: {a_file} is a file; give a folder")


def test_output_dir_under_a_file_cannot_be_created(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    refused(write_site(tmp_path, output_dir=a_file / "out" / "demo"),
            f"site.output_dir: {a_file / 'out' / 'demo'} cannot be created: {a_file} is a file; give a folder")


def test_an_overlong_path_is_a_problem_not_a_crash(tmp_path):
    refused(write_site(tmp_path, output_dir=tmp_path / ("x" * 300)), "site.output_dir: cannot use")


# ============================================================================ subscribers CSV
@pytest.fixture
def subscribers_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    config = write_site(tmp_path)

    def run(csv_bytes: bytes) -> tuple[int, str]:
        f = tmp_path / "people.csv"
        f.write_bytes(csv_bytes)
        res = CliRunner().invoke(app, ["subscribers", "import", "--config", str(config), str(f)])
        out = res.output + (res.stderr if res.stderr_bytes is not None else "")
        assert "Traceback" not in out
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        return res.exit_code, " ".join(out.split())

    return run, tmp_path / "people.csv"


def test_subscribers_csv_not_utf8_names_file_and_line(subscribers_cli):
    run, f = subscribers_cli
    code, out = run("phone,zones,language,consent_source\n"
                    "07700 900100,MB-TOWN,en,web\n"
                    "07700 900101,MB-TOWN,es,Ayuntamiento de Móstoles\n".encode("latin-1"))
    assert code == 1
    assert f"{f}: not UTF-8 text (byte 0xf3 at line 3, column" in out and "CSV UTF-8" in out


def test_subscribers_csv_with_bom_and_spaced_headers_is_imported(subscribers_cli):
    run, _ = subscribers_cli
    code, out = run("\ufeffPhone, zones ,language\r\n07700 900100,MB-TOWN,en\r\n".encode())
    assert code == 0, out
    assert "imported 1 rows" in out


def test_subscribers_csv_line_numbers_count_blank_lines_and_extra_fields_are_refused(subscribers_cli):
    run, _ = subscribers_cli
    code, out = run(b"phone,zones,language\n07700 900100,MB-TOWN,en\n\n"
                    b"07700 900101,MB-TOWN,HILLTOP,en\n07700 900102,ATLANTIS,en\n")
    assert code == 1
    assert "line 4: 4 fields, more than the 3 columns; separate zones with ';'" in out
    assert "line 5: unknown zone(s) ATLANTIS" in out


def test_subscribers_csv_that_is_a_folder(subscribers_cli, tmp_path):
    """A folder given as the CSV."""
    res = CliRunner().invoke(app, ["subscribers", "import", "--config", str(tmp_path / "site.toml"),
                                   str(tmp_path)])
    out = " ".join((res.output + (res.stderr if res.stderr_bytes is not None else "")).split())
    assert res.exit_code == 1 and "Traceback" not in out and f"cannot read {tmp_path}" in out


# ============================================================================ public notices on the web
@pytest.fixture
def client(demo_cfg):
    from fastapi.testclient import TestClient

    from warning.storage import Store
    from warning.web import create_app

    cap = demo_cfg.output_dir / "cap"
    cap.mkdir(parents=True)
    (cap / "MB-TOWN.20251114T1600.xml").write_text("<alert/>")
    store = Store(demo_cfg.db_url)
    with TestClient(create_app(demo_cfg, store=store), raise_server_exceptions=False) as c:
        yield c
    store.dispose()


@pytest.mark.parametrize("name", [
    "x" * 251 + ".xml",            # too long for a file name: the OS refuses it
    "x" * 300 + ".html",
    "MB-TOWN%00.xml",              # a NUL character
    "..xml",
    ".hidden.xml",
    "MB TOWN.xml",
    "MB-TOWN.20251114T1600.txt",
    "%E2%98%83.xml",               # a snowman
])
def test_a_name_that_cannot_be_a_notice_is_a_plain_404(client, name):
    res = client.get(f"/notices/{name}")
    assert res.status_code == 404, res.text
    assert "notice" in res.json()["detail"]


def test_a_published_notice_is_still_served(client):
    res = client.get("/notices/MB-TOWN.20251114T1600.xml")
    assert res.status_code == 200 and res.headers["content-type"].startswith("application/cap+xml")
    assert client.get("/notices/MB-TOWN.20251114T1700.xml").status_code == 404


def test_readings_without_a_time_zone_are_a_400(client):
    res = client.get("/api/gauges/MB-TOWN/readings", params={"since": "2025-11-14T06:00"})
    assert res.status_code == 400 and "give a time zone" in res.json()["detail"]
    res = client.get("/api/gauges/MB-TOWN/readings", params={"since": "2025-11-14T06:00Z"})
    assert res.status_code == 200 and isinstance(res.json(), list)
    assert client.get("/api/gauges/" + "G" * 300 + "/readings").status_code == 404

