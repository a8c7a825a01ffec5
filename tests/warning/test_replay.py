"""Replays of the demo storm: deterministic, never peeking into the future, and drills
that reach only the drill roster."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import feedparser
import numpy as np
import pytest
import xarray as xr

from tests.alerts.twilio_fake import FakeTwilio
from tests.conftest import REPO, prepared_demo_site
from warning.events import load_event
from warning.replay import ForecastGate, PeekError, ReplayClock, replay

CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
DEMO = REPO / "sample_data" / "demo"
STEP = timedelta(minutes=30)


def _event(folder: Path, start: str, end: str, **sources: str) -> Path:
    """A short event over the demo storm, with onsets from the demo's own event file."""
    demo = load_event(DEMO / "events" / "storm-2025-11-14.toml")
    lines = [f'name = "demo storm {start[8:13]}"', f"start = {start}", f"end = {end}", "[observed]"]
    for zone, onsets in demo.observed.items():
        lines.append(f"{zone} = [{', '.join(t.strftime('%Y-%m-%dT%H:%M:%SZ') for t in onsets)}]")
    for name, path in sources.items():
        lines.insert(3, f'sources.{name}.path = "{path}"')
    p = folder / f"demo-{start[8:13]}{'-'.join(sources)}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo site in a temp folder, terrain prepared once for every replay here."""
    return prepared_demo_site(tmp_path_factory.mktemp("replay"))


@pytest.fixture(scope="module")
def storm(site):
    """The same afternoon replayed twice, plus once over an archive whose future was altered."""
    root, cfg = site
    ev = load_event(_event(root, "2025-11-14T12:00:00Z", "2025-11-14T18:00:00Z"), cfg)
    first = replay(cfg, ev, step=STEP, out_dir=root / "r1")
    second = replay(cfg, ev, step=STEP, out_dir=root / "r2")
    return ev, first, second


def _cap_texts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "cap").glob("*.xml"))}


def test_replay_is_deterministic(storm):
    ev, first, second = storm
    assert first.cycles >= 5
    a = [(c.at, c.forecast_file, c.metrics, c.decisions) for c in first.trace.cycles]
    b = [(c.at, c.forecast_file, c.metrics, c.decisions) for c in second.trace.cycles]
    assert a == b
    # the notices are byte-identical too (their times are the simulated clock's)
    assert _cap_texts(first.out_dir) and _cap_texts(first.out_dir) == _cap_texts(second.out_dir)


def test_replay_is_isolated_and_marked_test(storm, site):
    _root, cfg = site
    _ev, first, _ = storm
    assert first.config.db_url != cfg.db_url and str(first.out_dir) in first.config.db_url
    statuses = {ET.fromstring(x).findtext(f"{CAP}status") for x in _cap_texts(first.out_dir).values()}
    assert statuses == {"Test"}  # not a drill: nobody is texted and the notices say Test
    assert first.messages == {}
    assert not (cfg.output_dir / "cap").exists()


def test_no_input_is_used_before_its_time(storm, site):
    """Alter everything after T in a copy of the archive (later forecasts get ten times
    the rain, later gauge readings jump by 5 m): every cycle up to T must be unchanged,
    and the gates saw no data newer than the simulated clock."""
    root, cfg = site
    ev, first, _ = storm
    cut = datetime(2025, 11, 14, 15, 0, tzinfo=timezone.utc)
    fc = root / "future-altered" / "forecasts"
    fc.mkdir(parents=True)
    for f in sorted((DEMO / "forecasts").glob("rain_*.nc")):
        issued = datetime.strptime(f.stem[5:], "%Y%m%dT%H%MZ").replace(tzinfo=timezone.utc)
        if issued <= cut:
            shutil.copy(f, fc / f.name)
        else:
            with xr.open_dataset(f) as ds:
                altered = ds.load()
            altered["precipitation_rate"] = altered["precipitation_rate"] * 10.0
            altered.to_netcdf(fc / f.name)
    gauges = root / "future-altered" / "readings.csv"
    lines = (DEMO / "gauges" / "readings.csv").read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        station, t, stage = line.split(",")
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
        out.append(f"{station},{t},{float(stage) + 5.0:.3f}" if when > cut else line)
    gauges.write_text("\n".join(out) + "\n")
    ev2 = load_event(_event(root, "2025-11-14T12:00:00Z", "2025-11-14T18:00:00Z",
                            forecast=str(fc), gauges=str(gauges)), cfg)
    altered = replay(cfg, ev2, step=STEP, out_dir=root / "r3")
    before = [(c.at, c.metrics, c.decisions) for c in first.trace.cycles if c.at <= cut]
    before_altered = [(c.at, c.metrics, c.decisions) for c in altered.trace.cycles if c.at <= cut]
    assert len(before) >= 3 and before == before_altered
    # and the alteration does reach the cycles after T (so the comparison can fail)
    after = {c.at: c.metrics for c in first.trace.cycles if c.at > cut}
    after_altered = {c.at: c.metrics for c in altered.trace.cycles if c.at > cut}
    assert after and after != after_altered
    for now, issued in altered.forecast_gate.loaded:
        assert issued <= now
    for now, newest in altered.gauge_gate.reads:
        assert newest is None or newest <= now


def test_forecast_gate_refuses_a_forecast_from_the_future(site):
    from warning.pipeline import Inputs

    _root, cfg = site
    clock = ReplayClock(datetime(2025, 11, 14, 7, 0, tzinfo=timezone.utc))
    gate = ForecastGate(Inputs(cfg).forecast, clock)
    issues = gate.issues()
    assert issues and max(i.issued for i in issues) == datetime(2025, 11, 14, 6, 0, tzinfo=timezone.utc)
    later = [i for i in gate._source.issues() if i.issued > clock()]
    with pytest.raises(PeekError, match="before it was in hand"):
        gate.load(later[0], None)


def test_drill_texts_only_the_drill_roster(site, monkeypatch):
    """Public subscribers in every zone, one number on the drill roster: the drill sends
    every SMS to that number alone, marked as an exercise, and its notices stay out of the
    public feed."""
    from warning.storage import Store
    from warning.subscribers import PhoneVault, SubscriberRegistry

    root, cfg = site
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    store = Store(cfg.db_url)
    public = SubscriberRegistry(store, PhoneVault.from_env(), "GB")
    public.import_csv(DEMO / "subscribers.csv")
    for z in cfg.zones:  # a public subscriber in every zone, too
        public.add("+447700900999", [z.code], "en", "test")
    drill_roster = SubscriberRegistry(store, PhoneVault.from_env(), "GB", roster="drill")
    drill_roster.add("+447700900555", ["*"], "es", "drill team")
    drill_roster.add("+447700900999", ["*"], "en", "drill team, also a resident")
    store.dispose()
    public_numbers = {"+447700900" + n for n in ("100", "107", "114", "121", "128", "135", "142")}
    ev = load_event(_event(root, "2025-11-14T13:00:00Z", "2025-11-14T16:00:00Z"), cfg)
    with FakeTwilio() as fake:
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", fake.account_sid)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
        monkeypatch.setenv("FLOODWARN_TWILIO_BASE_URL", fake.base_url)
        res = replay(cfg, ev, drill=True, step=STEP, out_dir=root / "drill")
        sent = list(fake.messages)
    assert res.roster == 2 and res.scope == f"drill:{cfg.drill.name}"
    assert sent, "the drill raised levels, so the roster was texted"
    assert {m["To"] for m in sent} == {"+447700900555", "+447700900999"}
    assert not {m["To"] for m in sent} & public_numbers
    # one message per roster number per notice that texts: the resident-and-team number gets
    # exactly as many as the team-only one (nothing as a public subscriber)
    per = {n: sum(m["To"] == n for m in sent) for n in ("+447700900555", "+447700900999")}
    assert per["+447700900555"] == per["+447700900999"] == res.messages["sent"] / 2
    assert all(m["Body"].startswith(cfg.drill.exercise_marker) for m in sent)
    caps = _cap_texts(res.out_dir)
    assert caps
    for x in caps.values():
        root_el = ET.fromstring(x)
        assert root_el.findtext(f"{CAP}status") == "Exercise"
        assert root_el.findtext(f"{CAP}note") == cfg.drill.name
    public_feed = feedparser.parse((res.out_dir / "feed.atom").read_bytes())
    drill_feed = feedparser.parse((res.out_dir / "feed-exercise.atom").read_bytes())
    assert public_feed.entries == [] and len(drill_feed.entries) >= 1
    # the live database's outbox was never touched
    import sqlite3
    con = sqlite3.connect(cfg.db_url.removeprefix("sqlite:///"))
    assert con.execute("select count(*) from outbox").fetchone() == (0,)
    con.close()


def test_replay_cli_reports_the_hit_for_the_flooded_town(site):
    """`floodwarn replay` on the storm afternoon: the town, which flooded at its observed
    onset, was warned before it (a hit with the lead time onset - first warning), and
    the report says so in HTML and JSON."""
    from typer.testing import CliRunner

    from warning.cli import app

    root, cfg = site
    ev_path = _event(root, "2025-11-14T10:00:00Z", "2025-11-14T17:00:00Z")
    res = CliRunner().invoke(app, ["replay", str(ev_path), "--config", str(cfg.base_dir / "site.toml"),
                                   "--as-fast-as-possible", "--step-minutes", "30", "--out", str(root / "cli")])
    assert res.exit_code == 0, res.output
    assert "simulated hours per" in " ".join(res.output.split())
    data = json.loads(next((root / "cli").glob("*.json")).read_text())
    onset = load_event(ev_path).observed["MB-TOWN"][0]
    # the first warning for the town, read from the replay's own notices
    first = min(datetime.fromisoformat(ET.fromstring(x).findtext(f"{CAP}sent"))
                for name, x in _cap_texts(root / "cli").items() if name.startswith("MB-TOWN."))
    assert first < onset
    text = json.dumps(data)
    assert "MB-TOWN" in text
    html = next((root / "cli").glob("*.html")).read_text()
    assert "MB-TOWN" in html and "warned in time by a forecast" in html
    assert np.isclose((onset - first).total_seconds() / 60.0, _town_lead(data))
    # the first warning came from the depth forecast (the town's gauge was still low): a
    # forecast hit, not a detection; beside it the baselines on the same afternoon
    row = next(iter(data["verification"]["zones"]["MB-TOWN"].values()))
    assert [(o["outcome"], o["raised_by"]) for o in row["outcomes"]] == [("hit", "forecast")]
    # ... and it names the criterion that raised it
    assert any("forecast peak depth" in r for r in row["outcomes"][0]["reasons"])
    assert row["baselines"]["never"]["misses"] == 1 and row["baselines"]["persistence"]["forecast_hits"] == 0
    assert "1 in time by forecast" in " ".join(res.output.split())


def _town_lead(data) -> float:
    """The lead time (minutes) of the town's first-level hit in the report's JSON."""
    ver = data["verification"]
    rows = ver["zones"]["MB-TOWN"] if isinstance(ver.get("zones"), dict) else ver["MB-TOWN"]
    first = rows[0] if isinstance(rows, list) else next(iter(rows.values()))
    assert first["hits"] == 1
    return float(first["lead_times_min"][0])


def test_tuner_decisions_at_the_configured_thresholds_match_the_replay(storm, site):
    """The tuner re-runs only the decision state machine over the recorded metrics: at the
    configured thresholds it must reproduce the levels the replay itself decided."""
    from warning.tuning import decisions_for

    _root, cfg = site
    _ev, first, _ = storm
    for z in cfg.zones:
        recorded, level = [], 0
        for c in first.trace.cycles:
            d = next(d for d in c.decisions if d["zone"] == z.code)
            if d["level"] != level:
                recorded.append((c.at, d["level"]))
                level = d["level"]
        assert decisions_for(first.trace, cfg, z.code) == recorded, z.code
