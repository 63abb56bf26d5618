"""The sidecar's effects on the store that no merge rule expresses, as set-based SQL in the
caller's transaction (never BEGIN/COMMIT here), plus the foreign-key duplicate handling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.dialects.sare.goal import SareActions, ScriptOperation
from cdp_pipeline.dialects.sare.settings import BLOCKED_STATUS
from cdp_pipeline.errors import InputProblem
from cdp_pipeline.store.schema import SQL_TYPES, event_table, item_table, literal, quote
from cdp_pipeline.tables.staged import KEY, LINE, StagedImport

# --------------------------------------------------------------------------- store actions

def _in_domain_group(actions: SareActions) -> str:
    """A pair's addresses are looked up in its domain group only (``dialect.domain_group``), as the
    merge matches them: an address of another SARE account is another profile."""
    return f"domain_group = {literal(actions.domain_group)}"


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
                f"SELECT {ident} FROM profiles WHERE {ident} IN (SELECT _key FROM sare_delivery_keys) AND {_in_domain_group(actions)} "
                "GROUP BY 1 HAVING count(*) > 1"
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
    return (
        f"SELECT profile_id FROM profiles WHERE {quote(actions.identifier_property)} IN (SELECT _key FROM sare_delivery_keys) "
        f"AND {_in_domain_group(actions)}"
    )


def _leave_group(conn, actions: SareActions, group: int, where: str, now: datetime) -> None:
    groups = quote(actions.groups_property)
    item = literal(str(group))
    conn.execute(
        f"UPDATE profiles SET {groups} = list_filter({groups}, lambda x: x <> {item}), updated_at = $now "
        f"WHERE list_contains({groups}, {item}) AND ({where})",
        {"now": now},
    )


def drop_stored_spamtraps(conn, staged: StagedImport, actions: SareActions, display_name: str = "") -> StagedImport:
    """checkSpamtrap against the store's ``spamtraps`` table (addresses compared trimmed and lower
    case): matching rows are left out, each as a reject with file and line, so the ledger counts
    them. An empty table with checkSpamtrap true is a warning, never a silent pass."""
    if not actions.check_spamtrap or staged.records.height == 0:
        return staged
    column = KEY if actions.spamtrap_property == actions.identifier_property else actions.spamtrap_property
    if column is None or column not in staged.records.columns:
        return staged
    # fetchall: the writer connection refuses other work while a result is only partly fetched.
    ((stored,),) = conn.execute("SELECT count(*) FROM spamtraps").fetchall()
    if stored == 0:
        message = f"{display_name}: checkSpamtrap is true but the store's spamtraps table is empty: no address was checked against it"
        return StagedImport(**{**vars(staged), "warnings": [*staged.warnings, message]})
    conn.register("sare_delivery_addresses", staged.records.select(pl.col(LINE), pl.col(column).cast(pl.String).alias("address")))
    try:
        trapped_lines = [
            int(row[0])
            for row in conn.execute(
                f"SELECT d.{quote(LINE)} FROM sare_delivery_addresses AS d "
                "WHERE lower(trim(d.address)) IN (SELECT lower(trim(t.address)) FROM spamtraps AS t WHERE t.address IS NOT NULL) "
                f"ORDER BY d.{quote(LINE)}"
            ).fetchall()
        ]
    finally:
        conn.unregister("sare_delivery_addresses")
    if not trapped_lines:
        return staged
    hit = pl.col(LINE).is_in(pl.Series(trapped_lines, dtype=staged.records.schema[LINE]).implode())
    rejects = [
        InputProblem(file=display_name, line=line, column=None, reason="the address is on the spam-trap list (checkSpamtrap)", fix="The row was left out")
        for line in trapped_lines
    ]
    return StagedImport(**{**vars(staged), "records": staged.records.filter(~hit), "rejects": [*staged.rejects, *rejects]})


def _join_group(conn, actions: SareActions, group: int, where: str, now: datetime) -> None:
    groups = quote(actions.groups_property)
    item = literal(str(group))
    conn.execute(
        f"UPDATE profiles SET {groups} = list_append(coalesce({groups}, []::VARCHAR[]), {item}), updated_at = $now "
        f"WHERE NOT coalesce(list_contains({groups}, {item}), false) AND ({where})",
        {"now": now},
    )


def _perform(conn, catalog: Catalog, actions: SareActions, op: ScriptOperation, now: datetime) -> None:
    """One SAREscript operation as set-based SQL. Group clears and moves act on the group's
    members in the pair's domain group (SARE's group numbers belong to one account); group adds
    and field operations on the profiles this file names (that exist at the
    time: in ``before``, profiles the file creates do not exist yet)."""
    file_profiles = f"profile_id IN ({_delivery_profiles(actions)})"
    if op.kind == "sare_group_clear" and op.group is not None:
        _leave_group(conn, actions, op.group, _in_domain_group(actions), now)
    elif op.kind == "sare_group_move" and op.group is not None and op.target_group is not None:
        in_group = f"list_contains({quote(actions.groups_property)}, {literal(str(op.group))})"
        members = f"profile_id IN (SELECT profile_id FROM profiles WHERE {in_group} AND {_in_domain_group(actions)})"
        conn.execute(f"CREATE OR REPLACE TEMP TABLE sare_moving AS SELECT profile_id FROM profiles WHERE {members}")
        try:
            _leave_group(conn, actions, op.group, "profile_id IN (SELECT profile_id FROM sare_moving)", now)
            _join_group(conn, actions, op.target_group, "profile_id IN (SELECT profile_id FROM sare_moving)", now)
        finally:
            conn.execute("DROP TABLE IF EXISTS sare_moving")
    elif op.kind == "sare_group_add" and op.group is not None:
        _join_group(conn, actions, op.group, file_profiles, now)
    elif op.kind == "sare_field_clear" and op.property is not None:
        column = quote(op.property)
        conn.execute(f"UPDATE profiles SET {column} = NULL, updated_at = $now WHERE {column} IS NOT NULL AND {file_profiles}", {"now": now})
    elif op.kind == "sare_field_set" and op.property is not None and op.value is not None:
        column = quote(op.property)
        value = f"CAST({literal(op.value)} AS {SQL_TYPES[catalog.profile_properties[op.property].type]})"
        conn.execute(
            f"UPDATE profiles SET {column} = {value}, updated_at = $now WHERE {column} IS DISTINCT FROM {value} AND {file_profiles}",
            {"now": now},
        )


def apply_store_actions(
    conn, catalog: Catalog, actions: SareActions, staged: StagedImport, *, phase: Literal["before", "after"], now: datetime
) -> None:
    """The sidecar's effects that no merge rule expresses, as set-based SQL in the caller's
    transaction (this function never begins or commits one). ``phase="before"`` runs before
    ``merge_delivery``, ``"after"`` after it, with the same ``staged``:

    before: sarescript.before operations; overwrite 3's history (the value history in
    property_changes and the events of ``clear_history_event_types`` of the profiles this file
    names, with their nested items); a snapshot of the group's members for
    ``keep_blocked_out_of_group``.
    after: profiles of this file whose status is 7 (blocked) leave the group they did not belong
    to before; consent status 3 removes the consent name; sarescript.after operations.
    Every profile changed here gets ``updated_at = now`` so changed-only exports see it."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    _register_keys(conn, staged)
    try:
        if phase == "before":
            for op in (o for o in actions.operations if o.phase == "before"):
                _perform(conn, catalog, actions, op, now)
            if actions.clear_value_history:
                conn.execute(f"DELETE FROM property_changes WHERE entity = 'profile' AND entity_id IN ({_delivery_profiles(actions)})")
                # The values a profile was created with count as history too (property_history
                # shows them until they change): forgetting the creating delivery clears them.
                conn.execute(f"UPDATE profiles SET created_delivery_id = NULL WHERE profile_id IN ({_delivery_profiles(actions)})")
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
        for op in (o for o in actions.operations if o.phase == "after"):
            _perform(conn, catalog, actions, op, now)
    finally:
        conn.unregister("sare_delivery_keys")
