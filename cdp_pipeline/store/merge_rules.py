"""The five merge rules as SQL (the table in store/merge.py), the regrouping of records that
found the same profile, and the range check of sums."""

from __future__ import annotations

import duckdb

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.store.merge_common import DeliveryRecord, _ident
from cdp_pipeline.store.schema import SQL_TYPES, quote


def rule_sql(rule: str, stored: str, incoming: str, prop: PropertyDefinition) -> str:
    """SQL for the new value of one property under a merge rule (see the table above)."""
    sql_type = SQL_TYPES[prop.type]
    s = f"CAST({incoming} AS {sql_type})"
    t = stored
    is_list = prop.type == "list"
    t_empty = f"({t} IS NULL OR len({t}) = 0)" if is_list else f"{t} IS NULL"
    s_empty = f"({s} IS NULL OR len({s}) = 0)" if is_list else f"{s} IS NULL"
    if rule == "set":
        return f"CASE WHEN {s_empty} THEN {t} ELSE {s} END"
    if rule == "set_if_empty":
        return f"CASE WHEN {t_empty} THEN {s} ELSE {t} END"
    if rule == "set_or_clear":
        return f"CASE WHEN {s_empty} THEN NULL ELSE {s} END"
    if rule == "add":
        # list_distinct does not keep order; filter the incoming items against the stored list so
        # stored items keep their place and new ones follow in file order (incoming is already unique).
        return (
            f"CASE WHEN {s_empty} THEN {t} ELSE "
            f"list_concat(coalesce({t}, []::VARCHAR[]), list_filter({s}, lambda x: NOT list_contains(coalesce({t}, []::VARCHAR[]), x))) END"
        )
    if rule == "sum":
        # Added in a type wider than the stored one, so a total beyond the stored type is caught by
        # ``_check_sum_range`` with its key and line instead of wrapping or failing as a bare cast.
        wide = SUM_WIDE_TYPES[prop.type]
        return f"CASE WHEN {incoming} IS NULL THEN {t} ELSE coalesce(CAST({t} AS {wide}), 0) + CAST({incoming} AS {wide}) END"
    raise ValueError(f"unknown merge rule {rule!r}")


#: the type a sum is added in, and the range the stored type holds.
SUM_WIDE_TYPES = {"integer": "HUGEINT", "decimal": "DECIMAL(38,4)"}
SUM_LIMITS = {"integer": (str(-(2**63)), str(2**63 - 1)), "decimal": ("-99999999999999.9999", "99999999999999.9999")}


def _check_sum_range(
    conn: duckdb.DuckDBPyConnection, rules: dict[str, str], properties: dict[str, PropertyDefinition], delivery: DeliveryRecord
) -> None:
    """A sum whose new total does not fit the stored type fails the delivery naming the property,
    the key, the file and line, and the total: a wrapped or truncated total would look like data."""
    for prop, rule in rules.items():
        if rule != "sum" or properties[prop].type not in SUM_LIMITS:
            continue
        low, high = SUM_LIMITS[properties[prop].type]
        rows = conn.execute(
            f"SELECT _key, _line, CAST({quote(prop)} AS VARCHAR) FROM merged WHERE {quote(prop)} < {low} OR {quote(prop)} > {high} ORDER BY _line LIMIT 5"
        ).fetchall()
        if rows:
            raise InputError(
                [
                    InputProblem(
                        file=delivery.root_file, line=line, column=prop,
                        reason=f"the sum {prop!r} of key {key!r} would become {total}, beyond what a {properties[prop].type} property holds ({low} .. {high})",
                        fix="check the file's values (a unit or decimal separator mix-up?), or store the total in a property of a wider type",
                    )
                    for key, line, total in rows
                ]
            )


def _regroup_sql(rules: dict[str, str], identifier_count: int, source: str) -> str:
    """One row per resolved ``_id`` when records of several keys found the same profile (through
    different identifiers): the same rules as in Polars, rows in line order (set rules: the last
    record; add: the union in order; sum: the total)."""
    inner = [
        "_id", "bool_and(_is_new) AS _is_new", "max(_line) AS _line", "arg_max(_key, _line) AS _key",
        "arg_max(_key_index, _line) AS _key_index", "sum(_rows) AS _rows",
    ]
    for index in range(identifier_count):
        column = quote(_ident(index))
        inner.append(f"first({column} ORDER BY _line DESC) FILTER (WHERE {column} IS NOT NULL) AS {column}")
    outer = ["_id", "_is_new", "_line", "_key", "_key_index", "_rows", *(quote(_ident(i)) for i in range(identifier_count))]
    for prop, rule in rules.items():
        column = quote(prop)
        if rule == "add":
            inner.append(f"flatten(list({column} ORDER BY _line) FILTER (WHERE {column} IS NOT NULL)) AS {column}")
            outer.append(f"list_filter({column}, lambda x, i: list_position({column}, x) = i) AS {column}")
        elif rule == "sum":
            inner.append(f"sum({column}) AS {column}")
            outer.append(column)
        else:
            inner.append(f"first({column} ORDER BY _line DESC) AS {column}")
            outer.append(column)
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {source} WHERE _id IS NOT NULL GROUP BY _id)"
