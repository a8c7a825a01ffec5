"""Threshold tuning: hand-worked event sets, a planted threshold, goals, config edits, plots.

The hand-made events use the demo config's HILLTOP zone (no gauge, so no observed
criteria): advisory 0.15 m, warning 0.50 m, severe 1.00 m of forecast_peak_depth_m, policy
persistence 1, hysteresis 0.25 (a level is lowered once its thresholds fail at 75 %),
min_hold 4 h. Cycles are hourly from T0 (written hh:00 below).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tests.conftest import DEMO_CONFIG, demo_config_text
from warning.config import load_config
from warning.events import CycleTrace, Event, EventTrace
from warning.tuning import (
    Candidate,
    assess,
    CandidateScore,
    Goal,
    GoalError,
    TuningError,
    apply_changes,
    by_criterion,
    candidate_grid,
    config_diff,
    decisions_for,
    evaluate,
    pod_far_plot,
    recommend,
    recommendation,
    scores_table,
)
from warning.verification import Contingency

T0 = datetime(2025, 11, 14, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)
DEPTH = "forecast_peak_depth_m"


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEMO_CONFIG)


def trace(name, series, onsets=None, *, zone="HILLTOP", metric=DEPTH, observed=True,
          zones=(), tolerance=60, extra=None, t0=T0):
    """An EventTrace with hourly cycles from T0; ``series`` gives ``metric`` per cycle,
    ``onsets`` the observed onsets (hours after T0) of ``zone`` (omitted: not observed)."""
    cycles = []
    for k, v in enumerate(series):
        metrics = {metric: v, **((extra or {}).get(k, {}))}
        cycles.append(CycleTrace(at=t0 + k * H, run_id=f"{name}-{k}", forecast_file="",
                                 metrics={zone: metrics}))
    observed = {zone: [t0 + h * H for h in (onsets or [])]} if observed else {}
    event = Event(name=name, start=t0, end=t0 + len(series) * H, observed=observed,
                  zones=list(zones), tolerance_minutes=tolerance)
    return EventTrace(event=event, cycles=cycles)


# Hand-worked catalogue. Level changes at the 0.50 m (configured) and 0.65 m warning thresholds:
# A: raise 1 at 01 (0.20), raise 2 at 03 (0.55); 06 0.40 >= 0.375 eased: hold; 07 0.35 fails,
#    held 4 h: lower to 1; 10 0.10 fails the eased advisory but held 3 h: hold; 11 -> 0.
#    0.65: raise 2 at 04 (0.70); 05-07 held (< 4 h); 08 lower to 1; never cleared.
#    Onset 05:00 -> 0.50: hit, lead 120 min; 0.65: hit, lead 60 min.
EVENT_A = [0.05, 0.20, 0.45, 0.55, 0.70, 0.60, 0.40, 0.35, 0.30, 0.20, 0.10, 0.05]
# B (nothing flooded): 0.50: raise 2 at 02 (0.52), held to 06, all-clear at 06 (0.10 fails
#    the eased advisory 0.1125): period 02-06, a false alarm. 0.65: never warned.
EVENT_B = [0.10, 0.30, 0.52, 0.60, 0.45, 0.20, 0.10, 0.05, 0.05, 0.05, 0.05, 0.05]
# C: 0.50: raise 2 at 03 (0.58), 04 0.50 still met, cleared at 07: onset 04:00 a hit, lead
#    60 min. 0.65: never warned: a miss.
EVENT_C = [0.10, 0.20, 0.40, 0.58, 0.50, 0.30, 0.10, 0.05, 0.05, 0.05, 0.05, 0.05]
# D: onset 02:30, tolerance 60 min. 0.50: warned at 03 (0.55), 30 min late: a late
#    detection, never a hit (period 03-07), nor a false alarm. 0.65: warned at 04 (0.70), 90 min late: a miss, and the period
#    04-08 covers no onset: a false alarm.
EVENT_D = [0.10, 0.20, 0.30, 0.55, 0.70, 0.60, 0.30, 0.20, 0.10, 0.05, 0.05, 0.05]


def hand_catalogue():
    return [
        trace("A", EVENT_A, [5]),
        trace("B", EVENT_B, []),
        trace("C", EVENT_C, [4]),
        trace("D", EVENT_D, [2.5]),
        # would be a false alarm, but HILLTOP was not observed: does not count
        trace("E", EVENT_B, observed=False),
        # HILLTOP observed, but the event names only MB-TOWN as verified: does not count
        trace("F", EVENT_B, [], zones=["MB-TOWN"]),
    ]


def test_decisions_for_replays_the_state_machine(cfg):
    assert decisions_for(hand_catalogue()[0], cfg, "HILLTOP") == [
        (T0 + 1 * H, 1), (T0 + 3 * H, 2), (T0 + 7 * H, 1), (T0 + 11 * H, 0)]


def test_hand_made_catalogue_counts_scores_and_lead_times(cfg):
    traces = hand_catalogue()
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", values=[0.65])
    assert [(c.value, c.current, c.metric, c.op) for c in cands] == [
        (0.50, 0.50, DEPTH, ">="), (0.65, 0.50, DEPTH, ">=")]
    at_050, at_065 = evaluate(traces, cfg, cands)

    # 0.50: hits A, C; D late; false alarm B: POD 2/3, FAR 1/3, CSI 2/4; leads 60, 120 min:
    # quartiles (linear) q1 = 60 + 0.25 * 60 = 75, q3 = 60 + 0.75 * 60 = 105
    assert at_050.events == 4
    assert (at_050.hits, at_050.late, at_050.misses, at_050.false_alarms) == (2, 1, 0, 1)
    assert (at_050.pod, at_050.far, at_050.csi) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 0.5)
    assert at_050.lead_times_min == (60.0, 120.0)
    assert at_050.lead_summary() == {"min": 60.0, "q1": 75.0, "median": 90.0, "q3": 105.0,
                                     "max": 120.0}
    # 0.65: hit A (60 min); misses C, D; false alarm D: POD 1/3, FAR 1/2, CSI 1/4
    assert (at_065.hits, at_065.misses, at_065.false_alarms) == (1, 2, 1)
    assert at_065.pod == pytest.approx(1 / 3) and (at_065.far, at_065.csi) == (0.5, 0.25)
    assert at_065.lead_times_min == (60.0,) and at_065.median_lead_min == 60.0


def test_only_the_tuned_criterion_changes(cfg):
    # MB-TOWN warning: any of [forecast_peak_depth_m >= 0.50, observed_stage_m >= 2.5].
    # Tuning the depth to 0.90 leaves the observed-stage criterion in force: the stage of
    # 2.6 m at 03:00 raises the warning at once (escalate_on_observed), 60 min early: an
    # in-time hit, but raised by the gauge alone, so a detection, not a forecast lead.
    stage = {3: {"observed_stage_m": 2.6}, 4: {"observed_stage_m": 2.6}}
    t = trace("stage", [0.1, 0.2, 0.3, 0.4, 0.4, 0.3, 0.1, 0.05, 0.05], [4], zone="MB-TOWN",
              extra=stage)
    (cand,) = candidate_grid([t], cfg, "MB-TOWN", "warning", values=[0.90], include_current=False)
    assert (cand.metric, cand.criterion_index, cand.current) == (DEPTH, 0, 0.50)
    (score,) = evaluate([t], cfg, [cand])
    assert (score.hits, score.misses, score.false_alarms, score.lead_times_min) == (1, 0, 0, ())
    assert (score.detections, score.forecast_hits, score.detection_leads_min) == (1, 0, (60.0,))
    # ... and the observed criterion can itself be tuned, by name
    (obs,) = candidate_grid([t], cfg, "MB-TOWN", "warning", "observed_stage_m", values=[2.7],
                            include_current=False)
    assert (obs.criterion_index, obs.current) == (1, 2.5)
    # at 2.7 m the stage no longer warns and 0.4 m < 0.50: the flood is missed
    (score,) = evaluate([t], cfg, [obs])
    assert (score.hits, score.misses) == (0, 1)


def test_candidate_grid_spans_the_seen_range(cfg):
    t = trace("ramp", [0.1 + 0.1 * k for k in range(11)], [8])  # 0.1 .. 1.1 m
    cands = candidate_grid([t], cfg, "HILLTOP", "warning", n=11)
    # spacing 0.1 -> rounded to 2 decimals; the current 0.50 is already among them
    assert [c.value for c in cands] == [round(0.1 * k, 2) for k in range(1, 12)]
    assert {(c.zone, c.level, c.metric, c.criterion_index, c.current) for c in cands} == {
        ("HILLTOP", "warning", DEPTH, 0, 0.50)}
    # spacing 1/3 -> 2 decimals: 0.1, 0.43, 0.77, 1.1, and the current 0.50
    cands = candidate_grid([t], cfg, "HILLTOP", "warning", n=4)
    assert [c.value for c in cands] == [0.1, 0.43, 0.5, 0.77, 1.1]


def test_candidate_grid_and_evaluate_errors(cfg):
    t = trace("ramp", [0.1, 0.2], [1])
    with pytest.raises(TuningError, match="no criterion on 'flooded_share'"):
        candidate_grid([t], cfg, "HILLTOP", "warning", "flooded_share")
    with pytest.raises(TuningError, match="zone 'ATLANTIS' is not configured"):
        candidate_grid([t], cfg, "ATLANTIS", "warning")
    with pytest.raises(TuningError, match="no thresholds for level 'flash'"):
        candidate_grid([t], cfg, "HILLTOP", "flash")
    unobserved = trace("u", [0.1, 0.2], observed=False)
    with pytest.raises(TuningError, match="in the events that observe it"):
        candidate_grid([unobserved], cfg, "HILLTOP", "warning")
    (c,) = candidate_grid([], cfg, "HILLTOP", "warning", values=[0.4], include_current=False)
    with pytest.raises(TuningError, match="no event observes zone 'HILLTOP'"):
        evaluate([unobserved], cfg, [c])


def test_candidates_and_scores_pickle_and_two_workers_agree(cfg):
    traces = hand_catalogue()
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", values=[0.3, 0.4, 0.6, 0.65, 0.8])
    one = evaluate(traces, cfg, cands, workers=1)
    assert pickle.loads(pickle.dumps(cands)) == cands
    assert scores_table(pickle.loads(pickle.dumps(one))) == scores_table(one)
    two = evaluate(traces, cfg, cands, workers=2, chunk_size=2)
    assert scores_table(two) == scores_table(one)


# --------------------------------------------------------------------------- planted threshold

TRUE_THRESHOLD = 0.42


def planted_catalogue(seed=20251114, second_near_wet=False):
    """8 events of 30 hourly cycles; each zone series a Gaussian bump over a 0.02 m base.
    Flooding was observed, 1-3 h after the cycle where the series first reached 0.42 m,
    exactly in the events where it did. Peaks (on a cycle): 3 dry events (one just under,
    0.395-0.40) and 5 wet ones (one just over, 0.425-0.43), so the data pin the threshold
    down to that gap, which is wider than the grid spacing (about 0.019 m)."""
    rng = np.random.default_rng(seed)
    peaks = [*rng.uniform(0.15, 0.35, 2), rng.uniform(0.395, 0.40),
             *rng.uniform(0.60, 0.95, 4), rng.uniform(0.425, 0.43)]
    if second_near_wet:  # another wet event just over the threshold, drawn apart
        peaks.append(float(np.random.default_rng(seed + 1).uniform(0.425, 0.43)))
    traces = []
    for k, peak in enumerate(peaks):
        centre, width = int(rng.integers(12, 19)), rng.uniform(3, 6)
        hours = np.arange(30)
        series = 0.02 + (peak - 0.02) * np.exp(-(((hours - centre) / width) ** 2))
        crossed = np.flatnonzero(series >= TRUE_THRESHOLD)
        onsets = [float(crossed[0] + rng.integers(1, 4))] if crossed.size else []
        traces.append(trace(f"storm-{k}", [float(v) for v in series], onsets))
    return traces


def test_tuner_recovers_a_planted_threshold(cfg):
    traces = planted_catalogue()
    assert sum(bool(t.event.observed["HILLTOP"]) for t in traces) == 5
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", n=50)
    values = sorted({c.value for c in cands} - {0.50})
    spacing = max(np.diff(values))
    a = assess(evaluate(traces, cfg, cands), Goal.parse("maximise csi"))
    best = a.in_sample
    assert best is not None and best.csi == 1.0 and best.false_alarms == 0
    assert abs(best.candidate.value - TRUE_THRESHOLD) <= spacing
    # the configured 0.50 m misses the wet event that peaked at 0.43 m
    (current,) = evaluate(traces, cfg, [c for c in cands if c.value == 0.50])
    assert (current.hits, current.misses) == (4, 1)
    # ... but that one event alone calls for the change: left out, the other seven pick a
    # value near 0.50 again and miss it. Out of sample tuning does no better than 0.50
    # (4 hits, 1 miss either way), so nothing is recommended
    assert (a.out_of_sample.hits, a.out_of_sample.misses) == (4, 1)
    assert a.chosen is None and "no better than that of the configured 0.5" in a.reason
    # with a second wet event just over the threshold, each supports the change when the
    # other is left out: out of sample 6 hits, no miss, and the change is recommended
    traces = planted_catalogue(second_near_wet=True)
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", n=50)
    a = assess(evaluate(traces, cfg, cands), Goal.parse("maximise csi"))
    assert (a.out_of_sample.hits, a.out_of_sample.misses, a.out_of_sample.false_alarms) == (6, 0, 0)
    assert a.chosen is not None and abs(a.chosen.candidate.value - TRUE_THRESHOLD) <= spacing


# Six events whose depth bumps to a peak at 04:00 (onset of the wet ones at the peak).
# Threshold t warns in exactly the events peaking at or above it:
#   peak  0.30 dry | 0.40 wet | 0.48 dry | 0.60 wet | 0.75 wet | 0.90 wet
#   t=0.25: 4 hits, 2 FA      -> CSI 4/6 = 0.67, FAR 0.33
#   t=0.35: 4 hits, 1 FA      -> CSI 0.80, FAR 0.20
#   t=0.45: 3 hits, 1 miss, 1 FA -> CSI 0.60
#   t=0.50 (current), 0.55: 3 hits, 1 miss -> CSI 0.75, FAR 0
#   t=0.70: CSI 0.50; t=0.85: CSI 0.25
BUMP = [0.05, 0.10, 0.60, 0.85, 1.0, 0.85, 0.60, 0.30, 0.10, 0.05, 0.05, 0.05]
PEAKS = [(0.30, False), (0.40, True), (0.48, False), (0.60, True), (0.75, True), (0.90, True)]


@pytest.fixture(scope="module")
def ladder(cfg):
    traces = [trace(f"p{p}", [max(0.05, p * b) if b > 0.1 else b for b in BUMP],
                    [4] if wet else []) for p, wet in PEAKS]
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning",
                           values=[0.25, 0.35, 0.45, 0.55, 0.70, 0.85])
    return {s.candidate.value: s for s in evaluate(traces, cfg, cands)}


def test_ladder_scores(ladder):
    csi = {v: round(s.csi, 4) for v, s in ladder.items()}
    assert csi == {0.25: 0.6667, 0.35: 0.8, 0.45: 0.6, 0.50: 0.75, 0.55: 0.75, 0.70: 0.5,
                   0.85: 0.25}


@pytest.mark.parametrize("goal, expected", [
    ("maximise csi", 0.35),
    ("maximise csi; far <= 0.2", 0.35),      # FAR 0.20 meets an inclusive limit
    ("maximise csi; far <= 0.1", 0.50),      # a FAR cap moves the threshold up ...
    ("maximise csi; pod >= 1", 0.35),
    ("maximise pod", 0.35),                  # 0.25 and 0.35 tie on POD 1: closer to 0.50
    ("maximise pod; far <= 0.1", 0.50),      # 0.50 and 0.55 tie: the current value wins
    ("minimise far", 0.50),
])
def test_recommendation_follows_the_goal(ladder, goal, expected):
    best = assess(list(ladder.values()), Goal.parse(goal)).in_sample
    assert best is not None and best.candidate.value == expected


def test_no_recommendation_says_why(ladder):
    best, why = recommendation(list(ladder.values()), Goal.parse("maximise csi; far <= 0; pod >= 0.8"))
    assert best is None
    assert "none meets all of them" in why
    best, why = recommendation(list(ladder.values()), Goal.parse("maximise csi; pod >= 0.8; lead >= 600"))
    assert best is None and "no candidate meets lead >= 600" in why


def _score(value, current, hits, misses, false_alarms, op=">="):
    cand = Candidate("HILLTOP", "warning", DEPTH, op, value, current)
    c = Contingency(hits, misses, false_alarms, [timedelta(minutes=60)] * hits)
    return CandidateScore.from_contingency(cand, "warning", 4, c)


def test_ties_prefer_the_current_value_then_the_cautious_threshold():
    # same CSI (2/4) at 0.45 and 0.55, both 0.05 from the current 0.50: the lower one
    # warns more often under '>=' ...
    pair = [_score(0.45, 0.50, 2, 1, 1), _score(0.55, 0.50, 2, 2, 0)]
    assert recommend(pair, Goal("csi")).candidate.value == 0.45
    # ... the higher one under '<='
    pair = [_score(0.45, 0.50, 2, 1, 1, "<="), _score(0.55, 0.50, 2, 2, 0, "<=")]
    assert recommend(pair, Goal("csi")).candidate.value == 0.55
    # an undefined objective is never chosen: without a hit there is no lead time
    pair = [_score(0.9, 0.5, 0, 2, 0), _score(0.4, 0.5, 2, 0, 0)]
    assert math.isnan(pair[0].median_lead_min)
    assert recommend(pair, Goal("lead")).candidate.value == 0.4
    assert recommend(pair[:1], Goal("lead")) is None


def test_recommend_wants_one_criterion():
    mixed = [_score(0.4, 0.5, 1, 0, 0), CandidateScore.from_contingency(
        Candidate("SB-LANE", "warning", DEPTH, ">=", 0.4, 0.5), "warning", 1, Contingency(1))]
    with pytest.raises(TuningError, match="by_criterion"):
        recommend(mixed, Goal())
    assert len(by_criterion(mixed)) == 2


# --------------------------------------------------------------------------- goals


@pytest.mark.parametrize("text, goal", [
    ("maximise csi; far <= 0.3; lead >= 60", Goal("csi", max_far=0.3, min_median_lead_min=60)),
    ("Maximize POD; far<=30%;", Goal("pod", max_far=0.3)),
    ("minimise far; pod >= 0.8; lead >= 1.5 h", Goal("far", min_pod=0.8, min_median_lead_min=90)),
    ("  maximise lead ; pod >= .9", Goal("lead", min_pod=0.9)),
])
def test_goal_parsing(text, goal):
    assert Goal.parse(text) == goal
    assert Goal.parse(str(goal)) == goal


@pytest.mark.parametrize("text, message", [
    ("", "the goal is empty"),
    ("far <= 0.3", "say what to optimise"),
    ("maximise far", "did you mean 'minimise far'"),
    ("minimise csi", "did you mean 'maximise csi'"),
    ("maximise happiness", "cannot optimise 'happiness'"),
    ("maximise csi; maximise pod", "one objective only"),
    ("maximise csi; far >= 0.3", "far takes '<='"),
    ("maximise csi; far <= 1.5", "between 0 and 1"),
    ("maximise csi; far <= 0.2; far <= 0.3", "limited twice"),
    ("maximise csi; lead >= 30%", "lead is a time"),
    ("maximise csi; csi >= 0.5", "no limit on 'csi'"),
    ("maximise csi, far <= 0.3", "not understood"),
])
def test_bad_goals_say_what_is_wrong(text, message):
    with pytest.raises(GoalError, match=message):
        Goal.parse(text)


# --------------------------------------------------------------------------- config edits


def _leaves(node, path=()):
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, (*path, key)).items()}
    if isinstance(node, list):
        return {k: v for i, sub in enumerate(node) for k, v in _leaves(sub, (*path, i)).items()}
    return {path: node}


def test_config_diff_changes_exactly_one_threshold(tmp_path, cfg):
    path = tmp_path / "site.toml"
    path.write_text(demo_config_text())
    original = path.read_text()
    # SB-LANE's warning reads "forecast_peak_depth_m >= 0.50", as MB-TOWN's and HILLTOP's do
    (cand,) = candidate_grid([], cfg, "SB-LANE", "warning", values=[0.42], include_current=False)
    diff = config_diff(path, [cand])
    assert path.read_text() == original  # only shown
    removed = [ln for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    added = [ln for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert removed == ['-warning = { any = ["forecast_peak_depth_m >= 0.50", "observed_stage_m >= 1.45"] }']
    assert added == ['+warning = { any = ["forecast_peak_depth_m >= 0.42", "observed_stage_m >= 1.45"] }']

    returned = apply_changes(path, [cand])
    assert returned == diff
    new_text = path.read_text()
    before, after = _leaves(tomllib.loads(original)), _leaves(tomllib.loads(new_text))
    assert before.keys() == after.keys()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {("zones", 2, "thresholds", "warning", "any", 0):
                       ("forecast_peak_depth_m >= 0.50", "forecast_peak_depth_m >= 0.42")}
    # comments survive (they are not in the parsed data): every other line is unchanged
    assert [a for a, b in zip(original.splitlines(), new_text.splitlines()) if a != b] == [removed[0][1:]]
    new_cfg = load_config(path)
    by_zone = {z.code: new_cfg.level_specs(z)[1].criteria[0].value for z in new_cfg.zones}
    assert by_zone == {"MB-TOWN": 0.50, "MB-WESTFORD": 0.30, "SB-LANE": 0.42, "HILLTOP": 0.50}

    # the diff, applied by patch(1) to the original text, gives the new file
    if shutil.which("patch") is None:
        pytest.skip("patch(1) not installed")
    copy = tmp_path / "copy" / "site.toml"
    copy.parent.mkdir()
    copy.write_text(original)
    (tmp_path / "change.diff").write_text(diff)
    subprocess.run(["patch", "-p1", "-d", str(copy.parent), "-i", str(tmp_path / "change.diff")],
                   check=True, capture_output=True)
    assert copy.read_text() == new_text


def test_config_diff_no_change_and_stale_file(tmp_path, cfg):
    path = tmp_path / "site.toml"
    path.write_text(DEMO_CONFIG.read_text())
    (same,) = candidate_grid([], cfg, "HILLTOP", "warning", values=[], include_current=True)
    assert config_diff(path, [same]) == ""
    stale = Candidate("HILLTOP", "warning", DEPTH, ">=", 0.4, current=0.55)
    with pytest.raises(TuningError, match="the file changed since the tuning"):
        config_diff(path, [stale])


# --------------------------------------------------------------------------- reports


def test_plot_is_a_png_and_table_is_json(tmp_path, cfg, ladder):
    from PIL import Image

    scores = list(ladder.values())
    best = recommend(scores, Goal.parse("maximise csi"))
    other = [CandidateScore.from_contingency(  # a second panel, made up
        Candidate("SB-LANE", "severe", DEPTH, ">=", v, 1.0), "severe", 3, Contingency(h, 3 - h, 1))
        for v, h in ((0.8, 3), (1.0, 2), (1.2, 1))]
    out = pod_far_plot(scores + other, tmp_path / "pod_far.png", recommended=best)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 200

    rows = scores_table(scores + [_score(0.9, 0.5, 0, 0, 0)])
    text = json.dumps(rows, allow_nan=False)
    assert json.loads(text)[-1]["csi"] is None
    row = next(r for r in rows if r["value"] == 0.35)
    # t=0.35 warns at 02:00 in the 0.60/0.75/0.90 events (0.6 x peak >= 0.35) and at the
    # 04:00 peak of the 0.40 one: leads 120, 120, 120, 0 min
    assert (row["hits"], row["false_alarms"], row["far"]) == (4, 1, 0.2)
    assert (row["lead_min_min"], row["lead_median_min"], row["lead_max_min"]) == (0.0, 120.0, 120.0)
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())


def test_too_few_events_or_floods_say_so_plainly():
    """No flood observed anywhere, or too few events: nothing to tune on, and the tuner says
    so instead of picking a threshold (once 'the closest one that never warned')."""
    c0 = Candidate(zone="HILLTOP", level="warning", metric="forecast_peak_depth_m", op=">=", value=0.0,
                   current=0.5)
    c1 = dataclasses.replace(c0, value=0.5)
    noisy = CandidateScore.from_contingency(c0, "warning", 5, Contingency(0, 0, 2))
    quiet = CandidateScore.from_contingency(c1, "warning", 5, Contingency(0, 0, 0))
    chosen, why = recommendation([noisy, quiet], Goal.parse("maximise csi"))
    assert chosen is None and "too few events to tune" in why and "0 flood(s)" in why
    few = CandidateScore.from_contingency(c1, "warning", 2, Contingency(2, 0, 0, [H, H]))
    chosen, why = recommendation([few], Goal.parse("maximise csi"))
    assert chosen is None and "2 event(s)" in why and "at least 3 events" in why


def ladder_traces(days_apart=0):
    return [trace(f"p{p}", [max(0.05, p * b) if b > 0.1 else b for b in BUMP], [4] if wet else [],
                  t0=T0 + k * days_apart * 24 * H) for k, (p, wet) in enumerate(PEAKS)]


def test_always_warning_is_refused_and_scores_nothing_in_time(cfg):
    traces = ladder_traces()
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", values=[0.0, 0.35])
    scored = {s.candidate.value: s for s in evaluate(traces, cfg, cands)}
    always = scored[0.0]
    # by events alone 0.0 m is 'perfect' on the wet events: every onset covered in time
    assert (always.hits, always.misses) == (4, 0)
    # but it warns all the time: 6 events x 12 h, never lowered; Peirce 0
    assert always.trivial == "always" and always.warned_share == 1.0 and always.pss == 0.0
    assert always.hours.d == 0.0 and always.hours.b > 0
    a = assess(list(scored.values()), Goal.parse("maximise csi"))
    assert a.in_sample is not None and a.in_sample.candidate.value == 0.35
    assert a.refused["always"] == (0.0,) and "warn always and were refused" in a.reason
    # only the always-on value left: nothing is recommended
    a = assess([always], Goal.parse("maximise csi"))
    assert a.chosen is None and "every candidate warns always or never" in a.reason


def test_leave_one_event_out_scores_what_tuning_would_have_done(ladder):
    # worked by hand in the module notes of the ladder: holding out each event in turn and
    # choosing on the other five (maximise csi) picks 0.35 for every fold but the one
    # without the 0.40 event, which picks 0.50 (CSI 1 on the rest) and then misses it;
    # the 0.48 dry event is a false alarm of 0.35. Out of sample: 3 hits, 1 miss, 1 false
    # alarm (CSI 0.6), against 0.8 in sample.
    a = assess(list(ladder.values()), Goal.parse("maximise csi"))
    assert a.in_sample.candidate.value == 0.35 and a.in_sample.csi == 0.8
    oos = a.out_of_sample
    assert (oos.hits, oos.late, oos.misses, oos.false_alarms) == (3, 0, 1, 1)
    assert "leave-one-event-out over 6 events" in a.validation
    # the configured 0.50 scores CSI 0.75 on the same events: tuning would not have helped
    assert a.chosen is None and "its csi (0.60) is no better than that of the configured 0.5" in a.reason
    # baselines on the same events: never warns (4 misses), always covers all (2 false
    # alarms: the dry events), persistence only detects (no forecast hit)
    assert (a.baselines["never"].misses, a.baselines["always"].false_alarms) == (4, 2)
    assert a.baselines["persistence"].forecast_hits == 0


def test_split_by_date_tunes_on_the_early_events_and_checks_on_the_late(cfg):
    traces = ladder_traces(days_apart=1)  # one event a day from T0
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning",
                           values=[0.25, 0.35, 0.45, 0.55, 0.70, 0.85])
    scored = evaluate(traces, cfg, cands)
    # tuned on the first four days (peaks 0.30 dry, 0.40 wet, 0.48 dry, 0.60 wet): CSI
    # 0.25 -> 2/4, 0.35 -> 2/3, 0.45 -> 1/3, 0.50 -> 1/2: 0.35; checked on the 0.75 and
    # 0.90 events: two hits
    a = assess(scored, Goal.parse("maximise csi"), holdout_from=T0 + 4 * 24 * H)
    assert a.in_sample.candidate.value == 0.35
    assert (a.out_of_sample.hits, a.out_of_sample.misses, a.out_of_sample.false_alarms) == (2, 0, 0)
    # the configured 0.50 also warns in time for both late events: no better, no change
    assert a.chosen is None and "no better than that of the configured 0.5" in a.reason
    assert "tuned on the 4 events before" in a.validation and "the 2 from then on" in a.validation
    with pytest.raises(TuningError, match="no event starts on or after"):
        assess(scored, Goal.parse("maximise csi"), holdout_from=T0 + 30 * 24 * H)


def test_a_threshold_that_only_warns_late_is_not_recommended(cfg):
    # the depth forecast rises only after the water came (onset 01:00, depth 0.10 m then):
    # every warning is late; persistence does as well, so nothing beats it
    traces = [trace(f"late{k}", [max(0.05, p * b) if b > 0.1 else b for b in BUMP], [1] if p > 0.5 else [])
              for k, p in enumerate([0.3, 0.6, 0.75, 0.9])]
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", values=[0.45, 0.55, 0.7])
    scored = evaluate(traces, cfg, cands)
    assert all(s.hits == 0 for s in scored)
    a = assess(scored, Goal.parse("maximise csi"))
    assert a.chosen is None and "does not beat the baselines" in a.reason
    assert "than persistence of the observation" in a.reason


def test_a_level_may_not_warn_before_the_level_below_it(cfg):
    # HILLTOP: advisory at 0.15 m of forecast depth, warning at 0.50 m. A warning value of
    # 0.12 m would raise the warning before the advisory: refused, whatever it scores
    traces = ladder_traces()
    cands = candidate_grid(traces, cfg, "HILLTOP", "warning", values=[0.12, 0.35])
    assert {c.value: c.floor for c in cands} == {0.12: 0.15, 0.35: 0.15, 0.50: 0.15}
    assert [c.value for c in cands if c.below_lower_level] == [0.12]
    a = assess(evaluate(traces, cfg, cands), Goal.parse("maximise pod"))
    assert a.refused["before a lower level"] == (0.12,) and a.in_sample.candidate.value == 0.35
    assert "would warn before a lower level and were refused" in a.reason
    # the lowest level has nothing below it
    (adv,) = candidate_grid(traces, cfg, "HILLTOP", "advisory", values=[0.01], include_current=False)
    assert adv.floor is None and not adv.below_lower_level
