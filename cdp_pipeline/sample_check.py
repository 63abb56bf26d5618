"""``validate --sample``: the columns an import goal names, checked against a sample file's header.

A link, identifier or mapping column that the partner's file does not have fails the first real
delivery; with a sample at hand the mistake shows while the YAML is being written. The sample is
read with the file's CSV options and the goal's processors run over it, exactly as an import
would, so a column a processor creates counts as present and a header the reader normalises
(``E-Mail`` → ``e_mail``) is compared the way the import compares it. Only the header matters;
the sample's rows are never printed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cdp_pipeline.config.connection import Connection, GroupImportGoal, ProfileImportGoal
from cdp_pipeline.errors import CdpError, InputError, UnknownName
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.csv_reading import read_delimited_file
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.staged import LINE

ImportGoal = GroupImportGoal | ProfileImportGoal


@dataclass(frozen=True)
class Sample:
    """One ``--sample CONNECTION.GOAL[.FILE]=PATH``: the file of a goal the sample stands for."""

    connection: str
    goal: str
    file: str | None
    path: Path

    @property
    def label(self) -> str:
        return f"{self.connection}.{self.goal}" + (f".{self.file}" if self.file else "")

    @classmethod
    def parse(cls, text: str) -> Sample:
        target, separator, path = text.partition("=")
        parts = target.split(".")
        if not separator or not path or len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"--sample {text!r}: expected CONNECTION.GOAL=PATH or CONNECTION.GOAL.FILE=PATH (FILE: a name under files:)")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None, Path(path).expanduser())


def columns_the_goal_names(goal: ImportGoal) -> dict[str, dict[str, str]]:
    """Per logical file of the goal: every column the configuration names in it → the key that
    names it (the first one, in the order a person reads the YAML). Bulk mappings name none."""
    root = goal.files.root.name
    named: dict[str, dict[str, str]] = {root: {}, **{f.name: {} for f in goal.files.linked}}

    def add(file: str, column: str, key: str) -> None:
        named.setdefault(file, {}).setdefault(normalise_column_name(column), key)

    if isinstance(goal, ProfileImportGoal):
        for index, identifier in enumerate(goal.identifiers):
            add(root, identifier.column, f"identifiers.{index}.column")
    elif isinstance(goal, GroupImportGoal):
        add(root, goal.group_id, "group_id")
    for column in goal.files.root.required_columns:
        add(root, column, "files.root.required_columns")
    for index, linked in enumerate(goal.files.linked):
        for child, parent in linked.link.items():
            add(linked.name, child, f"files.linked.{index} ({linked.name}).link")
            add(linked.parent, parent, f"files.linked.{index} ({linked.name}).link, the parent's side")
        for column in linked.required_columns:
            add(linked.name, column, f"files.linked.{index} ({linked.name}).required_columns")
    for index, mapping in enumerate(goal.mappings):
        add(mapping.file or root, mapping.column, f"mappings.{index}.column")
        for column in mapping.identity:
            add(mapping.file or root, column, f"mappings.{index}.identity")
    for index, event in enumerate(goal.timeline if isinstance(goal, ProfileImportGoal) else []):
        where = f"timeline.{index} ({event.event_type})"
        add(event.file, event.event_id, f"{where}.event_id")
        add(event.file, event.event_time, f"{where}.event_time")
        for prop, column in event.properties.items():
            add(event.file, column, f"{where}.properties.{prop}")
        for nested_index, nested in enumerate(event.nested):
            for prop, column in nested.properties.items():
                add(nested.file, column, f"{where}.nested.{nested_index}.properties.{prop}")
            for column in nested.key:
                add(nested.file, column, f"{where}.nested.{nested_index}.key")
    return named


def sample_columns(goal: ImportGoal, file: str, path: Path) -> list[str]:
    """The columns the goal sees in ``file`` once read and processed, as an import reads them."""
    selection = goal.files.file(file)
    read = read_delimited_file(path, selection.csv, path.name)
    processors = [p for p in goal.processors if file in (p.files or [goal.files.root.name])]
    frame = read.frame.head(0).lazy()
    if processors:
        frame = apply_processors(frame, processors, display_name=path.name, run_time=datetime.now(UTC))
    return [c for c in frame.collect_schema().names() if c != LINE]


def check_sample(connections: dict[str, Connection], sample: Sample) -> list[str]:
    """Every finding for one sample, as lines naming the sample, the goal, the file, the column,
    the key that names it and the close matches in the header."""
    where = f"sample {sample.path} ({sample.label})"
    try:
        connection = connections.get(sample.connection)
        if connection is None:
            raise UnknownName.of("connection (among those whose schema loaded)", sample.connection, list(connections))
        # Disabled goals too: a person often samples a goal before switching it on.
        goals = {g.name: g for g in connection.goals if isinstance(g, GroupImportGoal | ProfileImportGoal)}
        goal = goals.get(sample.goal)
        if goal is None:
            raise UnknownName.of(f"import goal of {sample.connection}", sample.goal, list(goals))
        names = [goal.files.root.name, *(f.name for f in goal.files.linked)]
        file = sample.file or goal.files.root.name
        if file not in names:
            raise UnknownName.of(f"file of goal {sample.goal} (files.root / files.linked names)", file, names)
        if not sample.path.is_file():
            return [f"{where}: no such file"]
        present = sample_columns(goal, file, sample.path)
    except InputError as error:
        return [f"{where}: {problem}" for problem in error.problems]
    except (CdpError, OSError) as error:
        return [f"{where}: {error}"]
    findings = []
    for column, key in columns_the_goal_names(goal).get(file, {}).items():
        if column in present:
            continue
        close = difflib.get_close_matches(column, present, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; the header has {', '.join(present[:20])}"
        findings.append(f"{where}: goal {goal.name}, file {file}: column {column!r} ({key}) is not in the sample's header{hint}")
    return findings
