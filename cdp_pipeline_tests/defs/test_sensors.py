"""The delivery sensor over a real local folder: readiness across ticks, one partition and one run
per delivery, a run key that changes with the content, temporary upload names ignored."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest

from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.defs.sensor_ticks import DEMO_DELIVERIES, aged, evaluate_tick
from cdp_pipeline_tests.demo_home import prepare_demo_home


@pytest.fixture
def sensor_and_inbox(tmp_path, monkeypatch):
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=50)
    from cdp_pipeline.definitions import defs

    definitions = defs()
    yield definitions, definitions.resolve_sensor_def("demo_local_deliveries"), home / "demo" / "inbox"
    project_config.cache_clear()


EXPECTED = DEMO_DELIVERIES


def _tick(definitions, sensor, cursor, instance):
    return evaluate_tick(definitions, "demo_local", cursor, instance, EXPECTED)


_age_cursor = aged


def test_deliveries_become_partitions_and_runs_once_stable(sensor_and_inbox):
    definitions, sensor, inbox = sensor_and_inbox
    with dg.instance_for_test() as instance:
        first = _tick(definitions, sensor, None, instance)
        # First sighting: nothing is known to be complete yet.
        assert not first.run_requests
        second = _tick(definitions, sensor, _age_cursor(first.cursor, 10), instance)
        keys = [r.partition_key for r in second.run_requests]
        assert keys == sorted(keys, key=lambda k: keys.index(k))
        assert set(keys) == {"households:households_20260115.csv", "customers:profiles_20260115.csv", "orders:orders_20260115.csv"}
        assert second.dynamic_partitions_requests[0].partition_keys == sorted(keys)
        # Groups are requested before profiles (BlueConic's goal order).
        assert keys.index("households:households_20260115.csv") < keys.index("customers:profiles_20260115.csv")

        # A half-uploaded file under a temporary name is ignored; a changed root file gets a new run key.
        (inbox / "profiles_20260116.csv.part").write_text("customer_id,email\n")
        profiles = inbox / "profiles_20260115.csv"
        with profiles.open("a") as handle:
            handle.write("C9999999,late@example.com,,,,,,,,,,\n")
        os.utime(profiles, (1, 1))
        third = _tick(definitions, sensor, _age_cursor(second.cursor, 10), instance)
        assert not [r for r in third.run_requests if r.partition_key.startswith("customers")], "changed file must be stable first"
        fourth = _tick(definitions, sensor, _age_cursor(third.cursor, 10), instance)
        customer_runs = [r for r in fourth.run_requests if r.partition_key.startswith("customers")]
        assert len(customer_runs) == 1
        old_key = next(r.run_key for r in second.run_requests if r.partition_key.startswith("customers"))
        assert customer_runs[0].run_key != old_key
        assert all(".part" not in r.partition_key for r in fourth.run_requests)


def test_missing_linked_file_waits(sensor_and_inbox):
    definitions, sensor, inbox = sensor_and_inbox
    (inbox / "order_lines_20260115.csv").unlink()
    with dg.instance_for_test() as instance:
        first = _tick(definitions, sensor, None, instance)
        second = _tick(definitions, sensor, _age_cursor(first.cursor, 10), instance)
        assert "orders:orders_20260115.csv" not in [r.partition_key for r in second.run_requests]


def test_merged_deliveries_are_not_requested_again_even_without_run_keys(sensor_and_inbox):
    """A fresh Dagster instance (no run keys, no cursor) over an inbox whose files the ledger has:
    the sensor asks the ledger (published copy) and requests nothing."""
    from cdp_pipeline.cli import run_now

    definitions, sensor, _ = sensor_and_inbox
    assert run_now("demo_local", echo=lambda *_: None)["success"]
    with dg.instance_for_test() as instance:
        first = _tick(definitions, sensor, None, instance)
        second = _tick(definitions, sensor, _age_cursor(first.cursor, 10), instance)
        assert not first.run_requests and not second.run_requests
        assert "already merged" in (first.skip_message or "")  # known complete: no stability wait
        assert "already merged" in (second.skip_message or "")
        # Merged files are not carried in the cursor, which would otherwise grow with every file
        # ever delivered to a folder whose files stay (after_import: leave).
        assert json.loads(second.cursor)["seen"] == {}
