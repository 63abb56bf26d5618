"""Whether a connection's export goals would send nothing now, decided before any run starts.

A ``changed_only`` export sends the segment's members whose ``updated_at`` is after the goal's
last successful export (``export_state.last_export_at``), and the timeline events of those
profiles only. So when no profile at all has ``updated_at`` after that mark, the export sends
nothing, whatever the segment, the consent and the columns. What such an export would still do
is record: refresh the segments, move its mark, add its row to the run history. A ``cdp-pipeline
run`` may leave those out (docs/cli.md) only when every one of them is provably without effect
on what is sent later:

- the refresh changes nothing: no segment or lifecycle condition reads the clock, and no merge
  committed after the last refresh (a run that died between the two);
- the mark: the next export compares with the older mark and finds the same profiles;
- the analysts' copy already shows what the store holds (a run killed before publishing left it
  behind; the run publishes it).

Anything that sends without a change (``diff``, ``netmera_reports``, ``write_empty_files``, a
full export, ``changed_only: false``, a first export) or anything that cannot be read now (a
writer holds the store, a store without the tables yet) leaves the decision to the run.

The store read is the live store, read-only and giving up at once when a writer holds it: the
published copy may be behind the store (a run that died after its merge's commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.errors import CdpError
from cdp_pipeline.store.conditions import clock_conditions
from cdp_pipeline.store.database import open_reader
from cdp_pipeline.store.exports.selection import last_export_at
from cdp_pipeline.store.publish import copy_is_current
from cdp_pipeline.store.segments import memberships_current


@dataclass(frozen=True)
class IdleExport:
    """An export goal that would send nothing now, and why (one line, no customer values)."""

    goal: str
    reason: str


def sends_without_change(goal: ExportGoal) -> str | None:
    """Why ``goal`` may send a file although no profile changed, or None."""
    if not goal.changed_only:
        return "changed_only is false"
    if goal.diff:
        return "diff mode"
    if goal.netmera_reports:
        return "netmera_reports"
    if goal.target.write_empty_files:
        return "write_empty_files"
    return None


def idle_exports(project: ProjectConfig, connection: Connection, *, full_export: bool = False) -> list[IdleExport] | None:
    """One ``IdleExport`` per export goal of ``connection`` when none of them would send anything
    now (an empty list for a connection without export goals); None when one might, or when that
    cannot be told without running it."""
    goals = list(connection.export_goals)
    if not goals:
        return []
    if full_export or any(sends_without_change(goal) for goal in goals) or clock_conditions(project.catalog):
        return None
    location = project.store_location
    if isinstance(location, Path) and not location.exists():
        return None
    try:
        with open_reader(location, lock_wait_seconds=0) as conn:
            if not memberships_current(conn, project.catalog) or not copy_is_current(conn, project.published_store_path):
                return None
            idle = []
            for goal in goals:
                mark = last_export_at(conn, connection.name, goal.name)
                if mark is None:
                    return None  # a first export sends every member
                (changed,) = conn.execute("SELECT count(*) FROM profiles WHERE updated_at > $mark", {"mark": mark}).fetchone() or (1,)
                if changed:
                    return None
                idle.append(IdleExport(goal.name, f"no profile changed since its last export at {mark:%Y-%m-%d %H:%M:%S} UTC (changed_only)"))
            return idle
    except (CdpError, duckdb.Error):
        return None
