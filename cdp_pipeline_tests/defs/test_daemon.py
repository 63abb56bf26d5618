"""Runs by itself: the Dagster daemon, started against a temporary DAGSTER_HOME for a bounded time,
sees a delivery dropped into the inbox and imports it with nobody launching anything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.demo.generate import generate_delivery

REPO = Path(__file__).resolve().parents[2]


def _profiles_in_published_copy(path: Path) -> int:
    # Read the analysts' copy, never the live file: a reader on the live file would block the run.
    if not path.exists():
        return 0
    try:
        with duckdb.connect(str(path), read_only=True) as conn:
            return conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
    except duckdb.Error:
        return 0


def test_daemon_imports_a_dropped_delivery_unattended(tmp_path):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["sensor"] = {"minimum_interval_seconds": 5}
    demo["goals"] = [g for g in demo["goals"] if g["name"] == "customers"]
    demo["goals"][0]["files"]["readiness"] = {"mode": "stable", "stable_seconds": 1}
    demo["schedules"] = []
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    inbox = home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "CDP_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=(tmp_path / "daemon.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        time.sleep(3)
        # The delivery arrives while the daemon runs; nobody launches anything.
        generated = generate_delivery(tmp_path / "drop", profiles=40, seed=3, date="20260301")
        shutil.copy(generated["profiles"], inbox / generated["profiles"].name)
        deadline = time.monotonic() + 240
        count = 0
        while time.monotonic() < deadline and count < 40:
            time.sleep(3)
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-4000:]
            count = _profiles_in_published_copy(home / "store_published.duckdb")
        assert count == 40, (tmp_path / "daemon.log").read_text()[-4000:]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
