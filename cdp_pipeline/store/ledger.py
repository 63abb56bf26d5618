"""Reading the ledger without the writer's lock: from the analysts' published copy."""

from __future__ import annotations

from pathlib import Path

import duckdb


def merged_file_identities(published: Path | None, connection: str) -> set[tuple[str, int, float]]:
    """(remote path, size, mtime) of every file of the connection's merged deliveries, read from
    the published copy (a read-only session on the live store would block the writer). Empty
    when there is no copy yet; the merge step's own ledger check stays the authority."""
    if published is None or not published.exists():
        return set()
    try:
        with duckdb.connect(str(published), read_only=True) as conn:
            rows = conn.execute(
                """
                SELECT f->>'remote_path', CAST(f->>'size' AS BIGINT), round(CAST(f->>'mtime' AS DOUBLE), 3)
                FROM (SELECT unnest(CAST(files AS JSON[])) AS f FROM deliveries
                      WHERE connection = $c AND status IN ('merged', 'reprocessed'))
                """,
                {"c": connection},
            ).fetchall()
    except duckdb.Error:
        return set()
    return {(path, size, mtime) for path, size, mtime in rows}
