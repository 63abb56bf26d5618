"""The whole graph on the demo data, through the same Dagster jobs the sensor and schedules run:
exact counts, chosen values, event rows, the exact bytes of both exports, and a second run over
the same files that changes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def demo_home(tmp_path, monkeypatch):
    home = prepare_demo_home(tmp_path / "home", monkeypatch)
    yield home
    project_config.cache_clear()


def _store_digest(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as conn:
        rows = conn.execute("SELECT * EXCLUDE (updated_at, last_run_id) FROM profiles ORDER BY profile_id").fetchall()
        events = conn.execute("SELECT * EXCLUDE (imported_at) FROM timeline_order ORDER BY event_id").fetchall()
    return hashlib.sha256(repr((rows, events)).encode()).hexdigest()


def test_demo_connection_end_to_end(demo_home: Path):
    summary = run_now("demo_local", echo=lambda *_: None)
    assert summary["success"], summary
    by_goal = {item["delivery"].split(":")[0]: item for item in summary["imports"]}
    assert by_goal["households"]["groups_created"] == 100
    assert by_goal["customers"]["rows_read"] == 302  # 300 customers + 2 corrected duplicate rows
    assert by_goal["customers"]["profiles_created"] == 300
    assert by_goal["orders"]["events_created"] == 450
    assert by_goal["orders"]["profiles_created"] == 0  # orders never create profiles (allow_new_profiles: false)

    store = demo_home / "store.duckdb"
    with duckdb.connect(str(store), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (300,)
        assert conn.execute("SELECT count(*) FROM timeline_order__order_line").fetchone() == (1200,)
        # sum rule: lifetime value equals the sum of the customer's order totals
        mismatches = conn.execute(
            """
            SELECT count(*) FROM profiles p
            LEFT JOIN (SELECT profile_id, sum(total) AS s, count(*) AS n FROM timeline_order GROUP BY 1) o USING (profile_id)
            WHERE p.lifetime_value IS DISTINCT FROM o.s OR p.order_count IS DISTINCT FROM o.n
            """
        ).fetchone()
        assert mismatches == (0,)
        # normalise_email processor: no upper case, no spaces, no known typo domains
        assert conn.execute(
            "SELECT count(*) FROM profiles WHERE email <> lower(trim(email)) OR email LIKE '%gmial.com' OR email LIKE '%hotmial.com'"
        ).fetchone() == (0,)
        # keys keep their leading zeros
        assert conn.execute("SELECT min(customer_number) FROM profiles").fetchone() == ("C0000001",)
        # group import + profile property linking them
        assert conn.execute(
            "SELECT count(*) FROM profiles p JOIN groups_household g ON g.group_id = p.household_id"
        ).fetchone()[0] == conn.execute("SELECT count(household_id) FROM profiles").fetchone()[0]
        (ledger,) = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'merged'").fetchone()
        assert ledger == 3

    outbox = demo_home / "demo" / "outbox"
    segment_files = sorted((outbox / "segments").glob("high_value_*.csv"))
    assert len(segment_files) == 1
    assert segment_files[0].read_bytes() == (GOLDEN / "high_value.csv").read_bytes()
    assert (outbox / "timeline" / "order.csv").read_bytes() == (GOLDEN / "order.csv").read_bytes()
    assert (outbox / "timeline" / "order_line.csv").read_bytes() == (GOLDEN / "order_line.csv").read_bytes()

    # The runs are in the persistent instance, so `dagster dev` on the same DAGSTER_HOME shows them.
    instance = dg.DagsterInstance.get()
    # One run of the Run now job (the three imports in goal order, then the export), as the UI's
    # Run now and the schedules launch it; it evaluates the store checks itself after the merges.
    runs = instance.get_runs()
    assert [run.job_name for run in runs] == ["demo_local_run_now"]
    records = instance.get_records_for_run(run_id=runs[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    evaluations = [record.event_log_entry.dagster_event.asset_check_evaluation_data for record in records]
    checks = ("events_have_profiles", "ledger_matches_store", "rejects_within_bounds", "unique_profile_ids")
    assert sorted((evaluation.check_name, evaluation.passed) for evaluation in evaluations) == [(name, True) for name in checks]
    # Each delivery's materialisation is under its partition, as the sensor's runs record it.
    partitions = instance.get_materialized_partitions(dg.AssetKey(["demo_local", "profile_store"]))
    assert {key.split(":")[0] for key in partitions} == {"households", "customers", "orders"}
    # One plot per goal: the UI draws a plot per numeric metadata key, and each goal's counters
    # are under keys of their own, so no plot alternates between households, customers and orders.
    numeric_keys: dict[str, set[str]] = {}
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["demo_local", "profile_store"]), asset_partitions=[partition]), limit=1
        ).records
        materialization = records[0].asset_materialization
        assert materialization is not None
        numeric_keys[partition.split(":")[0]] = {
            key for key, value in materialization.metadata.items()
            if isinstance(value.value, (int, float)) and not isinstance(value.value, bool) and not key.startswith("segment_size/")
        }
    assert "households/groups_created" in numeric_keys["households"]
    assert "customers/profiles_created" in numeric_keys["customers"] and "orders/events_created" in numeric_keys["orders"]
    for goal, keys in numeric_keys.items():
        assert keys and all(key.startswith(f"{goal}/") for key in keys), (goal, keys)

    # Second run over the same files: every delivery is recognised in the ledger (not even fetched),
    # nothing changes, and the export (changed profiles only) has nobody to send.
    before = _store_digest(store)
    second = run_now("demo_local", echo=lambda *_: None)
    assert second["success"]
    assert second["imports"] == []
    assert sorted(second["already_merged"]) == sorted(item["delivery"] for item in summary["imports"])
    assert _store_digest(store) == before
    segment_export = next(e for e in second["exports"] if e["asset"].endswith("segment_export"))
    assert segment_export["profiles_exported"] == 0


def test_import_chain_with_dg_materialize(demo_home: Path):
    """The same four assets materialized directly for one delivery partition."""
    from cdp_pipeline.definitions import defs

    definitions = defs()
    chain = ["fetched_files", "decrypted_files", "import_tables", "profile_store"]
    assets = [definitions.resolve_assets_def(dg.AssetKey(["demo_local", step])) for step in chain]
    instance = dg.DagsterInstance.ephemeral()
    partition = "customers:profiles_20260115.csv"
    instance.add_dynamic_partitions("demo_local__deliveries", [partition])
    # The resolved assets carry their resources (transport, PGP keys, project) already bound.
    result = dg.materialize(assets, partition_key=partition, instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("demo_local__profile_store")[0].metadata
    assert metadata["customers/profiles_created"].value == 300
    assert metadata["status"].value == "merged"
    tables = result.asset_materializations_for_node("demo_local__import_tables")[0].metadata
    assert tables["customers/rows_read"].value == 302 and tables["customers/records"].value == 300
    assert "preview" not in tables  # no customer values in the event log unless store.ui_preview_rows opts in


@pytest.mark.parametrize("rows", [0, 5])
def test_preview_of_customer_rows_can_be_turned_off(tmp_path, monkeypatch, rows):
    """store.ui_preview_rows: 0 (the default) keeps customer values out of Dagster's event log;
    a number opts in to a markdown preview of that many rows."""
    import shutil

    from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR

    config = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, config)
    store_yaml = config / "store.yaml"
    store_yaml.write_text(store_yaml.read_text().replace("store:\n", f"store:\n  ui_preview_rows: {rows}\n", 1))
    prepare_demo_home(tmp_path / "home", monkeypatch, profiles=20)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    project_config.cache_clear()
    try:
        from cdp_pipeline.definitions import defs

        definitions = defs()
        steps = [definitions.resolve_assets_def(dg.AssetKey(["demo_local", step])) for step in ("fetched_files", "decrypted_files", "import_tables")]
        instance = dg.DagsterInstance.ephemeral()
        partition = "customers:profiles_20260115.csv"
        instance.add_dynamic_partitions("demo_local__deliveries", [partition])
        result = dg.materialize(steps, partition_key=partition, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("demo_local__import_tables")[0].metadata
        assert metadata["customers/records"].value == 20
        # The user's columns only: the identifier's property, then the mapped properties, as the
        # goal in the YAML names them; none of the pipeline's hand-over columns.
        goal = next(g for g in yaml.safe_load((config / "connections" / "demo_local.yaml").read_text())["goals"] if g["name"] == "customers")

        def assert_user_columns_only(preview: str) -> None:
            header = [cell.strip() for cell in preview.splitlines()[0].strip("|").split("|")]
            assert header[0] == goal["identifiers"][0]["property"]
            assert set(header[1:]) == {mapping["property"] for mapping in goal["mappings"]}, header
            assert not [column for column in header if column.startswith("_")]
            assert len(preview.splitlines()) == 2 + rows  # header, separator, rows

        if rows:
            assert_user_columns_only(metadata["preview"].value)
        else:
            assert "preview" not in metadata
        # Run now (the engine's path) shows the same preview on the delivery's profile_store.
        summary = run_now("demo_local", echo=lambda *_: None)
        assert summary["success"], summary
        customers = next(item for item in summary["imports"] if item["delivery"].startswith("customers"))
        if rows:
            assert_user_columns_only(customers["preview"])
        else:
            assert "preview" not in customers
    finally:
        project_config.cache_clear()
