"""Opening the store: one writer at a time, readers that never hold the writer's lock for long."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.disk_space import DiskSpaceError, is_disk_full, says_disk_full
from cdp_pipeline.errors import TransientError
from cdp_pipeline.store.schema import ensure_schema


def _is_lock_conflict(exc: Exception) -> bool:
    return "Could not set lock" in str(exc) or "Conflicting lock" in str(exc)


def _connect(path: Path, *, read_only: bool, threads: int | None, lock_wait_seconds: float) -> duckdb.DuckDBPyConnection:
    config = {"threads": threads} if threads else {}
    deadline = time.monotonic() + lock_wait_seconds
    delay = 0.2
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            # Another process holds the file (an analyst's session, an overlapping run outside the
            # pool). Wait a bounded time, then fail with DuckDB's own text naming the holder (#58).
            if not _is_lock_conflict(exc) or time.monotonic() > deadline:
                if _is_lock_conflict(exc):
                    raise TransientError(
                        f"the store {path} is locked by another process: {exc}. Close that session (analysts: "
                        "query the published copy instead) and the run retries."
                    ) from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.contextmanager
def open_writer(path: Path, catalog: Catalog, *, threads: int | None = None, lock_wait_seconds: float = 120) -> Iterator[duckdb.DuckDBPyConnection]:
    """The writing connection, schema brought up to date; always closed, even when the body raises,
    so a failed step never keeps the lock (dagster-anchors §3.2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, read_only=False, threads=threads, lock_wait_seconds=lock_wait_seconds)
    # A full disk under the store fails DuckDB's commit or checkpoint with its own message, which
    # reads like a database fault; the transaction is rolled back either way (nothing half merged).
    with _disk_full_named(path):
        try:
            conn.execute("BEGIN")
            ensure_schema(conn, catalog)
            conn.execute("COMMIT")
            yield conn
        finally:
            conn.close()
    path.chmod(0o600)


@contextlib.contextmanager
def _disk_full_named(path: Path) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc) or says_disk_full(str(exc)):
            raise DiskSpaceError(
                f"the disk of the store ({path.parent}) is full: {str(exc).splitlines()[0]}. The merge or export was "
                "rolled back; free space there (the store, its analysts' copy and DuckDB's checkpoint need room) and "
                "re-execute the run"
            ) from exc
        raise


@contextlib.contextmanager
def open_reader(path: Path, *, lock_wait_seconds: float = 120) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = _connect(path, read_only=True, threads=None, lock_wait_seconds=lock_wait_seconds)
    try:
        yield conn
    finally:
        conn.close()
