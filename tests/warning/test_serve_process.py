"""``floodwarn serve`` as a real process: it starts on the demo config with nothing else
set up, runs cycles on its (simulated) clock, stops cleanly on SIGTERM with no cycle left
half-done, and starts again on the same database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from sqlalchemy import select

from tests.conftest import REPO, demo_config_text
from warning.storage import Run, Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _start(cfg, port, env):
    return subprocess.Popen([sys.executable, "-c", "from warning.cli import main; main()", "serve", "--config",
                             str(cfg), "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_a_cycle(port: int, proc, timeout: float = 120) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.stdout.read()
        h = _health(port)
        if h and h["scheduler"]["last_cycle"] and h["scheduler"]["last_cycle"]["ok"]:
            return h
        time.sleep(0.5)
    raise AssertionError("no cycle within the time limit")


def test_serve_runs_cycles_stops_cleanly_on_sigterm_and_restarts(tmp_path):
    text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1)
    text = text.replace("speed = 360", "speed = 3600").replace("poll_seconds = 5", "poll_seconds = 1")
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env["FLOODWARN_SECRET_KEY"] = "serve-process-test"
    env["PYTHONPATH"] = str(REPO)
    port = _free_port()
    proc = _start(cfg, port, env)
    try:
        h = _wait_for_a_cycle(port, proc)
        assert h["ok"] and h["scheduler"]["running"] and h["database"] == "ok"
        time.sleep(2)  # let it be busy: cycles every simulated hour (1 s)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out
    store = Store(f"sqlite:///{tmp_path}/out/floodwarn.sqlite")
    with store.session() as s:
        runs = s.scalars(select(Run)).all()
    assert runs and all(r.status == "done" for r in runs)  # no cycle left half-done
    # restart on the same database: the scheduler's jobs are there, cycles go on
    proc = _start(cfg, port, env)
    try:
        h = _wait_for_a_cycle(port, proc)
        assert h["scheduler"]["running"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    with store.session() as s:
        assert len(s.scalars(select(Run)).all()) >= len(runs)
        assert all(r.status == "done" for r in s.scalars(select(Run)))
