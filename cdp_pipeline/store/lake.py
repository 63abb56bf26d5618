"""The DuckLake backend: the store's tables in a lake whose catalog is a PostgreSQL database and
whose data files are Parquet on S3 (or in a shared folder), so several hosts write and read it.

The same SQL runs on both backends: the connection attaches the lake and makes it the default
catalog (``USE``), and temporary tables stay in the connection's own memory. What differs is
gathered here behind four calls the merge makes, each a no-op on a DuckDB file:

* ``claim_write_turn``: DuckLake has no unique constraints, and two transactions that only append
  both commit. Two writers creating the same new profile would then both insert it. Every merge
  therefore also updates the one row of ``write_turn``; DuckLake refuses the second of two
  overlapping commits that changed the same table, so of two concurrent merges one commits and
  the other is retried against its result (``retry_write_conflicts``).
* ``mark_commit`` names the delivery in the snapshot's commit message, and ``record_snapshot_ids``
  writes the snapshot id into the ledger once the merge committed (``deliveries.lake_snapshot_id``).

DuckDB cannot download extensions here, so they come from the ``duckdb-extension-*`` wheels (the
``ducklake`` extra), which are built for exactly one DuckDB version, and are loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import duckdb

from cdp_pipeline.config.ducklake import DuckLakeLocation
from cdp_pipeline.errors import CdpError, ConfigError, TransientError
from cdp_pipeline.private_files import private_directory
from cdp_pipeline.store.conflicts import retry_on_conflict
from cdp_pipeline.store.schema import is_lake, literal

#: the name the lake is attached under; analysts may use any name.
LAKE_ALIAS = "lake"
COMMIT_AUTHOR = "cdp_pipeline"

T = TypeVar("T")
#: lake writers collide often and commit quickly: the first retry waits little.
LAKE_FIRST_DELAY_SECONDS = 0.05


class LakeUnavailableError(CdpError):
    """The lake's catalog or data files cannot be reached, or DuckDB cannot load DuckLake."""


def extension_file(name: str) -> Path:
    """The extension file of the ``duckdb-extension-<name>`` wheel for the running DuckDB."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    version = f"v{duckdb.__version__}"
    candidate = folder / "extensions" / version / f"{name}.duckdb_extension" if folder else None
    if candidate is None or not candidate.exists():
        found = sorted(p.name for p in (folder / "extensions").iterdir()) if folder and (folder / "extensions").exists() else []
        raise LakeUnavailableError(
            f"store.backend ducklake needs the DuckDB extension {name!r} built for DuckDB {duckdb.__version__}"
            + (f" (installed: built for {', '.join(found)})" if found else " (not installed)")
            + ". Install the project's ducklake extra (pip install 'cdp_pipeline[ducklake]'), which pins DuckDB to the version "
            "its extension wheels are built for"
        )
    return candidate


def _load(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    conn.execute(f"LOAD {literal(str(extension_file(name)))}")


def _secret_env(name: str | None, what: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"store.ducklake.s3.{what}: environment variable {name} is not set")
    return value


def _attach_sql(location: DuckLakeLocation, dsn: str, *, read_only: bool, alias: str) -> str:
    settings = location.settings
    if settings.s3 is not None:
        prefix = settings.s3.prefix.strip("/")
        data_path = f"s3://{settings.s3.bucket}/{prefix + '/' if prefix else ''}"
    else:
        data_path = str(location.data_folder).rstrip("/") + "/"
    options = [f"DATA_PATH {literal(data_path)}"]
    if read_only:
        options.append("READ_ONLY")
    return f"ATTACH {literal('ducklake:postgres:' + dsn)} AS {alias} ({', '.join(options)})"


def _create_s3_secret(conn: duckdb.DuckDBPyConnection, location: DuckLakeLocation) -> None:
    s3 = location.settings.s3
    if s3 is None:
        return
    _load(conn, "httpfs")
    parts = ["TYPE s3", f"REGION {literal(s3.region)}", f"URL_STYLE {literal('path' if s3.path_style else 'vhost')}"]
    key_id = _secret_env(s3.access_key_id_env, "access_key_id_env")
    secret = _secret_env(s3.secret_access_key_env, "secret_access_key_env")
    if key_id and secret:
        parts += [f"KEY_ID {literal(key_id)}", f"SECRET {literal(secret)}"]
    else:
        parts.append("PROVIDER credential_chain")
    if s3.endpoint_url:
        scheme, _, host = s3.endpoint_url.partition("://")
        parts += [f"ENDPOINT {literal(host.rstrip('/'))}", f"USE_SSL {'true' if scheme == 'https' else 'false'}"]
    # A temporary secret: it lives in this connection's memory only, never in a file.
    conn.execute(f"CREATE OR REPLACE TEMPORARY SECRET cdp_lake_s3 ({', '.join(parts)})")


def _without(text: str, secret: str) -> str:
    return text.replace(secret, "<catalog connection string>") if secret else text


def _attach(conn: duckdb.DuckDBPyConnection, sql: str, attempts: int = 5) -> None:
    """Attach; two writers that attach a new lake at once both create its catalog tables, and the
    slower one fails on PostgreSQL's unique index ("duplicate key") or, when its CREATE comes
    after the other's commit, on the table itself ("already exists"). The catalog exists by
    then: attach again."""
    for attempt in range(1, attempts + 1):
        try:
            conn.execute(sql)
            return
        except duckdb.Error as exc:
            if attempt == attempts or not any(race in str(exc) for race in ("duplicate key", "already exists")):
                raise
            time.sleep(0.2 * attempt)


def connect_lake(location: DuckLakeLocation, *, read_only: bool, threads: int | None = None, alias: str = LAKE_ALIAS) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB session with the lake attached (as ``alias``) and made the default catalog.
    The merge's own calls name the lake ``lake``; readers may choose another name."""
    variable = location.settings.catalog_dsn_env
    dsn = os.environ.get(variable, "")
    if not dsn:
        raise ConfigError(f"store.ducklake.catalog_dsn_env: environment variable {variable} is not set (the catalog database's connection string)")
    config: dict[str, str | bool | int | float | list[str]] = {"threads": threads} if threads else {}
    # Nothing may be fetched at run time (there is no extension server to reach).
    config["autoinstall_known_extensions"] = False
    config["autoload_known_extensions"] = False
    conn = duckdb.connect(":memory:", config=config)
    try:
        _load(conn, "ducklake")
        _load(conn, "postgres_scanner")
        _create_s3_secret(conn, location)
        if location.data_folder is not None and not read_only and not location.data_folder.exists():
            private_directory(location.data_folder)
        _attach(conn, _attach_sql(location, dsn, read_only=read_only, alias=alias))
        conn.execute(f"USE {alias}")
    except duckdb.Error as exc:
        conn.close()
        # libpq and DuckDB may quote the connection string back; the password must not reach a log.
        first = _without(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, dsn)
        raise TransientError(
            f"the DuckLake store cannot be attached (catalog from ${variable}): {first}. Check that the catalog database "
            "is reachable and the data path exists and is writable; the run retries"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK after a failed statement. A COMMIT that failed (DuckLake's write conflict, a full
    disk) has already ended the transaction; a ROLLBACK then fails with "no transaction is active",
    and raising that would hide why the commit failed."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise


def retry_write_conflicts(step: Callable[[], T], attempts: int, *, what: str) -> T:
    """``step`` (one whole transaction) run again while another writer's commit refuses it, at most
    ``attempts`` times (``store.ducklake.write_attempts``), with a short first wait: lake writers
    retry often."""
    return retry_on_conflict(step, what=what, attempts=attempts, first_delay=LAKE_FIRST_DELAY_SECONDS)


def claim_write_turn(conn: duckdb.DuckDBPyConnection) -> None:
    """Inside a merge transaction: on a lake, make this transaction conflict with every other
    merge that overlaps it (see the module docstring). Nothing on a DuckDB file, whose single
    writer already excludes overlapping merges."""
    if is_lake(conn):
        conn.execute("UPDATE write_turn SET turn = turn + 1")


def mark_commit(conn: duckdb.DuckDBPyConnection, delivery_id: str, merged_at: datetime) -> None:
    """Name the delivery in the lake snapshot its merge commits (read by ``record_snapshot_ids``)."""
    if is_lake(conn):
        info = json.dumps({"delivery_id": delivery_id, "merged_at": merged_at.isoformat(sep=" ")})
        conn.execute(
            f"CALL {LAKE_ALIAS}.set_commit_message({literal(COMMIT_AUTHOR)}, $message, extra_info => $info)",
            {"message": f"merge of delivery {delivery_id}", "info": info},
        )


def record_snapshot_ids(conn: duckdb.DuckDBPyConnection, attempts: int = 30) -> None:
    """Write each merged delivery's snapshot id into the ledger (``deliveries.lake_snapshot_id``).
    A separate transaction, after the merge committed (its snapshot id exists only then); one that
    was not written (a crash in between) is filled in by the next merge's."""
    if not is_lake(conn):
        return

    def fill() -> None:
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute("UPDATE write_turn SET turn = turn + 1")
            conn.execute(
                f"""
                UPDATE deliveries AS d SET lake_snapshot_id = s.snapshot_id
                FROM (SELECT snapshot_id, CAST(commit_extra_info AS JSON) AS info FROM {LAKE_ALIAS}.snapshots()
                      WHERE author = {literal(COMMIT_AUTHOR)}) s
                WHERE d.lake_snapshot_id IS NULL AND d.delivery_id = json_extract_string(s.info, '$.delivery_id')
                  AND d.merged_at = CAST(json_extract_string(s.info, '$.merged_at') AS TIMESTAMP)
                """
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    retry_write_conflicts(fill, attempts, what="recording the lake snapshot ids of merged deliveries")
