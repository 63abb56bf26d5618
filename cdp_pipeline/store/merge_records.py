"""Records to profiles (or groups): resolved through the identifiers, combined under the merge
rules with the stored values, created or updated, with their history and writers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, Catalog, PropertyDefinition, consent_property_problem
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.merge_common import DeliveryRecord, MergeCounts, _drop, _ident, _properties_for, _stored_id
from cdp_pipeline.store.merge_history import _record_property_changes, _record_property_writers
from cdp_pipeline.store.merge_rules import _check_sum_range, _regroup_sql, rule_sql
from cdp_pipeline.store.merge_sums import _apply_sum_delta
from cdp_pipeline.store.schema import group_table, is_lake, literal, quote
from cdp_pipeline.tables.staged import KEY_INDEX, ROWS, StagedImport


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
        if staged.group_type is None:
            raise ValueError("a group import without a group type")
        table, id_column = group_table(staged.group_type), "group_id"
    conn.register("incoming_records", records)
    sum_tables: list[tuple[str, str]] = []
    incoming_source = "incoming_records"
    if staged.sum_rows:
        sum_tables, incoming_source = _apply_sum_delta(conn, staged, properties, delivery, counts)

    matches, joins, new_ids = [], [], []
    # Domain groups: a profile is found only in the goal's own group, and a new one is created
    # there, so the same identifier in two groups is two profiles that never touch each other.
    in_group = f"domain_group = {literal(staged.domain_group)}" if staged.target == "profiles" else "TRUE"
    # The default group keeps the ids profiles had before domain groups existed.
    id_scope = "" if staged.target != "profiles" or staged.domain_group == DEFAULT_DOMAIN_GROUP else f"{staged.domain_group}:"
    for index, ident in enumerate(identifiers):
        if ident == id_column:
            match_sql = f"SELECT {id_column} AS _match, {id_column} AS _id FROM {quote(table)} WHERE {in_group}"
            new_ids.append(f"WHEN {index} THEN i._key")
        else:
            if staged.match_all:
                match_sql = f"SELECT {quote(ident)} AS _match, {id_column} AS _id FROM {quote(table)} WHERE {quote(ident)} IS NOT NULL AND {in_group}"
            else:
                match_sql = (
                    f"SELECT {quote(ident)} AS _match, min({id_column}) AS _id FROM {quote(table)} "
                    f"WHERE {quote(ident)} IS NOT NULL AND {in_group} GROUP BY 1"
                )
            # Deterministic ids: importing the same file into an empty store twice yields the same ids.
            new_ids.append(f"WHEN {index} THEN md5({literal(id_scope + ident)} || ':' || i._key)")
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
    # ``resolved`` holds every incoming column: the records and their sum delta are not read again.
    _drop(conn, "incoming_delta")
    conn.unregister("incoming_records")
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
    # Whether a list property changes too (``_update_changed``): the same comparisons, which
    # DuckDB evaluates once (measured: +0.02 CPU s for 250k rows, where a join of the changed rows
    # with the stored lists cost 0.23).
    lists_changed = " OR ".join(f"({new_value(p)}) IS DISTINCT FROM t.{quote(p)}" for p in rules if properties[p].type == "list") or "FALSE"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE merged AS
        SELECT r._id, r._is_new, r._line, r._key, r._rows, {', '.join(new_values) + ',' if new_values else ''}
               ({changed}) AS _changed, ({lists_changed}) AS _lists_changed, ({consent}) AS _consented
        FROM {source} r LEFT JOIN {quote(table)} t ON t.{id_column} = {_stored_id('r')}
        WHERE r._id IS NOT NULL
        """
    )
    _drop(conn, "resolved_by_id")
    _check_sum_range(conn, rules, properties, delivery)
    profile_extra = staged.target == "profiles"
    params = {"now": now, "delivery": delivery.delivery_id, **({"run": run_id} if profile_extra else {})}
    if rules:
        entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"
        _record_property_writers(conn, entity, table, id_column, list(rules), delivery, now)
    if rules and record_history:
        _record_property_changes(conn, staged, table, id_column, list(rules), properties, delivery, run_id, now)
    if rules:
        _update_changed(conn, table, id_column, rules, properties, params, profile_extra=profile_extra)
    columns = ", ".join(quote(p) for p in rules)
    values = ", ".join(f"m.{quote(p)}" for p in rules)
    extra_cols = ", last_run_id, domain_group" if profile_extra else ""
    extra_vals = f", $run, {literal(staged.domain_group)}" if profile_extra else ""
    conn.execute(
        f"""
        INSERT INTO {quote(table)} ({id_column}, created_at, updated_at, last_delivery_id, created_delivery_id{extra_cols}{', ' + columns if columns else ''})
        SELECT m._id, $now, $now, $delivery, $delivery{extra_vals}{', ' + values if values else ''} FROM merged m WHERE m._is_new AND m._consented
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
    _drop(conn, "resolved")
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
            -- GROUP BY, not DISTINCT: DuckLake 1.5.5 fails a MERGE whose source is a DISTINCT ("Out of buffer").
            USING (SELECT _id AS profile_id FROM merged WHERE _consented GROUP BY _id) s
            ON t.connection = $connection AND t.direction = 'imported' AND t.profile_id = s.profile_id
            WHEN MATCHED THEN UPDATE SET last_at = $now
            WHEN NOT MATCHED THEN INSERT VALUES ($connection, 'imported', s.profile_id, $now, $now)
            """,
            {"connection": delivery.connection, "now": now},
        )
    else:
        counts.groups_created, counts.groups_updated = created, updated
    _drop(conn, "merged")
    return sum_tables, not (ignored or skipped)


def _update_changed(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    id_column: str,
    rules: dict[str, str],
    properties: dict[str, PropertyDefinition],
    params: dict,
    *,
    profile_extra: bool,
) -> None:
    """Write the new values of the changed existing rows (``merged``).

    DuckDB rewrites a list column that an UPDATE touched in more than a few rows at the next
    checkpoint (measured at 250k profiles: 1.8 s for 2,500 rows set to the lists they already
    held, against nothing for the same rows' scalar columns), so a re-delivery that changes a
    city paid for every list property of its changed rows. When the lists change on few of the
    changed rows (none, for such a re-delivery), they are written on those rows only, in a second
    UPDATE; when they change on many (the orders of a first load adding a channel), one UPDATE of
    every column is cheaper than two, and the rewrite happens either way. The values that end up
    stored are the same in both cases."""
    lists = [p for p in rules if properties[p].type == "list"]
    # The table's own name, not an alias, as the merge always wrote it (DuckLake included).
    changed_row = f"{quote(table)}.{id_column} = m._id AND m._changed AND NOT m._is_new AND m._consented"
    stamps = f"updated_at = $now, last_delivery_id = $delivery{', last_run_id = $run' if profile_extra else ''}"
    split, list_rows = False, 0
    # A lake writes updated rows into new files (no checkpoint rewrites a column), so it keeps the
    # one UPDATE (and never updates a row twice in a transaction).
    if lists and not is_lake(conn):
        changed_rows, list_rows = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE _lists_changed) FROM merged WHERE _changed AND NOT _is_new AND _consented"
        ).fetchall()[0]
        split = list_rows * 10 <= changed_rows
    written = [p for p in rules if not (split and p in lists)]
    assignments = "".join(f"{quote(p)} = m.{quote(p)}, " for p in written)
    conn.execute(f"UPDATE {quote(table)} SET {assignments}{stamps} FROM merged m WHERE {changed_row}", params)
    if split and list_rows:
        assignments = ", ".join(f"{quote(p)} = m.{quote(p)}" for p in lists)
        conn.execute(f"UPDATE {quote(table)} SET {assignments} FROM merged m WHERE {changed_row} AND m._lists_changed")
