"""Segment and lifecycle membership, kept in the store so analysts can query it.

Membership is recomputed from the conditions after every merge and before every export
(set-based, cheap next to the merge), keeping ``member_since`` / ``stage_since`` for profiles
that stay in (and in the same stage). A segment is computed after the segments it is based on,
so it only ever holds members of its bases. Memberships of segments and lifecycles no longer
declared in store.yaml are removed, so analysts and "segments: all" export columns never see a
renamed or deleted segment.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.conditions import ConditionError, ConditionSql, clock_conditions, compile_conditions, condition_tables
from cdp_pipeline.store.conflicts import ATTEMPTS, FIRST_DELAY_SECONDS, retry_on_conflict
from cdp_pipeline.store.lake import rollback
from cdp_pipeline.store.schema import event_table, fingerprint_of, literal, quote, record_fingerprint, stored_fingerprint

#: the ``setup_fingerprints`` step of the membership refresh.
MEMBERSHIPS_STEP = "memberships"


def check_conditions(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> ConditionSql:
    """The catalog's conditions as checked SQL, bound against the store's tables.

    Checked again here, not only when store.yaml is loaded: a catalog built or copied in code
    skips pydantic's validation, and a condition must never reach the store as free SQL."""
    try:
        return compile_conditions(catalog, conn)
    except ConditionError as exc:
        # A ConfigError (terminal, shown to the user as is), naming each condition and the fix.
        raise ConfigError(f"store.yaml has conditions that cannot run on the profiles table:\n{exc}") from None


def _declared(column: str, names: Iterable[str]) -> str:
    """``column IN (names)``; FALSE when nothing is declared (``IN (NULL)`` would keep every row)."""
    listed = ", ".join(literal(name) for name in names)
    return f"{column} IN ({listed})" if listed else "FALSE"


def refresh_memberships(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime, *, attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY_SECONDS
) -> dict[str, int]:
    """Recompute every segment (bases first) and lifecycle; returns segment sizes. A transaction
    conflict runs the whole recomputation again, at most ``attempts`` times (store/conflicts.py)."""
    conditions = check_conditions(conn, catalog)
    return retry_on_conflict(
        lambda: _refresh_once(conn, catalog, conditions, now), what="refreshing segment and lifecycle members", attempts=attempts, first_delay=first_delay
    )


def refresh_memberships_if_changed(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime, *, attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY_SECONDS
) -> dict[str, int] | None:
    """Refresh unless ``memberships_current``; returns the segment sizes, or None when skipped."""
    if memberships_current(conn, catalog):
        return None
    return refresh_memberships(conn, catalog, now, attempts=attempts, first_delay=first_delay)


def memberships_current(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> bool:
    """Whether the stored members are what a refresh would compute now: the conditions (with the
    segments' bases and the stages' order), the data they read (profiles, timelines, the ledger)
    and the memberships themselves are what the last refresh left, and no condition reads the clock
    (``now()``, ``current_date``, ``age(x)``: such a condition changes its members without any
    change in the store).

    The one test of "the memberships are current", for the export, the idle Run now and a retried
    merge alike: a run killed between its merge and its refresh (separate transactions) leaves a
    ledger row the mark does not cover. Two tests (a timestamp comparison beside this fingerprint)
    once disagreed, and an idle Run now started full runs."""
    expected = _memberships_fingerprint(conn, catalog)
    return expected is not None and stored_fingerprint(conn, MEMBERSHIPS_STEP) == expected


def _memberships_fingerprint(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> str | None:
    """What a refresh computes from, or None when the result moves with the clock alone.

    The data version counts rows and takes the newest change stamps: every merge adds a ledger row
    and stamps what it changes (``updated_at``, ``merged_at``); an erasure or a removed event
    changes a count. The members' counts catch memberships changed by anything but a refresh."""
    if clock_conditions(catalog):
        return None
    counts = " ".join(f", (SELECT count(*) FROM {quote(event_table(name))})" for name in catalog.event_types)
    version = conn.execute(
        f"""
        SELECT (SELECT count(*) FROM deliveries), (SELECT max(merged_at) FROM deliveries),
               (SELECT count(*) FROM profiles), (SELECT max(updated_at) FROM profiles),
               (SELECT count(*) FROM segment_members), (SELECT count(*) FROM lifecycle_members){counts}
        """
    ).fetchall()
    conditions = {
        "segments": [[name, catalog.segments[name].condition, catalog.segments[name].based_on] for name in catalog.segment_order()],
        "lifecycles": [[name, [[stage.name, stage.condition] for stage in lifecycle.stages]] for name, lifecycle in catalog.lifecycles.items()],
        "tables": condition_tables(catalog),
    }
    return fingerprint_of([conditions, version])


def _refresh_once(conn: duckdb.DuckDBPyConnection, catalog: Catalog, conditions: ConditionSql, now: datetime) -> dict[str, int]:
    sizes: dict[str, int] = {}
    # ``now`` is the run's time (members' ``member_since``); the sizes are stamped with the clock
    # when they are measured, so an analyst never reads a size as older than the merge before it
    # (that merge stamped its ledger row with a time taken after it held the store).
    measured_at = max(now, datetime.now(UTC).replace(tzinfo=None))
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM segment_members WHERE NOT ({_declared('segment', catalog.segments)})")
        conn.execute(f"DELETE FROM lifecycle_members WHERE NOT ({_declared('lifecycle', catalog.lifecycles)})")
        # DuckDB 2.0 loses a large INSERT ... SELECT into a table that already took an EMPTY
        # INSERT ... SELECT in the same transaction (150k+ members counted, none committed; found by
        # bench/pipeline.py at 1M, pinned in test_segments_at_scale.py). So empty changes are
        # skipped, never executed.
        scratch: list[str] = []
        for index, name in enumerate(catalog.segment_order()):
            segment = catalog.segments[name]
            changes = f"membership_changes_{index}"
            scratch.append(changes)
            bases = "".join(
                f" AND profile_id IN (SELECT profile_id FROM segment_members WHERE segment = {literal(base)})" for base in segment.based_on
            )
            # One full outer join gives the difference between the condition and the stored
            # members; only that difference (usually a handful of rows) is deleted and inserted.
            # Measured at 1M profiles: half the time of a NOT IN anti-join for each direction.
            conn.execute(
                f"""
                CREATE TEMP TABLE {changes} AS
                SELECT coalesce(c.profile_id, m.profile_id) AS profile_id, c.profile_id IS NOT NULL AS member
                FROM (SELECT profile_id FROM profiles WHERE {conditions.segments[name]}{bases}) c
                FULL OUTER JOIN (SELECT profile_id FROM segment_members WHERE segment = $segment) m ON m.profile_id = c.profile_id
                WHERE c.profile_id IS NULL OR m.profile_id IS NULL
                """,
                {"segment": name},
            )
            [(leaving, joining)] = conn.execute(f"SELECT count(*) FILTER (WHERE NOT member), count(*) FILTER (WHERE member) FROM {changes}").fetchall()
            if leaving:
                conn.execute(
                    f"DELETE FROM segment_members WHERE segment = $segment AND profile_id IN (SELECT profile_id FROM {changes} WHERE NOT member)",
                    {"segment": name},
                )
            if joining:
                conn.execute(
                    f"INSERT INTO segment_members (segment, profile_id, member_since) SELECT $segment, profile_id, $now FROM {changes} WHERE member",
                    {"segment": name, "now": now},
                )
            [(size,)] = conn.execute("SELECT count(*) FROM segment_members WHERE segment = $segment", {"segment": name}).fetchall()
            sizes[name] = size
            conn.execute(
                "INSERT INTO segment_sizes (segment, measured_at, size) VALUES ($segment, $measured_at, $size)",
                {"segment": name, "measured_at": measured_at, "size": size},
            )
        for index, (name, lifecycle) in enumerate(catalog.lifecycles.items()):
            stages = f"stage_changes_{index}"
            scratch.append(stages)
            # CASE picks the first stage whose condition holds (stages are ordered); NULL: none.
            stage_case = " ".join(
                f"WHEN {sql} THEN {literal(stage.name)}" for sql, stage in zip(conditions.stages[name], lifecycle.stages, strict=True)
            )
            conn.execute(
                f"""
                CREATE TEMP TABLE {stages} AS
                SELECT coalesce(c.profile_id, m.profile_id) AS profile_id, c.stage AS new_stage, m.stage AS old_stage
                FROM (SELECT profile_id, CASE {stage_case} END AS stage FROM profiles) c
                FULL OUTER JOIN (SELECT profile_id, stage FROM lifecycle_members WHERE lifecycle = $lifecycle) m ON m.profile_id = c.profile_id
                WHERE c.stage IS DISTINCT FROM m.stage
                """,
                {"lifecycle": name},
            )
            # A profile moving stage gets a new row (stage_since = now); one that stays keeps its row.
            [(leaving, joining)] = conn.execute(
                f"SELECT count(*) FILTER (WHERE old_stage IS NOT NULL), count(*) FILTER (WHERE new_stage IS NOT NULL) FROM {stages}"
            ).fetchall()
            if leaving:
                conn.execute(
                    f"""
                    DELETE FROM lifecycle_members WHERE lifecycle = $lifecycle
                      AND profile_id IN (SELECT profile_id FROM {stages} WHERE old_stage IS NOT NULL)
                    """,
                    {"lifecycle": name},
                )
            if joining:
                conn.execute(
                    f"INSERT INTO lifecycle_members (lifecycle, stage, profile_id, stage_since) "
                    f"SELECT $lifecycle, new_stage, profile_id, $now FROM {stages} WHERE new_stage IS NOT NULL",
                    {"lifecycle": name, "now": now},
                )
        # In the refresh's transaction: the mark can never claim a refresh that did not commit.
        # A clock condition leaves no mark (and removes an older one, which these members no longer match).
        if (fingerprint := _memberships_fingerprint(conn, catalog)) is not None:
            record_fingerprint(conn, MEMBERSHIPS_STEP, fingerprint)
        else:
            conn.execute("DELETE FROM setup_fingerprints WHERE step = $step", {"step": MEMBERSHIPS_STEP})
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    finally:
        for table in scratch:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    return sizes
