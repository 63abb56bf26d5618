"""Sums counted once: the delta a delivery adds per sum property (``delivery_rows``, the sum
row identities), keyed sums moved when their key changes profile, and the rows remembered."""

from __future__ import annotations

from datetime import datetime

import duckdb

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.store.incoming import drop_staged_view, staged_view
from cdp_pipeline.store.merge_common import DeliveryRecord, MergeCounts, _drop
from cdp_pipeline.store.merge_history import _add_writers, _known_writers, _record_creation_values
from cdp_pipeline.store.schema import group_table, quote
from cdp_pipeline.tables.staged import FILE_HASH_HI, FILE_HASH_LO, HASH_HI, HASH_LO, KEY_INDEX, SUM_KEYED, StagedImport


def _apply_sum_delta(
    conn: duckdb.DuckDBPyConnection,
    staged: StagedImport,
    properties: dict[str, PropertyDefinition],
    delivery: DeliveryRecord,
    counts: MergeCounts,
) -> tuple[list[tuple[str, str]], str]:
    """Replace each sum column of the records by what this delivery adds, see ``delivery_rows``:

    * keyed rows (a timeline event's id, a nested row's key within its event, the mapping's
      ``identity`` columns) are compared with the value remembered for their key in this goal,
      whatever file it came from: an unknown key adds its value, a known key with the same value
      adds nothing, a known key with another value adds the difference (a correction);
    * rows without a key keep the per-file rule: a row adds once per root file (or per content,
      when the same bytes arrive under another name) and a changed row counts as a new row.

    Returns the temp tables holding each property's rows to remember (``sum_new_<n>``), recorded
    once the keys resolve, and the name of the relation holding the records to merge. Set-based:
    one join per sum property against the remembered identities."""
    # row_hash is text on a DuckLake store (see schema.LAKE_TYPES); the casts are no-ops on a DuckDB file.
    scope = """
        SELECT property, CAST(row_hash AS UHUGEINT) AS row_hash FROM delivery_rows
        WHERE connection = $connection AND goal = $goal AND property IN (SELECT unnest($properties)) AND NOT coalesce(keyed, false)
          AND (root_file = $root_file OR delivery_id IN (
               SELECT delivery_id FROM deliveries WHERE connection = $connection AND goal = $goal AND content_sha256 = $sha))
    """
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE counted_rows AS {scope}",
        {
            "connection": delivery.connection, "goal": delivery.goal, "properties": sorted(staged.sum_rows),
            "root_file": delivery.root_file, "sha": delivery.content_sha256,
        },
    )
    new_tables, replaced, joins = [], [], []
    for index, prop in enumerate(sorted(staged.sum_rows)):
        staged_view(
            conn, "incoming_sum_rows", staged.sum_rows, prop,
            {KEY_INDEX: "CAST(0 AS INTEGER)", SUM_KEYED: "false", FILE_HASH_HI: HASH_HI, FILE_HASH_LO: HASH_LO},
        )
        # Values in DECIMAL(38,4): wide enough for every BIGINT and DECIMAL(18,4) value and their
        # differences; the overflow check on the stored type comes with the merge.
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE sum_new_{index} AS
            WITH s AS (
                SELECT _key, _key_index, {SUM_KEYED} AS keyed,
                       (CAST({HASH_HI} AS UHUGEINT) << 64) | CAST({HASH_LO} AS UHUGEINT) AS row_hash,
                       (CAST({FILE_HASH_HI} AS UHUGEINT) << 64) | CAST({FILE_HASH_LO} AS UHUGEINT) AS file_hash,
                       CAST(value AS DECIMAL(38,4)) AS full_value
                FROM incoming_sum_rows WHERE value IS NOT NULL
            ),
            known AS (
                SELECT CAST(row_hash AS UHUGEINT) AS row_hash, value FROM delivery_rows
                WHERE connection = $connection AND goal = $goal AND property = $prop AND keyed
            ),
            -- A keyed row this file (or the same content) already added under its per-file
            -- identity, before its key was remembered: counted with its value, recorded by key now.
            counted_by_file AS (SELECT row_hash FROM counted_rows WHERE property = $prop)
            SELECT * REPLACE (full_value - coalesce(prior, CASE WHEN legacy THEN full_value END, 0) AS value) FROM (
                SELECT s._key, s._key_index, s.row_hash, s.keyed, s.full_value, k.row_hash IS NOT NULL AS known, k.value AS prior,
                       s.keyed AND k.row_hash IS NULL AND s.file_hash IN (SELECT row_hash FROM counted_by_file) AS legacy,
                       NULL::DECIMAL(38,4) AS value
                FROM s LEFT JOIN known k ON k.row_hash = CASE WHEN s.keyed THEN s.row_hash END  -- a hash join: see _stored_id
            ) d
            WHERE (keyed AND NOT known)
               OR (keyed AND prior IS DISTINCT FROM full_value)
               OR (NOT keyed AND row_hash NOT IN (SELECT row_hash FROM counted_by_file))
            """,
            {"prop": prop, "connection": delivery.connection, "goal": delivery.goal},
        )
        # Every keyed row delivered, changed or not: a key that now resolves to another profile
        # moves what it contributed (see ``_move_keyed_sums``).
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE sum_keyed_{index} AS
            SELECT _key, _key_index, (CAST({HASH_HI} AS UHUGEINT) << 64) | CAST({HASH_LO} AS UHUGEINT) AS row_hash
            FROM incoming_sum_rows WHERE value IS NOT NULL AND {SUM_KEYED}
            """
        )
        (total,) = conn.execute("SELECT count(value) FROM incoming_sum_rows").fetchall()[0]
        drop_staged_view(conn, "incoming_sum_rows")
        new_rows, corrected = conn.execute(f"SELECT count(*) FILTER (WHERE NOT legacy), count(*) FILTER (WHERE known) FROM sum_new_{index}").fetchall()[0]
        counts.sum_rows_already_counted += total - new_rows
        counts.sum_rows_corrected += corrected
        new_tables.append((prop, f"sum_new_{index}"))
        replaced.append(prop)
        joins.append(
            f"LEFT JOIN (SELECT _key, _key_index, sum(value) AS v FROM sum_new_{index} GROUP BY ALL) d{index} "
            f"ON d{index}._key = r._key AND d{index}._key_index = r._key_index"
        )
    _drop(conn, "counted_rows")
    # Always through SQL: the delta is summed in DECIMAL(38,4), never in Polars' wrapping integers.
    present = [p for p in replaced if p in staged.records.columns]
    exclude = f" EXCLUDE ({', '.join(quote(p) for p in present)})" if present else ""
    sums = "".join(f", d{i}.v AS {quote(p)}" for i, p in enumerate(replaced))
    conn.execute(f"CREATE OR REPLACE TEMP TABLE incoming_delta AS SELECT r.*{exclude}{sums} FROM incoming_records r {' '.join(joins)}")
    return new_tables, "incoming_delta"


def _move_keyed_sums(
    conn: duckdb.DuckDBPyConnection, staged: StagedImport, sum_tables: list[tuple[str, str]], delivery: DeliveryRecord, run_id: str, now: datetime,
    record_history: bool,
) -> None:
    """A keyed row (an order) that now belongs to another profile than the one it was counted on
    (the partner corrected the order's customer) moves its remembered value: the old profile gives
    it back, the new one gets it (the merge added only the difference to the new one). Runs
    before the rows are remembered again, while ``delivery_rows`` still names the old profile."""
    table, id_column = ("profiles", "profile_id") if staged.target == "profiles" else (group_table(staged.group_type or ""), "group_id")
    entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"
    for prop, new_table in sum_tables:
        params = {"connection": delivery.connection, "goal": delivery.goal, "prop": prop}
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE moved_sums AS
            SELECT k.row_hash, k.entity_id AS old_id, a._id AS new_id, k.value AS prior
            FROM {new_table.replace("sum_new_", "sum_keyed_")} s
            JOIN (SELECT _key, _key_index, min(_id) AS _id FROM accepted_keys GROUP BY ALL) a ON a._key = s._key AND a._key_index = s._key_index
            JOIN delivery_rows k ON k.connection = $connection AND k.goal = $goal AND k.property = $prop AND k.keyed AND k.row_hash = s.row_hash
            WHERE k.entity_id IS DISTINCT FROM a._id
            """,
            params,
        )
        (moved,) = conn.execute("SELECT count(*) FROM moved_sums WHERE old_id IS NOT NULL").fetchall()[0]
        if moved:
            conn.execute(
                """
                CREATE OR REPLACE TEMP TABLE moved_totals AS
                SELECT id, sum(v) AS v FROM (
                    SELECT new_id AS id, prior AS v FROM moved_sums WHERE old_id IS NOT NULL
                    UNION ALL SELECT old_id, -prior FROM moved_sums WHERE old_id IS NOT NULL
                ) GROUP BY id
                """
            )
            if record_history:
                # Profiles created before this delivery: the value they were created with gets its
                # row before its first change (profiles created now keep theirs in their row).
                conn.execute(
                    f"""
                    CREATE OR REPLACE TEMP TABLE moved_values AS
                    SELECT t.{id_column} AS entity_id, $prop AS property, CAST(t.{quote(prop)} AS VARCHAR) AS stored_value
                    FROM {quote(table)} t SEMI JOIN moved_totals m ON m.id = t.{id_column}
                    WHERE t.created_at < $now
                    """,
                    {"prop": prop, "now": now},
                )
                _record_creation_values(conn, table, id_column, entity, "moved_values")
            conn.execute(
                f"""
                UPDATE {quote(table)} AS t SET {quote(prop)} = coalesce(t.{quote(prop)}, 0) + m.v, updated_at = $now, last_delivery_id = $delivery
                FROM moved_totals m WHERE t.{id_column} = m.id
                """,
                {"now": now, "delivery": delivery.delivery_id},
            )
            if prop not in _known_writers(conn, entity, delivery):
                _add_writers(conn, entity, [prop], delivery, now)
            if record_history:
                # One history row per value, as for the merge: the merge's row for these ids is replaced.
                conn.execute(
                    "DELETE FROM property_changes WHERE delivery_id = $delivery AND property = $prop AND entity = $entity AND changed_at = $now "
                    "AND entity_id IN (SELECT id FROM moved_totals)",
                    {"delivery": delivery.delivery_id, "prop": prop, "entity": entity, "now": now},
                )
                (pending,) = conn.execute("SELECT count(*) FROM moved_values").fetchall()[0]
                if pending:  # never an empty INSERT ... SELECT (see _record_property_changes)
                    conn.execute(
                        f"""
                        INSERT INTO property_changes
                        SELECT $entity, t.{id_column}, $prop, CAST(t.{quote(prop)} AS VARCHAR), $now, $connection, $goal, $delivery, $run
                        FROM {quote(table)} t SEMI JOIN moved_values m ON m.entity_id = t.{id_column}
                        """,
                        {**params, "entity": entity, "now": now, "delivery": delivery.delivery_id, "run": run_id},
                    )
        # The key's profile, also for keys whose value did not change (those are not written again).
        (pending,) = conn.execute("SELECT count(*) FROM moved_sums").fetchall()[0]
        if pending:
            conn.execute(
                """
                UPDATE delivery_rows AS k SET entity_id = m.new_id FROM moved_sums m
                WHERE k.connection = $connection AND k.goal = $goal AND k.property = $prop AND k.keyed AND k.row_hash = m.row_hash
                """,
                params,
            )
        _drop(conn, "moved_sums", "moved_totals", "moved_values", new_table.replace("sum_new_", "sum_keyed_"))


def _record_counted_rows(
    conn: duckdb.DuckDBPyConnection, sum_tables: list[tuple[str, str]], every_key_accepted: bool, delivery: DeliveryRecord, counts: MergeCounts
) -> None:
    """The new sum rows of keys that reached the store are remembered now; rows of ignored or
    consent-skipped keys are not, so they still count once their profile is imported. A keyed
    row's remembered value is replaced by the value it contributes now."""
    accepted = "JOIN (SELECT _key, _key_index, min(_id) AS _id FROM accepted_keys GROUP BY ALL) a ON a._key = s._key AND a._key_index = s._key_index"
    for prop, table in sum_tables:
        # Never an empty INSERT ... SELECT before a large one into the same table within a
        # transaction: DuckDB 2.0 then loses the large one (see store/segments.py). Both counts in
        # one join (not a temp table of the joined rows: that held every sum row once more).
        pending, known = conn.execute(f"SELECT count(*), count(*) FILTER (WHERE s.known) FROM {table} s {accepted}").fetchall()[0]
        if not pending:
            _drop(conn, table)
            continue
        params = {"connection": delivery.connection, "goal": delivery.goal, "root_file": delivery.root_file, "prop": prop, "delivery": delivery.delivery_id}
        if known:
            conn.execute(
                f"""
                DELETE FROM delivery_rows
                WHERE connection = $connection AND goal = $goal AND property = $prop AND keyed
                  AND CAST(row_hash AS UHUGEINT) IN (SELECT s.row_hash FROM {table} s {accepted} WHERE s.known)
                """,
                {k: v for k, v in params.items() if k in ("connection", "goal", "prop")},
            )
        (inserted,) = conn.execute(
            f"""
            INSERT INTO delivery_rows (connection, goal, root_file, property, row_hash, delivery_id, value, keyed, entity_id)
            SELECT $connection, $goal, $root_file, $prop, s.row_hash, $delivery, s.full_value, s.keyed, CASE WHEN s.keyed THEN a._id END
            FROM {table} s {accepted}
            """,
            params,
        ).fetchall()[0]
        _drop(conn, table)
        counts.sum_rows_counted += inserted
