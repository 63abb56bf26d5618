"""The sensor's run and Run now on the same delivery at the same moment: one delivery is merged
once, the second finish of its remote files (``done_suffix``) does not fail, and both paths name
the delivery by the same run key.

The sensor's run is cut where the race happens in practice: it has fetched and staged the
delivery (``import_tables``) when Run now imports and finishes everything; then the sensor's run
goes on with its merge step."""

from __future__ import annotations

import csv
import shutil

import dagster as dg
import duckdb
import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.defs.sensor_ticks import DEMO_DELIVERIES, aged, evaluate_tick
from cdp_pipeline_tests.demo_home import prepare_demo_home

CUSTOMERS = "customers:profiles_20260115.csv"


@pytest.fixture
def done_suffix_demo(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["schedules"] = []
    for goal in demo["goals"]:
        if "files" in goal:
            goal["files"]["after_import"] = {"action": "done_suffix"}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=40)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    project_config.cache_clear()
    yield home
    project_config.cache_clear()


def test_sensor_run_and_run_now_on_one_delivery_merge_it_once(done_suffix_demo):
    home = done_suffix_demo
    inbox = home / "demo" / "inbox"
    with (inbox / "profiles_20260115.csv").open(newline="") as handle:
        customers = {row["customer_id"] for row in csv.DictReader(handle)}
    originals = sorted(path.name for path in inbox.iterdir())
    from cdp_pipeline.definitions import defs

    definitions = defs()
    key = dg.AssetKey
    with dg.instance_for_test() as instance:
        # The sensor sees the delivery complete and requests its run.
        first = evaluate_tick(definitions, "demo_local", None, instance, DEMO_DELIVERIES)
        second = evaluate_tick(definitions, "demo_local", aged(first.cursor, 3600), instance, DEMO_DELIVERIES)
        sensor_run_key = next(r.run_key for r in second.run_requests if r.partition_key == CUSTOMERS)
        # Its run fetches and stages the delivery...
        staging = [definitions.resolve_assets_def(key(["demo_local", step])) for step in ("fetched_files", "decrypted_files", "import_tables")]
        assert dg.materialize(staging, partition_key=CUSTOMERS, instance=instance).success

        # ...when Run now imports every delivery and finishes its files.
        run_now = definitions.resolve_job_def("demo_local_run_now").execute_in_process(instance=instance, raise_on_error=False)
        assert run_now.success
        by_partition = {
            e.materialization.partition: e.materialization.metadata for e in run_now.get_asset_materialization_events()
            if e.asset_key == key(["demo_local", "profile_store"])
        }
        assert set(by_partition) == set(DEMO_DELIVERIES)
        assert by_partition[CUSTOMERS]["status"].value == "merged"
        # The same run key the sensor requested: one name for one version of the delivery's files.
        assert by_partition[CUSTOMERS]["run_key"].value == sensor_run_key
        assert sorted(path.name for path in inbox.iterdir()) == sorted(f"{name}.done" for name in originals)

        # The sensor's run goes on: its merge finds the delivery in the ledger, its finish finds
        # the files finished already; neither fails, nothing is merged twice.
        merge = dg.materialize([definitions.resolve_assets_def(key(["demo_local", "profile_store"]))], partition_key=CUSTOMERS, instance=instance)
        assert merge.success
        [metadata] = [m.metadata for m in merge.asset_materializations_for_node("demo_local__profile_store")]
        assert metadata["status"].value == "skipped"
        assert sorted(path.name for path in inbox.iterdir()) == sorted(f"{name}.done" for name in originals)

        # And the sensor's next tick requests nothing: the files are finished.
        third = evaluate_tick(definitions, "demo_local", aged(second.cursor, 3600), instance, DEMO_DELIVERIES)
        assert not third.run_requests

    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT status, count(*) FROM deliveries WHERE goal = 'customers' GROUP BY status").fetchall() == [("merged", 1)]
        assert {row[0] for row in conn.execute("SELECT customer_number FROM profiles").fetchall()} == customers
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (len(customers),)
