"""The stateful property test of levels, approvals, replies and the outbox (see
``tests/warning/warning_machine.py``): a short run here; ``benchmarks/bench_warning_machine.py``
runs it for 10,000 steps and more."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

from tests.warning.warning_machine import WarningMachine

WarningMachine.TestCase.settings = settings(
    max_examples=6, stateful_step_count=25, deadline=None, derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure prints its whole run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestWarningMachine = WarningMachine.TestCase
