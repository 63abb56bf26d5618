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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.store.schema import SQL_TYPES, event_table, group_table, item_table, literal, quote
from cdp_pipeline.tables.staged import StagedImport


@dataclass
class DeliveryRecord:
    """The ledger row of a delivery, minus the counts the merge fills in."""

    delivery_id: str
    connection: str
    goal: str
    partition_key: str
    root_file: str
    files: list[dict]
    content_sha256: str
    config_hash: str


@dataclass
class MergeCounts:
    rows_read: int = 0
    rows_rejected: int = 0
    profiles_created: int = 0
    profiles_updated: int = 0
    profiles_unchanged: int = 0
    profiles_ignored: int = 0
    consent_skipped: int = 0
    groups_created: int = 0
    groups_updated: int = 0
    events_created: int = 0
    events_updated: int = 0
    events_ignored: int = 0
    last_profiles: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {key: value for key, value in asdict(self).items() if isinstance(value, int)}


def rule_sql(rule: str, stored: str, incoming: str, prop: PropertyDefinition) -> str:
    """SQL for the new value of one property under a merge rule (see the table above)."""
    sql_type = SQL_TYPES[prop.type]
    s = f"CAST({incoming} AS {sql_type})"
    t = stored
    is_list = prop.type == "list"
    t_empty = f"({t} IS NULL OR len({t}) = 0)" if is_list else f"{t} IS NULL"
    s_empty = f"({s} IS NULL OR len({s}) = 0)" if is_list else f"{s} IS NULL"
    if rule == "set":
        return f"CASE WHEN {s_empty} THEN {t} ELSE {s} END"
    if rule == "set_if_empty":
        return f"CASE WHEN {t_empty} THEN {s} ELSE {t} END"
    if rule == "set_or_clear":
        return f"CASE WHEN {s_empty} THEN NULL ELSE {s} END"
    if rule == "add":
        # list_distinct does not keep order; filter the incoming items against the stored list so
        # stored items keep their place and new ones follow in file order (incoming is already unique).
        return (
            f"CASE WHEN {s_empty} THEN {t} ELSE "
            f"list_concat(coalesce({t}, []::VARCHAR[]), list_filter({s}, lambda x: NOT list_contains(coalesce({t}, []::VARCHAR[]), x))) END"
        )
    if rule == "sum":
        return f"CASE WHEN {s_empty} THEN {t} ELSE coalesce({t}, 0) + {s} END"
    raise ValueError(f"unknown merge rule {rule!r}")


def _properties_for(staged: StagedImport, catalog: Catalog) -> dict[str, PropertyDefinition]:
    if staged.target == "groups":
        assert staged.group_type is not None
        return catalog.group_types[staged.group_type].properties
    return catalog.profile_properties


def _merge_records(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    staged: StagedImport,
    delivery: DeliveryRecord,
    run_id: str,
    now: datetime,
    counts: MergeCounts,
) -> None:
    properties = _properties_for(staged, catalog)
    rules = dict(staged.rules)
    records = staged.records
    if staged.target == "profiles":
        table, id_column = "profiles", "profile_id"
        ident = staged.identifier_property
        if ident != "profile_id" and ident not in rules:
            # A profile created through a unique property must carry it, or it could never be matched again.
            records = records.with_columns(pl.col("_key").alias(ident))
            rules[ident] = "set_if_empty"
    else:
        assert staged.group_type is not None
        table, id_column, ident = group_table(staged.group_type), "group_id", "group_id"
    conn.register("incoming_records", records)

    if ident == id_column:
        match_sql = f"SELECT {id_column} AS _match, {id_column} AS _id FROM {quote(table)}"
        new_id_sql = "i._key"
    else:
        match_sql = f"SELECT {quote(ident)} AS _match, min({id_column}) AS _id FROM {quote(table)} WHERE {quote(ident)} IS NOT NULL GROUP BY 1"
        # Deterministic ids: importing the same file into an empty store twice yields the same ids.
        new_id_sql = f"md5({literal(ident)} || ':' || i._key)"
    allow = "TRUE" if staged.allow_create else "FALSE"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE resolved AS
        SELECT CASE WHEN p._id IS NOT NULL THEN p._id WHEN {allow} THEN {new_id_sql} END AS _id,
               p._id IS NULL AS _is_new, i.*
        FROM incoming_records i LEFT JOIN ({match_sql}) p ON p._match = i._key
        """
    )
    new_values = [f"{rule_sql(rule, f't.{quote(p)}', f'r.{quote(p)}', properties[p])} AS {quote(p)}" for p, rule in rules.items()]
    changed = " OR ".join(
        f"({rule_sql(rule, f't.{quote(p)}', f'r.{quote(p)}', properties[p])}) IS DISTINCT FROM t.{quote(p)}" for p, rule in rules.items()
    ) or "FALSE"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE merged AS
        SELECT r._id, r._is_new, r._line, r._key, {', '.join(new_values) + ',' if new_values else ''}
               ({changed}) AS _changed
        FROM resolved r LEFT JOIN {quote(table)} t ON t.{id_column} = r._id AND NOT r._is_new
        WHERE r._id IS NOT NULL
        """
    )
    if rules:
        assignments = ", ".join(f"{quote(p)} = m.{quote(p)}" for p in rules)
        conn.execute(
            f"""
            UPDATE {quote(table)} SET {assignments}, updated_at = $now, last_delivery_id = $delivery
            {", last_run_id = $run" if staged.target == "profiles" else ""}
            FROM merged m WHERE {quote(table)}.{id_column} = m._id AND m._changed AND NOT m._is_new
            """,
            {"now": now, "delivery": delivery.delivery_id, **({"run": run_id} if staged.target == "profiles" else {})},
        )
    columns = ", ".join(quote(p) for p in rules)
    values = ", ".join(f"m.{quote(p)}" for p in rules)
    extra_cols = ", last_run_id" if staged.target == "profiles" else ""
    extra_vals = ", $run" if staged.target == "profiles" else ""
    conn.execute(
        f"""
        INSERT INTO {quote(table)} ({id_column}, created_at, updated_at, last_delivery_id{extra_cols}{', ' + columns if columns else ''})
        SELECT m._id, $now, $now, $delivery{extra_vals}{', ' + values if values else ''} FROM merged m WHERE m._is_new
        """,
        {"now": now, "delivery": delivery.delivery_id, **({"run": run_id} if staged.target == "profiles" else {})},
    )
    created, updated, unchanged = conn.execute(
        "SELECT count(*) FILTER (WHERE _is_new), count(*) FILTER (WHERE _changed AND NOT _is_new), "
        "count(*) FILTER (WHERE NOT _changed AND NOT _is_new) FROM merged"
    ).fetchone()
    (ignored,) = conn.execute("SELECT count(*) FROM resolved WHERE _id IS NULL").fetchone()
    if staged.target == "profiles":
        counts.profiles_created, counts.profiles_updated = created, updated
        counts.profiles_unchanged, counts.profiles_ignored = unchanged, ignored
        counts.last_profiles = [
            row[0]
            for row in conn.execute(
                "SELECT _id FROM merged WHERE _is_new OR _changed ORDER BY _line DESC, _id LIMIT 5"
            ).fetchall()
        ]
        conn.execute(
            """
            MERGE INTO exchanged_profiles t
            USING (SELECT DISTINCT _id AS profile_id FROM merged) s
            ON t.connection = $connection AND t.direction = 'imported' AND t.profile_id = s.profile_id
            WHEN MATCHED THEN UPDATE SET last_at = $now
            WHEN NOT MATCHED THEN INSERT VALUES ($connection, 'imported', s.profile_id, $now, $now)
            """,
            {"connection": delivery.connection, "now": now},
        )
    else:
        counts.groups_created, counts.groups_updated = created, updated


def _merge_events(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, staged: StagedImport, delivery: DeliveryRecord, now: datetime, counts: MergeCounts
) -> None:
    for event_type, frame in staged.events.items():
        definition = catalog.event_types[event_type]
        table = event_table(event_type)
        conn.register("incoming_events", frame)
        props = list(definition.properties)
        present = [p for p in props if p in frame.columns]
        casts = ", ".join(f"CAST(e.{quote(p)} AS {SQL_TYPES[definition.properties[p].type]}) AS {quote(p)}" for p in present)
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE event_rows AS
            SELECT e.event_id, r._id AS profile_id, CAST(e.event_time AS TIMESTAMP) AS event_time{', ' + casts if casts else ''}
            FROM incoming_events e LEFT JOIN resolved r ON r._key = e._key
            """
        )
        (ignored,) = conn.execute("SELECT count(*) FROM event_rows WHERE profile_id IS NULL").fetchone()
        conn.execute("DELETE FROM event_rows WHERE profile_id IS NULL")
        (replaced,) = conn.execute(f"SELECT count(*) FROM {quote(table)} WHERE event_id IN (SELECT event_id FROM event_rows)").fetchone()
        (total,) = conn.execute("SELECT count(*) FROM event_rows").fetchone()
        conn.execute(f"DELETE FROM {quote(table)} WHERE event_id IN (SELECT event_id FROM event_rows)")
        cols = ", ".join(["event_id", "profile_id", "event_time", *(quote(p) for p in present), "delivery_id", "imported_at"])
        vals = ", ".join(["event_id", "profile_id", "event_time", *(quote(p) for p in present), "$delivery", "$now"])
        conn.execute(f"INSERT INTO {quote(table)} ({cols}) SELECT {vals} FROM event_rows", {"delivery": delivery.delivery_id, "now": now})
        counts.events_created += total - replaced
        counts.events_updated += replaced
        counts.events_ignored += ignored

        for nested_type, nested in definition.nested.items():
            key = f"{event_type}/{nested_type}"
            items_table = item_table(event_type, nested_type)
            # Replacing an event replaces its items too, so a re-imported order never keeps stale lines.
            conn.execute(f"DELETE FROM {quote(items_table)} WHERE event_id IN (SELECT event_id FROM event_rows)")
            if key not in staged.items:
                continue
            item_frame = staged.items[key]
            conn.register("incoming_items", item_frame)
            item_props = [p for p in nested.properties if p in item_frame.columns]
            item_casts = ", ".join(f"CAST(i.{quote(p)} AS {SQL_TYPES[nested.properties[p].type]})" for p in item_props)
            conn.execute(
                f"""
                INSERT INTO {quote(items_table)} (event_id, item_index{''.join(', ' + quote(p) for p in item_props)})
                SELECT i.event_id, i.item_index{', ' + item_casts if item_casts else ''}
                FROM incoming_items i WHERE i.event_id IN (SELECT event_id FROM event_rows)
                """
            )
            for source in staged.product_store:
                if source.event_type != event_type or source.nested_type != nested_type:
                    continue
                quantity = f"sum(CAST(i.{quote(source.quantity_property)} AS DECIMAL(18,4)))" if source.quantity_property else "NULL"
                conn.execute(
                    f"""
                    MERGE INTO product_store t
                    USING (
                        SELECT CAST(i.{quote(source.product_id_property)} AS VARCHAR) AS product_id, count(*) AS n,
                               {quantity} AS q, min(e.event_time) AS first_at, max(e.event_time) AS last_at
                        FROM incoming_items i JOIN event_rows e USING (event_id)
                        WHERE i.{quote(source.product_id_property)} IS NOT NULL GROUP BY 1
                    ) s ON t.product_id = s.product_id
                    WHEN MATCHED THEN UPDATE SET times_bought = t.times_bought + s.n,
                        quantity_bought = coalesce(t.quantity_bought, 0) + coalesce(s.q, 0),
                        first_bought_at = least(t.first_bought_at, s.first_at),
                        last_bought_at = greatest(t.last_bought_at, s.last_at)
                    WHEN NOT MATCHED THEN INSERT VALUES (s.product_id, s.n, s.q, s.first_at, s.last_at)
                    """
                )


def delivery_is_merged(conn: duckdb.DuckDBPyConnection, content_sha256: str, config_hash: str, connection: str, goal: str) -> str | None:
    """The delivery id that already merged this content under this configuration, if any."""
    row = conn.execute(
        """
        SELECT delivery_id FROM deliveries
        WHERE connection = $c AND goal = $g AND content_sha256 = $sha AND config_hash = $cfg AND status = 'merged'
        LIMIT 1
        """,
        {"c": connection, "g": goal, "sha": content_sha256, "cfg": config_hash},
    ).fetchone()
    return row[0] if row else None


def merge_delivery(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    staged: StagedImport,
    delivery: DeliveryRecord,
    run_id: str,
    now: datetime,
) -> MergeCounts:
    """Merge a staged delivery and write its ledger row, atomically. Nothing of it stays if any
    statement fails."""
    counts = MergeCounts(rows_read=staged.rows_read, rows_rejected=len({(p.file, p.line) for p in staged.rejects if p.line}))
    conn.execute("BEGIN TRANSACTION")
    try:
        _merge_records(conn, catalog, staged, delivery, run_id, now, counts)
        if staged.target == "profiles":
            _merge_events(conn, catalog, staged, delivery, now, counts)
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
        conn.execute(
            """
            INSERT INTO deliveries VALUES ($delivery_id, $connection, $goal, $partition_key, $root_file, $files, $sha, $cfg,
                'merged', $rows_read, $rows_rejected, $pc, $pu, $pn, $pi, $cs, $gc, $gu, $ec, $eu, $run, $now)
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
                "run": run_id,
                "now": now,
            },
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        for view in ("incoming_records", "incoming_events", "incoming_items", "incoming_rejects"):
            try:
                conn.unregister(view)
            except Exception:  # noqa: BLE001 - a view that was never registered
                pass
    return counts
