"""A store write that conflicts with another transaction is run again a bounded number of times,
then fails naming the cause; each failed attempt leaves nothing behind.

Two real DuckDB connections to one store file in one process: the "analyst" deletes the segment
membership row of a profile that has just left the segment and keeps its transaction open; the
pipeline's refresh of the memberships must delete that very row and so conflicts ("Conflict on
tuple deletion")."""

from __future__ import annotations

import threading
from datetime import datetime

import duckdb
import pytest

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, load_project
from cdp_pipeline.store import conflicts
from cdp_pipeline.store.conflicts import TransactionConflictError
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.segments import refresh_memberships

NOW = datetime(2026, 3, 1, 12, 0)


@pytest.fixture
def store(tmp_path):
    catalog = load_project(BUNDLED_CONFIG_DIR, tmp_path).catalog
    path = tmp_path / "store.duckdb"
    with open_writer(path, catalog) as conn:
        conn.execute("INSERT INTO profiles (profile_id, lifetime_value) VALUES ('rich', 900), ('poor', 10)")
        refresh_memberships(conn, catalog, NOW)
        # 'rich' spent it all back: the next refresh takes it out of high_value.
        conn.execute("UPDATE profiles SET lifetime_value = 0 WHERE profile_id = 'rich'")
    return path, catalog


def _members(path, segment: str) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return [row[0] for row in conn.execute("SELECT profile_id FROM segment_members WHERE segment = ? ORDER BY 1", [segment]).fetchall()]


def _analyst_holds_the_row(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("BEGIN")
    conn.execute("DELETE FROM segment_members WHERE profile_id = 'rich' AND segment = 'high_value'")


def test_a_conflict_that_ends_is_retried_and_the_refresh_lands(store, caplog):
    path, catalog = store
    assert _members(path, "high_value") == ["rich"]
    with open_writer(path, catalog) as pipeline:
        analyst = duckdb.connect(str(path))  # the same process: DuckDB shares the database, transactions conflict
        _analyst_holds_the_row(analyst)
        ends = threading.Timer(0.5, lambda: analyst.execute("COMMIT"))
        ends.start()
        try:
            sizes = refresh_memberships(pipeline, catalog, NOW)
        finally:
            ends.join()
            analyst.close()
    assert sizes["high_value"] == 0
    assert _members(path, "high_value") == []
    retries = [r.getMessage() for r in caplog.records if "transaction conflict" in r.getMessage()]
    assert retries and "refreshing segment and lifecycle members" in retries[0] and "Conflict" in retries[0]


def test_a_conflict_that_lasts_fails_naming_the_cause_and_writes_nothing(store, monkeypatch):
    path, catalog = store
    monkeypatch.setattr(conflicts, "FIRST_DELAY_SECONDS", 0.05)
    sizes_before = _sizes(path)
    with open_writer(path, catalog) as pipeline:
        analyst = duckdb.connect(str(path))
        _analyst_holds_the_row(analyst)
        try:
            with pytest.raises(TransactionConflictError) as failure:
                refresh_memberships(pipeline, catalog, NOW)
        finally:
            analyst.execute("ROLLBACK")
            analyst.close()
    message = str(failure.value)
    assert message.startswith("refreshing segment and lifecycle members: the store write conflicted with another transaction 5 times")
    assert "DuckDB: TransactionContext Error: Conflict" in message and "nothing of it was written" in message
    # every attempt was rolled back: no membership changed, no size measurement was added
    assert _members(path, "high_value") == ["rich"]
    assert _sizes(path) == sizes_before


def _sizes(path) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        row = conn.execute("SELECT count(*) FROM segment_sizes").fetchone()
        return row[0] if row else -1
