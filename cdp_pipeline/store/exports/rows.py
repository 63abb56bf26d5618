"""The rows of the profile file: one row per profile that leaves, every cell already the text
written, after the goal's data processors (in SQL, or in Polars over batches when the chain holds a
``custom`` processor) and the formula guard, in file order, with a row hash in diff mode."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.errors import ConfigError, InputError
from cdp_pipeline.store.exports.columns import ExportColumn, cell_names, export_columns, formula_guarded
from cdp_pipeline.store.exports.files import check_unquoted

# The processors (and Polars under them) are imported only by a goal that has processors: an
# export without them, the common case, does not pay for loading Polars.

#: rows handed to Polars at a time when a custom processor runs (memory stays bounded by it).
POLARS_BATCH_ROWS = 100_000


def base_sql(columns: list[ExportColumn], joins: list[str], *, include_unchanged: bool, numbered: bool) -> str:
    cells = ", ".join(f"{c.expression} AS {name}" for c, name in zip(columns, cell_names(len(columns)), strict=True))
    # _rn only where batches need it (the Polars path): it costs a sort of every row.
    rn = "row_number() OVER (ORDER BY p.profile_id) AS _rn, " if numbered else ""
    return f"""
        SELECT {rn}p.profile_id AS _profile_id, e.changed AS _changed, {cells}
        FROM export_candidates e JOIN profiles p ON p.profile_id = e.profile_id
        {''.join(joins)}
        {'' if include_unchanged else 'WHERE e.changed'}
    """


def build_export_rows(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    goal: ExportGoal,
    *,
    run_time: datetime,
    consent_property: str | None,
    include_unchanged: bool,
    use_polars: bool | None = None,
) -> int:
    """Fill ``export_rows(_profile_id, _changed, c1 … cN, [_hash])`` and return the
    number of rows of the profile file (changed rows that the processors kept).

    ``include_unchanged`` (diff mode) also builds the rows of unchanged candidates, because the
    diff compares every available profile with the previous export. ``use_polars`` forces the
    Polars path for built-in processors (tests compare both paths); by default only a chain with
    a ``custom`` processor takes it.
    """
    columns, joins = export_columns(catalog, goal, consent_property)
    names = cell_names(len(columns))
    if goal.processors:
        from cdp_pipeline.tables.processors import processors_in_sql

        if use_polars is None:
            use_polars = not processors_in_sql(goal.processors)
    use_polars = bool(use_polars) and bool(goal.processors)
    base = base_sql(columns, joins, include_unchanged=include_unchanged, numbered=use_polars)
    params: dict[str, Any] = {}
    if not goal.processors:
        processed = base
    elif use_polars:
        _process_with_polars(conn, goal, columns, base, run_time)
        processed = "SELECT * FROM export_processed"
    else:
        processed = _processors_sql(goal, columns, base, run_time, params)
    # The guard comes last, after the processors: a processor may write a formula-like value.
    # Without processors a stored number's text is left alone by the guard: not evaluated.
    cells = ", ".join(
        f"{formula_guarded(name, typed=column.typed) if goal.formula_guard and (goal.processors or not column.never_formula) else name} AS {name}"
        for column, name in zip(columns, names, strict=True)
    )
    # The diff compares what the consumer received: the hash is over the cells as written.
    row_hash = f", md5(to_json(list_value({', '.join(names)}))) AS _hash" if goal.diff else ""
    # Sorted once, changed rows first: rowid 0 … rows-1 are then the profile file's rows in
    # profile id order, and each part is a rowid range (a cheap range scan, no window function,
    # which measured ~4x slower over wide rows).
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE export_rows AS
        SELECT _profile_id, _changed, {cells}{row_hash} FROM ({processed})
        ORDER BY _changed DESC, _profile_id
        """,
        params,
    )
    conn.execute("DROP TABLE IF EXISTS export_processed")
    check_unquoted(conn, goal, "export_rows", [(name, c.header) for c, name in zip(columns, names, strict=True)], f"export goal {goal.name!r}")
    [(rows,)] = conn.execute("SELECT count(*) FROM export_rows WHERE _changed").fetchall()
    return rows


def _processors_sql(goal: ExportGoal, columns: list[ExportColumn], base: str, run_time: datetime, params: dict[str, Any]) -> str:
    """The goal's chain in SQL over ``base``: processors name the export's headers, which stand
    for the columns ``c1 … cN`` (a repeated header for each of its columns)."""
    from cdp_pipeline.tables.processors import processors_sql

    by_header: dict[str, list[str]] = {}
    for column, name in zip(columns, cell_names(len(columns)), strict=True):
        by_header.setdefault(column.header, []).append(name)
    return processors_sql(goal.processors, base, columns=by_header, run_time=run_time, subject=f"export goal {goal.name!r}", params=params)


def _process_with_polars(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, columns: list[ExportColumn], base: str, run_time: datetime) -> None:
    """Run the whole chain with the import's Polars processors over batches of
    ``POLARS_BATCH_ROWS`` rows into ``export_processed``. Used when a ``custom`` processor is
    present; a custom processor therefore sees one batch at a time (document it for authors)."""
    import polars as pl

    from cdp_pipeline.tables.processors import apply_processors

    headers = [c.header for c in columns]
    names = cell_names(len(columns))
    reserved = {"_rn", "_profile_id", "_changed"}
    if len(set(headers)) != len(headers) or reserved & set(headers):
        raise ConfigError(
            f"export goal {goal.name!r}: a custom processor needs unique column headers other than {sorted(reserved)}; "
            f"got {headers}"
        )
    conn.execute(f"CREATE OR REPLACE TEMP TABLE export_base AS {base}")
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE export_processed (_rn BIGINT, _profile_id VARCHAR, _changed BOOLEAN, "
        f"{', '.join(f'{n} VARCHAR' for n in names)})"
    )
    # fetchall: a half-read result (fetchone) blocks conn.sql/register on DuckDB 2.
    [(total,)] = conn.execute("SELECT count(*) FROM export_base").fetchall()
    to_headers = dict(zip(names, headers, strict=True))
    to_names = dict(zip(headers, names, strict=True))
    try:
        for start in range(0, total, POLARS_BATCH_ROWS):
            # A relation, not a DB-API result: DuckDB hands the batch to Polars without an extra copy.
            batch = conn.sql(
                "SELECT * FROM export_base WHERE _rn > $a AND _rn <= $b ORDER BY _rn", params={"a": start, "b": start + POLARS_BATCH_ROWS}
            ).pl()
            lf = apply_processors(batch.rename(to_headers).lazy(), goal.processors, display_name=f"export goal {goal.name!r}", run_time=run_time)
            out = lf.collect()
            missing = [h for h in ["_rn", "_profile_id", "_changed", *headers] if h not in out.columns]
            if missing:
                raise ConfigError(f"export goal {goal.name!r}: the processors removed columns {missing}; processors must keep every column")
            # Cells are text: a date written by current_date prints like a stored date or datetime.
            out = out.select(
                "_rn",
                "_profile_id",
                "_changed",
                *[
                    (pl.col(h).dt.strftime("%Y-%m-%d %H:%M:%S") if out.schema[h] == pl.Datetime else pl.col(h).cast(pl.String)).alias(to_names[h])
                    for h in headers
                ],
            )
            conn.register("export_batch", out)
            try:
                batch_columns = ", ".join(["_rn", "_profile_id", "_changed", *names])
                conn.execute(f"INSERT INTO export_processed ({batch_columns}) SELECT {batch_columns} FROM export_batch")
            finally:
                conn.unregister("export_batch")
    except InputError as exc:
        raise ConfigError(f"export goal {goal.name!r}: {exc}") from exc
    finally:
        conn.execute("DROP TABLE IF EXISTS export_base")
