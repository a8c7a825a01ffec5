"""Delivery channels: masking, the file channel, and Twilio against a local fake API."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime

import pytest
from twilio_fake import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, STOPPED_NUMBER, FakeTwilio

from alerts.channels import (
    CHANNELS,
    Channel,
    FileChannel,
    OutgoingMessage,
    SendResult,
    TwilioChannel,
    get_channel,
    mask_phone,
)
from alerts.errors import DeliveryError

RESIDENT = "+447700900121"
FROM = "+15005550006"
BODY = "FLOOD WARNING for Riverside. Move upstairs. Details: https://fw.example.org/w/1"


def message(to: str = RESIDENT, key: str = "alert-1:sub-1") -> OutgoingMessage:
    return OutgoingMessage(to=to, body=BODY, key=key)


def clear_forms(number: str) -> list[str]:
    """Ways a number could leak: E.164, without '+', national part."""
    return [number, number.lstrip("+"), number[3:]]


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+447700900121", "+4477******21"),
        ("+15555550123", "+155******23"),
        ("+33612345678", "+3361*****78"),
        ("+2348012345678", "+23480******78"),
        ("+7 912 345-67-89", "+791******89"),
        ("07700900121", "07*******21"),
        ("+44123", "+44***"),
        ("", "***"),
    ],
)
def test_mask_phone(number, masked):
    assert mask_phone(number) == masked


def test_outgoing_message_checks_e164_without_leaking_it():
    with pytest.raises(ValueError) as caught:
        OutgoingMessage(to="07700900121", body="x", key="k")
    assert "07700900121" not in str(caught.value)
    assert RESIDENT not in repr(message())


# --------------------------------------------------------------------------- registry


def test_registry_returns_channels_by_name(tmp_path):
    channel = get_channel("file", path=tmp_path / "out.jsonl")
    assert isinstance(channel, FileChannel) and isinstance(channel, Channel)
    assert channel.name == "file"
    assert set(CHANNELS) == {"file", "twilio"}


def test_registry_lists_valid_names():
    with pytest.raises(ValueError, match="unknown channel 'pigeon'; valid channels: file, twilio"):
        get_channel("pigeon")


# --------------------------------------------------------------------------- file


def test_file_channel_writes_masked_json_lines(tmp_path, caplog):
    path = tmp_path / "sub" / "sms.jsonl"
    channel = FileChannel(path, clock=lambda: datetime(2026, 3, 14, 6, 0, tzinfo=UTC))
    with caplog.at_level(logging.DEBUG):
        first = channel.send(message())
        channel.send(OutgoingMessage(to="+15555550123", body="€ " + BODY, key="alert-1:sub-2"))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {
        "time": "2026-03-14T06:00:00+00:00", "key": "alert-1:sub-1", "to_masked": "+4477******21",
        "body": BODY, "segments": 1, "encoding": "GSM-7",
    }
    assert lines[1]["to_masked"] == "+155******23" and lines[1]["body"].startswith("€")
    assert first == SendResult(provider_id=first.provider_id, status="sent")
    assert first.provider_id.startswith("FILE")
    written = path.read_text(encoding="utf-8") + caplog.text
    for number in ("+447700900121", "+15555550123"):
        for form in clear_forms(number):
            assert form not in written


def test_file_channel_failure_is_a_transient_delivery_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(DeliveryError) as caught:
        FileChannel(blocker / "sms.jsonl").send(message())
    assert caught.value.permanent is False


# --------------------------------------------------------------------------- twilio


@pytest.fixture
def fake():
    with FakeTwilio() as server:
        yield server


def twilio(fake: FakeTwilio, **kwargs) -> TwilioChannel:
    settings = {"from_number": FROM, "base_url": fake.base_url, "timeout": 5, **kwargs}
    return TwilioChannel(fake.account_sid, fake.auth_token, **settings)


def test_twilio_sends_through_the_sdk(fake):
    channel = twilio(fake, status_callback="https://fw.example.org/twilio/status")
    result = channel.send(message())
    assert result.status == "queued"
    assert result.provider_id.startswith("SM") and len(result.provider_id) == 34
    request = fake.requests[-1]
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
    assert request.auth == (DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
    assert request.headers["User-Agent"].startswith("twilio-python/")
    assert request.form == {
        "To": RESIDENT, "From": FROM, "Body": BODY, "ValidityPeriod": "3600",
        "StatusCallback": "https://fw.example.org/twilio/status",
    }
    assert fake.messages[0]["sid"] == result.provider_id


def test_twilio_messaging_service(fake):
    channel = twilio(fake, from_number=None, messaging_service_sid="MG" + "1" * 32,
                     validity_period=600)
    assert channel.send(message()).status == "accepted"
    form = fake.requests[-1].form
    assert form["MessagingServiceSid"] == "MG" + "1" * 32 and "From" not in form
    assert form["ValidityPeriod"] == "600"


def test_twilio_stop_is_a_permanent_error_without_the_number(fake):
    with pytest.raises(DeliveryError) as caught:
        twilio(fake).send(message(to=STOPPED_NUMBER))
    error = caught.value
    assert (error.permanent, error.code) == (True, 21610)
    assert "Attempt to send to unsubscribed recipient" in str(error)
    assert all(form not in str(error) for form in clear_forms(STOPPED_NUMBER))
    assert error.__cause__ is None and error.__suppress_context__
    assert fake.messages == []


def test_twilio_opt_out_at_runtime(fake):
    channel = twilio(fake)
    channel.send(message())
    fake.opt_out(RESIDENT)
    with pytest.raises(DeliveryError, match="error 21610"):
        channel.send(message(key="alert-2:sub-1"))


@pytest.mark.parametrize(
    ("status", "code", "text", "permanent"),
    [
        (400, 21211, f"The 'To' number {RESIDENT} is not a valid phone number.", True),
        (400, 21614, "'To' number is not a valid mobile number", True),
        (400, 30006, "Landline or unreachable carrier", True),
        (429, 20429, "Too Many Requests", False),
        (500, None, "Internal error", False),
        (503, None, "Service unavailable", False),
    ],
)
def test_twilio_errors_are_classified(fake, status, code, text, permanent):
    fake.fail_next(status, code, text)
    with pytest.raises(DeliveryError) as caught:
        twilio(fake).send(message())
    assert (caught.value.permanent, caught.value.code) == (permanent, code)
    assert RESIDENT not in str(caught.value)


def test_twilio_wrong_credentials(fake):
    channel = TwilioChannel(fake.account_sid, "wrong-token", from_number=FROM,
                            base_url=fake.base_url)
    with pytest.raises(DeliveryError) as caught:
        channel.send(message())
    assert (caught.value.permanent, caught.value.code) == (False, 20003)


def test_twilio_network_error_is_transient():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = TwilioChannel(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, from_number=FROM,
                            base_url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(DeliveryError) as caught:
        channel.send(message())
    assert caught.value.permanent is False and caught.value.code is None
    assert RESIDENT not in str(caught.value)


def test_twilio_ignores_edge_and_region_from_the_environment(fake, monkeypatch):
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "f" * 32)
    assert twilio(fake).send(message()).status == "queued"
    assert fake.requests[-1].auth == (DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)


def test_twilio_via_registry_and_default_base_url(fake):
    channel = get_channel("twilio", account_sid=fake.account_sid, auth_token=fake.auth_token,
                          from_number=FROM, base_url=fake.base_url)
    assert channel.name == "twilio" and channel.send(message()).status == "queued"
    real = TwilioChannel("AC" + "0" * 32, "t", from_number=FROM)
    assert real.base_url == "https://api.twilio.com"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"account_sid": ""}, "account SID"),
        ({"from_number": None}, "from_number or messaging_service_sid"),
        ({"from_number": "5005550006"}, "E.164"),
        ({"validity_period": 0}, "validity_period"),
    ],
)
def test_twilio_settings_are_checked(kwargs, match):
    settings = {"account_sid": DEFAULT_ACCOUNT_SID, "auth_token": "t", "from_number": FROM}
    settings |= kwargs
    with pytest.raises(ValueError, match=match):
        TwilioChannel(settings.pop("account_sid"), settings.pop("auth_token"), **settings)


def test_fake_rejects_bad_requests(fake):
    import httpx

    url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    auth = (fake.account_sid, fake.auth_token)
    no_body = httpx.post(url, data={"To": RESIDENT, "From": FROM}, auth=auth)
    assert no_body.json()["code"] == 21602
    bad_to = httpx.post(url, data={"To": "12", "From": FROM, "Body": "x"}, auth=auth)
    assert bad_to.json()["code"] == 21211
    assert httpx.post(url, data={"To": RESIDENT, "Body": "x"}, auth=auth).status_code == 400
    assert httpx.post(url, data={"To": RESIDENT, "From": FROM, "Body": "x"}).status_code == 401
    created = httpx.post(url, data={"To": RESIDENT, "From": FROM, "Body": "x"}, auth=auth)
    assert created.status_code == 201
    sid = created.json()["sid"]
    fetched = httpx.get(url.replace("Messages.json", f"Messages/{sid}.json"), auth=auth)
    assert fetched.json()["sid"] == sid and fetched.json()["status"] == "queued"
