"""Shared state on PostgreSQL (and the same guarantees on SQLite where they apply): two
dispatcher processes on one outbox send each message once; two schedulers on one
database run each forecast cycle once; the tables round-trip (encrypted numbers, JSON,
aware datetimes back as UTC) and an older database gets its missing columns.

The PostgreSQL tests need ``FLOODWARN_TEST_POSTGRES_URL`` (``.ci/run`` starts a server and
sets it); without it they are skipped with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "alerts"))
from twilio_fake import FakeTwilio  # noqa: E402

from tests.conftest import REPO, Clock  # noqa: E402
from tests.warning.test_outbox import SECRET, T0, add_subscribers, phone, queue  # noqa: E402
from warning.outbox import outbox_counts  # noqa: E402
from warning.storage import (AuditRow, LeaseRow, OutboxRow, Run, Store, Subscriber,  # noqa: E402
                             acquire_lease, release_lease, renew_lease)
from warning.subscribers import PhoneVault  # noqa: E402

AT = datetime(2025, 11, 14, 12, 0, tzinfo=UTC)

#: one dispatcher process: builds its store and channel, says "ready", waits for "go" on
#: stdin (so both start together), drains the outbox and prints what it sent
DISPATCHER = """
import json, sys
from alerts.channels import TwilioChannel
from warning.outbox import Dispatcher
from warning.storage import Store
url, base, sid, token = sys.argv[1:5]
d = Dispatcher(Store(url), TwilioChannel(sid, token, from_number="+15005550006", base_url=base), batch=100)
print("ready", flush=True)
sys.stdin.readline()
st = d.drain()
print(json.dumps({"sent": st.sent, "id": d.id}), flush=True)
"""


def test_two_dispatcher_processes_on_postgres_send_each_message_once(pg_url, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    store = Store(pg_url)
    n = 2000
    add_subscribers(store, n)
    assert queue(store, "Z1.P") == n
    with FakeTwilio() as fake:
        env = dict(os.environ, PYTHONPATH=str(REPO), FLOODWARN_SECRET_KEY=SECRET)
        procs = [subprocess.Popen([sys.executable, "-c", DISPATCHER, pg_url, fake.base_url, fake.account_sid,
                                   fake.auth_token], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready", p.stderr.read()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = []
            for p in procs:
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        to = Counter(m["To"] for m in fake.messages)
    assert len(fake.messages) == n, f"{len(fake.messages) - len(to)} duplicates"
    assert set(to) == {phone(i) for i in range(n)} and max(to.values()) == 1
    assert sum(r["sent"] for r in results) == n
    assert all(r["sent"] > 0 for r in results), results  # both processes took part
    assert outbox_counts(store) == {"sent": n}
    with store.session() as s:
        by = Counter(s.scalars(select(OutboxRow.claimed_by)))
        assert set(s.scalars(select(OutboxRow.provider_id))) == {m["sid"] for m in fake.messages}
    assert set(by) == {r["id"] for r in results}
    store.dispose()


def test_lease_goes_to_exactly_one_of_many_at_once(db_url):
    stores = [Store(db_url) for _ in range(6)]  # an engine each, as separate processes have
    barrier = threading.Barrier(len(stores))
    got: dict[int, bool] = {}

    def take(i: int) -> None:
        barrier.wait()
        got[i] = acquire_lease(stores[i], "cycle:live", f"holder-{i}", timedelta(minutes=5))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [winner] = [i for i, ok in got.items() if ok]
    loser = (winner + 1) % len(stores)
    s0 = stores[0]
    assert acquire_lease(s0, "cycle:live", f"holder-{winner}", timedelta(minutes=5))  # the holder extends
    assert renew_lease(s0, "cycle:live", f"holder-{winner}", timedelta(minutes=5))
    assert not renew_lease(s0, "cycle:live", f"holder-{loser}", timedelta(minutes=5))
    release_lease(s0, "cycle:live", f"holder-{loser}")  # not the holder's: no effect
    assert not acquire_lease(s0, "cycle:live", f"holder-{loser}", timedelta(minutes=5))
    # an expired lease (its holder died) goes to the next one who asks
    assert acquire_lease(s0, "cycle:live", f"holder-{winner}", timedelta(0))
    assert acquire_lease(s0, "cycle:live", f"holder-{loser}", timedelta(minutes=5))
    release_lease(s0, "cycle:live", f"holder-{loser}")
    with s0.session() as s:
        assert s.scalars(select(LeaseRow)).all() == []
    assert acquire_lease(s0, "cycle:live", "someone", timedelta(minutes=5))
    for st in stores:
        st.dispose()


def test_two_schedulers_on_one_database_run_each_cycle_once(db_url, demo_cfg, monkeypatch):
    from warning import service as service_mod
    from warning.service import Service

    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "two-schedulers")
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = demo_cfg.model_copy(update={"database_url": db_url})
    clock = Clock(AT)
    a, b = Service(cfg, clock=clock), Service(cfg, clock=clock)  # a Store (engine) each
    assert a.store is not b.store
    a.site.prepare()
    b.site.prepare()
    # the first to take the lease runs the cycle and holds it until the other has given up
    real = service_mod.run_cycle
    other_gave_up = threading.Event()

    def held(*args, **kw):
        other_gave_up.wait(20)
        return real(*args, **kw)

    monkeypatch.setattr(service_mod, "run_cycle", held)

    def both() -> dict[str, object]:
        barrier = threading.Barrier(2)
        out: dict[str, object] = {}

        def one(name: str, svc: Service) -> None:
            barrier.wait()
            out[name] = svc.cycle()
            if out[name] is None:
                other_gave_up.set()

        threads = [threading.Thread(target=one, args=kv) for kv in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        other_gave_up.clear()
        return out

    def runs() -> list[str]:
        with a.store.session() as s:
            return sorted(s.scalars(select(Run.id).where(Run.status == "done")))

    first = both()
    assert sorted(k for k, v in first.items() if v is not None) in (["a"], ["b"]), first
    ran, idle = (a, b) if first["a"] is not None else (b, a)
    assert first["a" if ran is a else "b"].ok
    assert runs() == [f"{AT:%Y%m%dT%H%MZ}-live"]
    assert idle.state.run_elsewhere == 1
    monkeypatch.setattr(service_mod, "run_cycle", real)
    # the same minute again, even forced: the other scheduler ran it already
    assert idle.cycle(force=True) is None and idle.state.run_elsewhere == 2
    # a minute later nothing is new for either: the idle one took in the other's cycle
    clock.t = AT + timedelta(minutes=1)
    assert idle.cycle() is None and ran.cycle() is None
    assert idle.state.last_cycle_at == AT and idle.state.last_forecast == ran.state.last_forecast
    # the next forecast (the demo issues one every 3 h): again exactly one of them runs it
    monkeypatch.setattr(service_mod, "run_cycle", held)
    clock.t = AT + timedelta(hours=3)
    second = both()
    assert len([v for v in second.values() if v is not None]) == 1, second
    assert runs() == [f"{AT:%Y%m%dT%H%MZ}-live", f"{AT + timedelta(hours=3):%Y%m%dT%H%MZ}-live"]
    with a.store.session() as s:
        assert s.scalars(select(LeaseRow)).all() == []  # released after each cycle
        decisions = Counter(s.scalars(select(AuditRow.run_id).where(AuditRow.run_id.is_not(None))))
    assert set(decisions) <= set(runs())
    for svc in (a, b):
        svc.shutdown()
        svc.store.dispose()


def test_tables_round_trip_on_postgres(pg_url, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    store = Store(pg_url)
    assert store.dialect == "postgresql"
    vault = PhoneVault(SECRET)
    eastern = timezone(timedelta(hours=-5))
    consent = datetime(2025, 11, 14, 1, 30, 15, 123456, tzinfo=eastern)
    summary = {"metrics": {"MB-TOWN": {"peak_depth_m": 0.42, "p": None}, "ÅLAND": {"x": 1}},
               "problems": ["gauge MB-WEST stale — last 05:00Z"], "rain": {"times": [], "now_index": 3},
               "nested": [[1, 2.5], {"a": True}]}
    with store.session.begin() as s:
        s.add(Subscriber(phone_hash=vault.lookup_hash("+447700900123"), phone_enc=vault.encrypt("+447700900123"),
                         zones=["MB-TOWN", "HILLTOP"], language="cy", consent_source="web form",
                         consent_time=consent))
        s.add(Run(id="20251114T1200Z-live", at=AT, scope="live", summary=summary, status="done",
                  finished=AT + timedelta(seconds=2)))
    with pytest.raises(Exception, match="naive datetime"):
        with store.session.begin() as s:
            s.add(Run(id="naive", at=datetime(2025, 11, 14, 12, 0), scope="live"))
    other = Store(pg_url)  # another engine: nothing cached
    with other.session() as s:
        sub = s.scalar(select(Subscriber))
        run = s.get(Run, "20251114T1200Z-live")
        # the server's own view: timestamptz, stored as the same instant
        zone, instant = s.execute(text("SELECT current_setting('TimeZone'), consent_time AT TIME ZONE 'UTC' "
                                       "FROM subscribers")).one()
    assert vault.decrypt(sub.phone_enc) == "+447700900123" and "+4477" not in sub.phone_enc
    assert sub.zones == ["MB-TOWN", "HILLTOP"] and sub.roster == "public" and sub.opted_out_at is None
    assert sub.consent_time == consent and sub.consent_time.tzinfo == UTC
    assert sub.consent_time.hour == 6 and instant == datetime(2025, 11, 14, 6, 30, 15, 123456)
    assert run.summary == summary and list(run.summary["metrics"]) == ["MB-TOWN", "ÅLAND"]  # order kept
    assert run.at == AT and run.at.tzinfo == UTC and run.started.tzinfo == UTC
    # range queries on aware datetimes compare instants, whatever the offset given
    with other.session() as s:
        assert s.scalar(select(Subscriber.id).where(Subscriber.consent_time >= consent.astimezone(UTC))) == sub.id
        assert s.scalar(select(Subscriber.id).where(Subscriber.consent_time > consent)) is None
    assert zone  # any server time zone: values come back UTC
    for st in (store, other):
        st.dispose()


def test_an_older_database_gets_the_new_columns(db_url, monkeypatch):
    """A subscribers table made before ``roster`` existed: the store adds the column (with
    its default for the rows already there), on SQLite and PostgreSQL alike."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", SECRET)
    old = MetaData()
    Table("subscribers", old, *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                                       unique=c.unique)
                                for c in Subscriber.__table__.columns if c.name != "roster"))
    engine = create_engine(db_url)
    old.create_all(engine)
    vault = PhoneVault(SECRET)
    with engine.begin() as c:
        c.execute(insert(old.tables["subscribers"]), {"phone_hash": vault.lookup_hash(phone(1)),
                                                      "phone_enc": vault.encrypt(phone(1)), "zones": ["Z1"],
                                                      "language": "en", "consent_source": "old",
                                                      "consent_time": T0})
    engine.dispose()
    store = Store(db_url)
    with store.session() as s:
        sub = s.scalar(select(Subscriber))
        assert (sub.roster, sub.consent_time, vault.decrypt(sub.phone_enc)) == ("public", T0, phone(1))
        s.add(Subscriber(phone_hash="h2", phone_enc="e2", zones=["*"], consent_source="new", consent_time=T0,
                         roster="drill"))
        s.commit()
    Store(db_url).dispose()  # a second start-up finds nothing to add
    with store.session() as s:
        assert sorted(s.scalars(select(Subscriber.roster))) == ["drill", "public"]
    store.dispose()


def test_grib_reader_beside_postgres_exits_cleanly(pg_url):
    """eccodes and psycopg bundle different OpenLDAP libraries; with eccodes' loaded first,
    a process that had connected to PostgreSQL crashed at exit (SIGSEGV in a library
    destructor). The GRIB reader loads psycopg's first; the oracle is the exit status."""
    import importlib.util

    if importlib.util.find_spec("cfgrib") is None:
        pytest.skip("cfgrib is not installed: the GRIB reader is the 'grib' extra")
    url = pg_url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    code = ("from warning.ingest.grid_sources import import_grib; import_grib()\n"
            "import psycopg\n"
            f"psycopg.connect({url!r}).close()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
