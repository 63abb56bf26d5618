"""The UI tells the truth about the store checks: a failed import records no check evaluation
(none ran), and a run that merged a delivery is followed by a run of the checks that pass."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.demo.generate import generate_delivery

CHECKS = {"unique_profile_ids", "events_have_profiles", "ledger_matches_store", "rejects_within_bounds"}


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
    inbox = tmp_path / "home" / "demo" / "inbox"
    inbox.mkdir(parents=True)
    return inbox


def _drop_households_and_profiles(inbox, tmp_path) -> None:
    for path in generate_delivery(tmp_path / "drop", profiles=20, seed=9, date="20260115").values():
        if path.name.startswith(("households", "profiles")):
            shutil.copy(path, inbox / path.name)


def _import(definitions, instance, key: str):
    instance.add_dynamic_partitions("demo_local__deliveries", [key])
    return definitions.resolve_job_def("demo_local_import").execute_in_process(instance=instance, partition_key=key, raise_on_error=False)


def _check_events(instance, run_id: str) -> list:
    return [
        record
        for kind in (dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for record in instance.get_records_for_run(run_id=run_id, of_type=kind).records
    ]


def _after_merge(definitions, instance, run_id: str):
    sensor = definitions.resolve_sensor_def("demo_local_store_checks_after_merge")
    run = instance.get_run_by_id(run_id)
    event = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0].event_log_entry.dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    )
    return sensor(context)


def test_a_failed_import_records_no_check_evaluation_and_a_merge_is_followed_by_passing_checks(demo_home, tmp_path):
    from cdp_pipeline.definitions import defs

    # Without its required email column the customers delivery fails before the merge.
    (demo_home / "profiles_20260116.csv").write_text("customer_id,first_name\nC0000001,Ann\n")
    _drop_households_and_profiles(demo_home, tmp_path)
    definitions = defs()
    profile_store = dg.AssetKey(["demo_local", "profile_store"])
    with dg.instance_for_test() as instance:
        failed = _import(definitions, instance, "customers:profiles_20260116.csv")
        assert not failed.success
        assert _check_events(instance, failed.run_id) == []
        for name in CHECKS:
            assert instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(profile_store, name), limit=5) == []

        _import(definitions, instance, "households:households_20260115.csv")
        merged = _import(definitions, instance, "customers:profiles_20260115.csv")
        assert merged.success
        assert _check_events(instance, merged.run_id) == []  # the checks are not part of the import run
        request = _after_merge(definitions, instance, merged.run_id)
        assert isinstance(request, dg.RunRequest)
        checks = definitions.resolve_job_def("demo_local_store_checks").execute_in_process(instance=instance, raise_on_error=False)
        assert checks.success
        evaluations = {e.asset_check_key.name: e.passed for e in checks.get_asset_check_evaluations()}
        assert evaluations == dict.fromkeys(CHECKS, True)


def test_a_run_that_merged_nothing_requests_no_checks(demo_home):
    from cdp_pipeline.definitions import defs

    definitions = defs()
    with dg.instance_for_test() as instance:
        empty = definitions.resolve_job_def("demo_local_run_now").execute_in_process(instance=instance, raise_on_error=False)
        assert empty.success
        assert isinstance(_after_merge(definitions, instance, empty.run_id), dg.SkipReason)


def test_the_checks_share_one_step_and_one_chosen_from_the_ui_runs_alone(demo_home, tmp_path):
    """One store session for all four (a writer open costs a connect, the schema check and a
    checkpoint); a check launched alone evaluates alone, and a broken invariant fails its check."""
    import duckdb

    from cdp_pipeline.definitions import defs

    _drop_households_and_profiles(demo_home, tmp_path)
    definitions = defs()
    profile_store = dg.AssetKey(["demo_local", "profile_store"])
    with dg.instance_for_test() as instance:
        _import(definitions, instance, "households:households_20260115.csv")
        assert _import(definitions, instance, "customers:profiles_20260115.csv").success
        job = definitions.resolve_job_def("demo_local_store_checks")
        every = job.execute_in_process(instance=instance, raise_on_error=False)
        assert len(every.get_step_success_events()) == 1
        assert {e.asset_check_key.name for e in every.get_asset_check_evaluations()} == CHECKS

        # Break one invariant behind the project's back: a second row for an existing profile id.
        with duckdb.connect(str(project_config().store_location)) as conn:
            conn.execute("CREATE TEMP TABLE twin AS SELECT * FROM profiles LIMIT 1")
            conn.execute("INSERT INTO profiles SELECT * FROM twin")
        one = job.get_subset(asset_check_selection={dg.AssetCheckKey(profile_store, "unique_profile_ids")})
        alone = one.execute_in_process(instance=instance, raise_on_error=False)
        assert {e.asset_check_key.name: e.passed for e in alone.get_asset_check_evaluations()} == {"unique_profile_ids": False}
