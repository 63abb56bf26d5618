"""The SQL side of an export goal: which profiles leave, with which columns, straight from DuckDB
to CSV files with ``COPY`` (streamed by DuckDB, bounded memory at 1M profiles).

The steps, each one set-based statement over temp tables of the writer connection:

1. :func:`select_profiles` fills ``export_candidates``: the segment's members that consented and
   have a value for at least one selected property, each flagged ``changed`` when it changed
   since the goal's last successful export (or always, for a full export).
2. :func:`build_export_rows` fills ``export_rows``: one row per profile that leaves, every cell
   already the text written (columns ``c1 … cN`` in declared order), after the goal's data
   processors and the formula guard, with a row number per part and, in diff mode, a row hash.
3. :func:`write_profile_parts`, :func:`write_diff_csv` and :func:`write_timeline_csvs` ``COPY``
   from those tables; :func:`save_selection` keeps what :func:`record_export` needs after the
   writer lock was released for the upload.

No value ever passes through Python row by row; processors are compiled to SQL, except a
``custom`` processor, whose chain runs through Polars over batches of rows.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.errors import ConfigError, InputError
from cdp_pipeline.store.schema import event_table, item_table, literal, quote
from cdp_pipeline.tables.processors import apply_processors, processors_in_sql, processors_sql

# Cells a spreadsheet would run as a formula (OWASP/ASVS 1.2.10 list plus CR); prefixed with ' (#70).
_FORMULA_START = r"^[=+\-@\t\r]"
# A typed number as the export writes it (-5, -0.5, 1e-05): left alone by the guard, because a
# spreadsheet reads it as the number it is and a quote would turn it into text.
_NUMBER = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
#: rows handed to Polars at a time when a custom processor runs (memory stays bounded by it).
POLARS_BATCH_ROWS = 100_000
#: header of the first column of a diff file.
DIFF_CHANGE_COLUMN = "change"


@dataclass
class ExportSelection:
    profiles_available: int
    profiles_selected: int
    last_export_at: datetime | None


@dataclass(frozen=True)
class _Column:
    header: str
    #: SQL giving the cell as VARCHAR; may use ``p`` (profiles) and the joins of :func:`_base_sql`.
    expression: str
    #: typed numbers/dates/booleans: the guard leaves well-formed numbers alone.
    typed: bool
    #: the profile identifier: filled in the "removed" rows of a diff file.
    identifies: bool


# ---------------------------------------------------------------- cell text


def _text(expression: str, sql_type: str) -> str:
    """A stored value as the text written to the file."""
    if sql_type == "list":
        # An empty list is no value (as for the "at least one value" rule): an empty cell, not "".
        return f"nullif(array_to_string({expression}, '|'), '')"
    if sql_type == "decimal":
        # DECIMAL(18,4) prints 19.9900; consumers expect 19.99 (and 614.0 for a whole number).
        # Trimming the text keeps all 18 digits, where a detour through DOUBLE rounded values
        # above ~15 significant digits.
        return f"regexp_replace(regexp_replace(CAST({expression} AS VARCHAR), '0+$', ''), '\\.$', '.0')"
    if sql_type == "datetime":
        return f"strftime({expression}, '%Y-%m-%d %H:%M:%S')"
    return f"CAST({expression} AS VARCHAR)"


def _guard(expression: str, *, typed: bool) -> str:
    """Prefix formula-like cells with '. In a typed column (numbers, dates) a well-formed number
    such as -5 is data, not a formula, and is left alone; anything else there (a processor may
    have written text into it) is guarded like text."""
    starts = f"regexp_matches({expression}, {literal(_FORMULA_START)})"
    if typed:
        starts += f" AND NOT regexp_matches({expression}, {literal(_NUMBER)})"
    return f"CASE WHEN {starts} THEN '''' || {expression} ELSE {expression} END"


def _typed(prop: PropertyDefinition) -> bool:
    return prop.type not in ("text", "list")


# ---------------------------------------------------------------- selection


def select_profiles(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    connection: str,
    goal: ExportGoal,
    *,
    full: bool,
    consent_property: str | None,
    objectives: list[str],
) -> ExportSelection:
    """Fill the temp table ``export_candidates(profile_id, changed)``.

    Candidates are the profiles "available for the export" (the number BlueConic shows): members
    of the segment that consented to one of the connection's objectives (when it has any) and
    have a value for at least one selected property. ``changed`` marks those that leave in this
    run: all of them for a full export, the goal's first run or ``changed_only: false``, else
    those whose ``updated_at`` (moved only by a changed property value, never by a timeline
    event) is after the goal's last successful export.
    """
    if goal.segment not in catalog.segments:
        raise ConfigError(
            f"export goal {goal.name!r}: segment {goal.segment!r} is not declared in store.yaml "
            f"(declared: {', '.join(sorted(catalog.segments)) or 'none'}); fix the goal's segment or declare it"
        )
    _check_columns(catalog, goal)
    (last,) = conn.execute(
        "SELECT max(last_export_at) FROM export_state WHERE connection = $c AND goal = $g", {"c": connection, "g": goal.name}
    ).fetchone() or (None,)
    consent = "TRUE"
    if objectives and consent_property:
        prop = catalog.profile_properties.get(consent_property)
        if prop is None or prop.type != "list":
            raise ConfigError(
                f"export goal {goal.name!r}: the connection has objectives {objectives} but the consent property "
                f"{consent_property!r} is not a list property in store.yaml; declare it (type: list) so consent can be checked"
            )
        consent = f"coalesce(list_has_any(p.{quote(consent_property)}, [{', '.join(literal(o) for o in objectives)}]), FALSE)"
    values = []
    for column in goal.columns:
        if column.property is None:
            continue
        prop = catalog.profile_properties[column.property]
        if prop.type == "list":
            values.append(f"len(p.{quote(column.property)}) > 0")  # an empty list is no value
        elif prop.type == "text":
            values.append(f"p.{quote(column.property)} <> ''")
        else:
            values.append(f"p.{quote(column.property)} IS NOT NULL")
    has_value = " OR ".join(f"coalesce({v}, FALSE)" for v in dict.fromkeys(values)) or "TRUE"
    everything = full or not goal.changed_only or last is None
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE export_candidates AS
        SELECT p.profile_id, {'TRUE' if everything else 'p.updated_at > $last'} AS changed
        FROM profiles p
        WHERE p.profile_id IN (SELECT profile_id FROM segment_members WHERE segment = $segment)
          AND ({consent}) AND ({has_value})
        """,
        {"segment": goal.segment, **({} if everything else {"last": last})},
    )
    available, selected = conn.execute("SELECT count(*), count(*) FILTER (WHERE changed) FROM export_candidates").fetchone()
    return ExportSelection(profiles_available=available, profiles_selected=selected, last_export_at=last)


def _check_columns(catalog: Catalog, goal: ExportGoal) -> None:
    for index, column in enumerate(goal.columns):
        where = f"export goal {goal.name!r}: columns.{index} ({column.header!r})"
        if column.property is not None and column.property not in catalog.profile_properties:
            raise ConfigError(f"{where}: property {column.property!r} is not declared in store.yaml; fix the name or declare it")
        if isinstance(column.segments, list):
            unknown = [s for s in column.segments if s not in catalog.segments]
            if unknown:
                raise ConfigError(f"{where}: unknown segments {unknown}; declared: {', '.join(sorted(catalog.segments))}")


# ---------------------------------------------------------------- the rows of the file


def _columns(catalog: Catalog, goal: ExportGoal, consent_property: str | None) -> tuple[list[_Column], list[str]]:
    """The output columns and the LEFT JOINs they need.

    Segments and lifecycles come from one pivot per table: a GROUP BY profile with one flag (or
    stage) per name, joined once, then concatenated in name order. Measured at 1M profiles this
    is several times faster than ``string_agg(… ORDER BY …)``, which sorts within every group.
    """
    columns: list[_Column] = []
    segment_names = sorted(
        {name for c in goal.columns if c.segments is not None for name in (catalog.segments if c.segments == "all" else c.segments)}
    )
    lifecycle_names = sorted(catalog.lifecycles)
    joins: list[str] = []
    if segment_names:
        flags = ", ".join(f"bool_or(segment = {literal(name)}) AS m{i}" for i, name in enumerate(segment_names))
        joins.append(
            f"""
            LEFT JOIN (SELECT profile_id, {flags} FROM segment_members
                       WHERE segment IN ({', '.join(literal(n) for n in segment_names)}) GROUP BY profile_id) sg ON sg.profile_id = p.profile_id"""
        )
    if lifecycle_names and any(c.lifecycles for c in goal.columns):
        stages = ", ".join(f"any_value(stage) FILTER (WHERE lifecycle = {literal(name)}) AS s{i}" for i, name in enumerate(lifecycle_names))
        joins.append(
            f"""
            LEFT JOIN (SELECT profile_id, {stages} FROM lifecycle_members
                       WHERE lifecycle IN ({', '.join(literal(n) for n in lifecycle_names)}) GROUP BY profile_id) lc ON lc.profile_id = p.profile_id"""
        )
    for column in goal.columns:
        kind = column.kind
        typed, identifies = False, False
        if kind == "property":
            prop = catalog.profile_properties[column.property]
            expression, typed = _text(f"p.{quote(column.property)}", prop.type), _typed(prop)
        elif kind == "profile_id":
            expression, identifies = "p.profile_id", True
        elif kind == "segments":
            chosen = set(catalog.segments if column.segments == "all" else column.segments)
            parts = [f"CASE WHEN sg.m{i} THEN {literal(name)} END" for i, name in enumerate(segment_names) if name in chosen]
            # concat_ws skips NULLs; no membership at all is an empty cell, not "".
            expression = f"nullif(concat_ws('|', {', '.join(parts)}), '')" if parts else "CAST(NULL AS VARCHAR)"
        elif kind == "lifecycles":
            parts = [f"{literal(name + ':')} || lc.s{i}" for i, name in enumerate(lifecycle_names)]
            expression = f"nullif(concat_ws('|', {', '.join(parts)}), '')" if parts else "CAST(NULL AS VARCHAR)"
        elif kind == "permission_level":
            expression = _permission_level(catalog, consent_property)
        elif kind == "text":
            expression = literal(column.text or "")
        else:
            # viewed_interactions: the store keeps no web interactions (only file imports feed it),
            # so the column is written empty and files keep the layout a BlueConic consumer expects.
            expression = "CAST(NULL AS VARCHAR)"
        columns.append(_Column(column.header, expression, typed, identifies))
    return columns, joins


def _permission_level(catalog: Catalog, consent_property: str | None) -> str:
    """BlueConic's per-profile permission level has no source in a file-fed store. It is taken
    from a declared profile property ``permission_level`` when there is one, else derived from
    consent: ``personal`` when the profile consented to at least one objective of store.yaml,
    ``anonymous`` otherwise; empty when neither a consent property nor objectives are declared."""
    if "permission_level" in catalog.profile_properties:
        return _text("p.permission_level", catalog.profile_properties["permission_level"].type)
    prop = catalog.profile_properties.get(consent_property or "")
    if prop is None or prop.type != "list" or not catalog.objectives:
        return "CAST(NULL AS VARCHAR)"
    objectives = ", ".join(literal(o) for o in catalog.objectives)
    return f"CASE WHEN coalesce(list_has_any(p.{quote(consent_property)}, [{objectives}]), FALSE) THEN 'personal' ELSE 'anonymous' END"


def _names(count: int) -> list[str]:
    return [f"c{i}" for i in range(1, count + 1)]


def _base_sql(columns: list[_Column], joins: list[str], *, include_unchanged: bool, numbered: bool) -> str:
    cells = ", ".join(f"{c.expression} AS {name}" for c, name in zip(columns, _names(len(columns))))
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
    columns, joins = _columns(catalog, goal, consent_property)
    names = _names(len(columns))
    if use_polars is None:
        use_polars = not processors_in_sql(goal.processors)
    use_polars = use_polars and bool(goal.processors)
    base = _base_sql(columns, joins, include_unchanged=include_unchanged, numbered=use_polars)
    params: dict[str, Any] = {}
    if not goal.processors:
        processed = base
    elif use_polars:
        _process_with_polars(conn, goal, columns, base, run_time)
        processed = "SELECT * FROM export_processed"
    else:
        processed = _processors_sql(goal, columns, base, run_time, params)
    # The guard comes last, after the processors: a processor may write a formula-like value.
    cells = ", ".join(
        f"{_guard(name, typed=column.typed) if goal.formula_guard else name} AS {name}" for column, name in zip(columns, names)
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
    _check_unquoted(conn, goal, "export_rows", [(name, c.header) for c, name in zip(columns, names)], f"export goal {goal.name!r}")
    (rows,) = conn.execute("SELECT count(*) FROM export_rows WHERE _changed").fetchone()
    return rows


def _processors_sql(goal: ExportGoal, columns: list[_Column], base: str, run_time: datetime, params: dict[str, Any]) -> str:
    """The goal's chain in SQL over ``base``: processors name the export's headers, which stand
    for the columns ``c1 … cN`` (a repeated header for each of its columns)."""
    by_header: dict[str, list[str]] = {}
    for column, name in zip(columns, _names(len(columns)), strict=True):
        by_header.setdefault(column.header, []).append(name)
    return processors_sql(goal.processors, base, columns=by_header, run_time=run_time, subject=f"export goal {goal.name!r}", params=params)


def _process_with_polars(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, columns: list[_Column], base: str, run_time: datetime) -> None:
    """Run the whole chain with the import's Polars processors over batches of
    ``POLARS_BATCH_ROWS`` rows into ``export_processed``. Used when a ``custom`` processor is
    present; a custom processor therefore sees one batch at a time (document it for authors)."""
    headers = [c.header for c in columns]
    names = _names(len(columns))
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
    to_headers = dict(zip(names, headers))
    to_names = dict(zip(headers, names))
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


def _check_unquoted(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, relation: str, columns: list[tuple[str, str]], what: str) -> None:
    """Without a quote character a cell holding the delimiter or a line break would shift or
    split the row in the consumer's reader: refuse the export instead of writing a broken file.
    The message names the column, never the value (reliability #75)."""
    if goal.csv.quote_char or not columns:
        return
    bad = " OR ".join(
        f"contains({name}, {literal(goal.csv.delimiter)}) OR contains({name}, chr(10)) OR contains({name}, chr(13))" for name, _ in columns
    )
    counts = ", ".join(
        f"count(*) FILTER (WHERE contains({name}, {literal(goal.csv.delimiter)}) OR contains({name}, chr(10)) OR contains({name}, chr(13)))"
        for name, _ in columns
    )
    row = conn.execute(f"SELECT {counts} FROM {relation} WHERE {bad}").fetchone()
    offending = [(header, n) for (_, header), n in zip(columns, row or []) if n]
    if offending:
        listed = ", ".join(f"{header!r} ({n} rows)" for header, n in offending)
        raise ConfigError(
            f"{what}: csv.quote_char is off, but cells of {listed} contain the delimiter {goal.csv.delimiter!r} or a line "
            "break, which would break the file; set csv.quote_char (e.g. '\"'), choose another delimiter, or add a processor "
            "that removes them"
        )


# ---------------------------------------------------------------- writing


def _copy_options(goal: ExportGoal, *, compress: bool) -> str:
    csv = goal.csv
    options = [
        f"HEADER {'true' if csv.has_header else 'false'}",
        f"DELIMITER {literal(csv.delimiter)}",
        f"QUOTE {literal(csv.quote_char or '')}",
        f"NEW_LINE {literal(chr(13) + chr(10) if csv.line_ending == 'crlf' else chr(10))}",
    ]
    if csv.escape_char:
        options.append(f"ESCAPE {literal(csv.escape_char)}")
    # Always explicit: DuckDB would otherwise infer gzip from a ".gz" file name, also when the
    # file is re-encoded (and gzipped) after the COPY.
    options.append(f"COMPRESSION {'gzip' if compress else 'none'}")
    return ", ".join(options)


def writes_utf8(goal: ExportGoal) -> bool:
    """DuckDB writes UTF-8 without a BOM; any other encoding (utf-8-sig included) is re-encoded after."""
    return codecs.lookup(goal.csv.encoding).name == "utf-8"


def _copy(conn: duckdb.DuckDBPyConnection, select: str, path: Path, goal: ExportGoal, params: dict[str, Any] | None = None) -> int:
    """COPY one query to one file; gzip by DuckDB when no re-encoding follows. Returns the rows."""
    compress = goal.target.gzip and writes_utf8(goal)
    result = conn.execute(f"COPY ({select}) TO {literal(str(path))} ({_copy_options(goal, compress=compress)})", params or {}).fetchone()
    return int(result[0]) if result else 0


def _select_cells(goal: ExportGoal, names: list[str]) -> str:
    return ", ".join(f"{name} AS {quote(column.header)}" for column, name in zip(goal.columns, names))


def write_profile_parts(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, paths: list[Path] | Path) -> list[tuple[Path, int]]:
    """COPY the profile rows: to one file, or with ``target.split_rows`` to ``paths`` (one per part,
    in order, as many as :func:`part_count` says). Rows are in profile id order across parts."""
    names = _names(len(goal.columns))
    (rows,) = conn.execute("SELECT count(*) FROM export_rows WHERE _changed").fetchone()
    # export_rows was inserted in file order, and with preserve_insertion_order (DuckDB's default,
    # pinned here) a scan without ORDER BY returns rows in that order, also in a parallel COPY.
    # An ORDER BY rowid would sort every row a second time (measured +0.3 s at 1M).
    conn.execute("SET preserve_insertion_order = true")
    select = f"SELECT {_select_cells(goal, names)} FROM export_rows WHERE rowid >= $a AND rowid < $b"
    if isinstance(paths, Path):
        return [(paths, _copy(conn, select, paths, goal, {"a": 0, "b": rows}))]
    size = goal.target.split_rows or 0
    written = []
    for index, path in enumerate(paths):
        bounds = {"a": index * size, "b": min(rows, (index + 1) * size)}
        written.append((path, _copy(conn, select, path, goal, bounds)))
    return written


def part_count(rows: int, split_rows: int) -> int:
    """Parts of a split export: at least one (an empty export still sends its header)."""
    return max(1, -(-rows // split_rows))


def write_diff_csv(conn: duckdb.DuckDBPyConnection, connection: str, goal: ExportGoal, path: Path) -> dict[str, int]:
    """``<name>.diff.csv``: a ``change`` column (added / changed / removed) then the goal's columns,
    for the profiles whose row differs from the previous export's (``export_snapshots``).

    Removed profiles (no longer available: left the segment, withdrew consent, lost their values)
    carry only their profile id columns: the store no longer has what was sent, and a consumer
    matches on the profile id (diff mode requires a profile_id column).
    """
    names = _names(len(goal.columns))
    cells = ", ".join(
        f"{'coalesce(r.' + name + ', s.profile_id)' if column.kind == 'profile_id' else 'r.' + name} AS {quote(column.header)}"
        for column, name in zip(goal.columns, names)
    )
    change = "CASE WHEN s.profile_id IS NULL THEN 'added' WHEN r._profile_id IS NULL THEN 'removed' ELSE 'changed' END"
    params = {"c": connection, "g": goal.name}
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE export_diff AS
        SELECT {change} AS _change, coalesce(r._profile_id, s.profile_id) AS _profile_id, {cells}
        FROM export_rows r
        FULL OUTER JOIN (SELECT profile_id, row_hash FROM export_snapshots WHERE connection = $c AND goal = $g) s
          ON s.profile_id = r._profile_id
        WHERE s.profile_id IS NULL OR r._profile_id IS NULL OR s.row_hash <> r._hash
        """,
        params,
    )
    headers = ", ".join(quote(c.header) for c in goal.columns)
    _copy(conn, f"SELECT _change AS {quote(DIFF_CHANGE_COLUMN)}, {headers} FROM export_diff ORDER BY _profile_id", path, goal)
    counts = dict(conn.execute("SELECT _change, count(*) FROM export_diff GROUP BY 1").fetchall())
    return {kind: int(counts.get(kind, 0)) for kind in ("added", "changed", "removed")}


def write_timeline_csvs(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    goal: ExportGoal,
    directory: Path,
    *,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, tuple[Path, int]]:
    """One CSV per event type (``order.csv``) and one per nested type (``order_line.csv``) for the
    exported profiles, events in [since, until); headers follow the event type definition.
    Keys are ``<type>`` and ``<type>/<nested type>``."""
    assert goal.timeline is not None
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    suffix = ".csv.gz" if goal.target.gzip else ".csv"
    period, params = [], {}
    if since is not None:
        period.append("e.event_time >= $since")
        params["since"] = since
    if until is not None:
        period.append("e.event_time < $until")
        params["until"] = until
    period_sql = " AND ".join(period) or "TRUE"
    event_types = goal.timeline.event_types or list(catalog.event_types)
    unknown = [t for t in event_types if t not in catalog.event_types]
    if unknown:
        raise ConfigError(
            f"export goal {goal.name!r}: timeline.event_types {unknown} are not declared in store.yaml "
            f"(declared: {', '.join(catalog.event_types) or 'none'})"
        )

    def cells(alias: str, properties: dict[str, PropertyDefinition]) -> list[str]:
        out = []
        for name, prop in properties.items():
            cell = _text(f"{alias}.{quote(name)}", prop.type)
            out.append(f"{_guard(cell, typed=_typed(prop)) if goal.formula_guard else cell} AS {quote(name)}")
        return out

    def guarded(expression: str, header: str) -> str:
        return f"{_guard(expression, typed=False) if goal.formula_guard else expression} AS {header}"

    for event_type in event_types:
        definition = catalog.event_types[event_type]
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE export_events AS
            SELECT e.* FROM {quote(event_table(event_type))} e
            WHERE e.profile_id IN (SELECT _profile_id FROM export_rows WHERE _changed) AND {period_sql}
            """,
            params,
        )
        select = ", ".join(
            [
                guarded("e.event_id", "event_id"),
                "e.profile_id",
                "strftime(e.event_time, '%Y-%m-%d %H:%M:%S') AS event_time",
                *cells("e", definition.properties),
            ]
        )
        query = f"SELECT {select} FROM export_events e ORDER BY e.event_time, e.event_id"
        _check_query_unquoted(conn, goal, query, ["event_id", *definition.properties], f"export goal {goal.name!r}, {event_type}.csv")
        path = directory / f"{event_type}{suffix}"
        written[event_type] = (path, _copy(conn, query, path, goal))
        for nested_type, nested in definition.nested.items():
            select = ", ".join([guarded("i.event_id", "event_id"), "i.item_index", *cells("i", nested.properties)])
            query = f"""
                SELECT {select} FROM {quote(item_table(event_type, nested_type))} i
                JOIN export_events e ON e.event_id = i.event_id ORDER BY e.event_time, i.event_id, i.item_index
            """
            _check_query_unquoted(conn, goal, query, ["event_id", *nested.properties], f"export goal {goal.name!r}, {nested_type}.csv")
            nested_path = directory / f"{nested_type}{suffix}"
            written[f"{event_type}/{nested_type}"] = (nested_path, _copy(conn, query, nested_path, goal))
    conn.execute("DROP TABLE IF EXISTS export_events")
    return written


def _check_query_unquoted(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, query: str, headers: list[str], what: str) -> None:
    if goal.csv.quote_char:
        return
    conn.execute(f"CREATE OR REPLACE TEMP VIEW export_check AS {query}")
    try:
        _check_unquoted(conn, goal, "export_check", [(quote(h), h) for h in headers], what)
    finally:
        conn.execute("DROP VIEW IF EXISTS export_check")


# ---------------------------------------------------------------- state


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
        conn.execute("ROLLBACK")
        raise
