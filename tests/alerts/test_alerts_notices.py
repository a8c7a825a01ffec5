"""From decisions to CAP notices: a whole warning chain, drills, explanations, languages."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from alerts_testdata import ADVISORY, CAP_DIR, LEVELS, SEVERE, T0, WARNING, assert_schema_valid

from alerts.cap import CAP_NS, format_cap_time, parse_cap, to_xml
from alerts.errors import CapError
from alerts.levels import ZonePolicy, ZoneState, decide
from alerts.notices import (
    NOTICE_PHRASES,
    NoticeContext,
    ZoneInfo,
    build_notice,
    notice_html_url,
    notice_url,
    parameter_name,
)

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
    # a time given as text is written as CAP writes times: UTC as -00:00
    assert RUN["forecast_issued"] == "2026-03-14T05:30:00+00:00"
    assert info.parameters["floodwarn:forecastIssued"] == "2026-03-14T05:30:00-00:00"
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
    assert format_cap_time(info.onset) == "2026-03-14T08:00:00-00:00"
    assert info.parameters["floodwarn:peakTime"] == "2026-03-14T09:00:00-00:00"
    assert "floodwarn:note" not in info.parameters  # empty details are left out
    assert "around 2026-03-14T09:00:00-00:00" in info.description


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


# --------------------------------------------------------------------------- languages

BILINGUAL = dataclasses.replace(CTX, language=None, languages=("en", "es"))
CAP = f"{{{CAP_NS}}}"
STATUS_CONTEXTS = {
    "Actual": {},
    "Exercise": {"status": "Exercise", "exercise_note": "Drill Storm Dennis replay 2026-03"},
    "Test": {"status": "Test"},
}


def context(languages: tuple[str, ...], status: str) -> NoticeContext:
    return NoticeContext(
        sender=CTX.sender, sender_name=CTX.sender_name, web_base=CTX.web_base, run=RUN,
        contact=CTX.contact, languages=languages, **STATUS_CONTEXTS[status],
    )


def bilingual_chain(ctx: NoticeContext = BILINGUAL, *, levels=LEVELS):
    """Advisory -> Warning -> all-clear, with onset, in every language of ``ctx``."""
    series = [{"peak_depth_m": 0.2}, {"peak_depth_m": 0.82}, {"peak_depth_m": 0.0,
                                                               "flooded_share": 0.0}]
    state, chain, notices = ZoneState(), [], []
    for i, metrics in enumerate(series):
        now = T0 + i * HOUR + timedelta(microseconds=999_999)
        decision = decide(state, metrics, now, LEVELS, ZonePolicy(), zone=ZONE.code)
        state = decision.state
        level = next((lv for lv in LEVELS if lv.rank == decision.level), None)
        alert = build_notice(
            decision, ZONE, level, chain, ctx, identifier=f"fw-RIV1-{i + 1}",
            expires=now + timedelta(hours=12, microseconds=5),
            details={"peak_depth_m": metrics["peak_depth_m"], "peak_time": PEAK_TIME,
                     "onset": now + 2 * HOUR},
            levels=levels,
        )
        notices.append((decision, alert))
        chain = [*chain, (alert.sender, alert.identifier, alert.sent)]
    return notices


def test_context_languages_default_to_the_one_language():
    assert CTX.languages == ("en",) and CTX.language == "en"
    es = dataclasses.replace(CTX, language="es", languages=())
    assert es.languages == ("es",)
    assert BILINGUAL.language == "en" and BILINGUAL.languages == ("en", "es")
    assert NoticeContext(sender="a@b", sender_name="x", web_base="https://x",
                         language="es", languages=["es", "en"]).languages == ("es", "en")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"language": "es", "languages": ("en", "es")}, "must be the first"),
        ({"languages": ("en", "EN")}, "twice"),
        ({"languages": ("en", "es_ES")}, "RFC 3066"),
        ({"language": "english please"}, "RFC 3066"),
    ],
)
def test_context_rejects_bad_languages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoticeContext(sender="a@b", sender_name="x", web_base="https://x", **kwargs)


@pytest.mark.parametrize("status", ["Actual", "Exercise", "Test"])
@pytest.mark.parametrize("languages", [("en",), ("en", "es")])
def test_every_notice_is_schema_valid(cap_schema, languages, status):
    """Alert, Update and Cancel; one and two languages; Actual, Exercise and Test."""
    notices = bilingual_chain(context(languages, status))
    assert [a.msg_type for _, a in notices] == ["Alert", "Update", "Cancel"]
    for i, (_, alert) in enumerate(notices):
        xml = to_xml(alert)
        assert_schema_valid(cap_schema, xml)
        assert parse_cap(xml) == alert
        # Read the XML independently of parse_cap.
        root = ET.fromstring(xml)
        infos = root.findall(f"{CAP}info")
        assert [i.findtext(f"{CAP}language") for i in infos] == list(languages)
        assert root.findtext(f"{CAP}status") == status
        assert (root.findtext(f"{CAP}note") is not None) == (status == "Exercise")
        refs = (root.findtext(f"{CAP}references") or "").split()
        earlier = [f"{a.sender},{a.identifier},{format_cap_time(a.sent)}" for _, a in notices[:i]]
        assert refs == earlier  # every earlier message of the chain, oldest first


def test_cap_times_in_the_xml_text_are_whole_seconds_with_an_offset():
    for _, alert in bilingual_chain():
        text = to_xml(alert).decode()
        found = {tag: re.findall(rf"<{tag}>([^<]*)</{tag}>", text)
                 for tag in ("sent", "effective", "onset", "expires")}
        assert len(found["sent"]) == 1
        assert len(found["expires"]) == len(found["effective"]) == 2  # one per <info>
        if alert.msg_type != "Cancel":
            assert len(found["onset"]) == 2
        for values in found.values():
            for value in values:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", value), value


def test_infos_follow_the_languages_and_share_everything_but_texts():
    for _, alert in bilingual_chain():
        en, es = alert.infos
        assert (en.language, es.language) == ("en", "es")
        for name in ("category", "event", "response_type", "urgency", "severity", "certainty",
                     "web", "effective", "onset", "expires", "sender_name", "contact",
                     "event_codes", "parameters", "areas"):
            assert getattr(en, name) == getattr(es, name), name
        assert en.headline != es.headline
        assert en.description != es.description


def test_spanish_info_uses_level_translations_and_spanish_phrases():
    _, alert = bilingual_chain()[1]  # raise to Flood Warning: an Update
    es = alert.infos[1]
    assert es.headline == "Aviso de inundación para Riverside"
    assert es.instruction == WARNING.instruction_for("es")
    assert es.instruction != WARNING.instruction
    assert es.description.startswith("Se emite Aviso de inundación para Riverside.")
    assert "Motivo: profundidad máxima prevista 0,82 m ≥ 0,50 m" in es.description
    assert "Pico previsto: 0,82 m de profundidad" in es.description
    assert "ejecución del modelo 2026-03-14T05:00Z-hand-ens" in es.description
    en = alert.infos[0]
    assert en.headline == "Flood Warning for Riverside"
    assert "Why: forecast peak depth 0.82 m ≥ 0.50 m" in en.description


def test_spanish_all_clear_has_a_spanish_instruction():
    _, alert = bilingual_chain()[-1]
    en, es = alert.infos
    assert en.instruction == NOTICE_PHRASES["en"]["all_clear_instruction"]
    assert es.instruction == NOTICE_PHRASES["es"]["all_clear_instruction"]
    assert es.headline == "Ya no hay aviso de inundación en vigor para Riverside"
    assert es.response_type == "AllClear" and es.onset is None
    assert "Motivo: profundidad máxima prevista 0,00 m < 0,50 m" in es.description


def test_without_levels_the_why_stays_english_and_says_so():
    _, alert = bilingual_chain(levels=())[1]
    es = alert.infos[1]
    assert "Motivo (en inglés): forecast peak depth 0.82 m ≥ 0.50 m" in es.description
    assert es.headline == "Aviso de inundación para Riverside"  # the lead is still Spanish


def test_language_without_phrases_falls_back_to_english_but_keeps_its_tag():
    ctx = dataclasses.replace(CTX, language=None, languages=("en", "fr"))
    _, alert = bilingual_chain(ctx)[0]
    en, fr = alert.infos
    assert fr.language == "fr"
    assert fr.headline == en.headline == f"{ADVISORY.title} for Riverside"
    assert fr.instruction == ADVISORY.instruction
    assert fr.description == en.description


def test_exercise_and_test_mark_every_language():
    exercise = bilingual_chain(context(("en", "es"), "Exercise"))[0][1]
    assert [i.headline.split(":")[0] for i in exercise.infos] == ["EXERCISE", "SIMULACRO"]
    assert exercise.infos[1].description.startswith(
        "SIMULACRO (Drill Storm Dennis replay 2026-03): esto es un simulacro"
    )
    test = bilingual_chain(context(("en", "es"), "Test"))[0][1]
    assert test.note is None
    assert [i.headline.split(":")[0] for i in test.infos] == ["TEST", "PRUEBA"]


def test_notice_html_url_sits_beside_the_cap_file():
    assert notice_html_url("https://x.org/", "a/b c") == "https://x.org/notices/a%2Fb%20c.html"


# --------------------------------------------------------------------------- schema oracle


@pytest.mark.requires_shared
@pytest.mark.parametrize(
    "name",
    ["invalid-missing-identifier.xml", "invalid-sent-timestamp.xml", "invalid-severity.xml"],
)
def test_invalid_samples_fail_the_same_schema_check(cap_schema, name):
    """The XSD check used above is not vacuous: it rejects the pack's invalid samples."""
    path = CAP_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found (the ../shared standards pack)")
    with pytest.raises(AssertionError):
        assert_schema_valid(cap_schema, path.read_bytes())
    with pytest.raises(CapError):
        parse_cap(path.read_bytes())


@pytest.mark.requires_shared
def test_a_valid_sample_passes_the_same_schema_check(cap_schema):
    path = CAP_DIR / "ea-severe-flood-warning-wainfleet.xml"
    if not path.is_file():
        pytest.skip(f"{path} not found (the ../shared standards pack)")
    assert_schema_valid(cap_schema, path.read_bytes())
