"""`floodwarn tune` end to end on the demo site: four windows (two through the storm,
two dry before it) replayed in parallel, candidates scored by event and in time beside
the baselines, the always-on threshold refused, each choice checked leaving one event
out, and a recommendation shown as a diff and written only when asked."""

from __future__ import annotations

import json
import re
import tomllib

from typer.testing import CliRunner

from tests.conftest import REPO, demo_config_text
from warning.cli import app
from warning.events import load_event

DEMO_EVENT = REPO / "sample_data" / "demo" / "events" / "storm-2025-11-14.toml"


def test_tune_recommends_and_writes_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    # the town's warning set too low: 0.40 m of forecast depth is reached in the dry
    # evening before the storm too, so it warns falsely there
    low = '"forecast_peak_depth_m >= 0.40", "observed_stage_m >= 2.5"'
    text = text.replace('"forecast_peak_depth_m >= 0.50", "observed_stage_m >= 2.5"', low)
    assert low in text
    cfg_path = tmp_path / "site.toml"
    cfg_path.write_text(text)
    events = tmp_path / "events"
    events.mkdir()
    onsets = load_event(DEMO_EVENT).observed
    onset = onsets["MB-TOWN"][0].strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, start, end, wet in (("a", "2025-11-14T12:00:00Z", "2025-11-14T17:00:00Z", True),
                                  ("b", "2025-11-14T13:00:00Z", "2025-11-14T18:00:00Z", True),
                                  ("d", "2025-11-13T19:00:00Z", "2025-11-13T23:00:00Z", False),
                                  ("e", "2025-11-13T23:00:00Z", "2025-11-14T03:00:00Z", False)):
        (events / f"{name}.toml").write_text(
            f'name = "window {name}"\nstart = {start}\nend = {end}\n[observed]\n'
            f'MB-TOWN = [{onset if wet else ""}]\nHILLTOP = []\n')
    before = cfg_path.read_text()
    args = ["tune", "--config", str(cfg_path), "--events", str(events), "--zone", "MB-TOWN", "--level",
            "warning", "--candidates", "12", "--workers", "1", "--step-minutes", "60",
            "--goal", "maximise pss"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert cfg_path.read_text() == before  # nothing written without --write
    saved = json.loads((tmp_path / "out" / "tuning" / "scores.json").read_text())
    scores = saved["scores"]
    assert len(scores) >= 12 and all(r["zone"] == "MB-TOWN" for r in scores)
    # the lowest value seen is met in every cycle: it warns always, and is refused
    lowest = min(scores, key=lambda r: r["value"])
    assert lowest["warns"] == "always" and lowest["criterion_share"] == 1.0
    (verdict,) = saved["recommendations"]
    assert lowest["value"] in verdict["refused"]["always"]
    assert verdict["validation"].startswith("leave-one-event-out over 4 events")
    # out of sample every event is scored once: 2 floods; the baselines on the same events
    oos = verdict["out_of_sample"]
    assert oos["hits"] + oos["late"] + oos["misses"] == 2
    assert verdict["baselines"]["never"]["misses"] == 2 and verdict["baselines"]["never"]["pss_time"] == 0.0
    assert verdict["baselines"]["always"]["pofd_time"] == 1.0
    assert verdict["baselines"]["persistence"]["forecast_hits"] == 0
    flat = " ".join(res.output.split())
    assert "baselines: never warn, always warn, persistence" in flat
    # the observed-stage criterion of MB-TOWN's warning is named as detection only
    assert "observed_stage_m >= 2.5' is an observation: it can only detect a flood" in flat
    import csv

    with open(tmp_path / "out" / "tuning" / "scores.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["value"]) for r in table] == [r["value"] for r in scores]
    assert (tmp_path / "out" / "tuning" / "pod_far.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each score's counts are consistent: two floods, each in time, late or missed
    assert all(r["hits"] + r["late"] + r["misses"] == 2 for r in scores)
    # leaving each event out, the choice on the others is above 0.40 and keeps the dry
    # evenings quiet: out of sample it beats the configured 0.40, so it is recommended
    assert verdict["recommended"] is not None and verdict["recommended"] > 0.40
    assert oos["false_alarms"] < next(r for r in scores if r["value"] == 0.40)["false_alarms"]
    assert "--- " in res.output and "+++ " in res.output and "nothing written" in flat
    res = CliRunner().invoke(app, args + ["--write"])
    assert res.exit_code == 0, res.output
    old, new = tomllib.loads(before), tomllib.loads(cfg_path.read_text())
    changed = [z["code"] for z, y in zip(old["zones"], new["zones"]) if z != y]
    assert changed == ["MB-TOWN"]
    assert old["zones"][0]["thresholds"]["warning"] != new["zones"][0]["thresholds"]["warning"]
    assert new["zones"][0]["thresholds"]["warning"]["any"][0] == f"forecast_peak_depth_m >= {verdict['recommended']:g}"
