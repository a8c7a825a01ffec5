"""The whole chain on the demo storm: forecast in, flood depth and zone risk out, warnings sent.

One demo run (module fixture) feeds several checks: the flooded town reaches its top level
before its peak depth and is cleared after it; the hilltop never warns; every CAP file
validates against the OASIS schema and each Update/Cancel references the whole chain;
SMS are marked as an exercise and never hold a clear phone number; every decision is in
the audit log with its inputs.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from alerts.cap import parse_cap
from tests.conftest import DEMO_CONFIG, shared_path
from warning.config import load_config

UTC = timezone.utc


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from warning.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = load_config(DEMO_CONFIG)
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"output_dir": out})})
    result = run_demo(cfg)
    return cfg, result


def test_town_warned_before_its_peak_and_cleared_after(demo):
    cfg, result = demo
    town = result.timelines["MB-TOWN"]
    top = cfg.levels[-1].name
    assert town.top_level == top, town.changes
    assert town.peak_depth_m > 0.5
    reached_top = min(t for t, _, lv in town.changes if lv == top)
    assert reached_top < town.peak_time
    assert town.first_warning < town.peak_time
    last_time, last_action, _ = town.changes[-1]
    assert last_action == "all-clear" and last_time > town.peak_time


def test_dry_zone_never_warns(demo):
    _, result = demo
    hill = result.timelines["HILLTOP"]
    assert hill.changes == []
    assert hill.peak_depth_m == 0.0


def test_every_cap_notice_validates_and_references_its_chain(demo):
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(shared_path("standards", "cap", "CAP-v1.2.xsd")))
    cfg, result = demo
    files = sorted(result.outputs["cap"].glob("*.xml"))
    assert len(files) >= 4
    chains: dict[str, list[tuple[str, str, datetime]]] = {}
    for f in sorted(files, key=lambda p: parse_cap(p.read_bytes()).sent):
        schema.validate(str(f))
        alert = parse_cap(f.read_bytes())
        assert alert.status == "Exercise" and cfg.drill.name in (alert.note or "")
        zone = alert.identifier.split(".")[0]
        earlier = chains.setdefault(zone, [])
        if alert.msg_type == "Alert":
            assert earlier == [] and not alert.references
        else:
            assert [r[1] for r in alert.references] == [e[1] for e in earlier]
        if alert.msg_type == "Cancel":
            assert "AllClear" in alert.infos[0].response_types
            chains[zone] = []
        else:
            earlier.append((alert.sender, alert.identifier, alert.sent))
        area = alert.infos[0].areas[0]
        ring = area.polygons[0]
        assert ring[0] == ring[-1] and len(ring) >= 4


def test_sms_marked_as_exercise_and_numbers_masked(demo):
    cfg, result = demo
    lines = [json.loads(x) for x in result.outputs["sms"].read_text().splitlines()]
    assert lines, "the drill sent no SMS"
    raw = result.outputs["sms"].read_text()
    assert "+447700900" not in raw and "07700 900" not in raw
    for msg in lines:
        assert msg["body"].startswith(cfg.drill.exercise_marker)
        assert msg["segments"] <= cfg.channels.max_segments
    # the Spanish-speaking subscribers in town got Spanish text
    assert any("inundaci" in m["body"].lower() for m in lines)


def test_audit_log_holds_every_decision_with_its_inputs(demo):
    cfg, result = demo
    con = sqlite3.connect(result.outputs["database"])
    rows = con.execute("select zone, detail from audit where event = 'decision'").fetchall()
    assert len(rows) == len(result.cycles) * len(cfg.zones)
    detail = json.loads(rows[0][1])
    assert {"metrics", "thresholds", "forecast", "reasons"} <= set(detail)
    assert detail["forecast"]["forecast_file"].startswith("rain_")
    stored = con.execute("select count(*) from subscribers where phone_enc like '%7700900%'").fetchone()
    assert stored == (0,)  # encrypted at rest


def test_outputs_exist(demo):
    _, result = demo
    import rasterio

    depth_files = sorted(result.outputs["depth"].glob("peak_depth_*.tif"))
    assert len(depth_files) == len(result.cycles)
    with rasterio.open(depth_files[0]) as src:
        assert src.crs.to_epsg() == 32631
    png = result.outputs["map"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_used_is_never_from_the_future(demo):
    _, result = demo
    for res in result.cycles:
        assert res.forecast_issued <= res.at
        assert res.at - res.forecast_issued < timedelta(hours=3)
