"""Bookkeeping of property values beside the merge, in its transaction: the first writer of
each property per goal (``property_writers``) and the value history (``property_changes``)."""

from __future__ import annotations

from datetime import datetime

import duckdb

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.store.merge_common import DeliveryRecord, _drop, _stored_id
from cdp_pipeline.store.schema import literal, quote
from cdp_pipeline.tables.staged import StagedImport


def _known_writers(conn: duckdb.DuckDBPyConnection, entity: str, delivery: DeliveryRecord) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT property FROM property_writers WHERE entity = $entity AND connection = $connection AND goal = $goal",
        {"entity": entity, "connection": delivery.connection, "goal": delivery.goal},
    ).fetchall()
    return {prop for (prop,) in rows}


def _add_writers(conn: duckdb.DuckDBPyConnection, entity: str, props: list[str], delivery: DeliveryRecord, now: datetime) -> None:
    if props:  # never an empty INSERT ... SELECT (see _record_property_changes)
        conn.execute(
            "INSERT INTO property_writers (entity, property, connection, goal, delivery_id, first_written_at) "
            "SELECT $entity, unnest($props), $connection, $goal, $delivery, $now",
            {"entity": entity, "props": props, "connection": delivery.connection, "goal": delivery.goal, "delivery": delivery.delivery_id, "now": now},
        )


def _record_property_writers(
    conn: duckdb.DuckDBPyConnection, entity: str, table: str, id_column: str, props: list[str], delivery: DeliveryRecord, now: datetime
) -> None:
    """The properties of ``props`` this delivery is the first of its goal to write (a new profile
    or group created with a value, or a stored value changed), in ``property_writers``: staging
    reads that small table to warn about properties other goals fill, instead of scanning every
    profile. Written before the UPDATE (it compares with the stored value); properties the goal
    is already listed for cost nothing, so only a goal's first deliveries pay for the check."""
    pending = [p for p in props if p not in _known_writers(conn, entity, delivery)]
    if not pending:
        return
    written = ", ".join(
        f"coalesce(bool_or(CASE WHEN m._is_new THEN m.{quote(p)} IS NOT NULL ELSE m.{quote(p)} IS DISTINCT FROM t.{quote(p)} END), false)"
        for p in pending
    )
    row = conn.execute(
        f"SELECT {written} FROM merged m LEFT JOIN {quote(table)} t ON t.{id_column} = {_stored_id('m')} WHERE m._consented"
    ).fetchone()
    _add_writers(conn, entity, [p for p, wrote in zip(pending, row or (), strict=False) if wrote], delivery, now)


def _as_text(expression: str, prop: PropertyDefinition) -> str:
    """A value as property_changes holds it: text, lists as JSON arrays."""
    return f"CAST(to_json({expression}) AS VARCHAR)" if prop.type == "list" else f"CAST({expression} AS VARCHAR)"


def _record_property_changes(
    conn: duckdb.DuckDBPyConnection,
    staged: StagedImport,
    table: str,
    id_column: str,
    props: list[str],
    properties: dict[str, PropertyDefinition],
    delivery: DeliveryRecord,
    run_id: str,
    now: datetime,
) -> None:
    """One history row per value this delivery changes on an existing profile (or group), written
    before the UPDATE (it compares with the stored value) and in the same transaction: history and
    profiles can never disagree (issue G: provenance and values as of a past date).

    A new profile gets no rows: its values are in its row, with ``created_at`` and
    ``created_delivery_id`` (one row per value of every new profile was half of a first load's
    merge). When such a value first changes, the row its creation stands for is written first
    (``_record_creation_values``), so the history of every value that ever changed is complete;
    the view property_history adds the values not changed since creation."""
    entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"
    # The changed rows with their new and stored values, joined once: one join of ``merged`` with
    # the whole table per property scanned both once per property, the main cost of the history
    # when a delivery changes few rows.
    pairs = ", ".join(f"m.{quote(p)} AS _new_{i}, t.{quote(p)} AS _stored_{i}" for i, p in enumerate(props))
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE changed_values AS
        SELECT m._id, {pairs}
        FROM merged m JOIN {quote(table)} t ON t.{id_column} = m._id
        WHERE m._consented AND NOT m._is_new AND m._changed
        """
    )
    selects = [
        f"""
        SELECT _id AS entity_id, {literal(prop)} AS property, {_as_text(f"_new_{i}", properties[prop])} AS value,
               {_as_text(f"_stored_{i}", properties[prop])} AS stored_value
        FROM changed_values WHERE _new_{i} IS DISTINCT FROM _stored_{i}
        """
        for i, prop in enumerate(props)
    ]
    conn.execute(f"CREATE OR REPLACE TEMP TABLE value_changes AS {' UNION ALL '.join(selects)}")
    # Never an empty INSERT ... SELECT before a large one into the same table within a transaction
    # (DuckDB 2.0 then loses the large one, see store/segments.py): empty steps are skipped.
    _drop(conn, "changed_values")
    (pending,) = conn.execute("SELECT count(*) FROM value_changes").fetchall()[0]
    if not pending:
        _drop(conn, "value_changes")
        return
    _record_creation_values(conn, table, id_column, entity, "value_changes")
    conn.execute(
        """
        INSERT INTO property_changes
        SELECT $entity, entity_id, property, value, $now, $connection, $goal, $delivery, $run FROM value_changes
        """,
        {"entity": entity, "now": now, "connection": delivery.connection, "goal": delivery.goal, "delivery": delivery.delivery_id, "run": run_id},
    )
    _drop(conn, "value_changes")


def _record_creation_values(conn: duckdb.DuckDBPyConnection, table: str, id_column: str, entity: str, changes: str) -> None:
    """Before the first change of a value a profile was created with, the history row its creation
    stands for: the stored value, at ``created_at``, by the creating delivery (its connection,
    goal and run). ``changes`` holds ``entity_id``, ``property`` and ``stored_value`` (the value
    as text before this change). Values that already have history rows, values that were empty,
    and profiles without a known creating delivery (created before the column existed, when
    their creation rows were written at once) get none."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE creation_values AS
        SELECT c.entity_id, c.property, c.stored_value AS value, t.created_at, d.connection, d.goal, d.delivery_id, d.run_id
        FROM {changes} c
        JOIN {quote(table)} t ON t.{id_column} = c.entity_id
        JOIN deliveries d ON d.delivery_id = t.created_delivery_id
        WHERE c.stored_value IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM property_changes h WHERE h.entity = $entity AND h.entity_id = c.entity_id AND h.property = c.property)
        """,
        {"entity": entity},
    )
    (pending,) = conn.execute("SELECT count(*) FROM creation_values").fetchall()[0]
    if pending:
        conn.execute(
            """
            INSERT INTO property_changes
            SELECT $entity, entity_id, property, value, created_at, connection, goal, delivery_id, run_id FROM creation_values
            """,
            {"entity": entity},
        )
    _drop(conn, "creation_values")
