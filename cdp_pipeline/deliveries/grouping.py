"""Which files form a delivery: a goal's root file plus its linked files, found in one listing.

The wildcard rule of the seeds: when ``orders_20*.csv`` selects ``orders_20244.csv``, every
linked file must carry the same wildcard value (``order_lines_20244.csv``). A missing partner
makes the delivery wait (it may still be uploading); two candidates for one partner are an
error, because joining the wrong pair would merge one day's lines into another day's orders.

A file that matches a linked file's pattern is never taken as a root file, even when the root
pattern matches it too (root ``orders_*.csv``, linked ``orders_*_lines.csv``): the root file's
name must differ from its linked files' (seed), and otherwise ``orders_1_lines.csv`` would wait
forever for a partner ``orders_1_lines_lines.csv``.

Patterns are wildcards (``*`` any run, ``?`` one character, matched against the whole name) or,
with ``regex: true``, Python regular expressions matched against the whole name; a linked
regular expression's capture groups must capture what the root's captured.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cdp_pipeline.config.connection import FileSelection, GroupImportGoal, ProfileImportGoal
from cdp_pipeline.deliveries.keys import partition_key
from cdp_pipeline.transports.base import RemoteFile, is_temporary_upload

ImportGoal = GroupImportGoal | ProfileImportGoal
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Delivery:
    connection: str
    goal: str
    #: logical file name → remote file; the root file's logical name is ``root_name``.
    files: dict[str, RemoteFile]
    root_name: str

    @property
    def root(self) -> RemoteFile:
        return self.files[self.root_name]

    @property
    def partition_key(self) -> str:
        """One Dagster partition per root file of a goal; a new version of the same file is a new
        run of the same partition, so its history stays together in the UI."""
        return partition_key(self.goal, self.root.name)

    @property
    def listing_identity(self) -> str:
        """Changes when any file of the delivery may have changed (path, size, mtime, ETag)."""
        payload = sorted((name, f.path, f.size, round(f.mtime, 3), f.etag) for name, f in self.files.items())
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    @property
    def newest_mtime(self) -> float:
        return max(f.mtime for f in self.files.values())


@dataclass
class DeliveryScan:
    #: complete, ready deliveries, oldest first (ties broken by path, never by listing order).
    deliveries: list[Delivery] = field(default_factory=list)
    #: deliveries that cannot start yet and why (missing partner, still uploading).
    waiting: list[str] = field(default_factory=list)
    #: deliveries that cannot be formed at all (ambiguous partner, bad names).
    problems: list[str] = field(default_factory=list)


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append("(.*)")
        elif char == "?":
            parts.append("(.)")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z")


def _match(selection: FileSelection, name: str) -> tuple[str, ...] | None:
    regex = re.compile(selection.pattern) if selection.regex else _wildcard_regex(selection.pattern)
    found = regex.fullmatch(name) if selection.regex else regex.match(name)
    return found.groups(default="") if found else None


def goal_claims(goal: ImportGoal, name: str) -> bool:
    """Whether a file of this name can take part in a delivery of ``goal`` (root, linked file or
    marker). The sensor keeps state only for such files, so a folder full of other files (an
    archive, another system's drops) does not grow its cursor."""
    suffix = goal.files.readiness.marker_suffix
    if goal.files.readiness.mode == "marker" and name.endswith(suffix):
        name = name[: -len(suffix)]
    return any(_match(selection, name) is not None for selection in (goal.files.root, *goal.files.linked))


def _partner_candidates(selection: FileSelection, root_values: tuple[str, ...], names: list[str]) -> list[str]:
    if selection.regex:
        # Linked regexes with capture groups must capture what the root captured.
        out = []
        for name in names:
            values = _match(selection, name)
            if values is not None and (not values or values == root_values[: len(values)]):
                out.append(name)
        return out
    wildcards = [c for c in selection.pattern if c in "*?"]
    if not wildcards:
        return [name for name in names if name == selection.pattern]
    # Substitute the root's wildcard values, in order, into the linked pattern's wildcards.
    expected, index = [], 0
    for char in selection.pattern:
        if char in "*?" and index < len(root_values):
            expected.append(glob_escape(root_values[index]))
            index += 1
        else:
            expected.append(char)
    concrete = "".join(expected)
    return [name for name in names if fnmatch.fnmatchcase(name, concrete)]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def scan_deliveries(
    connection: str,
    goal: ImportGoal,
    listing: list[RemoteFile],
    is_ready: Callable[[RemoteFile], bool] = lambda _file: True,
) -> DeliveryScan:
    """Group one directory listing into deliveries of ``goal``."""
    scan = DeliveryScan()
    by_name: dict[str, RemoteFile] = {}
    for remote in listing:
        if is_temporary_upload(remote.name) or remote.name.endswith(goal.files.readiness.marker_suffix):
            continue
        if _CONTROL.search(remote.name):
            scan.problems.append(f"{remote.path!r}: file name contains control characters; rename it")
            continue
        by_name[remote.name] = remote
    names = sorted(by_name)
    marker_names = {remote.name for remote in listing}

    def ready(remote: RemoteFile) -> bool:
        if goal.files.readiness.mode == "marker":
            return remote.name + goal.files.readiness.marker_suffix in marker_names
        return is_ready(remote)

    for name in names:
        root_values = _match(goal.files.root, name)
        if root_values is None or any(_match(linked, name) is not None for linked in goal.files.linked):
            continue
        files = {goal.files.root.name: by_name[name]}
        complete = True
        for linked in goal.files.linked:
            candidates = [c for c in _partner_candidates(linked, root_values, names) if c != name]
            if not candidates:
                scan.waiting.append(f"{name}: waiting for its linked file {linked.name!r} (pattern {linked.pattern!r})")
                complete = False
                break
            if len(candidates) > 1:
                scan.problems.append(
                    f"{name}: linked file {linked.name!r} is ambiguous: {candidates}; make the pattern select one file per root file"
                )
                complete = False
                break
            files[linked.name] = by_name[candidates[0]]
        if not complete:
            continue
        pending = [f.name for f in files.values() if not ready(f)]
        if pending:
            scan.waiting.append(f"{name}: not complete yet ({', '.join(pending)} still changing or without marker)")
            continue
        scan.deliveries.append(Delivery(connection=connection, goal=goal.name, files=files, root_name=goal.files.root.name))
    scan.deliveries.sort(key=lambda d: (d.newest_mtime, d.root.path))
    return scan
