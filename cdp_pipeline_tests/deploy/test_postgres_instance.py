"""The production deployment, run for real on this host: a PostgreSQL server holds Dagster's
instance; the code location is served over gRPC by its own process; the daemon and the webserver
are separate processes loading it from there (deploy/dagster.yaml, deploy/workspace.yaml).

A delivery dropped into a local connection's folder is picked up by the daemon's sensor and
imported by a run under the multiprocess executor; after the daemon and the webserver are
restarted, the run history and the sensor's cursor are still there, and a second delivery is
imported once."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import psycopg2
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.demo.generate import generate_delivery
from cdp_pipeline_tests.fixtures.postgres_server import PostgresServer
from cdp_pipeline_tests.fixtures.sshd import free_port

REPO = Path(__file__).resolve().parents[2]
SENSOR = "demo_local_deliveries"
IMPORT_JOB = "demo_local_import"


def _customer_numbers_in_file(path: Path) -> set[str]:
    with path.open(newline="") as handle:
        return {row["customer_id"].strip() for row in csv.DictReader(handle) if row["customer_id"].strip()}


def _customer_numbers_in_store(published: Path) -> set[str]:
    # The analysts' copy, never the live file: a reader on the live file would block the merge.
    if not published.exists():
        return set()
    try:
        with duckdb.connect(str(published), read_only=True) as conn:
            return {row[0] for row in conn.execute("SELECT customer_number FROM profiles").fetchall()}
    except duckdb.Error:
        return set()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        _stop(process)


def _wait_for(what: str, ready, logs: list[Path], timeout: float = 480, every: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(every)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _grpc_serving(env: dict[str, str], port: int) -> bool:
    check = subprocess.run(
        [sys.executable, "-m", "dagster", "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)],
        env=env, capture_output=True, timeout=60,
    )
    return check.returncode == 0


def _graphql(port: int, query: str) -> dict | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]
    except (OSError, ValueError, KeyError):
        return None


RUNS_QUERY = '{ runsOrError { ... on Runs { results { runId jobName status } } } }'


def _sensor_cursor(instance: dg.DagsterInstance) -> str | None:
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == SENSOR]
    return states[0].instigator_data.cursor if states and states[0].instigator_data else None


def _first_seen(cursor: str | None, name: str) -> float | None:
    """When the sensor first saw the file ``name`` unchanged, as its cursor holds it."""
    seen = json.loads(cursor or "{}").get("seen", {})
    return next((entry[1] for path, entry in seen.items() if path.endswith(name)), None)


def _import_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=IMPORT_JOB)))


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["sensor"] = {"minimum_interval_seconds": 5}
    demo["goals"] = [g for g in demo["goals"] if g["name"] == "customers"]
    # Long enough that a file seen once is still waiting in the sensor's cursor when the daemon stops.
    demo["goals"][0]["files"]["readiness"] = {"mode": "stable", "stable_seconds": 30}
    demo["schedules"] = []
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    return config


# Under the multiprocess executor each step is a process that loads the code location first (about
# 20 s per step on a loaded 2-core host), and the store checks run queues between the two imports.
@pytest.mark.timeout(1500)
def test_daemon_on_postgres_imports_under_multiprocess_and_keeps_history_across_restarts(tmp_path, monkeypatch, postgres_server: PostgresServer):
    database = postgres_server.create_database()
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    inbox = home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    grpc_port, web_port = free_port(), free_port()
    deployment = {
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_HOST": postgres_server.host,
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USERNAME": postgres_server.user,
        # The throwaway cluster trusts local connections; the setting is still required.
        "DAGSTER_PG_PASSWORD": "not-checked",
        "CDP_CODE_SERVER_HOST": "127.0.0.1",
        "CDP_CODE_SERVER_PORT": str(grpc_port),
        "CDP_CONFIG_DIR": str(_config(tmp_path)),
        "CDP_HOME": str(home),
        "CDP_EXECUTOR": "multiprocess",
    }
    env = {**os.environ, **deployment, "PYTHONPATH": str(REPO)}
    for name, value in deployment.items():
        monkeypatch.setenv(name, value)
    logs = {name: tmp_path / f"{name}.log" for name in ("code_server", "daemon", "webserver")}
    code_server_cmd = [sys.executable, "-m", "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port),
                       "-m", "cdp_pipeline.definitions", "--location-name", "cdp_pipeline"]
    daemon_cmd = [sys.executable, "-m", "dagster._daemon", "run", "-w", "deploy/workspace.yaml"]
    webserver_cmd = [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(web_port), "-w", "deploy/workspace.yaml"]
    first = generate_delivery(tmp_path / "drop1", profiles=40, seed=3, date="20260301")["profiles"]
    second = generate_delivery(tmp_path / "drop2", profiles=60, seed=4, date="20260302")["profiles"]
    expected_first = _customer_numbers_in_file(first)
    expected_both = expected_first | _customer_numbers_in_file(second)
    assert expected_first < expected_both, "the second delivery adds no customer; the test would prove nothing"
    published = home / "store_published.duckdb"

    with _process(code_server_cmd, env, logs["code_server"]):
        _wait_for("the code server", lambda: _grpc_serving(env, grpc_port), list(logs.values()), every=3)
        instance = dg.DagsterInstance.get()
        try:
            # The instance is PostgreSQL's: nothing falls back to SQLite files under DAGSTER_HOME.
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"

            with _process(daemon_cmd, env, logs["daemon"]), _process(webserver_cmd, env, logs["webserver"]):
                shutil.copy(first, inbox / first.name)
                _wait_for("the first delivery in the store", lambda: _customer_numbers_in_store(published) == expected_first, list(logs.values()), every=3)
                _wait_for("the webserver", lambda: _graphql(web_port, RUNS_QUERY), list(logs.values()))
                # The second delivery arrives; the daemon stops while it waits to be seen stable.
                shutil.copy(second, inbox / second.name)
                _wait_for("the sensor to see the second delivery", lambda: _first_seen(_sensor_cursor(instance), second.name), list(logs.values()), every=1)

            [run] = _import_runs(instance)
            assert run.status == dg.DagsterRunStatus.SUCCESS
            # Each step ran in a process of its own: the multiprocess executor started a worker per step.
            workers = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED).records
            assert {record.event_log_entry.step_key for record in workers} == {
                f"demo_local__{step}" for step in ("fetched_files", "decrypted_files", "import_tables", "profile_store")
            }
            # Read from PostgreSQL itself, not through Dagster: the run is stored there.
            with psycopg2.connect(host=postgres_server.host, port=postgres_server.port, user=postgres_server.user, dbname=database) as pg:
                with pg.cursor() as sql:
                    sql.execute("SELECT run_id, status FROM runs WHERE pipeline_name = %s", (IMPORT_JOB,))
                    assert sql.fetchall() == [(run.run_id, "SUCCESS")]
            assert not list(dagster_home.rglob("*.db")), "an SQLite file appeared under DAGSTER_HOME"
            assert _customer_numbers_in_store(published) == expected_first, "the second delivery was imported before it was stable"
            first_seen = _first_seen(_sensor_cursor(instance), second.name)

            # Restarted daemon and webserver: the history and the cursor are read back from PostgreSQL.
            restarted_at = time.time()
            with _process(daemon_cmd, env, logs["daemon"]), _process(webserver_cmd, env, logs["webserver"]):
                runs = _wait_for("the restarted webserver", lambda: _graphql(web_port, RUNS_QUERY), list(logs.values()))
                listed = {(r["runId"], r["status"]) for r in runs["runsOrError"]["results"] if r["jobName"] == IMPORT_JOB}
                assert listed == {(run.run_id, "SUCCESS")}
                _wait_for("the second delivery in the store", lambda: _customer_numbers_in_store(published) == expected_both, list(logs.values()), every=3)
                # Give the sensor a few more ticks: the first delivery must not be requested again.
                time.sleep(15)
            import_runs = _import_runs(instance)
            assert len(import_runs) == 2, [r.tags.get("dagster/partition") for r in import_runs]
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in import_runs)
            # The restarted daemon's first tick carried on from the stored cursor: it either requested
            # the second delivery at once (a file first seen by that tick could not be stable yet, it
            # needs two listings 30 s apart) or still counts its stability from before the restart.
            [state] = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == SENSOR]
            ticks = sorted(instance.get_ticks(state.instigator_origin_id, state.selector_id, after=restarted_at), key=lambda tick: tick.timestamp)
            assert ticks, "the restarted daemon evaluated no tick of the sensor"
            assert ticks[0].run_ids or _first_seen(ticks[0].cursor, second.name) == first_seen, ticks[0]
        finally:
            instance.dispose()
