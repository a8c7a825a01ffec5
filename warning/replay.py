"""Replay a past storm through the live service: for drills, hindcasts and tuning.

A replay builds the same :class:`~warning.service.Service` that ``floodwarn serve`` runs
and calls the same jobs (``Service.job``: ingest each source, cycle, dispatch,
housekeeping) in the order the scheduler fires them, on a simulated clock that steps
through the event every ``step`` of simulated time. With ``speed`` the steps are paced
against the wall clock (``speed`` simulated seconds per second, so a drill team can
watch the storm unfold); without, the replay runs as fast as the models allow. Both
take the same steps, so they give the same decisions: a replay is deterministic.

Isolation. A replay writes into its own folder (``<output_dir>/replays/<event>``) with
its own database: the live state (zone levels, outbox, subscribers) is never touched.
A plain replay has no recipients at all and its notices have CAP status ``Test``; a drill
(``drill=True``) copies only the **drill roster** into the replay's database, so public
subscribers cannot receive anything, its notices are CAP ``Exercise`` with a ``<note>``
naming the drill, and its SMS start with the exercise marker.

No peeking. The service's data sources are wrapped in gates that return only what was
in hand at the simulated time (:mod:`warning.availability`): forecast issues whose issue
time plus the source's ``delay_minutes`` has come, gauge readings whose observation time
(or, for aggregates, ``period_minutes`` long, the end of their period) plus the source's
``delay_minutes`` has come. A daily mean written as 24 hourly rows is thus seen only
after its day. A gate that is asked for a forecast not yet in hand raises
:class:`PeekError`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from . import availability
from .config import Config
from .errors import FloodwarnError
from .events import CycleTrace, Event, EventTrace, event_config
from .gauge_cycle import readings_until
from .storage import Run, Store, Subscriber

log = logging.getLogger(__name__)

__all__ = ["PeekError", "ReplayClock", "ReplayResult", "replay", "replay_dir", "trace_from_store"]


class PeekError(FloodwarnError):
    """A replay asked for data from after its simulated time."""


class ReplayClock:
    """A clock the replay sets: each step moves simulated time on."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class ForecastGate:
    """A forecast source as it was at the clock's time: only issues in hand by then, i.e.
    issued at least ``delay_minutes`` before it."""

    def __init__(self, source: Any, clock: Callable[[], datetime], delay_minutes: float = 0.0):
        self._source, self._clock = source, clock
        self.delay_minutes = delay_minutes
        #: (simulated time, issue time) of every issue loaded
        self.loaded: list[tuple[datetime, datetime]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def usable_at(self, issue) -> datetime:
        """When ``issue`` was in hand: its issue time plus the delivery delay."""
        return availability.forecast_usable_at(issue.issued, self.delay_minutes)

    def issues(self):
        now = self._clock()
        return [i for i in self._source.issues() if self.usable_at(i) <= now]

    def latest_before(self, t: datetime):
        """The newest issue in hand at ``t`` (never later than the clock)."""
        t = min(t, self._clock())
        cands = [i for i in self.issues() if self.usable_at(i) <= t]
        return cands[-1] if cands else None

    def load(self, issue, site):
        now = self._clock()
        usable = self.usable_at(issue)
        if usable > now:
            raise PeekError(f"forecast {issue.path.name} issued {issue.issued:%Y-%m-%d %H:%M}Z, with a "
                            f"delivery delay of {self.delay_minutes:g} min usable from "
                            f"{usable:%Y-%m-%d %H:%M}Z, asked for at {now:%Y-%m-%d %H:%M}Z, before "
                            f"it was in hand")
        self.loaded.append((now, issue.issued))
        return self._source.load(issue, site)


class GaugeGate:
    """A gauge source as it was at the clock's time: readings in hand by then only (each
    from ``usable_from`` of its time stamps on, default: its time stamp), with their QC
    flags as they were then."""

    def __init__(self, source: Any, clock: Callable[[], datetime],
                 usable_from: Callable[[np.ndarray], np.ndarray] | None = None):
        self._source, self._clock = source, clock
        self._usable_from = usable_from or availability.usable_from
        #: (simulated time, time stamp of the newest reading returned)
        self.reads: list[tuple[datetime, datetime | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def read(self, *args, **kwargs):
        now = self._clock()
        full = self._source.read(*args, **kwargs)
        # cut at the clock by when each reading was in hand, and judge spikes on what was
        # known then: the spike check compares a reading with the next one, not yet in hand
        ds = readings_until(full, now, getattr(self._source, "spike_limit_m", 0.5),
                            known_from=self._usable_from(full["time"].values))
        newest = None
        if ds.sizes["time"]:
            newest = datetime.fromisoformat(str(np.datetime_as_string(ds["time"].values[-1], unit="s"))
                                            + "+00:00")
        self.reads.append((now, newest))
        return ds


@dataclass
class ReplayResult:
    event: Event
    out_dir: Path
    config: Config
    scope: str
    trace: EventTrace
    wall_seconds: float
    steps: int
    cycles: int
    messages: dict[str, int] = field(default_factory=dict)
    roster: int = 0
    forecast_gate: ForecastGate | None = None
    gauge_gate: GaugeGate | None = None

    @property
    def simulated_hours(self) -> float:
        return (self.event.end - self.event.start).total_seconds() / 3600.0


def replay_dir(cfg: Config, event: Event, drill: bool) -> Path:
    return cfg.output_dir / "replays" / (event.slug + ("-drill" if drill else ""))


def copy_operators(src: Store, dst: Store) -> int:
    """Copy the console's sign-ins (scrypt hashes) so the live team can watch a replay."""
    from .storage import Operator

    with src.session() as s:
        rows = [Operator(name=o.name, password_hash=o.password_hash, role=o.role)
                for o in s.scalars(select(Operator))]
    with dst.session.begin() as s:
        s.add_all(rows)
    return len(rows)


def copy_drill_roster(src: Store, dst: Store) -> int:
    """Copy the drill roster (encrypted, as stored) from the live database; nothing else."""
    with src.session() as s:
        rows = s.scalars(select(Subscriber).where(Subscriber.roster == "drill", Subscriber.opted_out_at.is_(None),
                                                  Subscriber.unreachable.is_(None))
                         .order_by(Subscriber.id)).all()
        copies = [Subscriber(phone_hash=r.phone_hash, phone_enc=r.phone_enc, zones=list(r.zones),
                             language=r.language, consent_source=r.consent_source,
                             consent_time=r.consent_time, roster="drill") for r in rows]
    with dst.session.begin() as s:
        s.add_all(copies)
    return len(copies)


def replay(cfg: Config, event: Event, *, speed: float | None = None, drill: bool = False,
           step: timedelta = timedelta(minutes=15), out_dir: Path | None = None, channel: Any = None,
           on_step: Callable[[datetime, int, int], None] | None = None,
           on_service: Callable[[Any], None] | None = None,
           stop: Callable[[], bool] | None = None) -> ReplayResult:
    """Replay ``event`` through the service's jobs on a simulated clock.

    Parameters
    ----------
    cfg : Config
        The site's (live) configuration; the replay derives its own from it.
    event : Event
    speed : float, optional
        Simulated seconds per wall second; None runs as fast as possible.
    drill : bool
        Run as the config's drill: CAP Exercise, SMS to the drill roster only.
    step : timedelta
        Simulated time between two rounds of jobs (how often the service polls).
    out_dir : Path, optional
        Where the replay writes (emptied first); default ``<output_dir>/replays/<event>``.
    channel : Channel, optional
        SMS channel for a drill; default the config's (the file channel without Twilio
        credentials).
    on_step : callable(time, step, steps), optional
        Progress callback after each step.
    on_service : callable(service), optional
        Called once with the service before the first step (e.g. to attach a web console).
    stop : callable() -> bool, optional
        Checked after each step; True ends the replay early.
    """
    from alerts.channels import get_channel

    from .operators import make_channel
    from .service import Service

    if step <= timedelta(0):
        raise FloodwarnError(f"the replay step must be positive, got {step}")
    if speed is not None and speed <= 0:
        raise FloodwarnError(f"speed must be > 0, got {speed}")
    out = (out_dir or replay_dir(cfg, event, drill)).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rcfg = event_config(cfg, event, out, speed=speed or 1.0)
    if not drill:
        rcfg = rcfg.model_copy(update={"notices": rcfg.notices.model_copy(update={"status": "Test"})})
    store = Store(rcfg.db_url)
    roster = 0
    live_url = cfg.db_url
    if not live_url.startswith("sqlite:///") or Path(live_url.removeprefix("sqlite:///")).exists():
        live = Store(live_url)  # the live database is only read: operators, drill roster
        try:
            copy_operators(live, store)
            if drill:
                roster = copy_drill_roster(live, store)
        finally:
            live.dispose()
    if drill and roster == 0:
        log.warning("the drill roster is empty: the drill will text no one "
                    "(add numbers with 'floodwarn subscribers add --drill')")
    _share_terrain_cache(cfg.output_dir / "cache", out / "cache", cfg.site.code)
    clock = ReplayClock(event.start)
    svc = Service(rcfg, clock=clock, store=store, drill=cfg.drill.name if drill else None)
    fgate = None
    if svc.inputs.forecast is not None:  # a gauge site has none
        fgate = ForecastGate(svc.inputs.forecast, clock, rcfg.sources.forecast.delay_minutes)
        svc.inputs.forecast = fgate
    ggate = None
    if svc.inputs.gauges is not None:
        ggate = GaugeGate(svc.inputs.gauges, clock, rcfg.sources.gauges.usable_from)
        svc.inputs.gauges = ggate
    if drill:
        svc._channel = channel or make_channel(rcfg)
    else:  # nobody to text; the file channel keeps anything that would go out in the folder
        svc._channel = get_channel("file", path=out / rcfg.channels.sms_log)
    svc.site.prepare()
    _share_terrain_cache(out / "cache", cfg.output_dir / "cache", cfg.site.code)
    if on_service is not None:
        on_service(svc)
    n_steps = int((event.end - event.start) / step) + 1
    t0 = time.perf_counter()
    jobs = svc.job_names()
    k = 0
    try:
        for k in range(n_steps):
            now = event.start + k * step
            if speed is not None:  # keep pace: simulated time runs `speed` times faster than the wall clock
                wait = t0 + (now - event.start).total_seconds() / speed - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            clock.now = now
            for name in jobs:
                svc.job(name)
            if on_step is not None:
                on_step(now, k + 1, n_steps)
            if stop is not None and stop():
                break
    finally:
        svc.close()  # the Dask cluster, when the models ran on one
    wall = time.perf_counter() - t0
    scope = f"drill:{cfg.drill.name}" if drill else "live"
    trace = trace_from_store(store, event, scope)
    messages = _message_counts(store)
    store.dispose()
    log.info("replayed %s: %d cycles in %.1f s", event.name, len(trace.cycles), wall)
    return ReplayResult(event=event, out_dir=out, config=rcfg, scope=scope, trace=trace, wall_seconds=wall,
                        steps=k + 1, cycles=len(trace.cycles), messages=messages, roster=roster,
                        forecast_gate=fgate, gauge_gate=ggate)


def _share_terrain_cache(src: Path, dst: Path, code: str) -> None:
    """Copy prepared terrain between the site's cache and a replay's (the file name holds
    a hash of the terrain inputs, so a stale copy is never used)."""
    for f in src.glob(f"terrain-{code}-*.nc"):
        if not (dst / f.name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            tmp = dst / f"{f.name}.{os.getpid()}.part"
            shutil.copyfile(f, tmp)
            tmp.replace(dst / f.name)


def trace_from_store(store: Store, event: Event, scope: str) -> EventTrace:
    """The replay's cycles in time order: metrics and decisions as the runs recorded them."""
    with store.session() as s:
        runs = s.scalars(select(Run).where(Run.scope == scope, Run.status == "done").order_by(Run.at)).all()
        cycles = [CycleTrace(at=r.at, run_id=r.id, forecast_file=r.forecast_file or "",
                             metrics={z: {k: (float("nan") if v is None else float(v)) for k, v in m.items()}
                                      for z, m in (r.summary or {}).get("metrics", {}).items()},
                             decisions=list((r.summary or {}).get("decisions", [])))
                  for r in runs]
    return EventTrace(event=event, cycles=cycles)


def _message_counts(store: Store) -> dict[str, int]:
    from sqlalchemy import func

    from .storage import OutboxRow

    with store.session() as s:
        return dict(s.execute(select(OutboxRow.state, func.count()).group_by(OutboxRow.state)).all())
