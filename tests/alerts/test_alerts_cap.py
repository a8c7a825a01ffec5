"""CAP 1.2 writer and reader: times, rules the XSD cannot check, real samples."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alerts_testdata import CAP_DIR, T0, assert_schema_valid

from alerts.cap import (
    CapAlert,
    CapArea,
    CapInfo,
    format_cap_time,
    parse_cap,
    parse_cap_time,
    reference_string,
    to_xml,
    validate_alert,
)
from alerts.errors import CapError

SQUARE = [(51.5, -0.12), (51.5, -0.10), (51.52, -0.10), (51.52, -0.12)]


def sample_alert(**changes) -> CapAlert:
    info = CapInfo(
        language="en-GB", category="Met", event="Flood", urgency="Expected",
        severity="Severe", certainty="Likely", response_type="Prepare",
        headline="Flood Warning for Riverside", description="Why: depth.",
        instruction="Move upstairs.", web="https://fw.example.org/notices/a1.xml",
        effective=T0, onset=T0 + timedelta(hours=3), expires=T0 + timedelta(hours=12),
        sender_name="Riverside Flood Service", contact="0100 000 000",
        event_codes={"floodwarn:level": "warning"},
        parameters={"floodwarn:modelRun": "run-1"},
        areas=[CapArea("Riverside", [SQUARE], {"floodwarn:zone": "RIV1"})],
    )
    alert = CapAlert(
        identifier="fw-RIV1-1", sender="floodwarn@example.org", sent=T0, status="Actual",
        msg_type="Alert", infos=[info],
    )
    return dataclasses.replace(alert, **changes)


def sample(name: str) -> bytes:
    path = CAP_DIR / name
    if not path.is_file():
        pytest.skip(f"CAP sample {name} not found in {CAP_DIR} (the ../shared standards pack)")
    return path.read_bytes()


# --------------------------------------------------------------------------- times


def test_format_cap_time_has_offset_and_no_fraction():
    dt = datetime(2026, 3, 14, 6, 0, 0, 123456, tzinfo=UTC)
    assert format_cap_time(dt) == "2026-03-14T06:00:00-00:00"  # CAP 1.2 3.3.2: UTC is -00:00
    eastern = timezone(timedelta(hours=-5))
    assert format_cap_time(datetime(2026, 3, 14, 1, tzinfo=eastern)) == "2026-03-14T01:00:00-05:00"


def test_format_cap_time_rejects_naive():
    with pytest.raises(ValueError, match="time zone"):
        format_cap_time(datetime(2026, 3, 14, 6))


@pytest.mark.parametrize(
    "text", ["2020-02-16T23:01:13Z", "2020-02-16T23:01:13.5+00:00", "2020-02-16 23:01:13+00:00",
             "2020-02-16T23:01:13"],
)
def test_parse_cap_time_is_strict(text):
    with pytest.raises(CapError):
        parse_cap_time(text)


def test_parse_cap_time_accepts_minus_zero():
    assert parse_cap_time("2020-02-16T23:01:13-00:00") == datetime(
        2020, 2, 16, 23, 1, 13, tzinfo=UTC
    )


def test_reference_string():
    refs = [("a@x.org", "id-1", T0), ("a@x.org", "id-2", T0 + timedelta(minutes=5))]
    assert reference_string(refs) == (
        "a@x.org,id-1,2026-03-14T06:00:00-00:00 a@x.org,id-2,2026-03-14T06:05:00-00:00"
    )


# --------------------------------------------------------------------------- writing


def test_written_alert_is_schema_valid_and_ordered(cap_schema):
    xml = to_xml(sample_alert(note="n", codes=["c1"]))
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert b'xmlns="urn:oasis:names:tc:emergency:cap:1.2"' in xml
    assert_schema_valid(cap_schema, xml)
    update = sample_alert(msg_type="Update", references=[("floodwarn@example.org", "fw-0", T0)])
    assert_schema_valid(cap_schema, to_xml(update))
    text = to_xml(update).decode()
    assert text.index("<scope>") < text.index("<references>") < text.index("<info>")


def test_written_times_have_no_fraction_and_no_z():
    alert = sample_alert(sent=T0.replace(microsecond=999))
    text = to_xml(alert).decode()
    times = re.findall(r"<(sent|effective|onset|expires)>([^<]+)<", text)
    assert len(times) == 4
    for _, value in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", value)


def test_polygon_is_closed_and_rounded():
    area = CapArea("Riverside", [[(51.1234567, -0.1), (51.2, -0.1), (51.2, -0.2)]])
    ring = area.polygons[0]
    assert ring[0] == ring[-1] == (51.123457, -0.1)
    assert len(ring) == 4
    text = to_xml(sample_alert(infos=[dataclasses.replace(sample_alert().infos[0], areas=[area])]))
    assert b"<polygon>51.123457,-0.1 51.2,-0.1 51.2,-0.2 51.123457,-0.1</polygon>" in text


@pytest.mark.parametrize(
    "points", [[(51.0, 0.0), (51.1, 0.0), (51.0, 0.0)], [(51.0, 0.0), (51.1, 0.0)]],
)
def test_polygon_needs_four_closed_pairs(points):
    with pytest.raises(CapError, match="at least 4"):
        CapArea("x", [points])


def test_polygon_rejects_lon_lat_order():
    with pytest.raises(CapError, match="latitude first"):
        CapArea("x", [[(151.0, 0.0), (152.0, 0.0), (152.0, 1.0)]])  # (lon, lat) by mistake


@pytest.mark.parametrize("bad", ["fw RIV1", "fw,RIV1", "fw<1", "fw&1", ""])
def test_identifier_and_sender_tokens(bad):
    with pytest.raises(CapError, match="spaces, commas"):
        to_xml(sample_alert(identifier=bad))
    with pytest.raises(CapError, match="spaces, commas"):
        to_xml(sample_alert(sender=bad or "a b"))


@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
def test_update_and_cancel_need_references(msg_type):
    with pytest.raises(CapError, match="must reference"):
        to_xml(sample_alert(msg_type=msg_type))


def test_validator_reports_every_problem_at_once():
    info = dataclasses.replace(sample_alert().infos[0], severity="High", urgency="Soon",
                               effective=T0 + timedelta(days=2))
    alert = sample_alert(status="Live", msg_type="Update", infos=[info])
    with pytest.raises(CapError) as caught:
        validate_alert(alert)
    message = str(caught.value)
    for expected in ("status 'Live'", "must reference", "severity 'High'", "urgency 'Soon'",
                     "effective is after expires"):
        assert expected in message


def test_public_alert_needs_info():
    with pytest.raises(CapError, match="at least one <info>"):
        to_xml(sample_alert(infos=[]))


def test_naive_time_in_alert_is_reported():
    with pytest.raises(CapError, match="sent"):
        to_xml(sample_alert(sent=datetime(2026, 3, 14, 6)))


def test_round_trip_of_our_own_alert():
    alert = sample_alert(msg_type="Update", references=[("floodwarn@example.org", "fw-0", T0)],
                         note="drill", codes=["profile:x"])
    assert parse_cap(to_xml(alert)) == alert


# --------------------------------------------------------------------------- real samples


EA_ALERT = "ea-severe-flood-warning-wainfleet.xml"
EA_CANCEL = "ea-severe-flood-warning-wainfleet-cancel.xml"
VALID_SAMPLES = [
    EA_ALERT, EA_CANCEL, "envcanada-thunderstorm-allclear.xml", "nsw-rfs-bushfire.xml",
    "nws-wcatwc-tsunami.xml", "oasis-spec-amber-alert.xml",
]


@pytest.mark.requires_shared
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("invalid-missing-identifier.xml", "no <identifier>"),
        ("invalid-sent-timestamp.xml", "no 'Z'"),
        ("invalid-severity.xml", "severity 'High'"),
    ],
)
def test_invalid_samples_are_rejected(name, message):
    with pytest.raises(CapError, match=re.escape(message)):
        parse_cap(sample(name))


@pytest.mark.requires_shared
@pytest.mark.parametrize("name", VALID_SAMPLES)
def test_real_samples_round_trip(name, cap_schema):
    alert = parse_cap(sample(name))
    xml = to_xml(alert)
    assert_schema_valid(cap_schema, xml)
    assert parse_cap(xml) == alert


@pytest.mark.requires_shared
def test_ea_cancel_references_the_severe_warning():
    warning = parse_cap(sample(EA_ALERT))
    cancel = parse_cap(sample(EA_CANCEL))
    assert warning.msg_type == "Alert" and cancel.msg_type == "Cancel"
    assert cancel.references == [(warning.sender, warning.identifier, warning.sent)]
    assert cancel.references == [(
        "www.gov.uk/environment-agency", "50385fcb0ab7aa447bbd46d848ce8466E",
        datetime(2020, 2, 16, 23, 1, 13, tzinfo=UTC),
    )]
    info = warning.infos[0]
    assert (info.severity, info.urgency, info.certainty) == ("Severe", "Immediate", "Likely")
    assert info.areas[0].geocodes == {"TargetAreaCode": "053FWFSTEEP4"}
    assert len(info.areas[0].polygons[0]) == 29


@pytest.mark.requires_shared
def test_multi_valued_fields_survive():
    nsw = parse_cap(sample("nsw-rfs-bushfire.xml"))
    assert nsw.infos[0].categories == ("Fire", "Met")
    assert nsw.infos[0].areas[0].circles == ["-35.3888,147.0598 25.0"]
    canada = parse_cap(sample("envcanada-thunderstorm-allclear.xml"))
    assert [i.language for i in canada.infos] == ["en-CA", "fr-CA"]
    assert len(canada.references) == 2
