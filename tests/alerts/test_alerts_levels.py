"""The level state machine: each rule on its own."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

import pytest
from alerts_testdata import ADVISORY, LEVELS, SEVERE, T0, WARNING

from alerts.levels import (
    Criterion,
    Decision,
    LevelSpec,
    ZonePolicy,
    ZoneState,
    decide,
    explain,
    format_metric,
    met_level,
)

HOUR = timedelta(hours=1)
DRY = {"peak_depth_m": 0.0, "flooded_share": 0.0, "observed_stage_m": 1.0, "exposed_people": 0}


def run(
    series: list[dict[str, float]], policy: ZonePolicy, state: ZoneState | None = None,
    step: timedelta = HOUR,
) -> list[Decision]:
    """Feed a series of cycles through decide(), one ``step`` apart from T0."""
    state = state or ZoneState()
    out = []
    for i, metrics in enumerate(series):
        decision = decide(state, metrics, T0 + i * step, LEVELS, policy, zone="Z1")
        out.append(decision)
        state = decision.state
    return out


def wet(depth: float, **extra: float) -> dict[str, float]:
    return {**DRY, "peak_depth_m": depth, **extra}


# --------------------------------------------------------------------------- met_level


def test_met_level_picks_highest_and_explains_with_units():
    rank, reasons = met_level(LEVELS, wet(0.82))
    assert rank == 2
    assert "forecast peak depth 0.82 m ≥ 0.50 m (Flood Warning threshold)" in reasons


def test_met_level_no_level():
    assert met_level(LEVELS, DRY) == (0, ())


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("peak_depth_m", 0.5, "0.50 m"),
        ("flooded_share", 0.35, "35%"),
        ("exceedance_probability", 0.5, "50%"),
        ("exposed_people", 1200, "1,200 people"),
        ("lead_time_h", 6, "6"),
    ],
)
def test_units_from_metric_suffix(metric, value, text):
    assert format_metric(metric, value) == text


def test_share_reason_in_percent():
    _, reasons = met_level(LEVELS, {**DRY, "flooded_share": 0.07})
    assert "forecast flooded share of the zone 7% ≥ 5% (Flood Alert threshold)" in reasons


def test_combine_any_needs_one_criterion():
    assert met_level([WARNING], {"observed_stage_m": 2.5})[0] == 2  # depth absent


def test_combine_all_needs_every_criterion():
    assert met_level(LEVELS, wet(1.2, exposed_people=50))[0] == 2
    rank, reasons = met_level(LEVELS, wet(1.2, exposed_people=150))
    assert rank == 3
    assert any("people in the forecast flood area 150 people ≥ 100 people" in r for r in reasons)
    assert any("forecast peak depth 1.20 m ≥ 1.00 m" in r for r in reasons)


@pytest.mark.parametrize("missing", [{"peak_depth_m": math.nan}, {}])
def test_missing_metric_is_false_and_named(missing):
    metrics = {k: v for k, v in DRY.items() if k != "peak_depth_m"} | missing
    rank, reasons = met_level(LEVELS, metrics)
    assert rank == 0
    assert any(r.startswith("forecast peak depth: no data") for r in reasons)


def test_missing_metric_does_not_block_other_criteria():
    rank, reasons = met_level(LEVELS, {"peak_depth_m": math.nan, "observed_stage_m": 2.3})
    assert rank == 2
    assert "observed river level 2.30 m ≥ 2.00 m (Flood Warning threshold)" in reasons
    assert any("no data" in r for r in reasons)


def test_scale_eases_thresholds_both_ways():
    above = Criterion("peak_depth_m", ">=", 0.5)
    below = Criterion("hours_to_peak", "<=", 6.0)
    negative = Criterion("soil_suction", ">=", -10.0)
    assert above.threshold(0.9) == pytest.approx(0.45)
    assert below.threshold(0.9) == pytest.approx(6.6)
    assert negative.threshold(0.9) == pytest.approx(-11.0)
    assert above.holds(0.46, 0.9) and not above.holds(0.46)


def test_explain_in_spanish():
    reasons = explain(LEVELS, wet(0.82), 2, language="es")
    assert reasons == (
        "profundidad máxima prevista 0,82 m ≥ 0,50 m (umbral de Aviso de inundación)",
    )


# --------------------------------------------------------------------------- raising


def test_first_cycle_without_flood_is_none():
    d = decide(ZoneState(), DRY, T0, LEVELS, ZonePolicy())
    assert (d.action, d.level, d.previous) == ("none", 0, 0)
    assert d.reasons == ("no warning threshold is reached",)


def test_persistence_one_raises_at_once_to_highest_met():
    d = decide(ZoneState(), wet(1.5, exposed_people=500), T0, LEVELS, ZonePolicy(), zone="Z1")
    assert (d.action, d.previous, d.level) == ("raise", 0, 3)
    assert d.zone == "Z1" and d.at == T0
    assert d.state == ZoneState(level=3, since=T0, active=True, issued=T0)
    assert "forecast peak depth 1.50 m ≥ 1.00 m (Severe Flood Warning threshold)" in d.reasons


def test_persistence_three_waits_for_three_consecutive_cycles():
    ds = run([wet(0.6)] * 3, ZonePolicy(persistence=3))
    assert [d.action for d in ds] == ["hold", "hold", "raise"]
    assert [d.state.pending_count for d in ds] == [1, 2, 0]
    assert ds[0].state.pending_level == 2 and ds[0].level == 0
    assert any("met in 1 of the 3 consecutive cycles" in r for r in ds[0].reasons)
    assert ds[2].level == 2
    assert "Flood Warning criteria met in 3 consecutive cycles" in ds[2].reasons


def test_persistence_run_is_broken_by_a_dry_cycle():
    ds = run([wet(0.6), wet(0.6), DRY, wet(0.6), wet(0.6)], ZonePolicy(persistence=3))
    assert [d.action for d in ds] == ["hold", "hold", "none", "hold", "hold"]
    assert ds[-1].state.pending_count == 2


def test_persistence_raises_to_the_level_met_in_every_cycle():
    severe = wet(1.5, exposed_people=500)
    ds = run([severe, wet(0.6), severe], ZonePolicy(persistence=3))
    assert [d.action for d in ds] == ["hold", "hold", "raise"]
    assert ds[-1].level == 2  # severe was not met in all three cycles
    assert ds[-1].state.pending_level == 3 and ds[-1].state.pending_count == 1


def test_observed_data_escalate_at_once():
    d = decide(ZoneState(), {**DRY, "observed_stage_m": 2.4}, T0, LEVELS, ZonePolicy(persistence=3))
    assert (d.action, d.level) == ("raise", 2)
    assert "raised at once because observed data meet the Flood Warning criteria" in d.reasons


def test_observed_escalation_can_be_switched_off():
    policy = ZonePolicy(persistence=3, escalate_on_observed=False)
    d = decide(ZoneState(), {**DRY, "observed_stage_m": 2.4}, T0, LEVELS, policy)
    assert (d.action, d.level, d.state.pending_count) == ("hold", 0, 1)


def test_missing_forecast_metric_still_allows_observed_raise():
    d = decide(ZoneState(), {"peak_depth_m": math.nan, "observed_stage_m": 2.4}, T0, LEVELS,
               ZonePolicy())
    assert (d.action, d.level) == ("raise", 2)
    assert any(r.startswith("forecast peak depth: no data") for r in d.reasons)


# --------------------------------------------------------------------------- lowering


def at_warning(since: datetime = T0) -> ZoneState:
    return ZoneState(level=2, since=since, active=True)


def test_hysteresis_holds_inside_the_margin():
    d = decide(at_warning(), wet(0.47), T0 + HOUR, LEVELS, ZonePolicy(hysteresis=0.1))
    assert (d.action, d.level) == ("hold", 2)
    assert any("0.47 m ≥ 0.45 m" in r and "eased by 10% hysteresis" in r for r in d.reasons)


def test_hysteresis_lowers_below_the_margin():
    d = decide(at_warning(), wet(0.44), T0 + HOUR, LEVELS, ZonePolicy(hysteresis=0.1))
    assert (d.action, d.previous, d.level) == ("lower", 2, 1)
    assert d.state == ZoneState(level=1, since=T0 + HOUR, active=True, issued=T0 + HOUR)
    assert any("0.44 m < 0.45 m" in r for r in d.reasons)


def test_hysteresis_prevents_flapping():
    wobble = [wet(0.52), wet(0.48), wet(0.51), wet(0.49), wet(0.53), wet(0.47)]
    with_margin = run(wobble, ZonePolicy(hysteresis=0.1))
    assert [d.action for d in with_margin] == ["raise", "hold", "none", "hold", "none", "hold"]
    assert {d.level for d in with_margin} == {2}
    without = run(wobble, ZonePolicy(hysteresis=0.0))
    assert [d.action for d in without] == ["raise", "lower"] * 3


def test_min_hold_keeps_a_level_then_lets_it_go():
    policy = ZonePolicy(hysteresis=0.1, min_hold=timedelta(hours=2))
    early = decide(at_warning(), DRY, T0 + timedelta(minutes=30), LEVELS, policy)
    assert (early.action, early.level) == ("hold", 2)
    assert any("in force for 30 min, less than the minimum of 2 h" in r for r in early.reasons)
    late = decide(early.state, DRY, T0 + timedelta(hours=2), LEVELS, policy)
    assert (late.action, late.level) == ("all_clear", 0)


def test_all_clear_closes_an_active_chain():
    d = decide(ZoneState(level=1, since=T0, active=True), DRY, T0 + HOUR, LEVELS, ZonePolicy())
    assert (d.action, d.previous, d.level) == ("all_clear", 1, 0)
    assert d.state == ZoneState(level=0, since=T0 + HOUR, active=False)
    assert any("forecast peak depth 0.00 m < 0.09 m" in r for r in d.reasons)


def test_lowering_to_zero_without_a_chain_is_not_an_all_clear():
    d = decide(ZoneState(level=1, since=T0, active=False), DRY, T0 + HOUR, LEVELS, ZonePolicy())
    assert (d.action, d.level) == ("lower", 0)


def test_lowering_goes_to_the_highest_level_still_held():
    state = ZoneState(level=3, since=T0, active=True)
    d = decide(state, wet(0.47, exposed_people=10), T0 + HOUR, LEVELS, ZonePolicy(hysteresis=0.1))
    assert (d.action, d.level) == ("lower", 2)  # 0.47 m holds Flood Warning at 0.45 m


def test_missing_data_count_as_not_met_when_lowering():
    d = decide(at_warning(), {"peak_depth_m": math.nan}, T0 + HOUR, LEVELS, ZonePolicy())
    assert (d.action, d.level) == ("all_clear", 0)
    assert any(r.startswith("forecast peak depth: no data") for r in d.reasons)
    assert any(r.startswith("observed river level: no data") for r in d.reasons)


def test_steady_level_is_none_with_reasons():
    d = decide(at_warning(), wet(0.7), T0 + HOUR, LEVELS, ZonePolicy())
    assert (d.action, d.level, d.state.since) == ("none", 2, T0)
    assert "forecast peak depth 0.70 m ≥ 0.50 m (Flood Warning threshold)" in d.reasons


# --------------------------------------------------------------------------- checks


def test_decision_is_frozen_and_keeps_its_own_metrics():
    metrics = wet(0.6)
    d = decide(ZoneState(), metrics, T0, LEVELS, ZonePolicy())
    metrics["peak_depth_m"] = 0.0
    assert d.metrics["peak_depth_m"] == 0.6
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.level = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.metrics["peak_depth_m"] = 1.0  # type: ignore[index]


def test_naive_now_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(ZoneState(), DRY, datetime(2026, 3, 14), LEVELS, ZonePolicy())


def test_duplicate_ranks_are_rejected():
    twin = dataclasses.replace(ADVISORY, name="other")
    with pytest.raises(ValueError, match="share rank 1"):
        met_level([ADVISORY, twin], DRY)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"severity": "High"}, "severity 'High'"),
        ({"combine": "most"}, "combine"),
        ({"rank": 0}, "rank"),
        ({"colour": "orange"}, "colour"),
        ({"criteria": ()}, "at least one criterion"),
    ],
)
def test_bad_level_specs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SEVERE, **change)


def test_bad_criterion_and_policy_are_rejected():
    with pytest.raises(ValueError, match="operator"):
        Criterion("peak_depth_m", "=>", 0.5)
    with pytest.raises(ValueError, match="persistence"):
        ZonePolicy(persistence=0)
    with pytest.raises(ValueError, match="hysteresis"):
        ZonePolicy(hysteresis=1.0)


def test_translated_title_falls_back():
    assert WARNING.title_for("es-MX") == "Aviso de inundación"
    assert WARNING.title_for("fr") == "Flood Warning"
    assert isinstance(SEVERE, LevelSpec) and SEVERE.instruction_for("es").startswith("Danger")


def test_level_in_force_is_renewed_before_its_notice_expires():
    """Expiry 6 h, renew 1 h before: a warning held steady hour after hour gets a fresh
    notice at +5 h (the first one expires at +6 h), then at +10 h; never in between."""
    policy = ZonePolicy(expiry=timedelta(hours=6), renew_before=timedelta(hours=1))
    d = decide(ZoneState(), wet(0.5), T0, LEVELS, policy)
    assert (d.action, d.state.issued) == ("raise", T0)
    actions = {}
    for h in range(1, 12):
        d = decide(d.state, wet(0.5), T0 + h * HOUR, LEVELS, policy)
        actions[h] = d.action
        if d.action == "renew":
            assert d.publish and not d.changed and d.level == 2
            assert d.state.issued == T0 + h * HOUR
            assert any("notice renewed" in r for r in d.reasons)
    assert [h for h, a in actions.items() if a == "renew"] == [5, 10]
    assert all(a == "none" for h, a in actions.items() if h not in (5, 10))
    # the all-clear closes the chain: nothing left to renew
    clear = decide(d.state, DRY, T0 + 12 * HOUR, LEVELS, policy)
    assert (clear.action, clear.state.issued) == ("all_clear", None)
    assert decide(clear.state, DRY, T0 + 30 * HOUR, LEVELS, policy).action == "none"


def test_renew_before_must_be_shorter_than_expiry():
    with pytest.raises(ValueError, match="renew_before"):
        ZonePolicy(expiry=timedelta(hours=1), renew_before=timedelta(hours=1))


def test_gauge_site_metrics_read_in_plain_words():
    """Reasons on a gauge site: river flow and rate of rise with their units (GSM-7 only)."""
    from alerts.levels import format_metric, metric_label
    from alerts.messages import sms_segments

    assert format_metric("observed_discharge_m3s", 38.5138) == "38.5 m3/s"
    assert format_metric("observed_discharge_m3s", 0.5413, "es") == "0,541 m3/s"
    assert format_metric("observed_rise_m_per_h", 0.3048) == "0.30 m/h"
    assert metric_label("forecast_peak_discharge_m3s") == "forecast peak river flow"
    assert metric_label("observed_rise_m_per_h", "es") == "subida observada del río"
    assert sms_segments(format_metric("observed_discharge_m3s", 38.5)).encoding == "GSM-7"


def test_persistence_one_raises_to_the_highest_level_met_even_with_a_lower_run_pending():
    """With persistence 1 a level is raised the first cycle it is met: a pending run at a
    lower level (left by a raise that a manager rejected) does not cap the raise."""
    levels = [
        LevelSpec("alert", 1, "Flood Alert", "#f5c400", "Moderate", "Expected", "Possible", "Prepare",
                  criteria=(Criterion("observed_stage_m", ">=", 1.0),)),
        LevelSpec("warning", 2, "Flood Warning", "#e8770e", "Severe", "Immediate", "Likely", "Avoid",
                  criteria=(Criterion("observed_stage_m", ">=", 2.0),)),
        LevelSpec("severe", 3, "Severe Flood Warning", "#c8102e", "Extreme", "Immediate", "Likely", "Evacuate",
                  criteria=(Criterion("forecast_peak_discharge_m3s", ">=", 80.0),)),
    ]
    prev = ZoneState(level=0, pending_level=2, pending_count=1)
    d = decide(prev, {"observed_stage_m": 1.5, "forecast_peak_discharge_m3s": 100.0},
               T0, levels, ZonePolicy(persistence=1), zone="Z")
    assert (d.action, d.level) == ("raise", 3)
    # with persistence 2 the pending run at 2 completes, and 3 starts its own run
    d2 = decide(prev, {"observed_stage_m": 2.5, "forecast_peak_discharge_m3s": 100.0},
                T0, levels, ZonePolicy(persistence=2), zone="Z")
    assert (d2.action, d2.level, d2.state.pending_level, d2.state.pending_count) == ("raise", 2, 3, 1)
