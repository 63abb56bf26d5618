"""The store's schema over time, on real DuckDB files opened by the writer: a store made before
schema versions existed is migrated with its data intact, a store newer than the code is refused,
a property type change is refused with the migration to run, and a damaged file is named as such."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import StoreUnreadableError, open_writer
from cdp_pipeline.store.schema import SCHEMA_VERSION, StoreSchemaError


def _catalog(score_type: str = "integer") -> Catalog:
    return Catalog.model_validate(
        {"profile_properties": {"customer_number": {"type": "text", "unique": True}, "score": {"type": score_type}}}
    )


# The ledger, row delta and profiles as the releases before schema versions created them (written
# out here, not taken from the code under test): no events_unchanged / values_not_imported in the
# ledger, no value / entity_id / keyed in delivery_rows, and no schema_version table.
OLD_STORE_SQL = [
    """CREATE TABLE deliveries (delivery_id VARCHAR, connection VARCHAR, goal VARCHAR, partition_key VARCHAR,
       root_file VARCHAR, files JSON, content_sha256 VARCHAR, config_hash VARCHAR, status VARCHAR, rows_read BIGINT,
       rows_rejected BIGINT, profiles_created BIGINT, profiles_updated BIGINT, profiles_unchanged BIGINT,
       profiles_ignored BIGINT, consent_skipped BIGINT, groups_created BIGINT, groups_updated BIGINT,
       events_created BIGINT, events_updated BIGINT, run_id VARCHAR, merged_at TIMESTAMP)""",
    "CREATE TABLE delivery_rows (connection VARCHAR, goal VARCHAR, root_file VARCHAR, property VARCHAR, row_hash UHUGEINT, delivery_id VARCHAR)",
    """CREATE TABLE profiles (profile_id VARCHAR, created_at TIMESTAMP, updated_at TIMESTAMP, last_delivery_id VARCHAR,
       last_run_id VARCHAR, customer_number VARCHAR, score BIGINT)""",
    """INSERT INTO deliveries (delivery_id, connection, goal, root_file, status, rows_read, rows_rejected, merged_at)
       VALUES ('d1', 'shop', 'customers', 'in/customers_1.csv', 'merged', 2, 0, TIMESTAMP '2026-01-15 12:00:00')""",
    "INSERT INTO delivery_rows VALUES ('shop', 'customers', 'in/customers_1.csv', 'score', 42, 'd1')",
    """INSERT INTO profiles VALUES ('p1', TIMESTAMP '2026-01-15 12:00:00', TIMESTAMP '2026-01-15 12:00:00', 'd1', 'r1', 'C1', 7),
       ('p2', TIMESTAMP '2026-01-15 12:00:00', TIMESTAMP '2026-01-15 12:00:00', 'd1', 'r1', 'C2', NULL)""",
]


def _old_store(path: Path) -> None:
    with duckdb.connect(str(path)) as conn:
        for statement in OLD_STORE_SQL:
            conn.execute(statement)


def _snapshot(path: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr) for table in tables}


def test_a_store_from_before_schema_versions_is_migrated_with_its_data_intact(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    _old_store(store)

    with open_writer(store, _catalog()) as conn:
        versions = conn.execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()
        columns = {
            (table, column): data_type
            for table, column, data_type in conn.execute(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE table_name IN ('deliveries', 'delivery_rows')"
            ).fetchall()
        }

    assert [version for version, _ in versions] == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 3
    assert all(description for _, description in versions)
    assert columns[("deliveries", "events_unchanged")] == "BIGINT" and columns[("deliveries", "values_not_imported")] == "BIGINT"
    assert columns[("delivery_rows", "keyed")] == "BOOLEAN" and columns[("delivery_rows", "entity_id")] == "VARCHAR"
    with duckdb.connect(str(store), read_only=True) as conn:
        assert conn.execute("SELECT profile_id, customer_number, score, last_delivery_id FROM profiles ORDER BY 1").fetchall() == [
            ("p1", "C1", 7, "d1"),
            ("p2", "C2", None, "d1"),
        ]
        assert conn.execute(
            "SELECT delivery_id, root_file, status, rows_read, merged_at::VARCHAR, events_unchanged, values_not_imported FROM deliveries"
        ).fetchall() == [("d1", "in/customers_1.csv", "merged", 2, "2026-01-15 12:00:00", None, None)]
        assert conn.execute("SELECT property, row_hash, delivery_id, value, entity_id, keyed FROM delivery_rows").fetchall() == [
            ("score", 42, "d1", None, None, None)
        ]
        # analysts can read the version
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)

    # Opening again applies nothing twice.
    before = _snapshot(store)
    with open_writer(store, _catalog()):
        pass
    assert _snapshot(store)["schema_version"] == before["schema_version"]


def test_a_new_store_starts_at_the_current_version(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog()) as conn:
        assert conn.execute("SELECT list(version ORDER BY version) FROM schema_version").fetchone() == (list(range(1, SCHEMA_VERSION + 1)),)


def test_a_store_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog()) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP, 'from a newer release')", [SCHEMA_VERSION + 1])
    before = _snapshot(store)

    with pytest.raises(StoreSchemaError) as caught:
        with open_writer(store, _catalog(score_type="integer")):
            pass

    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message and "Upgrade cdp_pipeline" in message and str(store) in message
    assert _snapshot(store) == before


def test_a_property_type_change_is_refused_naming_property_types_and_migration(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog(score_type="integer")) as conn:
        conn.execute("INSERT INTO profiles (profile_id, customer_number, score) VALUES ('p1', 'C1', 7)")
    before = _snapshot(store)

    with pytest.raises(StoreSchemaError) as caught:
        with open_writer(store, _catalog(score_type="text")):
            pass

    message = str(caught.value)
    assert "profile property 'score' as VARCHAR" in message and "holds it as BIGINT" in message
    assert 'ALTER TABLE "profiles" ALTER COLUMN "score" SET DATA TYPE VARCHAR' in message
    assert _snapshot(store) == before
    # The statement it names does migrate the column, after which the new type opens.
    with duckdb.connect(str(store)) as conn:
        conn.execute('ALTER TABLE "profiles" ALTER COLUMN "score" SET DATA TYPE VARCHAR')
    with open_writer(store, _catalog(score_type="text")) as conn:
        assert conn.execute("SELECT score FROM profiles").fetchall() == [("7",)]


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_store_file_is_named_with_the_runbook(tmp_path: Path, damage: str) -> None:
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog()) as conn:
        conn.execute("INSERT INTO profiles (profile_id, customer_number) SELECT 'p' || i, 'C' || i FROM range(50000) r(i)")
        conn.execute("CHECKPOINT")
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 4] if damage == "truncated" else b"not a database" * 100)

    with pytest.raises(StoreUnreadableError) as caught:
        with open_writer(store, _catalog()):
            pass

    message = str(caught.value)
    assert str(store) in message and "truncated or corrupt" in message
    assert "store_published.duckdb" in message and "docs/store.md" in message
    assert "A store that cannot be opened" in (Path(__file__).parents[2] / "docs" / "store.md").read_text()


def test_comments_follow_store_yaml_and_are_kept_between_opens(tmp_path: Path) -> None:
    """Comments are written only where they differ from store.yaml: a changed description reaches
    the column at the next open, and an open with the same catalog leaves every comment in place."""
    store = tmp_path / "store.duckdb"

    def catalog(description: str) -> Catalog:
        return Catalog.model_validate({"profile_properties": {"score": {"type": "integer", "description": description}}})

    def comment() -> tuple:
        with duckdb.connect(str(store), read_only=True) as conn:
            return conn.execute(
                "SELECT (SELECT comment FROM duckdb_columns() WHERE table_name = 'profiles' AND column_name = 'score'), "
                "(SELECT comment FROM duckdb_tables() WHERE table_name = 'deliveries'), "
                "(SELECT count(*) FROM duckdb_columns() WHERE table_name IN ('profiles', 'deliveries') AND comment IS NULL)"
            ).fetchone()

    with open_writer(store, catalog("points of the loyalty programme")):
        pass
    first = comment()
    assert first[0] == "points of the loyalty programme" and first[1].startswith("The ledger") and first[2] == 0
    with open_writer(store, catalog("points of the loyalty programme")):
        pass
    assert comment() == first
    with open_writer(store, catalog("loyalty points, updated nightly")):
        pass
    assert comment() == ("loyalty points, updated nightly", first[1], 0)



def test_a_store_written_by_a_newer_duckdb_is_named_as_such_not_as_damage(tmp_path: Path) -> None:
    """A store created under DuckDB 2 (the file in data/ was written by DuckDB 2.0.1) opened by 1.5,
    the [ducklake] extra's pin and the test environment's: the file is intact, so the message must
    not send the user to restore a backup."""
    store = tmp_path / "store.duckdb"
    store.write_bytes(gzip.decompress((Path(__file__).parent / "data" / "store_written_by_duckdb_2.0.1.duckdb.gz").read_bytes()))
    if int(duckdb.__version__.split(".")[0]) >= 2:
        # An installation on DuckDB 2 (no extras) reads it like any other store.
        with duckdb.connect(str(store), read_only=True) as conn:
            assert conn.execute("SELECT release FROM written_by").fetchall() == [("2.0.1",)]
        return

    with pytest.raises(StoreUnreadableError) as caught:
        with open_writer(store, _catalog()):
            pass

    message = str(caught.value)
    assert str(store) in message and "written by a newer DuckDB" in message and duckdb.__version__ in message
    assert "truncated or corrupt" not in message and "A store written by a newer DuckDB" in message
    assert "## A store written by a newer DuckDB" in (Path(__file__).parents[2] / "docs" / "store.md").read_text()


def _format_number(path: Path) -> int:
    """The storage format number DuckDB writes after its magic bytes at the start of a database
    file: what decides which DuckDB releases can open it."""
    header = path.read_bytes()[:20]
    assert header[8:12] == b"DUCK", header
    return int.from_bytes(header[12:20], "little")


def test_a_new_store_is_written_in_the_format_every_supported_duckdb_reads(tmp_path: Path) -> None:
    """Whatever DuckDB creates the store, it is written in the oldest format the supported releases
    (1.2 and newer) share: a plain install (DuckDB 2) that later takes the [ducklake] extra (1.5.5),
    or an analyst on a DuckDB 1.x tool reading the published copy, can still open it."""
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog()):
        pass
    reference = tmp_path / "reference.duckdb"
    with duckdb.connect() as conn:
        conn.execute(f"ATTACH '{reference}' AS reference (STORAGE_VERSION 'v1.2.0')")
        conn.execute("CREATE TABLE reference.t (i INTEGER)")
    assert _format_number(store) == _format_number(reference)
    native = gzip.decompress((Path(__file__).parent / "data" / "store_written_by_duckdb_2.0.1.duckdb.gz").read_bytes())
    assert _format_number(store) != int.from_bytes(native[12:20], "little")  # what DuckDB 2 writes by default


def test_a_store_this_release_created_on_duckdb_2_opens_on_the_installed_duckdb(tmp_path: Path) -> None:
    """The file in data/ was created by open_writer under DuckDB 2.0.1 (two profiles, a written_by
    table); the tests' DuckDB (the [ducklake] extra's 1.5.5) opens, migrates and writes it."""
    store = tmp_path / "store.duckdb"
    store.write_bytes(gzip.decompress((Path(__file__).parent / "data" / "store_created_here_by_duckdb_2.0.1.duckdb.gz").read_bytes()))
    with open_writer(store, _catalog()) as conn:
        assert conn.execute("SELECT release FROM written_by").fetchall() == [("2.0.1",)]
        conn.execute("UPDATE profiles SET score = score + 1")
        assert conn.execute("SELECT customer_number, score FROM profiles ORDER BY 1").fetchall() == [("C001", 8), ("C002", 10)]


def test_the_documented_rewrite_gives_a_store_in_the_shared_format_with_everything_in_it(tmp_path: Path, monkeypatch) -> None:
    """docs/store.md's statements, run as written in the store's folder: the copy has the shared
    format, and the pipeline opens it with the same profiles and ledger."""
    text = (Path(__file__).parents[2] / "docs" / "store.md").read_text()
    statements = text.split("<!-- store-rewrite -->\n```text\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    with open_writer(tmp_path / "store.duckdb", _catalog()) as conn:
        conn.execute("INSERT INTO profiles (profile_id, customer_number, score) VALUES ('p1', 'C001', 7), ('p2', 'C002', 9)")
    with duckdb.connect() as conn:
        conn.execute(statements)
    copy = tmp_path / "store_v12.duckdb"
    reference = tmp_path / "reference.duckdb"
    with duckdb.connect() as conn:
        conn.execute(f"ATTACH '{reference}' AS reference (STORAGE_VERSION 'v1.2.0')")
        conn.execute("CREATE TABLE reference.t (i INTEGER)")
    assert _format_number(copy) == _format_number(reference)
    with open_writer(copy, _catalog()) as conn:
        assert conn.execute("SELECT profile_id, customer_number, score FROM profiles ORDER BY 1").fetchall() == [("p1", "C001", 7), ("p2", "C002", 9)]
        assert conn.execute("SELECT count(*) FROM deliveries").fetchall() == [(0,)]


def _views(path: Path) -> dict[str, str]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return dict(conn.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall())


def _views_recorded_at(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute("SELECT recorded_at FROM setup_fingerprints WHERE step = 'views'").fetchall()


def test_views_are_replaced_only_when_they_would_change(tmp_path: Path) -> None:
    """An open with the same store.yaml leaves the views alone; a new property, a new event type,
    a view dropped or replaced by hand are all put right at the next open."""
    store = tmp_path / "store.duckdb"
    with open_writer(store, _catalog()):
        pass
    first, recorded = _views(store), _views_recorded_at(store)
    assert {"property_history", "property_provenance", "data_exchange"} <= set(first) and len(recorded) == 1
    with open_writer(store, _catalog()):
        pass
    assert _views(store) == first and _views_recorded_at(store) == recorded  # not written again

    # A new profile property: property_history covers it from this open on.
    wider = Catalog.model_validate(
        {"profile_properties": {"customer_number": {"type": "text", "unique": True}, "score": {"type": "integer"}, "tier": {"type": "text"}}}
    )
    with open_writer(store, wider) as conn:
        conn.execute("INSERT INTO deliveries (delivery_id, connection, goal, run_id) VALUES ('d1', 'shop', 'customers', 'r1')")
        conn.execute("INSERT INTO profiles (profile_id, created_at, created_delivery_id, tier) VALUES ('p1', TIMESTAMP '2026-01-15', 'd1', 'gold')")
        assert conn.execute("SELECT property, value FROM property_history WHERE entity_id = 'p1'").fetchall() == [("tier", "gold")]
    assert "tier" in _views(store)["property_history"] and "tier" not in first["property_history"]

    # A new event type: timeline_events (a view that did not exist yet) reads it.
    with_events = Catalog.model_validate(
        {**wider.model_dump(mode="json", exclude_defaults=True), "event_types": {"visit": {"properties": {"page": {"type": "text"}}}}}
    )
    with open_writer(store, with_events) as conn:
        conn.execute("INSERT INTO timeline_visit (event_id, profile_id, event_time) VALUES ('v1', 'p1', TIMESTAMP '2026-01-15')")
        assert conn.execute("SELECT event_type, event_id FROM timeline_events").fetchall() == [("visit", "v1")]
    expected = _views(store)

    # Changed by hand: dropped, or replaced with other SQL (comment included). Both are restored.
    with duckdb.connect(str(store)) as conn:
        conn.execute("DROP VIEW property_provenance")
        conn.execute("CREATE OR REPLACE VIEW data_exchange AS SELECT 1 AS connection")
    with open_writer(store, with_events):
        pass
    assert _views(store) == expected
    with duckdb.connect(str(store)) as conn:
        conn.execute("COMMENT ON VIEW timeline_events IS 'changed'")
    with open_writer(store, with_events) as conn:
        assert conn.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'timeline_events'").fetchone()[0].startswith("Every timeline event")

    # A removed fingerprint (or a store from before it) only makes the next open replace the views.
    with duckdb.connect(str(store)) as conn:
        conn.execute("DELETE FROM setup_fingerprints")
    with open_writer(store, with_events):
        pass
    assert _views(store) == expected and len(_views_recorded_at(store)) == 1
