"""From decisions to CAP notices: a whole warning chain, drills, explanations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from alerts_testdata import LEVELS, SEVERE, T0, WARNING, assert_schema_valid

from alerts.cap import format_cap_time, parse_cap, to_xml
from alerts.errors import CapError
from alerts.levels import ZonePolicy, ZoneState, decide
from alerts.notices import NoticeContext, ZoneInfo, build_notice, notice_url, parameter_name

ZONE = ZoneInfo(
    code="RIV1", name="Riverside",
    polygons=[[(32.75, -97.35), (32.75, -97.33), (32.77, -97.33), (32.77, -97.35)]],
)
RUN = {
    "model_run": "2026-03-14T05:00Z-hand-ens",
    "forecast_issued": "2026-03-14T05:30:00+00:00",
    "data_sources": "KNMI radar nowcast; USGS 01589330 gauge",
}
CTX = NoticeContext(
    sender="floodwarn@riverside.example.org", sender_name="Riverside Flood Service",
    web_base="https://floodwarn.example.org/", run=RUN, contact="https://floodwarn.example.org",
)
DRILL = NoticeContext(
    sender=CTX.sender, sender_name=CTX.sender_name, web_base=CTX.web_base, run=RUN,
    status="Exercise", exercise_note="Drill Storm Dennis replay 2026-03",
)
HOUR = timedelta(hours=1)
PEAK_TIME = "2026-03-14T09:00:00+00:00"
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def chain_of_notices(ctx: NoticeContext):
    """Warning -> Severe -> Warning -> all-clear for one zone, as CAP notices."""
    series = [
        {"peak_depth_m": 0.82, "exposed_people": 40},
        {"peak_depth_m": 1.40, "exposed_people": 300},
        {"peak_depth_m": 0.60, "exposed_people": 20},
        {"peak_depth_m": 0.0, "flooded_share": 0.0, "exposed_people": 0, "observed_stage_m": 1.0},
    ]
    state, chain, notices = ZoneState(), [], []
    for i, metrics in enumerate(series):
        now = T0 + i * HOUR + timedelta(microseconds=250)  # clocks carry microseconds
        decision = decide(state, metrics, now, LEVELS, ZonePolicy(), zone=ZONE.code)
        state = decision.state
        level = next((lv for lv in LEVELS if lv.rank == decision.level), None)
        identifier = f"floodwarn-{ZONE.code}-{i + 1}"
        alert = build_notice(
            decision, ZONE, level, chain, ctx, identifier=identifier,
            expires=now + timedelta(hours=12),
            details={"peak_depth_m": metrics["peak_depth_m"], "peak_time": PEAK_TIME},
        )
        notices.append((decision, alert))
        chain = [*chain, (alert.sender, alert.identifier, alert.sent)]
    return notices


def test_chain_is_alert_then_updates_then_cancel(cap_schema):
    notices = chain_of_notices(CTX)
    assert [d.action for d, _ in notices] == ["raise", "raise", "lower", "all_clear"]
    assert [a.msg_type for _, a in notices] == ["Alert", "Update", "Update", "Cancel"]
    for i, (_, alert) in enumerate(notices):
        earlier = [(a.sender, a.identifier, a.sent) for _, a in notices[:i]]
        assert alert.references == earlier  # every earlier message of the chain
        xml = to_xml(alert)
        assert_schema_valid(cap_schema, xml)
        assert parse_cap(xml) == alert


def test_times_have_no_fraction_and_no_z():
    for _, alert in chain_of_notices(CTX):
        text = to_xml(alert).decode()
        assert alert.sent.microsecond == 0
        for tag in ("sent", "effective", "expires"):
            for value in re.findall(rf"<{tag}>([^<]+)</{tag}>", text):
                assert TIME_RE.fullmatch(value), value
        refs = re.search(r"<references>([^<]+)</references>", text)
        if refs:
            for triple in refs.group(1).split():
                assert TIME_RE.fullmatch(triple.split(",")[2])


def test_alert_explains_itself():
    decision, alert = chain_of_notices(CTX)[0]
    info = alert.infos[0]
    assert (info.category, info.event) == ("Met", "Flood")
    assert (info.severity, info.urgency) == ("Severe", "Expected")
    assert info.headline == "Flood Warning for Riverside"
    assert "forecast peak depth 0.82 m ≥ 0.50 m (Flood Warning threshold)" in info.description
    assert "model run 2026-03-14T05:00Z-hand-ens" in info.description
    assert "KNMI radar nowcast" in info.description
    assert info.parameters["floodwarn:modelRun"] == RUN["model_run"]
    assert info.parameters["floodwarn:forecastIssued"] == RUN["forecast_issued"]
    assert info.parameters["floodwarn:dataSources"] == RUN["data_sources"]
    assert info.parameters["floodwarn:peakDepth_m"] == "0.82"
    assert info.parameters["floodwarn:thresholds"] == "peak_depth_m >= 0.5 or observed_stage_m >= 2"
    assert info.parameters["floodwarn:level"] == "warning"
    assert info.instruction == WARNING.instruction
    assert info.web == "https://floodwarn.example.org/notices/floodwarn-RIV1-1.xml"
    assert info.areas[0].geocodes == {"floodwarn:zone": "RIV1"}
    assert info.effective == alert.sent == decision.at.replace(microsecond=0)
    assert alert.status == "Actual" and alert.note is None


def test_severe_notice_uses_the_level_cap_values():
    _, alert = chain_of_notices(CTX)[1]
    info = alert.infos[0]
    assert (info.severity, info.urgency, info.response_type) == ("Extreme", "Immediate", "Evacuate")
    assert info.parameters["floodwarn:thresholds"] == "peak_depth_m >= 1 and exposed_people >= 100"
    assert info.headline == f"{SEVERE.title} for Riverside"


def test_all_clear_is_a_cancel_with_allclear():
    _, alert = chain_of_notices(CTX)[-1]
    info = alert.infos[0]
    assert alert.msg_type == "Cancel"
    assert (info.response_type, info.urgency, info.certainty, info.severity) == (
        "AllClear", "Past", "Observed", "Minor",
    )
    assert info.headline == "Flood warning no longer in force for Riverside"
    assert "no longer in force" in info.description
    assert "Why: forecast peak depth 0.00 m < 0.45 m" in info.description
    assert info.onset is None


def test_drill_is_an_exercise_with_a_note(cap_schema):
    for _, alert in chain_of_notices(DRILL):
        assert alert.status == "Exercise"
        assert alert.note == "Drill Storm Dennis replay 2026-03"
        assert alert.infos[0].headline.startswith("EXERCISE: ")
        assert alert.infos[0].description.startswith("EXERCISE (Drill Storm Dennis replay 2026-03)")
        xml = to_xml(alert)
        assert b"<status>Exercise</status>" in xml
        assert b"<note>Drill Storm Dennis replay 2026-03</note>" in xml
        assert_schema_valid(cap_schema, xml)


def test_exercise_needs_a_drill_name_and_actual_refuses_one():
    with pytest.raises(ValueError, match="naming the drill"):
        NoticeContext(sender="a@b", sender_name="x", web_base="https://x", status="Exercise")
    with pytest.raises(ValueError, match="only for status Exercise"):
        NoticeContext(sender="a@b", sender_name="x", web_base="https://x", exercise_note="d")


def test_all_clear_without_a_chain_is_refused():
    state = ZoneState(level=1, since=T0, active=True)
    decision = decide(state, {"peak_depth_m": 0.0, "flooded_share": 0.0}, T0 + HOUR, LEVELS,
                      ZonePolicy())
    assert decision.action == "all_clear"
    with pytest.raises(CapError, match="chain is empty"):
        build_notice(decision, ZONE, None, [], CTX, identifier="x1", expires=T0 + 2 * HOUR,
                     details={})


def test_reissue_of_a_steady_level_is_an_update():
    first = decide(ZoneState(), {"peak_depth_m": 0.7}, T0, LEVELS, ZonePolicy())
    steady = decide(first.state, {"peak_depth_m": 0.7}, T0 + HOUR, LEVELS, ZonePolicy())
    assert steady.action == "none"
    chain = [(CTX.sender, "fw-1", T0)]
    alert = build_notice(steady, ZONE, WARNING, chain, CTX, identifier="fw-2",
                         expires=T0 + 13 * HOUR, details={})
    assert alert.msg_type == "Update" and alert.references == chain
    assert "remains in force" in alert.infos[0].description


def test_mismatched_level_and_bad_expiry_are_refused():
    decision = decide(ZoneState(), {"peak_depth_m": 0.7}, T0, LEVELS, ZonePolicy())
    with pytest.raises(CapError, match="rank 3"):
        build_notice(decision, ZONE, SEVERE, [], CTX, identifier="a", expires=T0 + HOUR,
                     details={})
    with pytest.raises(CapError, match="effective is after expires"):
        build_notice(decision, ZONE, WARNING, [], CTX, identifier="a", expires=T0 - HOUR,
                     details={})


@pytest.mark.parametrize("onset", ["2026-03-14T08:00:00+00:00", T0 + 2 * HOUR])
def test_onset_detail_becomes_cap_onset(onset):
    decision = decide(ZoneState(), {"peak_depth_m": 0.7}, T0, LEVELS, ZonePolicy())
    alert = build_notice(decision, ZONE, WARNING, [], CTX, identifier="a", expires=T0 + HOUR,
                         details={"onset": onset, "peak_time": T0 + 3 * HOUR, "note": ""})
    info = alert.infos[0]
    assert format_cap_time(info.onset) == "2026-03-14T08:00:00+00:00"
    assert info.parameters["floodwarn:peakTime"] == "2026-03-14T09:00:00+00:00"
    assert "floodwarn:note" not in info.parameters  # empty details are left out
    assert "around 2026-03-14T09:00:00+00:00" in info.description


@pytest.mark.parametrize("onset", ["Sat 14 Mar 08:00 UTC", "2026-03-14T08:00:00"])
def test_onset_must_be_an_aware_iso_time(onset):
    decision = decide(ZoneState(), {"peak_depth_m": 0.7}, T0, LEVELS, ZonePolicy())
    with pytest.raises(CapError, match="onset"):
        build_notice(decision, ZONE, WARNING, [], CTX, identifier="a", expires=T0 + HOUR,
                     details={"onset": onset})


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("peak_depth_m", "floodwarn:peakDepth_m"),
        ("model_run", "floodwarn:modelRun"),
        ("exceedance_probability", "floodwarn:exceedanceProbability"),
        ("time_to_peak_h", "floodwarn:timeToPeak_h"),
        ("thresholds", "floodwarn:thresholds"),
        ("layer:EC:1.0:Alert_Type", "layer:EC:1.0:Alert_Type"),
    ],
)
def test_parameter_names(key, name):
    assert parameter_name(key) == name


def test_notice_url_quotes_the_identifier():
    assert notice_url("https://x.org/", "a/b c") == "https://x.org/notices/a%2Fb%20c.xml"
