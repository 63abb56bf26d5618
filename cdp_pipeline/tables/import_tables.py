"""From the plaintext files of one delivery to the tables the store merges, in Polars.

Order of work (the seeds' order): read each file with its file and field handling → run each
file's data processors → check the columns → link identifiers → map columns to properties →
join nested files to their parents → one row per key (duplicates resolved) → StagedImport.

Duplicate keys inside one delivery are resolved here so the store never sees two updates of one
key in one statement (reliability #49, A9): for set, set_if_empty and set_or_clear the LAST row
of the key in file order wins; add collects the distinct values of all rows in file order; sum
adds all rows. A mapping from a linked file (``mappings[].file``) resolves the same way over the
linked rows of the key.

Several identifiers (``identifiers: [customer_id → customer_number, email → email]``): each row
is keyed by its FIRST non-empty identifier in declared order (``_key`` + ``_key_index``). A row
keyed by a later identifier whose value also appears, for that identifier, on a row keyed by an
earlier one joins that row's key, so "C9 + a@x" and "(empty) + a@x" in one delivery become one
profile. Rows where every identifier is empty are rejected with their line. The store then
matches every key in declared order; the first identifier that finds a profile wins.

Rejects: a row without identifier, an orphan nested row (``orphans: reject``) or an event row
without id or time is left out as a whole. A cell that does not parse is rejected on its own:
the cell is not imported and the row's other values are (for ``on_error: skip_rows``), except
when the cell feeds a ``set_or_clear`` mapping, where an empty value would CLEAR the stored one,
so that row is left out.

Row identities for the row delta (issue D.1): for every *sum* property, each source row gets a
128-bit identity: md5 over the raw text (as read, before processors) of the row's identifier
columns (root file) or link columns (linked file), the event-id columns of events read from that
file, and the sum's source column when the file has it; plus the occurrence number for identical
rows, so a file holding the same row twice counts it twice. Extra columns appearing in a new
version of the file, a new mapping or a processor change do not change the identity, so they
never make the store count a row again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.config.connection import GroupImportGoal, Mapping, ProfileImportGoal
from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.csv_reading import read_delimited
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.staged import KEY, KEY_INDEX, LINE, ROWS, ProductStoreSource, StagedImport

ImportGoal = GroupImportGoal | ProfileImportGoal
#: separates the cells of a row identity; a cell never contains it in practice, and a NUL marks an
#: empty cell so "" and NULL differ only through this marker (both are "no value" on read anyway).
_CELL_SEPARATOR = "\x1f"
_EMPTY_CELL = "\x00"


def ident_column(index: int) -> str:
    """Column of the records holding the key's value of identifier ``index``."""
    return f"_ident_{index}"


def _n(name: str) -> str:
    return normalise_column_name(name)


def _format_for(prop: PropertyDefinition) -> ColumnFormat:
    return ColumnFormat(type=prop.type)


@dataclass(frozen=True)
class _Mapped:
    """A mapping with its file resolved and its column normalised."""

    file: str
    column: str
    property: str
    rule: str


class _DeliveryFiles:
    """The delivery's frames by logical file name, with the problems found while reading them.

    ``raw`` keeps each file as read (all text): the row identities are computed from it, and a
    cell that failed to parse is found by comparing it with the typed frame."""

    def __init__(self, goal: ImportGoal, paths: dict[str, Path], display: dict[str, str], max_file_bytes: int | None):
        self.goal = goal
        self.paths = paths
        self.display = display
        self.max_file_bytes = max_file_bytes
        self.raw: dict[str, pl.DataFrame] = {}
        #: as parsed, before processors (aligned row by row with ``raw``).
        self.typed: dict[str, pl.DataFrame] = {}
        #: as parsed and processed: what the goal links and maps.
        self.frames: dict[str, pl.DataFrame] = {}
        self.problems: list[InputProblem] = []

    def read(self, name: str, derived: dict[str, ColumnFormat]) -> None:
        selection = self.goal.files.file(name)
        frame = read_delimited(self.paths[name], selection.csv, self.display[name], max_bytes=self.max_file_bytes)
        declared = {_n(column): fmt for column, fmt in selection.csv.columns.items()}
        formats = {column: fmt for column, fmt in {**derived, **declared}.items() if column in frame.columns}
        typed, problems = parse_typed(frame, formats, self.display[name], selection.csv.decimal_comma)
        self.raw[name] = frame
        self.typed[name] = typed
        self.frames[name] = typed
        self.problems.extend(problems)

    def failed_cells(self, name: str, column: str) -> pl.Series:
        """Lines of ``name`` whose ``column`` did not parse (all of them; the listed problems are capped)."""
        if column not in self.raw[name].columns:
            return pl.Series(LINE, [], dtype=pl.Int64)
        return _failed_lines(self.raw[name], self.typed[name], column)

    def require(self, name: str, columns: set[str]) -> None:
        selection = self.goal.files.file(name)
        needed = columns | {_n(c) for c in selection.required_columns}
        missing = sorted(needed - set(self.frames[name].columns))
        if missing:
            # Schema drift on a required column fails the file before anything is merged (#46).
            present = [c for c in self.frames[name].columns if c != LINE]
            raise InputError(
                [
                    InputProblem(
                        file=self.display[name],
                        line=1,
                        column=column,
                        reason="required column is missing from the header",
                        fix=f"add the column, or correct the goal's configuration (columns present: {', '.join(present[:30])})",
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


def _blank_as_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _link_keys(count: int) -> list[str]:
    return [f"_link_{index}" for index in range(count)]


def _link_values(columns: list[str], keys: list[str]) -> list[pl.Expr]:
    """Link values as they are compared: text, without surrounding blanks, blank as missing. The
    identifiers are trimmed the same way, so a padded "O1 " in one file finds "O1" in the other
    (reliability #48); the columns themselves keep their values."""
    return [_blank_as_null(pl.col(column).cast(pl.String).str.strip_chars()).alias(key) for column, key in zip(columns, keys)]


def _failed_lines(before: pl.DataFrame, after: pl.DataFrame, column: str) -> pl.Series:
    """Lines whose non-blank text in ``before`` became null in ``after`` (a cell that did not parse)."""
    if before.schema[column] != pl.String or after.schema[column] == pl.String:
        return pl.Series(LINE, [], dtype=pl.Int64)
    failed = before[column].str.strip_chars().ne("").fill_null(False) & after[column].is_null()
    return before.filter(failed)[LINE]


def _reject_rows(frame: pl.DataFrame, mask: pl.Expr, display: str, column: str | None, reason: str, fix: str, problems: list[InputProblem]) -> pl.DataFrame:
    bad = frame.filter(mask)
    problems.extend(InputProblem(file=display, line=line, column=column, reason=reason, fix=fix) for line in bad[LINE].to_list())
    return frame.filter(~mask)


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
    return frame.sort(LINE).group_by(KEY, KEY_INDEX, maintain_order=True).agg(expressions)


def _mappings(goal: ImportGoal, root: str, frame_columns: list[str], properties: dict[str, PropertyDefinition], reserved: set[str], warnings: list[str]) -> list[_Mapped]:
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


def row_identities(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``_line`` → the row's 128-bit identity (``_row_hash_hi``, ``_row_hash_lo``: md5 as two UInt64).

    The identity is md5 over the cells of ``columns`` (raw text). Identical rows are told apart by
    their occurrence (the n-th identical row hashes ``text + n``), so a file with the same row
    twice contributes it twice. md5 runs in DuckDB, vectorised; Polars' own ``hash`` is not used
    because it is not stable across Polars versions, and these values are stored for years.
    Only rows whose identity occurs more than once pay for the occurrence numbering."""
    cells = [pl.col(c).cast(pl.String).fill_null(_EMPTY_CELL) for c in columns]
    text = pl.concat_str(cells, separator=_CELL_SEPARATOR) if cells else pl.lit("", dtype=pl.String)
    identities = frame.select(pl.col(LINE), text.alias("identity"))
    connection = duckdb.connect()
    try:
        connection.register("row_text", identities)
        return connection.sql(
            """
            WITH hashed AS (SELECT _line, identity, md5_number(identity) AS h FROM row_text),
            repeated AS (SELECT h FROM hashed GROUP BY h HAVING count(*) > 1),
            renumbered AS (
                SELECT _line, row_number() OVER (PARTITION BY h ORDER BY _line) AS occurrence, identity
                FROM hashed WHERE h IN (SELECT h FROM repeated)
            ),
            final AS (
                SELECT hashed._line,
                       CASE WHEN renumbered.occurrence > 1
                            THEN md5_number(renumbered.identity || chr(30) || CAST(renumbered.occurrence AS VARCHAR))
                            ELSE hashed.h END AS h
                FROM hashed LEFT JOIN renumbered USING (_line)
            )
            SELECT _line, CAST(h >> 64 AS UBIGINT) AS _row_hash_hi,
                   CAST(h & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT) AS _row_hash_lo
            FROM final
            """
        ).pl()
    finally:
        connection.close()


def build_import_tables(
    goal: ImportGoal,
    catalog: Catalog,
    paths: dict[str, Path],
    display_names: dict[str, str],
    run_time: datetime,
    *,
    max_file_bytes: int | None = None,
) -> StagedImport:
    """Read, process, link and join one delivery. Raises InputError when the delivery cannot be
    imported (or has rejected rows and ``on_error`` is ``fail``); nothing is merged then.
    ``max_file_bytes`` bounds what a gzip-compressed file may expand to."""
    files = _DeliveryFiles(goal, paths, display_names, max_file_bytes)
    warnings: list[str] = []
    root = goal.files.root.name
    is_profiles = isinstance(goal, ProfileImportGoal)
    properties = catalog.profile_properties if is_profiles else catalog.group_types[goal.group_type].properties
    identifiers = [(_n(i.column), i.property) for i in goal.identifiers] if is_profiles else [(_n(goal.group_id), "group_id")]
    identifier_columns = [column for column, _ in identifiers]
    _check_mapping_targets(goal, goal.mappings, identifiers)
    missing_files = sorted({root, *(f.name for f in goal.files.linked)} - set(paths))
    if missing_files:
        raise InputError(
            InputProblem(file=display_names.get(root, root), line=None, column=None, reason=f"the delivery lacks the goal's file(s) {missing_files}", fix="deliver every linked file with the root file")
        )

    # Formats derived from the catalog: a column mapped to a decimal property is parsed as decimal.
    derived: dict[str, dict[str, ColumnFormat]] = {name: {} for name in paths}
    for mapping in goal.mappings:
        if mapping.property in properties:
            derived[mapping.file or root][_n(mapping.column)] = _format_for(properties[mapping.property])
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
    for column in identifier_columns:
        derived[root].pop(column, None)  # keys stay text: "00123" is not 123 (#48)

    for name in paths:
        files.read(name, derived[name])

    # Processors run before linking and mapping, each file with the processors that name it
    # (the root file by default), in declared order.
    for name in paths:
        chain = _processors_for(goal, name)
        if chain:
            files.frames[name] = apply_processors(files.frames[name].lazy(), chain, display_name=display_names[name], run_time=run_time).collect()

    # Columns each file must have, and the ones the goal uses.
    used: dict[str, set[str]] = {name: set() for name in paths}
    used[root] |= set(identifier_columns)
    for linked in goal.files.linked:
        used[linked.name] |= {_n(c) for c in linked.link}
        used[linked.parent] |= {_n(c) for c in linked.link.values()}
    for event in timeline:
        used[event.file] |= {_n(event.event_id), _n(event.event_time), *(_n(c) for c in event.properties.values())}
        for nested in event.nested:
            used[nested.file] |= {_n(c) for c in nested.properties.values()}
    mappings = [m for m in _mappings(goal, root, files.frames[root].columns, properties, used[root], warnings) if m.property in properties]
    for mapping in mappings:
        used[mapping.file].add(mapping.column)
    # Every missing column of every file in one error, before anything is linked or merged (#46).
    missing: list[InputProblem] = []
    for name in paths:
        try:
            files.require(name, used[name])
        except InputError as error:
            missing.extend(error.problems)
    if missing:
        raise InputError(missing)
    for name in paths:
        files.extra_columns(name, used[name], warnings)

    problems = files.problems
    rules = {m.property: m.rule for m in mappings}

    # --- root rows: identifiers → key
    frame = files.frames[root]
    rows_read = frame.height
    frame = frame.with_columns(
        _blank_as_null(pl.col(column).cast(pl.String).str.strip_chars()).alias(ident_column(index))
        for index, column in enumerate(identifier_columns)
    )
    ident_values = [pl.col(ident_column(index)) for index in range(len(identifiers))]
    frame = frame.with_columns(
        pl.coalesce(ident_values).alias(KEY),
        pl.coalesce([pl.when(value.is_not_null()).then(pl.lit(index, dtype=pl.Int32)) for index, value in enumerate(ident_values)]).alias(KEY_INDEX),
    )
    columns_named = ", ".join(identifier_columns)
    frame = _reject_rows(
        frame,
        pl.col(KEY).is_null(),
        display_names[root],
        identifier_columns[0],
        "empty identifier" if len(identifiers) == 1 else f"every identifier is empty ({columns_named})",
        "every row needs a value in the identifier column" if len(identifiers) == 1 else f"every row needs a value in at least one of {columns_named}",
        problems,
    )
    frame = _unify_keys(frame, len(identifiers))
    frame = _drop_rows_clearing_on_failed_cells(frame, root, mappings, files)
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
        keys = _link_keys(len(left_on))
        parent_keys = parent.select(*_link_values(right_on, keys), pl.col(KEY), pl.col(KEY_INDEX)).unique(subset=keys, keep="last", maintain_order=True)
        joined = (
            child.with_columns([pl.col(c).cast(pl.String) for c in left_on])
            .with_columns(_link_values(left_on, keys))
            .join(parent_keys, on=keys, how="left", maintain_order="left")
            .drop(keys)
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
        joined = _drop_rows_clearing_on_failed_cells(joined, name, mappings, files)
        keyed[name] = joined
        return joined

    # --- mapped values, one record per key
    root_mappings = [m for m in mappings if m.file == root]
    root_rows = frame.select(KEY, KEY_INDEX, LINE, *(ident_column(i) for i in range(len(identifiers))), *(pl.col(m.column).alias(m.property) for m in root_mappings))
    root_rows = _retype(root_rows, root_mappings, properties, display_names[root], goal, problems)
    records = _aggregate(root_rows, {m.property: m.rule for m in root_mappings}, len(identifiers), with_rows=True)
    value_rows: dict[str, pl.DataFrame] = {root: root_rows}
    for name in [f.name for f in goal.files.linked]:
        file_mappings = [m for m in mappings if m.file == name]
        if not file_mappings:
            continue
        rows = with_key(name).select(KEY, KEY_INDEX, LINE, *(pl.col(m.column).alias(m.property) for m in file_mappings))
        rows = _retype(rows, file_mappings, properties, display_names[name], goal, problems)
        value_rows[name] = rows
        per_key = _aggregate(rows, {m.property: m.rule for m in file_mappings}, 0, with_rows=False).drop(LINE)
        records = records.join(per_key, on=[KEY, KEY_INDEX], how="left", maintain_order="left")

    # --- the sums' source rows with their identities (row delta, see the module docstring)
    sum_rows: dict[str, pl.DataFrame] = {}
    identity_cache: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
    for mapping in mappings:
        if mapping.rule != "sum":
            continue
        raw = files.raw[mapping.file]
        base = identifier_columns if mapping.file == root else [_n(c) for c in next(f for f in goal.files.linked if f.name == mapping.file).link]
        event_ids = [_n(event.event_id) for event in timeline if event.file == mapping.file]
        identity = [c for c in dict.fromkeys([*base, *event_ids, mapping.column]) if c in raw.columns]
        cache_key = (mapping.file, tuple(identity))
        if cache_key not in identity_cache:
            identity_cache[cache_key] = row_identities(raw, identity)
        rows = value_rows[mapping.file].select(KEY, KEY_INDEX, LINE, pl.col(mapping.property).alias("value")).filter(pl.col("value").is_not_null())
        sum_rows[mapping.property] = rows.join(identity_cache[cache_key], on=LINE, how="left").drop(LINE)

    # --- timeline events and their nested items
    events: dict[str, pl.DataFrame] = {}
    items: dict[str, pl.DataFrame] = {}
    product_store: list[ProductStoreSource] = []

    for event in timeline:
        source = with_key(event.file)
        event_id = _n(event.event_id)
        event_time = _n(event.event_time)
        source = _reject_rows(source, pl.col(event_id).is_null(), display_names[event.file], event_id, "empty event id", "every event row needs an id", problems)
        # An event without a time cannot be placed on the timeline; a time that did not parse is
        # already listed as a cell problem, so only the empty ones get their own entry here.
        unparsed_times = files.failed_cells(event.file, event_time)
        source = _reject_rows(
            source,
            pl.col(event_time).is_null() & ~pl.col(LINE).is_in(unparsed_times.implode()),
            display_names[event.file], event_time, "empty event time", "every event row needs a date/time", problems,
        )
        source = source.filter(pl.col(event_time).is_not_null())
        event_frame = (
            source.select(
                pl.col(event_id).cast(pl.String).alias("event_id"),
                pl.col(KEY),
                pl.col(KEY_INDEX),
                pl.col(event_time).alias("event_time"),
                *(pl.col(_n(column)).alias(prop) for prop, column in event.properties.items()),
                pl.col(LINE),
            )
            .sort(LINE)
            .unique(subset=["event_id"], keep="last", maintain_order=True)
            .drop(LINE)
        )
        events[event.event_type] = event_frame
        parent_ids = source.select(*[pl.col(c) for c in source.columns if c not in (KEY, KEY_INDEX)])
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
            keys = _link_keys(len(left_on))
            lookup = parent_ids.select(*_link_values(right_on, keys), pl.col(event_id).cast(pl.String).alias("event_id")).unique(subset=keys, keep="last")
            child = with_key(nested.file).with_columns(_link_values(left_on, keys))
            joined = child.join(lookup, on=keys, how="inner", maintain_order="left").drop(keys)
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
        identifier_property=identifiers[0][1],
        identifiers=[prop for _, prop in identifiers],
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
        sum_rows=sum_rows,
    )


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
                pl.when((pl.col(KEY_INDEX) == index) & pl.col("_donor_key").is_not_null()).then(pl.col("_donor_index")).otherwise(pl.col(KEY_INDEX)).alias(KEY_INDEX),
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


def _retype(rows: pl.DataFrame, mappings: list[_Mapped], properties: dict[str, PropertyDefinition], display: str, goal: ImportGoal, problems: list[InputProblem]) -> pl.DataFrame:
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
    problems.extend(retype_problems)
    for mapping in mappings:
        if mapping.rule == "set_or_clear" and mapping.property in retype:
            failed = _failed_lines(rows, typed, mapping.property)
            if failed.len():
                typed = typed.filter(~pl.col(LINE).is_in(failed.implode()))
    return typed
