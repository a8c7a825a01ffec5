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
