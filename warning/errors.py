"""The application's exception tree.

``FloodwarnError`` is what the CLI catches, prints without a traceback, and exits non-zero
on. ``models`` and ``alerts`` cannot import this package, so they raise their own
errors (``models.errors.ModelError``, ``alerts.errors.AlertsError`` and its
``DeliveryError``); the CLI treats those the same way (see ``USER_ERRORS``).
"""

from __future__ import annotations

from alerts.errors import AlertsError
from models.errors import ModelError


class FloodwarnError(Exception):
    """Base of every error floodwarn reports to a user."""


class ConfigError(FloodwarnError):
    """The configuration is invalid. ``problems`` lists each one as ``key.path: message``."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}{n} configuration problem{'s' if n != 1 else ''}:\n{lines}")


class IngestError(FloodwarnError):
    """An input file or feed could not be read; the message names the file and the problem."""


USER_ERRORS: tuple[type[Exception], ...] = (FloodwarnError, ModelError, AlertsError)
