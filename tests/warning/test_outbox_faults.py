"""The outbox under load and faults (issue 13), through the real Twilio SDK against the
local Twilio-compatible server:

- one rate limit shared by every dispatcher through the database (SQLite, PostgreSQL);
- a batch slower than the lease, two dispatchers: each message sent exactly once;
- a claim lost before or after a send: skipped, or logged as an error and audited;
- the provider cannot be asked about messages in doubt: recovery retries with backoff,
  gives up after a bounded time, tells the operators once, resends or holds the
  messages, and ``dispatch`` ends; operators settle held ones with ``floodwarn outbox``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "alerts"))
from twilio_fake import FakeTwilio  # noqa: E402

from alerts.channels import OutgoingMessage  # noqa: E402
from alerts.messages import sms_segments  # noqa: E402
from tests.conftest import REPO, Clock, demo_config_text  # noqa: E402
from tests.warning.test_outbox import SECRET, T0, add_subscribers, phone, queue, twilio  # noqa: E402
from warning.outbox import Dispatcher, messages_in_doubt, outbox_counts  # noqa: E402
from warning.ratelimit import SharedRateLimiter  # noqa: E402
from warning.storage import AuditRow, OutboxRow, Store, Subscriber, utcnow  # noqa: E402
from warning.subscribers import PhoneVault  # noqa: E402

OPERATOR = "+15005550100"
TWO_SEGMENTS = ("Flood Warning for Millbrook: river levels are rising fast. Move valuables upstairs, keep away "
                "from the river banks and be ready to leave. Updates at flood.example/mb. Reply STOP to end "
                "these messages.")


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)


def run_all(dispatchers: list[Dispatcher]) -> list:
    """Drain the outbox with every dispatcher at once, each in a thread of its own."""
    stats: list = [None] * len(dispatchers)

    def work(i: int) -> None:
        stats[i] = dispatchers[i].drain()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(dispatchers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(st is not None for st in stats), "a dispatcher did not finish"
    return stats


def audit_events(store: Store, event: str) -> list[AuditRow]:
    with store.session() as s:
        return list(s.scalars(select(AuditRow).where(AuditRow.event == event).order_by(AuditRow.id)))


def stopped_dispatcher_left(store: Store, alert: str, channel=None, sent: int = 0) -> None:
    """Leave ``alert``'s rows as a dispatcher killed mid-batch a minute ago does: claimed by
    it, never recorded; the first ``sent`` of them had reached the provider."""
    with store.session.begin() as s:
        rows = s.scalars(select(OutboxRow).where(OutboxRow.alert_identifier == alert).order_by(OutboxRow.id)).all()
        for row in rows[:sent]:
            channel.send(OutgoingMessage(to=phone(row.subscriber_id - 1), body=row.body, key=row.key))
        s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == alert)
                  .values(state="claimed", claimed_by="4242-deadbeef", attempts=1,
                          claimed_at=utcnow() - timedelta(minutes=1)))


# --------------------------------------------------------------------------- rate limit
def test_shared_rate_limit_is_gcra_over_the_database(tmp_path):
    """Two limiters on one database (two processes' worth: separate engines) draw on one
    limit: 10 segments/s, burst 4: the first 4 segments go at once, then one every 0.1 s,
    whoever asks; a quiet spell refills the burst and no more."""
    url = f"sqlite:///{tmp_path}/rl.db"
    clock = [1_000.0]
    a, b = (SharedRateLimiter(Store(url), "sms:test", 10.0, burst=4, clock=lambda: clock[0]) for _ in range(2))
    waits = [lim.reserve(1) for lim in (a, b, a, b, a, b)]
    assert waits == pytest.approx([0, 0, 0, 0, 0.1, 0.2])
    assert a.reserve(3) == pytest.approx(0.5)  # 3 segments more: paid for at 10/s after the queue
    clock[0] += 60  # a quiet minute: the burst is back, not a minute's worth
    assert [b.reserve(2), a.reserve(2), b.reserve(2)] == pytest.approx([0, 0, 0.2])
    assert SharedRateLimiter(Store(url), "sms:other", 10.0).reserve(1) == 0  # another account, another limit
    assert SharedRateLimiter(Store(url), "sms:test", None).reserve(99) == 0


def test_two_dispatchers_share_one_rate_limit(db_url, env):
    """The provider meters per account: two dispatchers together stay at the configured
    rate (segments per second), each alone would have sent at the full rate."""
    rate, n = 20.0, 40
    store = Store(db_url)
    add_subscribers(store, n)
    assert sms_segments(TWO_SEGMENTS).segments == 2
    queue(store, "Z1.R", text=lambda lang: TWO_SEGMENTS)
    with FakeTwilio() as fake:
        stats = run_all([Dispatcher(Store(db_url), twilio(fake), rate=rate, burst=2, batch=5) for _ in range(2)])
        times = sorted(m["received_at"] for m in fake.messages)
    assert len(times) == n and all(st.sent > 0 for st in stats)  # both took part
    # the first message's 2 segments are the burst; the other 78 come at the shared rate
    achieved = (2 * n - 2) / (times[-1] - times[0])
    assert achieved == pytest.approx(rate, rel=0.15), f"{achieved:.1f} segments/s"
    assert sum(st.segments for st in stats) == 2 * n
    assert sum(st.slept_s for st in stats) > 0


# --------------------------------------------------------------------------- slow batches
def test_batches_slower_than_the_lease_are_sent_once(db_url, env):
    """Two dispatchers with batches of 20 and 5 (as one of 50 and one of 10 when 60 are
    due), a shared 5 segments/s and a slow provider: the big batch takes over 4 s, four
    leases of 1 s, while the other dispatcher runs recovery between its small batches.
    Claims are renewed while a batch goes, so recovery never takes a row still being worked
    on (without renewal, the old dispatcher sent 36 messages for these 30)."""
    n = 30
    store = Store(db_url)
    add_subscribers(store, n)
    queue(store, "Z1.S")
    with FakeTwilio() as fake:
        fake.delay_s = 0.05
        t0 = time.monotonic()
        stats = run_all([Dispatcher(Store(db_url), twilio(fake), rate=5.0, burst=1, batch=batch,
                                    lease=timedelta(seconds=1)) for batch in (20, 5)])
        took = time.monotonic() - t0
        to = Counter(m["To"] for m in fake.messages)
    assert took > 4.0  # batches really were slower than the lease
    assert len(fake.messages) == n and set(to) == {phone(i) for i in range(n)}, to.most_common(3)
    assert outbox_counts(store) == {"sent": n}
    assert sum(st.sent for st in stats) == n and all(st.sent > 0 for st in stats)
    assert sum(st.requeued + st.recovered + st.lost for st in stats) == 0
    assert audit_events(store, "claim_lost") == [] and audit_events(store, "requeued") == []
    assert len(audit_events(store, "sent")) == n


def test_a_claim_lost_is_skipped_before_the_send_and_reported_after_it(tmp_path, env, caplog):
    """If another dispatcher has taken a row over (this one's claim ran out), a row not yet
    sent is skipped, and a send whose outcome finds the row taken is an error in the log
    (number masked) and the audit log; it is still recorded as sent, so the other
    dispatcher's check before its own send skips it."""
    store = Store(f"sqlite:///{tmp_path}/fw.db")
    add_subscribers(store, 2)
    queue(store, "Z1.A")

    def take_over(n_posts: int, key: str) -> threading.Thread:
        def run():
            while sum(r.method == "POST" for r in fake.requests) < n_posts:
                time.sleep(0.005)
            with store.session.begin() as s:
                s.execute(update(OutboxRow).where(OutboxRow.key == key)
                          .values(claimed_by="other-dispatcher", claimed_at=utcnow()))
        t = threading.Thread(target=run)
        t.start()
        return t

    with FakeTwilio() as fake:
        # before the send: the second row is taken while this dispatcher waits for the rate limit
        t = take_over(1, "Z1.A:2:sms")
        st = Dispatcher(store, twilio(fake), rate=2.0, burst=1).drain()
        t.join()
        assert (st.sent, st.lost) == (1, 1) and [m["To"] for m in fake.messages] == [phone(0)]
        # after the send: the row is taken while the provider is slow to answer
        queue(store, "Z1.B")
        fake.delay_s = 0.5
        with caplog.at_level(logging.WARNING, logger="warning.outbox"):
            t = take_over(2, "Z1.B:1:sms")
            st = Dispatcher(store, twilio(fake), batch=1).drain()
            t.join()
        sid = fake.messages[1]["sid"]
    assert (st.sent, st.lost) == (2, 1)
    before, after = (a.detail for a in audit_events(store, "claim_lost"))
    assert (before["stage"], before["claimed_by_now"]) == ("before_send", "other-dispatcher")
    assert (after["stage"], after["provider_id"], after["recorded_as_sent"]) == ("after_send", sid, True)
    with store.session() as s:
        row = s.scalar(select(OutboxRow).where(OutboxRow.key == "Z1.B:1:sms"))
        assert (row.state, row.provider_id) == ("sent", sid)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "may have been sent twice" in errors[0].getMessage()
    assert "+155******00" in errors[0].getMessage() and phone(0) not in caplog.text and phone(1) not in caplog.text


# --------------------------------------------------------------------------- messages in doubt
def test_provider_cannot_be_asked_recovery_gives_up_resends_and_tells_operators(demo_cfg, env, caplog):
    """A dispatcher died mid-batch (two of its five messages had gone out) and the
    provider's list call fails: recovery asks again with backoff, gives up after
    ``in_doubt_give_up_s``, tells the operators once (audit and SMS), resends the five
    (the two residents who had it get it twice: better than a lost warning) and ends."""
    from warning.alerting import make_dispatcher

    cfg = demo_cfg.model_copy(update={
        "channels": demo_cfg.channels.model_copy(update={"in_doubt_give_up_s": 1.5, "claim_lease_s": 0.5}),
        "service": demo_cfg.service.model_copy(update={"operator_phones": [OPERATOR]})})
    store = Store(cfg.db_url)
    add_subscribers(store, 5)
    queue(store, "Z1.D")
    with FakeTwilio() as fake:
        stopped_dispatcher_left(store, "Z1.D", twilio(fake), sent=2)
        fake.list_fails = True
        d = make_dispatcher(cfg, store, twilio(fake))
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO):
            st = d.run(until_empty=True, poll_s=0.05)
        took = time.monotonic() - t0
        asks = [r for r in fake.requests if r.method == "GET" and "To=" in r.path]
        to = Counter(m["To"] for m in fake.messages)
        ops = [m for m in fake.messages if m["To"] == OPERATOR]
    assert 1.5 <= took < 10
    assert (st.in_doubt, st.sent, st.recovered, st.requeued) == (5, 5, 0, 0)
    assert outbox_counts(store) == {"sent": 5}
    assert to == {phone(0): 2, phone(1): 2, phone(2): 1, phone(3): 1, phone(4): 1, OPERATOR: 1}
    # backoff: asked a handful of times in 1.5 s, not once per 50 ms pass; and a pass stops
    # asking after three failures in a row (the last two messages wait with the others)
    per_message = Counter(r.path.split("To=")[1].split("&")[0] for r in asks)
    assert set(per_message) == {phone(i).replace("+", "%2B") for i in range(3)}, per_message
    assert all(3 <= k <= 12 for k in per_message.values()), per_message
    assert len(audit_events(store, "delivery_check_failed")) >= 3
    [told] = audit_events(store, "delivery_in_doubt")  # once per episode, not once per message
    assert told.detail["messages"] == 5 and told.detail["action"] == "resend"
    assert "sent again" in told.detail["problem"] and "Z1.D: 5" in told.detail["problem"]
    assert "twice" in ops[0]["Body"]
    assert len(audit_events(store, "in_doubt_resent")) == 5
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("warning", "alerts")]  # not the SDK's
    assert any(r.levelno >= logging.WARNING and "delivery in doubt" in r.getMessage() for r in ours)
    assert all(phone(i) not in r.getMessage() for r in ours for i in range(5))
    assert all(phone(i) not in str(a.detail) for a in audit_events(store, "in_doubt_resent") for i in range(5))


def _cli_config(tmp_path: Path, channels: str) -> Path:
    text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1)
    text = text.replace("max_segments = 4\n", f"max_segments = 4\n{channels}\n", 1)
    text = text.replace("[service]\n", f'[service]\noperator_phones = ["{OPERATOR}"]\n', 1)
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    return cfg


def test_hold_through_the_cli_then_operators_settle_them(tmp_path, env):
    """``in_doubt_action = "hold"``: ``floodwarn dispatch`` gives up on the messages it
    cannot settle, parks them, tells the operators and exits; ``floodwarn outbox
    in-doubt`` lists them masked; ``resend`` queues one alert's again (the next dispatch
    sends them) and ``mark-sent`` records the other's as sent."""
    from warning.cli import app
    from warning.config import load_config

    cfg_path = _cli_config(tmp_path, 'in_doubt_give_up_s = 1\nin_doubt_action = "hold"\nclaim_lease_s = 0.5')
    store = Store(load_config(cfg_path).db_url)
    add_subscribers(store, 3)  # phone(0..2) in Z1
    vault = PhoneVault(SECRET)
    with store.session.begin() as s:  # phone(3..4) in Z2, for a second alert
        for i in (3, 4):
            s.add(Subscriber(phone_hash=vault.lookup_hash(phone(i)), phone_enc=vault.encrypt(phone(i)),
                             zones=["Z2"], language="en", consent_source="test", consent_time=T0))
    queue(store, "Z1.H")
    queue(store, "Z2.H", zone="Z2")
    with FakeTwilio() as fake:
        stopped_dispatcher_left(store, "Z1.H")
        stopped_dispatcher_left(store, "Z2.H")
        fake.list_fails = True
        environ = dict(os.environ, TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                       FLOODWARN_TWILIO_BASE_URL=fake.base_url, FLOODWARN_SECRET_KEY=SECRET, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-c", "from warning.cli import main; main()", "dispatch", "--config", str(cfg_path)]
        done = subprocess.run(cmd, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "5 message(s) in doubt were held" in done.stdout
        assert [m["To"] for m in fake.messages] == [OPERATOR]  # only the operators were texted
        assert all(phone(i) not in done.stdout + done.stderr for i in range(5))
        assert outbox_counts(store) == {"in_doubt": 5}
        [told] = audit_events(store, "delivery_in_doubt")
        assert "held" in told.detail["problem"] and "floodwarn outbox in-doubt" in told.detail["problem"]

        runner = CliRunner()
        listed = runner.invoke(app, ["outbox", "in-doubt", "--config", str(cfg_path)], env={"COLUMNS": "200"})
        assert listed.exit_code == 0, listed.output
        assert "Z1.H: 3 held" in listed.output and "Z2.H: 2 held" in listed.output
        assert "+155******02" in listed.output and all(phone(i) not in listed.output for i in range(5))
        assert [m.to_masked for m in messages_in_doubt(store, "Z2.H")] == ["+155******03", "+155******04"]
        bad = runner.invoke(app, ["outbox", "resend", "--config", str(cfg_path), "--by", "duty officer"])
        assert bad.exit_code != 0  # neither --alert nor --all
        res = runner.invoke(app, ["outbox", "resend", "--config", str(cfg_path), "--alert", "Z1.H",
                                  "--by", "duty officer"])
        assert res.exit_code == 0 and "Z1.H: 3 message(s) queued" in res.output, res.output
        res = runner.invoke(app, ["outbox", "mark-sent", "--config", str(cfg_path), "--all", "--by", "duty officer"])
        assert res.exit_code == 0 and "Z2.H: 2 message(s) recorded as sent" in res.output, res.output
        assert outbox_counts(store, ["Z1.H"]) == {"pending": 3} and outbox_counts(store, ["Z2.H"]) == {"sent": 2}

        fake.list_fails = False
        again = subprocess.run(cmd, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        to = Counter(m["To"] for m in fake.messages)
    assert to == {OPERATOR: 1, phone(0): 1, phone(1): 1, phone(2): 1}
    assert outbox_counts(store) == {"sent": 5}
    held = audit_events(store, "in_doubt_held")
    assert sorted(a.detail["outbox_id"] for a in held) == [1, 2, 3, 4, 5]
    assert all(a.detail["claimed_by"] == "4242-deadbeef" and "+1555" not in str(a.detail) for a in held)
    [resend] = audit_events(store, "in_doubt_resend")
    [marked] = audit_events(store, "in_doubt_marked_sent")
    assert (resend.detail, marked.detail) == ({"alert": "Z1.H", "messages": 3, "by": "duty officer"},
                                              {"alert": "Z2.H", "messages": 2, "by": "duty officer"})
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.in_doubt_since.is_not(None))) == 0


def test_dispatch_ends_when_rows_stay_in_doubt(tmp_path, env):
    """Nothing is waited on for ever: with a simulated clock that never reaches the give-up
    time the dispatcher still asks with backoff; once the clock passes it, ``run`` ends."""
    store = Store(f"sqlite:///{tmp_path}/fw.db")
    add_subscribers(store, 2)
    queue(store, "Z1.W")
    clock = Clock(utcnow())
    with FakeTwilio() as fake:
        stopped_dispatcher_left(store, "Z1.W")
        fake.list_fails = True
        told = []
        d = Dispatcher(store, twilio(fake), clock=clock, lease=timedelta(seconds=30),
                       in_doubt_give_up=timedelta(minutes=15), in_doubt_action="hold",
                       on_problem=lambda problem, at, detail: told.append((problem, at, detail)))
        st = d.drain()
        assert (st.in_doubt, len(st.errors)) == (0, 2) and outbox_counts(store) == {"claimed": 2}
        with store.session() as s:
            row = s.scalar(select(OutboxRow).where(OutboxRow.key == "Z1.W:1:sms"))
            assert row.in_doubt_since == clock.t and row.next_attempt_at == clock.t + timedelta(seconds=5)
        clock.t += timedelta(seconds=3)
        assert d.drain().errors == []  # not due to be asked again yet
        clock.t += timedelta(minutes=16)
        st = d.run(until_empty=True, poll_s=0.01)
    assert st.in_doubt == 2 and outbox_counts(store) == {"in_doubt": 2}
    assert len(told) == 1 and told[0][2]["messages"] == 2 and told[0][1] == clock.t
