"""Config loading: the demo config is valid; broken ones report every problem with its key path."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tests.conftest import DEMO_CONFIG, demo_config_text
from warning.cli import app
from warning.config import load_config
from warning.errors import ConfigError


def test_demo_config_is_valid():
    cfg = load_config(DEMO_CONFIG)
    assert [lv.name for lv in cfg.levels] == ["advisory", "warning", "severe"]
    assert {z.code for z in cfg.zones} == {"MB-TOWN", "MB-WESTFORD", "SB-LANE", "HILLTOP"}
    town = next(z for z in cfg.zones if z.code == "MB-TOWN")
    specs = cfg.level_specs(town)
    assert [s.rank for s in specs] == [1, 2, 3]
    assert specs[1].criteria[0].metric == "forecast_peak_depth_m"
    assert cfg.path(cfg.site.dem).is_file()


def _broken(tmp_path, edit):
    text = edit(demo_config_text())
    p = tmp_path / "broken.toml"
    p.write_text(text)
    return p


def test_several_problems_reported_at_once_with_key_paths(tmp_path):
    def edit(t):
        t = t.replace('severity = "Extreme"', 'severity = "Catastrophic"')
        t = t.replace("spinup_hours = 36", "spinup_hours = -5")
        t = t.replace('"forecast_peak_depth_m >= 0.50"', '"peak_depth >= 0.50"', 1)
        t = t.replace('gauge = "MB-WEST"', 'gauge = "NO-SUCH-GAUGE"')
        t = t.replace("[channels]", "[channels]\nsms_providr = 'x'")
        t = t.replace('demo/dem.tif', 'demo/no-such-dem.tif', 1)
        return t

    with pytest.raises(ConfigError) as exc:
        load_config(_broken(tmp_path, edit))
    problems = exc.value.problems
    joined = "\n".join(problems)
    assert re.search(r"levels\[2\]: .*severity must be one of", joined)
    assert re.search(r"model\.spinup_hours: .*greater than or equal to 0", joined)
    assert re.search(r"zones\[0\]\.thresholds\.warning: .*unknown metric 'peak_depth'", joined)
    assert re.search(r"channels\.sms_providr: unknown key", joined)
    assert re.search(r"site\.dem: file not found: .*no-such-dem\.tif", joined)
    assert len(problems) >= 5


def test_cross_reference_problems_are_all_reported(tmp_path):
    def edit(t):
        t = t.replace('gauge = "MB-WEST"', 'gauge = "NO-SUCH-GAUGE"')
        t = t.replace('code = "HILLTOP"', 'code = "ATLANTIS"')
        t = t.replace('zones = "', 'zones = "missing-', 1)
        return t

    with pytest.raises(ConfigError) as exc:
        load_config(_broken(tmp_path, edit))
    joined = "\n".join(exc.value.problems)
    assert "zones[1].gauge: unknown gauge 'NO-SUCH-GAUGE'" in joined
    assert "site.zones: file not found" in joined


def test_unknown_zone_code_is_named(tmp_path):
    p = _broken(tmp_path, lambda t: t.replace('code = "HILLTOP"', 'code = "ATLANTIS"'))
    with pytest.raises(ConfigError, match=r"zones\[3\]\.code: 'ATLANTIS' is not in"):
        load_config(p)


def test_check_config_cli_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["check-config", str(DEMO_CONFIG)])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output
    bad = _broken(tmp_path, lambda t: t.replace("hysteresis = 0.25", "hysteresis = 3")
                  .replace('colour = "#f5c400"', 'colour = "yellow"'))
    res = runner.invoke(app, ["check-config", str(bad)])
    assert res.exit_code == 1
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "policy.hysteresis" in out and "levels[0].colour" in out
    assert "Traceback" not in out


def test_secret_from_file(tmp_path, monkeypatch):
    from warning.secrets import env_secret

    f = tmp_path / "key"
    f.write_text("s3cret\n")
    monkeypatch.delenv("FLOODWARN_SECRET_KEY", raising=False)
    monkeypatch.setenv("FLOODWARN_SECRET_KEY_FILE", str(f))
    assert env_secret("FLOODWARN_SECRET_KEY") == "s3cret"
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "other")
    with pytest.raises(ConfigError, match="not both"):
        env_secret("FLOODWARN_SECRET_KEY")


def test_a_texted_level_without_an_instruction_is_refused_at_check_config(tmp_path):
    """Every warning SMS says what to do; a level texted without an instruction would fail
    every raise in the cycle, so check-config refuses it with the key path and the fix."""
    def edit(t):
        return re.sub(r'(name = "advisory"(?:.|\n)*?)\ninstruction = "[^"]*"', r"\1", t, count=1)

    path = _broken(tmp_path, edit)
    res = CliRunner().invoke(app, ["check-config", str(path)])
    assert res.exit_code == 1
    words = " ".join(res.output.split())  # the console wraps long lines
    assert "levels[0]: instruction is empty" in words and "or sms = false" in words
    fixed = _broken(tmp_path, lambda t: edit(t).replace('name = "advisory"', 'name = "advisory"\nsms = false', 1))
    assert CliRunner().invoke(app, ["check-config", str(fixed)]).exit_code == 0


def _with_delays(text: str, forecast: str, gauges: str) -> str:
    text = text.replace('units = "mm/h"\n', f'units = "mm/h"\n{forecast}\n', 1)
    return text.replace("stale_after_minutes = 90\n", f"stale_after_minutes = 90\n{gauges}\n", 1)


def test_delivery_delays_are_read_and_not_passed_to_the_sources(tmp_path):
    """The delays and aggregation period are the replay's, not the sources': a source
    constructor would refuse them as unknown keyword arguments."""
    import numpy as np

    from warning.pipeline import Inputs

    p = tmp_path / "delays.toml"
    p.write_text(_with_delays(demo_config_text(), "delay_minutes = 60",
                              'delay_minutes = 15\nperiod_minutes = 1440\nperiod_label = "start"'))
    cfg = load_config(p)
    fc, gs = cfg.sources.forecast, cfg.sources.gauges
    assert (fc.delay_minutes, gs.delay_minutes, gs.period_minutes, gs.period_label) == (60, 15, 1440, "start")
    keys = {"delay_minutes", "period_minutes", "period_label"}
    assert not keys & set(fc.source_settings(cfg.path)) and not keys & set(gs.source_settings(cfg.path))
    Inputs(cfg)  # both sources build
    # a reading stamped 05:00 with its day's mean (start label) is in hand at the next 00:00 + 15 min
    got = gs.usable_from(np.array(["2025-11-14T05:00"], dtype="datetime64[ns]"))
    assert got[0] == np.datetime64("2025-11-15T00:15", "ns")
    # without them: no delay, instantaneous readings labelled at their time
    plain = load_config(DEMO_CONFIG).sources
    assert (plain.forecast.delay_minutes, plain.gauges.delay_minutes, plain.gauges.period_minutes,
            plain.gauges.period_label) == (0, 0, None, "end")


def test_bad_delivery_delays_are_all_reported(tmp_path):
    p = tmp_path / "bad-delays.toml"
    p.write_text(_with_delays(demo_config_text(), "delay_minutes = -10",
                              'delay_minutes = -1\nperiod_minutes = 0\nperiod_label = "middle"'))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    joined = "\n".join(exc.value.problems)
    assert re.search(r"sources\.forecast\.delay_minutes: .*greater than or equal to 0", joined)
    assert re.search(r"sources\.gauges\.delay_minutes: .*greater than or equal to 0", joined)
    assert re.search(r"sources\.gauges\.period_minutes: .*greater than 0", joined)
    assert re.search(r"sources\.gauges\.period_label: .*'start' or 'end'", joined)
