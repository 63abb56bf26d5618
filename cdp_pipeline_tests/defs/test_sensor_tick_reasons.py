"""A sensor tick that requests nothing says why, in its skip reason and its log (what the UI shows
under the tick): the files that wait and for what (stability, a missing linked file), and a
delivery whose version already failed in a run (Dagster drops a request under a used run key
without a word)."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.definitions.instigation_logger import get_instigation_log_records

from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.defs.sensor_ticks import DEMO_DELIVERIES, aged, evaluate_tick
from cdp_pipeline_tests.demo_home import prepare_demo_home


@pytest.fixture
def demo(tmp_path, monkeypatch):
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=30)
    from cdp_pipeline.definitions import defs

    yield defs(), home / "demo" / "inbox"
    project_config.cache_clear()


def logged_tick(definitions, cursor, instance):
    """One tick as ``evaluate_tick`` runs it, with the tick log captured where the daemon keeps it
    (the instance's compute logs, under the tick's log key) and read back as the UI reads it."""
    sensor = definitions.resolve_sensor_def("demo_local_deliveries")
    instance.add_dynamic_partitions("demo_local__deliveries", DEMO_DELIVERIES)
    with dg.build_sensor_context(
        cursor=cursor, instance=instance, resources=definitions.resources, definitions=definitions,
        instance_ref=instance.get_ref(), repository_name="__repository__", sensor_name=sensor.name,
    ) as context:
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            result = sensor.evaluate_tick(context)
    assert result.log_key, "the tick wrote nothing to its log"
    return result, [record["msg"] for record in get_instigation_log_records(instance, result.log_key)]


def test_a_first_sighting_names_each_file_waiting_for_stability(demo):
    definitions, _inbox = demo
    with dg.instance_for_test() as instance:
        first, lines = logged_tick(definitions, None, instance)
    assert not first.run_requests
    for name in ("households_20260115.csv", "profiles_20260115.csv", "orders_20260115.csv"):
        assert name in (first.skip_message or ""), first.skip_message
        assert any("waiting: " in line and name in line and "not complete yet" in line for line in lines), lines


def test_a_missing_linked_file_is_named(demo):
    definitions, inbox = demo
    (inbox / "order_lines_20260115.csv").unlink()
    for path in inbox.iterdir():
        if not path.name.startswith("orders"):
            path.unlink()
    with dg.instance_for_test() as instance:
        first = evaluate_tick(definitions, "demo_local", None, instance, DEMO_DELIVERIES)
        second, lines = logged_tick(definitions, aged(first.cursor, 3600), instance)
    assert not second.run_requests
    assert "orders_20260115.csv: waiting for its linked file 'order_lines'" in (second.skip_message or ""), second.skip_message
    assert any("waiting for its linked file 'order_lines'" in line for line in lines), lines


def test_a_version_that_failed_is_not_requested_again_and_the_tick_says_so(demo):
    definitions, inbox = demo
    for path in inbox.iterdir():
        if not path.name.startswith("households"):
            path.unlink()
    households = inbox / "households_20260115.csv"
    households.write_text("hh,name\nH1,x\n")  # no household_id column: the import fails
    with dg.instance_for_test() as instance:
        first = evaluate_tick(definitions, "demo_local", None, instance, DEMO_DELIVERIES)
        second = evaluate_tick(definitions, "demo_local", aged(first.cursor, 3600), instance, DEMO_DELIVERIES)
        [request] = second.run_requests
        # What the daemon does with the request: a run of the import job under its run key.
        job = definitions.resolve_job_def("demo_local_import")
        failed = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags={"dagster/run_key": request.run_key}, raise_on_error=False
        )
        assert not failed.success
        third, lines = logged_tick(definitions, aged(second.cursor, 3600), instance)
    assert not third.run_requests
    expected = f"households:households_20260115.csv: this version of its files failed in run {failed.run_id}"
    assert expected in (third.skip_message or ""), third.skip_message
    assert any(expected in line for line in lines), lines
