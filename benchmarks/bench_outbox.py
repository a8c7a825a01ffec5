"""Time the SMS outbox: queueing a fan-out, dispatching it through the real Twilio SDK, and
the dispatcher under load and faults.

1. queue: ``warning.outbox.queue_fanout`` of one alert to ``--recipients`` subscribers
   (one zone, two languages) in one transaction, as a forecast cycle does: seconds and
   rows per second (numbers are never decrypted to queue).
2. dispatch: ``--send`` of those messages through ``alerts.channels.TwilioChannel`` (the
   official SDK) against the local Twilio-compatible server of the tests
   (``tests/alerts/twilio_fake.py``, in this process), rate limit off, with ``--workers``
   dispatchers in threads: messages per second. The server and the SDK share this
   process and its GIL, so this is a floor for the dispatcher, not Twilio's rate.

3. rate: ``--processes`` dispatcher *processes* (1, 2, 3) against one configured rate
   (``--rate`` segments/s, for ``--seconds``): the segments per second the provider got,
   over the whole run and after the first second's burst. The limit is shared through the
   database, so it should not grow with the number of processes.
4. kills: two dispatcher processes whose batches take longer than the lease, one of them
   SIGKILLed at random moments ``--kills`` times and restarted: messages the provider got
   twice, and messages never sent.
5. in-doubt: ``floodwarn dispatch`` is SIGKILLed mid-batch and the provider's list call
   (how recovery asks whether a message went out) then fails: how long the next
   ``floodwarn dispatch`` takes to settle everything (``in_doubt_give_up_s`` =
   ``--give-up``), and what the operators are told, for ``in_doubt_action`` "resend" and
   "hold".

Queue and dispatch figures are the median of ``--repeats`` runs on fresh SQLite files (a
temporary folder); the others are one run each. Usage (from the repository root):
    .venv/bin/python benchmarks/bench_outbox.py [--recipients 100000] [--send 3000] [--repeats 3]
        [--parts queue dispatch rate kills in-doubt] [--rate 20] [--seconds 10] [--kills 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "alerts"))

from sqlalchemy import insert, select, update  # noqa: E402
from twilio_fake import FakeTwilio  # noqa: E402

from alerts.channels import TwilioChannel  # noqa: E402
from warning.outbox import Dispatcher, outbox_counts, queue_fanout  # noqa: E402
from warning.storage import AlertRow, AuditRow, OutboxRow, Run, Store, Subscriber  # noqa: E402
from warning.subscribers import PhoneVault  # noqa: E402

SECRET = "benchmark-secret"
T0 = datetime(2025, 11, 14, 6, 0, tzinfo=UTC)


def make_store(folder: str, n: int, url: str | None = None) -> Store:
    store = Store(url or f"sqlite:///{folder}/bench.db")
    vault = PhoneVault(SECRET)
    rows = [{"phone_hash": vault.lookup_hash(f"+1555{i:07d}"), "phone_enc": vault.encrypt(f"+1555{i:07d}"),
             "zones": ["Z1"], "language": "es" if i % 4 == 0 else "en", "consent_source": "bench",
             "consent_time": T0} for i in range(n)]
    with store.session.begin() as s:
        for i in range(0, n, 10_000):
            s.execute(insert(Subscriber), rows[i:i + 10_000])
        s.add(Run(id="r1", at=T0, scope="live"))
        s.flush()
        s.add(AlertRow(identifier="Z1.A", zone="Z1", scope="live", run_id="r1", level=2, level_name="warning",
                       msg_type="Alert", status="Actual", sent=T0, expires=T0, cap_path="-", headline="-"))
    return store


def bench_queue(n: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        store = make_store(folder, n)
        t0 = time.perf_counter()
        with store.session.begin() as s:
            k = queue_fanout(s, store, alert_identifier="Z1.A", zone="Z1", scope="live",
                             bodies=lambda lang: f"Flood Warning for Millbrook ({lang}): move to higher ground.",
                             held=False, at=T0)
        took = time.perf_counter() - t0
        assert k == n
        store.dispose()
        return took


def bench_dispatch(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder, FakeTwilio() as fake:
        store = make_store(folder, n)
        with store.session.begin() as s:
            queue_fanout(s, store, alert_identifier="Z1.A", zone="Z1", scope="live",
                         bodies=lambda lang: "Flood Warning for Millbrook: move to higher ground.", held=False, at=T0)
        ds = [Dispatcher(store, TwilioChannel(fake.account_sid, fake.auth_token, from_number="+15005550006",
                                              base_url=fake.base_url, validity_period=600), batch=100)
              for _ in range(workers)]
        threads = [threading.Thread(target=d.drain) for d in ds]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        assert len(fake.messages) == n, (len(fake.messages), n)
        with store.session.begin() as s:  # nothing left
            assert s.execute(update(OutboxRow).where(OutboxRow.state != "sent").values(error="x")).rowcount == 0
        store.dispose()
        return took


# --------------------------------------------------------------------------- under load and faults
#: one dispatcher process: says "ready", waits for "go" on stdin (so all start together),
#: runs until the outbox is empty, prints its stats as JSON
WORKER = """
import json, sys
from datetime import timedelta
from alerts.channels import TwilioChannel
from warning.outbox import Dispatcher
from warning.storage import Store
url, base, sid, token, rate, batch, lease = sys.argv[1:8]
d = Dispatcher(Store(url), TwilioChannel(sid, token, from_number="+15005550006", base_url=base),
               rate=float(rate), batch=int(batch), lease=timedelta(seconds=float(lease)))
print("ready", flush=True)
sys.stdin.readline()
st = d.run(until_empty=True, poll_s=0.2)
print(json.dumps({"sent": st.sent, "segments": st.segments, "recovered": st.recovered,
                  "requeued": st.requeued, "lost": st.lost}), flush=True)
"""


def _worker(url: str, fake: FakeTwilio, rate: float, batch: int, lease: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WORKER, url, fake.base_url, fake.account_sid, fake.auth_token,
                          str(rate), str(batch), str(lease)], env=_env(), cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("a dispatcher process did not start")
    return p


def _env(**more: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), FLOODWARN_SECRET_KEY=SECRET, **more)


def _queue(store: Store) -> None:
    with store.session.begin() as s:
        queue_fanout(s, store, alert_identifier="Z1.A", zone="Z1", scope="live",
                     bodies=lambda lang: "Flood Warning for Millbrook: move to higher ground.", held=False, at=T0)


def bench_shared_rate(processes: int, rate: float, seconds: float) -> dict:
    """``processes`` dispatcher processes against one rate: segments/s the provider got."""
    n = int(rate * seconds)
    with tempfile.TemporaryDirectory() as folder, FakeTwilio() as fake:
        store = make_store(folder, n)
        _queue(store)
        url = f"sqlite:///{folder}/bench.db"
        procs = [_worker(url, fake, rate, 50, 30) for _ in range(processes)]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        stats = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        times = sorted(float(m["received_at"]) for m in fake.messages)
        store.dispose()
    assert len(times) == n, (len(times), n)
    span = times[-1] - times[0]
    steady = [t for t in times if t >= times[0] + 2.0]  # after the first burst (one second's worth)
    return {"overall": n / span, "steady": (len(steady) - 1) / (steady[-1] - steady[0]), "span": span,
            "per_process": [s["sent"] for s in stats]}


def bench_kills(kills: int, n: int, rate: float, batch: int, lease: float, delay: float,
                seed: int = 13) -> dict:
    """Two dispatcher processes whose batches take longer than the lease (``batch`` at
    ``rate`` shared by two) against a slow provider (``delay`` s per request, so many kills
    land mid-request), one of them SIGKILLed at random moments ``kills`` times (and
    restarted); then both run to the end. Duplicates and lost messages at the provider."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder, FakeTwilio() as fake:
        fake.delay_s = delay
        store = make_store(folder, n)
        _queue(store)
        url = f"sqlite:///{folder}/bench.db"
        procs = [_worker(url, fake, rate, batch, lease) for _ in range(2)]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        t0 = time.perf_counter()
        done = 0
        while done < kills:
            time.sleep(rng.uniform(0.3, 2.0))
            i = rng.randrange(2)
            if procs[i].poll() is not None:
                break  # the outbox ran dry before all the kills
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            procs[i].stdout.close()
            procs[i].stdin.close()
            done += 1
            procs[i] = _worker(url, fake, rate, batch, lease)
            procs[i].stdin.write("go\n")
            procs[i].stdin.flush()
        sent_at_last_kill = len(fake.messages)
        for p in procs:
            p.communicate(timeout=900)
        took = time.perf_counter() - t0
        to = Counter(m["To"] for m in fake.messages)
        with store.session() as s:
            events = Counter(s.scalars(select(AuditRow.event).where(
                AuditRow.event.in_(["sent_recovered", "requeued", "claim_lost"]))))
        states = outbox_counts(store)
        store.dispose()
    return {"kills": done, "messages": n, "at_provider": len(fake.messages), "duplicates": len(fake.messages) - len(to),
            "lost": n - len(to), "outbox": states, "recovered": events["sent_recovered"],
            "requeued": events["requeued"], "claim_lost": events["claim_lost"], "took": took,
            "sent_at_last_kill": sent_at_last_kill}


def bench_in_doubt(action: str, give_up_s: float, n: int, rate: float) -> dict:
    """A dispatcher (``floodwarn dispatch``) is SIGKILLed mid-batch while the provider's list
    call fails: how long the next ``floodwarn dispatch`` takes to settle what is in doubt,
    and what the operators are told."""
    from tests.conftest import demo_config_text
    from warning.config import load_config

    with tempfile.TemporaryDirectory() as folder, FakeTwilio() as fake:
        text = demo_config_text().replace('output_dir = "', f'output_dir = "{folder}/out" #', 1)
        text = text.replace("max_segments = 4\n", f"max_segments = 4\nrate_segments_per_s = {rate}\n"
                            f"claim_lease_s = 2\nin_doubt_give_up_s = {give_up_s}\n"
                            f'in_doubt_action = "{action}"\n', 1)
        text = text.replace("[service]\n", '[service]\noperator_phones = ["+15005550100"]\n', 1)
        cfg_path = Path(folder) / "site.toml"
        cfg_path.write_text(text)
        db = load_config(cfg_path).db_url
        store = make_store(folder, n, url=db)
        _queue(store)
        env = _env(TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                   FLOODWARN_TWILIO_BASE_URL=fake.base_url)
        cmd = [sys.executable, "-c", "from warning.cli import main; main()", "dispatch", "--config", str(cfg_path)]
        victim = subprocess.Popen(cmd, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(fake.messages) < n // 4 + 17:  # mid-batch (batches of 50)
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        fake.list_fails = True
        before = len(fake.requests)
        with store.session() as s:
            claimed = len(s.scalars(select(OutboxRow.id).where(OutboxRow.state == "claimed")).all())
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=3600)
        took = time.perf_counter() - t0
        asks = sum(1 for r in fake.requests[before:] if r.method == "GET")
        with store.session() as s:
            in_doubt = s.scalars(select(AuditRow.detail).where(AuditRow.event == "delivery_in_doubt")).all()
            told_at = s.scalar(select(AuditRow.time).where(AuditRow.event == "delivery_in_doubt"))
            checks = len(s.scalars(select(AuditRow.id).where(AuditRow.event == "delivery_check_failed")).all())
        ops = [m["Body"] for m in fake.messages if m["To"] == "+15005550100"]
        to = Counter(m["To"] for m in fake.messages if m["To"] != "+15005550100")
        states = outbox_counts(store)
        store.dispose()
    return {"action": action, "give_up_s": give_up_s, "took": took, "claimed_at_kill": claimed,
            "told_after": (told_at - started).total_seconds() if told_at else None,
            "returncode": done.returncode, "list_calls": asks, "check_failed_audits": checks,
            "operators_told": len(in_doubt), "problem": in_doubt[0]["problem"] if in_doubt else None,
            "in_doubt": in_doubt[0]["messages"] if in_doubt else 0, "operator_sms": ops,
            "duplicates": sum(to.values()) - len(to), "lost": n - len(to) if action == "resend" else None,
            "outbox": states, "summary": " ".join(done.stdout.split())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--send", type=int, default=3000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["queue", "dispatch", "rate", "kills", "in-doubt"],
                    choices=["queue", "dispatch", "rate", "kills", "in-doubt"])
    ap.add_argument("--rate", type=float, default=20.0, help="segments/s for rate, kills and in-doubt")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each rate run")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--give-up", type=float, default=20.0, help="in_doubt_give_up_s for in-doubt")
    a = ap.parse_args()
    os.environ["FLOODWARN_SECRET_KEY"] = SECRET
    if "queue" in a.parts:
        q = [bench_queue(a.recipients) for _ in range(a.repeats)]
        med = statistics.median(q)
        print(f"queue a fan-out of {a.recipients} recipients: median {med:.2f} s "
              f"({a.recipients / med:,.0f} rows/s; runs {', '.join(f'{x:.2f}' for x in q)})", flush=True)
    if "dispatch" in a.parts:
        for w in a.workers:
            d = [bench_dispatch(a.send, w) for _ in range(a.repeats)]
            med = statistics.median(d)
            print(f"dispatch {a.send} messages, {w} dispatcher(s), rate limit off: median {med:.2f} s, "
                  f"{a.send / med:,.0f} messages/s (runs {', '.join(f'{x:.2f}' for x in d)})", flush=True)
    if "rate" in a.parts:
        for k in a.processes:
            r = bench_shared_rate(k, a.rate, a.seconds)
            print(f"rate limit {a.rate:g} segments/s shared, {k} dispatcher process(es): the provider got "
                  f"{r['overall']:.1f} segments/s over {r['span']:.1f} s ({r['steady']:.1f} after the first "
                  f"second's burst); sent per process {r['per_process']}", flush=True)
    if "kills" in a.parts:
        batch, lease, delay = 50, 1.0, 0.04
        r = bench_kills(a.kills, 1000, a.rate, batch, lease, delay)
        print(f"{r['kills']} SIGKILLs of two dispatcher processes (batches of {batch} at a shared {a.rate:g}/s, "
              f"{batch / a.rate:.1f}-{2 * batch / a.rate:.1f} s per batch, lease {lease:g} s, provider answering "
              f"in {delay * 1000:.0f} ms): "
              f"{r['messages']} messages, the provider got {r['at_provider']}: {r['duplicates']} duplicate(s), "
              f"{r['lost']} lost; outbox {r['outbox']}; recovery found {r['recovered']} sent and requeued "
              f"{r['requeued']}, {r['claim_lost']} claim(s) lost; {r['sent_at_last_kill']} sent by the last "
              f"kill, all done in {r['took']:.1f} s", flush=True)
    if "in-doubt" in a.parts:
        for action in ("resend", "hold"):
            r = bench_in_doubt(action, a.give_up, 400, a.rate)
            print(f"in doubt, list call failing, in_doubt_action={action!r}, in_doubt_give_up_s={a.give_up:g}, "
                  f"lease 2 s: killed with {r['claimed_at_kill']} message(s) claimed; the next 'floodwarn "
                  f"dispatch' told the operators after {r['told_after'] or float('nan'):.1f} s and ended after "
                  f"{r['took']:.1f} s (exit {r['returncode']}); {r['list_calls']} list calls, "
                  f"{r['check_failed_audits']} delivery_check_failed audit rows; {r['in_doubt']} message(s) "
                  f"given up on; operators told {r['operators_told']} time(s); duplicates {r['duplicates']}"
                  + (f", lost {r['lost']}" if r["lost"] is not None else "") + f"; outbox {r['outbox']}",
                  flush=True)
            print(f"  dispatch said: {r['summary']}", flush=True)
            for body in r["operator_sms"]:
                print(f"  operator SMS: {body}", flush=True)


if __name__ == "__main__":
    main()
