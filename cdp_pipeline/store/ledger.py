"""Reading the ledger without the writer's lock: from the analysts' published copy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb


def merged_file_identities(
    published: Path | None, connection: str, config_hashes: Mapping[str, str] | None = None
) -> set[tuple[str, int, float]]:
    """(remote path, size, mtime) of every file of the connection's merged deliveries, read from
    the published copy (a read-only session on the live store would block the writer). Empty
    when there is no copy yet; the merge step's own ledger check stays the authority.

    With ``config_hashes`` (goal → the goal's configuration hash now), only deliveries merged
    under the goal's current configuration count: a changed configuration imports the files
    still in the folders again, and leaving them out before the fetch must not prevent that."""
    if published is None or not published.exists() or config_hashes == {}:
        return set()
    hashes = [{"goal": goal, "config_hash": value} for goal, value in (config_hashes or {}).items()]
    same_configuration = (
        "AND struct_pack(goal := goal, config_hash := config_hash) IN (SELECT unnest($hashes))" if config_hashes is not None else ""
    )
    try:
        with duckdb.connect(str(published), read_only=True) as conn:
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


def stored_property_writers(published: Path | None, entity: str, properties: list[str]) -> dict[str, set[tuple[str, str]]]:
    """Property → the (connection, goal) pairs whose deliveries set a value of it, from the value
    history of the published copy (property_history: the changes and the values profiles were
    created with; ``entity`` is ``profile`` or ``group:<type>``). Empty without a copy or history:
    the configuration's view still applies."""
    if published is None or not published.exists() or not properties:
        return {}
    try:
        with duckdb.connect(str(published), read_only=True) as conn:
            # A copy published by an older release has no property_history; its property_changes
            # holds every value then.
            (has_view,) = conn.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'property_history'").fetchall()[0]
            rows = conn.execute(
                f"SELECT DISTINCT property, connection, goal FROM {'property_history' if has_view else 'property_changes'} "
                "WHERE entity = $entity AND list_contains($properties, property)",
                {"entity": entity, "properties": properties},
            ).fetchall()
    except duckdb.Error:
        return {}
    writers: dict[str, set[tuple[str, str]]] = {}
    for prop, connection, goal in rows:
        writers.setdefault(prop, set()).add((connection, goal))
    return writers

