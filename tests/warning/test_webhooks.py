"""Twilio webhooks: signatures (against published vectors), delivery status, inbound SMS."""

from __future__ import annotations

import itertools

import json
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from warning.errors import ConfigError
from warning.storage import (
    AlertRow,
    AuditRow,
    Base,
    DeliveryRow,
    OutboxRow,
    ReportRow,
    Run,
    Store,
    Subscriber,
)
from warning.subscribers import PhoneVault, SubscriberRegistry
from warning.webhooks import INBOUND_PATH, STATUS_PATH, make_router

# ../shared/notes/twilio.md (b): vector 1 is the SDK's own unit-test vector, vector 2
# an SMS status callback for this project; both reproduced there by a hand-rolled HMAC.
VECTOR_1 = ("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
            {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
             "From": "+14158675309", "To": "+18005551212"},
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
TOKEN = "test_auth_token_0123456789abcdef"
BASE = "https://alerts.example.org"
SID_1 = "SM" + "1" * 32
VECTOR_2_PARAMS = {
    "AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "From": "+15005550006",
    "MessageSid": SID_1, "MessageStatus": "delivered", "SmsSid": SID_1, "SmsStatus": "delivered",
    "To": "+15558675310",
}
VECTOR_2 = (TOKEN, f"{BASE}/twilio/sms-status", VECTOR_2_PARAMS, "rVXkuEu5LcLGzHap2pdShIAxFjY=")

ZONES = {"MB-TOWN": "Millbrook town centre", "MB-WESTFORD": "Westford", "SB-LANE": "Sandbrook Lane"}
SENDER = "Millbrook Flood Warnings"
RESIDENT = "+447700900123"
OTHER = "+447700900456"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TWILIO_STOP = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def hooks(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "webhook-tests-secret-key")
    monkeypatch.delenv("FLOODWARN_SECRET_KEY_FILE", raising=False)
    store = Store(f"sqlite:///{tmp_path}/t.db")
    vault = PhoneVault.from_env()
    clock = Clock(NOW)
    app = FastAPI()
    app.include_router(make_router(store, auth_token=TOKEN, public_base_url=BASE + "/", vault=vault,
                                   zones=ZONES, sender_name=SENDER, clock=clock))
    with TestClient(app) as client:
        yield SimpleNamespace(store=store, vault=vault, registry=SubscriberRegistry(store, vault),
                              client=client, clock=clock)
    store.dispose()


def sign(params: dict[str, str], path: str, token: str = TOKEN, base: str = BASE) -> str:
    return RequestValidator(token).compute_signature(base + path, params)


def post(h, path: str, params: dict[str, str], *, signature: str | None = None):
    headers = {"X-Twilio-Signature": signature if signature is not None else sign(params, path)}
    return h.client.post(path, data=params, headers=headers)


def status(h, sid: str, state: str, *, code: int | None = None, to: str = RESIDENT):
    params = {"AccountSid": "AC" + "0" * 32, "MessageSid": sid, "MessageStatus": state,
              "SmsSid": sid, "SmsStatus": state, "From": "+15005550006", "To": to}
    if code is not None:
        params["ErrorCode"] = str(code)
    return post(h, STATUS_PATH, params)


_SIDS = itertools.count(1)


def sms(h, body: str, phone: str = RESIDENT, sid: str | None = None):
    """A resident's text, each with its own MessageSid unless one is given (Twilio gives
    every message its own; the same sid again is a replay)."""
    sid = sid or f"SM{next(_SIDS):032x}"
    params = {"AccountSid": "AC" + "0" * 32, "MessageSid": sid, "SmsMessageSid": sid,
              "From": phone, "To": "+15005550006", "Body": body, "NumMedia": "0"}
    return post(h, INBOUND_PATH, params)


def message_of(resp) -> str:
    """The <Message> text of a TwiML reply ("" for an empty <Response/>)."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/xml")
    assert resp.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response')
    text = resp.text
    if "<Message>" not in text:
        return ""
    return text.split("<Message>", 1)[1].split("</Message>", 1)[0]


def snapshot(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, to show a request changed nothing."""
    with store.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(t.select())]
                for t in Base.metadata.sorted_tables}


def audits(store: Store, event: str | None = None) -> list[AuditRow]:
    with store.session() as s:
        q = select(AuditRow).order_by(AuditRow.id)
        if event:
            q = q.where(AuditRow.event == event)
        return list(s.scalars(q))


def delivery(store: Store, sid: str) -> DeliveryRow | None:
    with store.session() as s:
        return s.get(DeliveryRow, sid)


def subscriber(h, phone: str = RESIDENT) -> Subscriber | None:
    return h.registry.find(phone)


def add_outbox(store: Store, subscriber_id: int, provider_id: str, zone: str = "MB-TOWN") -> int:
    """An alert and one sent outbox row for ``subscriber_id`` carrying Twilio's sid."""
    with store.session.begin() as s:
        s.merge(Run(id="run-1", at=NOW, scope="live", forecast_issued=None))
        s.flush()
        ident = f"alert-{provider_id}"
        s.add(AlertRow(identifier=ident, zone=zone, scope="live", run_id="run-1", level=2,
                       level_name="warning", msg_type="Alert", status="Actual", sent=NOW,
                       expires=NOW + timedelta(hours=6), cap_path="x.xml",
                       headline="Flood warning"))
        s.flush()
        row = OutboxRow(key=f"{ident}:{subscriber_id}:sms", alert_identifier=ident,
                        subscriber_id=subscriber_id, channel="sms", zone=zone, body="FLOOD WARNING",
                        state="sent", sent_at=NOW, provider_id=provider_id)
        s.add(row)
        s.flush()
        return row.id


def clear_forms(number: str) -> list[str]:
    """Ways a number could leak: E.164, without '+', national digits, UK national form."""
    return [number, number.lstrip("+"), number[3:], "0" + number[3:]]


# --------------------------------------------------------------------------- signatures

@pytest.mark.parametrize("vector", [VECTOR_1, VECTOR_2], ids=["sdk-unit-test", "status-callback"])
def test_published_signature_vectors(vector):
    token, url, params, expected = vector
    validator = RequestValidator(token)
    assert validator.compute_signature(url, params) == expected
    assert validator.validate(url, params, expected)
    tampered = dict(params, To="+18005551213")
    assert not validator.validate(url, tampered, expected)
    assert not RequestValidator("wrong").validate(url, params, expected)


def test_status_route_accepts_the_second_vector_exactly(hooks):
    # The test client calls http://testserver/...: only the public URL makes this valid.
    resp = hooks.client.post(STATUS_PATH, data=VECTOR_2_PARAMS,
                             headers={"X-Twilio-Signature": VECTOR_2[3]})
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    row = delivery(hooks.store, SID_1)
    assert (row.status, row.error_code, row.outbox_id) == ("delivered", None, None)
    [event] = audits(hooks.store, "delivery")
    assert event.detail == {"message_sid": SID_1, "status": "delivered", "previous": None,
                            "error_code": None, "outbox_id": None}


@pytest.mark.parametrize("case", ["tampered", "wrong-token", "missing", "internal-url", "garbage",
                                  "sha256-scheme"])
def test_bad_signatures_are_refused_and_change_nothing(hooks, case, caplog):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    before = snapshot(hooks.store)
    params = dict(VECTOR_2_PARAMS)
    headers = {"X-Twilio-Signature": VECTOR_2[3]}
    if case == "tampered":
        params["MessageStatus"] = "failed"
    elif case == "wrong-token":
        headers["X-Twilio-Signature"] = sign(params, STATUS_PATH, token="not-the-token")
    elif case == "missing":
        headers = {}
    elif case == "internal-url":
        headers["X-Twilio-Signature"] = sign(params, STATUS_PATH, base="http://testserver")
    elif case == "garbage":
        headers["X-Twilio-Signature"] = "not base64 at all"
    elif case == "sha256-scheme":
        headers["X-Twilio-Webhooks-Signature-Settings"] = "key=KS123,algorithm=HMAC_SHA256"
    with caplog.at_level(logging.WARNING, logger="warning.webhooks"):
        resp = hooks.client.post(STATUS_PATH, data=params, headers=headers)
    assert resp.status_code == 403
    assert resp.text.startswith("forbidden: ")
    assert snapshot(hooks.store) == before
    assert "refused" in caplog.text


def test_inbound_stop_with_a_bad_signature_is_refused(hooks, caplog):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    before = snapshot(hooks.store)
    params = {"MessageSid": "SM" + "b" * 32, "From": RESIDENT, "To": "+15005550006", "Body": "STOP"}
    with caplog.at_level(logging.DEBUG):
        signed_for_start = sign(dict(params, Body="START"), INBOUND_PATH)
        resp = post(hooks, INBOUND_PATH, params, signature=signed_for_start)
    assert resp.status_code == 403
    assert snapshot(hooks.store) == before
    assert subscriber(hooks).opted_out_at is None
    for form in clear_forms(RESIDENT):
        assert form not in caplog.text and form not in resp.text


def test_query_string_is_part_of_the_signed_url(hooks):
    params = dict(VECTOR_2_PARAMS)
    good = RequestValidator(TOKEN).compute_signature(f"{BASE}{STATUS_PATH}?site=demo", params)
    headers = {"X-Twilio-Signature": good}
    resp = hooks.client.post(f"{STATUS_PATH}?site=demo", data=params, headers=headers)
    assert resp.status_code == 204
    resp = hooks.client.post(f"{STATUS_PATH}?site=other", data=params, headers=headers)
    assert resp.status_code == 403


def test_router_configuration_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "k")
    store = Store(f"sqlite:///{tmp_path}/c.db")
    vault = PhoneVault.from_env()
    kwargs = {"auth_token": TOKEN, "public_base_url": BASE, "vault": vault, "zones": ZONES,
              "sender_name": SENDER}
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        make_router(store, **{**kwargs, "auth_token": ""})
    with pytest.raises(ConfigError, match="public_base_url"):
        make_router(store, **{**kwargs, "public_base_url": "alerts.example.org"})
    with pytest.raises(ConfigError, match="differ only in case"):
        make_router(store, **{**kwargs, "zones": {"A-1": "a", "a-1": "b"}})
    store.dispose()


# --------------------------------------------------------------------------- status callbacks

def test_status_moves_forward_only(hooks):
    sid = "SM" + "2" * 32
    for state in ("queued", "sent", "delivered"):
        assert status(hooks, sid, state).status_code == 204
    assert delivery(hooks.store, sid).status == "delivered"
    n_audit = len(audits(hooks.store))
    before = snapshot(hooks.store)
    for late in ("sent", "sending", "queued", "failed", "delivered"):  # late, older or repeated
        assert status(hooks, sid, late).status_code == 204
    assert snapshot(hooks.store) == before
    assert len(audits(hooks.store)) == n_audit
    assert [a.detail["status"] for a in audits(hooks.store, "delivery")] == \
        ["queued", "sent", "delivered"]


def test_sending_after_sent_is_ignored_and_duplicates_are_idempotent(hooks):
    sid = "SM" + "3" * 32
    assert status(hooks, sid, "sent").status_code == 204
    before = snapshot(hooks.store)
    assert status(hooks, sid, "sending").status_code == 204
    assert status(hooks, sid, "sent").status_code == 204
    assert snapshot(hooks.store) == before
    assert delivery(hooks.store, sid).status == "sent"
    hooks.clock.now = NOW + timedelta(minutes=1)
    assert status(hooks, sid, "undelivered", code=30003).status_code == 204
    row = delivery(hooks.store, sid)
    assert (row.status, row.error_code, row.updated) == \
        ("undelivered", 30003, NOW + timedelta(minutes=1))


def test_status_links_the_outbox_row(hooks):
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    sid = "SM" + "4" * 32
    outbox_id = add_outbox(hooks.store, sub_id, sid)
    assert status(hooks, sid, "delivered").status_code == 204
    assert delivery(hooks.store, sid).outbox_id == outbox_id
    [event] = audits(hooks.store, "delivery")
    assert event.zone == "MB-TOWN" and event.detail["outbox_id"] == outbox_id


def test_21610_failure_opts_the_subscriber_out(hooks):
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    sid = "SM" + "5" * 32
    add_outbox(hooks.store, sub_id, sid)
    assert status(hooks, sid, "failed", code=21610).status_code == 204
    sub = subscriber(hooks)
    assert sub.opted_out_at == NOW
    assert sub.unreachable is None
    [event] = audits(hooks.store, "opt_out")
    assert event.detail == {"subscriber_id": sub_id, "source": "twilio 21610"}
    # a repeated callback neither moves the opt-out time nor logs it again
    hooks.clock.now = NOW + timedelta(hours=1)
    assert status(hooks, sid, "failed", code=21610).status_code == 204
    assert subscriber(hooks).opted_out_at == NOW
    assert len(audits(hooks.store, "opt_out")) == 1


def test_21610_without_outbox_row_uses_the_to_number(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    assert status(hooks, "SM" + "6" * 32, "undelivered", code=21610, to=RESIDENT).status_code == 204
    assert subscriber(hooks).opted_out_at == NOW


@pytest.mark.parametrize("code,reason", [(21211, "21211 invalid 'To' phone number"),
                                         (21614, "21614 'To' number is not a mobile number"),
                                         (30005, "30005 unknown or inactive destination"),
                                         (30006, "30006 landline or unreachable carrier")])
def test_permanent_errors_mark_the_subscriber_unreachable(hooks, code, reason):
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    sid = "SM" + "7" * 32
    add_outbox(hooks.store, sub_id, sid)
    assert status(hooks, sid, "failed", code=code).status_code == 204
    sub = subscriber(hooks)
    assert sub.unreachable == reason
    assert sub.opted_out_at is None
    [event] = audits(hooks.store, "unreachable")
    assert event.detail == {"subscriber_id": sub_id, "reason": reason, "message_sid": sid}


def test_temporary_errors_leave_the_subscriber_alone(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    assert status(hooks, "SM" + "8" * 32, "undelivered", code=30003).status_code == 204
    sub = subscriber(hooks)
    assert sub.unreachable is None and sub.opted_out_at is None


def test_malformed_status_callbacks_get_400(hooks):
    before = snapshot(hooks.store)
    cases = [
        ({"MessageStatus": "delivered"}, "missing form parameter MessageSid"),
        ({"MessageSid": SID_1}, "missing form parameter MessageStatus"),
        ({"MessageSid": SID_1, "MessageStatus": "exploded"}, "not an SMS delivery status"),
        ({"MessageSid": SID_1, "MessageStatus": "failed", "ErrorCode": "abc"}, "ErrorCode must be"),
        ({"MessageSid": "SM 1; drop table", "MessageStatus": "sent"}, "MessageSid must be"),
    ]
    for params, message in cases:
        resp = post(hooks, STATUS_PATH, params)
        assert resp.status_code == 400, params
        assert message in resp.text
    assert snapshot(hooks.store) == before


def test_inbound_statuses_are_acknowledged_but_not_stored(hooks):
    before = snapshot(hooks.store)
    assert status(hooks, SID_1, "received").status_code == 204
    assert snapshot(hooks.store) == before


# --------------------------------------------------------------------------- inbound SMS

def test_a_replayed_text_changes_nothing_and_gets_the_same_reply(hooks):
    """A signed request sent again with the same MessageSid (a provider retry, or a captured
    request replayed) is not acted on twice: a replayed STOP does not opt out a resident who
    has since texted START."""
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    stop_sid, start_sid = "SM" + "5" * 32, "SM" + "6" * 32
    assert sms(hooks, "STOP", sid=stop_sid).text == EMPTY_TWIML
    first = message_of(sms(hooks, "START", sid=start_sid))
    assert subscriber(hooks).opted_out_at is None
    # the STOP again, signed and valid, same sid: nothing changes
    assert sms(hooks, "STOP", sid=stop_sid).text == EMPTY_TWIML
    assert subscriber(hooks).opted_out_at is None
    # the START again: the same reply as the first time, no second opt-in event
    assert message_of(sms(hooks, "START", sid=start_sid)) == first
    assert len(audits(hooks.store, "opt_out")) == 1 and len(audits(hooks.store, "opt_in")) == 1
    assert [a.detail for a in audits(hooks.store, "inbound_replay")] == [
        {"message_sid": stop_sid, "kind": "stop"}, {"message_sid": start_sid, "kind": "start"}]
    # a report replayed is stored once
    rid = "SM" + "7" * 32
    sms(hooks, "REPORT water over the bridge", sid=rid)
    sms(hooks, "REPORT water over the bridge", sid=rid)
    with hooks.store.session() as s:
        assert s.scalar(select(func.count()).select_from(ReportRow)) == 1


def test_stop_opts_out_with_an_empty_reply_and_start_opts_back_in(hooks):
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    resp = sms(hooks, "STOP")
    assert resp.text == EMPTY_TWIML and message_of(resp) == ""
    assert subscriber(hooks).opted_out_at == NOW
    assert [a.detail for a in audits(hooks.store, "opt_out")] == \
        [{"subscriber_id": sub_id, "source": "sms STOP"}]

    reply = message_of(sms(hooks, "Start"))
    assert subscriber(hooks).opted_out_at is None
    assert "Millbrook town centre" in reply and "STOP" in reply
    assert [a.detail for a in audits(hooks.store, "opt_in")] == \
        [{"subscriber_id": sub_id, "source": "sms START"}]


@pytest.mark.parametrize("word", TWILIO_STOP)
@pytest.mark.parametrize("variant", [str.upper, str.lower, str.title, lambda w: f"  {w.lower()}. "])
def test_every_stop_synonym_opts_out(hooks, word, variant):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    resp = sms(hooks, variant(word))
    assert resp.text == EMPTY_TWIML
    assert subscriber(hooks).opted_out_at == NOW


def test_stop_from_an_unknown_number_is_audited(hooks):
    assert sms(hooks, "stop").text == EMPTY_TWIML
    assert hooks.registry.count() == 0
    [event] = audits(hooks.store, "opt_out")
    assert event.detail["subscriber_id"] is None and event.detail["known"] is False


def test_stop_with_more_words_is_not_an_opt_out(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    reply = message_of(sms(hooks, "stop please"))
    assert subscriber(hooks).opted_out_at is None
    assert "STOP on its own" in reply


def test_help_says_who_sends_and_how_to_stop(hooks):
    reply = message_of(sms(hooks, "help"))
    assert SENDER in reply and "STOP" in reply and "JOIN" in reply


def test_join_unknown_zone_names_the_valid_zones_and_adds_nobody(hooks):
    reply = message_of(sms(hooks, "JOIN riverside"))
    assert "riverside" in reply
    for code in ZONES:
        assert code in reply
    assert hooks.registry.count() == 0
    [event] = audits(hooks.store, "join")
    assert event.detail["applied"] is False and event.detail["problem"] == "unknown zone"


def test_join_known_zone_subscribes_with_consent(hooks):
    reply = message_of(sms(hooks, "join mb-town"))
    sub = subscriber(hooks)
    assert sub.zones == ["MB-TOWN"]
    assert (sub.consent_source, sub.consent_time, sub.language) == ("sms JOIN", NOW, "en")
    assert sub.opted_out_at is None
    assert "Millbrook town centre (MB-TOWN)" in reply and SENDER in reply
    [event] = audits(hooks.store, "join")
    assert event.zone == "MB-TOWN"
    assert event.detail["subscriber_id"] == sub.id and event.detail["new_subscriber"] is True
    # a second zone is added to the same subscriber
    message_of(sms(hooks, "JOIN SB-LANE"))
    assert subscriber(hooks).zones == ["MB-TOWN", "SB-LANE"]
    assert hooks.registry.count() == 1


def test_join_after_stop_clears_the_opt_out_and_keeps_the_language(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], language="es", consent_source="test")
    sms(hooks, "STOP")
    reply = message_of(sms(hooks, "JOIN MB-WESTFORD"))
    sub = subscriber(hooks)
    assert sub.opted_out_at is None
    assert sub.zones == ["MB-TOWN", "MB-WESTFORD"] and sub.language == "es"
    assert "START" in reply and "Westford" in reply and "recibirá" in reply
    assert len(audits(hooks.store, "opt_in")) == 1
    assert audits(hooks.store, "join")[0].detail["cleared_opt_out"] is True


def test_lang_es_sets_the_language_and_answers_in_spanish(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    reply = message_of(sms(hooks, "LANG es"))
    assert subscriber(hooks).language == "es"
    assert "español" in reply
    assert audits(hooks.store, "language")[-1].detail == {"subscriber_id": subscriber(hooks).id,
                                                          "language": "es"}
    assert "Avisos de inundación" in message_of(sms(hooks, "HELP"))


def test_lang_unsupported_or_unsubscribed(hooks):
    hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    reply = message_of(sms(hooks, "LANG fr"))
    assert "fr" in reply and "en, es" in reply
    assert subscriber(hooks).language == "en"
    reply = message_of(sms(hooks, "LANG es", phone=OTHER))
    assert "JOIN" in reply
    assert hooks.registry.find(OTHER) is None
    assert [a.detail["applied"] for a in audits(hooks.store, "language")] == [False, False]


def test_report_is_stored_with_zones_and_time(hooks):
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN", "SB-LANE"], consent_source="test")
    reply = message_of(sms(hooks, "REPORT  Water over the road at Mill Lane bridge "))
    assert "Thank you" in reply
    with hooks.store.session() as s:
        [report] = s.scalars(select(ReportRow)).all()
    assert (report.time, report.subscriber_id, report.zones, report.text) == \
        (NOW, sub_id, ["MB-TOWN", "SB-LANE"], "Water over the road at Mill Lane bridge")
    [event] = audits(hooks.store, "report")
    assert event.detail["report_id"] == report.id
    assert event.detail["zones"] == ["MB-TOWN", "SB-LANE"]


def test_report_from_an_unknown_number_is_kept(hooks):
    message_of(sms(hooks, "report car park flooded", phone=OTHER))
    with hooks.store.session() as s:
        [report] = s.scalars(select(ReportRow)).all()
    assert (report.subscriber_id, report.zones, report.text) == (None, [], "car park flooded")


def test_unknown_text_gets_the_list_of_commands(hooks):
    reply = message_of(sms(hooks, "is the river rising?"))
    for word in ("JOIN", "LANG", "REPORT", "HELP", "STOP"):
        assert word in reply
    [event] = audits(hooks.store, "inbound_unknown")
    assert event.detail["problem_code"] == "unknown_word" and "'is'" in event.detail["problem"]


def test_xml_special_characters_are_escaped(hooks):
    resp = sms(hooks, "JOIN a<b>&amp")
    assert "No zone a&lt;b&gt;&amp;amp." in resp.text


def test_malformed_inbound_gets_400(hooks, caplog):
    before = snapshot(hooks.store)
    base = {"MessageSid": "SM" + "c" * 32, "From": RESIDENT, "To": "+15005550006", "Body": "STOP"}
    with caplog.at_level(logging.DEBUG):
        for drop, message in (("From", "missing form parameter From"),
                              ("MessageSid", "missing form parameter MessageSid")):
            params = {k: v for k, v in base.items() if k != drop}
            resp = post(hooks, INBOUND_PATH, params)
            assert resp.status_code == 400 and message in resp.text
        resp = post(hooks, INBOUND_PATH, dict(base, From="call 0770 me"))
        assert resp.status_code == 400 and resp.text.startswith("From: not a phone number")
        resp = post(hooks, INBOUND_PATH, dict(base, From="+4477009001234567890"))
        assert resp.status_code == 400 and "From:" in resp.text
        assert "4477009001234567890" not in resp.text
    assert snapshot(hooks.store) == before
    assert "4477009001234567890" not in caplog.text


def test_no_phone_number_in_clear_in_logs_or_audit(hooks, caplog):
    caplog.set_level(logging.DEBUG)
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    for body in ("JOIN mb-westford", "join nowhere", "LANG es", "LANG xx",
                 "REPORT water at my door", "HELP", "what?", f"call {OTHER}", "STOP", "START"):
        sms(hooks, body)
    sms(hooks, "JOIN SB-LANE", phone=OTHER)
    sid = "SM" + "9" * 32
    add_outbox(hooks.store, sub_id, sid)
    status(hooks, sid, "failed", code=21610)
    status(hooks, "SM" + "d" * 32, "failed", code=30005, to=OTHER)
    status(hooks, "SM" + "e" * 32, "failed", code=21211, to="+447700900999")  # no such subscriber
    post(hooks, INBOUND_PATH, {"MessageSid": "SM" + "f" * 32, "From": RESIDENT, "Body": "STOP"},
         signature="bad")
    assert subscriber(hooks).opted_out_at is not None
    assert hooks.registry.find(OTHER).unreachable == "30005 unknown or inactive destination"
    assert "77******23" in caplog.text  # the flows did log, masked
    audit_text = json.dumps([a.detail for a in audits(hooks.store)])
    for number in (RESIDENT, OTHER, "+447700900999"):
        for form in clear_forms(number):
            assert form not in caplog.text, form
            assert form not in audit_text, form


def test_mounted_under_a_prefix_the_prefix_is_signed(hooks):
    app = FastAPI()
    app.include_router(make_router(hooks.store, auth_token=TOKEN, public_base_url=BASE,
                                   vault=hooks.vault, zones=ZONES, sender_name=SENDER),
                       prefix="/hooks")
    params = dict(VECTOR_2_PARAMS, MessageSid="SM" + "4" * 32)
    with TestClient(app) as client:
        unprefixed = {"X-Twilio-Signature": sign(params, STATUS_PATH)}
        resp = client.post(f"/hooks{STATUS_PATH}", data=params, headers=unprefixed)
        assert resp.status_code == 403
        prefixed = {"X-Twilio-Signature": sign(params, f"/hooks{STATUS_PATH}")}
        assert client.post(f"/hooks{STATUS_PATH}", data=params, headers=prefixed).status_code == 204


def test_late_outbox_link(hooks):
    """A callback can beat the sender's commit of the sid; a later callback links the row."""
    sub_id = hooks.registry.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    sid = "SM" + "0" * 32
    assert status(hooks, sid, "sent").status_code == 204
    assert delivery(hooks.store, sid).outbox_id is None
    outbox_id = add_outbox(hooks.store, sub_id, sid)
    assert status(hooks, sid, "failed", code=30005).status_code == 204
    assert delivery(hooks.store, sid).outbox_id == outbox_id
    assert subscriber(hooks).unreachable == "30005 unknown or inactive destination"
