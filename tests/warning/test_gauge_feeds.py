"""Gauge feeds (USGS IV, EA flood-monitoring, SensorThings) over a local HTTP server.

The server speaks each API's JSON; the USGS case serves the real Dead Run flash flood of
3 June 2018 (../shared/data/storms/usgs_deadrun_201806, see its PROVENANCE.md) with local
(EDT) offsets, and checks the ingested stage against the raw file's feet x 0.3048.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from tests.conftest import shared_path
from warning.errors import IngestError
from warning.ingest import get_source
from warning.ingest.fetch import Fetcher
from warning.ingest.gauge_csv import QC_DUPLICATE, QC_GOOD, QC_MISSING, latest_good
from warning.ingest.gauge_feeds import (
    QC_FLATLINE,
    QC_OUT_OF_ORDER,
    QC_STALE,
    SensorThingsSource,
    UsgsIvSource,
)

EDT = timezone(timedelta(hours=-4))
FT = 0.3048
CFS = 0.3048 ** 3
SITE = "01589330"

Route = Callable[["_Handler"], tuple[int, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _FeedServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.server.log.append((parts.path, self.query, dict(self.headers)))
        route = self.server.routes.get(parts.path)
        if route is None:
            status, headers, body = 404, {}, b"not here"
        else:
            status, headers, body = route(self)
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _FeedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server():
    srv = _FeedServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def json_route(doc: Any, headers: dict[str, str] | None = None) -> Route:
    body = json.dumps(doc).encode()
    return lambda h: (200, {"Content-Type": "application/json", **(headers or {})}, body)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ns(t: datetime) -> np.datetime64:
    return np.datetime64(t.replace(tzinfo=None), "ns")


# ------------------------------------------------------------------ USGS IV JSON
def usgs_series(code: str, unit: str, rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """One IV timeSeries; rows are (dateTime with offset, value text, qualifier)."""
    return {
        "sourceInfo": {"siteName": "DEAD RUN AT FRANKLINTOWN, MD",
                       "siteCode": [{"value": SITE, "network": "NWIS", "agencyCode": "USGS"}]},
        "variable": {"variableCode": [{"value": code, "network": "NWIS", "default": True}],
                     "unit": {"unitCode": unit}, "noDataValue": -999999.0},
        "values": [{"value": [{"value": v, "qualifiers": [q], "dateTime": t} for t, v, q in rows],
                    "qualifier": [{"qualifierCode": "A"}], "method": [{"methodID": 1}]}],
        "name": f"USGS:{SITE}:{code}:00000",
    }


def usgs_doc(*series: dict[str, Any]) -> dict[str, Any]:
    return {"name": "ns1:timeSeriesResponseType", "value": {"queryInfo": {}, "timeSeries": list(series)}}


def deadrun_rows() -> list[dict[str, str]]:
    folder = shared_path("data", "storms", "usgs_deadrun_201806")
    with open(folder / "DeadRun_Instant_01589330_2018-06.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_usgs_iv_deadrun_flash_flood(server):
    rows = deadrun_rows()
    h, q = f"USGS:{SITE}:00065:00000", f"USGS:{SITE}:00060:00000"
    # the service gives local time with its offset; June in Maryland is EDT (-04:00)
    local = [datetime.fromisoformat(r["datetimeUTC"]).astimezone(EDT).isoformat(timespec="milliseconds")
             for r in rows]
    doc = usgs_doc(
        usgs_series("00060", "ft3/s", [(t, r[q], r[q + "_qualifiers"]) for t, r in zip(local, rows)]),
        usgs_series("00065", "ft", [(t, r[h], r[h + "_qualifiers"]) for t, r in zip(local, rows)]))
    server.routes["/nwis/iv/"] = json_route(doc)

    src = get_source("usgs_iv", sites=[SITE], url=server.url + "/nwis/iv/",
                     stations={SITE: "deadrun"}, lookback_hours=24 * 31)
    ds = src.read(now=utc(2018, 7, 2, 4))

    _path, query, _ = server.log[-1]
    assert query == {"format": "json", "sites": SITE, "parameterCd": "00065,00060", "period": "PT744H"}
    # independent oracle: the raw file's feet x 0.3048 at the file's UTC times
    expect_stage = np.array([float(r[h]) for r in rows]) * FT
    expect_times = np.array([ns(datetime.fromisoformat(r["datetimeUTC"])) for r in rows])
    assert ds.sizes == {"station": 1, "time": 8928} and list(ds.station.values) == ["deadrun"]
    np.testing.assert_array_equal(ds.time.values, expect_times)
    np.testing.assert_allclose(ds.stage.sel(station="deadrun").values, expect_stage, rtol=1e-12)
    assert ds.stage.attrs["units"] == "m" and ds.discharge.attrs["units"] == "m3 s-1"
    np.testing.assert_allclose(ds.discharge.values[0], np.array([float(r[q]) for r in rows]) * CFS)
    assert set(np.unique(ds.stage_qualifiers.values)) == {"A"}
    # the flood: stage 6.17 ft and 1360 cfs at 22:05 UTC on 3 June
    peak = int(ds.stage.values[0].argmax())
    assert ds.time.values[peak] == ns(utc(2018, 6, 3, 22, 5))
    assert ds.stage.values[0, peak] == pytest.approx(6.17 * FT)
    assert ds.time.values[int(ds.discharge.values[0].argmax())] == ns(utc(2018, 6, 3, 22, 5))
    assert float(ds.discharge.max()) == pytest.approx(1360 * CFS)
    # the pipeline's helper reads it like a CSV gauge
    value, rise, when, problem = latest_good(ds, "deadrun", utc(2018, 6, 3, 22, 5), 90)
    assert when == utc(2018, 6, 3, 22, 5) and value == pytest.approx(6.17 * FT) and problem is None
    assert rise > 0


def test_usgs_iv_offsets_nodata_and_qualifiers(tmp_path):
    doc = usgs_doc(usgs_series("00065", "ft", [
        ("2024-01-10T06:00:00.000-05:00", "2.00", "P"),   # EST -> 11:00Z
        ("2024-01-10T06:15:00.000-05:00", "-999999", "P,Eqp"),
        ("2024-01-10T11:30:00.000+00:00", "3.00", "e"),
    ]))
    doc["value"]["timeSeries"][0]["values"][0]["value"][1]["qualifiers"] = ["P", "Eqp"]
    f = tmp_path / "iv.json"
    f.write_text(json.dumps(doc))
    ds = UsgsIvSource(path=f).read(now=utc(2024, 1, 10, 12))
    np.testing.assert_array_equal(ds.time.values, [ns(utc(2024, 1, 10, 11)), ns(utc(2024, 1, 10, 11, 15)),
                                                   ns(utc(2024, 1, 10, 11, 30))])
    st = ds.stage.sel(station=SITE).values
    assert st[0] == pytest.approx(2 * FT) and np.isnan(st[1]) and st[2] == pytest.approx(3 * FT)
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_MISSING, QC_GOOD]
    assert list(ds.stage_qualifiers.values[0]) == ["P", "P,Eqp", "e"]
    assert "discharge" not in ds


def test_usgs_iv_unknown_unit_and_missing_key(tmp_path):
    """A series in an unknown unit is dropped, a reading without a time skipped; each with
    a problem. A feed left with no reading at all is refused, saying why."""
    f = tmp_path / "iv.json"
    f.write_text(json.dumps(usgs_doc(usgs_series("00065", "furlong", [("2024-01-10T06:00:00Z", "1", "A")]))))
    with pytest.raises(IngestError, match=r"no usable readings: station 01589330: unknown parameter 00065 "
                                          r"unit 'furlong'; valid units: m, cm, mm, ft, in; that series"
                                          r" is dropped"):
        UsgsIvSource(path=f).read()
    broken = usgs_doc(usgs_series("00065", "ft", [("2024-01-10T06:00:00Z", "1", "A"),
                                                  ("2024-01-10T06:15:00Z", "2", "A")]))
    del broken["value"]["timeSeries"][0]["values"][0]["value"][0]["dateTime"]
    f.write_text(json.dumps(broken))
    ds = UsgsIvSource(path=f).read(now=utc(2024, 1, 10, 6, 30))
    np.testing.assert_array_equal(ds.time.values, [ns(utc(2024, 1, 10, 6, 15))])
    assert ds.stage.values[0, 0] == pytest.approx(2 * FT)
    (problem,) = ds.attrs["problems"]
    assert problem == (f"usgs_iv feed {f}: station 01589330: value.timeSeries[0].values[0].value[0]: "
                       "missing 'dateTime'; that reading is skipped")


# ---------------------------------------------------------------- EA flood monitoring
def ea_item(station: str, t: datetime, value: Any, measure: str) -> dict[str, Any]:
    base = "http://environment.data.gov.uk/flood-monitoring"
    return {"@id": f"{base}/data/readings/{station}-{measure}/{iso(t)}", "dateTime": iso(t),
            "measure": f"{base}/id/measures/{station}-{measure}", "value": value}


def ea_doc(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@context": "http://environment.data.gov.uk/flood-monitoring/meta/context.jsonld",
            "meta": {"publisher": "Environment Agency", "version": "0.9"}, "items": items}


def test_ea_levels_flows_units_and_conditional_get(server):
    t0 = utc(2025, 11, 14, 6)
    level = "level-stage-i-15_min-mASD"
    items = []
    for k in reversed(range(4)):  # _sorted: newest first
        t = t0 + timedelta(minutes=15 * k)
        items += [ea_item("1491TH", t, 0.5 + 0.1 * k, level),
                  ea_item("1491TH", t, 2000.0 + k, "flow--i-15_min-l_s"),
                  ea_item("1491TH", t, 0.2, "rainfall-tipping_bucket_raingauge-t-15_min-mm")]
    body = json.dumps(ea_doc(items)).encode()

    def readings(h: _Handler):
        if h.headers.get("If-None-Match") == '"v1"':
            return 304, {"ETag": '"v1"', "Content-Length": "0"}, b""
        return 200, {"ETag": '"v1"', "Content-Type": "application/json"}, body

    server.routes["/flood-monitoring/id/stations/1491TH/readings"] = readings
    src = get_source("ea_flood_monitoring", station="1491TH", url=server.url + "/flood-monitoring",
                     gauge_id="thames", lookback_hours=6)
    now = t0 + timedelta(hours=1, minutes=7)
    ds = src.read(now=now)
    assert not src.not_modified and ds.attrs["not_modified"] == 0
    _, query, headers = server.log[0]
    assert query == {"_sorted": "", "since": "2025-11-14T01:00:00Z"}
    assert "If-None-Match" not in headers
    np.testing.assert_array_equal(ds.time.values, [ns(t0 + timedelta(minutes=15 * k)) for k in range(4)])
    np.testing.assert_allclose(ds.stage.sel(station="thames").values, [0.5, 0.6, 0.7, 0.8])
    np.testing.assert_allclose(ds.discharge.sel(station="thames").values, [2.0, 2.001, 2.002, 2.003])  # l/s
    assert (ds.qc.values == QC_GOOD).all()  # newest-first is the promised order, not out of order
    assert ds.stage.attrs["datum"] == "mASD" and ds.attrs["data_gaps"] == []

    again = src.read(now=now)
    _, _, headers = server.log[1]
    assert headers.get("If-None-Match") == '"v1"'
    assert src.not_modified and again.attrs["not_modified"] == 1
    np.testing.assert_array_equal(again.stage.values, ds.stage.values)


def test_ea_unknown_unit_and_missing_value(tmp_path):
    """A level measure in a unit the EA does not use for levels is dropped (once, with a
    problem) and the station's flow is still read; a reading without a value is missing."""
    f = tmp_path / "readings.json"
    t0 = utc(2025, 1, 1)
    f.write_text(json.dumps(ea_doc([ea_item("E1", t0, 1.0, "level-stage-i-15_min-ft"),
                                    ea_item("E1", t0 + timedelta(minutes=15), 1.1, "level-stage-i-15_min-ft"),
                                    ea_item("E1", t0, 2500.0, "flow--i-15_min-l_s")])))
    ds = get_source("ea_flood_monitoring", station="E1", path=f).read(now=t0)
    assert ds.discharge.values[0, 0] == pytest.approx(2.5) and np.isnan(ds.stage.values).all()
    (problem,) = ds.attrs["problems"]
    assert problem.startswith(f"ea_flood_monitoring feed {f}: station E1: measure ")
    assert problem.endswith("E1-level-stage-i-15_min-ft: unknown level unit 'ft'; valid units: m, mASD, "
                            "mAOD, mBDAT; its readings are dropped")
    items = [ea_item("E1", utc(2025, 1, 1, 0, 15), 1.0, "level-stage-i-15_min-mASD"),  # newest first
             ea_item("E1", utc(2025, 1, 1), 1.0, "level-stage-i-15_min-mASD")]
    del items[0]["value"]
    f.write_text(json.dumps(ea_doc(items)))
    ds = get_source("ea_flood_monitoring", station="E1", path=f).read(now=utc(2025, 1, 1, 0, 15))
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_MISSING]
    assert ds.attrs["problems"] == [(f"ea_flood_monitoring feed {f}: station E1: items[0]: missing "
                                    "'value' at 2025-01-01T00:15Z; that reading is flagged missing")]


def test_stale_feed_reports_a_data_gap(server):
    t0 = utc(2025, 11, 14, 6)
    items = [ea_item("E2", t0 + timedelta(minutes=15 * k), 1.0 + 0.01 * k, "level-stage-i-15_min-mAOD")
             for k in reversed(range(5))]
    server.routes["/fm/id/stations/E2/readings"] = json_route(ea_doc(items))
    src = get_source("ea_flood_monitoring", station="E2", url=server.url + "/fm",
                     stale_after_minutes=90)
    fresh = src.read(now=t0 + timedelta(hours=1, minutes=30))
    assert fresh.station_qc.values[0] == 0 and fresh.attrs["data_gaps"] == []
    # the feed stops: three hours after its last reading it is stale
    now = t0 + timedelta(hours=4)
    ds = src.read(now=now)
    assert ds.station_qc.sel(station="E2") == QC_STALE
    assert ds.last_good_time.values[0] == ns(t0 + timedelta(hours=1))
    (gap,) = src.data_gaps
    assert gap == ("gauge E2 is stale: last good reading 2025-11-14T07:00Z is 180 min old at "
                   "2025-11-14 10:00Z (tolerance 90 min)")
    assert ds.attrs["data_gaps"] == [gap]
    _, _, _, problem = latest_good(ds, "E2", now, 90)
    assert problem is not None and "stale" in problem


# ------------------------------------------------------------------- SensorThings
def sta_page(values: list[tuple[str, Any]], next_link: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"value": [{"@iot.id": k, "phenomenonTime": t, "result": v}
                                     for k, (t, v) in enumerate(values)]}
    if next_link:
        doc["@iot.nextLink"] = next_link
    return doc


def test_sensorthings_pages_and_units(server):
    t0 = utc(2025, 3, 1)
    obs = [(iso(t0 + timedelta(minutes=10 * k)), 120.0 + k) for k in range(6)]  # cm
    # the second page's first reading is an interval: it counts at its end
    obs[3] = (f"{iso(t0 + timedelta(minutes=25))}/{iso(t0 + timedelta(minutes=30))}", 123.0)
    nxt = server.url + "/sta/v1.1/Datastreams(7)/Observations?$orderby=phenomenonTime&$top=3&$skip=3"

    def observations(h: _Handler):
        page = sta_page(obs[3:]) if h.query.get("$skip") == "3" else sta_page(obs[:3], nxt)
        return 200, {"Content-Type": "application/json"}, json.dumps(page).encode()

    server.routes["/sta/v1.1/Datastreams(7)/Observations"] = observations
    src = get_source("sensorthings", datastream=7, url=server.url + "/sta/v1.1", units="cm",
                     gauge_id="g7", top=3)
    ds = src.read(now=t0 + timedelta(hours=1))
    assert [q for _, q, _ in server.log] == [
        {"$orderby": "phenomenonTime", "$top": "3"},
        {"$orderby": "phenomenonTime", "$top": "3", "$skip": "3"}]
    np.testing.assert_allclose(ds.stage.sel(station="g7").values, [1.20, 1.21, 1.22, 1.23, 1.24, 1.25])
    assert ds.time.values[3] == ns(t0 + timedelta(minutes=30))
    assert (ds.qc.values == QC_GOOD).all()

    ft = SensorThingsSource(7, url=server.url + "/sta/v1.1", units="ft", top=3).read(now=t0)
    np.testing.assert_allclose(ft.stage.values[0], (np.arange(6) + 120.0) * FT)
    with pytest.raises(IngestError, match=r"unknown stage unit 'furlong'; valid units: m, cm, mm, ft, in"):
        SensorThingsSource(7, url=server.url, units="furlong")
    with pytest.raises(IngestError, match=r"unknown discharge unit 'm'; valid units: m3/s, l/s, cfs"):
        SensorThingsSource(7, url=server.url, units="m", quantity="discharge")


def write_sta(tmp_path, values: list[tuple[datetime, float | None]]):
    f = tmp_path / "obs.json"
    f.write_text(json.dumps(sta_page([(iso(t), v) for t, v in values])))
    return f


def test_flatline_flags_the_repeats_beyond_the_limit(tmp_path):
    t0 = utc(2025, 3, 1)
    vals = [1.0, 1.1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.3, 1.3, 1.4]
    f = write_sta(tmp_path, [(t0 + timedelta(minutes=15 * k), v) for k, v in enumerate(vals)])
    by_count = SensorThingsSource("a", path=f, flatline_readings=4, flatline_minutes=None).read(now=t0)
    # five readings of 1.2 (more than 4): the first stays good, the four repeats are flagged
    assert list(by_count.qc.values[0]) == [0, 0, 0] + [QC_FLATLINE] * 4 + [0, 0, 0]
    np.testing.assert_allclose(by_count.stage.values[0], vals)  # flagged values are kept
    by_time = SensorThingsSource("a", path=f, flatline_minutes=45).read(now=t0)
    assert list(by_time.qc.values[0]) == [0, 0, 0] + [QC_FLATLINE] * 4 + [0, 0, 0]  # 60 min > 45
    relaxed = SensorThingsSource("a", path=f, flatline_readings=5, flatline_minutes=60).read(now=t0)
    assert (relaxed.qc.values == QC_GOOD).all()
    # a missing reading inside the run does not break it
    vals[4] = None
    f = write_sta(tmp_path, [(t0 + timedelta(minutes=15 * k), v) for k, v in enumerate(vals)])
    gapped = SensorThingsSource("a", path=f, flatline_readings=3, flatline_minutes=None).read(now=t0)
    assert list(gapped.qc.values[0]) == [0, 0, 0, QC_FLATLINE, QC_MISSING, QC_FLATLINE, QC_FLATLINE, 0, 0, 0]


def test_out_of_order_times_are_sorted_and_flagged(tmp_path):
    t = [utc(2025, 3, 1, 0, m) for m in (0, 10, 20, 30, 40)]
    f = write_sta(tmp_path, [(t[0], 1.0), (t[1], 1.1), (t[3], 1.3), (t[2], 1.2), (t[4], 1.4),
                             (t[1], 1.15)])
    ds = SensorThingsSource("a", path=f).read(now=t[4])
    np.testing.assert_array_equal(ds.time.values, [ns(x) for x in t])
    np.testing.assert_allclose(ds.stage.values[0], [1.0, 1.1, 1.2, 1.3, 1.4])
    # 00:20 came after 00:30: flagged; the second, different 00:10 is a duplicate
    assert list(ds.qc.values[0]) == [0, QC_DUPLICATE, QC_OUT_OF_ORDER, 0, 0]


def test_malformed_and_truncated_json(tmp_path):
    f = tmp_path / "obs.json"
    good = json.dumps(sta_page([(iso(utc(2025, 3, 1)), 1.0), (iso(utc(2025, 3, 1, 0, 10)), 1.1)]))
    f.write_text(good[:40])
    with pytest.raises(IngestError, match=r"sensorthings feed .*obs.json: truncated JSON"):
        SensorThingsSource(1, path=f).read()
    f.write_text("{'value': []}")
    with pytest.raises(IngestError, match=r"sensorthings feed .*obs.json: malformed JSON"):
        SensorThingsSource(1, path=f).read()
    f.write_text(json.dumps({"values": []}))
    with pytest.raises(IngestError, match=r"obs.json: missing 'value'"):
        SensorThingsSource(1, path=f).read()


# ---------------------------------------------------------------------- fetcher
def test_timeout_is_retried_with_backoff_then_fails(server):
    def slow(h: _Handler):
        server.release.wait(5)
        return 200, {}, b"{}"

    server.routes["/slow"] = slow
    waits: list[float] = []
    fetcher = Fetcher(server.url + "/slow", timeout_s=0.2, tries=3, backoff_s=0.5,
                      backoff_factor=2.0, sleep=waits.append)
    with pytest.raises(IngestError) as err:
        fetcher.fetch()
    msg = str(err.value)
    assert msg.startswith(server.url + "/slow: timed out") and msg.endswith("after 3 tries")
    assert waits == [0.5, 1.0]
    assert [p for p, _, _ in server.log] == ["/slow"] * 3


def test_truncated_body_and_http_errors(server):
    body = json.dumps(usgs_doc(usgs_series("00065", "ft", [("2024-01-10T06:00:00Z", "1", "A")]))).encode()
    server.routes["/short"] = lambda h: (200, {"Content-Length": str(len(body) + 500)}, body)
    server.routes["/cut"] = lambda h: (200, {}, body[: len(body) // 2])
    server.routes["/empty"] = lambda h: (200, {}, b"")
    server.routes["/busy"] = lambda h: (503, {}, b"try later")
    waits: list[float] = []
    with pytest.raises(IngestError, match=r"/short: truncated .* after 2 tries"):
        Fetcher(server.url + "/short", tries=2, backoff_s=0.1, sleep=waits.append).fetch()
    assert waits == [0.1]
    src = UsgsIvSource(sites=[SITE], url=server.url + "/cut", sleep=waits.append)
    with pytest.raises(IngestError, match=r"usgs_iv feed http://127.0.0.1:\d+/cut\?.*: truncated JSON"):
        src.read()
    with pytest.raises(IngestError, match=r"/empty: empty body"):
        Fetcher(server.url + "/empty").fetch()
    with pytest.raises(IngestError, match=r"/missing: HTTP 404 Not Found$"):
        Fetcher(server.url + "/missing", sleep=waits.append).fetch()
    waits.clear()
    with pytest.raises(IngestError, match=r"/busy: HTTP 503 Service Unavailable after 3 tries"):
        Fetcher(server.url + "/busy", backoff_s=1, sleep=waits.append).fetch()
    assert waits == [1.0, 2.0]


def test_folder_gives_the_newest_file_and_notices_no_change(tmp_path):
    (tmp_path / "a.json").write_text("old")
    (tmp_path / "b.json").write_text("new")
    (tmp_path / "c.txt").write_text("ignored")
    os.utime(tmp_path / "a.json", (1_700_000_000, 1_700_000_000))
    os.utime(tmp_path / "b.json", (1_700_000_100, 1_700_000_100))
    os.utime(tmp_path / "c.txt", (1_700_000_200, 1_700_000_200))
    fetcher = Fetcher(tmp_path, pattern="*.json")
    first = fetcher.fetch()
    assert first.content == b"new" and first.origin.endswith("b.json") and not first.not_modified
    assert fetcher.fetch().not_modified
    with pytest.raises(IngestError, match=r"no file matching '\*.csv'"):
        Fetcher(tmp_path, pattern="*.csv").fetch()


def test_sources_are_chosen_by_kind_in_the_site_config(tmp_path):
    """[sources.gauges] kind = "usgs_iv" with its settings builds that source for the
    pipeline; an unknown kind is a config error naming the valid ones."""
    from tests.conftest import demo_config_text
    from warning.config import load_config
    from warning.errors import ConfigError
    from warning.pipeline import Inputs

    doc = usgs_doc(usgs_series("00065", "ft", [("2024-01-10T06:00:00.000-05:00", "2.00", "P")]))
    f = tmp_path / "iv.json"
    f.write_text(json.dumps(doc))
    text = demo_config_text()
    start = text.index("[sources.gauges]")
    end = text.index("\n[", start + 1)
    site = tmp_path / "site.toml"
    site.write_text(text[:start] + f'[sources.gauges]\nkind = "usgs_iv"\npath = "{f}"\n'
                    f'settings = {{ stations = {{ "{SITE}" = "MB-G1" }} }}\n' + text[end:])
    inputs = Inputs(load_config(site))
    assert isinstance(inputs.gauges, UsgsIvSource)
    ds = inputs.gauges.read()
    assert float(ds.stage.sel(station="MB-G1").values[0]) == pytest.approx(2 * FT)
    site.write_text(text[:start] + '[sources.gauges]\nkind = "usgs_json"\nsettings = { url = "http://x" }\n'
                    + text[end:])
    with pytest.raises(ConfigError, match="unknown source kind 'usgs_json'; valid: .*usgs_iv"):
        load_config(site)
