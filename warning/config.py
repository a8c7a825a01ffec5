"""Site configuration: a TOML file loaded into pydantic models and validated whole.

``load_config(path)`` reports every problem at once, each with its key path
(``zones[0].thresholds.warning: unknown metric 'peak_depth'``), as one ``ConfigError``.
Relative paths in the file are relative to the file's own folder. Secrets never live
here: Twilio credentials and the subscriber key come from the environment
(``warning.secrets``).

A site with a DEM (``site.dem``) is a *grid site*: rainfall forecasts run through the
terrain, runoff, routing and inundation models. A site without one is a *gauge site*:
its zones are warned from their gauges' readings (stage, rate of rise, discharge) and,
where ``[model.lumped]`` is given, a lumped rainfall-runoff forecast of discharge; it has
no rainfall forecast source and every zone names a gauge.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rasterio.errors import RasterioError
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.validation import explain_validity

from alerts.levels import Criterion, LevelSpec, ZonePolicy

from . import availability
from .errors import ConfigError
from .secrets import env_secret

#: Zone metrics the pipeline computes; thresholds may use any of them.
METRICS = {
    "forecast_peak_depth_m": "highest forecast flood depth outside the channel in the zone (ensemble median), m",
    "flooded_share": "share of the zone's land forecast under water deeper than model.flooded_depth_m (0-1)",
    "depth_exceedance_probability": "share of ensemble members whose zone peak depth reaches model.probability_depth_m (0-1)",
    "forecast_stage_m": "highest forecast stage at the zone's gauge (ensemble median), m above gauge zero",
    "observed_stage_m": "latest good observed stage at the zone's gauge, m above gauge zero",
    "observed_rise_m_per_h": "observed rate of rise at the zone's gauge over the last hour, m/h",
    "observed_discharge_m3s": "latest good observed discharge at the zone's gauge, m3/s (gauge sites)",
    "forecast_peak_discharge_m3s": "highest discharge the lumped model forecasts at the zone's gauge "
                                   "over the horizon, m3/s (gauge sites with [model.lumped])",
}
#: metrics only the grid models give (a gauge site cannot use them)
GRID_METRICS = frozenset({"forecast_peak_depth_m", "flooded_share", "depth_exceedance_probability",
                          "forecast_stage_m"})
#: metrics only the gauge cycle gives (a grid site cannot use them)
GAUGE_SITE_METRICS = frozenset({"observed_discharge_m3s", "forecast_peak_discharge_m3s"})
CAP_SEVERITY = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CAP_URGENCY = ("Immediate", "Expected", "Future", "Past", "Unknown")
CAP_CERTAINTY = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")
CAP_RESPONSE = ("Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess",
                "AllClear", "None")
_CRITERION = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2025-11-14T06:00:00Z")
    return value.astimezone(timezone.utc)


class SiteConfig(_Model):
    name: str
    code: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    #: the site's DEM; without one the site is a gauge site (warned from its gauges)
    dem: Path | None = None
    curve_number: Path | None = None
    curve_number_constant: float | None = Field(default=None, gt=0, le=100)
    zones: Path
    output_dir: Path

    @model_validator(mode="after")
    def _one_cn(self) -> "SiteConfig":
        if self.dem is None:
            if self.curve_number is not None or self.curve_number_constant is not None:
                raise ValueError("curve_number and curve_number_constant are used with a DEM only; "
                                 "a gauge site (no dem) has no grid: remove them, or give dem")
            return self
        if (self.curve_number is None) == (self.curve_number_constant is None):
            raise ValueError("give exactly one of curve_number (a grid file) or curve_number_constant")
        return self


class FloodStages(_Model):
    action: float | None = None
    minor: float
    moderate: float | None = None
    major: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "FloodStages":
        vals = [v for v in (self.action, self.minor, self.moderate, self.major) if v is not None]
        if vals != sorted(vals):
            raise ValueError("flood stages must rise: action <= minor <= moderate <= major")
        return self


class GaugeConfig(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    #: elevation of the gauge zero above the DEM's datum, m (grid sites; unused without a DEM)
    datum_m: float | None = None
    #: m above gauge zero (required on grid sites; a gauge site's discharge-only gauge has none)
    flood_stages: FloodStages | None = None
    valid_range_m: tuple[float, float] = (-1.0, 20.0)


class ForecastSourceConfig(_Model):
    #: a registered source: netcdf, odim_h5, geotiff, grib (warning.ingest.source_names())
    kind: str = "netcdf"
    path: Path
    pattern: str = "*.nc"
    variable: str = "precipitation_rate"
    #: the rain's unit when the file does not say (CF ``units``, GRIB's own units); when
    #: the file does say, it must agree with this or the file is refused. None: the file's
    units: str | None = None
    #: further settings of that source (e.g. { name_format = "%Y%m%d%H%M.tif", interval_minutes = 5 })
    settings: dict[str, Any] = Field(default_factory=dict)
    #: a URL where the provider publishes its newest file: polled (conditional GET) by the
    #: ingest job and mirrored into `path`, which the source reads
    url: str | None = None
    #: minutes from a forecast's issue time until it is in hand (delivery delay); a replay
    #: uses an issue only from issue time + delay on (warning.availability)
    delay_minutes: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _known_kind(self) -> "ForecastSourceConfig":
        from .ingest import source_names

        if self.kind not in source_names():
            raise ValueError(f"unknown source kind {self.kind!r}; valid: {', '.join(source_names())}")
        if self.units is not None and not (self.kind == "odim_h5" and self.units.strip().lower() == "dbz"):
            from .ingest.rain_qc import check_config_units

            check_config_units(self.units)  # ValueError: "unknown rain units ...; use ..."
        return self

    def source_settings(self, resolve) -> dict[str, Any]:
        """Constructor settings for the source (netcdf keeps its historical keys); the
        delivery delay is not the source's (the replay's ``ForecastGate`` applies it)."""
        base: dict[str, Any] = {"path": resolve(self.path)}
        if self.kind == "netcdf":
            base |= {"pattern": self.pattern, "variable": self.variable}
        if self.units is not None:
            base["units"] = self.units
        return {**base, **self.settings}


class GaugeSourceConfig(_Model):
    #: a registered source: gauge_csv, usgs_iv, ea_flood_monitoring, sensorthings
    kind: str = "gauge_csv"
    #: a file (or a saved feed response); feeds polled over HTTP give settings.url instead
    path: Path | None = None
    units: Literal["m", "ft", "cm"] = "m"
    stale_after_minutes: float = Field(default=90, gt=0)
    #: further settings of that source (e.g. { url = "https://...", sites = ["01589330"] })
    settings: dict[str, Any] = Field(default_factory=dict)
    #: minutes from a reading's completion (its observation time, or the end of its
    #: period) until it is in hand; a replay uses a reading only from then on
    delay_minutes: float = Field(default=0, ge=0)
    #: the readings are aggregates over periods this long (e.g. 1440: a daily mean, also
    #: when written as 24 hourly rows), aligned to UTC multiples of it from 1970-01-01; an
    #: aggregate is usable only after its period ends (+ delay_minutes). None: each reading
    #: is a value at its time stamp
    period_minutes: float | None = Field(default=None, gt=0)
    #: which end of its period a reading's time stamp labels: "start" or "end" (a stamp on
    #: a period boundary T is the period starting, or ending, at T)
    period_label: Literal["start", "end"] = "end"

    @model_validator(mode="after")
    def _known_kind(self) -> "GaugeSourceConfig":
        from .ingest import source_names

        if self.kind not in source_names():
            raise ValueError(f"unknown source kind {self.kind!r}; valid: {', '.join(source_names())}")
        if self.path is None and "url" not in self.settings:
            raise ValueError("give path (a file) or settings.url (a feed to poll)")
        return self

    def source_settings(self, resolve) -> dict[str, Any]:
        """Constructor settings for the source; the delivery delay and aggregation period
        are not the source's (a replay applies them: ``usable_from``)."""
        base: dict[str, Any] = {"units": self.units, "stale_after_minutes": self.stale_after_minutes}
        if self.path is not None:
            base["path"] = resolve(self.path)
        return {**base, **self.settings}

    def usable_from(self, times: np.ndarray) -> np.ndarray:
        """When each reading of this source stamped ``times`` (datetime64) is in hand."""
        return availability.usable_from(times, delay_minutes=self.delay_minutes,
                                        period_minutes=self.period_minutes, period_label=self.period_label)

    def observed_at(self, t: datetime) -> datetime:
        """When what happened at ``t`` was first seen in this source's readings."""
        return availability.observed_at(t, delay_minutes=self.delay_minutes, period_minutes=self.period_minutes)


class SourcesConfig(_Model):
    #: gridded rainfall forecasts (grid sites); a gauge site has none
    forecast: ForecastSourceConfig | None = None
    gauges: GaugeSourceConfig | None = None


class LumpedModelConfig(_Model):
    """The lumped rainfall-runoff forecast of a gauge site (``models.lumped``).

    Each cycle the model starts ``warmup_days`` before the cycle time (soil store at its
    threshold, base flow = the first good observed discharge), runs on the rain and
    potential evaporation observed at the zone's gauge up to the cycle time, then
    ``horizon_hours`` further with **no rain** (a gauge site has no rain forecast) and the
    last day's evaporation repeated. Its highest discharge after the cycle time is the
    zone metric ``forecast_peak_discharge_m3s``.
    """

    #: parameters of models.lumped.LumpedParams by name (s_mm, sa_mm, lp, tau_perc_h,
    #: quick_fraction, n_quick, k_quick_h, k_slow_h) ...
    params: dict[str, float] | None = None
    #: ... or a parameter file written by `floodwarn calibrate --write` (TOML or JSON)
    params_file: Path | None = None
    #: catchment area above the gauge, km2 (turns the model's mm/h into m3/s); default: the
    #: gauge source's area_km2 setting (the peq source's default is 6.5 km2, Hupsel Brook)
    area_km2: float | None = Field(default=None, gt=0)
    warmup_days: float = Field(default=90, gt=0)
    horizon_hours: float = Field(default=24, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> "LumpedModelConfig":
        if (self.params is None) == (self.params_file is None):
            raise ValueError("give exactly one of params = { s_mm = ..., ... } or params_file "
                             "(written by floodwarn calibrate --write)")
        return self


class ModelConfig(_Model):
    spinup_hours: float = Field(default=36, ge=0)
    horizon_hours: float = Field(default=30, gt=0)
    routing_dt_minutes: float = Field(default=30, gt=0, le=60)
    drainage_threshold_km2: float = Field(default=0.5, gt=0)
    reach_max_length_cells: int = Field(default=20, ge=2)
    manning_channel: float = Field(default=0.035, gt=0)
    manning_overland: float = Field(default=0.08, gt=0)
    #: one reach-average n for channel and floodplain together in the synthetic rating
    #: curves (NOAA OWP's HAND rating curves use one n per reach, calibrated)
    manning_rating: float = Field(default=0.06, gt=0)
    channel_width_m: float = Field(default=12.0, gt=0)
    runoff_method: Literal["scs_cn", "green_ampt"] = "scs_cn"
    #: Green-Ampt soil parameters (used when runoff_method = "green_ampt"), one per site
    green_ampt_ks_mm_h: float = Field(default=10.0, gt=0)
    green_ampt_psi_mm: float = Field(default=110.0, gt=0)
    green_ampt_delta_theta: float = Field(default=0.3, gt=0, lt=1)
    initial_abstraction_ratio: Literal[0.2, 0.05] = 0.2
    antecedent_moisture: Literal["I", "II", "III"] = "II"
    flooded_depth_m: float = Field(default=0.15, gt=0)
    probability_depth_m: float = Field(default=0.3, gt=0)
    #: gauge sites: a lumped rainfall-runoff forecast of discharge at each zone's gauge
    lumped: LumpedModelConfig | None = None


class LevelConfig(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    colour: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")
    severity: str
    urgency: str
    certainty: str
    response_type: str
    sms: bool = True
    #: an emergency manager must approve notices and SMS at this level before they go out
    approval: bool = False
    #: minutes after which a notice no manager decided on is settled by ``on_approval_timeout``;
    #: omit to wait for a manager however long it takes
    approval_timeout_minutes: float | None = Field(default=None, gt=0)
    #: what a time-out does: "publish" (the notice and its SMS go out, as if approved) or
    #: "reject" (nothing goes out; the next cycle decides afresh and may raise again)
    on_approval_timeout: Literal["publish", "reject"] = "publish"
    instruction: str = ""
    #: title and instruction in other languages: { es = { title = "...", instruction = "..." } }
    translations: dict[str, dict[Literal["title", "instruction"], str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cap_enums(self) -> "LevelConfig":
        for field, allowed in (("severity", CAP_SEVERITY), ("urgency", CAP_URGENCY),
                               ("certainty", CAP_CERTAINTY), ("response_type", CAP_RESPONSE)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)} (CAP 1.2)")
        if self.sms and not self.instruction.strip():
            raise ValueError("instruction is empty, but residents are texted at this level (sms = true) "
                             "and every warning SMS says what to do: give an instruction, or sms = false")
        return self


class PolicyConfig(_Model):
    persistence: int = Field(default=1, ge=1)
    hysteresis: float = Field(default=0.2, ge=0, lt=1)
    min_hold_hours: float = Field(default=3, ge=0)
    expiry_hours: float = Field(default=12, gt=0)
    #: a level still in force gets a fresh notice this long before the last one expires
    renew_before_hours: float = Field(default=1, ge=0)
    escalate_on_observed: bool = True

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> "PolicyConfig":
        if self.renew_before_hours >= self.expiry_hours:
            raise ValueError("renew_before_hours must be shorter than expiry_hours")
        return self

    def to_policy(self) -> ZonePolicy:
        return ZonePolicy(persistence=self.persistence, hysteresis=self.hysteresis,
                          min_hold=timedelta(hours=self.min_hold_hours),
                          escalate_on_observed=self.escalate_on_observed,
                          expiry=timedelta(hours=self.expiry_hours),
                          renew_before=timedelta(hours=self.renew_before_hours))


class Threshold(_Model):
    """Criteria for one level: ``{ any = ["forecast_peak_depth_m >= 0.3", ...] }`` or ``all``."""

    any: list[str] | None = None
    all: list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Threshold":
        if (self.any is None) == (self.all is None):
            raise ValueError("give exactly one of any = [...] or all = [...]")
        for text in self.any or self.all or []:
            m = _CRITERION.match(text)
            if not m:
                raise ValueError(f"criterion {text!r} is not 'metric op number' (op: >=, >, <=, <)")
            if m.group(1) not in METRICS:
                raise ValueError(f"criterion {text!r}: unknown metric {m.group(1)!r}; "
                                 f"valid: {', '.join(sorted(METRICS))}")
        return self

    def criteria(self) -> tuple[Criterion, ...]:
        out = []
        for text in self.any or self.all or []:
            metric, op, value = _CRITERION.match(text).groups()  # type: ignore[union-attr]
            out.append(Criterion(metric=metric, op=op, value=float(value)))
        return tuple(out)

    @property
    def combine(self) -> str:
        return "any" if self.any is not None else "all"


class ZoneConfig(_Model):
    code: str
    gauge: str | None = None
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
    policy: PolicyConfig | None = None


class TwilioConfig(_Model):
    from_number: str | None = None
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    validity_period_s: int = Field(default=3600, ge=1, le=36000)


class ChannelsConfig(_Model):
    sms: Literal["auto", "twilio", "file"] = "auto"
    sms_log: str = "sms.jsonl"
    max_segments: int = Field(default=3, ge=1, le=10)
    #: a folder of the site's own SMS templates (sms/<lang>/[<level>/]<action>.txt.j2), searched first
    sms_templates: str | None = None
    #: sending rate in SMS segments per second (the unit providers meter); omit for no limit
    rate_segments_per_s: float | None = Field(default=None, gt=0)
    #: temporary failures: first retry after this many seconds, doubling, up to max_attempts
    retry_base_s: float = Field(default=30, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    #: seconds a dispatcher's claim on a message lasts before another may recover it
    claim_lease_s: float = Field(default=120, gt=0)
    #: a dispatcher died mid-send and the provider cannot be asked whether its messages went
    #: out: keep asking (with backoff) this many seconds, then tell the operators and apply
    #: in_doubt_action
    in_doubt_give_up_s: float = Field(default=900, gt=0)
    #: then "resend" them (for a flood warning a possible duplicate beats a lost warning) or
    #: "hold" them in state in_doubt for an operator (floodwarn outbox in-doubt / resend / mark-sent)
    in_doubt_action: Literal["resend", "hold"] = "resend"
    twilio: TwilioConfig = TwilioConfig()


class NoticesConfig(_Model):
    sender: str = Field(pattern=r"^[^\s,<&]+$")
    sender_name: str
    web_base: str
    language: str = "en"
    #: languages of every notice, one CAP <info> each (default: [language])
    languages: list[str] = Field(default_factory=list)
    #: CAP status of the site's notices: "Actual", or "Test" for a test installation (and
    #: for replays that are not drills); drills are always "Exercise"
    status: Literal["Actual", "Test"] = "Actual"


class SubscribersConfig(_Model):
    import_csv: Path | None = None
    default_region: str = Field(default="GB", pattern=r"^[A-Z]{2}$")


class DrillConfig(_Model):
    name: str = "floodwarn drill"
    exercise_marker: str = "EXERCISE"


class DemoConfig(_Model):
    start: datetime
    end: datetime
    cycle_hours: float = Field(default=2, gt=0)
    #: the demo storm's event files (for `floodwarn replay` and `floodwarn tune`)
    events: Path | None = None

    _utc_start = field_validator("start", "end")(_utc)


class ServiceConfig(_Model):
    #: run a cycle at least this often (minutes of the service's clock), new data or not
    cycle_every_minutes: float = Field(default=60, gt=0)
    #: how often (wall-clock seconds) the scheduler looks for new data
    poll_seconds: float = Field(default=30, gt=0)
    dispatch_every_seconds: float = Field(default=10, gt=0)
    #: how often (wall-clock seconds) the gauge feed is read; default poll_seconds
    gauge_poll_seconds: float | None = Field(default=None, gt=0)
    #: gauge readings this much newer (minutes) than at the last cycle make a cycle due
    gauge_new_data_minutes: float = Field(default=60, gt=0)
    #: operators' phones (E.164) texted when a feed goes late or fails (once per gap)
    operator_phones: list[str] = Field(default_factory=list)
    misfire_grace_s: int = Field(default=300, ge=1)
    #: replay: the service's clock starts here (ISO 8601 with zone) instead of now ...
    simulate_from: datetime | None = None
    #: ... and runs this many times faster than real time
    speed: float = Field(default=1.0, gt=0)
    write_depth: bool = True


class ConsoleConfig(_Model):
    """Console sign-in (``warning.logins``): password hashing and login throttling."""

    #: argon2id parameters; the default is OWASP's minimum (19 MiB, 2 passes, 1 lane: the
    #: Password Storage Cheat Sheet); RFC 9106 suggests 64 MiB, 3 passes, 4 lanes where the
    #: server can spare it. Raising them re-hashes each password at its next sign-in.
    password_time_cost: int = Field(default=2, ge=1, le=100)
    password_memory_kib: int = Field(default=19456, ge=8192, le=4_194_304)
    password_parallelism: int = Field(default=1, ge=1, le=64)
    #: failed sign-ins allowed per account (since its last success) before back-off ...
    login_free_failures: int = Field(default=5, ge=1)
    #: ... and per client address
    login_free_failures_per_address: int = Field(default=20, ge=1)
    #: the first wait, doubled at each further failure, up to the maximum
    login_backoff_seconds: float = Field(default=1.0, gt=0)
    login_backoff_max_seconds: float = Field(default=900.0, gt=0)
    #: failures older than this are forgotten
    login_window_minutes: float = Field(default=60.0, gt=0)


class LimitsConfig(_Model):
    """Plausibility limits (``warning.ingest.limits``): a value outside is flagged and
    excluded before anything reaches the models; a file mostly outside is refused."""

    #: highest plausible rain rate, mm/h (the world's 1-hour record is 305 mm)
    rain_max_mm_h: float = Field(default=400.0, gt=0)
    #: rain between this and 0 mm/h is read as 0 (model rounding); lower is flagged
    rain_min_mm_h: float = Field(default=-0.01, le=0)
    #: fastest plausible change of river stage between consecutive readings, m/h ...
    stage_max_rise_m_per_h: float = Field(default=5.0, gt=0)
    #: ... measured over at least this many minutes
    stage_rate_min_minutes: float = Field(default=15.0, gt=0)
    #: a file (or a station's series) with a larger share of values flagged is refused
    max_flagged_share: float = Field(default=0.5, gt=0, le=1)

    def to_limits(self):
        from .ingest.limits import Limits

        return Limits(**self.model_dump())


class ComputeConfig(_Model):
    """Where terrain preparation and the forecast cycle's models run: in this process
    (``local``) or on Dask (``dask``), either a LocalCluster started for the command or
    an existing scheduler."""

    engine: Literal["local", "dask"] = "local"
    #: an existing Dask scheduler, e.g. "tcp://10.0.0.5:8786"; None starts a LocalCluster
    scheduler_address: str | None = None
    #: seconds to wait for that scheduler to answer
    connect_timeout_s: float = Field(default=20, gt=0)
    #: LocalCluster: worker processes, threads each, and memory limit each (Dask syntax)
    workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_per_worker: str = "2GiB"
    #: tile size (rows, columns) of the chunked terrain store
    tile: tuple[int, int] = (2048, 2048)
    #: folder of the chunked terrain store (Zarr); default <output_dir>/tiles
    store: Path | None = None

    @model_validator(mode="after")
    def _sane(self) -> "ComputeConfig":
        if min(self.tile) < 3:
            raise ValueError(f"tile must be at least 3 x 3 cells, got {self.tile}")
        return self


class Config(_Model):
    site: SiteConfig
    gauges: list[GaugeConfig] = Field(default_factory=list)
    sources: SourcesConfig = SourcesConfig()
    model: ModelConfig = ModelConfig()
    levels: list[LevelConfig]
    policy: PolicyConfig = PolicyConfig()
    zones: list[ZoneConfig]
    channels: ChannelsConfig = ChannelsConfig()
    notices: NoticesConfig
    subscribers: SubscribersConfig = SubscribersConfig()
    drill: DrillConfig = DrillConfig()
    database_url: str | None = None
    service: ServiceConfig = ServiceConfig()
    compute: ComputeConfig = ComputeConfig()
    limits: LimitsConfig = LimitsConfig()
    console: ConsoleConfig = ConsoleConfig()
    demo: DemoConfig | None = None
    #: folder of the config file; relative paths are resolved against it
    base_dir: Path = Path(".")

    # ------------------------------------------------------------------ derived views
    @property
    def has_grid(self) -> bool:
        """A grid site (it has a DEM); otherwise a gauge site."""
        return self.site.dem is not None

    def path(self, p: Path | str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def output_dir(self) -> Path:
        return self.path(self.site.output_dir)

    @property
    def db_url(self) -> str:
        """``database_url``; else ``FLOODWARN_DATABASE_URL`` (or the file named by
        ``FLOODWARN_DATABASE_URL_FILE``: a server's password is a secret, kept out of the
        config); else a SQLite file in the output folder. Drills and replays name their
        own database in the config they run on, so the variable never points them at the
        live one."""
        return self.database_url or env_secret("FLOODWARN_DATABASE_URL") or \
            f"sqlite:///{self.output_dir / 'floodwarn.sqlite'}"

    def level_specs(self, zone: ZoneConfig) -> list[LevelSpec]:
        specs = []
        for rank, lv in enumerate(self.levels, start=1):
            th = zone.thresholds.get(lv.name)
            if th is None:
                continue
            specs.append(LevelSpec(
                name=lv.name, rank=rank, title=lv.title, colour=lv.colour, severity=lv.severity,
                urgency=lv.urgency, certainty=lv.certainty, response_type=lv.response_type,
                sms=lv.sms, approval=lv.approval, criteria=th.criteria(), combine=th.combine,
                instruction=lv.instruction, translations=lv.translations))
        return specs

    def level_config(self, name: str) -> LevelConfig:
        return next(lv for lv in self.levels if lv.name == name)

    def zone_policy(self, zone: ZoneConfig) -> ZonePolicy:
        return (zone.policy or self.policy).to_policy()

    def gauge(self, gauge_id: str) -> GaugeConfig:
        return next(g for g in self.gauges if g.id == gauge_id)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _semantic_problems(cfg: Config) -> list[str]:
    """Cross-references and files: what pydantic cannot see on its own."""
    problems: list[str] = []

    def need_file(key: str, p: Path | None, folder: bool = False) -> None:
        if p is None:
            return
        problem = _path_problem(key, cfg.path(p), folder=folder)
        if problem:
            problems.append(problem)

    need_file("site.dem", cfg.site.dem)
    need_file("site.curve_number", cfg.site.curve_number)
    need_file("site.zones", cfg.site.zones)
    fc = cfg.sources.forecast
    if fc is not None:
        need_file("sources.forecast.path", fc.path, folder=cfg.path(fc.path).suffix == "")
    problems += _site_kind_problems(cfg)
    if cfg.sources.gauges is not None and cfg.sources.gauges.path is not None:
        need_file("sources.gauges.path", cfg.sources.gauges.path)
    need_file("subscribers.import_csv", cfg.subscribers.import_csv)
    for key, folder in (("site.output_dir", cfg.output_dir),
                        ("compute.store", cfg.path(cfg.compute.store) if cfg.compute.store else None)):
        problem = _output_folder_problem(key, folder) if folder is not None else None
        if problem:
            problems.append(problem)

    zone_codes: set[str] = set()
    zones_read = False  # the zones file was read: a configured zone missing from it is a problem
    zones_file = cfg.path(cfg.site.zones)
    if _path_problem("site.zones", zones_file) is None:
        zf = read_zones(zones_file)
        zone_codes = zf.codes
        zones_read = bool(zf.codes) or not zf.problems
        problems += zf.problems
        configured = {z.code for z in cfg.zones}
        problems += _dem_extent_problems(cfg, [z for z in zf.zones if z.code in configured])

    level_names = [lv.name for lv in cfg.levels]
    if len(set(level_names)) != len(level_names):
        problems.append("levels: level names must be unique")
    gauge_ids = {g.id for g in cfg.gauges}
    seen: set[str] = set()
    for i, z in enumerate(cfg.zones):
        if z.code in seen:
            problems.append(f"zones[{i}].code: zone {z.code!r} is configured twice")
        seen.add(z.code)
        if zones_read and z.code not in zone_codes:
            problems.append(f"zones[{i}].code: {z.code!r} is not in {cfg.site.zones} "
                            f"(zones there: {', '.join(sorted(zone_codes)) or 'none'})")
        if z.gauge is not None and z.gauge not in gauge_ids:
            problems.append(f"zones[{i}].gauge: unknown gauge {z.gauge!r}; configured gauges: "
                            f"{', '.join(sorted(gauge_ids)) or 'none'}")
        for name, th in z.thresholds.items():
            if name not in level_names:
                problems.append(f"zones[{i}].thresholds.{name}: no such level; levels: "
                                f"{', '.join(level_names)}")
            uses_gauge = any(c.metric.startswith(("observed_", "forecast_stage"))
                             or c.metric in GAUGE_SITE_METRICS for c in th.criteria())
            if uses_gauge and z.gauge is None:
                problems.append(f"zones[{i}].thresholds.{name}: uses a gauge metric but the zone "
                                f"has no gauge")
        if not z.thresholds:
            problems.append(f"zones[{i}].thresholds: give criteria for at least one level")
    if cfg.demo is not None and cfg.demo.end <= cfg.demo.start:
        problems.append("demo.end: must be after demo.start")
    return problems


def _site_kind_problems(cfg: Config) -> list[str]:
    """What a grid site needs (a forecast, placed gauges) and what a gauge site needs (a
    gauge source, a gauge for every zone, gauge metrics only)."""
    problems: list[str] = []
    if cfg.has_grid:
        if cfg.sources.forecast is None:
            problems.append("sources.forecast: a site with a DEM (site.dem) needs a rainfall forecast "
                            "source; or remove site.dem to make it a gauge site")
        for i, g in enumerate(cfg.gauges):
            if g.datum_m is None:
                problems.append(f"gauges[{i}].datum_m: give the elevation of gauge {g.id!r}'s zero "
                                f"above the DEM's datum (m); a site with a DEM needs it")
            if g.flood_stages is None:
                problems.append(f"gauges[{i}].flood_stages: give gauge {g.id!r}'s flood stages "
                                f"(at least minor, m above gauge zero)")
        for i, z in enumerate(cfg.zones):
            for name, th in z.thresholds.items():
                for c in th.criteria():
                    if c.metric in GAUGE_SITE_METRICS:
                        problems.append(f"zones[{i}].thresholds.{name}: {c.metric} is computed on gauge "
                                        f"sites (no site.dem) only")
        if cfg.model.lumped is not None:
            problems.append("model.lumped: the lumped model runs on gauge sites (no site.dem) only")
        return problems
    if cfg.sources.forecast is not None:
        problems.append("sources.forecast: a gauge site (no site.dem) has no grid to put a rainfall "
                        "forecast on; remove [sources.forecast], or give site.dem")
    if cfg.sources.gauges is None:
        problems.append("sources.gauges: a gauge site (no site.dem) is warned from its gauges; "
                        "give [sources.gauges]")
    problems += _lumped_problems(cfg)
    gauge_metrics = sorted(set(METRICS) - GRID_METRICS)
    for i, z in enumerate(cfg.zones):
        if z.gauge is None:
            problems.append(f"zones[{i}].gauge: zone {z.code!r} needs a gauge: on a gauge site "
                            f"(no site.dem) every zone is warned from its gauge")
        for name, th in z.thresholds.items():
            for c in th.criteria():
                if c.metric in GRID_METRICS:
                    problems.append(f"zones[{i}].thresholds.{name}: {c.metric} needs the grid models "
                                    f"(site.dem); a gauge site has {', '.join(gauge_metrics)}")
                if c.metric == "forecast_peak_discharge_m3s" and cfg.model.lumped is None:
                    problems.append(f"zones[{i}].thresholds.{name}: forecast_peak_discharge_m3s needs "
                                    f"a lumped model: give [model.lumped]")
    return problems


def _lumped_problems(cfg: Config) -> list[str]:
    """The lumped model's parameters (readable and valid) and its catchment area."""
    lm = cfg.model.lumped
    if lm is None:
        return []
    from models.errors import ModelError
    from models.lumped import LumpedParams

    from .errors import IngestError

    problems: list[str] = []
    if lm.params is not None:
        try:
            LumpedParams.from_dict(dict(lm.params))
        except (ModelError, TypeError) as exc:
            problems.append(f"model.lumped.params: {exc}")
    elif lm.params_file is not None:
        full = cfg.path(lm.params_file)
        if not full.is_file():
            problems.append(f"model.lumped.params_file: file not found: {full}")
        else:
            from .calibration import read_params

            try:
                read_params(full)
            except (IngestError, ModelError) as exc:
                problems.append(f"model.lumped.params_file: {exc}")
    gs = cfg.sources.gauges
    source_area = gs.settings.get("area_km2") if gs is not None else None
    if lm.area_km2 is None and source_area is None and (gs is None or gs.kind != "peq"):
        problems.append("model.lumped.area_km2: give the catchment area above the gauge (km2); the "
                        "model's discharge is in mm/h over the catchment")
    if lm.area_km2 is not None and source_area is not None and float(source_area) != lm.area_km2:
        problems.append(f"model.lumped.area_km2: {lm.area_km2:g} km2 differs from "
                        f"sources.gauges.settings.area_km2 = {source_area}; observed and forecast "
                        f"discharge must use one area")
    return problems


# --------------------------------------------------------------------------- files and folders
def _path_problem(key: str, full: Path, folder: bool = False) -> str | None:
    """``key: ...`` when ``full`` is not an existing file (or folder), else None; a name the
    system refuses (too long, a NUL character) is a problem too, not a crash."""
    try:
        if folder and not full.is_dir():
            return f"{key}: folder not found: {full}"
        if not folder and not full.is_file():
            if full.is_dir():
                return f"{key}: {full} is a folder; give a file"
            return f"{key}: file not found: {full}"
    except (OSError, ValueError) as exc:
        return f"{key}: cannot use {full!r} as a path: {getattr(exc, 'strerror', None) or exc}"
    return None


def _resolved(path: Path) -> Path:
    """``path`` made absolute and free of ``..``, or as it is when the system refuses it."""
    try:
        return path.resolve()
    except (OSError, ValueError):
        return path


def _output_folder_problem(key: str, folder: Path) -> str | None:
    """``key: ...`` when floodwarn could not write into ``folder``: it is a file, or it
    cannot be created because the nearest existing parent is a file."""
    try:
        if folder.exists():
            return None if folder.is_dir() else f"{key}: {folder} is a file; give a folder"
        parent = next(p for p in folder.parents if p.exists())
        if not parent.is_dir():
            return f"{key}: {folder} cannot be created: {parent} is a file; give a folder"
    except (OSError, ValueError) as exc:
        return f"{key}: cannot use {folder!r} as a folder: {getattr(exc, 'strerror', None) or exc}"
    return None


def undecodable_at(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where ``data`` stops being UTF-8, for a message: ``byte 0xe9 at line 3, column 14``
    (column in bytes), with a hint when the file is UTF-16 (as Excel's "Unicode text")."""
    start = exc.start
    line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    where = f"byte 0x{data[start]:02x} at line {line}, column {column}"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        where += "; the file looks like UTF-16"
    return where


# --------------------------------------------------------------------------- the zones file
#: a zone code names CAP identifiers (no spaces, commas, '<' or '&'), notice files and URLs
ZONE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ZoneShape:
    """One zone of the ``site.zones`` GeoJSON, checked.

    ``geometry`` is a valid, non-empty, 2-D shapely Polygon or MultiPolygon in WGS 84
    longitude/latitude degrees (RFC 7946 order: x = longitude, y = latitude)."""

    code: str
    name: str
    geometry: Polygon | MultiPolygon


@dataclass(frozen=True)
class ZonesFile:
    """What :func:`read_zones` found in a zones file."""

    #: the zones without a problem, in file order
    zones: list[ZoneShape]
    #: every zone code the file names, with or without a problem
    codes: set[str]
    #: one ``site.zones: ...`` line per problem; empty when the file is good
    problems: list[str]


def read_zones(path: Path) -> ZonesFile:
    """The zones of a ``site.zones`` GeoJSON file, checked whole; every problem is reported.

    The file must be UTF-8 (a byte-order mark is accepted) JSON holding a
    FeatureCollection. Each feature needs a unique ``code`` (letters, digits, ``_ . -``;
    unique whatever the letter case) and a ``name``, and a Polygon or MultiPolygon
    geometry that is valid (shapely's :func:`~shapely.validation.explain_validity`
    reason otherwise: self-intersections, rings not closed or of fewer than four
    positions), not empty, and in WGS 84 longitude/latitude (RFC 7946; a polygon in
    metres is refused, with the advice to reproject it). Nothing is repaired.
    """
    key = "site.zones"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ZonesFile([], set(), [f"{key}: cannot read {path}: {exc.strerror or exc}"])
    try:
        gj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return ZonesFile([], set(), [(f"{key}: {path} is not UTF-8 text ({undecodable_at(data, exc)}); "
                                      f"GeoJSON is UTF-8 (RFC 7946): save it as UTF-8")])
    except json.JSONDecodeError as exc:
        return ZonesFile([], set(), [(f"{key}: {path} is not valid JSON: {exc.msg} at line "
                                      f"{exc.lineno}, column {exc.colno}")])
    except RecursionError:
        return ZonesFile([], set(), [f"{key}: {path} is not valid JSON: nested too deeply"])
    features = gj.get("features") if isinstance(gj, dict) else None
    if not isinstance(gj, dict) or gj.get("type") != "FeatureCollection" or not isinstance(features, list):
        return ZonesFile([], set(), [(f"{key}: {path} is not a GeoJSON FeatureCollection (a JSON "
                                      f"object with \"type\": \"FeatureCollection\" and a \"features\" list)")])
    zones: list[ZoneShape] = []
    problems: list[str] = []
    first: dict[str, tuple[int, str]] = {}  # casefolded code -> (feature index, code)
    for i, feat in enumerate(features):
        props = feat.get("properties") if isinstance(feat, dict) else None
        code = props.get("code") if isinstance(props, dict) else None
        name = props.get("name") if isinstance(props, dict) else None
        if not (isinstance(code, str) and code.strip() and isinstance(name, str) and name.strip()):
            problems.append(f"{key}: feature {i} needs properties 'code' and 'name' (text)")
            continue
        if not ZONE_CODE.match(code):
            problems.append(f"{key}: feature {i}: zone code {code[:80]!r} may hold only letters, digits, "
                            f"'_', '.' and '-' (starting with a letter or digit, at most 64): it "
                            f"names the zone's CAP notices, their files and URLs")
            continue
        if code.casefold() in first:
            j, other = first[code.casefold()]
            same = "the code" if other == code else f"the code of feature {j}, {other!r}, letter case aside"
            problems.append(f"{key}: zone {code!r} (feature {i}) has {same} of feature {j}; zone codes "
                            f"must be unique")
            continue
        first[code.casefold()] = (i, code)
        geometry, reasons = _zone_geometry(feat.get("geometry"))
        problems += [f"{key}: zone {code!r} {why}" for why in reasons]
        if geometry is not None:
            zones.append(ZoneShape(code, name, geometry))
    return ZonesFile(zones, {code for _, code in first.values()}, problems)


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _coordinates_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is not a GeoJSON coordinate array nested ``depth`` deep (3: a
    Polygon's, 4: a MultiPolygon's), or None."""
    found = json.dumps(value, default=str)[:80]
    if not isinstance(value, list) or (depth > 1 and any(not isinstance(v, list) for v in value)):
        return (f"has malformed coordinates near {found}: a Polygon's coordinates are a list of rings, "
                f"each a list of positions (longitude, latitude), and a MultiPolygon's a list of those")
    if depth == 1:
        if len(value) in (2, 3) and all(_finite_number(v) for v in value):
            return None
        return f"has a position that is not a longitude, latitude pair of finite numbers: {found}"
    for item in value:
        problem = _coordinates_problem(item, depth - 1)
        if problem:
            return problem
    return None


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _zone_geometry(geom: Any) -> tuple[Polygon | MultiPolygon | None, list[str]]:
    """A zone's checked geometry (2-D, lon/lat) and no reasons, or None and why not (each
    reason reads after ``zone 'CODE' ``)."""
    kind = geom.get("type") if isinstance(geom, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        found = "no geometry" if geom is None else f"a {kind}" if isinstance(kind, str) else "no geometry type"
        return None, [f"is not a Polygon or MultiPolygon ({found})"]
    problem = _coordinates_problem(geom.get("coordinates"), 3 if kind == "Polygon" else 4)
    if problem:
        return None, [problem]
    try:
        shp = shapely.from_geojson(json.dumps({"type": kind, "coordinates": geom["coordinates"]}))
    except shapely.errors.GEOSException as exc:  # a ring not closed, or of 1 to 3 positions
        reason = str(exc).split(": ", 1)[-1]
        return None, [(f"is not a valid polygon: {reason}; fix it in a GIS (e.g. QGIS Fix "
                       f"geometries): floodwarn does not repair zones")]
    if shp.is_empty:
        return None, ["has an empty geometry (no coordinates); give its outline"]
    shp = shapely.force_2d(shp)
    reasons = []
    xy = shapely.get_coordinates(shp)
    outside = (np.abs(xy[:, 0]) > 180.0) | (np.abs(xy[:, 1]) > 90.0)
    if outside.any():
        x, y = xy[int(np.argmax(outside))]
        reasons.append(f"has coordinates outside WGS 84 longitude/latitude (x={_number(x)}, "
                       f"y={_number(y)}); GeoJSON zones must be lon/lat (RFC 7946); reproject them")
    if not shp.is_valid:
        reasons.append(f"is not a valid polygon: {explain_validity(shp)}; fix it in a GIS (e.g. QGIS "
                       f"Fix geometries): floodwarn does not repair zones")
    return (None if reasons else shp), reasons


def zone_extent_problems(zones: list[ZoneShape], crs: Any, bounds: tuple[float, float, float, float]
                         ) -> tuple[list[str], dict[str, float]]:
    """Zones against a grid's extent: a problem for each zone wholly outside it, and the
    share of its area outside (0-1) for each zone partly outside.

    Parameters
    ----------
    zones : list of ZoneShape
        Checked zones (:func:`read_zones`), lon/lat.
    crs : rasterio CRS or str
        The grid's CRS; the zones are projected to it to compare areas.
    bounds : (west, south, east, north)
        The grid's outer edges in ``crs``.
    """
    box = shapely.box(*bounds)
    problems: list[str] = []
    partly: dict[str, float] = {}
    for z in zones:
        try:
            projected = shape(transform_geom("EPSG:4326", crs, mapping(z.geometry)))
            share = 1.0 - projected.intersection(box).area / projected.area
        except Exception as exc:  # noqa: BLE001  (GDAL's errors, rasterio._err.CPLE_*, have no public base)
            problems.append(f"site.zones: zone {z.code!r} cannot be projected to the DEM's CRS ({crs}): {exc}")
            continue
        if not math.isfinite(share):
            problems.append(f"site.zones: zone {z.code!r} cannot be projected to the DEM's CRS ({crs})")
        elif share > 1.0 - 1e-9:
            problems.append(f"site.zones: zone {z.code!r} lies wholly outside the DEM (site.dem); check "
                            f"that the zones and the DEM are of the same place")
        elif share > 1e-6:
            partly[z.code] = share
    return problems, partly


def _dem_extent_problems(cfg: Config, zones: list[ZoneShape]) -> list[str]:
    """The configured zones against the DEM's extent (read from its header); the DEM's own
    cells (nodata, channels) are checked when the site loads. A zone partly outside the
    DEM is accepted: check-config has no channel for warnings, and ``Site.load`` logs the
    share outside."""
    if not cfg.has_grid or not zones or _path_problem("site.dem", cfg.path(cfg.site.dem)):
        return []
    dem = cfg.path(cfg.site.dem)
    try:
        with rasterio.open(dem) as src:
            crs, bounds = src.crs, tuple(src.bounds)
    except RasterioError as exc:
        return [f"site.dem: cannot read {dem} as a grid: {exc}"]
    if crs is None:
        return [f"site.dem: {dem} has no CRS; the DEM must be in a projected CRS with metre cells"]
    return zone_extent_problems(zones, crs, bounds)[0]


def _raw_file_problems(raw: dict[str, Any], base: Path) -> list[str]:
    """Missing files, found from the raw TOML when the schema check already failed, so
    they are reported in the same round as the schema problems."""
    out = []
    for section, key in (("site", "dem"), ("site", "curve_number"), ("site", "zones")):
        value = (raw.get(section) or {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            problem = _path_problem(f"{section}.{key}", _resolved(base / value))
            if problem:
                out.append(problem)
    return out


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's contents, or a ConfigError naming the file and what is wrong with it:
    missing, a folder, unreadable, not UTF-8 (the byte and line), not TOML. A UTF-8
    byte-order mark is accepted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; give the TOML file itself") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the {what} {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({undecodable_at(data, exc)}); TOML files are UTF-8: save "
                          f"it as UTF-8", source=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None


def validation_problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as one line each, with the key path."""
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling)"
        problems.append(f"{_key_path(err['loc'])}: {msg}")
    return problems


def load_config(path: str | Path) -> Config:
    """Read, validate and return the configuration at ``path``; ConfigError lists every problem."""
    path = Path(path)
    raw = read_toml(path, "config file")
    # base_dir is set here, never by the file: a base_dir key there would be silently replaced
    own = ["base_dir: unknown key (relative paths are relative to the config file's folder)"] \
        if "base_dir" in raw else []
    raw["base_dir"] = path.resolve().parent
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(own + validation_problems(exc) + _raw_file_problems(raw, raw["base_dir"]),
                          source=str(path)) from None
    problems = own + _semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, source=str(path))
    return cfg
