"""A throw-away CDP_HOME with the demo delivery, for tests that run the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp_pipeline.defs.project import project_config
from cdp_pipeline.demo.generate import generate_delivery

DEMO_PROFILES = 300


def prepare_demo_home(home: Path, monkeypatch: pytest.MonkeyPatch, profiles: int = DEMO_PROFILES) -> Path:
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    monkeypatch.delenv("CDP_CONFIG_DIR", raising=False)
    (home / "dagster_home").mkdir(parents=True)
    (home / "demo" / "outbox").mkdir(parents=True)
    generate_delivery(home / "demo" / "inbox", profiles=profiles, seed=42, date="20260115")
    # The definitions cache the loaded configuration per process; each test gets its own home.
    project_config.cache_clear()
    return home
