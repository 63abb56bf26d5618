"""What an export remembers: the profiles it sent and, in diff mode, the hash of every row it
sent (``export_snapshots``), kept aside during the upload and recorded in one transaction with
the goal's "changed since" mark (``export_state``) once the files are delivered."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from cdp_pipeline.store.lake import rollback
from cdp_pipeline.store.schema import literal


def save_selection(conn: duckdb.DuckDBPyConnection, directory: Path, *, diff: bool) -> tuple[Path, Path | None]:
    """Keep the exported profile ids (and, in diff mode, every current row hash) as Parquet in
    the run's private work directory, so the writer connection can be closed during encryption
    and upload and :func:`record_export` still knows what was sent."""
    directory.mkdir(parents=True, exist_ok=True)
    exported = directory / "exported.parquet"
    conn.execute(f"COPY (SELECT _profile_id AS profile_id FROM export_rows WHERE _changed) TO {literal(str(exported))} (FORMAT parquet)")
    snapshot = None
    if diff:
        snapshot = directory / "snapshot.parquet"
        conn.execute(f"COPY (SELECT _profile_id AS profile_id, _hash AS row_hash FROM export_rows) TO {literal(str(snapshot))} (FORMAT parquet)")
    return exported, snapshot


def record_export(
    conn: duckdb.DuckDBPyConnection,
    connection: str,
    goal: str,
    run_id: str,
    snapshot: datetime,
    *,
    exported: Path,
    rows: Path | None = None,
) -> None:
    """After the files are delivered, in one transaction: move the goal's "changed since" mark,
    count the exchanged profiles and, in diff mode, replace the goal's snapshot with the rows
    just sent. A failure before this leaves all three as they were: the next run sends again."""
    conn.execute("BEGIN TRANSACTION")
    try:
        params = {"c": connection, "g": goal}
        conn.execute("DELETE FROM export_state WHERE connection = $c AND goal = $g", params)
        conn.execute("INSERT INTO export_state (connection, goal, last_export_at, last_run_id) VALUES ($c, $g, $t, $r)", {**params, "t": snapshot, "r": run_id})
        conn.execute(
            f"""
            MERGE INTO exchanged_profiles t
            USING (SELECT profile_id FROM read_parquet({literal(str(exported))})) s
            ON t.connection = $c AND t.direction = 'exported' AND t.profile_id = s.profile_id
            WHEN MATCHED THEN UPDATE SET last_at = $t
            WHEN NOT MATCHED THEN INSERT (connection, direction, profile_id, first_at, last_at) VALUES ($c, 'exported', s.profile_id, $t, $t)
            """,
            {"c": connection, "t": snapshot},
        )
        if rows is not None:
            conn.execute("DELETE FROM export_snapshots WHERE connection = $c AND goal = $g", params)
            conn.execute(
                f"""
                INSERT INTO export_snapshots (connection, goal, profile_id, row_hash, exported_at, run_id)
                SELECT $c, $g, profile_id, row_hash, $t, $r FROM read_parquet({literal(str(rows))})
                """,
                {**params, "t": snapshot, "r": run_id},
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
