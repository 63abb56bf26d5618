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
so the rows behind a sum are remembered: ``delivery_rows`` keeps, per root file and sum property,
the identity of every row already added (see ``cdp_pipeline.tables.import_tables``). A changed
file at the same path, the same content under another name, or a reprocess adds only rows whose
identity is not there yet; the set rules and add apply again as usual. The identities are written
in the same transaction as the values they vouch for.

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
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition, consent_property_problem
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.schema import SQL_TYPES, event_table, group_table, item_table, literal, quote
from cdp_pipeline.tables.staged import KEY_INDEX, ROWS, StagedImport


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
    #: sum source rows added now, and rows left out because their identity was already counted.
    sum_rows_counted: int = 0
    sum_rows_already_counted: int = 0
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


def _ident(index: int) -> str:
    return f"_ident_{index}"


def _normalised_records(staged: StagedImport) -> pl.DataFrame:
    """The records with every internal column the merge reads, also for frames staged by older
    code or built by hand (one identifier: ``_key`` is its value)."""
    records = staged.records
    if KEY_INDEX not in records.columns:
        records = records.with_columns(pl.lit(0, dtype=pl.Int32).alias(KEY_INDEX))
    if ROWS not in records.columns:
        records = records.with_columns(pl.lit(1, dtype=pl.Int64).alias(ROWS))
    for index in range(len(staged.identifier_properties)):
        if _ident(index) not in records.columns:
            records = records.with_columns(pl.when(pl.col(KEY_INDEX) == index).then(pl.col("_key")).alias(_ident(index)))
    return records


def _apply_sum_delta(
    conn: duckdb.DuckDBPyConnection,
    staged: StagedImport,
    properties: dict[str, PropertyDefinition],
    delivery: DeliveryRecord,
    counts: MergeCounts,
) -> tuple[list[tuple[str, str]], str]:
    """Replace each sum column of the records by the sum of the rows NOT counted before for this
    root file (or for earlier deliveries of the same content), see ``delivery_rows``. Returns the
    temp tables holding each property's new rows (``sum_new_<n>``), recorded once the keys resolve,
    and the name of the relation holding the records to merge.

    Set-based: one anti join per sum property against the file's counted identities."""
    scope = """
        SELECT property, row_hash FROM delivery_rows
        WHERE connection = $connection AND goal = $goal AND property IN (SELECT unnest($properties))
          AND (root_file = $root_file OR delivery_id IN (
               SELECT delivery_id FROM deliveries WHERE connection = $connection AND goal = $goal AND content_sha256 = $sha))
    """
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE counted_rows AS {scope}",
        {"connection": delivery.connection, "goal": delivery.goal, "properties": sorted(staged.sum_rows), "root_file": delivery.root_file, "sha": delivery.content_sha256},
    )
    (counted_before,) = conn.execute("SELECT count(*) FROM counted_rows").fetchall()[0]
    new_tables, replaced, joins = [], [], []
    for index, (prop, frame) in enumerate(sorted(staged.sum_rows.items())):
        sql_type = SQL_TYPES[properties[prop].type]
        conn.register("incoming_sum_rows", frame if KEY_INDEX in frame.columns else frame.with_columns(pl.lit(0, dtype=pl.Int32).alias(KEY_INDEX)))
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE sum_new_{index} AS
            SELECT s._key, s._key_index, s.row_hash, s.value FROM (
                SELECT _key, _key_index, (CAST(_row_hash_hi AS UHUGEINT) << 64) | CAST(_row_hash_lo AS UHUGEINT) AS row_hash,
                       CAST(value AS {sql_type}) AS value
                FROM incoming_sum_rows WHERE value IS NOT NULL
            ) s ANTI JOIN (SELECT row_hash FROM counted_rows WHERE property = $prop) c ON c.row_hash = s.row_hash
            """,
            {"prop": prop},
        )
        conn.unregister("incoming_sum_rows")
        (new_rows,) = conn.execute(f"SELECT count(*) FROM sum_new_{index}").fetchall()[0]
        total = frame.filter(pl.col("value").is_not_null()).height
        counts.sum_rows_already_counted += total - new_rows
        new_tables.append((prop, f"sum_new_{index}"))
        replaced.append(prop)
        joins.append(
            f"LEFT JOIN (SELECT _key, _key_index, sum(value) AS v FROM sum_new_{index} GROUP BY ALL) d{index} "
            f"ON d{index}._key = r._key AND d{index}._key_index = r._key_index"
        )
    present = [p for p in replaced if p in staged.records.columns]
    if not counted_before and len(present) == len(replaced):
        # Nothing of this file was counted before (the usual first import): every row is new, so
        # the sums aggregated in Polars are the delta already; copying the records is not needed.
        return new_tables, "incoming_records"
    exclude = f" EXCLUDE ({', '.join(quote(p) for p in present)})" if present else ""
    sums = "".join(f", d{i}.v AS {quote(p)}" for i, p in enumerate(replaced))
    conn.execute(f"CREATE OR REPLACE TEMP TABLE incoming_delta AS SELECT r.*{exclude}{sums} FROM incoming_records r {' '.join(joins)}")
    return new_tables, "incoming_delta"


def _regroup_sql(rules: dict[str, str], identifier_count: int, source: str) -> str:
    """One row per resolved ``_id`` when records of several keys found the same profile (through
    different identifiers): the same rules as in Polars, rows in line order (set rules: the last
    record; add: the union in order; sum: the total)."""
    inner = [
        "_id", "bool_and(_is_new) AS _is_new", "max(_line) AS _line", "arg_max(_key, _line) AS _key",
        "arg_max(_key_index, _line) AS _key_index", "sum(_rows) AS _rows",
    ]
    for index in range(identifier_count):
        column = quote(_ident(index))
        inner.append(f"first({column} ORDER BY _line DESC) FILTER (WHERE {column} IS NOT NULL) AS {column}")
    outer = ["_id", "_is_new", "_line", "_key", "_key_index", "_rows", *(quote(_ident(i)) for i in range(identifier_count))]
    for prop, rule in rules.items():
        column = quote(prop)
        if rule == "add":
            inner.append(f"flatten(list({column} ORDER BY _line) FILTER (WHERE {column} IS NOT NULL)) AS {column}")
            outer.append(f"list_filter({column}, lambda x, i: list_position({column}, x) = i) AS {column}")
        elif rule == "sum":
            inner.append(f"sum({column}) AS {column}")
            outer.append(column)
        else:
            inner.append(f"first({column} ORDER BY _line DESC) AS {column}")
            outer.append(column)
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {source} WHERE _id IS NOT NULL GROUP BY _id)"


def _merge_records(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    staged: StagedImport,
    delivery: DeliveryRecord,
    run_id: str,
    now: datetime,
    counts: MergeCounts,
    *,
    objectives: Sequence[str],
    consent_property: str,
    record_history: bool = True,
) -> tuple[list[tuple[str, str]], bool]:
    """Resolve, combine and write the records; returns the new sum rows' tables and whether every
    key reached the store (none ignored or consent-skipped)."""
    properties = _properties_for(staged, catalog)
    rules = dict(staged.rules)
    records = _normalised_records(staged)
    identifiers = staged.identifier_properties
    #: property → SQL of its incoming value in ``r`` (a mapped column, or a carried identifier).
    incoming = {p: f"r.{quote(p)}" for p in rules}
    if staged.target == "profiles":
        table, id_column = "profiles", "profile_id"
        for index, ident in enumerate(identifiers):
            if ident != "profile_id" and ident not in rules:
                # A profile must carry every identifier value it was found or created with, or it
                # could never be matched through that identifier again (set_if_empty: never
                # overwrites the value a profile already has).
                rules[ident] = "set_if_empty"
                incoming[ident] = f"r.{quote(_ident(index))}"
    else:
        assert staged.group_type is not None
        table, id_column = group_table(staged.group_type), "group_id"
    conn.register("incoming_records", records)
    sum_tables: list[tuple[str, str]] = []
    incoming_source = "incoming_records"
    if staged.sum_rows:
        sum_tables, incoming_source = _apply_sum_delta(conn, staged, properties, delivery, counts)

    matches, joins, new_ids = [], [], []
    for index, ident in enumerate(identifiers):
        if ident == id_column:
            match_sql = f"SELECT {id_column} AS _match, {id_column} AS _id FROM {quote(table)}"
            new_ids.append(f"WHEN {index} THEN i._key")
        else:
            if staged.match_all:
                match_sql = f"SELECT {quote(ident)} AS _match, {id_column} AS _id FROM {quote(table)} WHERE {quote(ident)} IS NOT NULL"
            else:
                match_sql = f"SELECT {quote(ident)} AS _match, min({id_column}) AS _id FROM {quote(table)} WHERE {quote(ident)} IS NOT NULL GROUP BY 1"
            # Deterministic ids: importing the same file into an empty store twice yields the same ids.
            new_ids.append(f"WHEN {index} THEN md5({literal(ident)} || ':' || i._key)")
        joins.append(f"LEFT JOIN ({match_sql}) m{index} ON m{index}._match = i.{quote(_ident(index))}")
        matches.append(f"m{index}._id")
    # Declared order: the first identifier that finds an existing profile wins.
    found = f"coalesce({', '.join(matches)})"
    allow = "TRUE" if staged.allow_create else "FALSE"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE resolved AS
        SELECT CASE WHEN {found} IS NOT NULL THEN {found} WHEN {allow} THEN CASE i._key_index {' '.join(new_ids)} END END AS _id,
               {found} IS NULL AS _is_new, i.*
        FROM {incoming_source} i {' '.join(joins)}
        """
    )
    (doubled,) = conn.execute("SELECT count(_id) - count(DISTINCT _id) FROM resolved").fetchall()[0]
    source = "resolved"
    if doubled:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE resolved_by_id AS {_regroup_sql({p: staged.rules[p] for p in staged.rules}, len(identifiers), 'resolved')}")
        source = "resolved_by_id"

    def new_value(prop: str) -> str:
        return rule_sql(rules[prop], f"t.{quote(prop)}", incoming[prop], properties[prop])

    consent = "TRUE"
    if objectives and staged.target == "profiles":
        if problem := consent_property_problem(properties, consent_property):  # a configuration built without load_project
            raise ConfigError(problem)
        # The consent a row is judged by: what the profile would hold after this delivery (the
        # incoming value under its merge rule), else the stored value; nothing means no consent.
        value = new_value(consent_property) if consent_property in rules else f"t.{quote(consent_property)}"
        wanted = "[" + ", ".join(literal(o) for o in objectives) + "]"
        consent = f"list_has_any(coalesce({value}, []::VARCHAR[]), {wanted})"
    new_values = [f"{new_value(p)} AS {quote(p)}" for p in rules]
    changed = " OR ".join(f"({new_value(p)}) IS DISTINCT FROM t.{quote(p)}" for p in rules) or "FALSE"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE merged AS
        SELECT r._id, r._is_new, r._line, r._key, r._rows, {', '.join(new_values) + ',' if new_values else ''}
               ({changed}) AS _changed, ({consent}) AS _consented
        FROM {source} r LEFT JOIN {quote(table)} t ON t.{id_column} = r._id AND NOT r._is_new
        WHERE r._id IS NOT NULL
        """
    )
    profile_extra = staged.target == "profiles"
    params = {"now": now, "delivery": delivery.delivery_id, **({"run": run_id} if profile_extra else {})}
    if rules and record_history:
        _record_property_changes(conn, staged, table, id_column, list(rules), properties, delivery, run_id, now)
    if rules:
        assignments = ", ".join(f"{quote(p)} = m.{quote(p)}" for p in rules)
        conn.execute(
            f"""
            UPDATE {quote(table)} SET {assignments}, updated_at = $now, last_delivery_id = $delivery
            {", last_run_id = $run" if profile_extra else ""}
            FROM merged m WHERE {quote(table)}.{id_column} = m._id AND m._changed AND NOT m._is_new AND m._consented
            """,
            params,
        )
    columns = ", ".join(quote(p) for p in rules)
    values = ", ".join(f"m.{quote(p)}" for p in rules)
    extra_cols = ", last_run_id" if profile_extra else ""
    extra_vals = ", $run" if profile_extra else ""
    conn.execute(
        f"""
        INSERT INTO {quote(table)} ({id_column}, created_at, updated_at, last_delivery_id{extra_cols}{', ' + columns if columns else ''})
        SELECT m._id, $now, $now, $delivery{extra_vals}{', ' + values if values else ''} FROM merged m WHERE m._is_new AND m._consented
        """,
        params,
    )
    # Keys whose rows reach the store: events and sum identities follow them.
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE accepted_keys AS
        SELECT r._key, r._key_index, r._id FROM resolved r WHERE r._id IN (SELECT _id FROM merged WHERE _consented)
        """
    )
    created, updated, unchanged, skipped = conn.execute(
        "SELECT count(*) FILTER (WHERE _is_new AND _consented), count(*) FILTER (WHERE _changed AND NOT _is_new AND _consented), "
        "count(*) FILTER (WHERE NOT _changed AND NOT _is_new AND _consented), coalesce(sum(_rows) FILTER (WHERE NOT _consented), 0) FROM merged"
    ).fetchall()[0]
    (ignored,) = conn.execute("SELECT coalesce(sum(_rows), 0) FROM resolved WHERE _id IS NULL").fetchall()[0]
    if staged.target == "profiles":
        counts.profiles_created, counts.profiles_updated = created, updated
        counts.profiles_unchanged, counts.profiles_ignored, counts.consent_skipped = unchanged, int(ignored), int(skipped)
        counts.last_profiles = [
            row[0]
            for row in conn.execute(
                "SELECT _id FROM merged WHERE (_is_new OR _changed) AND _consented ORDER BY _line DESC, _id LIMIT 5"
            ).fetchall()
        ]
        conn.execute(
            """
            MERGE INTO exchanged_profiles t
            USING (SELECT DISTINCT _id AS profile_id FROM merged WHERE _consented) s
            ON t.connection = $connection AND t.direction = 'imported' AND t.profile_id = s.profile_id
            WHEN MATCHED THEN UPDATE SET last_at = $now
            WHEN NOT MATCHED THEN INSERT VALUES ($connection, 'imported', s.profile_id, $now, $now)
            """,
            {"connection": delivery.connection, "now": now},
        )
    else:
        counts.groups_created, counts.groups_updated = created, updated
    return sum_tables, not (ignored or skipped)


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
    """One history row per property value this delivery sets or changes, written before the
    UPDATE (it compares with the stored value) and in the same transaction: history and profiles
    can never disagree (issue G: provenance and values as of a past date)."""
    entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"

    def as_text(expression: str, prop: str) -> str:
        return f"CAST(to_json({expression}) AS VARCHAR)" if properties[prop].type == "list" else f"CAST({expression} AS VARCHAR)"

    selects = [
        f"""
        SELECT m._id, {literal(prop)}, {as_text(f"m.{quote(prop)}", prop)}
        FROM merged m LEFT JOIN {quote(table)} t ON t.{id_column} = m._id AND NOT m._is_new
        WHERE m._consented AND CASE WHEN m._is_new THEN m.{quote(prop)} IS NOT NULL ELSE m.{quote(prop)} IS DISTINCT FROM t.{quote(prop)} END
        """
        for prop in props
    ]
    conn.execute(
        f"""
        INSERT INTO property_changes
        SELECT {literal(entity)}, c.*, $now, $connection, $goal, $delivery, $run FROM ({' UNION ALL '.join(selects)}) c
        """,
        {"now": now, "connection": delivery.connection, "goal": delivery.goal, "delivery": delivery.delivery_id, "run": run_id},
    )


def _record_counted_rows(
    conn: duckdb.DuckDBPyConnection, sum_tables: list[tuple[str, str]], every_key_accepted: bool, delivery: DeliveryRecord, counts: MergeCounts
) -> None:
    """The new sum rows of keys that reached the store are counted now; rows of ignored or
    consent-skipped keys are not, so they still count once their profile is imported."""
    accepted = "" if every_key_accepted else "SEMI JOIN accepted_keys a ON a._key = s._key AND a._key_index = s._key_index"
    for prop, table in sum_tables:
        # Never an empty INSERT ... SELECT before a large one into the same table within a
        # transaction: DuckDB 2.0 then loses the large one (see store/segments.py).
        (pending,) = conn.execute(f"SELECT count(*) FROM {table} s {accepted}").fetchall()[0]
        if not pending:
            continue
        (inserted,) = conn.execute(
            f"""
            INSERT INTO delivery_rows (connection, goal, root_file, property, row_hash, delivery_id)
            SELECT $connection, $goal, $root_file, $prop, s.row_hash, $delivery FROM {table} s {accepted}
            """,
            {"connection": delivery.connection, "goal": delivery.goal, "root_file": delivery.root_file, "prop": prop, "delivery": delivery.delivery_id},
        ).fetchall()[0]
        counts.sum_rows_counted += inserted


def _merge_events(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, staged: StagedImport, delivery: DeliveryRecord, now: datetime, counts: MergeCounts
) -> None:
    for event_type, frame in staged.events.items():
        definition = catalog.event_types[event_type]
        table = event_table(event_type)
        if KEY_INDEX not in frame.columns:
            frame = frame.with_columns(pl.lit(0, dtype=pl.Int32).alias(KEY_INDEX))
        conn.register("incoming_events", frame)
        props = list(definition.properties)
        present = [p for p in props if p in frame.columns]
        casts = ", ".join(f"CAST(e.{quote(p)} AS {SQL_TYPES[definition.properties[p].type]}) AS {quote(p)}" for p in present)
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE event_rows AS
            SELECT e.event_id, a._id AS profile_id, CAST(e.event_time AS TIMESTAMP) AS event_time{', ' + casts if casts else ''}
            FROM incoming_events e LEFT JOIN accepted_keys a ON a._key = e._key AND a._key_index = e._key_index
            """
        )
        (ignored,) = conn.execute("SELECT count(*) FROM event_rows WHERE profile_id IS NULL").fetchall()[0]
        conn.execute("DELETE FROM event_rows WHERE profile_id IS NULL")
        (replaced,) = conn.execute(f"SELECT count(*) FROM {quote(table)} WHERE event_id IN (SELECT event_id FROM event_rows)").fetchall()[0]
        (total,) = conn.execute("SELECT count(*) FROM event_rows").fetchall()[0]
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
            sources = [s for s in staged.product_store if s.event_type == event_type and s.nested_type == nested_type]
            for source in sources:
                # What the replaced events' items once added to the product store is taken back
                # below, so importing an order again (or reprocessing a delivery) never counts
                # its products twice.
                quantity = f"sum(CAST(i.{quote(source.quantity_property)} AS DECIMAL(18,4)))" if source.quantity_property else "NULL"
                conn.execute(
                    f"""
                    CREATE OR REPLACE TEMP TABLE replaced_products AS
                    SELECT CAST(i.{quote(source.product_id_property)} AS VARCHAR) AS product_id, count(*) AS n, {quantity} AS q
                    FROM {quote(items_table)} i
                    WHERE i.event_id IN (SELECT event_id FROM event_rows) AND i.{quote(source.product_id_property)} IS NOT NULL
                    GROUP BY 1
                    """
                )
            # Replacing an event replaces its items too, so a re-imported order never keeps stale lines.
            conn.execute(f"DELETE FROM {quote(items_table)} WHERE event_id IN (SELECT event_id FROM event_rows)")
            if key in staged.items:
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
            for source in sources:
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
                            FROM {quote(items_table)} i JOIN event_rows e USING (event_id)
                            WHERE i.{quote(source.product_id_property)} IS NOT NULL GROUP BY 1
                        ) b FULL OUTER JOIN replaced_products r USING (product_id)
                    ) s ON t.product_id = s.product_id
                    WHEN MATCHED THEN UPDATE SET times_bought = t.times_bought + s.dn,
                        quantity_bought = CASE WHEN s.dq IS NULL THEN t.quantity_bought ELSE coalesce(t.quantity_bought, 0) + s.dq END,
                        first_bought_at = least(t.first_bought_at, s.first_at),
                        last_bought_at = greatest(t.last_bought_at, s.last_at)
                    WHEN NOT MATCHED AND s.dn > 0 THEN INSERT VALUES (s.product_id, s.dn, s.dq, s.first_at, s.last_at)
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
    ).fetchall()
    return row[0][0] if row else None


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
    counts = MergeCounts(rows_read=staged.rows_read, rows_rejected=len({(p.file, p.line) for p in staged.rejects if p.line}))
    conn.execute("BEGIN TRANSACTION")
    try:
        # Dialect hooks (SARE's group clears, consent withdrawals ...) share the transaction, so a
        # delivery and its side effects commit or vanish together.
        if before is not None:
            before(conn, staged)
        sum_tables, every_key_accepted = _merge_records(
            conn, catalog, staged, delivery, run_id, now, counts,
            objectives=objectives, consent_property=consent_property, record_history=record_history,
        )
        _record_counted_rows(conn, sum_tables, every_key_accepted, delivery, counts)
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
        if after is not None:
            after(conn, staged)
        conn.execute(
            """
            INSERT INTO deliveries VALUES ($delivery_id, $connection, $goal, $partition_key, $root_file, $files, $sha, $cfg,
                $status, $rows_read, $rows_rejected, $pc, $pu, $pn, $pi, $cs, $gc, $gu, $ec, $eu, $run, $now)
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
                "run": run_id,
                "now": now,
            },
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        for view in ("incoming_records", "incoming_events", "incoming_items", "incoming_rejects", "incoming_sum_rows"):
            try:
                conn.unregister(view)
            except Exception:  # noqa: BLE001 - a view that was never registered
                pass
    return counts
