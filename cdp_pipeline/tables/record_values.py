"""The root file's and linked files' mapped values: keys unified across identifiers, values typed by
their property, one record per key."""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from cdp_pipeline.config.catalog import PERMISSION_LEVEL, PERMISSION_LEVELS, PropertyDefinition
from cdp_pipeline.errors import InputProblem
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.delivery_files import ImportGoal, _DeliveryFiles, _failed_lines, _format_for, _RejectTally
from cdp_pipeline.tables.mapping_resolution import _Mapped
from cdp_pipeline.tables.permission_levels import checked_levels
from cdp_pipeline.tables.row_keys import _in_line_order, ident_column
from cdp_pipeline.tables.staged import KEY, KEY_INDEX, LINE, ROWS


def _aggregate(frame: pl.DataFrame, rules: dict[str, str], identifier_count: int, *, with_rows: bool) -> pl.DataFrame:
    """One row per (``_key``, ``_key_index``), rows taken in line order (see the module docstring)."""
    expressions = [pl.col(LINE).max()]
    if with_rows:
        expressions.append(pl.len().cast(pl.Int64).alias(ROWS))
    for index in range(identifier_count):
        column = ident_column(index)
        if column in frame.columns:
            # The key's value of each identifier: the last non-empty one, so a row without e-mail
            # does not hide the e-mail another row of the key carries.
            expressions.append(pl.col(column).drop_nulls().last().alias(column))
    for prop, rule in rules.items():
        if rule == "add":
            expressions.append(pl.col(prop).explode().drop_nulls().unique(maintain_order=True).alias(prop))
        elif rule == "sum":
            # An all-empty group stays empty instead of becoming 0, so "sum" never invents a value.
            expressions.append(pl.when(pl.col(prop).is_not_null().any()).then(pl.col(prop).sum()).otherwise(None).alias(prop))
        else:
            expressions.append(pl.col(prop).last())
    return _in_line_order(frame).group_by(KEY, KEY_INDEX, maintain_order=True).agg(expressions)


def _unify_keys(frame: pl.DataFrame, identifier_count: int) -> pl.DataFrame:
    """Within one delivery, a row keyed by identifier j joins the key of a row keyed by an earlier
    identifier that carries the same value of identifier j (the last such row in file order).
    Identifiers are taken in order, so chains resolve: a row re-keyed at step j already carries
    its final key when later steps look it up."""
    for index in range(1, identifier_count):
        column = ident_column(index)
        donors = (
            frame.filter((pl.col(KEY_INDEX) < index) & pl.col(column).is_not_null())
            .sort(LINE)
            .select(pl.col(column), pl.col(KEY).alias("_donor_key"), pl.col(KEY_INDEX).alias("_donor_index"))
            .unique(subset=[column], keep="last", maintain_order=True)
        )
        if donors.height == 0:
            continue
        frame = (
            frame.join(donors, on=column, how="left", maintain_order="left")
            .with_columns(
                pl.when((pl.col(KEY_INDEX) == index) & pl.col("_donor_key").is_not_null()).then(pl.col("_donor_key")).otherwise(pl.col(KEY)).alias(KEY),
                pl.when((pl.col(KEY_INDEX) == index) & pl.col("_donor_key").is_not_null())
                .then(pl.col("_donor_index"))
                .otherwise(pl.col(KEY_INDEX))
                .alias(KEY_INDEX),
            )
            .drop("_donor_key", "_donor_index")
        )
    return frame


def _drop_rows_clearing_on_failed_cells(frame: pl.DataFrame, name: str, mappings: list[_Mapped], files: _DeliveryFiles) -> pl.DataFrame:
    """A cell that did not parse is null now; under set_or_clear that null would CLEAR the stored
    value, so the row is left out instead (its cell problem is already listed)."""
    for mapping in mappings:
        if mapping.file != name or mapping.rule != "set_or_clear":
            continue
        failed = files.failed_cells(name, mapping.column)
        if failed.len():
            frame = frame.filter(~pl.col(LINE).is_in(failed.implode()))
    return frame


def _retype(
    rows: pl.DataFrame, mappings: list[_Mapped], properties: dict[str, PropertyDefinition], display: str, goal: ImportGoal,
    problems: list[InputProblem], tally: _RejectTally,
) -> pl.DataFrame:
    """A column a processor created (or one typed otherwise for an event of another type) is typed
    here by its target property. A cell that does not parse is a reject entry and stays empty; a
    set_or_clear row with such a cell is left out (an empty value would clear)."""
    retype = {
        m.property: _format_for(properties[m.property])
        for m in mappings
        if properties[m.property].type != "text" and rows.schema.get(m.property) == pl.String
    }
    if not retype:
        return rows
    selection = goal.files.file(mappings[0].file)
    typed, retype_problems = parse_typed(rows, retype, display, selection.csv.decimal_comma)
    columns = {m.property: m.column for m in mappings}
    problems.extend(replace(problem, column=columns.get(problem.column or "", problem.column)) for problem in retype_problems)
    for prop, fmt in retype.items():
        tally.add(display, _failed_lines(rows, typed, prop), columns[prop], f"value does not parse as {fmt.type}", value=True)
    for mapping in mappings:
        if mapping.rule == "set_or_clear" and mapping.property in retype:
            failed = _failed_lines(rows, typed, mapping.property)
            if failed.len():
                typed = typed.filter(~pl.col(LINE).is_in(failed.implode()))
    return typed


def _permission_levels(
    rows: pl.DataFrame, mappings: list[_Mapped], display: str, problems: list[InputProblem], tally: _RejectTally
) -> pl.DataFrame:
    """A value mapped to ``permission_level`` that is not a level is not imported: listed with its
    line, counted, and the cell left empty (a set_or_clear row with it is left out, or it would clear)."""
    mapping = next((m for m in mappings if m.property == PERMISSION_LEVEL), None)
    if mapping is None:
        return rows
    checked, bad = checked_levels(rows)
    reason = f"value is not a permission level ({', '.join(PERMISSION_LEVELS)})"
    problems.extend(
        InputProblem(file=display, line=line, column=mapping.column, reason=reason, fix="The value was not imported; write one of the levels")
        for line in bad.to_list()
    )
    tally.add(display, bad, mapping.column, reason, value=True)
    if mapping.rule == "set_or_clear" and bad.len():
        checked = checked.filter(~pl.col(LINE).is_in(bad.implode()))
    return checked
