"""Secrets come only from the environment: ``NAME`` or a file named by ``NAME_FILE``."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def env_secret(name: str, *, required: bool = False) -> str | None:
    """Return the secret ``name`` from the environment, or from the file ``$NAME_FILE``.

    Raises ConfigError when both are set, when the file cannot be read, or when
    ``required`` and neither is set.
    """
    value = os.environ.get(name)
    file_name = os.environ.get(f"{name}_FILE")
    if value and file_name:
        raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
    if file_name:
        try:
            value = Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
    if required and not value:
        raise ConfigError(f"{name}: not set; export {name}=... or {name}_FILE=/path/to/secret")
    return value or None


def secret_is_set(name: str) -> bool:
    """Whether ``name`` or ``NAME_FILE`` is set (non-empty), without reading the file.

    For deciding whether to make a key of one's own (the demo site does); to use a
    secret, call :func:`env_secret`.
    """
    return bool(os.environ.get(name) or os.environ.get(f"{name}_FILE"))
