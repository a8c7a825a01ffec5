"""Time a replay of the demo storm as fast as possible: simulated hours per wall second.

``warning.replay.replay`` of ``sample_data/demo/events/storm-2025-11-14.toml`` (42 simulated
hours, polled every ``--step-minutes``) on the demo site, not as a drill. The terrain is
prepared before the clock starts (it is cached per site, as in service); the Numba
kernels are warmed by a first, untimed replay. Each repeat writes a fresh replay folder.
Figures: median wall seconds, cycles, simulated hours per wall second, and the share of
the wall time spent in the models (from the runs' own timings).

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_replay.py [--repeats 3] [--step-minutes 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warning.config import load_config  # noqa: E402
from warning.events import load_event  # noqa: E402
from warning.replay import replay  # noqa: E402
from warning.storage import Run, Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-minutes", type=float, default=15.0)
    ap.add_argument("--event", default=str(ROOT / "sample_data" / "demo" / "events" / "storm-2025-11-14.toml"))
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.toml"))
    args = ap.parse_args()
    os.environ.setdefault("FLOODWARN_SECRET_KEY", "benchmark-secret")
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        site = cfg.site.model_copy(update={"output_dir": Path(tmp) / "out"})
        cfg = cfg.model_copy(update={"site": site})
        event = load_event(args.event, cfg)
        step = timedelta(minutes=args.step_minutes)
        replay(cfg, event, step=step, out_dir=Path(tmp) / "warm")  # terrain cache + Numba warm-up
        walls, models, cycles = [], [], []
        for i in range(args.repeats):
            res = replay(cfg, event, step=step, out_dir=Path(tmp) / f"r{i}")
            store = Store(res.config.db_url)
            with store.session() as s:
                t = [r.summary.get("timings", {}) for r in s.query(Run).all()]
            store.dispose()
            walls.append(res.wall_seconds)
            models.append(sum(x.get("models", 0.0) for x in t))
            cycles.append(res.cycles)
            print(f"run {i + 1}: {res.cycles} cycles, {res.wall_seconds:.1f} s, "
                  f"{res.simulated_hours / res.wall_seconds:.2f} simulated h/s", flush=True)
        wall = statistics.median(walls)
        hours = (event.end - event.start).total_seconds() / 3600.0
        print(f"\n{event.name}: {hours:.0f} simulated hours, {statistics.median(cycles):.0f} cycles, "
              f"step {args.step_minutes:g} min")
        print(f"median wall {wall:.1f} s -> {hours / wall:.2f} simulated hours per wall second "
              f"({wall / statistics.median(cycles):.2f} s per cycle; models {statistics.median(models) / wall:.0%} "
              f"of the wall time)")


if __name__ == "__main__":
    main()
