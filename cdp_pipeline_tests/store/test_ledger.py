"""What the listing alone can tell: the files the ledger merged, under which configuration."""

from __future__ import annotations

import json
from pathlib import Path

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.ledger import merged_file_identities

CATALOG = Catalog.model_validate({"profile_properties": {"name": {"type": "text"}}})


def _ledger(path: Path) -> None:
    rows = [
        ("d1", "shop", "customers", "cfg-now", "merged", [{"remote_path": "in/a.csv", "size": 10, "mtime": 1700000000.1234}]),
        ("d2", "shop", "customers", "cfg-before", "merged", [{"remote_path": "in/b.csv", "size": 20, "mtime": 1700000001.0}]),
        ("d3", "shop", "orders", "cfg-orders", "reprocessed", [{"remote_path": "in/o.csv", "size": 30, "mtime": 1700000002.0}]),
        ("d4", "other", "customers", "cfg-now", "merged", [{"remote_path": "in/x.csv", "size": 40, "mtime": 1700000003.0}]),
    ]
    with open_writer(path, CATALOG) as conn:
        for delivery_id, connection, goal, config_hash, status, files in rows:
            conn.execute(
                "INSERT INTO deliveries (delivery_id, connection, goal, config_hash, status, files) VALUES (?, ?, ?, ?, ?, ?)",
                [delivery_id, connection, goal, config_hash, status, json.dumps(files)],
            )


def test_merged_files_of_the_connection_and_only_under_the_current_configuration(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    _ledger(store)
    a, b, o = ("in/a.csv", 10, 1700000000.123), ("in/b.csv", 20, 1700000001.0), ("in/o.csv", 30, 1700000002.0)
    assert merged_file_identities(store, "shop") == {a, b, o}
    # b.csv was merged under an earlier configuration of its goal: it is imported again, so not left out.
    assert merged_file_identities(store, "shop", {"customers": "cfg-now", "orders": "cfg-orders"}) == {a, o}
    # A goal missing from the mapping (its files are finished by the import run) counts nothing.
    assert merged_file_identities(store, "shop", {"customers": "cfg-now"}) == {a}
    assert merged_file_identities(store, "shop", {}) == set()
    assert merged_file_identities(tmp_path / "missing.duckdb", "shop", {"customers": "cfg-now"}) == set()


def test_a_connection_that_only_created_profiles_still_counts_as_a_writer(tmp_path: Path) -> None:
    """New profiles write no property_changes rows; the values they were created with still name
    their connection and goal as writers, and only those: a value a profile was created without
    and another connection set later is not the creator's."""
    from datetime import datetime

    import polars as pl

    from cdp_pipeline.store.ledger import stored_property_writers
    from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
    from cdp_pipeline.tables.staged import StagedImport

    def staged(names: list[str | None]) -> StagedImport:
        records = pl.DataFrame({"_key": ["p1", "p2"], "_line": [2, 3], "name": names}, schema={"_key": pl.String, "_line": pl.Int64, "name": pl.String})
        return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={"name": "set"}, records=records, rows_read=2)

    store = tmp_path / "store.duckdb"
    with open_writer(store, CATALOG) as conn:
        first = DeliveryRecord("d1", "crm", "customers", "k", "in/a.csv", [], "s1", "c")
        merge_delivery(conn, CATALOG, staged([None, None]), first, "r1", datetime(2026, 1, 1))
    assert stored_property_writers(store, "profile", ["name"]) == {}
    with open_writer(store, CATALOG) as conn:
        merge_delivery(conn, CATALOG, staged([None, "Bo"]), DeliveryRecord("d2", "shop", "orders", "k", "in/o.csv", [], "s2", "c"), "r2", datetime(2026, 1, 2))
        merge_delivery(conn, CATALOG, staged([None, None]), DeliveryRecord("d3", "crm", "customers", "k", "in/b.csv", [], "s3", "c"), "r3",
                       datetime(2026, 1, 3))
    assert stored_property_writers(store, "profile", ["name"]) == {"name": {("shop", "orders")}}
    with open_writer(store, CATALOG) as conn:
        records = pl.DataFrame({"_key": ["p3"], "_line": [2], "name": ["Cy"]})
        new = StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={"name": "set"}, records=records, rows_read=1)
        merge_delivery(conn, CATALOG, new, DeliveryRecord("d4", "crm", "signups", "k", "in/c.csv", [], "s4", "c"), "r4", datetime(2026, 1, 4))
        assert conn.execute("SELECT count(*) FROM property_changes").fetchone() == (1,)  # only shop's change of p2
    assert stored_property_writers(store, "profile", ["name"]) == {"name": {("shop", "orders"), ("crm", "signups")}}
    assert stored_property_writers(store, "group:household", ["name"]) == {}


def test_a_store_from_before_property_writers_is_filled_from_its_history_and_values(tmp_path: Path) -> None:
    """A store (and its published copy) made before property_writers: the copy is still read by
    scanning its history and values, and the store's migration fills the table with the same
    writers, so the warnings do not change across the upgrade."""
    import shutil
    from datetime import datetime

    import duckdb
    import polars as pl

    from cdp_pipeline.store.ledger import stored_property_writers
    from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
    from cdp_pipeline.tables.staged import StagedImport

    def staged(keys: list[str], names: list[str | None]) -> StagedImport:
        records = pl.DataFrame({"_key": keys, "_line": list(range(2, 2 + len(keys))), "name": names},
                               schema={"_key": pl.String, "_line": pl.Int64, "name": pl.String})
        return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={"name": "set"}, records=records,
                            rows_read=len(keys))

    store = tmp_path / "store.duckdb"
    with open_writer(store, CATALOG) as conn:
        merge_delivery(conn, CATALOG, staged(["p1", "p2"], ["Al", None]), DeliveryRecord("d1", "crm", "customers", "k", "a", [], "s1", "c"), "r1",
                       datetime(2026, 1, 1))
        merge_delivery(conn, CATALOG, staged(["p2"], ["Bo"]), DeliveryRecord("d2", "shop", "orders", "k", "o", [], "s2", "c"), "r2", datetime(2026, 1, 2))
        merge_delivery(conn, CATALOG, staged(["p3"], [None]), DeliveryRecord("d3", "web", "signups", "k", "w", [], "s3", "c"), "r3", datetime(2026, 1, 3))
        # As a release before the table left the store: no table (nor the later ones), schema version 5.
        conn.execute("DROP TABLE property_writers")
        conn.execute("DROP TABLE setup_fingerprints")
        conn.execute("DELETE FROM schema_version WHERE version >= 6")
    old_copy = tmp_path / "published.duckdb"
    shutil.copyfile(store, old_copy)
    expected = {"name": {("crm", "customers"), ("shop", "orders")}}  # web/signups created p3 without a name
    assert stored_property_writers(old_copy, "profile", ["name"]) == expected

    with open_writer(store, CATALOG):
        pass
    with duckdb.connect(str(store), read_only=True) as conn:
        rows = conn.execute("SELECT entity, property, connection, goal FROM property_writers ORDER BY ALL").fetchall()
    assert rows == [("profile", "name", "crm", "customers"), ("profile", "name", "shop", "orders")]
    assert stored_property_writers(store, "profile", ["name"]) == expected
