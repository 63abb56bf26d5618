"""The files of one delivery as read and typed, and the tally of what was rejected in them: the
share guard and the delivery's counts come from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.config.connection import GroupImportGoal, ProfileImportGoal
from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.csv_reading import read_delimited_file
from cdp_pipeline.tables.staged import LINE

ImportGoal = GroupImportGoal | ProfileImportGoal


def _n(name: str) -> str:
    return normalise_column_name(name)


def _format_for(prop: PropertyDefinition) -> ColumnFormat:
    return ColumnFormat(type=prop.type)


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
