"""``<connection>_run_now``: the UI's "Run now" imports what just arrived, in goal order, then exports;
a second launch imports nothing again, and the sensor's ledger sees what it merged."""

from __future__ import annotations

import csv
import shutil

import dagster as dg
import duckdb
import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.demo.generate import generate_delivery
from cdp_pipeline_tests.defs.sensor_ticks import DEMO_DELIVERIES


@pytest.fixture(autouse=True)
def _fresh_config_cache():
    yield
    project_config.cache_clear()


@pytest.fixture
def demo_home(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["schedules"] = []
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    project_config.cache_clear()
    return tmp_path / "home"


def _launch(instance, **config):
    from cdp_pipeline.definitions import defs

    job = defs().resolve_job_def("demo_local_run_now")
    run_config = {"ops": {"demo_local__run_now": {"config": config}}} if config else None
    return job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


def _materialized(result, step: str) -> list[str | None]:
    return [e.materialization.partition for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == step]


def test_run_now_imports_a_new_delivery_in_goal_order_then_exports_and_never_twice(demo_home, tmp_path):
    inbox = demo_home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    # Just arrived: no sensor tick has seen these files (their mtime is now, not yet "stable").
    for path in generate_delivery(tmp_path / "drop", profiles=30, seed=7, date="20260115").values():
        shutil.copy(path, inbox / path.name)
    with (tmp_path / "drop" / "profiles_20260115.csv").open(newline="") as handle:
        customers = {row["customer_id"] for row in csv.DictReader(handle)}
    with (tmp_path / "drop" / "households_20260115.csv").open(newline="") as handle:
        households = {row["household_id"] for row in csv.DictReader(handle)}
    with dg.instance_for_test() as instance:
        first = _launch(instance)
        assert first.success
        # groups, then profiles, then the orders that need those profiles; the export last.
        assert _materialized(first, "profile_store") == DEMO_DELIVERIES
        steps = [e.asset_key.path[-1] for e in first.get_asset_materialization_events()]
        assert steps[-2:] == ["high_value_export_segment_export", "high_value_export_timeline_export"]
        assert set(instance.get_dynamic_partitions("demo_local__deliveries")) == set(DEMO_DELIVERIES)
        with duckdb.connect(str(demo_home / "store_published.duckdb"), read_only=True) as conn:
            profiles = {row[0] for row in conn.execute("SELECT customer_number FROM profiles").fetchall()}
            groups = conn.execute("SELECT count(*) FROM groups").fetchone()[0]
            ledger = conn.execute("SELECT count(*) FROM deliveries WHERE connection = 'demo_local'").fetchone()[0]
        assert profiles == customers
        assert groups == len(households)
        assert ledger == 3

        second = _launch(instance)
        assert second.success
        assert _materialized(second, "profile_store") == []
        with duckdb.connect(str(demo_home / "store_published.duckdb"), read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM deliveries WHERE connection = 'demo_local'").fetchone()[0] == 3

    # What the sensor reads: every delivery is in the ledger it consults, none would be requested.
    from cdp_pipeline import importing
    from cdp_pipeline.defs.resources import transport_resource
    from cdp_pipeline.deliveries import MergedFiles
    from cdp_pipeline.store.ledger import merged_file_identities

    project = project_config()
    connection = project.connections["demo_local"]
    merged = MergedFiles.of(merged_file_identities(project.published_store_path, "demo_local"))
    with transport_resource(connection.source, project.home).process_config_and_initialize().open() as transport:
        found = importing.discover_deliveries(project, connection, transport, merged=merged)
    assert found.requests == []
    assert sorted(found.already_merged) == sorted(DEMO_DELIVERIES)


def test_run_now_goal_filter_runs_only_the_named_goals(demo_home, tmp_path):
    inbox = demo_home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    for path in generate_delivery(tmp_path / "drop", profiles=10, seed=8, date="20260115").values():
        shutil.copy(path, inbox / path.name)
    with dg.instance_for_test() as instance:
        result = _launch(instance, goals=["customers"])
        assert result.success
        assert _materialized(result, "profile_store") == ["customers:profiles_20260115.csv"]
        assert not [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1].endswith("_export")]
        wrong = _launch(instance, goals=["no_such_goal"])
        assert not wrong.success


CHECKS = ("unique_profile_ids", "events_have_profiles", "ledger_matches_store", "rejects_within_bounds")


def _store_figures(path) -> tuple:
    """What a reader of ``path`` sees: profiles, ledger rows, run history rows (plain SQL)."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("profiles", "deliveries", "runs"))


def test_run_now_records_the_store_checks_itself_and_publishes_the_copy_once(demo_home, tmp_path, monkeypatch):
    from cdp_pipeline import connection_run
    from cdp_pipeline.definitions import defs

    publishes = []
    real_publish = connection_run.publish_copy

    def counted(conn, target):
        publishes.append(target)
        return real_publish(conn, target)

    monkeypatch.setattr(connection_run, "publish_copy", counted)
    inbox = demo_home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    for path in generate_delivery(tmp_path / "drop", profiles=25, seed=5, date="20260115").values():
        shutil.copy(path, inbox / path.name)
    profile_store = dg.AssetKey(["demo_local", "profile_store"])
    with dg.instance_for_test() as instance:
        first = _launch(instance)
        assert first.success
        assert len(_materialized(first, "profile_store")) == 3
        # Three merges and an export, one copy: taken after the run's last row was written.
        assert publishes == [demo_home / "store_published.duckdb"]
        live = _store_figures(demo_home / "store.duckdb")
        assert live[1:] == (3, 4)  # three deliveries, three import rows and the export's
        assert _store_figures(demo_home / "store_published.duckdb") == live

        # The four checks were evaluated in the Run now itself, and are where the UI reads a
        # check's executions: on profile_store's checks, from this run.
        assert {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()} == dict.fromkeys(CHECKS, True)
        for name in CHECKS:
            history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(profile_store, name), limit=5)
            assert [(record.run_id, record.status.value) for record in history] == [(first.run_id, "SUCCEEDED")]
        with duckdb.connect(str(demo_home / "store.duckdb"), read_only=True) as conn:
            duplicates = conn.execute("SELECT count(*) - count(DISTINCT profile_id) FROM profiles").fetchone()[0]
        evaluation = next(e for e in first.get_asset_check_evaluations() if e.asset_check_key.name == "unique_profile_ids")
        assert evaluation.metadata["duplicate_ids"].value == duplicates == 0
        assert evaluation.metadata["profiles"].value == live[0]

        # The daemon's sensor does not run them a second time after this run.
        definitions = defs()
        sensor = definitions.resolve_sensor_def("demo_local_store_checks_after_merge")
        event = instance.get_records_for_run(run_id=first.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0].event_log_entry.dagster_event
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=instance.get_run_by_id(first.run_id)
        )
        assert isinstance(sensor(context), dg.SkipReason)
        assert [run.job_name for run in instance.get_runs()] == ["demo_local_run_now"]

        # A run that merges nothing evaluates no check.
        publishes.clear()
        second = _launch(instance)
        assert second.success
        assert second.get_asset_check_evaluations() == []
        assert publishes == [demo_home / "store_published.duckdb"]  # its export's history row is in the copy
        assert _store_figures(demo_home / "store_published.duckdb") == _store_figures(demo_home / "store.duckdb")


def test_a_run_that_fails_after_its_merges_still_publishes_what_it_committed(demo_home, tmp_path, monkeypatch):
    inbox = demo_home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    for path in generate_delivery(tmp_path / "drop", profiles=15, seed=6, date="20260115").values():
        shutil.copy(path, inbox / path.name)
    # The export's target folder cannot be made (a file is in its place): the export fails after the merges.
    (demo_home / "demo" / "outbox").write_text("not a folder")
    with dg.instance_for_test() as instance:
        result = _launch(instance)
        assert not result.success
        assert len(_materialized(result, "profile_store")) == 3
    live = _store_figures(demo_home / "store.duckdb")
    assert live[1:] == (3, 4)  # the three merges and the export's FAILURE row
    assert _store_figures(demo_home / "store_published.duckdb") == live
    with duckdb.connect(str(demo_home / "store_published.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT status FROM runs WHERE kind = 'export'").fetchall() == [("FAILURE",)]
