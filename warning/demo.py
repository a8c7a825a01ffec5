"""The demo: a whole storm on the bundled site, cycle by cycle, as a drill.

``run_demo`` is what ``floodwarn demo`` (and ``make demo``) calls. It uses exactly the
pipeline the service uses, with a simulated clock that steps through the storm; every
notice is a CAP ``Exercise`` and every SMS starts with the exercise marker. SMS go to the
file channel (JSON lines, numbers masked) unless told to use Twilio.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .alerting import alerts_for
from .operators import make_channel
from .config import Config
from .maps import peak_depth_map
from .pipeline import CycleResult, Inputs, cycle_times, run_cycle
from .secrets import secret_is_set
from .site import Site
from .storage import Store
from .subscribers import PhoneVault, SubscriberRegistry


@dataclass
class ZoneTimeline:
    code: str
    name: str
    changes: list[tuple[datetime, str, str]] = field(default_factory=list)  # (time, action, level)
    peak_depth_m: float = 0.0
    peak_time: datetime | None = None
    first_warning: datetime | None = None
    top_level: str = "none"

    @property
    def lead_time_h(self) -> float | None:
        if self.first_warning is None or self.peak_time is None or self.peak_depth_m <= 0:
            return None
        return (self.peak_time - self.first_warning).total_seconds() / 3600.0


@dataclass
class DemoResult:
    cycles: list[CycleResult]
    timelines: dict[str, ZoneTimeline]
    outputs: dict[str, Path]
    seconds: float


def run_demo(cfg: Config, *, channel_name: str = "file",
             progress: Callable[[int, int, CycleResult | None], None] | None = None,
             status: Callable[[str], None] | None = None) -> DemoResult:
    t_start = time.perf_counter()
    say = status or (lambda _msg: None)
    if cfg.demo is None:
        from .errors import ConfigError
        raise ConfigError("demo: this config has no [demo] section with start, end and cycle_hours")
    out = cfg.output_dir
    for sub in ("cap", "depth"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for f in ("floodwarn.sqlite", "floodwarn.sqlite-wal", "floodwarn.sqlite-shm", cfg.channels.sms_log,
              "map_peak_depth.png", "analysis_peak_depth.tif", "demo-secret.key"):
        (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    own_key = not secret_is_set("FLOODWARN_SECRET_KEY")
    if own_key:
        # a fresh key for this demo database only, kept beside it (owner-readable) so later
        # `floodwarn run` calls on the same database can decrypt its invented numbers
        key_file = out / "demo-secret.key"
        key_file.write_text(secrets.token_urlsafe(32) + "\n")
        key_file.chmod(0o600)
        os.environ["FLOODWARN_SECRET_KEY_FILE"] = str(key_file)
        say(f"FLOODWARN_SECRET_KEY is not set: the demo database gets its own key, {key_file}")
    try:
        return _run_storm(cfg, out, channel_name, progress, say, t_start)
    finally:
        if own_key:
            del os.environ["FLOODWARN_SECRET_KEY_FILE"]


def _run_storm(cfg: Config, out: Path, channel_name: str,
               progress: Callable[[int, int, CycleResult | None], None] | None,
               say: Callable[[str], None], t_start: float) -> DemoResult:
    say("preparing terrain (depression filling, D8, accumulation, HAND, rating curves)")
    site = Site.load(cfg)
    store = Store(cfg.db_url)
    # a drill texts only the drill roster, never the public: the demo's invented numbers
    # go on the drill roster
    registry = SubscriberRegistry(store, PhoneVault.from_env(), cfg.subscribers.default_region, roster="drill")
    if cfg.subscribers.import_csv is not None:
        n = registry.import_csv(cfg.path(cfg.subscribers.import_csv))
        say(f"put {n} demo numbers on the drill roster (invented numbers, stored encrypted)")
    if channel_name == "file":
        from alerts.channels import get_channel
        channel = get_channel("file", path=out / cfg.channels.sms_log)
    else:
        channel = make_channel(cfg)
    inputs = Inputs(cfg)
    times = cycle_times(cfg.demo.start, cfg.demo.end, cfg.demo.cycle_hours)
    results: list[CycleResult] = []
    analysis = np.zeros((site.ny, site.nx), dtype=np.float32)
    merged: dict[str, dict[str, float]] = {z.code: {} for z in site.zones}
    if progress:
        progress(0, len(times), None)
    for i, at in enumerate(times):
        res = run_cycle(site, cfg, store, inputs, at, drill=cfg.drill.name, channel=channel)
        results.append(res)
        analysis = np.fmax(analysis, res.simulation.analysis_depth)
        for code, det in _details(store, res.run_id).items():
            for t, v in zip(det["analysis_times"], det["analysis_series"]):
                merged[code][t] = v  # later cycles know more: they overwrite
        res.simulation = None  # free the arrays
        if progress:
            progress(i + 1, len(times), res)
    timelines = _timelines(cfg, site, store, merged)
    outputs = {"cap": out / "cap", "sms": out / cfg.channels.sms_log, "depth": out / "depth",
               "database": Path(cfg.db_url.removeprefix("sqlite:///"))}
    site.write_geotiff(out / "analysis_peak_depth.tif", analysis, units="m",
                       meaning="peak flood depth over the storm, best-estimate rain")
    outputs["analysis"] = out / "analysis_peak_depth.tif"
    colours = {lv.name: lv.colour for lv in cfg.levels}
    titles = {lv.name: lv.title for lv in cfg.levels}
    outputs["map"] = peak_depth_map(
        site, analysis, out / "map_peak_depth.png",
        title=f"{cfg.site.name}: peak flood depth, {cfg.demo.start:%d %b %Y} storm (drill)",
        zone_colours={c: colours[tl.top_level] for c, tl in timelines.items() if tl.top_level in colours},
        zone_levels={c: titles.get(tl.top_level, "no warning") for c, tl in timelines.items()})
    store.dispose()
    return DemoResult(results, timelines, outputs, time.perf_counter() - t_start)


def _details(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    from .storage import Run
    with store.session() as s:
        return s.get(Run, run_id).summary["details"]


def _timelines(cfg: Config, site: Site, store: Store, merged: dict[str, dict[str, float]]
               ) -> dict[str, ZoneTimeline]:
    out = {z.code: ZoneTimeline(z.code, z.name) for z in site.zones}
    rank = {lv.name: i for i, lv in enumerate(cfg.levels, start=1)}
    for a in alerts_for(store, f"drill:{cfg.drill.name}"):
        tl = out[a.zone]
        action = "all-clear" if a.level_name == "all_clear" else a.msg_type.lower()
        tl.changes.append((a.sent, action, a.level_name))
        if a.level > 0 and tl.first_warning is None:
            tl.first_warning = a.sent
        if a.level_name in rank and rank[a.level_name] > rank.get(tl.top_level, 0):
            tl.top_level = a.level_name
    for code, series in merged.items():
        if series:
            t, v = max(series.items(), key=lambda kv: kv[1])
            out[code].peak_depth_m = float(v)
            out[code].peak_time = datetime.fromisoformat(t)
    return out
