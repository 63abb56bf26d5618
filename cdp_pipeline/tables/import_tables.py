"""From the plaintext files of one delivery to the tables the store merges, in Polars.

Order of work (the seeds' order): read each file with its file and field handling → run each
file's data processors → check the columns → link identifiers → map columns to properties →
join nested files to their parents → one row per key (duplicates resolved) → StagedImport.

Duplicate keys inside one delivery are resolved here so the store never sees two updates of one
key in one statement (an UPDATE that meets a key twice applies one of them at random): for set, set_if_empty and set_or_clear the LAST row
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

Row identities for sums: a row of a timeline event's file is identified by its event id, a row of
a nested file by its event id and its key within the event, and a mapping with ``identity``
columns by those columns (``_keyed``: the store remembers what each key contributed, whatever the
file is called). Every other row keeps the per-file identity (issue D.1), a 128-bit hash: md5
over the raw text (as read, before processors) of the row's identifier columns (root file) or
link columns (linked file), the event-id columns of events read from that file, and the sum's
source column when the file has it; plus the occurrence number for identical rows, so a file
holding the same row twice counts it twice. Extra columns appearing in a new version of the file,
a new mapping or a processor change do not change the identity, so they never make the store
count a row again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import (
    DEFAULT_DOMAIN_GROUP,
    PERMISSION_LEVEL,
    PERMISSION_LEVELS,
    RESERVED_EVENT_COLUMNS,
    RESERVED_GROUP_COLUMNS,
    RESERVED_PROFILE_COLUMNS,
    Catalog,
    PropertyDefinition,
    creatable_property,
)
from cdp_pipeline.config.connection import GroupImportGoal, Mapping, NestedEventMapping, ProfileImportGoal
from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.csv_reading import read_delimited_file
from cdp_pipeline.tables.permission_levels import checked_levels
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.staged import (
    FILE_HASH_HI,
    FILE_HASH_LO,
    HASH_HI,
    HASH_LO,
    KEY,
    KEY_INDEX,
    LINE,
    NOT_IMPORTED,
    ROWS,
    SUM_KEYED,
    ProductStoreSource,
    StagedImport,
)

ImportGoal = GroupImportGoal | ProfileImportGoal
#: separates the cells of a row identity; a cell never contains it in practice, and a NUL marks an
#: empty cell so "" and NULL differ only through this marker (both are "no value" on read anyway).
_CELL_SEPARATOR = "\x1f"
_EMPTY_CELL = "/"


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


@dataclass
class _RejectTally:
    """Every rejected row and every value not imported, per file and counted in full (the listed
    problems are capped): the share guard and the delivery's counts are computed from it."""

    lines: dict[str, list[pl.Series]] = field(default_factory=dict)
    #: (file, column, reason) → rows
    reasons: Counter = field(default_factory=Counter)
    values: int = 0

    def add(self, display: str, lines: pl.Series, column: str | None, reason: str, *, value: bool = False) -> None:
        if not lines.len():
            return
        self.lines.setdefault(display, []).append(lines.cast(pl.Int64))
        self.reasons[(display, column, reason)] += lines.len()
        if value:
            self.values += lines.len()

    def rejected_lines(self, display: str) -> int:
        series = self.lines.get(display)
        return pl.concat(series).n_unique() if series else 0

    @property
    def rows(self) -> int:
        return sum(self.rejected_lines(display) for display in self.lines)


class _DeliveryFiles:
    """The delivery's frames by logical file name, with the problems found while reading them.

    ``raw`` keeps each file as read (all text): the row identities are computed from it, and a
    cell that failed to parse is found by comparing it with the typed frame."""

    def __init__(self, goal: ImportGoal, paths: dict[str, Path], display: dict[str, str], max_file_bytes: int | None, tally: _RejectTally):
        self.goal = goal
        self.tally = tally
        self.paths = paths
        self.display = display
        self.max_file_bytes = max_file_bytes
        self.raw: dict[str, pl.DataFrame] = {}
        #: rows of each file as read, before a reject left any out.
        self.heights: dict[str, int] = {}
        #: (file, column) → lines whose cell did not parse, found once when the file is read.
        self.failed: dict[tuple[str, str], pl.Series] = {}
        #: as parsed and processed: what the goal links and maps.
        self.frames: dict[str, pl.DataFrame] = {}
        self.problems: list[InputProblem] = []
        #: rows the reader left out of each file as rejects (not in ``raw``).
        self.left_out: dict[str, int] = {}

    def read(self, name: str, derived: dict[str, ColumnFormat], raw_columns: set[str] | None) -> None:
        """Read, type and keep the file; ``raw_columns``: the columns whose text as read is kept
        (None: all of them)."""
        selection = self.goal.files.file(name)
        read = read_delimited_file(self.paths[name], selection.csv, self.display[name], max_bytes=self.max_file_bytes)
        frame = read.frame
        self.left_out[name] = len(read.left_out)
        for problem in read.left_out:
            self.problems.append(problem)
            self.tally.add(problem.file, pl.Series(LINE, [problem.line], dtype=pl.Int64), None, problem.reason)
        declared = {_n(column): fmt for column, fmt in selection.csv.columns.items()}
        formats = {column: fmt for column, fmt in {**derived, **declared}.items() if column in frame.columns}
        typed, problems = parse_typed(frame, formats, self.display[name], selection.csv.decimal_comma)
        for column, fmt in formats.items():
            failed = _failed_lines(frame, typed, column)
            self.failed[(name, column)] = failed
            self.tally.add(self.display[name], failed, column, f"value does not parse as {fmt.type}", value=True)
        # Only a typed column can lose a cell, so every failed cell is known now; the text as read
        # is kept only for the columns row identities hash (a second copy of every typed column
        # of a 4M-line file otherwise stays in memory until the end of staging).
        self.heights[name] = frame.height
        self.raw[name] = frame.select(c for c in frame.columns if c in raw_columns or c == LINE) if raw_columns is not None else frame
        self.frames[name] = typed
        self.problems.extend(problems)

    def failed_cells(self, name: str, column: str) -> pl.Series:
        """Lines of ``name`` whose ``column`` did not parse (all of them; the listed problems are capped)."""
        failed = self.failed.get((name, column))
        return failed if failed is not None else pl.Series(LINE, [], dtype=pl.Int64)

    def require(self, name: str, columns: set[str]) -> None:
        selection = self.goal.files.file(name)
        needed = columns | {_n(c) for c in selection.required_columns}
        missing = sorted(needed - set(self.frames[name].columns))
        if missing:
            # Schema drift on a required column fails the file before anything is merged.
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


def _key_text(expression: pl.Expr) -> pl.Expr:
    """A key (identifier, link, event id, nested key, sum identity) as it is compared: the text as
    written, without surrounding blanks, in Unicode NFC (an "é" typed as one code point or as "e"
    plus an accent is one key), blank as missing. Keys are never typed: "007" stays "007" whatever
    type a property fed by the same column has, or a customer number would lose its leading zeros
    and every order would miss its customer."""
    text = expression.cast(pl.String).str.strip_chars()
    # ASCII text is already NFC: only the other cells go through the normaliser, which cost
    # ~1 s per 400k cells and runs on every identifier, link, event id and key column.
    ascii_only = text.str.len_bytes() == text.str.len_chars()
    return _blank_as_null(pl.when(ascii_only).then(text).otherwise(text.str.normalize("NFC")))


def _link_values(columns: list[str], keys: list[str]) -> list[pl.Expr]:
    """Link values as they are compared (see ``_key_text``): a padded "O1 " in one file finds "O1"
    in the other; the columns themselves keep their values."""
    return [_key_text(pl.col(column)).alias(key) for column, key in zip(columns, keys, strict=True)]


def _failed_lines(before: pl.DataFrame, after: pl.DataFrame, column: str) -> pl.Series:
    """Lines whose non-blank text in ``before`` became null in ``after`` (a cell that did not parse)."""
    if before.schema[column] != pl.String or after.schema[column] == pl.String:
        return pl.Series(LINE, [], dtype=pl.Int64)
    # Blanks are stripped only on the few cells that became null, not on the whole column.
    candidates = before.filter(after[column].is_null() & before[column].is_not_null())
    return candidates.filter(candidates[column].str.strip_chars() != "")[LINE]


def _reject_rows(
    frame: pl.DataFrame, mask: pl.Expr, display: str, column: str | None, reason: str, fix: str, problems: list[InputProblem], tally: _RejectTally
) -> pl.DataFrame:
    bad = frame.filter(mask)
    problems.extend(InputProblem(file=display, line=line, column=column, reason=reason, fix=fix) for line in bad[LINE].to_list())
    tally.add(display, bad[LINE], column, reason)
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
    return _in_line_order(frame).group_by(KEY, KEY_INDEX, maintain_order=True).agg(expressions)


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
    hashed = _md5_halves(identities, "identity")
    # Repeats are found on the hash in Polars; only the repeated rows go back to DuckDB to be
    # numbered and hashed again (most files have none).
    # The high half first: no repeat in it is no repeat at all, found without the pairs' table
    # (which, as a struct, cost about as much memory as the texts they were hashed from).
    if not hashed[HASH_HI].is_duplicated().any():
        return hashed
    repeated = pl.struct(HASH_HI, HASH_LO).is_duplicated()
    if not hashed.select(repeated.any()).item():
        return hashed
    again = hashed.filter(repeated).join(identities, on=LINE, how="inner")
    connection = duckdb.connect()
    try:
        connection.register("repeated_rows", again)
        renumbered = connection.sql(
            f"""
            SELECT _line, CAST(h >> 64 AS UBIGINT) AS {HASH_HI}, CAST(h & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT) AS {HASH_LO}
            FROM (
                SELECT _line, md5_number(identity || chr(30) || CAST(occurrence AS VARCHAR)) AS h, occurrence
                FROM (
                    SELECT _line, identity, row_number() OVER (PARTITION BY {HASH_HI}, {HASH_LO} ORDER BY _line) AS occurrence
                    FROM repeated_rows
                )
            )
            WHERE occurrence > 1
            """
        ).pl()
    finally:
        connection.close()
    return hashed.update(renumbered, on=LINE, how="left")


def _md5_halves(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """``_line`` → md5 of ``column`` as two UInt64 halves, in DuckDB (stable across versions).

    A slice of rows at a time: DuckDB's copy of a whole file's texts and its result, on top of the
    frames staging holds, were the orders stage's memory peak (twice, once per sum)."""
    connection = duckdb.connect()
    try:
        halves = []
        for start in range(0, max(frame.height, 1), _MD5_SLICE_ROWS):
            connection.register("row_text", frame.slice(start, _MD5_SLICE_ROWS))
            halves.append(
                connection.sql(
                    f"""
                    SELECT _line, CAST(h >> 64 AS UBIGINT) AS {HASH_HI}, CAST(h & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT) AS {HASH_LO}
                    FROM (SELECT _line, md5_number({column}) AS h FROM row_text)
                    """
                ).pl()
            )
            connection.unregister("row_text")
        return pl.concat(halves, how="vertical")
    finally:
        connection.close()


#: rows hashed by DuckDB at a time (``_md5_halves``).
_MD5_SLICE_ROWS = 1 << 18


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
    tally = _RejectTally()
    files = _DeliveryFiles(goal, paths, display_names, max_file_bytes, tally)
    warnings: list[str] = []
    root = goal.files.root.name
    is_profiles = isinstance(goal, ProfileImportGoal)
    if isinstance(goal, ProfileImportGoal):
        properties = catalog.profile_properties
        identifiers = [(_n(i.column), i.property) for i in goal.identifiers]
        timeline = goal.timeline
    else:
        properties = catalog.group_types[goal.group_type].properties
        identifiers = [(_n(goal.group_id), "group_id")]
        timeline = []
    identifier_columns = [column for column, _ in identifiers]
    _check_mapping_targets(goal, goal.mappings, identifiers)
    missing_files = sorted({root, *(f.name for f in goal.files.linked)} - set(paths))
    if missing_files:
        raise InputError(
            InputProblem(
                file=display_names.get(root, root), line=None, column=None,
                reason=f"the delivery lacks the goal's file(s) {missing_files}", fix="deliver every linked file with the root file",
            )
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
    for event in timeline:
        event_type = catalog.event_types[event.event_type]
        derived[event.file][_n(event.event_time)] = ColumnFormat(type="datetime", format=event.event_time_format)
        for event_property, column in event.properties.items():
            derived[event.file][_n(column)] = _format_for(event_type.properties[event_property])
        for nested in event.nested:
            for nested_property, column in nested.properties.items():
                derived[nested.file][_n(column)] = _format_for(event_type.nested[nested.type].properties[nested_property])
    # Keys stay text (see ``_key_text``): identifiers, both sides of every link, event ids, nested
    # keys and sum identities. A mapping, event or nested property fed by the same column is typed
    # where it is used (``_retype`` / ``_typed_properties``), so the column can be both.
    for column in identifier_columns:
        derived[root].pop(column, None)
    for linked in goal.files.linked:
        for column in linked.link:
            derived[linked.name].pop(_n(column), None)
        for column in linked.link.values():
            derived[linked.parent].pop(_n(column), None)
    for event in timeline:
        derived[event.file].pop(_n(event.event_id), None)
        for nested in event.nested:
            for column in nested.key:
                derived[nested.file].pop(_n(column), None)
    for mapping in goal.mappings:
        for column in mapping.identity:
            derived[mapping.file or root].pop(_n(column), None)

    for name in paths:
        files.read(name, derived[name], _identity_columns(goal, name, identifier_columns, timeline))

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
            used[nested.file] |= {_n(c) for c in nested.properties.values()} | {_n(c) for c in nested.key}
    detected: dict[str, str] = {}
    if goal.bulk_mapping is not None and goal.bulk_mapping.create_properties:
        detected = detect_properties(goal, files.frames[root], properties, used[root])
        reserved_columns = RESERVED_PROFILE_COLUMNS if is_profiles else RESERVED_GROUP_COLUMNS
        refused = [name for name in detected if not creatable_property(name, reserved_columns)]
        if refused:
            # A column named like a store column (domain_group, created_at ...) must never write it.
            warnings.append(f"bulk mapping skipped columns whose property name is reserved or not a valid name: {', '.join(refused)}")
            detected = {name: kind for name, kind in detected.items() if name not in refused}
        if detected:
            # BlueConic's "add all detected fields" creates the properties it does not find; they
            # are typed from this file and the merge adds them to the store and its catalog.
            properties = {**properties, **{name: PropertyDefinition(type=kind) for name, kind in detected.items()}}
            warnings.append(
                f"bulk mapping created {'' if isinstance(goal, ProfileImportGoal) else f'{goal.group_type} group '}properties not declared in store.yaml "
                "(recorded in catalog_properties): "
                + ", ".join(f"{name} ({kind})" for name, kind in detected.items())
            )
    mappings = [m for m in _mappings(goal, root, files.frames[root].columns, properties, used[root], warnings) if m.property in properties]
    for mapped in mappings:
        used[mapped.file].add(mapped.column)
    for declared in goal.mappings:
        used[declared.file or root] |= {_n(c) for c in declared.identity}
    # Every missing column of every file in one error, before anything is linked or merged.
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
    frame = frame.with_columns(_key_text(pl.col(column)).alias(ident_column(index)) for index, column in enumerate(identifier_columns))
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
        tally,
    )
    frame = _unify_keys(frame, len(identifiers))
    frame = _drop_rows_clearing_on_failed_cells(frame, root, mappings, files)
    keyed: dict[str, pl.DataFrame] = {root: frame}
    unique_parent_links: dict[str, bool] = {}

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
        parent_keys = parent.select(*_link_values(right_on, keys), pl.col(KEY), pl.col(KEY_INDEX), pl.col(LINE).alias(_PARENT_LINE)).unique(
            subset=keys, keep="last", maintain_order=True
        )
        child = child.with_columns([pl.col(c).cast(pl.String) for c in left_on])
        own_columns = {KEY, KEY_INDEX, _PARENT_LINE} & set(child.columns)
        # Each parent row has its own link value: a nested file can then find its event by the
        # parent's line number instead of joining the link texts a second time.
        unique_parent_links[name] = parent_keys.height == parent.height and not own_columns
        if own_columns:  # a file with a column named like ours: the join names the columns as before
            joined = child.with_columns(_link_values(left_on, keys)).join(parent_keys, on=keys, how="left", maintain_order="left").drop(keys)
        else:
            # Only the parent's key columns are looked up (each link value once in ``parent_keys``)
            # and set beside the child's columns: joining the whole frame would copy every column.
            found = child.select(_link_values(left_on, keys)).join(parent_keys, on=keys, how="left", maintain_order="left")
            joined = child.with_columns(found[KEY], found[KEY_INDEX], found[_PARENT_LINE])
            del found
        orphan = pl.col(KEY).is_null()
        orphans = joined.filter(orphan)
        if orphans.height:
            reason = f"no matching row in {linked.parent!r} for {', '.join(left_on)}"
            if linked.orphans == "error":
                raise InputError(
                    [
                        InputProblem(
                            file=display_names[name], line=line, column=left_on[0], reason=reason,
                            fix="deliver the parent rows in the same delivery, or set orphans: reject",
                        )
                        for line in orphans[LINE].to_list()
                    ]
                )
            joined = _reject_rows(joined, orphan, display_names[name], left_on[0], reason, "the row was left out (orphans: reject)", problems, tally)
        joined = _drop_rows_clearing_on_failed_cells(joined, name, mappings, files)
        keyed[name] = joined
        return joined

    # --- mapped values, one record per key
    root_mappings = [m for m in mappings if m.file == root]
    root_rows = frame.select(
        KEY, KEY_INDEX, LINE, *(ident_column(i) for i in range(len(identifiers))), *(pl.col(m.column).alias(m.property) for m in root_mappings)
    )
    root_rows = _retype(root_rows, root_mappings, properties, display_names[root], goal, problems, tally)
    if is_profiles:
        root_rows = _permission_levels(root_rows, root_mappings, display_names[root], problems, tally)
    records = _aggregate(root_rows, {m.property: m.rule for m in root_mappings}, len(identifiers), with_rows=True)
    value_rows: dict[str, pl.DataFrame] = {root: root_rows}
    for name in [f.name for f in goal.files.linked]:
        file_mappings = [m for m in mappings if m.file == name]
        if not file_mappings:
            continue
        rows = with_key(name).select(KEY, KEY_INDEX, LINE, *(pl.col(m.column).alias(m.property) for m in file_mappings))
        rows = _retype(rows, file_mappings, properties, display_names[name], goal, problems, tally)
        if is_profiles:
            rows = _permission_levels(rows, file_mappings, display_names[name], problems, tally)
        value_rows[name] = rows
        per_key = _aggregate(rows, {m.property: m.rule for m in file_mappings}, 0, with_rows=False).drop(LINE)
        records = records.join(per_key, on=[KEY, KEY_INDEX], how="left", maintain_order="left")

    # --- timeline events and their nested items
    events: dict[str, pl.DataFrame] = {}
    items: dict[str, pl.DataFrame] = {}
    product_store: list[ProductStoreSource] = []
    #: file → (_line, the key text of the row): an event row's event id, a nested row's event id
    #: and key within its event. Sums fed by these rows remember their contribution per key.
    row_keys: dict[str, pl.DataFrame] = {}
    #: only a file that feeds a sum needs its row keys (a text of every nested row otherwise).
    summed_files = {m.file for m in mappings if m.rule == "sum"}
    detected_events: dict[str, dict[str, str]] = {}
    nested_files = [nested.file for event in timeline for nested in event.nested]
    #: nested files read by nothing after their items are built: no sum, no file linked to them, not
    #: an event file, nested once.
    done_after_nesting = {
        name for name in nested_files
        if nested_files.count(name) == 1 and name not in summed_files
        and name not in {f.parent for f in goal.files.linked} and name not in {event.file for event in timeline}
    }

    for event in timeline:
        source = with_key(event.file)
        event_id = _n(event.event_id)
        event_time = _n(event.event_time)
        source = source.with_columns(_key_text(pl.col(event_id)).alias(_EVENT_ID))
        source = _reject_rows(
            source, pl.col(_EVENT_ID).is_null(), display_names[event.file], event_id, "empty event id", "every event row needs an id", problems, tally
        )
        event_key = pl.concat_str([pl.lit(f"event:{event.event_type}"), pl.col(_EVENT_ID)], separator=_CELL_SEPARATOR)
        if event.file in summed_files:
            row_keys.setdefault(event.file, source.select(LINE, event_key.alias(_ROW_KEY)))
        # An event without a time cannot be placed on the timeline; a time that did not parse is
        # already listed as a cell problem, so only the empty ones get their own entry here.
        unparsed_times = files.failed_cells(event.file, event_time)
        source = _reject_rows(
            source,
            pl.col(event_time).is_null() & ~pl.col(LINE).is_in(unparsed_times.implode()),
            display_names[event.file], event_time, "empty event time", "every event row needs a date/time", problems, tally,
        )
        if unparsed_times.len() and not source.filter(pl.col(event_time).is_not_null()).height:
            # Every event of the file lost its time: whatever max_reject_share says, a run that
            # drops all events must not pass (the times are written in a format nobody declared).
            raise InputError(
                InputProblem(
                    file=display_names[event.file], line=None, column=event_time,
                    reason=f"none of the {unparsed_times.len():,} event times parses, so every event would be dropped",
                    fix="set event_time_format on the goal's timeline entry to the way the file writes its times "
                    "(a strptime pattern such as '%d-%m-%Y %H:%M'; without it the times must be ISO 8601)",
                )
            )
        source = source.filter(pl.col(event_time).is_not_null())
        event_type = catalog.event_types[event.event_type]
        event_columns = dict(event.properties)
        event_definitions = dict(event_type.properties)
        if event.bulk_mapping is not None:
            # "Add all detected fields" for events: every column of the event's file that nothing
            # else uses; properties the catalog lacks are created, typed from this file.
            bulk = event.bulk_mapping
            taken = used[event.file] | {_n(c) for c in bulk.exclude} | set(event_columns.values())
            free = [c for c in files.frames[event.file].columns if c not in taken and c != LINE and bulk.prefix + c not in event_columns]
            for column in free:
                event_columns[bulk.prefix + column] = column
            refused_events = [bulk.prefix + c for c in free if not creatable_property(bulk.prefix + c, RESERVED_EVENT_COLUMNS)]
            if refused_events:
                warnings.append(f"bulk mapping skipped {event.event_type} columns whose property name is reserved or not valid: {', '.join(refused_events)}")
                free = [c for c in free if bulk.prefix + c not in refused_events]
                event_columns = {p: c for p, c in event_columns.items() if p not in refused_events}
            new = [c for c in free if bulk.prefix + c not in event_definitions]
            kinds = detect_types(files.frames[event.file], new)
            if kinds:
                created = {bulk.prefix + column: kind for column, kind in kinds.items()}
                detected_events[event.event_type] = created
                event_definitions.update({name: PropertyDefinition(type=kind) for name, kind in created.items()})
                warnings.append(
                    f"bulk mapping created {event.event_type} event properties not declared in store.yaml (recorded in catalog_properties): "
                    + ", ".join(f"{name} ({kind})" for name, kind in created.items())
                )
        event_frame = _in_line_order(
            source.select(
                pl.col(_EVENT_ID).alias("event_id"),
                pl.col(KEY),
                pl.col(KEY_INDEX),
                pl.col(event_time).alias("event_time"),
                *(pl.col(_n(column)).alias(prop) for prop, column in event_columns.items()),
                pl.col(LINE),
            )
        )
        event_frame = _last_per(event_frame, ["event_id"])
        event_frame = _typed_properties(
            event_frame, {p: event_definitions[p] for p in event_columns}, event_columns, display_names[event.file], goal, problems, tally,
            files, event.file,
        )
        events[event.event_type] = event_frame.drop(LINE)
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
            child = with_key(nested.file)
            if nested.file in done_after_nesting:
                # Nothing after this reads the file's rows: the columns its items do not use (the
                # link text, the customer key) go with ``child`` below instead of at the end.
                for held in (keyed, files.frames, files.raw, value_rows):
                    held.pop(nested.file, None)
            if unique_parent_links[nested.file]:
                # The event of a nested row is the event row it was linked to, if that row is still
                # an event (it may have been left out for an empty id or time).
                lookup = parent_ids.select(pl.col(LINE).alias(_PARENT_LINE), pl.col(_EVENT_ID).alias("event_id"))
                # Only the event id column is looked up: joining the whole frame would copy every column.
                nested_events = child.select(_PARENT_LINE).join(lookup, on=_PARENT_LINE, how="left", maintain_order="left")["event_id"]
            else:
                lookup = parent_ids.select(*_link_values(right_on, keys), pl.col(_EVENT_ID).alias("event_id")).unique(subset=keys, keep="last")
                nested_events = child.select(_link_values(left_on, keys)).join(lookup, on=keys, how="left", maintain_order="left")["event_id"]
            # A row whose event was left out (empty id or time) has no event, and no row either. A
            # nested file's own "event_id" column keeps its name, as a join would leave it.
            nested_events = nested_events.alias("event_id_right" if "event_id" in child.columns else "event_id")
            item_columns = {LINE, "event_id", *(_n(c) for c in nested.properties.values()), *(_n(c) for c in nested.key)}
            joined = child.select(c for c in child.columns if c in item_columns).with_columns(nested_events)
            if nested_events.null_count():
                joined = joined.filter(pl.col(nested_events.name).is_not_null())
            del child
            joined = _in_line_order(joined)
            joined = _item_keys(joined, nested, display_names[nested.file], problems, tally)
            nested_type = event_type.nested[nested.type]
            item_frame = (
                joined.select(
                    pl.col("event_id"),
                    pl.col(_ITEM_KEY).alias("item_key"),
                    *(pl.col(_n(column)).alias(prop) for prop, column in nested.properties.items()),
                    pl.col(LINE),
                )
            )
            if nested.key:
                # One row per key within its event: the last in file order, as for events. Content
                # keys are unique within their event already (numbered among identical rows).
                item_frame = _last_per(item_frame, ["event_id", "item_key"])
            item_frame = _with_item_index(item_frame)
            item_frame = _typed_properties(
                item_frame, {p: nested_type.properties[p] for p in nested.properties}, nested.properties, display_names[nested.file], goal, problems, tally,
                files, nested.file,
            )
            items[f"{event.event_type}/{nested.type}"] = item_frame.select("event_id", "item_index", "item_key", *nested.properties, NOT_IMPORTED)
            tag = pl.lit(f"item:{event.event_type}/{nested.type}")
            item_key = pl.concat_str([tag, pl.col("event_id"), pl.col(_ITEM_KEY)], separator=_CELL_SEPARATOR)
            if nested.file in summed_files:
                row_keys.setdefault(nested.file, joined.select(LINE, item_key.alias(_ROW_KEY)))
            del joined
            if event.add_to_product_store:
                nested_props = nested_type.properties
                if event.product_id_property in nested_props:
                    product_store.append(
                        ProductStoreSource(
                            event_type=event.event_type,
                            nested_type=nested.type,
                            product_id_property=event.product_id_property,
                            quantity_property="quantity" if "quantity" in nested_props else None,
                        )
                    )

    # A linked file no sum reads is done with: its rows (the largest frames of an orders delivery,
    # the order lines) are let go before the sums build their identities, instead of at the end.
    for linked_file in goal.files.linked:
        if linked_file.name not in summed_files:
            for held in (keyed, files.frames, files.raw, value_rows):
                held.pop(linked_file.name, None)

    # --- the sums' source rows with their identities
    sum_rows: dict[str, pl.DataFrame] = {}
    identity_cache: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
    key_identity_cache: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
    declared_identity = {(m.file or root, _n(m.column), m.property): [_n(c) for c in m.identity] for m in goal.mappings if m.identity}
    for summed in mappings:
        if summed.rule != "sum":
            continue
        rows = value_rows[summed.file].select(KEY, KEY_INDEX, LINE, pl.col(summed.property).alias("value")).filter(pl.col("value").is_not_null())
        # Per-file identity (rows without a key): the raw cells of the row's identifier or link
        # columns, event ids and the sum's column, numbered among identical rows.
        raw = files.raw[summed.file]
        base = identifier_columns if summed.file == root else [_n(c) for c in next(f for f in goal.files.linked if f.name == summed.file).link]
        event_ids = [_n(event.event_id) for event in timeline if event.file == summed.file]
        identity = [c for c in dict.fromkeys([*base, *event_ids, summed.column]) if c in raw.columns]
        cache_key = (summed.file, tuple(identity))
        if cache_key not in identity_cache:
            identity_cache[cache_key] = row_identities(raw, identity)
        per_file = rows.join(identity_cache[cache_key], on=LINE, how="left").with_columns(
            pl.lit(False).alias(SUM_KEYED), pl.col(HASH_HI).alias(FILE_HASH_HI), pl.col(HASH_LO).alias(FILE_HASH_LO)
        )
        # Keyed identity: the mapping's own identity columns, else the row's event or nested key.
        columns = declared_identity.get((summed.file, summed.column, summed.property))
        if columns:
            source = with_key(summed.file)
            cells = [pl.lit("identity"), *(pl.lit(c) for c in columns), *(_key_text(pl.col(c)).fill_null(_EMPTY_CELL) for c in columns)]
            text = pl.concat_str(cells, separator=_CELL_SEPARATOR)
            present = pl.any_horizontal(*(_key_text(pl.col(c)).is_not_null() for c in columns))
            keyed_text: pl.DataFrame | None = source.filter(present).select(LINE, text.alias(_ROW_KEY))
        else:
            keyed_text = row_keys.get(summed.file)
        if keyed_text is None:
            sum_rows[summed.property] = per_file.drop(LINE)
            continue
        # Sums fed by the same file's event or nested keys share one hashing pass.
        key_cache_key = (summed.file, tuple(columns or ()))
        if key_cache_key not in key_identity_cache:
            key_identity_cache[key_cache_key] = key_identities(keyed_text)
        hashes = key_identity_cache[key_cache_key]
        keyed_rows = _in_line_order(
            rows.join(hashes, on=LINE, how="inner")
            # The row's per-file identity too: a store counted before keys existed finds the rows
            # it already added under that identity, so an upgrade never adds them again.
            .join(identity_cache[cache_key].rename({HASH_HI: FILE_HASH_HI, HASH_LO: FILE_HASH_LO}), on=LINE, how="left")
        )
        # The same real-world row twice in one delivery counts once: the last one, as for events.
        keyed_rows = _last_per(keyed_rows, [HASH_HI, HASH_LO]).with_columns(pl.lit(True).alias(SUM_KEYED))
        unkeyed = per_file.join(hashes.select(LINE), on=LINE, how="anti")
        sum_rows[summed.property] = pl.concat([keyed_rows.select(per_file.columns), unkeyed], how="vertical").drop(LINE)

    # The guard first: its summary names the most common reason and the setting, also for on_error: fail.
    # A row the reader left out (a cut last row) counts among the file's rows, as it does among its rejects.
    rows_by_file = {display_names[name]: files.heights[name] + files.left_out.get(name, 0) for name in paths}
    _check_reject_share(goal, tally, rows_by_file, timeline, display_names, problems)
    if problems and goal.on_error == "fail":
        raise InputError(problems)
    return StagedImport(
        target="profiles" if is_profiles else "groups",
        identifier_property=identifiers[0][1],
        identifiers=[prop for _, prop in identifiers],
        allow_create=goal.allow_new_profiles if isinstance(goal, ProfileImportGoal) else goal.allow_new_groups,
        rules=rules,
        records=records,
        group_type=goal.group_type if isinstance(goal, GroupImportGoal) else None,
        events=events,
        items=items,
        product_store=product_store,
        rejects=problems,
        rows_read=rows_read,
        warnings=warnings,
        sum_rows=sum_rows,
        rows_rejected=tally.rows,
        values_not_imported=tally.values,
        replace_nested=isinstance(goal, ProfileImportGoal) and goal.nested == "replace",
        domain_group=goal.domain_group if isinstance(goal, ProfileImportGoal) else DEFAULT_DOMAIN_GROUP,
        detected_properties=detected,
        detected_event_properties=detected_events,
    )


def _identity_columns(goal: ImportGoal, name: str, identifier_columns: list[str], timeline: list) -> set[str] | None:
    """The columns of file ``name`` whose text as read a sum's per-file row identity may hash (see
    the sums' source rows below), or None when any column may (a bulk mapping that sums)."""
    root = goal.files.root.name
    if name == root and goal.bulk_mapping is not None and goal.bulk_mapping.rule == "sum":
        return None
    summed = {_n(m.column) for m in goal.mappings if m.rule == "sum" and (m.file or root) == name}
    if not summed:
        return set()
    base = identifier_columns if name == root else [_n(c) for c in next(f for f in goal.files.linked if f.name == name).link]
    return {*base, *(_n(event.event_id) for event in timeline if event.file == name), *summed}


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


# Internal columns of the timeline and sum frames (never a property name: those cannot start with "_").
_EVENT_ID = "_event_id"
_ITEM_KEY = "_item_key"
_ROW_KEY = "_row_key"
#: a linked row's parent row (its ``_line``).
_PARENT_LINE = "_parent_line"


def _item_keys(joined: pl.DataFrame, nested: NestedEventMapping, display: str, problems: list[InputProblem], tally: _RejectTally) -> pl.DataFrame:
    """Each nested row's key within its event (``_item_key``): the text of the declared ``key``
    columns, else its content (the mapped cells) numbered among identical rows of the event, so two
    identical lines of one order stay two lines. A row whose declared key is empty is left out:
    it could never be matched again."""
    if nested.key:
        columns = [_n(c) for c in nested.key]
        joined = _reject_rows(
            joined, pl.all_horizontal(*(_key_text(pl.col(c)).is_null() for c in columns)), display, columns[0],
            "empty nested key", f"every nested row needs a value in {', '.join(columns)}", problems, tally,
        )
        return joined.with_columns(pl.concat_str([_key_text(pl.col(c)).fill_null("") for c in columns], separator=_CELL_SEPARATOR).alias(_ITEM_KEY))
    cells = [pl.col(_n(c)).cast(pl.String).fill_null(_EMPTY_CELL) for c in nested.properties.values()]
    content = pl.concat_str(cells, separator=_CELL_SEPARATOR) if cells else pl.lit("")
    # The content text is built once, inside the key: a column of it beside the keys was the
    # stage's largest column at its memory peak (a 4M-line file's every cell, once more).
    return joined.with_columns(pl.concat_str([pl.lit("content"), content, _content_occurrence(joined, content)], separator="\x1e").alias(_ITEM_KEY))


#: rows whose content text is built at a time to hash it (about 15 MB of text for order lines).
_HASH_SLICE_ROWS = 1 << 18


def _content_occurrence(joined: pl.DataFrame, content: pl.Expr) -> pl.Series | pl.Expr:
    """The occurrence of each nested row's ``content`` within its event, as text ("1" for content
    that does not repeat, the usual case).

    Repeats are looked for on a 64-bit hash of (event, content), built a slice of rows at a time,
    and numbered only among the rows whose hash repeats: finding them on the texts themselves,
    and a window over every row, held several copies of a 4M-line file's content texts at once
    (the stage's memory peak). A hash collision only sends a row that does not repeat to the
    numbering, where it is number 1 as well, since the numbering compares the texts."""
    if not joined.height:
        return pl.lit("1")
    hashed = pl.struct(pl.col("event_id"), content.alias("content")).hash()
    hashes = pl.concat(
        [joined.slice(start, _HASH_SLICE_ROWS).select(hashed).to_series() for start in range(0, joined.height, _HASH_SLICE_ROWS)]
    )
    maybe_repeated = hashes.is_duplicated()
    del hashes
    if not maybe_repeated.any():
        return pl.lit("1")
    rows = maybe_repeated.arg_true()
    numbered = joined[rows].select(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(pl.col("event_id"), content)).to_series()
    return pl.repeat(1, joined.height, dtype=pl.Int64, eager=True).scatter(rows, numbered).cast(pl.String)


def _last_per(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The last row of each ``key`` value, in the frame's order; a frame whose keys are all
    distinct (the usual delivery) is returned as it is instead of being gathered again."""
    if _all_distinct(frame, key):
        return frame
    return frame.unique(subset=key, keep="last", maintain_order=True)


def _all_distinct(frame: pl.DataFrame, key: list[str]) -> bool:
    """Whether no ``key`` value repeats. Tried first on a 64-bit hash per row (as many distinct
    hashes as rows proves it, without a table of the key texts); only a frame with a repeated
    hash is checked on the values themselves."""
    values = pl.struct(key) if len(key) > 1 else pl.col(key[0])
    if frame.select(values.hash().n_unique()).item() == frame.height:
        return True
    return bool(frame.select(values.n_unique()).item() == frame.height)


def _in_line_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by line; joins that keep the left order leave it sorted already, and a
    sort would still copy every column (a few hundred MB for a 4M-line file)."""
    return frame if frame[LINE].is_sorted() else frame.sort(LINE)


def _with_item_index(items: pl.DataFrame) -> pl.DataFrame:
    """``item_index``: the row's position (1-based) among its event's rows, in file order (the
    frame is in line order). Files list an event's nested rows together, so the position is the
    distance from the start of the event's run; only a file whose events are interleaved pays for
    the window over every row."""
    event_ids = items["event_id"]
    starts = event_ids.ne_missing(event_ids.shift(1))
    runs = starts.sum()
    # Distinct hashes are at most the distinct ids, which are at most the runs: equal hashes and
    # runs prove every event has one run, without a table of the ids' texts.
    if items.height and runs != event_ids.hash().n_unique() and runs != event_ids.n_unique():
        return items.with_columns(pl.col(LINE).rank("ordinal").over("event_id").cast(pl.Int64).alias("item_index"))
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    run_start = pl.when(starts).then(position).forward_fill()
    return items.with_columns((position - run_start + 1).alias("item_index"))


def _typed_properties(
    frame: pl.DataFrame, definitions: dict[str, PropertyDefinition], columns: dict[str, str], display: str, goal: ImportGoal,
    problems: list[InputProblem], tally: _RejectTally, files: _DeliveryFiles, name: str,
) -> pl.DataFrame:
    """Event and nested properties whose column stayed text because it is also a key are typed
    here; a value that does not parse is not imported (listed and counted), the row is. Every
    row gets ``NOT_IMPORTED``: the properties whose cell did not parse, so the merge keeps the
    stored value of a known event or nested row instead of clearing it."""
    formats = {prop: _format_for(d) for prop, d in definitions.items() if d.type != "text" and frame.schema.get(prop) == pl.String}
    failed = {prop: files.failed_cells(name, _n(column)) for prop, column in columns.items()}
    if formats:
        typed, found = parse_typed(frame, formats, display, goal.files.root.csv.decimal_comma)
        problems.extend(replace(problem, column=columns.get(problem.column or "", problem.column)) for problem in found)
        for prop, fmt in formats.items():
            lines = _failed_lines(frame, typed, prop)
            tally.add(display, lines, columns[prop], f"value does not parse as {fmt.type}", value=True)
            failed[prop] = pl.concat([failed[prop].cast(pl.Int64), lines.cast(pl.Int64)])
        frame = typed
    marks = [pl.when(pl.col(LINE).is_in(lines.implode())).then(pl.lit(prop)) for prop, lines in failed.items() if lines.len()]
    if not marks:
        return frame.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias(NOT_IMPORTED))
    return frame.with_columns(pl.concat_list(marks).list.drop_nulls().alias(NOT_IMPORTED))


def key_identities(keys: pl.DataFrame) -> pl.DataFrame:
    """``_line`` → the 128-bit md5 of the row's key text (``_row_hash_hi``, ``_row_hash_lo``),
    computed in DuckDB: the values are stored for years, Polars' own hash is not stable."""
    return _md5_halves(keys, _ROW_KEY)


def _check_reject_share(
    goal: ImportGoal, tally: _RejectTally, rows_by_file: dict[str, int], timeline: list, display_names: dict[str, str], problems: list[InputProblem]
) -> None:
    """A file whose share of rejected rows (left out, a value not imported, an event dropped)
    exceeds ``max_reject_share`` fails the delivery as a whole: a wrong date format or shifted
    columns must not pass as a partial success that silently drops most of the file."""
    time_columns = {(display_names[e.file], _n(e.event_time)) for e in timeline}
    for display, total in rows_by_file.items():
        bad = tally.rejected_lines(display)
        if not total or bad / total <= goal.max_reject_share:
            continue
        (_, column, reason), rows = max(((key, n) for key, n in tally.reasons.items() if key[0] == display), key=lambda item: item[1])
        if (display, column) in time_columns:
            fix = (
                "set event_time_format on the goal's timeline entry to the way the file writes its times "
                "(a strptime pattern such as '%d-%m-%Y %H:%M'; without it the times must be ISO 8601)"
            )
        else:
            fix = "correct the file (or the goal's configuration); if this share of rejects is expected, raise the goal's max_reject_share"
        summary = InputProblem(
            file=display, line=None, column=column,
            reason=(
                f"{bad:,} of {total:,} rows ({bad / total:.1%}) were rejected or lost a value, more than the goal's "
                f"max_reject_share ({goal.max_reject_share:.0%}); nothing of the delivery was merged. Most common: "
                f"{reason} in column {column!r} ({rows:,} rows)"
            ),
            fix=fix,
        )
        raise InputError([summary, *problems])
