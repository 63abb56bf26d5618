"""The shared store on DuckLake, with real parts: the catalog in a PostgreSQL server started for the
tests, the data files on the moto S3 server. What only a lake has: several writers at once, the
snapshot id of each delivery, analysts reading a consistent snapshot while a merge runs."""

from __future__ import annotations

import threading
from datetime import datetime

import duckdb
import polars as pl
import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.conflicts import is_conflict
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.lake import claim_write_turn
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.tables.staged import StagedImport
from cdp_pipeline_tests.fixtures.store_backends import StoreBackend
from cdp_pipeline_tests.scenarios.test_daily_deliveries import (
    CUSTOMERS_HEADER,
    ITEMS_HEADER,
    ORDERS_HEADER,
    SHOP_GOAL,
    Shop,
    csv_text,
    customer,
    items_of,
    order,
)

CATALOG = Catalog.model_validate({"profile_properties": {"name": {"type": "text"}, "tags": {"type": "list"}}})


def _staged(names: dict[str, str]) -> StagedImport:
    records = pl.DataFrame({"_key": list(names), "_line": list(range(2, 2 + len(names))), "name": list(names.values())})
    return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={"name": "set"}, records=records, rows_read=len(names))


def _record(n: int) -> DeliveryRecord:
    return DeliveryRecord(f"d{n}", "c", "g", f"g:f{n}", f"f{n}.csv", [], f"sha{n}", "cfg")


def test_each_delivery_records_its_snapshot_and_the_store_reads_as_of_it(lake_store: StoreBackend):
    with open_writer(lake_store.target, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged({"p1": "first", "p2": "x"}), _record(1), "r1", datetime(2026, 1, 1))
        merge_delivery(conn, CATALOG, _staged({"p1": "second"}), _record(2), "r2", datetime(2026, 1, 2))
        ledger = conn.execute("SELECT delivery_id, run_id, lake_snapshot_id FROM deliveries ORDER BY merged_at").fetchall()
        assert [row[:2] for row in ledger] == [("d1", "r1"), ("d2", "r2")]
        first, second = ledger[0][2], ledger[1][2]
        assert first is not None and second is not None and first < second
        # The snapshot a delivery names holds the store as that merge left it.
        assert conn.execute(f"SELECT name FROM profiles AT (VERSION => {first}) WHERE profile_id = 'p1'").fetchall() == [("first",)]
        assert conn.execute(f"SELECT name FROM profiles AT (VERSION => {second}) WHERE profile_id = 'p1'").fetchall() == [("second",)]
        messages = dict(conn.execute("SELECT snapshot_id, commit_message FROM lake.snapshots() WHERE author = 'cdp_pipeline'").fetchall())
        assert messages[first] == "merge of delivery d1" and messages[second] == "merge of delivery d2"
    # An analyst's own session, attached read-only, answers "as of run r1" from the ledger.
    analyst = duckdb.connect()
    lake_store.attach(analyst, "shared")
    (snapshot,) = analyst.execute("SELECT lake_snapshot_id FROM shared.deliveries WHERE run_id = 'r1'").fetchall()[0]
    assert analyst.execute(f"SELECT profile_id, name FROM shared.profiles AT (VERSION => {snapshot}) ORDER BY 1").fetchall() == [
        ("p1", "first"), ("p2", "x"),
    ]
    with pytest.raises(duckdb.Error):
        analyst.execute("DELETE FROM shared.profiles")  # read-only: an analyst cannot change the store
    analyst.close()


def test_two_merges_that_create_the_same_profile_cannot_both_commit(lake_store: StoreBackend):
    """Without the write turn both appends would commit and the profile would exist twice: DuckLake
    has no unique constraint to refuse the second."""
    with open_writer(lake_store.target, CATALOG) as first, open_writer(lake_store.target, CATALOG) as second:
        for conn in (first, second):
            conn.execute("BEGIN TRANSACTION")
            claim_write_turn(conn)
            conn.execute("INSERT INTO profiles (profile_id, created_at, updated_at, name) VALUES ('p9', now()::TIMESTAMP, now()::TIMESTAMP, 'n')")
        first.execute("COMMIT")
        with pytest.raises(duckdb.Error) as refused:
            second.execute("COMMIT")
        assert is_conflict(refused.value), str(refused.value)
        assert first.execute("SELECT count(*) FROM profiles WHERE profile_id = 'p9'").fetchall() == [(1,)]


def _shop_files(stamp: str, customers: list[tuple], orders: list[tuple], items: list[tuple]) -> dict[str, tuple[str, bytes]]:
    return {
        "customers": (f"in/customers_{stamp}.csv", csv_text(CUSTOMERS_HEADER, customers).encode()),
        "orders": (f"in/orders_{stamp}.csv", csv_text(ORDERS_HEADER, orders).encode()),
        "order_items": (f"in/order_items_{stamp}.csv", csv_text(ITEMS_HEADER, items).encode()),
    }


def test_two_workers_merging_different_deliveries_at_once_both_land_nothing_doubled(tmp_path, lake_store: StoreBackend):
    shop = Shop(tmp_path, [SHOP_GOAL], lake_store)
    connection = shop.project.connections["acme"]
    goal = importing.import_goal(connection, "shop")
    now = datetime(2026, 1, 15, 12, 0)
    # Customers 005..012 are in both deliveries: each must exist once, with the later value rules applied.
    days = [
        ("20260101", [customer(i) for i in range(1, 13)], [order(i, i) for i in range(1, 7)], [r for i in range(1, 7) for r in items_of(i, 2)]),
        ("20260102", [customer(i, name=f"Renamed {i}") for i in range(5, 21)], [order(i, i) for i in range(7, 15)],
         [r for i in range(7, 15) for r in items_of(i, 3)]),
    ]
    work_dirs = []
    for stamp, customers, orders, items in days:
        work_dir = shop.stage("shop", _shop_files(stamp, customers, orders, items))
        importing.stage_delivery(shop.project, connection, goal, work_dir, now)
        work_dirs.append(work_dir)
    start = threading.Barrier(2)
    outcomes: dict[int, importing.MergeOutcome] = {}
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait(timeout=60)
            outcomes[index] = importing.merge_staged(shop.project, connection, goal, work_dirs[index], f"run{index}", now)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not failures, failures
    assert {o.status for o in outcomes.values()} == {"merged"}
    # Which merge committed first is up to the race; the later one must have been applied on top of
    # the earlier one. The ledger's snapshot ids give the commit order the expectation follows.
    order_of = [row[0] for row in shop.store("SELECT run_id FROM deliveries ORDER BY lake_snapshot_id")]
    assert sorted(order_of) == ["run0", "run1"]
    for position, run in enumerate(order_of, start=1):
        _, customers, orders, items = days[int(run[-1])]
        shop.deliveries = position  # the expectation applies deliveries in commit order
        shop.accept(customers, orders, items)
    shop.assert_store_matches("two concurrent merges")
    assert shop.store("SELECT count(*), count(DISTINCT customer_number) FROM profiles") == [(20, 20)]
    assert shop.store("SELECT count(*) FROM deliveries WHERE lake_snapshot_id IS NOT NULL") == [(2,)]


def test_an_analyst_reads_one_consistent_snapshot_while_a_merge_runs(lake_store: StoreBackend):
    with open_writer(lake_store.target, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged({f"p{i}": "old" for i in range(10)}), _record(1), "r1", datetime(2026, 1, 1))
    analyst, newcomer = duckdb.connect(), duckdb.connect()
    lake_store.attach(analyst, "shared")
    lake_store.attach(newcomer, "shared")
    state = "SELECT count(*), count(*) FILTER (WHERE name = 'new'), (SELECT count(*) FROM shared.deliveries) FROM shared.profiles"
    seen_during_merge: list[tuple] = []

    def look(_conn: duckdb.DuckDBPyConnection, _staged: StagedImport) -> None:
        # The merge has written every profile (not yet its ledger row) and has not committed: an
        # analyst in a transaction and one starting a new query both see the store before it.
        seen_during_merge.extend(analyst.execute(state).fetchall())
        seen_during_merge.extend(newcomer.execute(state).fetchall())

    analyst.execute("BEGIN TRANSACTION")
    (before,) = analyst.execute("SELECT count(*) FROM shared.profiles").fetchall()
    with open_writer(lake_store.target, CATALOG) as conn:
        merge_delivery(
            conn, CATALOG, _staged({**{f"p{i}": "new" for i in range(10)}, **{f"q{i}": "new" for i in range(5)}}), _record(2), "r2",
            datetime(2026, 1, 2), after=look,
        )
    # Within its transaction the analyst keeps the snapshot it started on, also after the commit.
    assert seen_during_merge == [(10, 0, 1), (10, 0, 1)]
    assert before == (10,)
    assert analyst.execute("SELECT count(*), count(*) FILTER (WHERE name = 'new') FROM shared.profiles").fetchall() == [(10, 0)]
    analyst.execute("COMMIT")
    # A new transaction sees the merge whole: every profile and the ledger row together.
    assert analyst.execute(
        "SELECT count(*), count(*) FILTER (WHERE name = 'new'), (SELECT count(*) FROM shared.deliveries) FROM shared.profiles"
    ).fetchall() == [(15, 15, 2)]
    assert newcomer.execute(state).fetchall() == [(15, 15, 2)]
    analyst.close()
    newcomer.close()


def test_a_preview_compares_with_the_lake_not_with_a_missing_file(tmp_path, lake_store: StoreBackend):
    from cdp_pipeline.config.loading import ProjectConfig
    from cdp_pipeline.preview import _store_reader

    with open_writer(lake_store.target, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged({"p1": "a", "p2": "b"}), _record(1), "r1", datetime(2026, 1, 1))
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=lake_store.settings, catalog=CATALOG)
    with _store_reader(project) as (conn, compared_with):
        assert compared_with == "the DuckLake store (latest snapshot)"
        assert conn.execute("SELECT count(*) FROM store.profiles").fetchall() == [(2,)]


def test_run_history_is_read_from_the_lake_not_from_a_missing_file(tmp_path, lake_store: StoreBackend):
    from cdp_pipeline.config.loading import ProjectConfig
    from cdp_pipeline.run_history import read_history
    from cdp_pipeline.store.runs import record_run

    started = datetime(2026, 1, 2, 3, 4, 5)
    with open_writer(lake_store.target, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged({"p1": "a", "p2": "b"}), _record(1), "r1", started)
        record_run(
            conn, run_id="r1", connection="acme", kind="import", goal="customers", partition_key="customers:d1",
            started_at=started, ended_at=started, status="SUCCESS", counts={"rows_read": 2, "profiles_created": 2},
            last_profiles=[], error=None,
        )
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=lake_store.settings, catalog=CATALOG)
    assert not project.store_path.exists()
    [row] = read_history(project.read_location, "acme")
    assert (row.started_at, row.kind, row.goal, row.status, row.partition_key) == (started, "import", "customers", "SUCCESS", "customers:d1")
    assert row.counts == {"rows_read": 2, "profiles_created": 2}


def test_the_ledger_is_read_before_a_merge_from_the_lake_itself(tmp_path, lake_store: StoreBackend):
    """A lake has no published copy: what discovery skips before fetching, and which goals wrote a
    property, are read from the lake's latest snapshot (a file store reads them from its copy)."""
    from cdp_pipeline.config.loading import ProjectConfig
    from cdp_pipeline.store.ledger import merged_file_identities, stored_property_writers

    files = [{"remote_path": "in/f1.csv", "size": 120, "mtime": 1767225600.5}, {"remote_path": "in/f1.csv.done", "size": 0, "mtime": 1767225601.0}]
    with open_writer(lake_store.target, CATALOG) as conn:
        record = DeliveryRecord("d1", "c", "g", "g:f1", "f1.csv", files, "sha1", "cfg")
        merge_delivery(conn, CATALOG, _staged({"p1": "a", "p2": "b"}), record, "r1", datetime(2026, 1, 1))
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=lake_store.settings, catalog=CATALOG)
    assert project.ledger_location == lake_store.target
    expected = {(f["remote_path"], f["size"], round(f["mtime"], 3)) for f in files}
    assert merged_file_identities(project.ledger_location, "c") == expected
    assert merged_file_identities(project.ledger_location, "c", {"g": "cfg"}) == expected
    assert merged_file_identities(project.ledger_location, "c", {"g": "another configuration"}) == set()
    assert stored_property_writers(project.ledger_location, "profile", ["name"]) == {"name": {("c", "g")}}
