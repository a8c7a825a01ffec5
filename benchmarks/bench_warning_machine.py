"""Run the stateful property test of levels, approvals, replies and the outbox for long.

The machine is ``tests/warning/warning_machine.py``: random cycles of rising and falling
observed stage and forecast flow over three zones, approvals, rejections and time-outs,
STOP/START texted to the signed webhook, and dispatchers killed part-way, all through the
real store, dispatcher and Twilio SDK against the tests' local Twilio-compatible server;
after every step it checks the published state, the public pages and every message
against an independent model. This script runs ``--examples`` random sequences of
``--steps`` steps each (10,000 steps and more), stops at the first violation (printing the
whole sequence), and prints what happened: steps checked, cycles, raises held, approvals,
rejections, time-outs, replies, dispatcher kills and what recovery did, messages
delivered.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_warning_machine.py [--examples 200] [--steps 50]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

from tests.warning.warning_machine import WarningMachine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=200, help="random sequences (default 200)")
    ap.add_argument("--steps", type=int, default=50, help="steps per sequence (default 50)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the zones' expected refusals are not news here
    WarningMachine.counts.clear()
    t0 = time.perf_counter()
    failure = None
    try:
        run_state_machine_as_test(WarningMachine, settings=settings(
            max_examples=args.examples, stateful_step_count=args.steps, deadline=None, database=None,
            derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    except AssertionError as exc:  # a violation: hypothesis printed the whole sequence
        import traceback

        traceback.print_exc()
        failure = exc
    seconds = time.perf_counter() - t0
    c = WarningMachine.counts
    print(f"\n{c['examples']} sequences, {c['steps_checked']} steps checked in {seconds:.0f} s "
          f"({seconds / max(c['steps_checked'], 1) * 1000:.0f} ms per step)")
    for key in sorted(c):
        if key not in ("examples", "steps_checked"):
            print(f"  {key:24s} {c[key]:>8d}")
    if failure is not None:
        print(f"\nVIOLATION: {failure}")
        sys.exit(1)
    print("\nno violation: no cycle or zone failed, every published chain could be continued, nothing "
          "held or rejected was public, and every message reached each resident exactly once")


if __name__ == "__main__":
    main()
