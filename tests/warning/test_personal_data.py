"""Residents' phone numbers are personal data: never in a log line (the Twilio SDK's and
uvicorn's included), never stored inside a flood report, and erased with every trace on
request (DELETE by SMS, ``floodwarn subscribers delete``)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator
from typer.testing import CliRunner

from alerts.channels import OutgoingMessage, TwilioChannel
from alerts.inbound import NUMBER_REMOVED, parse_inbound, redact_numbers, reply_text
from tests.alerts.twilio_fake import FakeTwilio
from tests.conftest import REPO, console_login, demo_config_text
from warning.cli import app
from warning.logs import PhoneNumberFilter, redact_phone_numbers, with_phone_filter
from warning.outbox import queue_fanout
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
from warning.subscribers import PhoneVault, SubscriberRegistry, erase_number, roster_hash
from warning.webhooks import INBOUND_PATH, make_router

RESIDENT = "+447700900123"
NEIGHBOUR = "+447700900456"
SECRET = "personal-data-tests-secret"
TOKEN = "test_auth_token_0123456789abcdef"
BASE = "https://alerts.example.org"
SENDER = "Millbrook Flood Warnings"
ZONES = {"MB-TOWN": "Millbrook town centre", "MB-WESTFORD": "Westford"}
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = datetime(2025, 11, 14, 6, 0, tzinfo=UTC)


def clear_forms(number: str) -> list[str]:
    """Every way the full number can be written: E.164, URL-encoded, bare digits, national."""
    digits = number.lstrip("+")
    national = digits[2:]  # +44 numbers
    return [number, urllib.parse.quote(number), digits, national, "0" + national]


def assert_no_number(text: str, number: str = RESIDENT) -> None:
    for form in clear_forms(number):
        assert form not in text, f"{form} in:\n{text}"


# --------------------------------------------------------------------------- the log filter
def test_redact_phone_numbers_in_every_encoding():
    cases = {
        "GET /Messages.json?To=%2B447700900123&PageSize=50": "GET /Messages.json?To=%2B4477******23&PageSize=50",
        "Query Params: {'To': '+447700900123', 'PageSize': 50}": "Query Params: {'To': '+4477******23', 'PageSize': 50}",
        "To=447700900123&From=15005550006": "To=4477******23&From=150******06",
        "twice encoded %252B447700900123": "twice encoded %252B4477******23",
        "typed +44 7700 900123 in a form": "typed +4477******23 in a form",
        "+1 (555) 867-5309": "+155******09",
    }
    for text, masked in cases.items():
        assert redact_phone_numbers(text) == masked
        assert redact_phone_numbers(masked) == masked  # masking twice changes nothing
    for text in ("cycle 2025-11-14T16:00:00+00:00 done", "offset +05:30", "job 1234567 took 0.5 s",
                 "HTTP/1.1 200", "sid SM0123456789abcdef0123456789abcdef"):
        assert redact_phone_numbers(text) == text


def test_filter_masks_messages_arguments_and_tracebacks_but_keeps_args_usable():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(PhoneNumberFilter())
    logger = logging.getLogger("tests.personal_data.filter")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.info("to %s", RESIDENT)
        logger.info("params %s", {"To": RESIDENT})
        logger.info("%(who)s called", {"who": RESIDENT})
        logger.info("GET ?To=%s&PageSize=%d", RESIDENT.lstrip("+"), 50)  # the number made by formatting
        try:
            raise ValueError(f"The 'To' number {RESIDENT} is not a valid phone number.")
        except ValueError:
            logger.exception("send failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert_no_number(out)
    assert out.count("4477******23") == 5 and "Traceback" in out and "ValueError" in out
    # uvicorn's access formatter reads record.args: they stay a tuple, masked one by one
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/health?to=%2B{RESIDENT[1:]}", "1.1", 200), None)
    assert PhoneNumberFilter().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == '127.0.0.1:5000 - "GET /health?to=%2B4477******23 HTTP/1.1" 200 OK'


def test_with_phone_filter_puts_the_filter_on_every_handler_of_a_dict_config():
    from uvicorn.config import LOGGING_CONFIG

    config = with_phone_filter(LOGGING_CONFIG)
    assert set(config["handlers"]) == {"default", "access"}
    assert all("floodwarn_phone_numbers" in h["filters"] for h in config["handlers"].values())
    assert "filters" not in LOGGING_CONFIG["handlers"]["default"]  # uvicorn's own is left alone


def _site(tmp_path: Path) -> Path:
    text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from warning.cli import main; main()", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _env(fake: FakeTwilio, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "FLOODWARN_"))}
    return dict(env, TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                FLOODWARN_TWILIO_BASE_URL=fake.base_url, FLOODWARN_SECRET_KEY=SECRET,
                PYTHONPATH=str(REPO), **extra)


def _queue_and_orphan(cfg_path: Path, fake: FakeTwilio) -> Store:
    """A warning queued for the resident in MB-TOWN (to send), and one for MB-WESTFORD that
    a dispatcher handed to Twilio and died before recording (to recover: the dispatcher
    asks Twilio ``GET Messages.json?To=<number>``)."""
    from warning.config import load_config

    store = Store(load_config(cfg_path).db_url)
    with store.session.begin() as s:
        s.add(Run(id="run1", at=T0, scope="live"))
        s.flush()
        for zone in ZONES:
            s.add(AlertRow(identifier=f"{zone}.1", zone=zone, scope="live", run_id="run1", level=2,
                           level_name="warning", msg_type="Alert", status="Actual", sent=T0,
                           expires=T0 + timedelta(hours=12), cap_path="/nonexistent.xml",
                           headline=f"Flood warning {zone}"))
        s.flush()
        for zone in ZONES:
            assert queue_fanout(s, store, alert_identifier=f"{zone}.1", zone=zone, scope="live",
                                bodies=lambda lang, z=zone: f"Flood warning for {z}", held=False, at=T0) == 1
    TwilioChannel(fake.account_sid, fake.auth_token, from_number="+15005550006", base_url=fake.base_url) \
        .send(OutgoingMessage(RESIDENT, "Flood warning for MB-WESTFORD", "MB-WESTFORD.1:1:sms"))
    with store.session.begin() as s:  # claimed long ago (before any simulated clock) by a dead dispatcher
        s.execute(update(OutboxRow).where(OutboxRow.zone == "MB-WESTFORD")
                  .values(state="claimed", claimed_by="dead-dispatcher", attempts=1,
                          claimed_at=datetime(2025, 1, 1, tzinfo=UTC)))
    return store


def test_dispatch_verbose_logs_no_number_not_even_the_twilio_sdks(tmp_path):
    cfg = _site(tmp_path)
    with FakeTwilio() as fake:
        env = _env(fake)
        add = _cli("subscribers", "add", "--config", str(cfg), RESIDENT, "--zone", "MB-TOWN",
                   "--zone", "MB-WESTFORD", env=env)
        assert add.returncode == 0, add.stderr
        store = _queue_and_orphan(cfg, fake)
        done = _cli("dispatch", "--config", str(cfg), "-v", env=env)
        assert done.returncode == 0, done.stderr
        lists = [r for r in fake.requests if r.method == "GET"]
    out = add.stdout + add.stderr + done.stdout + done.stderr
    summary = " ".join(done.stdout.split())
    assert "sent 1 " in summary and "recovered 1," in summary
    assert lists and "To=%2B447700900123" in lists[0].path  # Twilio was asked about the number ...
    # ... and the SDK logged its requests, the sends and the recovery's list, numbers masked
    assert "twilio.http_client: POST Request:" in out and "twilio.http_client: GET Request:" in out
    assert "Messages.json?To=%2B4477******23&PageSize=50" in out
    assert "Query Params: {'To': '+4477******23'" in out
    assert_no_number(out)
    with store.session() as s:
        assert sorted(s.scalars(select(OutboxRow.state))) == ["sent", "sent"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except OSError:
        return None


def test_serve_verbose_logs_no_number_sdk_uvicorn_and_webhooks(tmp_path):
    cfg = _site(tmp_path)
    text = cfg.read_text().replace("speed = 360", "speed = 3600").replace("poll_seconds = 5", "poll_seconds = 1")
    cfg.write_text(text)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with FakeTwilio() as fake:
        env = _env(fake, FLOODWARN_PUBLIC_URL=base)
        add = _cli("subscribers", "add", "--config", str(cfg), RESIDENT, "--zone", "MB-TOWN",
                   "--zone", "MB-WESTFORD", env=env)
        assert add.returncode == 0, add.stderr
        store = _queue_and_orphan(cfg, fake)
        proc = subprocess.Popen([sys.executable, "-c", "from warning.cli import main; main()", "serve",
                                 "--config", str(cfg), "--port", str(port), "-v"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while not any(r.method == "GET" for r in fake.requests) or _get(f"{base}/health") is None:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not recover the message"
                time.sleep(0.5)
            # a number in a query string (uvicorn's access log) and a resident's text (our webhook)
            assert _get(f"{base}/health?to={urllib.parse.quote(RESIDENT)}") == 200
            form = {"MessageSid": "SM" + "a" * 32, "From": RESIDENT, "To": "+15005550006",
                    "Body": f"REPORT water at the door, call {RESIDENT}"}
            sig = RequestValidator(fake.auth_token).compute_signature(base + INBOUND_PATH, form)
            req = urllib.request.Request(base + INBOUND_PATH, data=urllib.parse.urlencode(form).encode(),
                                         headers={"X-Twilio-Signature": sig})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "twilio.http_client: GET Request:" in out and "To=%2B4477******23" in out
    assert '"GET /health?to=%2B4477******23 HTTP/1.1" 200' in out
    assert "POST /twilio/sms-inbound HTTP/1.1\" 200" in out and "inbound report from +4477******23" in out
    assert_no_number(out)
    with store.session() as s:
        [report] = s.scalars(select(ReportRow)).all()
    assert report.text == f"water at the door, call {NUMBER_REMOVED}"


# --------------------------------------------------------------------------- webhooks
@pytest.fixture
def hooks(db_url, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    monkeypatch.delenv("FLOODWARN_SECRET_KEY_FILE", raising=False)
    store = Store(db_url)
    vault = PhoneVault.from_env()
    app_ = FastAPI()
    app_.include_router(make_router(store, auth_token=TOKEN, public_base_url=BASE, vault=vault, zones=ZONES,
                                    sender_name=SENDER, clock=lambda: NOW))
    with TestClient(app_) as client:
        yield SimpleNamespace(store=store, vault=vault, client=client,
                              public=SubscriberRegistry(store, vault),
                              drill=SubscriberRegistry(store, vault, roster="drill"))
    store.dispose()


_SIDS = itertools.count(1)


def sms(h, body: str, phone: str = RESIDENT, sid: str | None = None) -> str:
    """Text ``body`` from ``phone`` through the signed webhook (each text its own
    MessageSid, as Twilio gives); the reply's text."""
    sid = sid or f"SM{next(_SIDS):032x}"
    params = {"AccountSid": "AC" + "0" * 32, "MessageSid": sid, "From": phone, "To": "+15005550006",
              "Body": body}
    sig = RequestValidator(TOKEN).compute_signature(BASE + INBOUND_PATH, params)
    resp = h.client.post(INBOUND_PATH, data=params, headers={"X-Twilio-Signature": sig})
    assert resp.status_code == 200, resp.text
    return resp.text.split("<Message>", 1)[1].split("</Message>", 1)[0] if "<Message>" in resp.text else ""


def table_dump(store: Store) -> dict[str, list[tuple]]:
    with store.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(t.select())] for t in Base.metadata.sorted_tables}


def traces(store: Store, number: str, secrets: list[str]) -> list[str]:
    """Where in the database ``number`` (any way written, or as digits inside any text),
    its lookup hashes or its encrypted forms still are: ``table: value`` per finding."""
    national = number.lstrip("+")[2:]
    found = []
    for table, rows in table_dump(store).items():
        for row in rows:
            for value in row:
                text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                if (any(form in text for form in clear_forms(number)) or any(x in text for x in secrets)
                        or (not isinstance(value, datetime) and national in re.sub(r"\D", "", text))):
                    found.append(f"{table}: {text}")
    return found


def test_report_texts_lose_phone_numbers_but_keep_dates_times_and_depths(hooks):
    hooks.public.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    body = ("REPORT 2025-11-14 at 14:30 water 0.5 m deep on Mill Lane (14.11.2025), 120 cm by 15:05; "
            "call me on 07700 900123 or my son +44 (0)7700-900.456, landline 020 7946 0958")
    assert "Thank you" in sms(hooks, body)
    with hooks.store.session() as s:
        [report] = s.scalars(select(ReportRow)).all()
    assert report.text == ("2025-11-14 at 14:30 water 0.5 m deep on Mill Lane (14.11.2025), 120 cm by 15:05; "
                           "call me on [number removed] or my son [number removed], landline [number removed]")
    assert traces(hooks.store, RESIDENT, []) == [] and traces(hooks.store, NEIGHBOUR, []) == []
    with hooks.store.session() as s:
        [event] = s.scalars(select(AuditRow).where(AuditRow.event == "report")).all()
    assert event.detail["chars"] == len(report.text)
    # the parser does it, so nothing after it (audit, logs) ever sees the number
    assert parse_inbound("report ring 555.867.5309").argument == "ring [number removed]"
    assert redact_numbers("depth 0.35 m at 06:00, 51.5074 -0.1278") == "depth 0.35 m at 06:00, 51.5074 -0.1278"


def _history(h) -> dict[str, int]:
    """The resident on both rosters with a history: reports (one from before reports were
    cleaned, and a neighbour's naming them), messages sent and queued, a delivery, audit."""
    ids = {"public": h.public.add(RESIDENT, ["MB-TOWN"], language="es", consent_source="paper form"),
           "drill": h.drill.add(RESIDENT, ["*"], consent_source="emergency team"),
           "neighbour": h.public.add(NEIGHBOUR, ["MB-TOWN"], consent_source="test")}
    assert "Gracias" in sms(h, "REPORT agua en la puerta")
    with h.store.session.begin() as s:
        s.add(ReportRow(time=T0, subscriber_id=ids["public"], zones=["MB-TOWN"],
                        text="water at my door, ring 07700 900123"))  # stored before reports were cleaned
        s.add(ReportRow(time=T0, subscriber_id=ids["neighbour"], zones=["MB-TOWN"],
                        text=f"my neighbour {RESIDENT} is stuck at 14:30"))
        h.store.audit(s, "inbound_unknown", {"problem": f"an old entry naming {RESIDENT}"}, time=T0)
        s.add(Run(id="run1", at=T0, scope="live"))
        s.flush()
        for n in (1, 2):
            s.add(AlertRow(identifier=f"MB-TOWN.{n}", zone="MB-TOWN", scope="live", run_id="run1", level=2,
                           level_name="warning", msg_type="Alert", status="Actual", sent=T0,
                           expires=T0 + timedelta(hours=12), cap_path="/x.xml", headline="Flood warning"))
        s.flush()
        sent = OutboxRow(key=f"MB-TOWN.1:{ids['public']}:sms", alert_identifier="MB-TOWN.1",
                         subscriber_id=ids["public"], channel="sms", zone="MB-TOWN", body="Aviso", state="sent",
                         provider_id="SM" + "1" * 32, sent_at=T0)
        s.add(sent)
        s.add(OutboxRow(key=f"MB-TOWN.2:{ids['public']}:sms", alert_identifier="MB-TOWN.2",
                        subscriber_id=ids["public"], channel="sms", zone="MB-TOWN", body="Aviso 2",
                        state="pending"))
        s.flush()
        s.add(DeliveryRow(provider_id="SM" + "1" * 32, outbox_id=sent.id, status="delivered", updated=T0))
    return ids


def _secrets(h) -> list[str]:
    with h.store.session() as s:
        enc = list(s.scalars(select(Subscriber.phone_enc).where(Subscriber.phone_hash.in_(
            [roster_hash(h.vault, RESIDENT, r) for r in ("public", "drill")]))))
    assert len(enc) == 2
    return [roster_hash(h.vault, RESIDENT, r) for r in ("public", "drill")] + enc


@pytest.mark.parametrize("word", ["DELETE", "borrar", " Delete. "])
def test_delete_by_sms_erases_the_number_from_every_table(hooks, word):
    ids = _history(hooks)
    secrets = _secrets(hooks)
    assert traces(hooks.store, RESIDENT, secrets)  # there is something to erase
    reply = sms(hooks, word)
    assert reply == f"{SENDER}: hemos borrado su número; no recibirá más avisos. Envíe JOIN y el código " \
                    "de su zona para volver."  # in the resident's language (es)
    assert traces(hooks.store, RESIDENT, secrets) == []
    assert hooks.public.find(RESIDENT) is None and hooks.drill.find(RESIDENT) is None
    with hooks.store.session() as s:
        outbox = {o.key: (o.state, o.subscriber_id, o.provider_id) for o in s.scalars(select(OutboxRow))}
        reports = {r.text: r.subscriber_id for r in s.scalars(select(ReportRow))}
        deleted = [a.detail for a in s.scalars(select(AuditRow).where(AuditRow.event == "subscriber_deleted"))]
        delivery = s.get(DeliveryRow, "SM" + "1" * 32)
    assert outbox == {f"MB-TOWN.1:{ids['public']}:sms": ("sent", None, "SM" + "1" * 32),
                      f"MB-TOWN.2:{ids['public']}:sms": ("cancelled", None, None)}
    assert reports == {"agua en la puerta": None, f"water at my door, ring {NUMBER_REMOVED}": None,
                       f"my neighbour {NUMBER_REMOVED} is stuck at 14:30": ids["neighbour"]}
    assert deleted == [{"subscriber_id": ids["public"], "roster": "public", "source": "sms DELETE"},
                       {"subscriber_id": ids["drill"], "roster": "drill", "source": "sms DELETE"}]
    assert delivery.status == "delivered"  # provider ids and statuses stay: they hold no number
    assert hooks.public.find(NEIGHBOUR) is not None  # nobody else is touched
    # texting again: the number is unknown now, and the reply says so
    assert "not on our list" in sms(hooks, "DELETE")


def test_delete_from_an_unknown_number_is_answered_and_changes_nothing(hooks):
    hooks.public.add(NEIGHBOUR, ["MB-TOWN"], consent_source="test")
    before = table_dump(hooks.store)
    assert sms(hooks, "DELETE") == f"{SENDER}: this number is not on our list, so there is nothing to delete."
    assert sms(hooks, "BORRAR") == f"{SENDER}: this number is not on our list, so there is nothing to delete."
    after = table_dump(hooks.store)
    # only the ledger of message ids grew (so a replay is not acted on twice); it keeps no
    # number, only the id, the time, the command and the reply
    ledger = after.pop("inbound_messages")
    before.pop("inbound_messages")
    assert after == before
    assert [row[2] for row in ledger] == ["delete", "delete"]
    assert not any(RESIDENT[-7:] in str(v) for row in ledger for v in row)


def test_delete_must_be_sent_alone(hooks):
    hooks.public.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    reply = sms(hooks, "delete the last message")
    assert reply.startswith("Send DELETE on its own.")
    assert hooks.public.find(RESIDENT) is not None


def test_help_and_unknown_replies_name_delete():
    for lang, word in (("en", "DELETE"), ("es", "BORRAR")):
        assert word in reply_text(parse_inbound("HELP"), "ok", lang, sender=SENDER)
        assert word in reply_text(parse_inbound("what?"), "ok", lang, sender=SENDER)


def test_cli_subscribers_delete_erases_as_the_sms_does(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    monkeypatch.delenv("FLOODWARN_SECRET_KEY_FILE", raising=False)
    cfg = _site(tmp_path)
    runner = CliRunner()
    for args in (["--zone", "MB-TOWN"], ["--drill"]):
        res = runner.invoke(app, ["subscribers", "add", "--config", str(cfg), RESIDENT, *args])
        assert res.exit_code == 0, res.output
    from warning.config import load_config

    store = Store(load_config(cfg).db_url)
    h = SimpleNamespace(store=store, vault=PhoneVault.from_env())
    secrets = _secrets(h)
    with store.session.begin() as s:
        s.add(ReportRow(time=T0, subscriber_id=1, zones=["MB-TOWN"], text="call 07700 900123"))
    res = runner.invoke(app, ["subscribers", "delete", "--config", str(cfg), "07700 900123"])
    assert res.exit_code == 0, res.output
    assert "deleted +4477******23 from the subscribers and the drill roster" in res.output
    assert traces(store, RESIDENT, secrets) == []
    again = runner.invoke(app, ["subscribers", "delete", "--config", str(cfg), RESIDENT])
    assert again.exit_code == 1 and "no subscriber with number +4477******23" in again.output
    assert_no_number(res.output + again.output)


def test_erase_number_with_one_roster_keeps_the_other(hooks):
    hooks.public.add(RESIDENT, ["MB-TOWN"], consent_source="test")
    hooks.drill.add(RESIDENT, ["*"], consent_source="team")
    assert hooks.drill.delete(RESIDENT)  # the registry's delete: its own roster only
    assert hooks.drill.find(RESIDENT) is None and hooks.public.find(RESIDENT) is not None
    erased = erase_number(hooks.store, hooks.vault, RESIDENT, source="test")
    assert [r for _, r in erased.subscribers] == ["public"] and not hooks.public.find(RESIDENT)
    assert not erase_number(hooks.store, hooks.vault, RESIDENT, source="test")


# --------------------------------------------------------------------------- secrets
def test_console_sessions_survive_across_apps_with_the_key_in_a_file(tmp_path, monkeypatch, demo_cfg):
    from warning.console import add_operator
    from warning.web import create_app

    for name in ("FLOODWARN_SECRET_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / "secret.key"
    key.write_text("a-key-kept-in-a-file\n")
    monkeypatch.setenv("FLOODWARN_SECRET_KEY_FILE", str(key))
    store = Store(demo_cfg.db_url)
    add_operator(store, "duty", "correct horse battery", "manager")

    def session_cookie(client: TestClient) -> str:
        ok = console_login(client, "duty", "correct horse battery",
                         follow_redirects=False)
        assert ok.status_code == 303
        return ok.cookies["floodwarn_session"]

    def dashboard(app_, cookie: str) -> int:
        with TestClient(app_, base_url="https://testserver") as client:
            client.cookies.set("floodwarn_session", cookie, path="/console")
            return client.get("/console", follow_redirects=False).status_code

    one, two = create_app(demo_cfg, store=store), create_app(demo_cfg, store=store)
    with TestClient(one, base_url="https://testserver") as client:
        cookie = session_cookie(client)
    assert dashboard(two, cookie) == 200  # another process of the same site accepts it
    assert dashboard(one, cookie) == 200
    # the session lives in the database, not in the key: ending it there ends it everywhere
    from warning.console import end_sessions

    assert end_sessions(store, "duty") == 1
    assert dashboard(two, cookie) == 303 and dashboard(one, cookie) == 303


def test_operators_add_reads_the_password_from_a_file(tmp_path, monkeypatch):
    from warning.config import load_config
    from warning.console import verify_operator

    cfg = _site(tmp_path)
    monkeypatch.delenv("FLOODWARN_OPERATOR_PASSWORD", raising=False)
    pw = tmp_path / "password"
    pw.write_text("a long enough password\n")
    monkeypatch.setenv("FLOODWARN_OPERATOR_PASSWORD_FILE", str(pw))
    res = CliRunner().invoke(app, ["operators", "add", "--config", str(cfg), "duty"], input="")
    assert res.exit_code == 0, res.output
    assert verify_operator(Store(load_config(cfg).db_url), "duty", "a long enough password") == "manager"


SECRET_NAMES = ("FLOODWARN_SECRET_KEY", "FLOODWARN_OPERATOR_PASSWORD", "TWILIO_")


def test_secrets_are_read_only_through_the_helper():
    """No module reads a secret from os.environ itself (so every NAME_FILE works); setting
    one (the demo's own key file) is fine."""
    names = "|".join(SECRET_NAMES)
    read = re.compile(rf"""os\.environ\.get\(\s*["']({names})|os\.getenv\(\s*["']({names})"""
                      rf"""|(?<!del )os\.environ\[\s*["']({names})[A-Z_]*["']\s*\](?!\s*=[^=])""")
    offenders = []
    for package in ("warning", "alerts"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "secrets.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if read.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []
