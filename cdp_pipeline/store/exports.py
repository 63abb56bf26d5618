"""The SQL side of an export goal: which profiles leave, with which columns, straight from DuckDB
to a CSV file with ``COPY`` (streamed, bounded memory at 1M profiles)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import ExportColumn, ExportGoal
from cdp_pipeline.store.schema import event_table, item_table, literal, quote

# Cells a spreadsheet would run as a formula (OWASP/ASVS list plus CR); prefixed with ' (#70).
_FORMULA_START = r"^[=+\-@\t\r]"


@dataclass
class ExportSelection:
    profiles_available: int
    profiles_selected: int
    last_export_at: datetime | None


def _guard(expression: str, on: bool) -> str:
    if not on:
        return expression
    return f"CASE WHEN regexp_matches({expression}, {literal(_FORMULA_START)}) THEN '''' || {expression} ELSE {expression} END"


def _text(expression: str, sql_type: str) -> str:
    if sql_type == "list":
        return f"array_to_string({expression}, '|')"
    if sql_type == "decimal":
        # DECIMAL(18,4) would print 19.9900; a consumer expects 19.99.
        return f"CAST(CAST({expression} AS DOUBLE) AS VARCHAR)"
    if sql_type == "datetime":
        return f"strftime({expression}, '%Y-%m-%d %H:%M:%S')"
    return f"CAST({expression} AS VARCHAR)"


def column_sql(column: ExportColumn, catalog: Catalog, guard: bool) -> str:
    kind = column.kind
    if kind == "property":
        prop = catalog.profile_properties[column.property]
        expression = _guard(_text(f"p.{quote(column.property)}", prop.type), guard and prop.type in ("text", "list"))
    elif kind == "profile_id":
        expression = "p.profile_id"
    elif kind == "segments":
        only = "" if column.segments == "all" else f" AND s.segment IN ({', '.join(literal(s) for s in column.segments)})"
        expression = f"(SELECT string_agg(s.segment, '|' ORDER BY s.segment) FROM segment_members s WHERE s.profile_id = p.profile_id{only})"
    elif kind == "lifecycles":
        expression = "(SELECT string_agg(l.lifecycle || ':' || l.stage, '|' ORDER BY l.lifecycle) FROM lifecycle_members l WHERE l.profile_id = p.profile_id)"
    elif kind == "text":
        expression = _guard(literal(column.text or ""), guard)
    else:
        # The store keeps no web interactions or permission levels of its own: these columns are
        # written empty, so files keep the layout a BlueConic consumer expects.
        expression = "NULL"
    return f"{expression} AS {quote(column.header)}"


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
    """Fill the temp table ``export_profiles`` with the profile ids that leave in this run."""
    (last,) = conn.execute(
        "SELECT max(last_export_at) FROM export_state WHERE connection = $c AND goal = $g", {"c": connection, "g": goal.name}
    ).fetchone() or (None,)
    consent = "TRUE"
    if objectives and consent_property:
        consent = f"list_has_any(p.{quote(consent_property)}, [{', '.join(literal(o) for o in objectives)}])"
    available_sql = f"""
        SELECT p.profile_id, p.updated_at FROM profiles p
        JOIN segment_members s ON s.profile_id = p.profile_id AND s.segment = {literal(goal.segment)}
        WHERE {consent}
    """
    (available,) = conn.execute(f"SELECT count(*) FROM ({available_sql})").fetchone()
    properties = [c.property for c in goal.columns if c.property]
    has_value = " OR ".join(f"p.{quote(prop)} IS NOT NULL" for prop in properties) or "TRUE"
    changed = "TRUE" if (full or not goal.changed_only or last is None) else "p.updated_at > $last"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE export_profiles AS
        SELECT p.profile_id FROM profiles p
        WHERE p.profile_id IN (SELECT profile_id FROM ({available_sql}))
          AND ({has_value}) AND ({changed})
        """,
        {"last": last} if "$last" in changed else {},
    )
    (selected,) = conn.execute("SELECT count(*) FROM export_profiles").fetchone()
    return ExportSelection(profiles_available=available, profiles_selected=selected, last_export_at=last)


def _copy_options(goal: ExportGoal, header: bool = True) -> str:
    csv = goal.csv
    options = [
        f"HEADER {'true' if (header and csv.has_header) else 'false'}",
        f"DELIMITER {literal(csv.delimiter)}",
        f"QUOTE {literal(csv.quote_char or '')}",
        f"NEW_LINE {literal(chr(13) + chr(10) if csv.line_ending == 'crlf' else chr(10))}",
    ]
    if csv.escape_char:
        options.append(f"ESCAPE {literal(csv.escape_char)}")
    if goal.target.gzip:
        options.append("COMPRESSION gzip")
    return ", ".join(options)


def write_profiles_csv(conn: duckdb.DuckDBPyConnection, catalog: Catalog, goal: ExportGoal, path: Path) -> int:
    """COPY the selected profiles to ``path``; returns the number of rows."""
    columns = ", ".join(column_sql(column, catalog, goal.formula_guard) for column in goal.columns)
    conn.execute(
        f"""
        COPY (SELECT {columns} FROM profiles p JOIN export_profiles e ON e.profile_id = p.profile_id ORDER BY p.profile_id)
        TO {literal(str(path))} ({_copy_options(goal)})
        """
    )
    (rows,) = conn.execute("SELECT count(*) FROM export_profiles").fetchone()
    return rows


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
    exported profiles; headers follow the event type definition."""
    assert goal.timeline is not None
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    suffix = ".csv.gz" if goal.target.gzip else ".csv"
    period = []
    params: dict[str, datetime] = {}
    if since is not None:
        period.append("e.event_time >= $since")
        params["since"] = since
    if until is not None:
        period.append("e.event_time < $until")
        params["until"] = until
    period_sql = " AND ".join(period) or "TRUE"
    for event_type in goal.timeline.event_types or list(catalog.event_types):
        definition = catalog.event_types[event_type]
        prop_columns = [
            f"{_guard(_text(f'e.{quote(p)}', d.type), goal.formula_guard and d.type in ('text', 'list'))} AS {quote(p)}"
            for p, d in definition.properties.items()
        ]
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE export_events AS
            SELECT e.* FROM {quote(event_table(event_type))} e
            WHERE e.profile_id IN (SELECT profile_id FROM export_profiles) AND {period_sql}
            """,
            params,
        )
        path = directory / f"{event_type}{suffix}"
        select = ", ".join(["e.event_id", "e.profile_id", "strftime(e.event_time, '%Y-%m-%d %H:%M:%S') AS event_time", *prop_columns])
        conn.execute(f"COPY (SELECT {select} FROM export_events e ORDER BY e.event_time, e.event_id) TO {literal(str(path))} ({_copy_options(goal)})")
        (rows,) = conn.execute("SELECT count(*) FROM export_events").fetchone()
        written[event_type] = (path, rows)
        for nested_type, nested in definition.nested.items():
            nested_columns = [
                f"{_guard(_text(f'i.{quote(p)}', d.type), goal.formula_guard and d.type in ('text', 'list'))} AS {quote(p)}"
                for p, d in nested.properties.items()
            ]
            nested_path = directory / f"{nested_type}{suffix}"
            select = ", ".join(["i.event_id", "i.item_index", *nested_columns])
            conn.execute(
                f"""
                COPY (SELECT {select} FROM {quote(item_table(event_type, nested_type))} i
                      JOIN export_events e ON e.event_id = i.event_id ORDER BY e.event_time, i.event_id, i.item_index)
                TO {literal(str(nested_path))} ({_copy_options(goal)})
                """
            )
            (nested_rows,) = conn.execute(
                f"SELECT count(*) FROM {quote(item_table(event_type, nested_type))} WHERE event_id IN (SELECT event_id FROM export_events)"
            ).fetchone()
            written[f"{event_type}/{nested_type}"] = (nested_path, nested_rows)
    return written


def record_export(conn: duckdb.DuckDBPyConnection, connection: str, goal: str, run_id: str, snapshot: datetime) -> None:
    """After the files are delivered: move the goal's "changed since" mark and count the
    exchanged profiles, in one transaction."""
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DELETE FROM export_state WHERE connection = $c AND goal = $g", {"c": connection, "g": goal})
        conn.execute("INSERT INTO export_state VALUES ($c, $g, $t, $r)", {"c": connection, "g": goal, "t": snapshot, "r": run_id})
        conn.execute(
            """
            MERGE INTO exchanged_profiles t
            USING (SELECT profile_id FROM export_profiles) s
            ON t.connection = $c AND t.direction = 'exported' AND t.profile_id = s.profile_id
            WHEN MATCHED THEN UPDATE SET last_at = $t
            WHEN NOT MATCHED THEN INSERT VALUES ($c, 'exported', s.profile_id, $t, $t)
            """,
            {"c": connection, "t": snapshot},
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
