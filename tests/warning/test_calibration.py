"""Calibration of the lumped model: reading the record, the scores against a peer library
and by hand, a planted-parameter recovery, and the real Hupsel Brook record."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from models.lumped import LumpedParams, simulate
from tests.conftest import shared_path
from warning import calibration as C
from warning.errors import ConfigError, IngestError

HUPSEL = ("data", "storms", "hupsel_hourly", "PEQ_Hupsel.dat")

# measured on 2026-11-27 with the test's settings below (seed 1, popsize 8, maxiter 60):
# validation NSE 0.811 (the full calibration, popsize 15 / maxiter 300, gives 0.812)
HUPSEL_VALIDATION_NSE_FLOOR = 0.811 - 0.05


def write_peq(path, rows, header='"date" "P" "ETpot" "Q"'):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def synthetic_record(hours=24 * 120, seed=0) -> C.Record:
    rng = np.random.default_rng(seed)
    t = np.datetime64("2020-01-01T00", "h") + np.arange(hours).astype("timedelta64[h]")
    rain = np.where(rng.random(hours) < 0.08, rng.gamma(0.7, 3.0, hours), 0.0)
    et = np.clip(np.sin((np.arange(hours) % 24 - 6) / 12 * np.pi), 0, None) * 0.2
    p = LumpedParams(s_mm=60.0, sa_mm=10.0, lp=0.8, tau_perc_h=300.0, quick_fraction=0.5, n_quick=2,
                     k_quick_h=3.0, k_slow_h=100.0)
    q, _ = simulate(p, rain, et, 1.0, C.initial_state(p, 0.02))
    q = q * (1.0 + 0.05 * rng.standard_normal(hours))
    return C.Record(t, rain, et, np.clip(q, 0.0, None), "synthetic")


# --------------------------------------------------------------------------- reading
def test_read_peq_small_file(tmp_path):
    f = write_peq(tmp_path / "peq.dat", ["2011010100 0 0 0.042", "2011010101 1.5 0.01 NA",
                                         "2011010102 0.2 0 0.05"])
    rec = C.read_peq(f)
    assert len(rec) == 3
    assert str(rec.time[0]) == "2011-01-01T00" and rec.end.hour == 2 and rec.end.tzinfo is not None
    np.testing.assert_array_equal(rec.rain_mm_h, [0.0, 1.5, 0.2])
    assert np.isnan(rec.q_mm_h[1]) and rec.q_mm_h[2] == 0.05
    assert rec.index(rec.end) == 2


@pytest.mark.parametrize("rows, header, match", [
    (["2011010100 0 0 0.1", "2011010101 0 0"], None, r":3: expected 4 fields"),
    (["2011010100 0 0 0.1", "2011010101 0 x 0.1"], None, r":3: ETpot value 'x' is not a number"),
    (["2011010100 0 0 0.1", "2011013201 0 0 0.1"], None, r":3: date '2011013201' is not a valid"),
    (["2011010100 0 0 0.1", "2011010102 0 0 0.1"], None, r":3: time 2011010102 does not follow"),
    (["2011010100 0 0 0.1", "2011010100 0 0 0.1"], None, r":3: time 2011010100 does not follow"),
    (["2011010100 NA 0 0.1", "2011010101 0 0 0.1"], None, r":2: P is missing"),
    (["2011010100 0 0 0.1", "2011010101 -1 0 0.1"], None, r":3: P = -1 mm/h"),
    (["2011010100 0 0 0.1"], '"date" "P" "Q"', r":1: header"),
    (["2011010100 0 0 0.1"], None, "fewer than two data rows"),
])
def test_read_peq_errors_name_the_line(tmp_path, rows, header, match):
    f = write_peq(tmp_path / "bad.dat", rows, **({"header": header} if header else {}))
    with pytest.raises(IngestError, match=match) as exc:
        C.read_peq(f)
    assert str(f) in str(exc.value)


def test_read_peq_missing_and_empty_file(tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        C.read_peq(tmp_path / "nope.dat")
    (tmp_path / "empty.dat").write_text("")
    with pytest.raises(IngestError, match=":1: empty file"):
        C.read_peq(tmp_path / "empty.dat")
    (tmp_path / "binary.dat").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(IngestError, match="cannot read"):
        C.read_peq(tmp_path / "binary.dat")


def test_periods_parse():
    p = C.Period.parse("2011-01-01:2012-12-31")
    assert (p.start.isoformat(), p.end.isoformat()) == ("2011-01-01T00:00:00+00:00", "2012-12-31T23:00:00+00:00")
    q = C.Period.parse("2013-01-01T06..2013-01-02T18")
    assert q.start.hour == 6 and q.end.hour == 18
    for bad in ("2011-01-01", "2011/01/01:2012/01/01", "2012-01-01:2011-01-01"):
        with pytest.raises(ConfigError):
            C.Period.parse(bad)


# --------------------------------------------------------------------------- scores
def test_scores_by_hand():
    obs = np.array([1.0, 2.0, 3.0, 4.0])
    assert C.nse(np.array([1.0, 2.0, 3.0, 5.0]), obs) == pytest.approx(1.0 - 1.0 / 5.0)  # SSE 1, var sum 5
    assert C.nse(np.full(4, 2.5), obs) == pytest.approx(0.0)  # the observed mean scores 0
    assert C.nse(obs, obs) == 1.0
    # sim = 2 obs: r = 1, alpha = 2, beta = 2 -> KGE = 1 - sqrt(2)
    k, r, a, b = C.kge_components(2.0 * obs, obs)
    assert (k, r, a, b) == pytest.approx((1.0 - math.sqrt(2.0), 1.0, 2.0, 2.0))
    # a constant offset: r = 1, alpha = 1, beta = (2.5 + 1) / 2.5
    assert C.kge(obs + 1.0, obs) == pytest.approx(1.0 - 0.4)
    # NaN pairs are left out
    assert C.nse([1.0, 2.0, np.nan, 5.0, 4.0], [1.0, 2.0, 7.0, np.nan, 4.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paired"):
        C.nse([1.0, 2.0], [1.0, 2.0, 3.0])


def test_scores_match_hydroeval():
    he = pytest.importorskip("hydroeval", reason="peer library hydroeval (pip install hydroeval)")
    rng = np.random.default_rng(7)
    obs = rng.gamma(0.8, 0.05, 5000)
    sim = np.clip(obs * rng.lognormal(0.0, 0.3, 5000) + rng.normal(0, 0.01, 5000), 0, None)
    assert C.nse(sim, obs) == pytest.approx(float(he.nse(sim, obs)), rel=1e-12)
    k_he = he.kge(sim, obs).ravel()
    np.testing.assert_allclose(C.kge_components(sim, obs), k_he, rtol=1e-12)
    # with gaps: hydroeval's evaluator drops pairs with a NaN, as we do
    obs_gap = obs.copy()
    obs_gap[::37] = np.nan
    assert C.nse(sim, obs_gap) == pytest.approx(float(he.evaluator(he.nse, sim, obs_gap)[0]), rel=1e-12)
    assert C.kge(sim, obs_gap) == pytest.approx(float(he.evaluator(he.kge, sim, obs_gap)[0, 0]), rel=1e-12)


# --------------------------------------------------------------------------- calibration
def test_optimiser_is_deterministic_for_any_number_of_workers():
    rec = synthetic_record()
    kw = {"validation": None, "warmup_days": 10, "seed": 5, "popsize": 4, "maxiter": 4, "polish": False}
    one = C.calibrate(rec, "2020-01-01:2020-04-29", workers=1, **kw)
    two = C.calibrate(rec, "2020-01-01:2020-04-29", workers=2, **kw)
    assert one.params == two.params and one.calibration == two.calibration
    again = C.calibrate(rec, "2020-01-01:2020-04-29", workers=1, **kw)
    assert again.params == one.params


def test_calibration_rejects_bad_periods():
    rec = synthetic_record(24 * 40)
    with pytest.raises(ConfigError, match="outside the record"):
        C.calibrate(rec, "2019-12-01:2020-01-20", None, warmup_days=1)
    with pytest.raises(ConfigError, match="must start after"):
        C.calibrate(rec, "2020-01-05:2020-01-30", "2020-01-10:2020-02-01", warmup_days=1)
    with pytest.raises(ConfigError, match="warm-up"):
        C.calibrate(rec, "2020-01-01:2020-01-20", None, warmup_days=30)
    with pytest.raises(ConfigError, match="bounds.cn"):
        C.calibrate(rec, "2020-01-01:2020-01-20", None, warmup_days=1, bounds={"cn": C.Bound(1, 2)})


@pytest.mark.slow
@pytest.mark.requires_shared
def test_planted_parameters_are_recovered_from_hupsel_forcing():
    """Discharge made by the model itself from the Hupsel rain and evaporation of 2011: the
    calibration (reduced search, popsize 8 and 60 generations) finds the planted parameters."""
    rec = C.read_peq(shared_path(*HUPSEL))
    true = LumpedParams(s_mm=140.0, sa_mm=120.0, lp=0.75, tau_perc_h=3000.0, quick_fraction=0.3,
                        n_quick=3, k_quick_h=3.0, k_slow_h=60.0)
    per = C.Period.parse("2011-01-01:2011-12-31")
    i0, i1 = rec.index(per.start), rec.index(per.end)
    q, _ = simulate(true, rec.rain_mm_h[i0:i1 + 1], rec.etpot_mm_h[i0:i1 + 1], 1.0,
                    C.initial_state(true, float(rec.q_mm_h[i0])))
    qobs = rec.q_mm_h.copy()
    qobs[i0:i1 + 1] = q
    res = C.calibrate(dataclasses.replace(rec, q_mm_h=qobs), per, None, seed=1, workers=2, popsize=8,
                      maxiter=60)
    assert res.calibration.nse > 0.9999
    assert res.params.n_quick == true.n_quick
    for name in ("s_mm", "sa_mm", "lp", "tau_perc_h", "quick_fraction", "k_quick_h", "k_slow_h"):
        assert getattr(res.params, name) == pytest.approx(getattr(true, name), rel=0.03), name


@pytest.mark.slow
@pytest.mark.requires_shared
def test_hupsel_validation_nse_on_2013(tmp_path):
    """Calibrate on 2011-2012 (scored from April 2011), validate on 2013 from the warm state.
    Reduced search (popsize 8, 60 generations) to stay well under a minute on two cores."""
    rec = C.read_peq(shared_path(*HUPSEL))
    assert len(rec) == 23616 and int(np.isnan(rec.q_mm_h).sum()) == 105
    res = C.calibrate(rec, "2011-01-01:2012-12-31", "2013-01-01:2013-09-10", seed=1, workers=2,
                      popsize=8, maxiter=60)
    assert res.objective_start.isoformat() == "2011-04-01T00:00:00+00:00"
    assert res.validation is not None and res.validation.n_hours == 6072
    assert res.calibration.nse > 0.88
    assert res.validation.nse > HUPSEL_VALIDATION_NSE_FLOOR
    assert res.validation.kge > 0.75
    # the validation scores are those of one continuous run from 2011
    _cal, val, q, _, _ = C.evaluate(res.params, rec, res.calibration_period, res.validation_period)
    assert val.nse == res.validation.nse and q.size == len(rec)
    # parameters written and read back
    for name in ("p.toml", "p.json"):
        out = C.write_params(tmp_path / name, res)
        assert C.read_params(out) == res.params
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["scores"]["nse_validation"] == res.validation.nse and "UTC" in meta["meta"]["time_zone"]


def test_write_params_needs_toml_or_json(tmp_path):
    rec = synthetic_record(24 * 30)
    res = C.calibrate(rec, "2020-01-01:2020-01-30", None, warmup_days=5, popsize=3, maxiter=2, polish=False)
    with pytest.raises(ConfigError, match=".toml or .json"):
        C.write_params(tmp_path / "p.yaml", res)
    with pytest.raises(IngestError, match="not a lumped-model parameter file"):
        (tmp_path / "x.toml").write_text("[params]\ns_mm = 1\n")
        C.read_params(tmp_path / "x.toml")


# --------------------------------------------------------------------------- CLI
def test_cli_calibrate(tmp_path):
    from warning.cli_calibrate import app

    rec = synthetic_record(24 * 60)
    rows = [f"{str(t).replace('-', '').replace('T', '')} {p:.4f} {e:.4f} {q:.5f}"
            for t, p, e, q in zip(rec.time, rec.rain_mm_h, rec.etpot_mm_h, rec.q_mm_h)]
    f = write_peq(tmp_path / "peq.dat", rows)
    out = tmp_path / "params.json"
    res = CliRunner().invoke(app, ["calibrate", "--data", str(f), "--calibration-period", "2020-01-01:2020-02-09",
                                   "--validation-period", "2020-02-10:2020-02-29", "--warmup-days", "5",
                                   "--popsize", "3", "--maxiter", "3", "--seed", "2", "--write", str(out)],
                             env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    for text in ("s_mm", "k_slow_h", "NSE", "KGE", "calibration", "validation", "UTC"):
        assert text in res.output
    saved = json.loads(out.read_text())
    assert set(saved["params"]) == {f.name for f in dataclasses.fields(LumpedParams)}
    assert "nse_validation" in saved["scores"]

    bad = CliRunner().invoke(app, ["calibrate", "--data", str(tmp_path / "missing.dat")])
    assert bad.exit_code == 1 and "file not found" in " ".join(bad.output.split())
    bad = CliRunner().invoke(app, ["calibrate", "--data", str(f), "--calibration-period", "2020-01-01"])
    assert bad.exit_code == 1 and "START:END" in " ".join(bad.output.split())
