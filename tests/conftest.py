"""Shared fixtures: the repository, ../shared beside it, and a demo config in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_CONFIG = REPO / "config" / "demo.toml"


def demo_config_text() -> str:
    """The demo config's TOML with its relative paths made absolute, to write elsewhere."""
    return DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/')


def shared_path(*parts: str) -> Path:
    """A file in ../shared, or skip the test with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: the shared data folder must sit beside the repository")
    return p


class Clock:
    """A clock the test sets by hand: ``clock.t = ...``; calling it returns ``t``."""

    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def demo_cfg(tmp_path):
    """The demo configuration with its outputs redirected to a temporary folder."""
    from warning.config import load_config

    cfg = load_config(DEMO_CONFIG)
    site = cfg.site.model_copy(update={"output_dir": tmp_path / "out"})
    return cfg.model_copy(update={"site": site})
