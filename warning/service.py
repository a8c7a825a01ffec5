"""The unattended service: an APScheduler 3 scheduler that runs forecast cycles when new
data arrive (and at least every ``service.cycle_every_minutes``), dispatches the outbox
and releases timed-out approvals.

Jobs are kept in memory and made anew from the config at every start (see
:meth:`Service.start`), with ``coalesce=True`` (missed runs collapse into one),
``max_instances=1`` and a misfire grace time; on top of that a lock makes sure two
cycles never overlap, whoever calls them. Several schedulers may share one database (PostgreSQL, or SQLite on one machine): a lease row (``leases``, named
``cycle:<scope>``) lets one of them run a cycle at a time, and a cycle another scheduler
already ran for the same minute (run id ``<time>-live``) is not run again. A failed cycle (bad data,
a dead feed) is logged and recorded, and the service goes on with the last good data.
The clock is injectable: the wall clock, or a simulated one that replays a past storm
faster than real time (``service.simulate_from`` and ``service.speed``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy.exc import SQLAlchemyError

from .alerting import make_dispatcher, publisher
from .config import Config
from .errors import USER_ERRORS
from .gauge_cycle import newest_good_time
from .logs import log_context
from .operators import make_channel, tell_operators, zone_failed_text
from .outbox import release_due
from .pipeline import Inputs, run_cycle
from .site import Site
from .storage import Run, Store, acquire_lease, release_lease, renew_lease, utcnow

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
class FeedState:
    """What an ingest job last saw of one source."""

    last_data: datetime | None = None  # newest data time (forecast issue, last good reading)
    checked: datetime | None = None
    state: str = "not checked yet"  # "ok", "stale: ...", "error: ..."


@dataclass
class OpenProblem:
    """A data problem the operators were told about and that has not cleared yet."""

    key: str  # what it is about: "feed:gauges:stale", "file:<path>", "cycle", ...
    text: str
    since: datetime  # on the service's clock


@dataclass
class ServiceState:
    cycles: list[CycleRecord] = field(default_factory=list)
    refused_overlaps: int = 0
    #: cycles left to another scheduler on the same database (it held the lease, or had
    #: already run that minute's cycle)
    run_elsewhere: int = 0
    last_forecast: str | None = None
    last_cycle_at: datetime | None = None
    last_error: str | None = None
    running: bool = False
    feeds: dict[str, FeedState] = field(default_factory=dict)
    #: why the next cycle should run (new data seen by an ingest job), or None
    new_data: str | None = None
    #: data time of the gauges when the last cycle ran
    cycled_gauges: datetime | None = None
    #: data problems open now, by key; each was told once, and is told again when it clears
    problems: dict[str, OpenProblem] = field(default_factory=dict)
    #: after a failed cycle: when to try again (new data make it due sooner)
    retry_at: datetime | None = None


class Service:
    """One site's scheduler and its jobs.

    Parameters
    ----------
    cfg : Config
    clock : callable, optional
        Aware UTC "now" for cycle times; defaults to the simulated clock when the config
        asks for one, else the wall clock.
    store : Store, optional
    drill : str, optional
        Run every cycle as this drill (CAP Exercise, SMS to the drill roster only); replays
        of past storms as drills use it.
    lease : timedelta
        How long the cycle lease is held without renewal (wall clock). It is renewed while
        a cycle runs, so it only matters when a scheduler dies mid-cycle: another one may
        take over after this long.
    """

    def __init__(self, cfg: Config, *, clock: Callable[[], datetime] | None = None, store: Store | None = None,
                 drill: str | None = None, lease: timedelta = timedelta(minutes=5)):
        self.cfg = cfg
        self.drill = drill
        self.lease = lease
        #: who holds the cycle lease: this process and this service object
        self.id = f"{os.uname().nodename[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        sv = cfg.service
        if clock is None:
            clock = SimulatedClock(sv.simulate_from, sv.speed) if sv.simulate_from else utcnow
        self.clock = clock
        self.store = store or Store(cfg.db_url)
        self._dask: contextlib.ExitStack | None = None  # the Dask cluster, while one is open
        self._client: Any = None
        self.site = Site.load(cfg, client=self.dask_client())  # terrain: cache, or that cluster
        self.inputs = Inputs(cfg)
        self.state = ServiceState()
        fc = cfg.sources.forecast
        self.mirror = None
        if fc is not None and fc.url:
            from pathlib import Path

            from .ingest.mirror import Mirror

            self.mirror = Mirror(fc.url, cfg.path(fc.path), suffix=Path(fc.pattern).suffix or ".nc",
                                 prefix=fc.pattern.split("*")[0])
        self._lock = threading.Lock()
        self._own_run: str | None = None  # id of the last cycle this service ran
        self._channel = None
        self.scheduler = None

    def dask_client(self) -> Any:
        """The Dask client the cycles run their models on (``[compute] engine = "dask"``
        on a grid site; else None). Opened on first use and kept until :meth:`close`, so
        the cluster (and the workers' compiled kernels) serve every cycle."""
        if self.cfg.compute.engine != "dask" or not self.cfg.has_grid:
            return None
        if self._client is None:
            from .national.cluster import dask_client

            stack = contextlib.ExitStack()
            self._client = stack.enter_context(dask_client(self.cfg.compute))
            self._dask = stack
            log.info("cycles run their models on Dask (dashboard %s)", self._client.dashboard_link)
        return self._client

    def close(self) -> None:
        """Close the Dask cluster or connection, if one was opened (idempotent)."""
        if self._dask is not None:
            stack, self._dask, self._client = self._dask, None, None
            stack.close()

    @property
    def channel(self):
        if self._channel is None:
            self._channel = make_channel(self.cfg)
        return self._channel

    # ------------------------------------------------------------------ jobs
    def ingest(self, source: str) -> FeedState:
        """Check one source for new data (the ingest job, at that source's interval).

        Forecasts: the newest issue out by now. Gauges: the newest good reading up to now
        (fetching the feed when it is one); a reading older than the source's tolerance
        is a data gap, recorded once per gap for the operators. New data mark the next
        cycle as due.
        """
        now = self.clock()
        feed = self.state.feeds.setdefault(source, FeedState())
        feed.checked = now
        try:
            if source == "forecast":
                if self.inputs.forecast is None:  # a gauge site has no rainfall forecast
                    feed.state = "none: a gauge site has no rainfall forecast"
                    return feed
                if self.mirror is not None:
                    got = self.mirror.poll()
                    if got is not None:
                        log.info("new forecast file from %s: %s", self.mirror.url, got.name)
                issue = self.inputs.forecast.latest_before(now)
                self._file_problems(now, issue)
                feed.last_data = issue.issued if issue else None
                feed.state = "ok" if issue else f"no forecast issued by {now:%Y-%m-%d %H:%M}Z"
                if issue is not None and str(issue.path) != self.state.last_forecast:
                    self.state.new_data = f"new forecast {issue.path.name}"
                self._clear_problem(now, "feed:forecast", "the rainfall forecast source reads again")
                return feed
            ds = self.inputs.read_gauges()
            self._clear_problem(now, "feed:gauges", "the gauge feed reads again")
            # a gauge that measures discharge only (Hupsel) is fresh by its discharge
            newest = (newest_good_time(ds, now, quantities=None if not self.cfg.has_grid else ["stage"])
                      if ds is not None else None)
            stale = timedelta(minutes=self.cfg.sources.gauges.stale_after_minutes)
            feed.last_data = newest
            if newest is None or now - newest > stale:
                feed.state = (f"stale: no good reading since "
                              f"{newest:%Y-%m-%d %H:%M}Z" if newest else "stale: no good reading yet")
                self._open_problem(now, "feed:gauges:stale",
                                   f"gauge feed late: {feed.state.removeprefix('stale: ')} "
                                   f"(tolerance {stale.total_seconds() / 60:.0f} min)")
            else:
                feed.state = "ok"
                self._clear_problem(now, "feed:gauges:stale",
                                    f"gauge readings are current again (newest {newest:%Y-%m-%d %H:%M}Z)")
                if self.state.cycled_gauges is None or newest > self.state.cycled_gauges + timedelta(minutes=
                                                                           self.cfg.service.gauge_new_data_minutes):
                    self.state.new_data = self.state.new_data or f"new gauge readings up to {newest:%H:%M}Z"
        except Exception as exc:  # bad data or a fault: told once, the last good data stand
            if not isinstance(exc, USER_ERRORS):
                log.error("ingest of %s failed unexpectedly", source, exc_info=True)
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            self._open_problem(now, f"feed:{source}",
                               f"{source} feed failed, the last good data stand: {exc}")
            feed.state = f"error: {exc}"
        return feed

    def _file_problems(self, now: datetime, newest) -> None:
        """Forecast files that cannot be used, each told once (and again when it is fixed or
        gone): files the source skips, and the newest issue when it fails to load."""
        src = self.inputs.forecast
        bad = {f"file:{p}": f"forecast file refused: {p}" for p in src.skipped}
        if newest is not None:
            try:  # the cycle would read it anyway; the read is cached for it
                if callable(getattr(src, "span", None)):
                    src.load(newest, self.site)
                else:
                    self.inputs.load_forecast(newest, self.site)
            except USER_ERRORS as exc:
                bad[f"file:{newest.path}"] = (f"newest forecast file refused, the cycle uses the one "
                                              f"before it: {exc}")
        for key, text in bad.items():
            self._open_problem(now, key, text)
        for key in [k for k in self.state.problems if k.startswith("file:") and k not in bad]:
            self._clear_problem(now, key, "the forecast file is readable again or was removed: "
                                          + self.state.problems[key].text.split(": ", 1)[-1][:200])

    def _open_problem(self, at: datetime, key: str, text: str, event: str = "data_problem") -> None:
        """A data problem: told once (log, console, operators' phones) until it clears."""
        if key in self.state.problems:
            return
        self.state.problems[key] = OpenProblem(key, text, at)
        self._data_problem(at, text, event)

    def _clear_problem(self, at: datetime, key: str, text: str) -> None:
        """The problem ``key`` is over: say so once, if it was open."""
        p = self.state.problems.pop(key, None)
        if p is not None:
            self._data_problem(at, f"cleared: {text} (problem since {p.since:%Y-%m-%d %H:%M}Z: "
                                   f"{p.text[:160]})", event="data_problem_cleared")

    def _data_problem(self, at: datetime, problem: str, event: str = "data_problem") -> None:
        """Tell the operators: the log, the console (audit), and SMS to the roster if any."""
        tell_operators(self.cfg, self.store, problem, at=at, event=event, channel=self._operator_channel())

    def _operator_channel(self):
        """The channel operators are texted through (None: tell_operators says why not)."""
        try:
            return self.channel if self.cfg.service.operator_phones else None
        except USER_ERRORS:
            return None

    def due(self, now: datetime) -> tuple[bool, str]:
        """Whether a cycle should run at ``now``: new forecast or gauge data, or the maximum gap."""
        if self.inputs.forecast is not None:
            issue = self.inputs.forecast.latest_before(now)
            if issue is None:
                return False, f"no forecast issued at or before {now:%Y-%m-%d %H:%M}Z"
            if str(issue.path) != self.state.last_forecast:
                return True, f"new forecast {issue.path.name}"
        if self.state.new_data:
            return True, self.state.new_data
        if self.state.retry_at is not None:
            if now < self.state.retry_at:
                return False, f"the last cycle failed; retrying at {self.state.retry_at:%H:%M}Z"
            return True, "retrying the failed cycle"
        gap = timedelta(minutes=self.cfg.service.cycle_every_minutes)
        if self.state.last_cycle_at is None or now - self.state.last_cycle_at >= gap:
            return True, f"no cycle for {self.cfg.service.cycle_every_minutes:g} min"
        return False, "nothing new"

    @property
    def scope(self) -> str:
        return f"drill:{self.drill}" if self.drill else "live"

    def run_id(self, at: datetime) -> str:
        """The id of the cycle at ``at`` (as the pipeline names it)."""
        return f"{at:%Y%m%dT%H%MZ}-{'drill' if self.drill else 'live'}"

    def cycle(self, force: bool = False) -> CycleRecord | None:
        """Run a cycle if one is due (or ``force``); never two at once.

        In this process a lock refuses overlapping calls; across processes the database
        lease ``cycle:<scope>`` does (a scheduler that cannot take it leaves the cycle to
        the holder). Under the lease, cycles other schedulers finished are taken into
        account first (their forecast, their time), and the cycle for this minute is not
        run again if another scheduler already ran it, even when forced.
        """
        if not self._lock.acquire(blocking=False):
            self.state.refused_overlaps += 1
            log.warning("a forecast cycle is still running; this one is skipped")
            return None
        try:
            lease = f"cycle:{self.scope}"
            if not acquire_lease(self.store, lease, self.id, self.lease):
                self.state.run_elsewhere += 1
                log.info("another scheduler is running a forecast cycle (lease %s); this one is skipped", lease)
                return None
            try:
                return self._cycle_under_lease(force, lease)
            finally:
                release_lease(self.store, lease, self.id)
        finally:
            self._lock.release()

    def _keep_lease(self, name: str, stop: threading.Event) -> None:
        """Renew the cycle lease every third of its length until ``stop`` is set."""
        while not stop.wait(self.lease.total_seconds() / 3):
            try:
                if not renew_lease(self.store, name, self.id, self.lease):
                    log.error("lost the cycle lease %s (renewed too late?); another scheduler may start "
                              "a cycle", name)
                    return
            except SQLAlchemyError as exc:  # a database hiccup: try again at the next renewal
                log.warning("could not renew the cycle lease %s: %s", name, exc)

    def _adopt_cycles_elsewhere(self, now: datetime) -> Run | None:
        """Take in the newest finished cycle up to ``now`` that another scheduler ran since
        our last one (its time and forecast), so that ``due`` sees it; returns it or None."""
        from sqlalchemy import select

        with self.store.session() as s:
            q = select(Run).where(Run.scope == self.scope, Run.status == "done", Run.at <= now)
            if self.state.last_cycle_at is not None:
                q = q.where(Run.at > self.state.last_cycle_at)
            run = s.scalars(q.order_by(Run.at.desc()).limit(1)).first()
        if run is None:
            return None
        self.state.last_cycle_at = run.at
        if self.inputs.forecast is not None:
            issue = self.inputs.forecast.latest_before(run.at)
            if issue is not None and issue.path.name == run.forecast_file:
                self.state.last_forecast = str(issue.path)
        # its inputs cover the new data we had seen unless gauge readings came in after it
        # (a new forecast is checked by ``due`` itself)
        gauges = self.state.feeds.get("gauges")
        if gauges is None or gauges.last_data is None or gauges.last_data <= run.at:
            self.state.cycled_gauges = gauges.last_data if gauges else None
            self.state.new_data = None
        log.info("cycle %s was run by another scheduler", run.id)
        return run

    def _cycle_under_lease(self, force: bool, lease: str) -> CycleRecord | None:
        now = self.clock()
        self._adopt_cycles_elsewhere(now)
        go, why = self.due(now)
        if not (go or force):
            return None
        at = now.replace(second=0, microsecond=0)
        run_id = self.run_id(at)
        if run_id != self._own_run:  # a forced re-run of our own cycle is the caller's choice
            with self.store.session() as s:
                other = s.get(Run, run_id)
            if other is not None and other.status == "done" and other.scope == self.scope:
                self.state.run_elsewhere += 1
                log.info("the cycle at %s was already run by another scheduler; not running it again", at)
                return None
        with log_context(run_id=run_id):  # every line of the cycle says which it is
            t0 = time.perf_counter()
            stop = threading.Event()  # the lease is renewed while the cycle runs
            keeper = threading.Thread(target=self._keep_lease, args=(lease, stop), daemon=True, name="cycle-lease")
            keeper.start()
            try:
                res = run_cycle(self.site, self.cfg, self.store, self.inputs, at, channel=None,
                                drill=self.drill, write_depth=self.cfg.service.write_depth,
                                client=self.dask_client())
            except Exception as exc:  # bad data or a fault: recorded, told, the service goes on
                if not isinstance(exc, USER_ERRORS):
                    log.error("cycle at %s failed unexpectedly", at, exc_info=True)
                    exc = RuntimeError(f"{type(exc).__name__}: {exc}")
                rec = CycleRecord(at, utcnow(), time.perf_counter() - t0, False, str(exc))
                self.state.last_error = f"{at:%Y-%m-%d %H:%M}Z: {exc}"
                log.error("cycle at %s failed, keeping the last good results: %s", at, exc)
                self._open_problem(at, "cycle", f"cycle failed, the last good results stand: {exc}",
                                   event="cycle_failed")
                # due again on new data, or to retry after a while: not on every poll
                self.state.retry_at = at + timedelta(minutes=min(10.0, self.cfg.service.cycle_every_minutes))
                self.state.new_data = None
                if self.inputs.forecast is not None:
                    latest = self.inputs.forecast.latest_before(at)
                    self.state.last_forecast = str(latest.path) if latest else self.state.last_forecast
            else:
                self.state.retry_at = None
                self._clear_problem(at, "cycle", f"the cycle at {at:%Y-%m-%d %H:%M}Z ran")
                if self.inputs.forecast is not None:
                    self.state.last_forecast = str(self.inputs.forecast.latest_before(at).path)
                self.state.last_cycle_at = at
                self._own_run = res.run_id
                self.state.new_data = None
                gauges = self.state.feeds.get("gauges")
                self.state.cycled_gauges = gauges.last_data if gauges else None
                rec = CycleRecord(at, utcnow(), time.perf_counter() - t0, True, why, res.forecast_file)
                for failure in res.failed_zones:  # recorded by the cycle; the operators are told here
                    tell_operators(self.cfg, self.store, zone_failed_text(failure, at), at=at, audit=False,
                                   channel=self._operator_channel())
                changed = [d for d in res.decisions if d["action"] in ("raise", "lower", "all_clear", "renew")]
                log.info("cycle at %s (%s): %d notices, %d SMS queued, %d level changes", at, why,
                         len(res.notices), res.messages_queued, len(changed))
            finally:
                stop.set()
                keeper.join()
            self.state.cycles.append(rec)
            del self.state.cycles[:-200]
            return rec

    def dispatch(self) -> None:
        make_dispatcher(self.cfg, self.store, self.channel, clock=self.clock).drain()

    def housekeeping(self) -> None:
        """Release held notices whose approval time ran out (on the service's clock)."""
        release_due(self.store, self.clock(), publisher(self.cfg, self.clock))

    def job(self, name: str) -> None:
        """Run one of the scheduler's jobs by name: ``ingest:<source>``, ``cycle``,
        ``dispatch``, ``housekeeping``. The scheduler and a replay both come through here;
        the job's lines carry its name (and an ingest job's, its source)."""
        source = name.removeprefix("ingest:") if name.startswith("ingest:") else None
        with log_context(job=name, source=source):
            if source is not None:
                self.ingest(source)
            else:
                {"cycle": self.cycle, "dispatch": self.dispatch, "housekeeping": self.housekeeping}[name]()

    def job_names(self) -> list[str]:
        """The jobs in the order they fire when all are due at once."""
        return [*(["ingest:forecast"] if self.inputs.forecast is not None else []),
                *(["ingest:gauges"] if self.cfg.sources.gauges is not None else []),
                "cycle", "dispatch", "housekeeping"]

    # ------------------------------------------------------------------ scheduler
    def start(self) -> Any:
        """Start the background scheduler, its jobs in memory (APScheduler's default job store).

        Not in the database: APScheduler 3's user guide ("Basic concepts") says job stores
        must never be shared between schedulers, and several ``serve`` processes may share
        one database. Nothing is lost: every job is made again from the config here, at each
        start; what must survive a restart (runs, zone states, the outbox, leases) is in the
        database already. Migration 0002 drops the old ``scheduler_jobs`` table.
        """
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        global _SERVICE
        _SERVICE = self
        sv = self.cfg.service
        sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": sv.misfire_grace_s},
            timezone=timezone.utc,
        )
        poll = max(1.0, sv.poll_seconds)
        sched.add_job(run_job, "interval", args=["cycle"], id="cycle", seconds=poll, replace_existing=True,
                      next_run_time=datetime.now(timezone.utc))
        if self.inputs.forecast is not None:
            sched.add_job(run_job, "interval", args=["ingest:forecast"], id="ingest:forecast", seconds=poll,
                          replace_existing=True, next_run_time=datetime.now(timezone.utc))
        if self.cfg.sources.gauges is not None:
            sched.add_job(run_job, "interval", args=["ingest:gauges"], id="ingest:gauges",
                          seconds=max(1.0, sv.gauge_poll_seconds or poll), replace_existing=True,
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
        self.close()
        self.state.running = False
        log.info("scheduler stopped; the outbox is consistent (claims are recovered on restart)")


def run_job(name: str) -> None:
    """The scheduler's entry point for every job (a plain function, named by the job)."""
    svc = _SERVICE
    if svc is None:
        log.warning("job %s fired with no service running", name)
        return
    try:
        svc.job(name)
    except USER_ERRORS as exc:
        log.error("job %s failed: %s", name, exc)
    except Exception:  # a fault: logged once with its traceback; the scheduler goes on
        log.exception("job %s failed unexpectedly", name)
