"""The columns of an export file: what each column kind (property, profile id, segments,
lifecycles, permission level, text, viewed interactions) writes as SQL text, and the formula guard
that keeps a spreadsheet from running a cell."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdp_pipeline.config.catalog import PERMISSION_LEVEL, Catalog, PropertyDefinition
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.store.schema import SQL_TYPES, event_table, literal, quote

# Cells a spreadsheet would run as a formula (the OWASP/ASVS list: = + - @ tab, plus CR, which some
# spreadsheets also treat as a formula start); the guard prefixes them with '. Tested as the code
# point of the first character (ascii() decodes only that one): measured over 400k order lines x 3
# text columns it is 0.6-0.85x the cost of six starts_with tests, which were ~10 % faster than a
# regular expression; left(x, 1) IN (...) was slower still (it counts grapheme clusters).
_FORMULA_STARTS = ", ".join(str(ord(c)) for c in "=+-@\t\r")
# A typed number as the export writes it (-5, -0.5, 1e-05): left alone by the guard, because a
# spreadsheet reads it as the number it is and a quote would turn it into text.
_NUMBER = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"


_PRECISION, _SCALE = (int(n) for n in re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", SQL_TYPES["decimal"]).groups())  # type: ignore[union-attr]


def _decimal_text(expression: str) -> str:
    """A stored decimal without its trailing zeros: DECIMAL(18,4) prints 19.9900, consumers
    expect 19.99 (and 614.0 for a whole number, -0.5, 0.0001). Each value is cast to the fewest
    decimals (at least one) that hold it exactly, and DuckDB prints that: all 18 digits are kept
    (a detour through DOUBLE rounds values above ~15 significant digits), and it measured a third
    of the cost of trimming the text (rtrim, ends_with), which was a third of two regular expressions."""
    branches = " ".join(
        f"WHEN {expression} % 0.{'0' * (decimals - 1)}1 = 0 THEN CAST(CAST({expression} AS DECIMAL({_PRECISION},{decimals})) AS VARCHAR)"
        for decimals in range(1, _SCALE)
    )
    return f"(CASE {branches} ELSE CAST({expression} AS VARCHAR) END)"


@dataclass(frozen=True)
class ExportColumn:
    header: str
    #: SQL giving the cell as VARCHAR; may use ``p`` (profiles) and the joins of :func:`cdp_pipeline.store.exports.rows.base_sql`.
    expression: str
    #: typed numbers/dates/booleans: the guard leaves well-formed numbers alone.
    typed: bool
    #: the profile identifier: filled in the "removed" rows of a diff file.
    identifies: bool
    #: a stored number or boolean: its text is never changed by the formula guard (see :func:`never_formula`).
    never_formula: bool = False


def cell_text(expression: str, sql_type: str) -> str:
    """A stored value as the text written to the file."""
    if sql_type == "list":
        # An empty list is no value (as for the "at least one value" rule): an empty cell, not "".
        return f"nullif(array_to_string({expression}, '|'), '')"
    if sql_type == "decimal":
        return _decimal_text(expression)
    if sql_type == "datetime":
        return f"strftime({expression}, '%Y-%m-%d %H:%M:%S')"
    return f"CAST({expression} AS VARCHAR)"


def formula_guarded(expression: str, *, typed: bool) -> str:
    """Prefix formula-like cells with '. In a typed column (numbers, dates) a well-formed number
    such as -5 is data, not a formula, and is left alone; anything else there (a processor may
    have written text into it) is guarded like text."""
    starts = f"ascii({expression}) IN ({_FORMULA_STARTS})"
    if typed:
        # Evaluated only for the few cells that pass the first test (DuckDB narrows the rows).
        starts += f" AND NOT regexp_matches({expression}, {literal(_NUMBER)})"
    return f"CASE WHEN {starts} THEN '''' || {expression} ELSE {expression} END"


def is_typed(prop: PropertyDefinition) -> bool:
    return prop.type not in ("text", "list")


#: stored types whose text (``cell_text``) is always a well-formed number or true/false, so the
#: formula guard can never change it: -5 and -0.5 are left alone by the guard anyway.
_NEVER_FORMULA = ("integer", "decimal", "boolean")


def never_formula(sql_type: str) -> bool:
    """Whether ``cell_text`` of a stored value of ``sql_type`` is always left alone by the guard.
    Only for cells written straight from the store: a processor may put any text in a column."""
    return sql_type in _NEVER_FORMULA


def cell_names(count: int) -> list[str]:
    return [f"c{i}" for i in range(1, count + 1)]


# The pivots group only the export's candidates, not every member of every segment (most profiles
# of a store are not in the exported segment).
_CANDIDATE = "profile_id IN (SELECT profile_id FROM export_candidates)"


def export_columns(catalog: Catalog, goal: ExportGoal, consent_property: str | None) -> tuple[list[ExportColumn], list[str]]:
    """The output columns and the LEFT JOINs they need.

    Segments and lifecycles come from one pivot per table: a GROUP BY profile with one flag (or
    stage) per name, joined once, then concatenated in name order. Measured at 1M profiles this
    is several times faster than ``string_agg(… ORDER BY …)``, which sorts within every group.
    """
    columns: list[ExportColumn] = []
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
                       WHERE segment IN ({', '.join(literal(n) for n in segment_names)}) AND {_CANDIDATE}
                       GROUP BY profile_id) sg ON sg.profile_id = p.profile_id"""
        )
    if lifecycle_names and any(c.lifecycles for c in goal.columns):
        stages = ", ".join(f"any_value(stage) FILTER (WHERE lifecycle = {literal(name)}) AS s{i}" for i, name in enumerate(lifecycle_names))
        joins.append(
            f"""
            LEFT JOIN (SELECT profile_id, {stages} FROM lifecycle_members
                       WHERE lifecycle IN ({', '.join(literal(n) for n in lifecycle_names)}) AND {_CANDIDATE}
                       GROUP BY profile_id) lc ON lc.profile_id = p.profile_id"""
        )
    interactions = [
        f"SELECT profile_id, CAST({quote(event.interaction_property)} AS VARCHAR) AS interaction FROM {quote(event_table(name))} "
        f"WHERE {quote(event.interaction_property)} IS NOT NULL"
        for name, event in sorted(catalog.event_types.items())
        if event.interaction_property is not None
    ]
    if interactions and any(c.viewed_interactions for c in goal.columns):
        # One sorted, de-duplicated list per profile, joined once: list functions over a grouped
        # list avoid the per-group sort of string_agg(DISTINCT … ORDER BY …).
        joins.append(
            f"""
            LEFT JOIN (SELECT profile_id, array_to_string(list_sort(list_distinct(list(interaction))), '|') AS names
                       FROM ({' UNION ALL '.join(interactions)}) GROUP BY profile_id) vi ON vi.profile_id = p.profile_id"""
        )
    for column in goal.columns:
        kind = column.kind
        typed, identifies, plain_number = False, False, False
        if kind == "property" and column.property is not None:
            prop = catalog.profile_properties[column.property]
            expression, typed = cell_text(f"p.{quote(column.property)}", prop.type), is_typed(prop)
            plain_number = never_formula(prop.type)
        elif kind == "profile_id":
            expression, identifies = "p.profile_id", True
        elif kind == "segments":
            chosen = set(catalog.segments if column.segments == "all" else column.segments or [])
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
        elif interactions:
            # viewed_interactions: the distinct names of the profile's interaction events, all time.
            expression = "nullif(vi.names, '')"
        else:
            # viewed_interactions without an interaction event type in the catalog: the store has
            # no interactions to list, so the column is empty and files keep BlueConic's layout.
            expression = "CAST(NULL AS VARCHAR)"
        columns.append(ExportColumn(column.header, expression, typed, identifies, plain_number))
    return columns, joins


def _permission_level(catalog: Catalog, consent_property: str | None) -> str:
    """BlueConic's "permission level set in the profile": the profile's ``permission_level``
    property (every store has it; imports fill it). Where a profile has none, the level follows
    from consent when the store can tell: ``personal`` when the profile consented to at least one
    objective of store.yaml, ``anonymous`` otherwise; empty when neither a consent list property
    nor objectives are declared."""
    level = cell_text(f"p.{quote(PERMISSION_LEVEL)}", "text")
    prop = catalog.profile_properties.get(consent_property or "")
    if consent_property is None or prop is None or prop.type != "list" or not catalog.objectives:
        return level
    objectives = ", ".join(literal(o) for o in catalog.objectives)
    derived = f"CASE WHEN coalesce(list_has_any(p.{quote(consent_property)}, [{objectives}]), FALSE) THEN 'personal' ELSE 'anonymous' END"
    return f"coalesce({level}, {derived})"
