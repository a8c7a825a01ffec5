"""CAP 1.2 section 3.3.2: every time floodwarn writes in a notice is UTC written ``-00:00``
(never ``+00:00``, never ``Z``); readers take any offset."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alerts_testdata import LEVELS, T0, assert_schema_valid

from alerts.cap import (
    CAP_NS,
    format_cap_time,
    parse_cap,
    parse_cap_time,
    parse_references,
    reference_string,
    to_xml,
)
from alerts.errors import CapError
from alerts.levels import ZonePolicy, ZoneState, decide
from alerts.notices import NoticeContext, ZoneInfo, build_notice

CAP = f"{{{CAP_NS}}}"
ZONE = ZoneInfo(code="RIV1", name="Riverside",
                polygons=[[(32.75, -97.35), (32.75, -97.33), (32.77, -97.33), (32.77, -97.35)]])
# a run as warning.pipeline describes it: times as isoformat() text, with "+00:00"
RUN = {"model_run": "2026-03-14T05:00Z-hand-ens", "forecast_issued": "2026-03-14T05:30+00:00"}
CTX = NoticeContext(sender="floodwarn@riverside.example.org", sender_name="Riverside Flood Service",
                    web_base="https://floodwarn.example.org/", run=RUN, languages=("en", "es"))
ANY_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")
CAP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00")


def chain(peak_time=T0 + timedelta(hours=3), onset=T0 + timedelta(hours=2)):
    """Warning, severe, warning, all-clear for one zone: an Alert, Updates and a Cancel."""
    state, earlier, notices = ZoneState(), [], []
    for i, depth in enumerate((0.82, 1.4, 0.6, 0.0)):
        now = T0 + i * timedelta(hours=1) + timedelta(microseconds=250)
        metrics = {"peak_depth_m": depth, "exposed_people": 300 if depth > 1 else 0,
                   "flooded_share": 0.0, "observed_stage_m": 1.0}
        decision = decide(state, metrics, now, LEVELS, ZonePolicy(), zone=ZONE.code)
        state = decision.state
        level = next((lv for lv in LEVELS if lv.rank == decision.level), None)
        alert = build_notice(decision, ZONE, level, earlier, CTX, identifier=f"fw-{i}",
                             expires=now + timedelta(hours=12),
                             details={"peak_depth_m": depth, "peak_time": peak_time, "onset": onset})
        notices.append(alert)
        earlier = [*earlier, (alert.sender, alert.identifier, alert.sent)]
    return notices


def written_times(xml: bytes) -> list[tuple[str, str]]:
    """(where, text) of every time in a written notice: the time elements, each
    reference's sent time, and every parameter value that is a time."""
    root = ET.fromstring(xml)
    found = [("sent", root.findtext(f"{CAP}sent"))]
    for triple in (root.findtext(f"{CAP}references") or "").split():
        found.append(("references", triple.split(",")[2]))
    for info in root.findall(f"{CAP}info"):
        for tag in ("effective", "onset", "expires"):
            if info.findtext(f"{CAP}{tag}") is not None:
                found.append((tag, info.findtext(f"{CAP}{tag}")))
        for p in info.findall(f"{CAP}parameter"):
            value = p.findtext(f"{CAP}value") or ""
            if ANY_TIME.fullmatch(value):
                found.append((p.findtext(f"{CAP}valueName"), value))
    return found


def test_format_cap_time_writes_utc_as_minus_zero():
    assert format_cap_time(datetime(2026, 3, 14, 6, 0, 0, 999, tzinfo=UTC)) == "2026-03-14T06:00:00-00:00"
    # any zero offset is UTC, whatever the tzinfo object
    assert format_cap_time(datetime(2026, 3, 14, 6, tzinfo=timezone(timedelta(0), "GMT"))) == \
        "2026-03-14T06:00:00-00:00"
    # other offsets stay as they are, sign included
    assert format_cap_time(datetime(2026, 3, 14, 1, tzinfo=timezone(timedelta(hours=-5)))) == \
        "2026-03-14T01:00:00-05:00"
    assert format_cap_time(datetime(2026, 3, 14, 11, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))) == \
        "2026-03-14T11:30:00+05:30"


@pytest.mark.parametrize("peak_time", [T0 + timedelta(hours=3), "2026-03-14T09:00:00+00:00",
                                       "2026-03-14T09:00Z"])
def test_every_time_in_a_written_chain_is_minus_zero_and_schema_valid(cap_schema, peak_time):
    notices = chain(peak_time=peak_time)
    assert [a.msg_type for a in notices] == ["Alert", "Update", "Update", "Cancel"]
    for alert in notices:
        xml = to_xml(alert)
        assert_schema_valid(cap_schema, xml)
        times = written_times(xml)
        where = {w for w, _ in times}
        assert {"sent", "expires"} <= where
        for w, value in times:
            assert CAP_TIME.fullmatch(value), (alert.identifier, w, value)
        text = xml.decode().replace(RUN["model_run"], "")  # a run's name, not a time
        assert "+00:00" not in text and not re.search(r"\d\d:\d\dZ", text)
    update = to_xml(notices[2])
    assert {w for w, _ in written_times(update)} >= {
        "sent", "references", "effective", "onset", "expires", "floodwarn:peakTime",
        "floodwarn:forecastIssued"}
    refs = ET.fromstring(update).findtext(f"{CAP}references").split()
    assert refs == [f"floodwarn@riverside.example.org,fw-{i},2026-03-14T0{6 + i}:00:00-00:00" for i in (0, 1)]


def test_reader_takes_minus_zero_plus_zero_and_other_offsets():
    alert = chain()[2]
    xml = to_xml(alert).decode()
    assert parse_cap(xml.encode()) == alert
    in_time_elements = re.compile(r"<(sent|effective|onset|expires|references)>([^<]*)<")

    def rewrite(offset_text):
        return in_time_elements.sub(lambda m: f"<{m[1]}>{offset_text(m[2])}<", xml).encode()

    # what floodwarn wrote before, and other writers write: +00:00
    plus = rewrite(lambda text: text.replace("-00:00", "+00:00"))
    assert b"-00:00</sent>" not in plus and b"+00:00</sent>" in plus
    assert parse_cap(plus) == alert
    # the same instants in another offset
    minus_five = rewrite(lambda text: re.sub(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-00:00",
        lambda m: datetime.fromisoformat(m[0]).astimezone(timezone(timedelta(hours=-5))).isoformat(), text))
    assert b"-05:00</sent>" in minus_five
    assert parse_cap(minus_five) == alert
    for text in ("2026-03-14T06:00:00-00:00", "2026-03-14T06:00:00+00:00", "2026-03-14T01:00:00-05:00",
                 "2026-03-14T11:30:00+05:30"):
        assert parse_cap_time(text) == T0, text
        assert parse_cap_time(text).utcoffset() is not None
    mixed = "a@x.org,id-1,2026-03-14T06:00:00+00:00 a@x.org,id-2,2026-03-14T02:00:00-04:00"
    assert parse_references(mixed) == [("a@x.org", "id-1", T0), ("a@x.org", "id-2", T0)]
    assert reference_string(parse_references(mixed)) == \
        "a@x.org,id-1,2026-03-14T06:00:00-00:00 a@x.org,id-2,2026-03-14T02:00:00-04:00"


@pytest.mark.parametrize("text", ["2026-03-14T06:00:00Z", "2026-03-14T06:00:00", "2026-03-14T06:00:00.5-00:00"])
def test_reader_still_refuses_z_fractions_and_missing_offsets(text):
    with pytest.raises(CapError, match="-00:00"):
        parse_cap_time(text)
