"""Which profiles leave: the segment's members that consented to one of the connection's
objectives and have a value for at least one selected property, each marked when it changed since
the goal's last successful export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import ExportGoal
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.schema import literal, quote


@dataclass
class ExportSelection:
    profiles_available: int
    profiles_selected: int
    last_export_at: datetime | None


def select_profiles(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    connection: str,
    goal: ExportGoal,
    *,
    full: bool,
    consent_property: str | None,
    objectives: list[str],
) -> ExportSelection:
    """Fill the temp table ``export_candidates(profile_id, changed)``.

    Candidates are the profiles "available for the export" (the number BlueConic shows): members
    of the segment that consented to one of the connection's objectives (when it has any) and
    have a value for at least one selected property. ``changed`` marks those that leave in this
    run: all of them for a full export, the goal's first run or ``changed_only: false``, else
    those whose ``updated_at`` (moved only by a changed property value, never by a timeline
    event) is after the goal's last successful export.
    """
    if goal.segment not in catalog.segments:
        raise ConfigError(
            f"export goal {goal.name!r}: segment {goal.segment!r} is not declared in store.yaml "
            f"(declared: {', '.join(sorted(catalog.segments)) or 'none'}); fix the goal's segment or declare it"
        )
    _check_columns(catalog, goal)
    last = last_export_at(conn, connection, goal.name)
    consent = "TRUE"
    if objectives and consent_property:
        # A list property: loading refuses a connection with objectives otherwise.
        consent = f"coalesce(list_has_any(p.{quote(consent_property)}, [{', '.join(literal(o) for o in objectives)}]), FALSE)"
    values = []
    for column in goal.columns:
        if column.property is None:
            continue
        prop = catalog.profile_properties[column.property]
        if prop.type == "list":
            values.append(f"len(p.{quote(column.property)}) > 0")  # an empty list is no value
        elif prop.type == "text":
            values.append(f"p.{quote(column.property)} <> ''")
        else:
            values.append(f"p.{quote(column.property)} IS NOT NULL")
    has_value = " OR ".join(f"coalesce({v}, FALSE)" for v in dict.fromkeys(values)) or "TRUE"
    # An export scoped to a domain group sends only that group's profiles, whatever the segment holds.
    in_group = "TRUE" if goal.domain_group is None else f"p.domain_group = {literal(goal.domain_group)}"
    everything = full or not goal.changed_only or last is None
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE export_candidates AS
        SELECT p.profile_id, {'TRUE' if everything else 'p.updated_at > $last'} AS changed
        FROM profiles p
        WHERE p.profile_id IN (SELECT profile_id FROM segment_members WHERE segment = $segment)
          AND ({consent}) AND ({has_value}) AND {in_group}
        """,
        {"segment": goal.segment, **({} if everything else {"last": last})},
    )
    [(available, selected)] = conn.execute("SELECT count(*), count(*) FILTER (WHERE changed) FROM export_candidates").fetchall()
    return ExportSelection(profiles_available=available, profiles_selected=selected, last_export_at=last)


def _check_columns(catalog: Catalog, goal: ExportGoal) -> None:
    for index, column in enumerate(goal.columns):
        where = f"export goal {goal.name!r}: columns.{index} ({column.header!r})"
        if column.property is not None and column.property not in catalog.profile_properties:
            raise ConfigError(f"{where}: property {column.property!r} is not declared in store.yaml; fix the name or declare it")
        if isinstance(column.segments, list):
            unknown = [s for s in column.segments if s not in catalog.segments]
            if unknown:
                raise ConfigError(f"{where}: unknown segments {unknown}; declared: {', '.join(sorted(catalog.segments))}")


def last_export_at(conn: duckdb.DuckDBPyConnection, connection: str, goal: str) -> datetime | None:
    """The goal's last successful export: a ``changed_only`` export sends what changed after it
    (the export's selection and ``cdp-pipeline run``'s "nothing to send" read the same mark)."""
    (mark,) = conn.execute(
        "SELECT max(last_export_at) FROM export_state WHERE connection = $c AND goal = $g", {"c": connection, "g": goal}
    ).fetchone() or (None,)
    return mark
