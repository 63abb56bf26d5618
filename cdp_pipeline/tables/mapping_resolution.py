"""Which column of which file feeds which property: the goal's mappings, the bulk mapping's
detected columns and the types they are created with."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.config.connection import GroupImportGoal, Mapping
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.tables.delivery_files import ImportGoal, _n
from cdp_pipeline.tables.staged import LINE


@dataclass(frozen=True)
class _Mapped:
    """A mapping with its file resolved and its column normalised."""

    file: str
    column: str
    property: str
    rule: str


def _mappings(
    goal: ImportGoal, root: str, frame_columns: list[str], properties: dict[str, PropertyDefinition], reserved: set[str], warnings: list[str]
) -> list[_Mapped]:
    mappings = [_Mapped(file=m.file or root, column=_n(m.column), property=m.property, rule=m.rule) for m in goal.mappings]
    if goal.bulk_mapping is not None:
        # Bulk mapping ("add all detected fields") covers the root file's columns.
        taken = {m.column for m in mappings if m.file == root} | reserved | {_n(c) for c in goal.bulk_mapping.exclude}
        mapped_properties = {m.property for m in mappings}
        undeclared = []
        for column in frame_columns:
            if column in taken or column == LINE:
                continue
            target = goal.bulk_mapping.prefix + column
            if target in mapped_properties:
                continue  # an explicit mapping into the same property wins
            if target in properties:
                mappings.append(_Mapped(file=root, column=column, property=target, rule=goal.bulk_mapping.rule))
            else:
                undeclared.append(target)
        if undeclared:
            warnings.append(f"bulk mapping skipped columns whose property is not declared in store.yaml: {', '.join(undeclared)}")
    return mappings


_INTEGER = r"^[+-]?(0|[1-9][0-9]*)$"
_DECIMAL = r"^[+-]?(0|[1-9][0-9]*)\.[0-9]+$"
_ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def detect_properties(goal: ImportGoal, frame: pl.DataFrame, properties: dict[str, PropertyDefinition], reserved: set[str]) -> dict[str, str]:
    """The properties a bulk mapping creates: the root file's columns whose property (prefix +
    column) is not declared and not mapped explicitly, each typed from its values. A column is
    ``integer``, ``decimal`` or ``date`` only when every non-empty value is one (integers with a
    leading zero stay text: they are codes, and a number would drop the zero), else ``text``."""
    bulk = goal.bulk_mapping
    if bulk is None:
        return {}
    explicit_columns = {_n(m.column) for m in goal.mappings if not m.file or m.file == goal.files.root.name}
    explicit_properties = {m.property for m in goal.mappings}
    skipped = explicit_columns | reserved | {_n(c) for c in bulk.exclude} | {LINE}
    candidates = [
        column for column in frame.columns
        if column not in skipped and bulk.prefix + column not in properties and bulk.prefix + column not in explicit_properties
    ]
    return {bulk.prefix + column: kind for column, kind in detect_types(frame, candidates).items()}


def detect_types(frame: pl.DataFrame, candidates: list[str]) -> dict[str, str]:
    """Column → the catalog type its values support (see ``detect_properties``), one vectorised pass."""
    if not candidates:
        return {}
    text = frame.select(pl.col(c).cast(pl.String).str.strip_chars().alias(c) for c in candidates)
    checks = []
    for column in candidates:
        value = pl.col(column)
        present = value.is_not_null() & (value != "")
        checks += [
            present.any().alias(f"{column}/any"),
            (~present | value.str.contains(_INTEGER)).all().alias(f"{column}/integer"),
            (~present | value.str.contains(_INTEGER) | value.str.contains(_DECIMAL)).all().alias(f"{column}/decimal"),
            (~present | (value.str.contains(_ISO_DATE) & value.str.to_date("%Y-%m-%d", strict=False).is_not_null())).all().alias(f"{column}/date"),
        ]
    verdict = text.select(checks).row(0, named=True)
    detected: dict[str, str] = {}
    for column in candidates:
        kind = "text"
        if verdict[f"{column}/any"]:
            kind = next((k for k in ("integer", "decimal", "date") if verdict[f"{column}/{k}"]), "text")
        detected[column] = kind
    return detected


def _check_mapping_targets(goal: ImportGoal, mappings: list[Mapping], identifiers: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for mapping in mappings:
        where = f"{mapping.file or goal.files.root.name}.{mapping.column}"
        if mapping.property in seen:
            raise ConfigError(
                f"goal {goal.name!r}: property {mapping.property!r} is mapped twice ({seen[mapping.property]} and {where}); "
                "map each property from one column"
            )
        seen[mapping.property] = where
    for _, prop in identifiers:
        if prop == "group_id" and isinstance(goal, GroupImportGoal) and prop in seen:
            raise ConfigError(f"goal {goal.name!r}: group_id is the group identifier and cannot be mapped")


def _processors_for(goal: ImportGoal, name: str) -> list:
    root = goal.files.root.name
    return [p for p in goal.processors if name in (p.files or [root])]
