"""Nothing waits forever on the duckdb_write pool: real `cdp-pipeline run` processes, one killed
with SIGKILL while it holds the pool, one stopped with SIGTERM while it waits for the pool.

An analyst's read-write DuckDB session holds the store's file lock, so the first run claims the
pool's one slot and then waits in its merge step: a deterministic moment to kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cdp_pipeline_tests.demo_home import prepare_demo_home

ANALYST = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(600)"


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "CDP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env.pop("CDP_CONFIG_DIR", None)
    return env


def _cli_run(home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", "demo_local"],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _slot_holders(dagster_home: Path) -> tuple[set[str], set[str]]:
    """(runs holding a duckdb_write slot, runs waiting for one), read from the instance."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        info = instance.event_log_storage.get_concurrency_info("duckdb_write")
        return {slot.run_id for slot in info.claimed_slots}, {step.run_id for step in info.pending_steps if not step.assigned_timestamp}


def _wait_for(predicate, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def locked_store(tmp_path, monkeypatch):
    home = prepare_demo_home(tmp_path / "home", monkeypatch)
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, str(home / "store.duckdb")], stdout=subprocess.PIPE, text=True)
    assert analyst.stdout is not None and analyst.stdout.readline().strip() == "locked"
    processes = [analyst]
    yield home, analyst, processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_killed_run_does_not_keep_the_pool_and_the_next_run_completes(locked_store):
    home, analyst, processes = locked_store
    dagster_home = home / "dagster_home"
    first = _cli_run(home)
    processes.append(first)
    [holder] = _wait_for(lambda: _slot_holders(dagster_home)[0], "the first run to claim the duckdb_write slot")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert _slot_holders(dagster_home)[0] == {holder}  # the dead run's claim stays behind
    analyst.kill()
    analyst.wait(timeout=30)

    second = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", "demo_local"],
        env=_env(home), capture_output=True, text=True, timeout=400,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"released the duckdb_write claim of run {holder}: its process {first.pid} is gone" in second.stdout
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        dead = instance.get_run_by_id(holder)
        assert dead is not None and dead.status == dg.DagsterRunStatus.FAILURE
    assert _slot_holders(dagster_home) == (set(), set())
    # Every delivery of the demo inbox merged exactly once (plain SQL over the ledger).
    expected = {path.name for path in (home / "demo" / "inbox").glob("*.csv") if not path.name.startswith("order_lines")}
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        merged = [Path(root).name for (root,) in conn.execute("SELECT root_file FROM deliveries WHERE status = 'merged'").fetchall()]
    assert sorted(merged) == sorted(expected)


def test_a_run_waiting_for_the_pool_stops_on_sigterm(locked_store):
    home, _analyst, processes = locked_store
    dagster_home = home / "dagster_home"
    holder_process = _cli_run(home)
    processes.append(holder_process)
    [holder] = _wait_for(lambda: _slot_holders(dagster_home)[0], "the first run to claim the duckdb_write slot")
    waiter = _cli_run(home)
    processes.append(waiter)
    [waiting] = _wait_for(lambda: _slot_holders(dagster_home)[1] - {holder}, "the second run to wait for the slot")
    waiter.send_signal(signal.SIGTERM)
    stdout, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 143
    assert f"run {waiting} marked failed, its duckdb_write claim released" in stdout
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        stopped = instance.get_run_by_id(waiting)
        assert stopped is not None and stopped.status == dg.DagsterRunStatus.FAILURE
    assert _slot_holders(dagster_home) == ({holder}, set())
