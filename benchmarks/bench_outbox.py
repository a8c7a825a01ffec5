"""Time the SMS outbox: queueing a fan-out, and dispatching it through the real Twilio SDK.

1. queue: ``warning.outbox.queue_fanout`` of one alert to ``--recipients`` subscribers
   (one zone, two languages) in one transaction, as a forecast cycle does: seconds and
   rows per second (numbers are never decrypted to queue).
2. dispatch: ``--send`` of those messages through ``alerts.channels.TwilioChannel`` (the
   official SDK) against the local Twilio-compatible server of the tests
   (``tests/alerts/twilio_fake.py``, in this process), rate limit off, with ``--workers``
   dispatchers in threads: messages per second. The server and the SDK share this
   process and its GIL, so this is a floor for the dispatcher, not Twilio's rate.

Each figure is the median of ``--repeats`` runs on fresh SQLite files (a temporary
folder). Usage (from the repository root):
    .venv/bin/python benchmarks/bench_outbox.py [--recipients 100000] [--send 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "alerts"))

from sqlalchemy import insert, update  # noqa: E402
from twilio_fake import FakeTwilio  # noqa: E402

from alerts.channels import TwilioChannel  # noqa: E402
from warning.outbox import Dispatcher, queue_fanout  # noqa: E402
from warning.storage import AlertRow, OutboxRow, Run, Store, Subscriber  # noqa: E402
from warning.subscribers import PhoneVault  # noqa: E402

SECRET = "benchmark-secret"
T0 = datetime(2025, 11, 14, 6, 0, tzinfo=UTC)


def make_store(folder: str, n: int) -> Store:
    store = Store(f"sqlite:///{folder}/bench.db")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--send", type=int, default=3000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ["FLOODWARN_SECRET_KEY"] = SECRET
    q = [bench_queue(a.recipients) for _ in range(a.repeats)]
    med = statistics.median(q)
    print(f"queue a fan-out of {a.recipients} recipients: median {med:.2f} s "
          f"({a.recipients / med:,.0f} rows/s; runs {', '.join(f'{x:.2f}' for x in q)})", flush=True)
    for w in a.workers:
        d = [bench_dispatch(a.send, w) for _ in range(a.repeats)]
        med = statistics.median(d)
        print(f"dispatch {a.send} messages, {w} dispatcher(s), rate limit off: median {med:.2f} s, "
              f"{a.send / med:,.0f} messages/s (runs {', '.join(f'{x:.2f}' for x in d)})", flush=True)


if __name__ == "__main__":
    main()
