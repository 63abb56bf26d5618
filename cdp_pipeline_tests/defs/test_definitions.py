"""The code location loads the way `dagster dev` loads it, and the UI shows each connection's chain."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from cdp_pipeline.defs.project import project_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cdp_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CDP_CONFIG_DIR", raising=False)
    project_config.cache_clear()
    env = {**os.environ, "CDP_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    yield env
    project_config.cache_clear()


def test_definitions_validate_with_the_cli(cdp_env):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=cdp_env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_each_connection_has_its_chain_sensor_schedule_and_jobs(cdp_env):
    from cdp_pipeline.definitions import defs

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    chain = ["fetched_files", "decrypted_files", "import_tables", "profile_store"]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        parents = graph.get(dg.AssetKey(["demo_local", downstream])).parent_keys
        assert dg.AssetKey(["demo_local", upstream]) in parents
    export = graph.get(dg.AssetKey(["demo_local", "high_value_export_segment_export"]))
    assert dg.AssetKey(["demo_local", "profile_store"]) in export.parent_keys
    assert graph.get(dg.AssetKey(["demo_local", "profile_store"])).pools == {"duckdb_write"}
    sensor = definitions.resolve_sensor_def("demo_local_deliveries")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    schedule = definitions.resolve_schedule_def("demo_local_schedule_1")
    assert schedule.execution_timezone == "Europe/Amsterdam"
    assert definitions.resolve_job_def("demo_local_import").partitions_def is not None
    assert definitions.resolve_job_def("demo_local_export") is not None


def test_the_cli_builds_one_connections_jobs_as_the_code_location_does(cdp_env):
    """`cdp-pipeline run` and `reprocess` resolve their jobs from the connection's own definitions
    (no component registry, which imports every installed Dagster integration): the same jobs,
    ops, resources and tags as the code location's."""
    from cdp_pipeline.definitions import defs
    from cdp_pipeline.defs.connections import one_connection_definitions

    everything, one = defs(), one_connection_definitions("demo_local")
    for name in ("demo_local_run_now", "demo_local_import", "demo_local_export", "demo_local_store_checks"):
        full_job, own_job = everything.resolve_job_def(name), one.resolve_job_def(name)
        assert sorted(own_job.graph.node_dict) == sorted(full_job.graph.node_dict), name
        assert own_job.tags == full_job.tags, name
        assert set(own_job.resource_defs) == set(full_job.resource_defs), name
        for key in own_job.resource_defs:
            assert type(own_job.resource_defs[key]) is type(full_job.resource_defs[key]), (name, key)
    probe = (
        "import sys; from cdp_pipeline.defs.connections import one_connection_definitions; "
        "one_connection_definitions('demo_local').resolve_job_def('demo_local_run_now'); "
        "print(sorted(m for m in sys.modules if m.startswith('dagster_aws')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=cdp_env, capture_output=True, text=True, timeout=180)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_webserver_serves_the_demo_assets_over_graphql(cdp_env):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=cdp_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    query = json.dumps({"query": "{ assetNodes { assetKey { path } groupName } }"}).encode()
    try:
        deadline = time.monotonic() + 120
        payload = None
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    payload = json.loads(response.read())
                if payload.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert payload is not None, "the webserver did not answer"
        keys = {tuple(node["assetKey"]["path"]) for node in payload["data"]["assetNodes"]}
        steps = ("fetched_files", "decrypted_files", "import_tables", "profile_store", "high_value_export_segment_export", "high_value_export_timeline_export")
        for step in steps:
            assert ("demo_local", step) in keys
        assert {node["groupName"] for node in payload["data"]["assetNodes"]} == {"demo_local"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_instance_settings_queue_store_writers_and_rerun_crashed_runs(tmp_path, monkeypatch):
    """The repository's dagster.yaml, as the daemon reads it: one store writer at a time, and a run
    whose worker died is launched again (a failed step is not: it would fail the same way)."""
    import shutil

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    # from_config, not DagsterInstance.get(): get() registers the instance process-wide, and
    # disposing it would leave later tests' definitions pointing at a dead instance.
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        # Slots of ended runs (a worker killed with kill -9 is marked failed by the code server)
        # are freed by the daemon, so a dead run cannot block the pool for good.
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
