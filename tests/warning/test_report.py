"""The replay report on the demo storm, checked against oracles that do not go through it.

One module fixture runs the demo storm (every 3 h over the storm day, as a drill, into a
temporary folder: a replay-like database) and builds the report, with an event whose
MB-TOWN flood onset is the first reading of the MB-TOWN gauge at its minor flood stage
(read here from the CSV and the TOML file directly) and HILLTOP observed dry. The checks
go back to the sources: the alerts and outbox tables (plain sqlite3), the readings CSV,
the subscribers CSV, and ``warning.verification`` on the alerts table's level changes.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import sqlite3
import struct
import tomllib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from tests.conftest import DEMO_CONFIG, REPO
from warning.config import load_config
from warning.errors import FloodwarnError
from warning.events import Event
from warning.report import build_report
from warning.storage import Store
from warning.verification import Contingency, periods_from_levels, scores, verify

pytestmark = pytest.mark.slow

DEMO = REPO / "sample_data" / "demo"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STORM_DAY, STEP = timedelta(hours=24), timedelta(hours=3)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


# --------------------------------------------------------------------------- oracles
def _toml() -> dict:
    return tomllib.loads(DEMO_CONFIG.read_text())


def _minor_stage(gauge: str) -> float:
    return next(g for g in _toml()["gauges"] if g["id"] == gauge)["flood_stages"]["minor"]


def _toml_stages(gauge: str) -> dict:
    return next(g for g in _toml()["gauges"] if g["id"] == gauge)["flood_stages"]


def _readings(station: str) -> list[tuple[datetime, float]]:
    with open(DEMO / "gauges" / "readings.csv", newline="") as fh:
        rows = [(datetime.fromisoformat(r["time"]), r["stage_m"])
                for r in csv.DictReader(fh) if r["station"] == station]
    return sorted((t, float(v)) for t, v in rows if v.strip())


def _first_at_or_above(station: str, stage: float) -> datetime:
    return next(t for t, v in _readings(station) if v >= stage)


def _rank(level_name: str) -> int:
    return [lv["name"] for lv in _toml()["levels"]].index(level_name) + 1


def _db(cfg) -> sqlite3.Connection:
    return sqlite3.connect(cfg.db_url.removeprefix("sqlite:///"))


def _utc(text: str) -> datetime:
    """A time as SQLite keeps it (UTC, without a zone)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _alert_changes(cfg, scope: str, zone: str) -> list[tuple[datetime, int]]:
    """(time, level) of every notice of ``zone``, from the alerts table."""
    with _db(cfg) as con:
        rows = con.execute("SELECT sent, level FROM alerts WHERE zone = ? AND scope = ? "
                           "ORDER BY sent, id", (zone, scope)).fetchall()
    return [(_utc(t), int(lv)) for t, lv in rows]


def _phone_patterns() -> list[str]:
    """Every subscriber number of the demo, as digits: national, without the trunk 0, and
    with the country code (+44)."""
    out = []
    with open(DEMO / "subscribers.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            digits = re.sub(r"\D", "", row["phone"])
            out += [digits, digits.lstrip("0"), "44" + digits.lstrip("0")]
    return out


class _Page(HTMLParser):
    """Images, links, table rows and a check that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.urls: list[tuple[str, str, str]] = []
        self.rows: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self.th = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.th += tag == "th"
        for key in ("src", "href"):
            if key in a:
                self.urls.append((tag, key, a[key] or ""))
        if tag == "img":
            self.imgs.append(a)
        if tag == "tr":
            self.rows.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


# --------------------------------------------------------------------------- the replay
@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    from warning.demo import run_demo

    out = tmp_path_factory.mktemp("replay")
    cfg = load_config(DEMO_CONFIG)
    # the storm day every 3 h (9 cycles, 1-2 s each): the town is warned, the hilltop stays dry
    storm_day = {"end": cfg.demo.start + STORM_DAY, "cycle_hours": STEP.total_seconds() / 3600}
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"output_dir": out / "run"}),
                                 "demo": cfg.demo.model_copy(update=storm_day)})
    run_demo(cfg)
    onset = _first_at_or_above("MB-TOWN", _minor_stage("MB-TOWN"))
    event = Event(name="Millbrook storm of 14 November 2025", start=cfg.demo.start,
                  end=cfg.demo.end, tolerance_minutes=60,
                  observed={"MB-TOWN": [onset], "HILLTOP": []})
    scope = f"drill:{cfg.drill.name}"
    store = Store(cfg.db_url)
    files = build_report(cfg, store, event, scope=scope, out_dir=out / "report",
                         config_file=DEMO_CONFIG)
    yield {"cfg": cfg, "event": event, "scope": scope, "store": store, "files": files,
           "onset": onset, "html": files.html.read_text(encoding="utf-8"),
           "data": json.loads(files.json.read_text())}
    store.dispose()


def test_town_warning_is_a_hit_with_the_lead_time_from_the_alerts_table(replay):
    cfg, onset = replay["cfg"], replay["onset"]
    warning = _rank("warning")
    changes = _alert_changes(cfg, replay["scope"], "MB-TOWN")
    first_raise = min(t for t, lv in changes if lv >= warning)
    lead_min = (onset - first_raise).total_seconds() / 60.0
    assert lead_min > 0
    got = replay["data"]["verification"]["zones"]["MB-TOWN"]["warning"]
    assert (got["hits"], got["misses"], got["false_alarms"]) == (1, 0, 0)
    assert got["lead_times_min"] == [lead_min]
    page = _Page()
    page.feed(replay["html"])
    row = next(r for r in page.rows if "data-hits" in r
               and (r.get("data-zone"), r.get("data-level")) == ("MB-TOWN", "warning"))
    assert (row["data-hits"], row["data-misses"], row["data-false-alarms"]) == ("1", "0", "0")
    m = round(lead_min)
    assert f"{m // 60} h {m % 60:02d} min" in replay["html"]


def test_dry_hilltop_has_no_false_alarm(replay):
    hill = replay["data"]["verification"]["zones"]["HILLTOP"]
    assert hill, "HILLTOP is observed, so it is verified"
    for level, got in hill.items():
        assert (got["hits"], got["misses"], got["false_alarms"]) == (0, 0, 0), level
    assert _alert_changes(replay["cfg"], replay["scope"], "HILLTOP") == []


def test_verification_equals_warning_verification_on_the_alerts_table(replay):
    cfg, event, data = replay["cfg"], replay["event"], replay["data"]["verification"]
    assert set(data["zones"]) == {"MB-TOWN", "HILLTOP"}
    totals: dict[str, Contingency] = {}
    for zone, per_level in data["zones"].items():
        changes = _alert_changes(cfg, replay["scope"], zone)
        for name, got in per_level.items():
            c = verify(periods_from_levels(changes, _rank(name)), event.observed[zone],
                       tolerance=event.tolerance, floods=event.floods(zone), window=(event.start, event.end),
                       lead_window=event.lead_window)
            totals[name] = totals.get(name, Contingency()) + c
            _same(got, c)
    assert set(data["totals"]) == set(totals)
    for name, c in totals.items():
        _same(data["totals"][name], c)


def _same(got: dict, c: Contingency) -> None:
    # the alerts table does not say what raised a warning: compare what does not depend on it
    assert (got["hits"], got["late"], got["misses"], got["false_alarms"]) == (c.hits, c.late, c.misses,
                                                                            c.false_alarms)
    assert sorted(got["lead_times_min"] + got["detection_leads_min"]) == sorted(
        t.total_seconds() / 60.0 for t in c.lead_times)
    assert list(got["hours"].values()) == pytest.approx([c.hours.a, c.hours.b, c.hours.c, c.hours.d])
    for key, value in scores(c).items():
        if key in ("median_lead_min", "median_detection_lead_min", "forecast_pod"):
            continue
        assert got[key] == (None if math.isnan(value) else pytest.approx(value)), key


def test_html_is_one_self_contained_accessible_file(replay):
    html = replay["html"]
    page = _Page()
    page.feed(html)
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    assert {"script", "link", "iframe", "object"}.isdisjoint(page.tags)
    assert "url(" not in html and "@import" not in html
    data = replay["data"]
    maps = [c for c in data["maps"]["cycles"] if c["shown"]]
    assert 1 <= len(maps) <= 4
    assert len(page.imgs) == 1 + len(data["gauges"]) + len(maps)
    for img in page.imgs:
        assert img.get("alt", "").strip(), "every image needs alt text"
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert 200 <= width <= 1600 and 150 <= height <= 1600, (width, height)
        assert (img["width"], img["height"]) == (str(width), str(height))
    notices = replay["cfg"].notices.web_base.rstrip("/") + "/notices/"
    for tag, key, url in page.urls:
        if key == "src":
            assert url.startswith("data:"), (tag, url)
        else:
            assert url.startswith(("#", notices)), (tag, url)
    assert any(url.startswith(notices) for _, _, url in page.urls), "notices are linked"
    assert page.th >= 20, "tables have header cells"
    assert 'name="viewport"' in html


def test_json_holds_the_figures_data(replay):
    cfg, data = replay["cfg"], replay["data"]
    assert json.loads(json.dumps(data)) == data
    with _db(cfg) as con:
        runs = con.execute("SELECT id FROM runs WHERE scope = ? ORDER BY at",
                           (replay["scope"],)).fetchall()
        alerts = con.execute("SELECT identifier FROM alerts WHERE scope = ? ORDER BY sent, id",
                             (replay["scope"],)).fetchall()
        states = dict(con.execute("SELECT state, count(*) FROM outbox WHERE scope = ? "
                                  "GROUP BY state", (replay["scope"],)).fetchall())
    assert data["model_runs"] == len(runs) == STORM_DAY // STEP + 1
    assert [c["run_id"] for c in data["cycles"]] == [r for (r,) in runs]
    assert all(c["forecast_file"].startswith("rain_") for c in data["cycles"])
    # the observed series is the CSV's, over the event
    town = next(g for g in data["gauges"] if g["id"] == "MB-TOWN")
    ev = replay["event"]
    expect = [(t, v) for t, v in _readings("MB-TOWN") if ev.start <= t <= ev.end]
    got = list(zip(map(datetime.fromisoformat, town["observed"]["times"]),
                   town["observed"]["stage_m"]))
    assert got == [(t, pytest.approx(v, abs=5e-4)) for t, v in expect]
    assert len(town["forecasts"]) == len(runs)
    for f in town["forecasts"]:
        assert len(f["times"]) == len(f["stage_m"]) > 0
        assert datetime.fromisoformat(f["times"][0]).tzinfo is not None
    assert town["quantity"]["key"] == "stage_m"
    assert town["thresholds"] == _toml_stages("MB-TOWN")
    # timeline: the alerts table's level changes are among the decisions' changes
    for zone, z in data["timeline"].items():
        levels = [(datetime.fromisoformat(c["time"]), c["level"]) for c in z["changes"]]
        notices = _alert_changes(cfg, replay["scope"], zone)
        assert [lv for _, lv in levels] == [lv for i, (_, lv) in enumerate(notices)
                                            if lv != (notices[i - 1][1] if i else 0)]
    # messages: every notice, and the outbox counted by state
    assert [a["identifier"] for a in data["messages"]["alerts"]] == [i for (i,) in alerts]
    assert data["messages"]["recipients_by_state"] == states
    assert sum(states.values()) > 0
    with open(DEMO / "subscribers.csv", newline="") as fh:
        languages = {r["language"] for r in csv.DictReader(fh)}
    sms = [t for a in data["messages"]["alerts"] for t in a["sms"]]
    assert sms and {t["language"] for t in sms} <= languages
    assert all(cfg.drill.exercise_marker in t["text"] for t in sms)
    for c in data["maps"]["cycles"]:
        assert c["found"] and c["max_depth_m"] >= 0 and c["flooded_cells"] >= 0


def test_no_phone_number_in_either_file(replay):
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", replay["html"])
    text = replay["files"].json.read_text()
    for blob in (html, text):
        digits_only = re.sub(r"[\s().-]", "", blob)
        for pattern in _phone_patterns():
            assert pattern not in digits_only


def test_report_needs_a_known_scope(replay, tmp_path):
    args = (replay["cfg"], replay["store"], replay["event"])
    with pytest.raises(ValueError, match="drill:<name>"):
        build_report(*args, scope="exercise", out_dir=tmp_path)
    with pytest.raises(FloodwarnError, match="scopes in that database: drill:Millbrook"):
        build_report(*args, scope="live", out_dir=tmp_path)
