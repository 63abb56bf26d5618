"""The sidecar's effects on the store that no merge rule expresses, as set-based SQL in the
caller's transaction (never BEGIN/COMMIT here), plus the foreign-key duplicate handling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.dialects.sare.goal import SareActions
from cdp_pipeline.dialects.sare.settings import BLOCKED_STATUS
from cdp_pipeline.errors import InputProblem
from cdp_pipeline.store.schema import event_table, item_table, literal, quote
from cdp_pipeline.tables.staged import KEY, LINE, StagedImport

# --------------------------------------------------------------------------- store actions


def _register_keys(conn, staged: StagedImport) -> None:
    conn.register("sare_delivery_keys", staged.records.select(pl.col(KEY).cast(pl.String)))


def resolve_duplicates(conn, staged: StagedImport, actions: SareActions, display_name: str = "") -> StagedImport:
    """duplicates_handling with a foreign key. "skip" (any value but "default"): keys that match
    more than one stored profile are left out, each as a reject. "all" ("default"): every profile
    sharing the key is updated (``staged.match_all``), with a warning naming how many keys were ambiguous."""
    if not actions.uses_foreign_key or staged.records.height == 0:
        return staged
    ident = quote(actions.identifier_property)
    _register_keys(conn, staged)
    try:
        ambiguous = [
            str(row[0])
            for row in conn.execute(
                f"SELECT {ident} FROM profiles WHERE {ident} IN (SELECT _key FROM sare_delivery_keys) GROUP BY 1 HAVING count(*) > 1"
            ).fetchall()
        ]
    finally:
        conn.unregister("sare_delivery_keys")
    if not ambiguous:
        return staged
    keys = pl.Series(ambiguous, dtype=pl.String).implode()
    if actions.duplicates == "all":
        message = (
            f"{display_name}: {len(ambiguous)} foreign key value(s) match several profiles; duplicates_handling "
            "\"default\": imported into every one of them"
        )
        return StagedImport(**{**vars(staged), "warnings": [*staged.warnings, message], "match_all": True})
    skipped = staged.records.filter(pl.col(KEY).is_in(keys))
    rejects = [
        InputProblem(file=display_name, line=line, column=actions.identifier_property,
                     reason="the foreign key matches more than one profile (duplicates_handling: skip)", fix="The row was left out")
        for line in skipped[LINE].to_list()
    ]
    events = {name: frame.filter(~pl.col(KEY).is_in(keys)) for name, frame in staged.events.items()}
    records = staged.records.filter(~pl.col(KEY).is_in(keys))
    return StagedImport(**{**vars(staged), "records": records, "events": events, "rejects": [*staged.rejects, *rejects]})


def _delivery_profiles(actions: SareActions) -> str:
    return f"SELECT profile_id FROM profiles WHERE {quote(actions.identifier_property)} IN (SELECT _key FROM sare_delivery_keys)"


def _leave_group(conn, actions: SareActions, group: int, where: str, now: datetime) -> None:
    groups = quote(actions.groups_property)
    item = literal(str(group))
    conn.execute(
        f"UPDATE profiles SET {groups} = list_filter({groups}, lambda x: x <> {item}), updated_at = $now "
        f"WHERE list_contains({groups}, {item}) AND ({where})",
        {"now": now},
    )


def apply_store_actions(
    conn, catalog: Catalog, actions: SareActions, staged: StagedImport, *, phase: Literal["before", "after"], now: datetime
) -> None:
    """The sidecar's effects that no merge rule expresses, as set-based SQL in the caller's
    transaction (this function never begins or commits one). ``phase="before"`` runs before
    ``merge_delivery``, ``"after"`` after it, with the same ``staged``:

    before: sarescript.before group clears; overwrite 3's history (events of
    ``clear_history_event_types`` of the profiles this file names, with their nested items);
    a snapshot of the group's members for ``keep_blocked_out_of_group``.
    after: profiles of this file whose status is 7 (blocked) leave the group they did not belong
    to before; consent status 3 removes the consent name; sarescript.after group clears.
    Every profile changed here gets ``updated_at = now`` so changed-only exports see it."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    _register_keys(conn, staged)
    try:
        if phase == "before":
            for clear in (c for c in actions.group_clears if c.phase == "before"):
                _leave_group(conn, actions, clear.group, "TRUE", now)
            for event_type in actions.clear_history_event_types:
                definition = catalog.event_types[event_type]
                doomed = f"SELECT event_id FROM {quote(event_table(event_type))} WHERE profile_id IN ({_delivery_profiles(actions)})"
                for nested_type in definition.nested:
                    conn.execute(f"DELETE FROM {quote(item_table(event_type, nested_type))} WHERE event_id IN ({doomed})")
                conn.execute(f"DELETE FROM {quote(event_table(event_type))} WHERE profile_id IN ({_delivery_profiles(actions)})")
            if actions.keep_blocked_out_of_group is not None:
                conn.execute(
                    f"CREATE OR REPLACE TEMP TABLE sare_group_members_before AS SELECT profile_id FROM profiles "
                    f"WHERE list_contains({quote(actions.groups_property)}, {literal(str(actions.keep_blocked_out_of_group))})"
                )
            return
        if actions.keep_blocked_out_of_group is not None:
            status = quote(actions.status_property)
            blocked = literal(str(BLOCKED_STATUS))
            _leave_group(
                conn, actions, actions.keep_blocked_out_of_group,
                f"CAST({status} AS VARCHAR) = {blocked} AND profile_id IN ({_delivery_profiles(actions)}) "
                "AND profile_id NOT IN (SELECT profile_id FROM sare_group_members_before)",
                now,
            )
            conn.execute("DROP TABLE IF EXISTS sare_group_members_before")
        if actions.withdraw_consent is not None:
            consents = quote(actions.consent_property)
            name = literal(actions.withdraw_consent)
            conn.execute(
                f"UPDATE profiles SET {consents} = list_filter({consents}, lambda x: x <> {name}), updated_at = $now "
                f"WHERE list_contains({consents}, {name}) AND profile_id IN ({_delivery_profiles(actions)})",
                {"now": now},
            )
        for clear in (c for c in actions.group_clears if c.phase == "after"):
            _leave_group(conn, actions, clear.group, "TRUE", now)
    finally:
        conn.unregister("sare_delivery_keys")
