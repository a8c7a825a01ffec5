"""Prometheus metrics of the running service: ``GET /metrics`` (text exposition format).

Everything is read when Prometheus scrapes, from the one place that already knows it, so
the numbers cannot drift from what the service and the database say:

- from the service's state (:class:`warning.service.ServiceState`), when the app has one:
  ``floodwarn_cycle_duration_seconds`` (histogram) and ``floodwarn_cycles_total{outcome=
  "ok"|"failed"}``, tallied from the cycle records (each record counted once, at the first
  scrape that sees it: counts start at zero when the app starts, like any counter);
  ``floodwarn_last_cycle_success_timestamp_seconds`` (wall clock, when the last good cycle
  ended); ``floodwarn_feed_lag_seconds{source}`` (the service's clock minus the newest data
  time the source's last check found) and ``floodwarn_feed_up{source}`` (1 when that check
  was "ok"); ``floodwarn_data_problems{kind}`` (data problems open now: ``feed:<source>``,
  ``feed:gauges:stale``, ``cycle``, or ``file`` for refused forecast files);
- from the database, with one aggregate query each (never row loads):
  ``floodwarn_outbox_depth{state}`` (outbox rows by state), ``floodwarn_outbox_oldest_age_seconds``
  (the oldest message still waiting to go out, ``pending``, ``claimed`` or ``in_doubt``,
  counted from its notice's time on the service's clock; 0 when none waits), and
  ``floodwarn_deliveries{status}`` (sent messages by the provider's latest status: a gauge,
  as a message moves from ``sent`` to ``delivered``).

A scrape never fails: a part that cannot be read (the database is down) is left out and
counted in ``floodwarn_metrics_scrape_errors_total{part}``. Labels are states, statuses,
source names and problem kinds only: never a phone number, a message or a file path.

Each app has its own :class:`prometheus_client.CollectorRegistry`, not the global one, so
several apps in one process (tests) do not clash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func, select

from .storage import AlertRow, DeliveryRow, OutboxRow, Store, utcnow

__all__ = ["CYCLE_BUCKETS", "WAITING_STATES", "FloodwarnCollector", "make_metrics_router"]

log = logging.getLogger(__name__)

#: upper bounds (s) of the cycle duration histogram: a small site takes seconds, a
#: national grid on Dask minutes
CYCLE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: outbox states of messages waiting to go out, for the oldest age (held ones wait for a
#: manager instead, and are counted in the depth only)
WAITING_STATES = ("pending", "claimed", "in_doubt")
#: states always shown in the depth, 0 when empty, so alert rules have a series to watch
_SHOWN_STATES = ("held", *WAITING_STATES)
_PARTS = ("service", "outbox", "deliveries")


class _CycleTally:
    """Cumulative counts of the cycle records seen so far (the service keeps its last 200
    only): a record is added once, at the first scrape that sees it."""

    def __init__(self) -> None:
        self.last: Any = None  # the newest record counted
        self.outcomes = {"ok": 0, "failed": 0}
        self.buckets = [0] * len(CYCLE_BUCKETS)
        self.sum = 0.0
        self.last_ok: datetime | None = None

    def add(self, records: Sequence[Any]) -> None:
        records = list(records)  # a snapshot: the cycle thread appends meanwhile
        seen = next((i for i in range(len(records) - 1, -1, -1) if records[i] is self.last), None)
        for rec in records if seen is None else records[seen + 1:]:
            self.outcomes["ok" if rec.ok else "failed"] += 1
            self.sum += rec.seconds
            for i, bound in enumerate(CYCLE_BUCKETS):
                if rec.seconds <= bound:
                    self.buckets[i] += 1
            if rec.ok and (self.last_ok is None or rec.started > self.last_ok):
                self.last_ok = rec.started
        if records:
            self.last = records[-1]

    def families(self) -> Iterator[Metric]:
        total = sum(self.outcomes.values())
        yield HistogramMetricFamily(
            "floodwarn_cycle_duration_seconds", "Wall-clock duration of forecast cycles, ok or failed.",
            buckets=[*((f"{b:g}", n) for b, n in zip(CYCLE_BUCKETS, self.buckets)), ("+Inf", total)],
            sum_value=self.sum)
        cycles = CounterMetricFamily("floodwarn_cycles", "Forecast cycles run, by outcome.", labels=["outcome"])
        for outcome, n in self.outcomes.items():
            cycles.add_metric([outcome], n)
        yield cycles
        if self.last_ok is not None:
            yield GaugeMetricFamily("floodwarn_last_cycle_success_timestamp_seconds",
                                    "When the last successful forecast cycle ended (Unix time, wall clock).",
                                    value=self.last_ok.timestamp())


class FloodwarnCollector:
    """The service's metrics, read at each scrape (see the module's docstring)."""

    def __init__(self, store: Store, service: Any = None):
        self.store, self.service = store, service
        self._tally = _CycleTally()
        self._errors = dict.fromkeys(_PARTS, 0)
        self._lock = threading.Lock()  # scrapes may overlap; the tally is updated by one at a time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: list[Metric] = []
            for part, read in (("service", self._service), ("outbox", self._outbox),
                               ("deliveries", self._deliveries)):
                try:
                    families.extend(read())
                except Exception as exc:  # noqa: BLE001  (a scrape never fails: the part is left out, counted)
                    self._errors[part] += 1
                    log.warning("metrics: could not read the %s: %s: %s", part, type(exc).__name__,
                                str(exc).splitlines()[0][:200] if str(exc) else "")
            errors = CounterMetricFamily("floodwarn_metrics_scrape_errors",
                                         "Parts of /metrics that could not be read (left out of that scrape).",
                                         labels=["part"])
            for part, n in self._errors.items():
                errors.add_metric([part], n)
            families.append(errors)
        yield from families

    def _now(self) -> datetime:
        """Now on the service's clock (simulated when it replays a storm), else the wall clock."""
        return self.service.clock() if self.service is not None else utcnow()

    def _service(self) -> list[Metric]:
        if self.service is None:
            return []
        state = self.service.state
        self._tally.add(state.cycles)
        out = list(self._tally.families())
        now = self._now()
        lag = GaugeMetricFamily("floodwarn_feed_lag_seconds",
                                "The service's clock minus the newest data time of each source, at its last "
                                "check.", labels=["source"])
        up = GaugeMetricFamily("floodwarn_feed_up", "1 when the last check of the source found it ok, else 0.",
                               labels=["source"])
        for source, feed in sorted(dict(state.feeds).items()):
            if feed.state.startswith("none"):  # a source this site does not have
                continue
            up.add_metric([source], 1.0 if feed.state == "ok" else 0.0)
            if feed.last_data is not None:
                lag.add_metric([source], (now - feed.last_data).total_seconds())
        problems = GaugeMetricFamily("floodwarn_data_problems", "Data problems open now, by kind.",
                                     labels=["kind"])
        kinds: dict[str, int] = {}
        for key in list(state.problems):
            kind = "file" if key.startswith("file:") else key  # never a path in a label
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in sorted(kinds.items()):
            problems.add_metric([kind], n)
        return [*out, lag, up, problems]

    def _outbox(self) -> list[Metric]:
        with self.store.engine.connect() as c:
            by_state = dict(c.execute(select(OutboxRow.state, func.count()).group_by(OutboxRow.state)).all())
            oldest = c.execute(select(func.min(AlertRow.sent)).select_from(OutboxRow)
                               .join(AlertRow, AlertRow.identifier == OutboxRow.alert_identifier)
                               .where(OutboxRow.state.in_(WAITING_STATES))).scalar()
        depth = GaugeMetricFamily("floodwarn_outbox_depth", "SMS outbox rows by state.", labels=["state"])
        for state in sorted({*_SHOWN_STATES, *by_state}):
            depth.add_metric([state], by_state.get(state, 0))
        age = 0.0 if oldest is None else max(0.0, (self._now() - oldest).total_seconds())
        return [depth, GaugeMetricFamily("floodwarn_outbox_oldest_age_seconds",
                                         "Age of the oldest SMS waiting to go out (pending, claimed or in "
                                         "doubt), from its notice's time; 0 when none waits.", value=age)]

    def _deliveries(self) -> list[Metric]:
        with self.store.engine.connect() as c:
            rows = c.execute(select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)).all()
        fam = GaugeMetricFamily("floodwarn_deliveries", "Sent SMS by the provider's latest delivery status.",
                                labels=["status"])
        for status, n in sorted(rows):
            fam.add_metric([status], n)
        return [fam]


def make_metrics_router(store: Store, service: Any = None) -> APIRouter:
    """A router with ``GET /metrics`` for one app, on a registry of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FloodwarnCollector(store, service))  # type: ignore[arg-type]
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text exposition format (``text/plain; version=0.0.4``)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
