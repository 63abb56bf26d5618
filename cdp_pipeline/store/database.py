"""Opening the store: one writer at a time, readers that never hold the writer's lock for long."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.ducklake import DuckLakeLocation
from cdp_pipeline.disk_space import DiskSpaceError, is_disk_full, says_disk_full
from cdp_pipeline.errors import CdpError, TransientError
from cdp_pipeline.private_files import private_directory, private_umask
from cdp_pipeline.store.lake import connect_lake, retry_write_conflicts, rollback
from cdp_pipeline.store.memory import WriterMemory, limit_memory, resolved_limit
from cdp_pipeline.store.schema import ensure_schema, literal


def _is_lock_conflict(exc: Exception) -> bool:
    return "Could not set lock" in str(exc) or "Conflicting lock" in str(exc)


def lock_holder(message: str) -> str:
    """The process DuckDB names as holding the file lock, with its command line when this host
    can read it: "process 4242 (cdp-pipeline run acme)" tells an operator what to close."""
    match = re.search(r"\(PID (\d+)\)", message)
    if match is None:
        return "another process"
    pid = match.group(1)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    return f"process {pid} ({command[:200]})" if command else f"process {pid}"


def _create_store_file(path: Path) -> None:
    """An empty store file in ``STORE_STORAGE_VERSION``. Created by a session of its own rather than
    with a connection setting: DuckDB refuses a second connection to a file in the same process
    when the settings differ, and readers open the store without it."""
    with duckdb.connect(":memory:") as creator:
        creator.execute(f"ATTACH {literal(str(path))} AS new_store (STORAGE_VERSION {literal(STORE_STORAGE_VERSION)})")
        creator.execute("DETACH new_store")


def _connect(path: Path, *, read_only: bool, threads: int | None, lock_wait_seconds: float) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {"threads": threads} if threads else {}
    deadline = time.monotonic() + lock_wait_seconds
    delay = 0.2
    while True:
        try:
            if read_only:
                return duckdb.connect(str(path), read_only=True, config=config)
            # A store DuckDB creates is 0600 from its first byte, and an existing one is narrowed
            # before anything is written: a writer killed mid-merge leaves no readable customer data.
            with private_umask():
                if not path.exists():
                    _create_store_file(path)
                conn = duckdb.connect(str(path), read_only=False, config=config)
            path.chmod(0o600)
            return conn
        except duckdb.IOException as exc:
            # Another process holds the file (an analyst's session, an overlapping run outside the
            # pool). Wait a bounded time, then fail with DuckDB's own text naming the holder.
            if not _is_lock_conflict(exc) or time.monotonic() > deadline:
                if _is_lock_conflict(exc):
                    raise TransientError(
                        f"the store {path} is locked by {lock_holder(str(exc))}; waited {lock_wait_seconds:.0f} s for it. Close that "
                        f"session (analysts: query the published copy instead) and the run retries. DuckDB: {str(exc).splitlines()[0]}"
                    ) from None
                if path.exists() and not says_disk_full(str(exc)):
                    raise unreadable_store(path, exc) from exc
                raise
        except (duckdb.SerializationException, duckdb.InternalException, duckdb.InvalidInputException) as exc:
            if path.exists():
                raise unreadable_store(path, exc) from exc
            raise
        # Only a lock held by another process gets here: wait before asking again (no busy loop).
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


#: the on-disk format a new store file is written in: the oldest that every DuckDB this package
#: accepts (1.2 and newer) reads and writes. DuckDB 2's own format cannot be opened by 1.x, so
#: without this a store created on a plain install (DuckDB 2) could no longer be opened after the
#: ``ducklake`` extra (which pins 1.5.5) was installed, nor by an analyst's DuckDB 1.x tools (the
#: published copy is a byte copy of the store). Measured no slower for the merge (docs/store.md).
STORE_STORAGE_VERSION = "v1.2.0"


class StoreUnreadableError(CdpError):
    """The store file exists but DuckDB cannot open it: truncated, overwritten or corrupt."""


def unreadable_store(path: Path, exc: BaseException) -> StoreUnreadableError:
    """Every run would fail the same way on such a file, so the message is the runbook's pointer,
    not DuckDB's bare I/O error."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "newer version of duckdb" in str(exc).lower():
        # Not damage: restoring the published copy would not help (the same release wrote it).
        return StoreUnreadableError(
            f"the store file {path} was written by a newer DuckDB than the one installed here ({duckdb.__version__}; DuckDB: {first}). "
            "Nothing was imported or exported, and the file is intact. Run the pipeline with the DuckDB release that wrote it "
            "(pip install -U duckdb; the [ducklake] extra pins an older one), or rewrite the store once in the format every "
            "DuckDB from 1.2 reads, as docs/store.md, 'A store written by a newer DuckDB', shows"
        )
    return StoreUnreadableError(
        f"the store file {path} cannot be opened: it is truncated or corrupt, or its write-ahead log (.wal) cannot be replayed (DuckDB: {first}). Nothing was "
        "imported or exported. Stop the runs, keep the damaged file aside, and restore the store from the "
        "published copy (store.published_path, store_published.duckdb by default) or from a backup, then "
        "re-import the deliveries merged since that copy; the steps are in docs/store.md, 'A store that cannot be opened'"
    )


@contextlib.contextmanager
def open_writer(
    path: Path | DuckLakeLocation, catalog: Catalog, *, threads: int | None = None, memory: WriterMemory | None = None,
    lock_wait_seconds: float = 120,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The writing connection, schema brought up to date; always closed, even when the body raises,
    so a failed step never keeps the single-writer lock from the next run. ``path`` is the DuckDB
    file, or the lake (``store.backend: ducklake``), which many writers may open at once.
    ``memory``: DuckDB's memory limit and spill folder (the merges and exports, see store/memory.py)."""
    if isinstance(path, DuckLakeLocation):
        with _out_of_memory_named(memory), _open_lake_writer(path, catalog, threads=threads, memory=memory) as conn:
            yield conn
        return
    if not path.parent.exists():
        private_directory(path.parent)
    conn = _connect(path, read_only=False, threads=threads, lock_wait_seconds=lock_wait_seconds)
    # A full disk under the store fails DuckDB's commit or checkpoint with its own message, which
    # reads like a database fault; the transaction is rolled back either way (nothing half merged).
    with _disk_full_named(path), _out_of_memory_named(memory):
        try:
            limit_memory(conn, memory, path)
            conn.execute("BEGIN")
            try:
                ensure_schema(conn, catalog)
            except (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException) as exc:
                # The first reads of table data happen here (connect reads only the catalog):
                # a truncated file fails now, and it is the same damage as one that fails to open.
                if says_disk_full(str(exc)):
                    raise
                raise unreadable_store(path, exc) from exc
            conn.execute("COMMIT")
            yield conn
        finally:
            conn.close()


@contextlib.contextmanager
def _out_of_memory_named(memory: WriterMemory | None) -> Iterator[None]:
    """DuckDB's own out-of-memory message suggests settings of DuckDB's; the user's is
    ``store.memory_limit``. The transaction is rolled back either way (nothing half merged)."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        if memory is None:
            raise
        raise CdpError(
            f"DuckDB needed more memory than store.memory_limit allows ({resolved_limit(memory.limit) or 'DuckDB default'}) "
            f"and could not spill the rest: {str(exc).splitlines()[0]}. The merge or export was rolled back; raise "
            "store.memory_limit in store.yaml (or set it to null for DuckDB's default, 80 % of the host's memory) and "
            "re-execute the run"
        ) from exc


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
def _open_lake_writer(
    location: DuckLakeLocation, catalog: Catalog, *, threads: int | None, memory: WriterMemory | None
) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = connect_lake(location, read_only=False, threads=threads)
    spill_folder = None
    try:
        spill_folder = limit_memory(conn, memory, None)

        def bring_up_to_date() -> None:
            conn.execute("BEGIN")
            try:
                ensure_schema(conn, catalog)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise

        # Two writers opening a new lake both create its tables: one commits, the other finds them.
        retry_write_conflicts(bring_up_to_date, location.settings.write_attempts, what="bringing the lake's schema up to date")
        yield conn
    finally:
        conn.close()
        if spill_folder is not None:
            shutil.rmtree(spill_folder, ignore_errors=True)


@contextlib.contextmanager
def open_reader(path: Path | DuckLakeLocation, *, lock_wait_seconds: float = 120) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(path, DuckLakeLocation):
        conn = connect_lake(path, read_only=True)
    else:
        conn = _connect(path, read_only=True, threads=None, lock_wait_seconds=lock_wait_seconds)
    try:
        yield conn
    finally:
        conn.close()


def fetch_row(conn: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any] | dict[str, Any] | None = None) -> tuple[Any, ...]:
    """The one row an aggregate query returns. DuckDB types ``fetchone`` as optional; an aggregate
    without GROUP BY always yields a row, so a missing one is a broken query, not an empty table."""
    row = conn.execute(sql, parameters or []).fetchone()
    if row is None:
        raise RuntimeError(f"the store query returned no row: {sql.strip()[:120]}")
    return row
