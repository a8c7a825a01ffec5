"""The service on the demo site: latency from new data to the recorded decision, and the
peak memory of ``floodwarn serve`` over a 24-hour simulated storm.

1. latency: a :class:`warning.service.Service` with a stepped clock walks through the
   demo storm; at each new forecast issue the cycle is timed from the moment it sees the
   new file to the moment its decisions are committed (ingest, regridding, runoff,
   routing, inundation, metrics, decisions, notices, outbox). Under ``floodwarn serve``
   add up to ``service.poll_seconds`` of waiting for the next poll.
2. memory: ``floodwarn serve`` runs in its own process on a copy of the demo config
   (outputs in a temporary folder) with its clock replaying 24 simulated hours of the storm
   at ``--speed``; the process's peak RSS (VmHWM) is read at the end, with /health.

Usage (from the repository root, after ``make demo`` or ``floodwarn prepare``):
    .venv/bin/python benchmarks/bench_service.py [--speed 720] [--skip-serve]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warning.config import load_config  # noqa: E402
from warning.service import Service  # noqa: E402

DEMO = ROOT / "config" / "demo.toml"
START = datetime(2025, 11, 13, 18, 0, tzinfo=UTC)


def demo_text(out: Path, speed: float) -> str:
    text = DEMO.read_text().replace('"../', f'"{ROOT}/')
    text = text.replace('output_dir = "', f'output_dir = "{out}" #', 1)
    return text.replace("speed = 360", f"speed = {speed:g}").replace("poll_seconds = 5", "poll_seconds = 2")


class Clock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def latency(folder: Path) -> list[float]:
    cfg_path = folder / "site.toml"
    cfg_path.write_text(demo_text(folder / "out", 1))
    cfg = load_config(cfg_path)
    clock = Clock(START)
    svc = Service(cfg, clock=clock)
    svc.site.prepare()
    svc.cycle(force=True)  # warm-up: kernels loaded, first forecast regridded
    out = []
    for step in range(1, 24 * 4 + 1):  # 15-minute steps through 24 h
        clock.t = START + timedelta(minutes=15 * step)
        if not svc.due(clock.t)[0]:
            continue
        t0 = time.perf_counter()
        rec = svc.cycle()
        if rec is not None and rec.ok:
            out.append(time.perf_counter() - t0)
    return out


def serve_memory(folder: Path, speed: float) -> tuple[float, dict, float]:
    cfg_path = folder / "serve.toml"
    cfg_path.write_text(demo_text(folder / "serve-out", speed))
    port = 18765
    env = dict(os.environ, FLOODWARN_SECRET_KEY="bench-service")
    env.pop("TWILIO_ACCOUNT_SID", None)
    env.pop("TWILIO_AUTH_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-c", "from warning.cli import main; main()", "serve", "--config",
                             str(cfg_path), "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        wall = 24 * 3600 / speed
        health = {}
        while time.monotonic() - t0 < wall + 60:
            time.sleep(2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = json.loads(r.read())
            except OSError:
                continue
            clock = datetime.fromisoformat(health["scheduler"]["clock"])
            if clock >= START + timedelta(hours=24):
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
        return hwm, health, time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=720.0, help="simulated seconds per second for serve")
    ap.add_argument("--skip-serve", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lat = latency(folder)
        print(f"new forecast -> decisions recorded, {len(lat)} cycles over 24 h of the demo storm: median "
              f"{statistics.median(lat):.2f} s (min {min(lat):.2f}, max {max(lat):.2f}); under serve add up "
              f"to service.poll_seconds for the next poll", flush=True)
        if not a.skip_serve:
            hwm, health, took = serve_memory(folder, a.speed)
            sched = health.get("scheduler", {})
            print(f"floodwarn serve over 24 simulated hours at x{a.speed:g} ({took:.0f} s wall): peak RSS "
                  f"{hwm:.0f} MiB; last cycle {sched.get('last_cycle_at')}, errors: {sched.get('last_error')}",
                  flush=True)


if __name__ == "__main__":
    main()
