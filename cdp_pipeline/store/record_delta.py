"""The row-level delta of profile imports: a re-delivered record that would change nothing is left
out of the merge's expensive part (combining with the stored values, comparing, history), and
only stamped and counted as the full merge would.

Why leaving a record out gives the same store. The rules a delta goal uses (set, set_if_empty,
set_or_clear, add) are idempotent: with ``merge(V, r)`` the values of a profile after merging
record ``r`` into values ``V``, ``merge(merge(V, r), r) = merge(V, r)``. So when

1. the goal once merged a record with the same content (identifiers, mapped values, the goal's
   configuration and rules) for the same key *alone* into profile P (no other record of that
   delivery reached P), leaving P with values V1 = merge(V0, r), recorded in ``record_states``
   (a hash of V1 and P's ``updated_at``), and
2. P's values now are V1 (the same hash and the same ``updated_at``: nothing changed P since,
   whatever did it — another connection, a SARE action, a later delivery of this goal), and
3. the record resolves to P now (the merge's own resolution, done before this filter), and no
   other record of this delivery reaches P,

then merging r again gives merge(V1, r) = V1: the full merge would find P unchanged, write no
value and no history row, count P as unchanged and stamp ``exchanged_profiles``. The delta does
exactly the last two for the records it leaves out.

A state is written only right after a merge that left P at merge(V0, r) with r alone, so an older
state stays true ("P was V1 after r") whatever happened later: a later change of P changes its
values hash or ``updated_at`` and the record is merged in full again.

The delta is used only where those arguments hold without further proof: profile goals without
sum rules (sums are not idempotent and have their own identity-based delta), without timeline
events (their merge follows the accepted keys), without objectives (consent filtering), without
dialect hooks around the merge, without properties a bulk mapping creates, on a DuckDB file store,
for a normal merge (a reprocess merges in full).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from cdp_pipeline.store.schema import is_lake, literal, quote
from cdp_pipeline.tables.staged import LINE, ROWS, StagedImport

#: the temp table of the records left out (their ``_id``).
SKIPPED = "delta_skipped"


@dataclass(frozen=True)
class DeltaScope:
    connection: str
    goal: str
    #: the goal's configuration hash (the ledger's), part of every content hash.
    config_hash: str


def delta_applies(
    conn: duckdb.DuckDBPyConnection, staged: StagedImport, *, objectives: Sequence[str], hooks: bool, status: str, enabled: bool
) -> bool:
    """Whether this delivery's records may be left out when unchanged (see the module's text)."""
    return (
        enabled
        and staged.target == "profiles"
        and status == "merged"
        and not hooks
        and not objectives
        and not staged.sum_rows
        and "sum" not in staged.rules.values()
        and not staged.events
        and not staged.items
        and not staged.detected_properties
        and not staged.detected_event_properties
        and not is_lake(conn)
    )


def _signed(expression: str) -> str:
    # DuckDB's hash is a UBIGINT; stored as BIGINT (shifted, no bit lost) so any backend holds it.
    return f"CAST(CAST({expression} AS HUGEINT) - 9223372036854775808 AS BIGINT)"


def _values_hash(alias: str, properties: list[str]) -> str:
    # A goal that writes no property (only links keys) has nothing to compare: a constant.
    return _signed(f"hash({', '.join(f'{alias}.{quote(p)}' for p in properties) or literal('')})")


def _content_hash(alias: str, staged: StagedImport, scope: DeltaScope, rules: dict[str, str]) -> str:
    """The record as staged (not its line or row count) with what decides how it merges."""
    columns = sorted(c for c in staged.records.columns if c not in (LINE, ROWS))
    return _signed(f"hash({literal(_scope_text(staged, scope, rules))}, {', '.join(f'{alias}.{quote(c)}' for c in columns)})")


def _scope_text(staged: StagedImport, scope: DeltaScope, rules: dict[str, str]) -> str:
    settings = sorted(rules.items())
    return (
        f"{scope.config_hash}|{settings}|{staged.identifier_properties}|{staged.domain_group}|"
        f"{staged.allow_create}|{staged.match_all}"
    )


def _single(resolved: str, doubled: bool) -> str:
    """The condition that a resolved record is the only one of the delivery reaching its profile."""
    return f"AND r._id IN (SELECT _id FROM {resolved} WHERE _id IS NOT NULL GROUP BY _id HAVING count(*) = 1)" if doubled else ""


def leave_out_unchanged(
    conn: duckdb.DuckDBPyConnection, staged: StagedImport, scope: DeltaScope, rules: dict[str, str], resolved: str, *, doubled: bool
) -> int:
    """Put the resolved records that would change nothing in ``SKIPPED``. ``rules``: every
    property the merge writes, the carried identifiers included; ``doubled``: some profile is
    reached by several records. Returns how many were left out."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {SKIPPED} AS
        SELECT r._id FROM {resolved} r
        JOIN record_states s ON s.connection = $connection AND s.goal = $goal AND s.key_index = r._key_index
             AND s.key = CAST(r._key AS VARCHAR) AND s.profile_id = r._id
        JOIN profiles p ON p.profile_id = r._id
        WHERE NOT r._is_new AND s.content_hash = {_content_hash("r", staged, scope, rules)}
          AND p.updated_at = s.profile_updated_at AND s.values_hash = {_values_hash("p", sorted(rules))} {_single(resolved, doubled)}
        """,
        {"connection": scope.connection, "goal": scope.goal},
    )
    ((skipped,),) = conn.execute(f"SELECT count(*) FROM {SKIPPED}").fetchall()
    return int(skipped)


def record_states_after_merge(
    conn: duckdb.DuckDBPyConnection, staged: StagedImport, scope: DeltaScope, rules: dict[str, str], resolved: str, merged: str, *, doubled: bool
) -> None:
    """After the merge wrote its values: the state of every record that reached its profile alone
    (the rows of ``merged`` that went through the merge, consented), replacing the key's older
    state. Records merged together with others into one profile get none (their older state, if
    any, stays true: see the module's text)."""
    params = {"connection": scope.connection, "goal": scope.goal}
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE delta_written AS
        SELECT CAST(r._key AS VARCHAR) AS _key, r._key_index, {_content_hash("r", staged, scope, rules)} AS content_hash, r._id
        FROM {resolved} r SEMI JOIN (SELECT _id FROM {merged} WHERE _consented) m ON m._id = r._id
        WHERE TRUE {_single(resolved, doubled)}
        """
    )
    ((pending,),) = conn.execute("SELECT count(*) FROM delta_written").fetchall()
    if not pending:  # never an empty INSERT ... SELECT (see store/segments.py)
        return
    conn.execute(
        """
        DELETE FROM record_states AS s USING delta_written w
        WHERE s.connection = $connection AND s.goal = $goal AND s.key_index = w._key_index AND s.key = w._key
        """,
        params,
    )
    conn.execute(
        f"""
        INSERT INTO record_states (connection, goal, key_index, key, content_hash, profile_id, values_hash, profile_updated_at)
        SELECT $connection, $goal, w._key_index, w._key, w.content_hash, w._id, {_values_hash("p", sorted(rules))}, p.updated_at
        FROM delta_written w JOIN profiles p ON p.profile_id = w._id
        """,
        params,
    )
