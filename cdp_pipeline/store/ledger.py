"""Reading the ledger without waiting for the writer: from the analysts' published copy of a
DuckDB file store (a read-only session on the live file would block the writer), or from the lake
itself (a reader sees a committed snapshot and never blocks a writer)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb

from cdp_pipeline.config.ducklake import DuckLakeLocation
from cdp_pipeline.errors import CdpError
from cdp_pipeline.store.lake import connect_lake
from cdp_pipeline.store.schema import group_table, literal, quote

#: where the ledger is read: ``ProjectConfig.ledger_location``.
LedgerLocation = Path | DuckLakeLocation | None


@contextlib.contextmanager
def _ledger_reader(location: LedgerLocation) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only session, or None where there is nothing to read yet (no copy published) or the
    lake cannot be reached now: these reads only save work, and the merge's own ledger check in
    the writer's transaction stays the authority."""
    if location is None or (isinstance(location, Path) and not location.exists()):
        yield None
        return
    try:
        conn = connect_lake(location, read_only=True) if isinstance(location, DuckLakeLocation) else duckdb.connect(str(location), read_only=True)
    except (duckdb.Error, CdpError):
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


def merged_file_identities(
    location: LedgerLocation, connection: str, config_hashes: Mapping[str, str] | None = None
) -> set[tuple[str, int, float]]:
    """(remote path, size, mtime) of every file of the connection's merged deliveries, read from
    ``location`` (the published copy, or the lake). Empty when there is no copy yet; the merge
    step's own ledger check stays the authority.

    With ``config_hashes`` (goal → the goal's configuration hash now), only deliveries merged
    under the goal's current configuration count: a changed configuration imports the files
    still in the folders again, and leaving them out before the fetch must not prevent that."""
    if config_hashes == {}:
        return set()
    hashes = [{"goal": goal, "config_hash": value} for goal, value in (config_hashes or {}).items()]
    same_configuration = (
        "AND struct_pack(goal := goal, config_hash := config_hash) IN (SELECT unnest($hashes))" if config_hashes is not None else ""
    )
    try:
        with _ledger_reader(location) as conn:
            if conn is None:
                return set()
            rows = conn.execute(
                f"""
                SELECT f->>'remote_path', CAST(f->>'size' AS BIGINT), round(CAST(f->>'mtime' AS DOUBLE), 3)
                FROM (SELECT unnest(CAST(files AS JSON[])) AS f FROM deliveries
                      WHERE connection = $c AND status IN ('merged', 'reprocessed') {same_configuration})
                """,
                {"c": connection, **({"hashes": hashes} if config_hashes is not None else {})},
            ).fetchall()
    except duckdb.Error:
        return set()
    return {(path, size, mtime) for path, size, mtime in rows}


def stored_property_writers(location: LedgerLocation, entity: str, properties: list[str]) -> dict[str, set[tuple[str, str]]]:
    """Property → the (connection, goal) pairs whose deliveries set a value of it, from
    ``property_writers`` in ``location`` (the published copy, or the lake; ``entity`` is
    ``profile`` or ``group:<type>``): a few rows, whatever the size of the store. Empty without a
    copy: the configuration's view still applies."""
    if not properties:
        return {}
    try:
        with _ledger_reader(location) as conn:
            if conn is None:
                return {}
            if conn.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'property_writers' AND schema_name = 'main' AND database_name = current_database()"
            ).fetchone() == (1,):
                rows = conn.execute(
                    "SELECT DISTINCT property, connection, goal FROM property_writers WHERE entity = $entity AND list_contains($properties, property)",
                    {"entity": entity, "properties": properties},
                ).fetchall()
            else:
                rows = _writers_from_history(conn, entity, properties)
    except duckdb.Error:
        return {}
    writers: dict[str, set[tuple[str, str]]] = {}
    for prop, connection, goal in rows:
        writers.setdefault(prop, set()).add((connection, goal))
    return writers


def _writers_from_history(conn: duckdb.DuckDBPyConnection, entity: str, properties: list[str]) -> list[tuple[str, str, str]]:
    """A copy published before ``property_writers`` existed: the rows of property_changes, and the
    creating delivery of the values profiles still have from their creation (what
    property_history adds, asked per property: the view would unpivot every column of every
    profile)."""
    table, id_column = ("profiles", "profile_id") if entity == "profile" else (group_table(entity.removeprefix("group:")), "group_id")
    columns = {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = $table AND schema_name = 'main'", {"table": table}
        ).fetchall()
    }
    # A copy published by an older release has no created_delivery_id; its property_changes
    # holds every value then.
    created = [p for p in properties if p in columns] if "created_delivery_id" in columns else []
    parts = [
        f"""
        SELECT DISTINCT {literal(prop)} AS property, t.created_delivery_id FROM {quote(table)} t
        WHERE t.{quote(prop)} IS NOT NULL AND t.created_delivery_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM property_changes c
                          WHERE c.entity = $entity AND c.property = {literal(prop)} AND c.entity_id = t.{id_column})
        """
        for prop in created
    ]
    creations = (
        f" UNION SELECT x.property, d.connection, d.goal FROM ({' UNION ALL '.join(parts)}) x "
        "JOIN deliveries d ON d.delivery_id = x.created_delivery_id"
        if parts else ""
    )
    return conn.execute(
        "SELECT DISTINCT property, connection, goal FROM property_changes WHERE entity = $entity AND list_contains($properties, property)"
        + creations,
        {"entity": entity, "properties": properties},
    ).fetchall()
