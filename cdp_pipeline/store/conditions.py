"""Segment and lifecycle conditions: one boolean expression over known columns, nothing more.

A condition from store.yaml ends up inside the SQL that refreshes memberships. Pasted in as text,
``TRUE); DROP TABLE deliveries; SELECT (1`` would run three statements, and any expression could
call ``read_text``, ``getenv`` or a subquery over the ledger. So a condition is parsed by DuckDB's
own parser (the one that will run it, so no second parser can read it differently), its tree is
checked against an allow-list (expression kinds, scalar functions, the columns of ``profiles``),
and what runs is DuckDB's rendering of that checked tree, never the text as written. A rendering
that does not parse back to the same tree is refused rather than trusted.

One subquery shape is allowed because segments on recent events need it and it can only read a
timeline table: ``profile_id IN (SELECT profile_id FROM timeline_<event type> WHERE <expression
over that table's columns>)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.schema import catalog_tables, event_table, quote

# Scalar functions (and operators, which DuckDB's tree names as functions) a condition may call.
# Everything else is refused: table functions, file and environment readers (read_text, getenv,
# current_setting), aggregates and window functions have no place in a per-profile test.
ALLOWED_FUNCTIONS = frozenset(
    {
        # operators
        "+", "-", "*", "/", "//", "%", "^", "**", "||", "~~", "!~~", "~~*", "!~~*", "~~~", "!~~~", "@>", "<@", "&&",
        # text
        "lower", "upper", "lcase", "ucase", "length", "len", "strlen", "trim", "ltrim", "rtrim", "substring", "substr",
        "left", "right", "concat", "concat_ws", "contains", "starts_with", "ends_with", "prefix", "suffix", "replace",
        "split_part", "strpos", "instr", "position", "lpad", "rpad", "reverse", "regexp_matches", "regexp_full_match",
        "nfc_normalize", "strip_accents",
        # numbers
        "abs", "round", "floor", "ceil", "ceiling", "sign", "trunc", "greatest", "least", "ifnull", "nullif",
        # lists
        "list_value", "list_contains", "list_has", "array_contains", "array_has", "list_has_any", "array_has_any",
        "list_has_all", "array_has_all", "list_extract", "list_element", "array_extract", "list_position",
        "list_indexof", "array_position", "array_length",
        # dates and times
        "now", "get_current_timestamp", "today", "date_diff", "datediff", "date_sub", "datesub", "date_part", "datepart",
        "date_trunc", "datetrunc", "year", "month", "day", "dayofmonth", "dayofweek", "isodow", "dayofyear", "week",
        "weekofyear", "quarter", "hour", "minute", "second", "age", "timezone", "make_date", "make_timestamp", "strftime",
        "strptime", "epoch", "epoch_ms", "last_day", "to_timestamp", "to_years", "to_months", "to_weeks", "to_days",
        "to_hours", "to_minutes", "to_seconds", "to_milliseconds", "to_microseconds",
    }
)

# Expression kinds of DuckDB's parse tree a condition may hold.
_ALLOWED_CLASSES = frozenset({"CONJUNCTION", "OPERATOR", "COMPARISON", "BETWEEN", "CASE", "CAST", "CONSTANT", "COLUMN_REF", "FUNCTION", "COLLATE"})
_ALLOWED_OPERATORS = frozenset(
    {"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN", "OPERATOR_COALESCE", "ARRAY_EXTRACT", "ARRAY_SLICE"}
)
# SQL keywords DuckDB's parser hands over as column references and resolves to the clock.
_CLOCK_NAMES = frozenset({"current_date", "current_timestamp", "current_time", "localtime", "localtimestamp"})

HELP = (
    "a condition is one boolean expression over the columns of profiles (declared profile properties, profile_id, "
    "created_at, updated_at), using comparisons, AND/OR/NOT, IN (...), BETWEEN, LIKE, IS NULL, CASE, casts and "
    "scalar functions such as lower, list_contains, date_diff and now(); see docs/configuration.md"
)


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _scratch_connection() -> duckdb.DuckDBPyConnection:
    """A private connection to one in-memory database kept for the process (opening a database
    costs ~40 ms, a cursor ~2 ms; configurations are validated often). Tables made on it are
    TEMP tables, which no other cursor sees."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:")
        return _parser.cursor()


class ConditionError(ValueError):
    """A condition that is not a single allowed expression; the message names what is wrong."""


@dataclass(frozen=True)
class ConditionSql:
    """The checked conditions of a catalog, as the SQL DuckDB rendered from their checked trees."""

    #: segment name → its condition, parenthesised.
    segments: dict[str, str]
    #: lifecycle name → each stage's condition, in stage order.
    stages: dict[str, list[str]]


def _without_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_locations(value) for key, value in node.items() if key not in ("query_location", "query_location_length")}
    if isinstance(node, list):
        return [_without_locations(value) for value in node]
    return node


def _plain_select(node: dict, *, from_table: str) -> bool:
    """A SELECT of one unaliased item with nothing around it, FROM nothing (EMPTY) or FROM one base table."""
    source = node.get("from_table") or {}
    if from_table == "EMPTY":
        source_ok = source.get("type") == "EMPTY"
    else:
        source_ok = (
            source.get("type") == "BASE_TABLE"
            and not source.get("schema_name")
            and not source.get("catalog_name")
            and not source.get("alias")
            and not source.get("column_name_alias")
            and source.get("sample") is None
            and source.get("at_clause") is None
        )
    select_list = node.get("select_list") or []
    return (
        node.get("type") == "SELECT_NODE"
        and source_ok
        and len(select_list) == 1
        and not select_list[0].get("alias")
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and not node.get("group_expressions")
        and not node.get("group_sets")
        and node.get("having") is None
        and node.get("sample") is None
        and node.get("qualify") is None
        and node.get("aggregate_handling") == "STANDARD_HANDLING"
        and (from_table != "EMPTY" or node.get("where_clause") is None)
    )


class _Checker:
    """Walks one parsed condition; collects what is not allowed."""

    def __init__(self, tables: Mapping[str, Mapping[str, str]]):
        self.tables = tables

    def check(self, node: Any, table: str, *, subqueries: bool) -> None:
        if isinstance(node, list):
            for item in node:
                self.check(item, table, subqueries=subqueries)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("class")
        if kind is None:  # a container inside an expression (function arguments, CASE branches)
            for value in node.values():
                self.check(value, table, subqueries=subqueries)
            return
        if kind == "SUBQUERY":
            self._subquery(node, table, subqueries=subqueries)
            return
        if kind == "COLUMN_REF":
            self._column(node, table)
            return
        if kind not in _ALLOWED_CLASSES:
            raise ConditionError(f"{kind.lower().replace('_', ' ')} is not allowed in a condition ({HELP})")
        if kind == "OPERATOR" and node.get("type") not in _ALLOWED_OPERATORS:
            raise ConditionError(f"the operator {node.get('type')} is not allowed in a condition ({HELP})")
        if kind == "FUNCTION":
            self._function(node)
        for key, value in node.items():
            # Type names of casts (type_expr) and literal values hold no expressions to check.
            if key not in ("class", "type", "alias", "function_name", "qualified_name", "cast_type", "type_expr", "literal", "collation"):
                self.check(value, table, subqueries=subqueries)

    def _column(self, node: dict, table: str) -> None:
        names = node.get("column_names") or []
        if len(names) != 1:
            raise ConditionError(f"column {'.'.join(names)!r}: name columns without a table or struct prefix ({HELP})")
        name = names[0].lower()
        if name in _CLOCK_NAMES:
            return
        if name not in self.tables[table]:
            known = ", ".join(sorted(self.tables[table]))
            raise ConditionError(f"unknown column {names[0]!r}; the columns of {table} are: {known}")

    def _function(self, node: dict) -> None:
        name = str(node.get("function_name", "")).lower()
        # DuckDB 1.5 parses "x AT TIME ZONE 'UTC'" as main.timezone(...): its own rewrite of a
        # builtin, not a user's schema-qualified call (2.0 leaves the schema empty).
        own_rewrite = name == "timezone" and node.get("schema") == "main" and not node.get("catalog")
        if (node.get("schema") or node.get("catalog")) and not own_rewrite:
            raise ConditionError(f"function {name!r}: call functions without a schema or catalog prefix")
        if node.get("filter") is not None or node.get("distinct") or (node.get("order_bys") or {}).get("orders"):
            raise ConditionError(f"function {name!r}: aggregates (FILTER, DISTINCT, ORDER BY inside a call) are not allowed in a condition")
        if name not in ALLOWED_FUNCTIONS:
            allowed = ", ".join(sorted(f for f in ALLOWED_FUNCTIONS if f[0].isalpha()))
            raise ConditionError(f"function {name!r} is not allowed in a condition; allowed functions: {allowed}")

    def _subquery(self, node: dict, table: str, *, subqueries: bool) -> None:
        # The one shape allowed: profile_id IN (SELECT profile_id FROM timeline_x WHERE ...).
        refused = ConditionError(
            "a subquery is not allowed in a condition, except profile_id IN (SELECT profile_id FROM timeline_<event type> "
            "WHERE <expression over that table's columns>); for a list property use list_contains(property, 'value') "
            "instead of = ANY(property)"
        )
        child = node.get("child") or {}
        statement = (node.get("subquery") or {}).get("node") or {}
        source = statement.get("from_table") or {}
        event_tables = {name for name in self.tables if name != "profiles"}
        if not (
            subqueries
            and table == "profiles"
            and node.get("subquery_type") == "ANY"
            and node.get("comparison_type") == "COMPARE_EQUAL"
            and child.get("class") == "COLUMN_REF"
            and [n.lower() for n in child.get("column_names", [])] == ["profile_id"]
            and _plain_select(statement, from_table="BASE_TABLE")
            and [n.lower() for n in statement["select_list"][0].get("column_names", [])] == ["profile_id"]
            and statement["select_list"][0].get("class") == "COLUMN_REF"
        ):
            raise refused
        inner = str(source.get("table_name", "")).lower()
        if inner not in event_tables:
            raise ConditionError(f"a subquery may read a timeline table ({', '.join(sorted(event_tables)) or 'none declared'}), not {inner!r}")
        if statement.get("where_clause") is not None:
            self.check(statement["where_clause"], inner, subqueries=False)


def _serialize(conn: duckdb.DuckDBPyConnection, sql: str) -> dict:
    [(serialized,)] = conn.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchall()
    return json.loads(serialized)


def _expression_tree(conn: duckdb.DuckDBPyConnection, condition: str) -> dict:
    parsed = _serialize(conn, f"SELECT {condition}\n")
    if parsed.get("error"):
        message = parsed.get("error_message", "")
        if "Only SELECT" in message:
            message = "it holds a statement, not an expression"
        raise ConditionError(f"not one SQL expression: {message} ({HELP})")
    statements = parsed.get("statements") or []
    if len(statements) != 1 or not _plain_select(statements[0].get("node") or {}, from_table="EMPTY"):
        raise ConditionError(
            f"not one SQL expression: only the expression itself is allowed, no ';', FROM, WHERE, ORDER BY, alias or second statement ({HELP})"
        )
    return parsed


def render_condition(conn: duckdb.DuckDBPyConnection, condition: str, tables: Mapping[str, Mapping[str, str]]) -> str:
    """The SQL to run for ``condition`` (parenthesised), or ConditionError saying what is not allowed.

    ``tables`` maps ``profiles`` and each timeline table to its columns (name → SQL type).
    ``conn`` only parses and renders; it may be any connection, nothing is read from it."""
    parsed = _expression_tree(conn, condition)
    expression = parsed["statements"][0]["node"]["select_list"][0]
    _Checker(tables).check(expression, "profiles", subqueries=True)
    [(rendered,)] = conn.execute("SELECT json_deserialize_sql($tree::JSON)", {"tree": json.dumps(parsed)}).fetchall()
    if not rendered.startswith("SELECT "):
        raise ConditionError("DuckDB could not render the condition back to SQL; write it more plainly")
    sql = rendered[len("SELECT "):]
    # What runs must be exactly what was checked: the rendering parses back to the same tree.
    again = _serialize(conn, f"SELECT {sql}\n")
    if again.get("error") or _without_locations(again) != _without_locations(parsed):
        raise ConditionError(
            "DuckDB renders this condition differently from how it parses it; write it more plainly (without LIKE ... ESCAPE or quoted type names)"
        )
    return f"({sql})"


def _conditions(catalog: Catalog) -> Iterator[tuple[str, str, str, int]]:
    """(key path in store.yaml, condition, segment or lifecycle name, stage index or -1)."""
    for name, segment in catalog.segments.items():
        yield f"segments.{name}.condition", segment.condition, name, -1
    for name, lifecycle in catalog.lifecycles.items():
        for index, stage in enumerate(lifecycle.stages):
            yield f"lifecycles.{name}.stages.{index}.condition (stage {stage.name})", stage.condition, name, index


def condition_tables(catalog: Catalog) -> dict[str, dict[str, str]]:
    """The tables a condition may read, with their columns' SQL types: profiles and the timelines."""
    timelines = {event_table(name) for name in catalog.event_types}
    return {
        table: {column: sql_type for column, sql_type, _ in columns}
        for table, (_, columns) in catalog_tables(catalog).items()
        if table == "profiles" or table in timelines
    }


def compile_conditions(catalog: Catalog, store: duckdb.DuckDBPyConnection | None = None) -> ConditionSql:
    """Check every condition of the catalog; raise ConditionError naming each that is not allowed.

    Each rendered condition is then bound as a WHERE clause, against ``store`` when given (the
    real tables) or else against empty tables made from the catalog in memory, so a type error
    (``email > 5``, a non-boolean condition) is found by ``validate`` too."""
    problems: list[str] = []
    result = ConditionSql(segments={}, stages={name: [] for name in catalog.lifecycles})
    if not catalog.segments and not catalog.lifecycles:
        return result
    tables = condition_tables(catalog)
    with _scratch_connection() as scratch:
        if store is None:
            for table, columns in tables.items():
                scratch.execute(f"CREATE TEMP TABLE {quote(table)} ({', '.join(f'{quote(c)} {t}' for c, t in columns.items())})")
        binder = store if store is not None else scratch
        for where, condition, name, stage in _conditions(catalog):
            try:
                sql = render_condition(scratch, condition, tables)
                [(_, column_type, *_)] = binder.execute(f"DESCRIBE SELECT {sql} AS condition FROM profiles").fetchall()
                if column_type != "BOOLEAN":
                    raise ConditionError(f"the expression is {column_type}, a condition must be true or false (BOOLEAN)")
            except ConditionError as exc:
                problems.append(f"{where} {condition!r}: {exc}")
                continue
            except duckdb.Error as exc:
                problems.append(f"{where} {condition!r}: {str(exc).splitlines()[0]}")
                continue
            if stage < 0:
                result.segments[name] = sql
            else:
                result.stages[name].append(sql)
    if problems:
        raise ConditionError("\n".join(problems))
    return result


#: functions whose value is the current time (``age`` only with one argument: its age until today).
_CLOCK_FUNCTIONS = frozenset(
    {"now", "today", "get_current_timestamp", "get_current_time", "transaction_timestamp", "current_date", "current_timestamp", "current_time",
     "current_localtime", "current_localtimestamp", "localtime", "localtimestamp"}
)


def _reads_clock(node: Any) -> bool:
    if isinstance(node, list):
        return any(_reads_clock(item) for item in node)
    if not isinstance(node, dict):
        return False
    if node.get("class") == "COLUMN_REF" and [n.lower() for n in node.get("column_names") or []] in ([name] for name in _CLOCK_NAMES):
        return True
    if node.get("class") == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        arguments = node.get("arguments") or node.get("children") or []
        if name in _CLOCK_FUNCTIONS or (name == "age" and len(arguments) == 1):
            return True
    return any(_reads_clock(value) for value in node.values())


def clock_conditions(catalog: Catalog) -> list[str]:
    """The store.yaml key paths of the conditions whose result moves with the clock (``now()``,
    ``current_date``, ``age(x)``, a date compared with today), subqueries over timelines included:
    their memberships change although no profile did. A condition that does not parse counts as one
    (the refresh reports it)."""
    found = []
    with _scratch_connection() as scratch:
        for where, condition, _, _ in _conditions(catalog):
            try:
                tree = _expression_tree(scratch, condition)
            except (ConditionError, duckdb.Error):
                found.append(where)
                continue
            if _reads_clock(tree["statements"][0]["node"]["select_list"]):
                found.append(where)
    return found
