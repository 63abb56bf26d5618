"""From the plaintext files of one delivery to the tables the store merges, in Polars.

Order of work (the seeds' order): read each file with its file and field handling → run the
goal's data processors → check the columns → link identifiers → map columns to properties →
join nested files to their parents → one row per key (duplicates resolved) → StagedImport.

Duplicate keys inside one delivery are resolved here so the store never sees two updates of one
key in one statement (reliability #49, A9): for set, set_if_empty and set_or_clear the LAST row
of the key in file order wins; add collects the distinct values of all rows in file order; sum
adds all rows.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.config.connection import GroupImportGoal, LinkedFile, Mapping, ProfileImportGoal
from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.tables.csv_reading import normalise_column_name, parse_typed, read_delimited
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.staged import ProductStoreSource, StagedImport

ImportGoal = GroupImportGoal | ProfileImportGoal
LINE = "_line"
KEY = "_key"


def _n(name: str) -> str:
    return normalise_column_name(name)


def _format_for(prop: PropertyDefinition) -> ColumnFormat:
    return ColumnFormat(type=prop.type)


class _DeliveryFiles:
    """The delivery's frames by logical file name, with the problems found while reading them."""

    def __init__(self, goal: ImportGoal, paths: dict[str, Path], display: dict[str, str]):
        self.goal = goal
        self.paths = paths
        self.display = display
        self.frames: dict[str, pl.DataFrame] = {}
        self.problems: list[InputProblem] = []

    def read(self, name: str, derived: dict[str, ColumnFormat]) -> None:
        selection = self.goal.files.file(name)
        frame = read_delimited(self.paths[name], selection.csv, self.display[name])
        declared = {_n(column): fmt for column, fmt in selection.csv.columns.items()}
        formats = {column: fmt for column, fmt in {**derived, **declared}.items() if column in frame.columns}
        frame, problems = parse_typed(frame, formats, self.display[name], selection.csv.decimal_comma)
        self.frames[name] = frame
        self.problems.extend(problems)

    def require(self, name: str, columns: set[str]) -> None:
        selection = self.goal.files.file(name)
        needed = columns | {_n(c) for c in selection.required_columns}
        missing = sorted(needed - set(self.frames[name].columns))
        if missing:
            # Schema drift on a required column fails the file before anything is merged (#46).
            raise InputError(
                [
                    InputProblem(
                        file=self.display[name],
                        line=1,
                        column=column,
                        reason="required column is missing from the header",
                        fix=f"add the column, or correct the goal's configuration (columns present: {', '.join(self.frames[name].columns[:-1][:30])})",
                    )
                    for column in missing
                ]
            )

    def extra_columns(self, name: str, used: set[str], warnings: list[str]) -> None:
        selection = self.goal.files.file(name)
        extra = sorted(set(self.frames[name].columns) - used - {LINE})
        if not extra:
            return
        if selection.csv.extra_columns == "fail":
            raise InputError(
                InputProblem(
                    file=self.display[name],
                    line=1,
                    column=extra[0],
                    reason=f"unexpected column(s) {extra}",
                    fix="map or remove them, or set csv.extra_columns: ignore",
                )
            )
        warnings.append(f"{self.display[name]}: columns not used by the goal were ignored: {', '.join(extra)}")


def _reject_rows(frame: pl.DataFrame, mask: pl.Expr, display: str, column: str | None, reason: str, fix: str, problems: list[InputProblem]) -> pl.DataFrame:
    bad = frame.filter(mask)
    problems.extend(InputProblem(file=display, line=line, column=column, reason=reason, fix=fix) for line in bad[LINE].to_list())
    return frame.filter(~mask)


def _aggregate(frame: pl.DataFrame, rules: dict[str, str]) -> pl.DataFrame:
    expressions = [pl.col(LINE).max()]
    for prop, rule in rules.items():
        if rule == "add":
            expressions.append(pl.col(prop).explode().drop_nulls().unique(maintain_order=True).alias(prop))
        elif rule == "sum":
            # An all-empty group stays empty instead of becoming 0, so "sum" never invents a value.
            expressions.append(pl.when(pl.col(prop).is_not_null().any()).then(pl.col(prop).sum()).otherwise(None).alias(prop))
        else:
            expressions.append(pl.col(prop).last())
    return frame.sort(LINE).group_by(KEY, maintain_order=True).agg(expressions)


def _mappings(goal: ImportGoal, frame_columns: list[str], properties: dict[str, PropertyDefinition], reserved: set[str], warnings: list[str]) -> list[Mapping]:
    mappings = [Mapping(column=_n(m.column), property=m.property, rule=m.rule) for m in goal.mappings]
    if goal.bulk_mapping is not None:
        taken = {m.column for m in mappings} | reserved | {_n(c) for c in goal.bulk_mapping.exclude}
        undeclared = []
        for column in frame_columns:
            if column in taken or column == LINE:
                continue
            target = goal.bulk_mapping.prefix + column
            if target in properties:
                mappings.append(Mapping(column=column, property=target, rule=goal.bulk_mapping.rule))
            else:
                undeclared.append(target)
        if undeclared:
            warnings.append(f"bulk mapping skipped columns whose property is not declared in store.yaml: {', '.join(undeclared)}")
    return mappings


def _ancestors(goal: ImportGoal, name: str) -> list[LinkedFile]:
    """The chain of links from ``name`` up to the root file (nearest first)."""
    chain = []
    linked = {f.name: f for f in goal.files.linked}
    while name in linked:
        chain.append(linked[name])
        name = linked[name].parent
    return chain


def build_import_tables(
    goal: ImportGoal,
    catalog: Catalog,
    paths: dict[str, Path],
    display_names: dict[str, str],
    run_time: datetime,
) -> StagedImport:
    """Read, process, link and join one delivery. Raises InputError when the delivery cannot be
    imported (or has rejected rows and ``on_error`` is ``fail``); nothing is merged then."""
    files = _DeliveryFiles(goal, paths, display_names)
    warnings: list[str] = []
    root = goal.files.root.name
    is_profiles = isinstance(goal, ProfileImportGoal)
    properties = catalog.profile_properties if is_profiles else catalog.group_types[goal.group_type].properties
    key_column = _n(goal.identifiers[0].column) if is_profiles else _n(goal.group_id)

    # Formats derived from the catalog: a column mapped to a decimal property is parsed as decimal.
    derived: dict[str, dict[str, ColumnFormat]] = {name: {} for name in paths}
    for mapping in goal.mappings:
        if mapping.property in properties:
            derived[root][_n(mapping.column)] = _format_for(properties[mapping.property])
    if goal.bulk_mapping is not None:
        for prop_name, prop in properties.items():
            if prop_name.startswith(goal.bulk_mapping.prefix):
                derived[root].setdefault(_n(prop_name[len(goal.bulk_mapping.prefix):]), _format_for(prop))
    timeline = goal.timeline if is_profiles else []
    for event in timeline:
        event_type = catalog.event_types[event.event_type]
        derived[event.file][_n(event.event_time)] = ColumnFormat(type="datetime", format=event.event_time_format)
        for prop, column in event.properties.items():
            derived[event.file][_n(column)] = _format_for(event_type.properties[prop])
        for nested in event.nested:
            for prop, column in nested.properties.items():
                derived[nested.file][_n(column)] = _format_for(event_type.nested[nested.type].properties[prop])
    derived[root].pop(key_column, None)  # keys stay text: "00123" is not 123 (#48)

    for name in paths:
        files.read(name, derived[name])

    # Processors run before linking and mapping, on the root file (the one holding the identifiers).
    if goal.processors:
        processed = apply_processors(files.frames[root].lazy(), goal.processors, display_name=display_names[root], run_time=run_time)
        files.frames[root] = processed.collect()

    # Columns each file must have, and the ones the goal uses.
    used: dict[str, set[str]] = {name: set() for name in paths}
    used[root].add(key_column)
    for linked in goal.files.linked:
        used[linked.name] |= {_n(c) for c in linked.link}
        used[linked.parent] |= {_n(c) for c in linked.link.values()}
    for event in timeline:
        used[event.file] |= {_n(event.event_id), _n(event.event_time), *(_n(c) for c in event.properties.values())}
        for nested in event.nested:
            used[nested.file] |= {_n(c) for c in nested.properties.values()}
    for name in paths:
        files.require(name, used[name])
    mappings = _mappings(goal, files.frames[root].columns, properties, used[root], warnings)
    for mapping in mappings:
        if mapping.property not in properties:
            continue
        used[root].add(mapping.column)
    files.require(root, {m.column for m in mappings})
    for name in paths:
        files.extra_columns(name, used[name], warnings)

    problems = files.problems
    bad_lines: dict[str, set[int]] = {}
    for problem in problems:
        bad_lines.setdefault(problem.file, set()).add(problem.line or 0)

    # --- root rows: identifiers and mapped values
    frame = files.frames[root]
    rows_read = frame.height
    frame = frame.with_columns(pl.col(key_column).cast(pl.String).str.strip_chars().alias(KEY))
    frame = _reject_rows(
        frame,
        pl.col(KEY).is_null() | (pl.col(KEY) == ""),
        display_names[root],
        key_column,
        "empty identifier",
        "every row needs a value in the identifier column",
        problems,
    )
    if bad_lines.get(display_names[root]):
        frame = frame.filter(~pl.col(LINE).is_in(sorted(bad_lines[display_names[root]])))
    rules = {m.property: m.rule for m in mappings}
    records = frame.select(KEY, LINE, *(pl.col(m.column).alias(m.property) for m in mappings))
    # A column a processor created, or one shared with an event property of another type, is
    # typed here by its target property, on the records only.
    retype = {
        m.property: _format_for(properties[m.property])
        for m in mappings
        if properties[m.property].type != "text" and records.schema.get(m.property) == pl.String
    }
    if retype:
        records, retype_problems = parse_typed(records, retype, display_names[root], goal.files.root.csv.decimal_comma)
        problems.extend(retype_problems)
        if retype_problems and goal.on_error == "skip_rows":
            records = records.filter(~pl.col(LINE).is_in([p.line for p in retype_problems if p.line]))
    records = _aggregate(records, rules)

    # --- timeline events and their nested items
    events: dict[str, pl.DataFrame] = {}
    items: dict[str, pl.DataFrame] = {}
    product_store: list[ProductStoreSource] = []
    keyed: dict[str, pl.DataFrame] = {root: frame}

    def with_key(name: str) -> pl.DataFrame:
        """The file's rows carrying the root key, joined up the chain of links."""
        if name in keyed:
            return keyed[name]
        linked = next(f for f in goal.files.linked if f.name == name)
        parent = with_key(linked.parent)
        child = files.frames[name]
        left_on = [_n(c) for c in linked.link]
        right_on = [_n(c) for c in linked.link.values()]
        parent_keys = parent.select(*[pl.col(c).cast(pl.String) for c in right_on], pl.col(KEY)).unique(subset=right_on, keep="last")
        joined = child.with_columns([pl.col(c).cast(pl.String) for c in left_on]).join(
            parent_keys, left_on=left_on, right_on=right_on, how="left", maintain_order="left"
        )
        orphan = pl.col(KEY).is_null()
        orphans = joined.filter(orphan)
        if orphans.height:
            reason = f"no matching row in {linked.parent!r} for {', '.join(left_on)}"
            if linked.orphans == "error":
                raise InputError(
                    [
                        InputProblem(file=display_names[name], line=line, column=left_on[0], reason=reason, fix="deliver the parent rows in the same delivery, or set orphans: reject")
                        for line in orphans[LINE].to_list()
                    ]
                )
            joined = _reject_rows(joined, orphan, display_names[name], left_on[0], reason, "the row was left out (orphans: reject)", problems)
        keyed[name] = joined
        return joined

    for event in timeline:
        source = with_key(event.file)
        event_id = _n(event.event_id)
        event_time = _n(event.event_time)
        source = _reject_rows(source, pl.col(event_id).is_null(), display_names[event.file], event_id, "empty event id", "every event row needs an id", problems)
        event_frame = (
            source.select(
                pl.col(event_id).cast(pl.String).alias("event_id"),
                pl.col(KEY),
                pl.col(event_time).alias("event_time"),
                *(pl.col(_n(column)).alias(prop) for prop, column in event.properties.items()),
                pl.col(LINE),
            )
            .sort(LINE)
            .unique(subset=["event_id"], keep="last", maintain_order=True)
            .drop(LINE)
        )
        events[event.event_type] = event_frame
        parent_ids = source.select(*[pl.col(c) for c in source.columns if c != KEY])
        for nested in event.nested:
            linked = next(f for f in goal.files.linked if f.name == nested.file)
            if linked.parent != event.file:
                raise InputError(
                    InputProblem(
                        file=display_names[nested.file], line=None, column=None,
                        reason=f"nested file {nested.file!r} must link directly to the event file {event.file!r}",
                        fix="set its parent to the event file",
                    )
                )
            left_on = [_n(c) for c in linked.link]
            right_on = [_n(c) for c in linked.link.values()]
            lookup = parent_ids.select(*[pl.col(c).cast(pl.String) for c in right_on], pl.col(event_id).cast(pl.String).alias("event_id")).unique(subset=right_on, keep="last")
            child = with_key(nested.file).with_columns([pl.col(c).cast(pl.String) for c in left_on])
            joined = child.join(lookup, left_on=left_on, right_on=right_on, how="inner", maintain_order="left")
            item_frame = joined.sort(LINE).select(
                pl.col("event_id"),
                (pl.col(LINE).rank("ordinal").over("event_id")).cast(pl.Int64).alias("item_index"),
                *(pl.col(_n(column)).alias(prop) for prop, column in nested.properties.items()),
            )
            items[f"{event.event_type}/{nested.type}"] = item_frame
            if event.add_to_product_store:
                nested_props = catalog.event_types[event.event_type].nested[nested.type].properties
                if event.product_id_property in nested_props:
                    product_store.append(
                        ProductStoreSource(
                            event_type=event.event_type,
                            nested_type=nested.type,
                            product_id_property=event.product_id_property,
                            quantity_property="quantity" if "quantity" in nested_props else None,
                        )
                    )

    if problems and goal.on_error == "fail":
        raise InputError(problems)
    return StagedImport(
        target="profiles" if is_profiles else "groups",
        identifier_property=goal.identifiers[0].property if is_profiles else "group_id",
        allow_create=goal.allow_new_profiles if is_profiles else goal.allow_new_groups,
        rules=rules,
        records=records,
        group_type=None if is_profiles else goal.group_type,
        events=events,
        items=items,
        product_store=product_store,
        rejects=problems,
        rows_read=rows_read,
        warnings=warnings,
    )
