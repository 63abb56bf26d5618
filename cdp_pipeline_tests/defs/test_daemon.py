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


def _high_value_customers(drop: Path) -> set[str]:
    """The demo's high_value segment (lifetime_value >= 500, the sum of a customer's order totals),
    computed from the delivered files with plain Python: orders of unknown customers create no
    profile (allow_new_profiles: false), so only customers of the profiles file count."""
    import csv
    from collections import defaultdict

    with next(drop.glob("profiles_*.csv")).open(newline="") as handle:
        customers = {row["customer_id"].strip() for row in csv.DictReader(handle)}
    totals: dict[str, float] = defaultdict(float)
    with next(drop.glob("orders_*.csv")).open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                totals[row["customer_id"].strip()] += float(row["total"])
            except ValueError:
                continue  # a total that is not a number is rejected by the import, not summed
    return {customer for customer, total in totals.items() if customer in customers and total >= 500}


def test_scheduled_tick_exports_the_deliveries_imported_in_that_tick(tmp_path):
    """Goal order under the daemon: files dropped before a tick are imported by that tick's run
    (groups, then customers, then orders) and its export holds their rows, not a header only."""
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    # No sensor: only the schedule may import, so the export can only hold what its tick imported.
    demo["sensor"] = {"enabled": False}
    demo["schedules"] = [{"every_minutes": 1, "timezone": "UTC"}]
    for goal in demo["goals"]:
        if "files" in goal:
            goal["files"]["readiness"] = {"mode": "stable", "stable_seconds": 1}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    inbox = home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    drop = tmp_path / "drop"
    generated = generate_delivery(drop, profiles=60, seed=5, date="20260301")
    for path in generated.values():
        shutil.copy(path, inbox / path.name)
        os.utime(inbox / path.name, (time.time() - 120, time.time() - 120))
    expected = _high_value_customers(drop)
    assert expected, "the generated delivery has no high-value customer; the test would prove nothing"
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "CDP_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=(tmp_path / "daemon.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    outbox = home / "demo" / "outbox" / "segments"
    try:
        deadline = time.monotonic() + 240
        exported: list[Path] = []
        while time.monotonic() < deadline and not exported:
            time.sleep(3)
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-4000:]
            exported = sorted(outbox.glob("high_value_*.csv")) if outbox.is_dir() else []
        assert exported, (tmp_path / "daemon.log").read_text()[-4000:]
        # The first export file written is the first tick's: it must hold the tick's imports.
        import csv

        with exported[0].open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert {row["customer_number"] for row in rows} == expected
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
