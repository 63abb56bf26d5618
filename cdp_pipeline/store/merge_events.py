"""Timeline events and their nested rows (merge or replace, positions), and the product store
moved by exactly what changed."""

from __future__ import annotations

from datetime import datetime

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.incoming import staged_view
from cdp_pipeline.store.merge_common import DeliveryRecord, MergeCounts, _drop
from cdp_pipeline.store.schema import SQL_TYPES, event_table, item_table, literal, quote
from cdp_pipeline.tables.staged import KEY_INDEX, NOT_IMPORTED, StagedImport


def _merge_events(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, staged: StagedImport, delivery: DeliveryRecord, now: datetime, counts: MergeCounts
) -> None:
    """Events merge by id: a new id is created, a known id gets the delivered fields (the others
    keep theirs), an identical re-delivery is left as it was. Nested rows merge by their key within
    the event: new keys are added after the event's stored rows, known keys updated, stored rows
    the file does not carry are kept (a partner often sends only an order's new lines), unless
    the goal says ``nested: replace``."""
    for event_type in staged.events:
        definition = catalog.event_types[event_type]
        table = event_table(event_type)
        columns = staged_view(conn, "incoming_events", staged.events, event_type, {KEY_INDEX: "CAST(0 AS INTEGER)", NOT_IMPORTED: "[]::VARCHAR[]"})
        props = list(definition.properties)
        present = [p for p in props if p in columns]
        casts = ", ".join(f"CAST(e.{quote(p)} AS {SQL_TYPES[definition.properties[p].type]}) AS {quote(p)}" for p in present)
        not_imported = f"e.{NOT_IMPORTED}"
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE event_rows AS
            SELECT e.event_id, a._id AS profile_id, CAST(e.event_time AS TIMESTAMP) AS event_time{', ' + casts if casts else ''},
                   coalesce({not_imported}, []::VARCHAR[]) AS {NOT_IMPORTED}
            FROM incoming_events e LEFT JOIN accepted_keys a ON a._key = e._key AND a._key_index = e._key_index
            """
        )
        (ignored,) = conn.execute("SELECT count(*) FROM event_rows WHERE profile_id IS NULL").fetchall()[0]
        conn.execute("DELETE FROM event_rows WHERE profile_id IS NULL")
        fields = ["profile_id", "event_time", *(quote(p) for p in present)]
        # A delivered value that did not parse is not imported: the stored one stays.
        incoming_value = {f: f"e.{f}" for f in fields} | {
            quote(p): f"CASE WHEN list_contains(e.{NOT_IMPORTED}, {literal(p)}) THEN t.{quote(p)} ELSE e.{quote(p)} END" for p in present
        }
        differs = " OR ".join(f"t.{f} IS DISTINCT FROM {incoming_value[f]}" for f in fields)
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE event_state AS
            SELECT e.event_id, t.event_id IS NULL AS is_new, coalesce({differs}, TRUE) AS is_changed
            FROM event_rows e LEFT JOIN {quote(table)} t USING (event_id)
            """
        )
        created, updated, unchanged = conn.execute(
            "SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE is_changed AND NOT is_new), count(*) FILTER (WHERE NOT is_changed) FROM event_state"
        ).fetchall()[0]
        if updated:
            assignments = ", ".join(f"{f} = {incoming_value[f]}" for f in fields)
            conn.execute(
                f"""
                UPDATE {quote(table)} AS t SET {assignments}, delivery_id = $delivery, imported_at = $now
                FROM event_rows e WHERE t.event_id = e.event_id
                  AND e.event_id IN (SELECT event_id FROM event_state WHERE is_changed AND NOT is_new)
                """,
                {"delivery": delivery.delivery_id, "now": now},
            )
        if created:
            cols = ", ".join(["event_id", *fields, "delivery_id", "imported_at"])
            vals = ", ".join(["e.event_id", *(f"e.{f}" for f in fields), "$delivery", "$now"])
            conn.execute(
                f"INSERT INTO {quote(table)} ({cols}) SELECT {vals} FROM event_rows e "
                "SEMI JOIN (SELECT event_id FROM event_state WHERE is_new) n USING (event_id)",
                {"delivery": delivery.delivery_id, "now": now},
            )
        _drop(conn, "event_state")
        counts.events_created += created
        counts.events_updated += updated
        counts.events_unchanged += unchanged
        counts.events_ignored += ignored

        for nested_type, nested in definition.nested.items():
            _merge_nested(conn, staged, event_type, nested_type, list(nested.properties), {p: SQL_TYPES[d.type] for p, d in nested.properties.items()})
        _drop(conn, "event_rows")


def _merge_nested(
    conn: duckdb.DuckDBPyConnection, staged: StagedImport, event_type: str, nested_type: str, nested_props: list[str], sql_types: dict[str, str]
) -> None:
    """One nested type of the events in ``event_rows``: merge (default) or replace, and the product
    store moved by exactly what changed."""
    key = f"{event_type}/{nested_type}"
    items_table = quote(item_table(event_type, nested_type))
    sources = [s for s in staged.product_store if s.event_type == event_type and s.nested_type == nested_type]
    delivered = key in staged.items
    if not delivered and not staged.replace_nested:
        return  # no rows of this type delivered: the stored ones stay
    item_props: list[str] = []
    if delivered:
        columns = staged_view(
            conn, "incoming_items", staged.items, key, {"item_key": "CAST(item_index AS VARCHAR)", NOT_IMPORTED: "[]::VARCHAR[]"}
        )
        item_props = [p for p in nested_props if p in columns]
        casts = "".join(f", CAST(i.{quote(p)} AS {sql_types[p]}) AS {quote(p)}" for p in item_props)
        # A view, not a copy: the delivered rows are read where they are (the staged Parquet file),
        # which kept a second copy of every nested row in memory at the run's peak (the orders merge).
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP VIEW item_rows AS
            SELECT i.event_id, i.item_index, i.item_key{casts}, coalesce(i.{NOT_IMPORTED}, []::VARCHAR[]) AS {NOT_IMPORTED}
            FROM incoming_items i SEMI JOIN event_rows e USING (event_id)
            """
        )
    else:
        conn.execute(
            f"CREATE OR REPLACE TEMP VIEW item_rows AS SELECT event_id, item_index, item_key, []::VARCHAR[] AS {NOT_IMPORTED} FROM {items_table} LIMIT 0"
        )
    # The stored rows this delivery overwrites or removes: under replace every row of the delivered
    # events; under merge the rows whose key comes again, and rows stored before items had keys
    # (they cannot be matched, so a delivered event's key-less rows are replaced once).
    if staged.replace_nested:
        outgoing = f"SELECT i.* FROM {items_table} i SEMI JOIN event_rows e USING (event_id)"
    else:
        outgoing = (
            f"SELECT i.* FROM {items_table} i SEMI JOIN item_rows r ON r.event_id = i.event_id AND r.item_key = i.item_key "
            f"UNION ALL SELECT i.* FROM {items_table} i SEMI JOIN event_rows e USING (event_id) WHERE i.item_key IS NULL"
        )
    conn.execute(f"CREATE OR REPLACE TEMP TABLE outgoing_items AS {outgoing}")
    for index, source in enumerate(sources):
        quantity = f"sum(CAST(i.{quote(source.quantity_property)} AS DECIMAL(18,4)))" if source.quantity_property else "NULL"
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE replaced_products_{index} AS
            SELECT CAST(i.{quote(source.product_id_property)} AS VARCHAR) AS product_id, count(*) AS n, {quantity} AS q
            FROM outgoing_items i WHERE i.{quote(source.product_id_property)} IS NOT NULL GROUP BY 1
            """
        )
    # Positions: under replace the file's order; under merge a known key keeps its place and new
    # keys follow the event's stored rows in file order.
    # A delivered value that did not parse is not imported: a known row keeps its stored value.
    kept = "".join(
        f", CASE WHEN list_contains(r.{NOT_IMPORTED}, {literal(p)}) AND o.event_id IS NOT NULL THEN o.{quote(p)} ELSE r.{quote(p)} END AS {quote(p)}"
        for p in item_props
    )
    if staged.replace_nested:
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE written_items AS
            SELECT r.* REPLACE (r.item_index AS item_index{kept})
            FROM item_rows r LEFT JOIN outgoing_items o ON o.event_id = r.event_id AND o.item_key = r.item_key
            """
        )
    else:
        # Only events that already have stored rows need the window: an event new to the store
        # has no known keys, so its rows keep the staged position (1..n in file order per event,
        # as staging numbers them and as ``replace`` stores them). The window over every
        # delivered row was the merge's largest spill under store.memory_limit.
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE stored_tops AS
            SELECT event_id, max(item_index) AS top FROM {items_table} SEMI JOIN event_rows USING (event_id) GROUP BY 1
            """
        )
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE written_items AS
            SELECT r.* FROM item_rows r ANTI JOIN stored_tops m USING (event_id)
            UNION ALL
            SELECT r.* REPLACE (coalesce(o.item_index, coalesce(m.top, 0) + row_number() OVER (
                       PARTITION BY r.event_id, o.item_index IS NULL ORDER BY r.item_index)) AS item_index{kept})
            FROM item_rows r
            JOIN stored_tops m ON m.event_id = r.event_id
            LEFT JOIN outgoing_items o ON o.event_id = r.event_id AND o.item_key = r.item_key
            """
        )
        _drop(conn, "stored_tops")
    conn.execute(
        f"DELETE FROM {items_table} WHERE (event_id, item_index) IN (SELECT (event_id, item_index) FROM outgoing_items)"
    )
    _drop(conn, "outgoing_items")
    (pending,) = conn.execute("SELECT count(*) FROM written_items").fetchall()[0]
    if pending:
        cols = "".join(", " + quote(p) for p in item_props)
        conn.execute(f"INSERT INTO {items_table} (event_id, item_index, item_key{cols}) SELECT event_id, item_index, item_key{cols} FROM written_items")
    for index, source in enumerate(sources):
        quantity = f"sum(CAST(i.{quote(source.quantity_property)} AS DECIMAL(18,4)))" if source.quantity_property else "NULL"
        conn.execute(
            f"""
            MERGE INTO product_store t
            USING (
                SELECT coalesce(b.product_id, r.product_id) AS product_id,
                       coalesce(b.n, 0) - coalesce(r.n, 0) AS dn,
                       CASE WHEN b.q IS NULL AND r.q IS NULL THEN NULL ELSE coalesce(b.q, 0) - coalesce(r.q, 0) END AS dq,
                       b.first_at, b.last_at
                FROM (
                    SELECT CAST(i.{quote(source.product_id_property)} AS VARCHAR) AS product_id, count(*) AS n,
                           {quantity} AS q, min(e.event_time) AS first_at, max(e.event_time) AS last_at
                    FROM written_items i JOIN event_rows e USING (event_id)
                    WHERE i.{quote(source.product_id_property)} IS NOT NULL GROUP BY 1
                ) b FULL OUTER JOIN replaced_products_{index} r USING (product_id)
            ) s ON t.product_id = s.product_id
            WHEN MATCHED THEN UPDATE SET times_bought = t.times_bought + s.dn,
                quantity_bought = CASE WHEN s.dq IS NULL THEN t.quantity_bought ELSE coalesce(t.quantity_bought, 0) + s.dq END,
                first_bought_at = least(t.first_bought_at, s.first_at),
                last_bought_at = greatest(t.last_bought_at, s.last_at)
            WHEN NOT MATCHED AND s.dn > 0 THEN INSERT VALUES (s.product_id, s.dn, s.dq, s.first_at, s.last_at)
            """
        )
        _drop(conn, f"replaced_products_{index}")
    _drop(conn, "written_items")
