"""The SMS outbox end to end: queueing, approval, dispatch through the real Twilio SDK
against a local Twilio-compatible server, retries, permanent errors, rate limit, and a
dispatcher killed with SIGKILL part-way through a fan-out."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "alerts"))
from twilio_fake import FakeTwilio  # noqa: E402

from alerts.channels import TwilioChannel  # noqa: E402
from alerts.delivery import RateLimiter, RetryPolicy  # noqa: E402
from tests.conftest import REPO, demo_config_text  # noqa: E402
from warning.outbox import (Dispatcher, decide_approval, outbox_counts, pending_approvals,  # noqa: E402
                            queue_fanout, release_due)
from warning.storage import AlertRow, ApprovalRow, AuditRow, OutboxRow, Run, Store, Subscriber  # noqa: E402
from warning.console import add_operator  # noqa: E402
from warning.subscribers import PhoneVault  # noqa: E402

T0 = datetime(2025, 11, 14, 6, 0, tzinfo=UTC)
SECRET = "test-secret-for-outbox"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)


def phone(i: int) -> str:
    return f"+1555{i:07d}"


def add_subscribers(store: Store, n: int, zone: str = "Z1", language=lambda i: "en") -> None:
    """Bulk insert (the registry's one-by-one add is for people, not for 10,000 rows)."""
    vault = PhoneVault(SECRET)
    rows = [{"phone_hash": vault.lookup_hash(phone(i)), "phone_enc": vault.encrypt(phone(i)), "zones": [zone],
             "language": language(i), "consent_source": "test", "consent_time": T0} for i in range(n)]
    with store.session.begin() as s:
        s.execute(insert(Subscriber), rows)


def add_alert(store: Store, identifier: str, zone: str = "Z1", *, held: bool = False) -> None:
    with store.session.begin() as s:
        if s.get(Run, "run1") is None:
            s.add(Run(id="run1", at=T0, scope="live"))
            s.flush()
        s.add(AlertRow(identifier=identifier, zone=zone, scope="live", run_id="run1", level=2,
                       level_name="warning", msg_type="Alert", status="Actual", sent=T0,
                       expires=T0 + timedelta(hours=12), cap_path=f"/nonexistent/{identifier}.xml",
                       headline=f"Flood warning {zone}", state="held" if held else "published"))


def queue(store: Store, identifier: str, zone: str = "Z1", *, held: bool = False,
          text=lambda lang: f"Flood Warning for Z1 ({lang}). Move to higher ground.") -> int:
    add_alert(store, identifier, zone, held=held)
    with store.session.begin() as s:
        if held:
            s.add(ApprovalRow(alert_identifier=identifier, zone=zone, scope="live", level_name="severe",
                              requested_at=T0, release_at=T0 + timedelta(minutes=30)))
        return queue_fanout(s, store, alert_identifier=identifier, zone=zone, scope="live", bodies=text,
                            held=held, at=T0)


def twilio(fake: FakeTwilio) -> TwilioChannel:
    return TwilioChannel(fake.account_sid, fake.auth_token, from_number="+15005550006",
                         base_url=fake.base_url, status_callback="https://flood.example/twilio/sms-status",
                         validity_period=600)


def test_fanout_to_3000_subscribers_two_dispatchers_no_duplicates(tmp_path, env):
    # 3,000: each send is checked and recorded against the database (claims); the 10,000+
    # scale is benchmarks/bench_outbox.py's
    n = 3_000
    store = Store(f"sqlite:///{tmp_path}/fw.db")
    add_subscribers(store, n, language=lambda i: "es" if i % 3 == 0 else "en")
    add_subscribers_other = 50  # subscribers of another zone get nothing
    vault = PhoneVault(SECRET)
    with store.session.begin() as s:
        s.execute(insert(Subscriber), [{"phone_hash": vault.lookup_hash(phone(20_000 + i)),
                                        "phone_enc": vault.encrypt(phone(20_000 + i)), "zones": ["Z2"],
                                        "language": "en", "consent_source": "test", "consent_time": T0}
                                       for i in range(add_subscribers_other)])
    assert queue(store, "Z1.A") == n
    with store.session.begin() as s:  # queueing again (a re-run of the cycle) is refused by the unique key
        with pytest.raises(Exception):
            queue_fanout(s, store, alert_identifier="Z1.A", zone="Z1", scope="live",
                         bodies=lambda lang: "x", held=False, at=T0)
    with FakeTwilio() as fake:
        workers = [Dispatcher(store, twilio(fake), batch=200) for _ in range(2)]
        stats = []
        threads = [threading.Thread(target=lambda w=w: stats.append(w.drain())) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        to = Counter(m["To"] for m in fake.messages)
    assert len(to) == n and max(to.values()) == 1
    assert set(to) == {phone(i) for i in range(n)}
    assert sum(st.sent for st in stats) == n
    assert all(st.sent > 0 for st in stats)  # both dispatchers took part
    assert outbox_counts(store) == {"sent": n}
    # the SDK sent what the outbox asked for: validity period, status callback, the language's text
    by_to = {m["To"]: m for m in fake.messages}
    assert by_to[phone(3)]["Body"].endswith("(es). Move to higher ground.")
    assert by_to[phone(4)]["ValidityPeriod"] == "600"
    assert by_to[phone(4)]["StatusCallback"] == "https://flood.example/twilio/sms-status"
    with store.session() as s:
        provider_ids = s.scalars(select(OutboxRow.provider_id)).all()
        sends = s.scalars(select(AuditRow).where(AuditRow.event == "sent")).all()
    assert set(provider_ids) == {m["sid"] for m in fake.messages}
    assert len(sends) == n and all("+1555" not in str(a.detail) for a in sends[:100])


def test_newer_alert_supersedes_unsent_older_one(db_url, env):
    store = Store(db_url)
    add_subscribers(store, 20)
    queue(store, "Z1.A")
    queue(store, "Z1.B", text=lambda lang: "Severe Flood Warning for Z1.")
    assert outbox_counts(store, ["Z1.A"]) == {"superseded": 20}
    assert outbox_counts(store, ["Z1.B"]) == {"pending": 20}
    with FakeTwilio() as fake:
        Dispatcher(store, twilio(fake)).drain()
        assert {m["Body"] for m in fake.messages} == {"Severe Flood Warning for Z1."}
        assert len(fake.messages) == 20


def test_transient_errors_back_off_and_permanent_errors_mark_the_subscriber(tmp_path, env):
    store = Store(f"sqlite:///{tmp_path}/fw.db")
    add_subscribers(store, 3)
    queue(store, "Z1.A")
    clock = [T0]
    with FakeTwilio() as fake:
        fake.opt_out(phone(2))  # replied STOP at the provider: 21610
        fake.fail_next(503, None, "Service unavailable")
        d = Dispatcher(store, twilio(fake), clock=lambda: clock[0],
                       retry=RetryPolicy(base=timedelta(seconds=30), factor=2.0, max_attempts=3))
        st = d.drain()
        assert (st.sent, st.retried, st.failed) == (1, 1, 1)
        with store.session() as s:
            retry_row = s.scalar(select(OutboxRow).where(OutboxRow.state == "pending"))
            assert retry_row.next_attempt_at == T0 + timedelta(seconds=30)
            sub2 = s.scalar(select(Subscriber).where(Subscriber.id == 3))
            assert sub2.opted_out_at is not None  # mirrored from 21610
        assert not d.drain().busy  # not due yet
        clock[0] = T0 + timedelta(seconds=31)
        assert d.drain().sent == 1
        assert sorted(m["To"] for m in fake.messages) == [phone(0), phone(1)]
    # an invalid number (21211) is permanent: the subscriber is marked unreachable
    add_subscribers_bad = Store(f"sqlite:///{tmp_path}/fw2.db")
    vault = PhoneVault(SECRET)
    with add_subscribers_bad.session.begin() as s:
        s.add(Subscriber(phone_hash=vault.lookup_hash("+15005550001"), phone_enc=vault.encrypt("+15005550001"),
                         zones=["Z1"], language="en", consent_source="test", consent_time=T0))
    queue(add_subscribers_bad, "Z1.A")
    with FakeTwilio() as fake:
        fake.fail_next(400, 21211, "The 'To' number is not a valid phone number.")
        st = Dispatcher(add_subscribers_bad, twilio(fake)).drain()
        assert (st.sent, st.failed, st.retried) == (0, 1, 0)
    with add_subscribers_bad.session() as s:
        assert s.scalar(select(Subscriber.unreachable)).startswith("21211")


def test_rate_limiter_meters_segments():
    """Token bucket: 40 messages of 3 segments at 10 segments/s with a burst of 10 must
    wait (40 * 3 - 10) / 10 = 11 s in all, whatever the message order."""
    now = [0.0]

    def sleep(dt):
        now[0] += dt

    rl = RateLimiter(10.0, burst=10, clock=lambda: now[0], sleep=sleep)
    slept = sum(rl.acquire(3) for _ in range(40))
    assert slept == pytest.approx(11.0)
    assert RateLimiter(None).acquire(99) == 0.0


def test_approval_queue_approve_with_edit_reject_and_auto_release(tmp_path, env):
    store = Store(f"sqlite:///{tmp_path}/fw.db")
    add_operator(store, "Duty manager A. Jones", "a long password", "manager")
    add_operator(store, "A. Watch", "a long password", "operator")
    add_subscribers(store, 5, zone="Z1")
    queue(store, "Z1.S", held=True)
    with FakeTwilio() as fake:
        d = Dispatcher(store, twilio(fake), clock=lambda: T0 + timedelta(minutes=5))
        assert not d.drain().busy and fake.messages == []  # held: nothing goes out
        [p] = pending_approvals(store)
        assert (p.alert, p.messages, p.level) == ("Z1.S", 5, "severe")
        for who in ("A. Watch", "nobody"):  # only managers decide
            with pytest.raises(Exception, match="only managers|not an operator"):
                decide_approval(store, p.id, approve=True, by=who)
        assert outbox_counts(store) == {"held": 5}
        published = []
        decide_approval(store, p.id, approve=True, by="Duty manager A. Jones", at=T0 + timedelta(minutes=7),
                        text="SEVERE flood warning Z1: leave now for higher ground.", publish=published.append)
        assert [a.identifier for a in published] == ["Z1.S"]
        assert d.drain().sent == 5
        assert {m["Body"] for m in fake.messages} == {"SEVERE flood warning Z1: leave now for higher ground."}
        with pytest.raises(Exception, match="already approved"):
            decide_approval(store, p.id, approve=False, by="Duty manager A. Jones")
    with store.session() as s:
        a = s.scalar(select(ApprovalRow))
        assert (a.state, a.decided_by, a.decided_at) == ("approved", "Duty manager A. Jones",
                                                         T0 + timedelta(minutes=7))
        log = s.scalars(select(AuditRow.event).order_by(AuditRow.id)).all()
    assert "approved" in log and log.count("sent") == 5

    # reject: nothing is ever sent; auto-release: released when the time runs out
    store2 = Store(f"sqlite:///{tmp_path}/fw2.db")
    add_operator(store2, "A. Jones", "a long password", "manager")
    add_subscribers(store2, 4, zone="Z1")
    queue(store2, "Z1.R", held=True)
    [p] = pending_approvals(store2)
    decide_approval(store2, p.id, approve=False, by="A. Jones", note="gauge fault, not a real rise")
    assert outbox_counts(store2) == {"cancelled": 4}
    store3 = Store(f"sqlite:///{tmp_path}/fw3.db")
    add_subscribers(store3, 4, zone="Z1")
    queue(store3, "Z1.T", held=True)  # release_at = T0 + 30 min
    assert release_due(store3, T0 + timedelta(minutes=29)) == 0
    assert release_due(store3, T0 + timedelta(minutes=30)) == 1
    assert outbox_counts(store3) == {"pending": 4}
    with store3.session() as s:
        assert s.scalar(select(ApprovalRow.decided_by)) == "time-out"


# --------------------------------------------------------------------------- crash test
def _config(tmp_path: Path) -> Path:
    text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1)
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    return cfg


def _dispatcher_cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-c", "from warning.cli import main; main()", "dispatch", "--config", str(cfg),
            "--lease-s", "0.5"]


def test_dispatcher_killed_repeatedly_delivers_each_message_exactly_once(tmp_path, env):
    from warning.config import load_config

    cfg_path = _config(tmp_path)
    cfg = load_config(cfg_path)
    store = Store(cfg.db_url)
    n = 1500
    add_subscribers(store, n)
    assert queue(store, "Z1.K") == n
    rng = random.Random(11)
    with FakeTwilio() as fake:
        environ = dict(os.environ, TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                       FLOODWARN_TWILIO_BASE_URL=fake.base_url, FLOODWARN_SECRET_KEY=SECRET,
                       PYTHONPATH=str(REPO))
        kills = 0
        while kills < 5:
            before = len(fake.messages)
            proc = subprocess.Popen(_dispatcher_cmd(cfg_path), env=environ, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            # kill once it is part-way: some messages of this run have gone out
            while len(fake.messages) < before + rng.randint(20, 150) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.005)
            if proc.poll() is not None:
                break  # it finished before we could kill it
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        assert kills == 5, "the fan-out ended before the dispatcher was killed five times"
        assert 0 < len(fake.messages) < n
        done = subprocess.run(_dispatcher_cmd(cfg_path), env=environ, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        to = Counter(m["To"] for m in fake.messages)
    assert len(fake.messages) == n, f"{len(fake.messages) - len(to)} duplicates"
    assert set(to) == {phone(i) for i in range(n)} and max(to.values()) == 1
    assert outbox_counts(store) == {"sent": n}
    with store.session() as s:
        assert set(s.scalars(select(OutboxRow.provider_id))) == {m["sid"] for m in fake.messages}
        # killed mid-batch, messages had gone out unrecorded: recovery found them at the provider
        recovered = s.scalars(select(AuditRow).where(AuditRow.event == "sent_recovered")).all()
    assert len(recovered) > 0


def test_opt_out_round_trip_stop_then_start(db_url, env):
    """A resident texts STOP: the next warning skips them (and what was queued for them is
    not sent); START: the next warning reaches them again. Webhooks signed as Twilio does.
    On SQLite and on PostgreSQL."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from twilio.request_validator import RequestValidator

    from warning.webhooks import INBOUND_PATH, make_router

    store = Store(db_url)
    add_subscribers(store, 3)
    base = "https://flood.example"
    with FakeTwilio() as fake:
        app = FastAPI()
        app.include_router(make_router(store, auth_token=fake.auth_token, public_base_url=base,
                                       vault=PhoneVault(SECRET), region="US", zones={"Z1": "Millbrook"},
                                       sender_name="Millbrook Flood Warnings"))

        sids = iter(range(1, 100))

        def text(client, body: str) -> int:  # each text its own MessageSid, as Twilio gives
            form = {"From": phone(1), "To": "+15005550006", "Body": body, "MessageSid": f"SM{next(sids):032x}"}
            sig = RequestValidator(fake.auth_token).compute_signature(base + INBOUND_PATH, form)
            return client.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": sig}).status_code

        d = Dispatcher(store, twilio(fake))
        with TestClient(app) as client:
            queue(store, "Z1.1")
            assert d.drain().sent == 3
            queue(store, "Z1.2")  # queued while subscribed ...
            assert text(client, "stop") == 200  # ... then STOP before it goes out
            st = d.drain()
            assert (st.sent, st.cancelled) == (2, 1)
            queue(store, "Z1.3")
            assert d.drain().sent == 2  # not even queued for them
            assert text(client, "START") == 200
            queue(store, "Z1.4")
            assert d.drain().sent == 3
        got = Counter(m["To"] for m in fake.messages)
    assert got == {phone(0): 4, phone(2): 4, phone(1): 2}
    with store.session() as s:
        events = s.scalars(select(AuditRow.event).where(AuditRow.event.in_(["opt_out", "opt_in"])).order_by(AuditRow.id)).all()
    assert events == ["opt_out", "opt_in"]
