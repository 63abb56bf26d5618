"""The analysts' copy of the store.

DuckDB allows one writing process per file, and even a read-only session on the live file makes
the writer fail with "Could not set lock on file" (dagster-anchors §3.2). So analysts query a
copy that the pipeline republishes after each merge: written beside the target under a temporary
name, then moved into place with an atomic rename. A session that has the old copy open keeps
reading the old file (its inode stays alive until it closes); the next session sees the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from cdp_pipeline.store.schema import literal


def publish_copy(conn: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Copy the whole store into ``target`` atomically; returns the copy's size in bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    alias = "cdp_published_copy"
    (source,) = conn.execute("SELECT current_database()").fetchone()
    conn.execute(f"ATTACH {literal(str(temporary))} AS {alias}")
    try:
        conn.execute(f"COPY FROM DATABASE {source} TO {alias}")
    finally:
        conn.execute(f"DETACH {alias}")
    os.chmod(temporary, 0o640)
    os.replace(temporary, target)
    return target.stat().st_size
