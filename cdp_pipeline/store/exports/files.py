"""The files of an export: ``COPY`` from the export tables to CSV (the profile file, split into
parts by ``target.split_rows``, the diff file against the last export's snapshot, one timeline
file per event type), gzip by DuckDB, and the refusal to write cells that would break a file
without a quote character."""

from __future__ import annotations

import codecs
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.exports.columns import cell_names, cell_text, formula_guarded, is_typed, never_formula
from cdp_pipeline.store.schema import event_table, item_table, literal, quote

#: catalog types whose stored value is always written as a number (see ``cell_text``).
_NUMBER_TYPES = ("integer", "decimal")

#: the stored event id in ``export_events``: a name no property can have (property names are
#: lower-case letters, digits and underscores), beside the guarded ``event_id`` cell.
_EVENT_KEY = quote("#event_id")
#: each event's position in the file's order, named the same way.
_EVENT_RANK = quote("#rank")

#: header of the first column of a diff file.
DIFF_CHANGE_COLUMN = "change"


def check_unquoted(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, relation: str, columns: list[tuple[str, str]], what: str) -> None:
    """Without a quote character a cell holding the delimiter or a line break would shift or
    split the row in the consumer's reader: refuse the export instead of writing a broken file.
    The message names the column, never the value: error messages reach logs and e-mails, which
    must not carry customer data."""
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
    offending = [(header, n) for (_, header), n in zip(columns, row or [], strict=False) if n]
    if offending:
        listed = ", ".join(f"{header!r} ({n} rows)" for header, n in offending)
        raise ConfigError(
            f"{what}: csv.quote_char is off, but cells of {listed} contain the delimiter {goal.csv.delimiter!r} or a line "
            "break, which would break the file; set csv.quote_char (e.g. '\"'), choose another delimiter, or add a processor "
            "that removes them"
        )


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
    return ", ".join(f"{name} AS {quote(column.header)}" for column, name in zip(goal.columns, names, strict=True))


def write_profile_parts(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, paths: list[Path] | Path) -> list[tuple[Path, int]]:
    """COPY the profile rows: to one file, or with ``target.split_rows`` to ``paths`` (one per part,
    in order, as many as :func:`part_count` says). Rows are in profile id order across parts."""
    names = cell_names(len(goal.columns))
    [(rows,)] = conn.execute("SELECT count(*) FROM export_rows WHERE _changed").fetchall()
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
    names = cell_names(len(goal.columns))
    cells = ", ".join(
        f"{'coalesce(r.' + name + ', s.profile_id)' if column.kind == 'profile_id' else 'r.' + name} AS {quote(column.header)}"
        for column, name in zip(goal.columns, names, strict=True)
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


def _timestamp_literal(moment: datetime) -> str:
    """A bound as a literal of the store's naive UTC time. DuckDB reads an offset in a TIMESTAMP
    literal and drops it (10:00+02:00 becomes 10:00), so an aware time is converted first: the
    period must never shift silently by the offset."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP {literal(moment.isoformat(sep=' '))}"


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
    if goal.timeline is None:
        raise ConfigError(f"export goal {goal.name!r} has no timeline; only a goal with a timeline writes timeline files")
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    suffix = ".csv.gz" if goal.target.gzip else ".csv"
    # The bounds as literals, not parameters: the files' queries also go into the unquoted
    # check's view, which cannot take parameters.
    period = [f"e.event_time {op} {_timestamp_literal(moment)}" for op, moment in ((">=", since), ("<", until)) if moment is not None]
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
            cell = cell_text(f"{alias}.{quote(name)}", prop.type)
            # Timeline cells come straight from the store (no processors): a number's text is
            # never changed by the guard, so it is not evaluated on every row.
            guard = goal.formula_guard and not never_formula(prop.type)
            out.append(f"{formula_guarded(cell, typed=is_typed(prop)) if guard else cell} AS {quote(name)}")
        return out

    def guarded(expression: str, header: str) -> str:
        return f"{formula_guarded(expression, typed=False) if goal.formula_guard else expression} AS {header}"

    for event_type in event_types:
        definition = catalog.event_types[event_type]
        select = ", ".join(
            [
                guarded("e.event_id", "event_id"),
                "e.profile_id",
                "strftime(e.event_time, '%Y-%m-%d %H:%M:%S') AS event_time",
                *cells("e", definition.properties),
            ]
        )
        events = f"{quote(event_table(event_type))} e WHERE e.profile_id IN (SELECT _profile_id FROM export_rows WHERE _changed) AND {period_sql}"
        if goal.timeline.order == "none":
            # No order asked for: each file is one statement, a filter and a semi join like a
            # plain COPY's, with neither the ranks nor a sort.
            event_query = f"SELECT {select} FROM {events}"
            item_source = f"SEMI JOIN (SELECT e.event_id FROM {events}) e ON e.event_id = i.event_id"
            item_order = ""
        else:
            # The event file's cells with each event's rank in the documented order (event_time,
            # event_id), computed once over the two keys: the event file and the nested files then
            # sort on integers (rank; rank and item_index) instead of on the time and the event id's
            # text each. Every order is an explicit ORDER BY, nothing relies on a scan's order.
            conn.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE export_events AS
                SELECT e.event_id AS {_EVENT_KEY}, row_number() OVER (ORDER BY e.event_time, e.event_id) AS {_EVENT_RANK}, {select}
                FROM {events}
                """
            )
            headers = ["event_id", "profile_id", "event_time", *definition.properties]
            event_query = f"SELECT {', '.join(quote(h) for h in headers)} FROM export_events ORDER BY {_EVENT_RANK}"
            item_source = f"JOIN (SELECT {_EVENT_KEY}, {_EVENT_RANK} FROM export_events) e ON e.{_EVENT_KEY} = i.event_id"
            item_order = f" ORDER BY e.{_EVENT_RANK}, i.item_index"
        _check_query_unquoted(conn, goal, event_query, ["event_id", *definition.properties], f"export goal {goal.name!r}, {event_type}.csv")
        path = directory / f"{event_type}{suffix}"
        written[event_type] = (path, _copy(conn, event_query, path, goal))
        for nested_type, nested in definition.nested.items():
            select = ", ".join([guarded("i.event_id", "event_id"), "i.item_index", *cells("i", nested.properties)])
            query = f"SELECT {select} FROM {quote(item_table(event_type, nested_type))} i {item_source}{item_order}"
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
        check_unquoted(conn, goal, "export_check", [(quote(h), h) for h in headers], what)
    finally:
        conn.execute("DROP VIEW IF EXISTS export_check")


def write_query_csv(conn: duckdb.DuckDBPyConnection, goal: ExportGoal, query: str, path: Path, headers: list[str], what: str) -> int:
    """One more file of an export (a dialect's report) from ``query``, with the goal's CSV options
    and the same refusal of cells that would break an unquoted file; returns its rows."""
    _check_query_unquoted(conn, goal, query, headers, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _copy(conn, query, path, goal)
