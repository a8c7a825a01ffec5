"""The unattended service: an APScheduler 3 scheduler that runs forecast cycles when new
data arrive (and at least every ``service.cycle_every_minutes``), dispatches the outbox
and releases timed-out approvals.

Jobs live in the same database (``scheduler_jobs`` table), with ``coalesce=True`` (missed
runs collapse into one), ``max_instances=1`` and a misfire grace time; on top of that a
lock makes sure two cycles never overlap, whoever calls them. A failed cycle (bad data,
a dead feed) is logged and recorded, and the service goes on with the last good data.
The clock is injectable: the wall clock, or a simulated one that replays a past storm
faster than real time (``service.simulate_from`` and ``service.speed``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .alerting import make_channel, make_dispatcher, publisher
from .config import Config
from .errors import USER_ERRORS
from .outbox import release_due
from .pipeline import Inputs, run_cycle
from .site import Site
from .storage import Store, utcnow

log = logging.getLogger(__name__)

_SERVICE: "Service | None" = None


class SimulatedClock:
    """``start`` at the moment of creation, then ``speed`` simulated seconds per second."""

    def __init__(self, start: datetime, speed: float = 1.0, wall: Callable[[], float] = time.monotonic):
        if start.tzinfo is None:
            raise ValueError("simulate_from needs a time zone")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start, self.speed, self._wall = start.astimezone(timezone.utc), speed, wall
        self._t0 = wall()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(self._wall() - self._t0) * self.speed)


@dataclass
class CycleRecord:
    at: datetime
    started: datetime
    seconds: float
    ok: bool
    detail: str
    forecast_file: str | None = None


@dataclass
class ServiceState:
    cycles: list[CycleRecord] = field(default_factory=list)
    refused_overlaps: int = 0
    last_forecast: str | None = None
    last_cycle_at: datetime | None = None
    last_error: str | None = None
    running: bool = False


class Service:
    """One site's scheduler and its jobs.

    Parameters
    ----------
    cfg : Config
    clock : callable, optional
        Aware UTC "now" for cycle times; defaults to the simulated clock when the config
        asks for one, else the wall clock.
    store : Store, optional
    """

    def __init__(self, cfg: Config, *, clock: Callable[[], datetime] | None = None, store: Store | None = None):
        self.cfg = cfg
        sv = cfg.service
        if clock is None:
            clock = SimulatedClock(sv.simulate_from, sv.speed) if sv.simulate_from else utcnow
        self.clock = clock
        self.store = store or Store(cfg.db_url)
        self.site = Site.load(cfg)
        self.inputs = Inputs(cfg)
        self.state = ServiceState()
        self._lock = threading.Lock()
        self._channel = None
        self.scheduler = None

    @property
    def channel(self):
        if self._channel is None:
            self._channel = make_channel(self.cfg)
        return self._channel

    # ------------------------------------------------------------------ jobs
    def due(self, now: datetime) -> tuple[bool, str]:
        """Whether a cycle should run at ``now``: new forecast data, or the maximum gap."""
        issue = self.inputs.forecast.latest_before(now)
        if issue is None:
            return False, f"no forecast issued at or before {now:%Y-%m-%d %H:%M}Z"
        if str(issue.path) != self.state.last_forecast:
            return True, f"new forecast {issue.path.name}"
        gap = timedelta(minutes=self.cfg.service.cycle_every_minutes)
        if self.state.last_cycle_at is None or now - self.state.last_cycle_at >= gap:
            return True, f"no cycle for {self.cfg.service.cycle_every_minutes:g} min"
        return False, "nothing new"

    def cycle(self, force: bool = False) -> CycleRecord | None:
        """Run a cycle if one is due (or ``force``); never two at once."""
        if not self._lock.acquire(blocking=False):
            self.state.refused_overlaps += 1
            log.warning("a forecast cycle is still running; this one is skipped")
            return None
        try:
            now = self.clock()
            go, why = self.due(now)
            if not (go or force):
                return None
            at = now.replace(second=0, microsecond=0)
            t0 = time.perf_counter()
            try:
                res = run_cycle(self.site, self.cfg, self.store, self.inputs, at, channel=None,
                                write_depth=self.cfg.service.write_depth)
            except USER_ERRORS as exc:
                rec = CycleRecord(at, utcnow(), time.perf_counter() - t0, False, str(exc))
                self.state.last_error = f"{at:%Y-%m-%d %H:%M}Z: {exc}"
                log.error("cycle at %s failed, keeping the last good results: %s", at, exc)
                with self.store.session.begin() as s:  # operators see it in the console
                    self.store.audit(s, "data_problem", {"problem": f"cycle failed, the last good results "
                                                                    f"stand: {exc}"}, time=at)
            else:
                self.state.last_forecast = str(self.inputs.forecast.latest_before(at).path)
                self.state.last_cycle_at = at
                rec = CycleRecord(at, utcnow(), time.perf_counter() - t0, True, why, res.forecast_file)
                changed = [d for d in res.decisions if d["action"] in ("raise", "lower", "all_clear", "renew")]
                log.info("cycle at %s (%s): %d notices, %d SMS queued, %d level changes", at, why,
                         len(res.notices), res.messages_queued, len(changed))
            self.state.cycles.append(rec)
            del self.state.cycles[:-200]
            return rec
        finally:
            self._lock.release()

    def dispatch(self) -> None:
        make_dispatcher(self.cfg, self.store, self.channel).drain()

    def housekeeping(self) -> None:
        release_due(self.store, utcnow(), publisher(self.cfg))

    # ------------------------------------------------------------------ scheduler
    def start(self) -> Any:
        """Start the background scheduler (jobs persisted in the database)."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        global _SERVICE
        _SERVICE = self
        sv = self.cfg.service
        sched = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.store.engine, tablename="scheduler_jobs")},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": sv.misfire_grace_s},
            timezone=timezone.utc,
        )
        poll = max(1.0, sv.poll_seconds)
        sched.add_job(run_job, "interval", args=["cycle"], id="cycle", seconds=poll, replace_existing=True,
                      next_run_time=datetime.now(timezone.utc))
        sched.add_job(run_job, "interval", args=["dispatch"], id="dispatch", seconds=sv.dispatch_every_seconds,
                      replace_existing=True)
        sched.add_job(run_job, "interval", args=["housekeeping"], id="housekeeping", seconds=60,
                      replace_existing=True)
        sched.start()
        self.scheduler = sched
        self.state.running = True
        log.info("scheduler started: checking for new data every %.0f s, dispatching every %.0f s", poll,
                 sv.dispatch_every_seconds)
        return sched

    def shutdown(self) -> None:
        """Stop taking jobs, let the running ones (a cycle, a dispatch batch) finish."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.state.running = False
        log.info("scheduler stopped; the outbox is consistent (claims are recovered on restart)")


def run_job(name: str) -> None:
    """The scheduler's entry point for every job (a plain function, so jobs persist)."""
    svc = _SERVICE
    if svc is None:
        log.warning("job %s fired with no service running", name)
        return
    try:
        {"cycle": svc.cycle, "dispatch": svc.dispatch, "housekeeping": svc.housekeeping}[name]()
    except USER_ERRORS as exc:
        log.error("job %s failed: %s", name, exc)
