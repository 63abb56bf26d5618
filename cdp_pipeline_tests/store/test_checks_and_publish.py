"""Store invariants the asset checks watch, and the analysts' published copy: an analyst holding a
read-only session open across a merge neither breaks the merge nor is broken by it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import datetime

import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store import checks
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.store.publish import publish_copy
from cdp_pipeline.tables.staged import StagedImport

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {"spend": {"type": "decimal"}},
        "event_types": {"order": {"properties": {"total": {"type": "decimal"}}}},
    }
)


def _merge(conn, keys: list[str], n: int) -> None:
    records = pl.DataFrame({"_key": keys, "_line": list(range(2, len(keys) + 2)), "spend": [1.0] * len(keys)})
    staged = StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={"spend": "sum"}, records=records, rows_read=len(keys))
    merge_delivery(conn, CATALOG, staged, DeliveryRecord(f"d{n}", "c", "g", "g:f", "f.csv", [], f"sha{n}", "cfg"), f"r{n}", datetime(2026, 1, n))


def test_checks_pass_on_a_merged_store_and_catch_broken_invariants(tmp_path):
    with open_writer(tmp_path / "s.duckdb", CATALOG) as conn:
        _merge(conn, ["a", "b"], 1)
        assert checks.unique_profile_ids(conn).passed
        assert checks.events_have_profiles(conn, CATALOG).passed
        assert checks.ledger_matches_store(conn).passed
        assert checks.rejects_within_bounds(conn, "c").passed
        # Break each invariant behind the pipeline's back.
        conn.execute("INSERT INTO profiles (profile_id) VALUES ('a')")
        conn.execute("INSERT INTO timeline_order (event_id, profile_id) VALUES ('e1', 'nobody')")
        conn.execute("UPDATE profiles SET last_delivery_id = 'ghost' WHERE profile_id = 'b'")
        conn.execute("UPDATE deliveries SET rows_rejected = 1, rows_read = 2")
        unique = checks.unique_profile_ids(conn)
        assert not unique.passed and unique.metadata["duplicate_ids"] == 1
        assert checks.events_have_profiles(conn, CATALOG).metadata["orphans"] == 1
        assert not checks.ledger_matches_store(conn).passed
        assert not checks.rejects_within_bounds(conn, "c").passed


ANALYST = textwrap.dedent(
    """
    import sys, time, duckdb
    conn = duckdb.connect(sys.argv[1], read_only=True)
    before = conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
    print("open", before, flush=True)
    sys.stdin.readline()  # hold the session open until the merge is done
    after = conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
    print("still", after, flush=True)
    """
)


def test_analyst_session_on_published_copy_survives_a_merge(tmp_path):
    live, published = tmp_path / "store.duckdb", tmp_path / "store_published.duckdb"
    with open_writer(live, CATALOG) as conn:
        _merge(conn, ["a", "b"], 1)
        publish_copy(conn, published)
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, str(published)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout.readline().split() == ["open", "2"]
        # The pipeline merges and republishes while the analyst's session is open.
        with open_writer(live, CATALOG, lock_wait_seconds=5) as conn:
            _merge(conn, ["c"], 2)
            publish_copy(conn, published)
        analyst.stdin.write("\n")
        analyst.stdin.flush()
        # The analyst's session still works, on the copy it opened.
        assert analyst.stdout.readline().split() == ["still", "2"]
    finally:
        analyst.kill()
        analyst.wait()
    # A new session sees the new copy.
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; print(duckdb.connect({str(published)!r}, read_only=True).execute('SELECT count(*) FROM profiles').fetchone()[0])",
        ],
        capture_output=True, text=True, check=True,
    )
    assert fresh.stdout.strip() == "3"


def test_a_session_on_the_live_file_makes_the_writer_wait_then_fail_clearly(tmp_path):
    live = tmp_path / "store.duckdb"
    with open_writer(live, CATALOG) as conn:
        _merge(conn, ["a"], 1)
    holder = subprocess.Popen([sys.executable, "-c", ANALYST, str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        started = time.monotonic()
        from cdp_pipeline.errors import TransientError

        try:
            with open_writer(live, CATALOG, lock_wait_seconds=1):
                raise AssertionError("the writer should not get the lock")
        except TransientError as error:
            assert "published copy" in str(error)
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()
