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
