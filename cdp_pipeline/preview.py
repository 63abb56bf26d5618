"""Preview a connection: the files its source holds per goal, and what importing one delivery
would do to the store, without doing it ("Scan now" plus a dry run).

A person setting up a partner's drop wants to see what the first file would do before it
changes the store: the store is only read (the analysts' copy when there is one, so a running
merge is never blocked), the remote files are only listed and downloaded (never renamed, moved
or deleted), and the private work folder the delivery was read into is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from cdp_pipeline import importing
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.ducklake import DuckLakeLocation
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.connection_check import open_transport
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.deliveries import Delivery, Discovery, partition_key, split_partition_key
from cdp_pipeline.errors import InputError, InputProblem, UnknownName
from cdp_pipeline.store.lake import connect_lake
from cdp_pipeline.store.ledger import merged_file_identities
from cdp_pipeline.store.schema import event_table, group_table
from cdp_pipeline.tables.staged import KEY, KEY_INDEX, StagedImport, records_as_stored
from cdp_pipeline.transports.base import Transport, is_temporary_upload


@dataclass
class GoalFiles:
    """What one import goal's folder holds, as ``run`` would see it now."""

    goal: str
    directory: str
    complete: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass
class DryRun:
    """What merging one delivery would do, computed from its staged tables and a read of the store."""

    delivery: str
    files: list[str]
    rows_read: int
    rows_rejected: int
    values_not_imported: int
    rejects: list[InputProblem]
    compared_with: str
    would_create: int
    would_match: int
    would_ignore: int
    #: event type → (rows, of which already stored)
    events: dict[str, tuple[int, int]]
    first_rows: pl.DataFrame
    warnings: list[str] = field(default_factory=list)
    failed: InputError | None = None


def goal_files(transport: Transport, project: ProjectConfig, connection: Connection, found: Discovery) -> list[GoalFiles]:
    merged = set(found.already_merged)
    listed: dict[str, list[str]] = {}
    result: list[GoalFiles] = []
    sources = [item.source for item in found.scans]
    for item in found.scans:
        goal = item.source.listing_goal
        directory = goal.files.directory
        if directory not in listed:
            listed[directory] = sorted(f.name for f in transport.list_files(directory))
        files = GoalFiles(goal=item.source.goal_name, directory=directory, waiting=list(item.scan.waiting) + list(item.scan.problems))
        for delivery in item.scan.deliveries:
            names = ", ".join(sorted(f.name for f in delivery.files.values()))
            (files.merged if delivery.partition_key in merged else files.complete).append(f"{delivery.partition_key} ({names})")
        for name in listed[directory]:
            if is_temporary_upload(name):
                files.ignored.append(f"{name}: an upload in progress (temporary name)")
            elif not item.source.claims(name) and not any(other.claims(name) for other in sources if other is not item.source):
                files.ignored.append(f"{name}: matches none of the file patterns of the goals reading {directory or '.'}")
        result.append(files)
    return result


def _keyring_factory(connection: Connection):
    """The keyring an import would use, from the same variables: the decryption keys and, when the
    connection pins a signer, its key, so a preview refuses what the import would refuse."""
    pgp = connection.pgp
    if pgp is None or not pgp.private_keys_env:
        return None
    keys = [os.environ[name] for name in pgp.private_keys_env if os.environ.get(name)]
    if not keys:
        return None

    def variable(name: str | None) -> str | None:
        return os.environ.get(name) or None if name else None

    return lambda: PgpKeyring(
        private_keys=keys,
        passphrase=variable(pgp.passphrase_env),
        public_key=variable(pgp.public_key_env),
        public_key_fingerprint=pgp.public_key_fingerprint,
        signer_public_key=variable(pgp.signer_public_key_env),
        signer_fingerprint=pgp.signer_fingerprint,
    )


@contextmanager
def _private_work_dir(project: ProjectConfig) -> Iterator[Path]:
    """A fresh folder beside the pipeline's own work folders (same disk, same 0700 privacy, as it
    holds plaintext customer data), removed whatever happens."""
    project.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="preview-", dir=project.work_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _store_reader(project: ProjectConfig) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """An in-memory session with the store attached read-only as ``store``, when there is one.
    The analysts' copy is preferred: a read-only session on the live store would block a merge."""
    location = project.store_location
    if isinstance(location, DuckLakeLocation):
        # A lake is read at its latest snapshot; a reader never holds up its writers.
        lake = connect_lake(location, read_only=True, alias="store")
        try:
            yield lake, "the DuckLake store (latest snapshot)"
        finally:
            lake.close()
        return
    conn = duckdb.connect()
    try:
        published = project.published_store_path
        source = published if published is not None and published.exists() else project.store_path
        if source.exists():
            conn.execute(f"ATTACH '{source.as_posix().replace(chr(39), chr(39) * 2)}' AS store (READ_ONLY)")
            yield conn, str(source)
        else:
            yield conn, "no store yet (every profile would be new)"
    finally:
        conn.close()


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'").fetchall()
    rows += conn.execute("SELECT view_name FROM duckdb_views() WHERE database_name = 'store'").fetchall()
    return {name for (name,) in rows}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _match_counts(conn: duckdb.DuckDBPyConnection, staged: StagedImport, tables: set[str]) -> tuple[int, int, int]:
    """(would create, would match an existing row, would be ignored): a record matches when the
    value of the identifier it is keyed on is stored (the merge tries identifiers in declared
    order; a record carries one key). Several records finding the same profile count once each."""
    records = staged.records
    if KEY_INDEX not in records.columns:
        records = records.with_columns(pl.lit(0, dtype=pl.Int32).alias(KEY_INDEX))
    table = "profiles" if staged.target == "profiles" else group_table(staged.group_type or "")
    id_column = "profile_id" if staged.target == "profiles" else "group_id"
    conn.register("preview_records", records.select(KEY, KEY_INDEX))
    if table in tables:
        conditions = [
            f"(r.{_q(KEY_INDEX)} = {index} AND EXISTS (SELECT 1 FROM store.{_q(table)} s "
            f"WHERE CAST(s.{_q(ident if ident != 'profile_id' else id_column)} AS VARCHAR) = CAST(r.{_q(KEY)} AS VARCHAR)))"
            for index, ident in enumerate(staged.identifier_properties)
        ]
        matched_sql = " OR ".join(conditions)
    else:
        matched_sql = "FALSE"
    [(total, matched)] = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE {matched_sql}) FROM preview_records r").fetchall()
    conn.unregister("preview_records")
    unmatched = total - matched
    return (unmatched, matched, 0) if staged.allow_create else (0, matched, unmatched)


def _event_counts(conn: duckdb.DuckDBPyConnection, staged: StagedImport, tables: set[str]) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for event_type, frame in staged.events.items():
        stored = 0
        if event_table(event_type) in tables and "event_id" in frame.columns:
            conn.register("preview_events", frame.select("event_id"))
            [(stored,)] = conn.execute(
                f"SELECT count(*) FROM preview_events e WHERE e.event_id IN (SELECT event_id FROM store.{_q(event_table(event_type))})"
            ).fetchall()
            conn.unregister("preview_events")
        counts[event_type] = (frame.height, stored)
    return counts


def pick_delivery(found: Discovery, goal: str | None, named: str | None) -> Delivery | None:
    """The delivery to dry-run: the one named (goal:file), else the first complete one of the goal
    (or of the connection), merged or not."""
    deliveries = [d for item in found.scans for d in item.scan.deliveries]
    if named is not None:
        goal_name, root = split_partition_key(named)
        for delivery in deliveries:
            if delivery.partition_key == partition_key(goal_name, root):
                return delivery
        raise UnknownName.of("complete delivery", named, [d.partition_key for d in deliveries])
    for delivery in deliveries:
        if goal is None or delivery.goal == goal:
            return delivery
    return None


def dry_run(project: ProjectConfig, connection: Connection, transport: Transport, delivery: Delivery, rows: int = 5) -> DryRun:
    """Fetch, decrypt and stage the delivery into a temporary work folder, then compare with the store."""
    goal = importing.goal_for(project, connection, delivery.goal)
    files = sorted(f.path for f in delivery.files.values())
    with _private_work_dir(project) as work_dir:
        importing.fetch_delivery(transport, delivery, work_dir, connection.max_file_bytes)
        importing.decrypt_delivery(work_dir, _keyring_factory(connection), connection.max_file_bytes)
        try:
            staged = importing.stage_delivery(project, connection, goal, work_dir, datetime.now(UTC))
        except InputError as error:
            return DryRun(
                delivery=delivery.partition_key, files=files, rows_read=0, rows_rejected=len(error.problems), values_not_imported=0,
                rejects=error.problems, compared_with="", would_create=0, would_match=0, would_ignore=0, events={},
                first_rows=pl.DataFrame(), failed=error,
            )
    with _store_reader(project) as (conn, compared_with):
        tables = _tables(conn)
        create, match, ignore = _match_counts(conn, staged, tables)
        events = _event_counts(conn, staged, tables)
    first = records_as_stored(staged, rows)
    return DryRun(
        delivery=delivery.partition_key, files=files, rows_read=staged.rows_read,
        rows_rejected=staged.rows_rejected if staged.rows_rejected is not None else len(staged.rejects),
        values_not_imported=staged.values_not_imported, rejects=staged.rejects, compared_with=compared_with,
        would_create=create, would_match=match, would_ignore=ignore, events=events, first_rows=first, warnings=staged.warnings,
    )


def preview(
    project: ProjectConfig, connection_name: str, goal: str | None = None, delivery: str | None = None, *, rows: int = 5
) -> tuple[list[GoalFiles], DryRun | None]:
    """The files per goal, and the dry run of the chosen delivery (None when none is complete)."""
    connection = project.connections.get(connection_name)
    if connection is None:
        raise UnknownName.of("connection", connection_name, list(project.connections))
    goals = [source.goal_name for source in importing.connection_sources(project, connection)]
    if goal is not None and goal not in goals:
        raise UnknownName.of("import goal", goal, goals)
    sources = [s for s in importing.connection_sources(project, connection) if goal is None or s.goal_name == goal]
    merged = merged_file_identities(project.ledger_location, connection.name)
    from cdp_pipeline.deliveries import MergedFiles, discover

    with open_transport(project, connection.source) as transport:
        found = discover(connection.name, sources, transport, merged=MergedFiles.of(merged))
        listing = goal_files(transport, project, connection, found)
        chosen = pick_delivery(found, goal, delivery)
        result = dry_run(project, connection, transport, chosen, rows) if chosen is not None else None
    return listing, result
