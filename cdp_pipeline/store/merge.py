"""Merging one delivery into the store: groups, profiles (with the five merge rules), timeline
events, product store, rejects and the ledger row, all in ONE DuckDB transaction.

Why one transaction: *sum* and *add* are not idempotent. The ledger row is the only thing that
stops a retry from adding a delivery twice, so it must commit together with the values it
vouches for (reliability §0.1, fault #56/#57). Everything is set-based SQL over the whole
delivery; no row is touched from Python.

The merge rules (t = stored value, s = incoming value; "empty" = NULL, or an empty list):

=============  =================  ==================  =====================================
rule           s has a value      s is empty          column absent from the file
=============  =================  ==================  =====================================
set            s                  t (kept)            t (kept)
set_if_empty   t if t else s      t (kept)            t (kept)
set_or_clear   s                  NULL (cleared)      t (kept)
add            t ∪ s, t's order   t (kept)            t (kept)
               first, no doubles
sum            coalesce(t,0) + s  t (kept)            t (kept)
=============  =================  ==================  =====================================

*sum* is the one rule that is not idempotent (add keeps a unique list, the set rules overwrite),
so the rows behind a sum are remembered in ``delivery_rows`` (see ``_apply_sum_delta`` in
store/merge_sums.py). A row with a key (its timeline event's id, a nested row's key within its event, the mapping's
``identity`` columns) is remembered per (goal, property, key) with the value it contributed: the
same key in any file adds nothing, a changed value adds the difference. A row without a key is
remembered per root file: a changed file at the same path, the same content under another name,
or a reprocess adds only rows whose identity is not there yet. The set rules and add apply again
as usual. The identities are written in the same transaction as the values they vouch for.

Several identifiers: every record is matched through each identifier in declared order; the
first one that finds a profile wins. Records of different keys that find the same profile are
combined by the same rules as duplicate rows before anything is written.

Objectives (privacy): a connection with objectives merges only the profiles whose consent
property (``store.consent_property``) names at least one of them, judged on the value the
profile would hold after this delivery (incoming under its rule, else stored). The others are
not created, not updated, get no events and no sum identities; their rows are counted in
``consent_skipped``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.fault_injection import fault_point
from cdp_pipeline.store.incoming import drop_staged_view
from cdp_pipeline.store.lake import claim_write_turn, mark_commit, record_snapshot_ids, rollback
from cdp_pipeline.store.merge_common import DeliveryRecord, MergeCounts, _drop
from cdp_pipeline.store.merge_events import _merge_events
from cdp_pipeline.store.merge_records import _merge_records
from cdp_pipeline.store.merge_sums import _move_keyed_sums, _record_counted_rows
from cdp_pipeline.store.schema import SQL_TYPES, event_table, group_table, quote
from cdp_pipeline.tables.staged import StagedImport

__all__ = ["DeliveryRecord", "MergeCounts", "delivery_is_merged", "merge_delivery"]


def delivery_is_merged(conn: duckdb.DuckDBPyConnection, content_sha256: str, config_hash: str, connection: str, goal: str) -> str | None:
    """The delivery id that already merged this content under this configuration, if any."""
    row = conn.execute(
        """
        SELECT delivery_id FROM deliveries
        WHERE connection = $c AND goal = $g AND content_sha256 = $sha AND config_hash = $cfg AND status = 'merged'
        LIMIT 1
        """,
        {"c": connection, "g": goal, "sha": content_sha256, "cfg": config_hash},
    ).fetchall()
    return row[0][0] if row else None


def _with_detected_properties(catalog: Catalog, staged: StagedImport) -> Catalog:
    """The catalog plus the properties this delivery's bulk mapping created (declared ones win)."""

    def created(declared: dict[str, PropertyDefinition], found: dict[str, str]) -> dict[str, PropertyDefinition]:
        extra = {
            name: PropertyDefinition(type=kind, description="created by a bulk mapping; see catalog_properties")
            for name, kind in found.items()
            if name not in declared
        }
        return {**declared, **extra}

    update: dict = {}
    if staged.target == "groups" and staged.group_type is not None:
        group = catalog.group_types[staged.group_type]
        group = group.model_copy(update={"properties": created(group.properties, staged.detected_properties)})
        update["group_types"] = {**catalog.group_types, staged.group_type: group}
    else:
        update["profile_properties"] = created(catalog.profile_properties, staged.detected_properties)
    event_types = dict(catalog.event_types)
    for event_type, found in staged.detected_event_properties.items():
        definition = event_types[event_type]
        event_types[event_type] = definition.model_copy(update={"properties": created(definition.properties, found)})
    return catalog.model_copy(update={**update, "event_types": event_types})


def _create_detected_properties(conn: duckdb.DuckDBPyConnection, staged: StagedImport, delivery: DeliveryRecord, now: datetime) -> None:
    """Columns for the properties a bulk mapping detected, in the delivery's transaction, each
    recorded in catalog_properties. A property an earlier delivery created with another type is
    refused by name: converting the column silently could turn stored values into NULLs."""
    if staged.target == "groups" and staged.group_type is not None:
        targets = [(group_table(staged.group_type), f"group:{staged.group_type}", staged.detected_properties)]
    else:
        targets = [("profiles", "profile", staged.detected_properties)]
    targets += [(event_table(t), f"event:{t}", found) for t, found in staged.detected_event_properties.items()]
    for table, entity, found in targets:
        if found:
            _create_columns(conn, table, entity, found, delivery, now)


def _create_columns(
    conn: duckdb.DuckDBPyConnection, table: str, entity: str, created: dict[str, str], delivery: DeliveryRecord, now: datetime
) -> None:
    existing = dict(
        conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = $table AND schema_name = 'main' "
            "AND database_name = current_database()",
            {"table": table},
        ).fetchall()
    )
    for name, kind in created.items():
        sql_type = SQL_TYPES[kind]
        current = existing.get(name)
        if current is None:
            conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {sql_type}")
            conn.execute(
                "INSERT INTO catalog_properties (property, entity, type, connection, goal, delivery_id, created_at) "
                "VALUES ($property, $entity, $type, $connection, $goal, $delivery, $now)",
                {"property": name, "entity": entity, "type": kind, "connection": delivery.connection, "goal": delivery.goal,
                 "delivery": delivery.delivery_id, "now": now},
            )
        elif current.replace(" ", "") != sql_type.replace(" ", ""):
            raise InputError(
                InputProblem(
                    file=delivery.root_file, line=None, column=name,
                    reason=f"bulk mapping: property {name!r} exists as {current}, but this file's values make it {kind}",
                    fix=f"Declare {name!r} in store.yaml with the type it should have (text keeps any value), or correct the file",
                )
            )


def merge_delivery(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    staged: StagedImport,
    delivery: DeliveryRecord,
    run_id: str,
    now: datetime,
    *,
    objectives: Sequence[str] = (),
    consent_property: str = "consents",
    status: str = "merged",
    record_history: bool = True,
    before=None,
    after=None,
) -> MergeCounts:
    """Merge a staged delivery and write its ledger row, atomically. Nothing of it stays if any
    statement fails.

    ``objectives``: the connection's objectives; profiles that consented to none of them (in
    ``consent_property``) are skipped. ``status``: the ledger status, ``reprocessed`` when an
    operator merges a delivery the ledger already has (sums still count each row once)."""
    # Rows the import tables rejected, counted in full there (the listed problems are capped); a
    # dialect hook may add rejects of its own after staging, which only the list holds.
    listed = len({(p.file, p.line) for p in staged.rejects if p.line})
    if staged.detected_properties or staged.detected_event_properties:
        catalog = _with_detected_properties(catalog, staged)
    rejected = max(staged.rows_rejected or 0, listed)
    counts = MergeCounts(rows_read=staged.rows_read, rows_rejected=rejected, values_not_imported=staged.values_not_imported)
    conn.execute("BEGIN TRANSACTION")
    try:
        claim_write_turn(conn)
        fault_point("merge_early")
        # Dialect hooks (SARE's group clears, consent withdrawals ...) share the transaction, so a
        # delivery and its side effects commit or vanish together.
        if before is not None:
            before(conn, staged)
        _create_detected_properties(conn, staged, delivery, now)
        sum_tables, every_key_accepted = _merge_records(
            conn, catalog, staged, delivery, run_id, now, counts,
            objectives=objectives, consent_property=consent_property, record_history=record_history,
        )
        _move_keyed_sums(conn, staged, sum_tables, delivery, run_id, now, record_history)
        _record_counted_rows(conn, sum_tables, every_key_accepted, delivery, counts)
        if staged.target == "profiles":
            _merge_events(conn, catalog, staged, delivery, now, counts)
        _drop(conn, "accepted_keys")
        if staged.rejects:
            rejects = pl.DataFrame(
                {
                    "file": [p.file for p in staged.rejects],
                    "line": [p.line for p in staged.rejects],
                    "column_name": [p.column for p in staged.rejects],
                    "reason": [f"{p.reason}. {p.fix}".strip(". ") if p.fix else p.reason for p in staged.rejects],
                },
                schema={"file": pl.String, "line": pl.Int64, "column_name": pl.String, "reason": pl.String},
            )
            conn.register("incoming_rejects", rejects)
            conn.execute(
                """
                INSERT INTO rejects SELECT $delivery, $connection, $goal, file, line, column_name, reason, $run, $now
                FROM incoming_rejects
                """,
                {"delivery": delivery.delivery_id, "connection": delivery.connection, "goal": delivery.goal, "run": run_id, "now": now},
            )
        if after is not None:
            after(conn, staged)
        conn.execute(
            """
            INSERT INTO deliveries (delivery_id, connection, goal, partition_key, root_file, files, content_sha256, config_hash,
                status, rows_read, rows_rejected, profiles_created, profiles_updated, profiles_unchanged, profiles_ignored,
                consent_skipped, groups_created, groups_updated, events_created, events_updated, run_id, merged_at,
                events_unchanged, values_not_imported)
            VALUES ($delivery_id, $connection, $goal, $partition_key, $root_file, $files, $sha, $cfg,
                $status, $rows_read, $rows_rejected, $pc, $pu, $pn, $pi, $cs, $gc, $gu, $ec, $eu, $run, $now, $en, $vn)
            """,
            {
                "delivery_id": delivery.delivery_id,
                "connection": delivery.connection,
                "goal": delivery.goal,
                "partition_key": delivery.partition_key,
                "root_file": delivery.root_file,
                "files": json.dumps(delivery.files),
                "sha": delivery.content_sha256,
                "cfg": delivery.config_hash,
                "status": status,
                "rows_read": counts.rows_read,
                "rows_rejected": counts.rows_rejected,
                "pc": counts.profiles_created,
                "pu": counts.profiles_updated,
                "pn": counts.profiles_unchanged,
                "pi": counts.profiles_ignored,
                "cs": counts.consent_skipped,
                "gc": counts.groups_created,
                "gu": counts.groups_updated,
                "ec": counts.events_created,
                "eu": counts.events_updated,
                "en": counts.events_unchanged,
                "vn": counts.values_not_imported,
                "run": run_id,
                "now": now,
            },
        )
        mark_commit(conn, delivery.delivery_id, now)
        fault_point("merge_late")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    finally:
        for view in ("incoming_records", "incoming_rejects"):
            try:
                conn.unregister(view)
            except Exception:  # noqa: BLE001, S110 - a view that was never registered
                pass
        for view in ("item_rows", "incoming_events", "incoming_items", "incoming_sum_rows"):
            drop_staged_view(conn, view)
    record_snapshot_ids(conn)
    return counts
