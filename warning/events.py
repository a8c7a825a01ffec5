"""Event files: a past storm described for replay, drills and verification.

An event is a small TOML file kept in the site's folder::

    name = "Millbrook storm of 14 November 2025"
    start = 2025-11-13T18:00:00Z       # the replay's clock starts here ...
    end = 2025-11-15T12:00:00Z         # ... and stops here
    zones = []                         # zones to verify; empty = every zone of the site
    tolerance_minutes = 60             # a warning up to this late is a late detection
    flood_hours = 6                    # how long a flood given by its onset alone lasted
    lead_window_hours = 12             # warned time up to this long before an onset is
                                       # neither credit nor false alarm (see below)

    [sources.forecast]                 # archived inputs (optional): override the config's
    path = "../forecasts"              # source paths; relative to this file
    pattern = "rain_*.nc"
    delay_minutes = 60                 # each issue arrived an hour after its issue time
    [sources.gauges]
    path = "../gauges/readings.csv"
    delay_minutes = 15                 # (and period_minutes, period_label: see below)

    [observed]                         # observed flood onsets per zone (UTC); a zone
    MB-TOWN = [2025-11-14T18:15:00Z]   # listed with [] was seen not to flood; an onset
    HILLTOP = []                       # may be given with its end: [[onset, end]]

Only zones listed under ``[observed]`` are verified: a zone nobody looked at counts
neither for nor against the thresholds.

Delivery delays. ``delay_minutes`` of ``[sources.forecast]``, and ``delay_minutes``,
``period_minutes`` and ``period_label`` of ``[sources.gauges]``, replace the config's
(``warning.config``; their meaning is in ``warning.availability``) for the replay, with or
without a ``path``: an event may set only a delay and keep the config's archive.

Flood windows. Verification in time (``warning.verification``) needs to know when a zone
was flooded, not only when flooding began: each onset is paired with its end (given, or
``flood_hours`` later, never past the event's end). Warned time inside a flood window is
credit, warned time outside it is false-alarm time, except in the ``lead_window_hours``
before an onset, which is the warning's lead and counts neither way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import Config, read_toml, validation_problems
from .errors import ConfigError

__all__ = ["Event", "EventTrace", "CycleTrace", "load_event", "load_events", "event_config"]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2025-11-14T06:00:00Z")
    return value.astimezone(timezone.utc)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSource(_Model):
    """An event's archived source: each field given replaces the config's for the replay."""

    #: the archive (file or folder), relative to the event file; None: the config's
    path: Path | None = None
    pattern: str | None = None
    #: delivery delay in minutes (see the config's ``delay_minutes``); None: the config's
    delay_minutes: float | None = Field(default=None, ge=0)

    def overrides(self) -> dict[str, Any]:
        """The availability settings this event gives (to update the source's config with)."""
        return {k: v for k, v in self.model_dump(exclude={"path", "pattern"}).items() if v is not None}


class GaugeEventSource(EventSource):
    """An event's gauge archive: also the aggregation period of its readings."""

    #: the readings are aggregates over periods this long (see the config's); None: the config's
    period_minutes: float | None = Field(default=None, gt=0)
    #: which end of its period a reading's time stamp labels; None: the config's
    period_label: Literal["start", "end"] | None = None


class EventSources(_Model):
    forecast: EventSource | None = None
    gauges: GaugeEventSource | None = None


class Event(_Model):
    name: str
    start: datetime
    end: datetime
    description: str = ""
    zones: list[str] = Field(default_factory=list)
    tolerance_minutes: float = Field(default=60, ge=0)
    flood_hours: float = Field(default=6, gt=0)
    lead_window_hours: float = Field(default=12, ge=0)
    sources: EventSources = EventSources()
    observed: dict[str, list[datetime]] = Field(default_factory=dict)
    #: the end of each observed flood, in the order of ``observed`` (None: not given)
    flood_ends: dict[str, list[datetime | None]] = Field(default_factory=dict)
    #: folder of the event file (relative source paths are resolved against it)
    base_dir: Path = Path(".")
    file: Path | None = None

    _aware_times = field_validator("start", "end")(_aware)

    @model_validator(mode="before")
    @classmethod
    def _split_flood_windows(cls, raw: Any) -> Any:
        """``[observed]`` entries are onsets or ``[onset, end]`` pairs: keep the onsets in
        ``observed`` and the ends in ``flood_ends``."""
        if not isinstance(raw, dict) or not isinstance(raw.get("observed"), dict) or "flood_ends" in raw:
            return raw
        onsets: dict[str, list[Any]] = {}
        ends: dict[str, list[Any]] = {}
        for zone, items in raw["observed"].items():
            if not isinstance(items, list):
                return raw  # let the field's own validation say what is wrong
            onsets[zone], ends[zone] = [], []
            for item in items:
                if isinstance(item, (list, tuple)):
                    if len(item) != 2:
                        raise ValueError(f"observed.{zone}: a flood window is [onset, end], got {item!r}")
                    onsets[zone].append(item[0])
                    ends[zone].append(item[1])
                else:
                    onsets[zone].append(item)
                    ends[zone].append(None)
        return {**raw, "observed": onsets, "flood_ends": ends}

    @model_validator(mode="after")
    def _ordered(self) -> "Event":
        if self.end <= self.start:
            raise ValueError(f"end ({self.end:%Y-%m-%d %H:%M}Z) must come after start "
                             f"({self.start:%Y-%m-%d %H:%M}Z)")
        observed, ends = {}, {}
        for zone, onsets in self.observed.items():
            given = list(self.flood_ends.get(zone, [])) + [None] * len(onsets)
            pairs = sorted(((_aware(t), None if e is None else _aware(e)) for t, e in zip(onsets, given)),
                           key=lambda p: p[0])
            for t, e in pairs:
                if e is not None and e <= t:
                    raise ValueError(f"observed.{zone}: the flood that began {t:%Y-%m-%d %H:%M}Z "
                                     f"ends ({e:%Y-%m-%d %H:%M}Z) before it begins")
            observed[zone] = [t for t, _ in pairs]
            ends[zone] = [e for _, e in pairs]
        object.__setattr__(self, "observed", observed)
        object.__setattr__(self, "flood_ends", ends)
        return self

    @property
    def lead_window(self) -> timedelta:
        return timedelta(hours=self.lead_window_hours)

    def floods(self, zone: str) -> list[tuple[datetime, datetime]]:
        """The zone's observed flood windows ``(onset, end)``: the end given, or
        ``flood_hours`` after the onset; never past the event's end, nor past the next
        onset (windows do not overlap)."""
        onsets = self.observed.get(zone, [])
        ends = self.flood_ends.get(zone, [None] * len(onsets))
        out: list[tuple[datetime, datetime]] = []
        for k, (t, e) in enumerate(zip(onsets, ends)):
            end = e if e is not None else t + timedelta(hours=self.flood_hours)
            if k + 1 < len(onsets):
                end = min(end, onsets[k + 1])
            out.append((t, max(t, min(end, self.end))))
        return out

    @property
    def slug(self) -> str:
        stem = self.file.stem if self.file is not None else self.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-").lower() or "event"

    @property
    def tolerance(self) -> timedelta:
        return timedelta(minutes=self.tolerance_minutes)

    def path(self, p: Path | str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def verified_zones(self, cfg: Config) -> list[str]:
        """Zones whose warnings are scored: those with observations (and, if the event
        names zones, among those)."""
        codes = [z.code for z in cfg.zones]
        chosen = self.zones or codes
        return [z for z in codes if z in chosen and z in self.observed]


def load_event(path: str | Path, cfg: Config | None = None) -> Event:
    """Read and check an event file; with ``cfg``, also check its zones and sources."""
    path = Path(path)
    raw = read_toml(path, "event file")
    raw["base_dir"] = path.resolve().parent
    raw["file"] = path.resolve()
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc), source=str(path)) from None
    if cfg is not None:
        problems = []
        codes = {z.code for z in cfg.zones}
        for zone in [*event.zones, *event.observed]:
            if zone not in codes:
                problems.append(f"zone {zone!r} is not a zone of {cfg.site.code} "
                                f"(known: {', '.join(sorted(codes))})")
        for name in ("forecast", "gauges"):
            src = getattr(event.sources, name)
            if src is not None and src.path is not None and not event.path(src.path).exists():
                problems.append(f"sources.{name}.path: not found: {event.path(src.path)}")
        if event.sources.forecast is not None and cfg.sources.forecast is None:
            problems.append("sources.forecast: the site has no rainfall forecast source to replace "
                            "(a gauge site)")
        if event.sources.gauges is not None and cfg.sources.gauges is None:
            problems.append("sources.gauges: the site has no gauge source to replace")
        if problems:
            raise ConfigError(problems, source=str(path))
    return event


def load_events(folder: str | Path, cfg: Config | None = None) -> list[Event]:
    """Every ``*.toml`` event file in ``folder``, by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"not a folder of event files: {folder}")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ConfigError(f"no event files (*.toml) in {folder}")
    return [load_event(f, cfg) for f in files]


def event_config(cfg: Config, event: Event, output_dir: Path, **service: Any) -> Config:
    """The site's config as a replay of ``event`` sees it: the event's archived sources
    and their delivery delays (each given field replaces the config's), its own output
    folder and database (a replay never touches the live state), and the service settings
    given (clock, speed)."""
    sources = cfg.sources
    fc = event.sources.forecast
    if fc is not None:
        upd: dict[str, Any] = fc.overrides()
        if fc.path is not None:
            upd |= {"path": event.path(fc.path), "url": None}
        if fc.pattern:
            upd["pattern"] = fc.pattern
        sources = sources.model_copy(update={"forecast": sources.forecast.model_copy(update=upd)})
    gs = event.sources.gauges
    if gs is not None:
        upd = gs.overrides()
        if gs.path is not None:
            upd["path"] = event.path(gs.path)
        sources = sources.model_copy(update={"gauges": sources.gauges.model_copy(update=upd)})
    site = cfg.site.model_copy(update={"output_dir": output_dir.resolve()})
    sv = cfg.service.model_copy(update={"simulate_from": event.start, "operator_phones": [], **service})
    db = f"sqlite:///{output_dir.resolve() / 'replay.sqlite'}"
    return cfg.model_copy(update={"sources": sources, "site": site, "service": sv, "database_url": db})


@dataclass
class CycleTrace:
    """One replayed cycle: its time, the zone metrics and the decisions taken."""

    at: datetime
    run_id: str
    forecast_file: str
    metrics: dict[str, dict[str, float]]
    decisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EventTrace:
    """What a replay of one event produced, in cycle order (input of reports and tuning)."""

    event: Event
    cycles: list[CycleTrace] = field(default_factory=list)
