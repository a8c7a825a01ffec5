"""`floodwarn tune` end to end on the demo site: two storm windows replayed in parallel,
candidates scored, a recommendation shown as a diff and written only when asked."""

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
    cfg_path = tmp_path / "site.toml"
    cfg_path.write_text(text)
    events = tmp_path / "events"
    events.mkdir()
    onsets = load_event(DEMO_EVENT).observed
    for name, start, end in (("a", "2025-11-14T11:00:00Z", "2025-11-14T15:00:00Z"),
                             ("b", "2025-11-14T13:00:00Z", "2025-11-14T17:00:00Z")):
        (events / f"{name}.toml").write_text(
            f'name = "window {name}"\nstart = {start}\nend = {end}\n[observed]\n'
            f'MB-TOWN = [{onsets["MB-TOWN"][0].strftime("%Y-%m-%dT%H:%M:%SZ")}]\nHILLTOP = []\n')
    before = cfg_path.read_text()
    args = ["tune", "--config", str(cfg_path), "--events", str(events), "--zone", "MB-TOWN", "--level",
            "warning", "--candidates", "12", "--workers", "2", "--step-minutes", "60",
            "--goal", "maximise csi; lead >= 60"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert cfg_path.read_text() == before  # nothing written without --write
    scores = json.loads((tmp_path / "out" / "tuning" / "scores.json").read_text())["scores"]
    assert len(scores) >= 12 and all(r["zone"] == "MB-TOWN" for r in scores)
    import csv

    with open(tmp_path / "out" / "tuning" / "scores.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["value"]) for r in table] == [r["value"] for r in scores]
    assert (tmp_path / "out" / "tuning" / "pod_far.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each score's counts are consistent: two events, one onset each, so hits + misses = 2
    assert all(r["hits"] + r["misses"] == 2 for r in scores)
    flat = " ".join(res.output.split())
    if "nothing to change" in flat:
        return
    assert "--- " in res.output and "+++ " in res.output and "nothing written" in flat
    res = CliRunner().invoke(app, args + ["--write"])
    assert res.exit_code == 0, res.output
    old, new = tomllib.loads(before), tomllib.loads(cfg_path.read_text())
    changed = [z["code"] for z, y in zip(old["zones"], new["zones"]) if z != y]
    assert changed == ["MB-TOWN"]
    assert old["zones"][0]["thresholds"]["warning"] != new["zones"][0]["thresholds"]["warning"]
