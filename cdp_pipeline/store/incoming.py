"""The staged tables of a delivery as DuckDB relations for the merge.

Tables still in their Parquet files (``ParquetFrames``, what ``StagedImport.load`` gives) are
scanned in place by DuckDB, so the merge holds no Python copy of them: DuckDB alone holds the
delivery's rows while it merges, within its memory limit, and can spill them. A table a dialect
replaced by a frame of its own (or a test built in memory) is registered as that frame."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import duckdb
import polars as pl

from cdp_pipeline.store.schema import literal, quote
from cdp_pipeline.tables.staged import ParquetFrames


def _frame_name(view: str) -> str:
    return f"{view}__frame"


def staged_view(
    conn: duckdb.DuckDBPyConnection, view: str, tables: Mapping[str, pl.DataFrame], name: str, defaults: Mapping[str, str] | None = None
) -> list[str]:
    """Make the temp view ``view`` over the staged table ``name`` of ``tables`` and return its
    columns. ``defaults``: column → SQL for a hand-over column that tables staged by older code
    do not have (it may name the table's other columns)."""
    if isinstance(tables, ParquetFrames):
        path = tables.path(name)
        columns = list(pl.read_parquet_schema(path))
        source = f"read_parquet({literal(str(path))})"
    else:
        frame = tables[name]
        columns = list(frame.columns)
        conn.register(_frame_name(view), frame)
        source = quote(_frame_name(view))
    missing = {column: sql for column, sql in (defaults or {}).items() if column not in columns}
    added = "".join(f", {sql} AS {quote(column)}" for column, sql in missing.items())
    conn.execute(f"CREATE OR REPLACE TEMP VIEW {quote(view)} AS SELECT *{added} FROM {source}")
    return [*columns, *missing]


def drop_staged_view(conn: duckdb.DuckDBPyConnection, view: str) -> None:
    """Forget ``view`` and the frame behind it, if any: the connection outlives the delivery's
    files. Best effort: it also runs after a failed merge, on a connection that may be unusable
    by then, and must not replace that failure's error (a full disk is recognised by its text)."""
    with contextlib.suppress(duckdb.Error):
        conn.execute(f"DROP VIEW IF EXISTS {quote(view)}")
    try:
        conn.unregister(_frame_name(view))
    except Exception:  # noqa: BLE001, S110 - a Parquet file's view has no frame
        pass
