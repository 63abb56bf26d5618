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
so the rows behind a sum are remembered in ``delivery_rows`` (see ``_apply_sum_delta``). A row
with a key (its timeline event's id, a nested row's key within its event, the mapping's
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
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, Catalog, PropertyDefinition, consent_property_problem
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.fault_injection import fault_point
from cdp_pipeline.store.incoming import drop_staged_view, staged_view
from cdp_pipeline.store.lake import claim_write_turn, mark_commit, record_snapshot_ids, rollback
from cdp_pipeline.store.schema import SQL_TYPES, event_table, group_table, is_lake, item_table, literal, quote
from cdp_pipeline.tables.staged import FILE_HASH_HI, FILE_HASH_LO, HASH_HI, HASH_LO, KEY_INDEX, NOT_IMPORTED, ROWS, SUM_KEYED, StagedImport


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
    #: keyed sum rows delivered again with another value: the difference was added.
    sum_rows_corrected: int = 0
    #: events delivered again with the same values.
    events_unchanged: int = 0
    #: cells that did not parse for their property and were not imported (the row's other values were).
    values_not_imported: int = 0
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
        # Added in a type wider than the stored one, so a total beyond the stored type is caught by
        # ``_check_sum_range`` with its key and line instead of wrapping or failing as a bare cast.
        wide = SUM_WIDE_TYPES[prop.type]
        return f"CASE WHEN {incoming} IS NULL THEN {t} ELSE coalesce(CAST({t} AS {wide}), 0) + CAST({incoming} AS {wide}) END"
    raise ValueError(f"unknown merge rule {rule!r}")


#: the type a sum is added in, and the range the stored type holds.
SUM_WIDE_TYPES = {"integer": "HUGEINT", "decimal": "DECIMAL(38,4)"}
SUM_LIMITS = {"integer": (str(-(2**63)), str(2**63 - 1)), "decimal": ("-99999999999999.9999", "99999999999999.9999")}


def _check_sum_range(
    conn: duckdb.DuckDBPyConnection, rules: dict[str, str], properties: dict[str, PropertyDefinition], delivery: DeliveryRecord
) -> None:
    """A sum whose new total does not fit the stored type fails the delivery naming the property,
    the key, the file and line, and the total: a wrapped or truncated total would look like data."""
    for prop, rule in rules.items():
        if rule != "sum" or properties[prop].type not in SUM_LIMITS:
            continue
        low, high = SUM_LIMITS[properties[prop].type]
        rows = conn.execute(
            f"SELECT _key, _line, CAST({quote(prop)} AS VARCHAR) FROM merged WHERE {quote(prop)} < {low} OR {quote(prop)} > {high} ORDER BY _line LIMIT 5"
        ).fetchall()
        if rows:
            raise InputError(
                [
                    InputProblem(
                        file=delivery.root_file, line=line, column=prop,
                        reason=f"the sum {prop!r} of key {key!r} would become {total}, beyond what a {properties[prop].type} property holds ({low} .. {high})",
                        fix="check the file's values (a unit or decimal separator mix-up?), or store the total in a property of a wider type",
                    )
                    for key, line, total in rows
                ]
            )


def _properties_for(staged: StagedImport, catalog: Catalog) -> dict[str, PropertyDefinition]:
    if staged.target == "groups":
        if staged.group_type is None:
            raise ValueError("a group import without a group type")
        return catalog.group_types[staged.group_type].properties
    return catalog.profile_properties


def _drop(conn: duckdb.DuckDBPyConnection, *tables: str) -> None:
    """Drop temp tables no later step reads: under ``store.memory_limit`` DuckDB then holds only
    what the merge still needs and spills less (a dropped table's blocks are free at once)."""
    for table in tables:
        conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")


def _stored_id(alias: str) -> str:
    """The key an incoming row joins its stored row on: its id, or NULL for a row that creates one
    (a generated id may equal a stored profile's that the identifiers did not find). Written as
    the join key, not as ``AND NOT _is_new`` beside it: DuckDB 1.5 plans a LEFT JOIN whose ON has
    a condition on one side only as a nested-loop join (250k profiles: 36 s CPU against 0.05)."""
    return f"CASE WHEN NOT {alias}._is_new THEN {alias}._id END"


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


def _known_writers(conn: duckdb.DuckDBPyConnection, entity: str, delivery: DeliveryRecord) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT property FROM property_writers WHERE entity = $entity AND connection = $connection AND goal = $goal",
        {"entity": entity, "connection": delivery.connection, "goal": delivery.goal},
    ).fetchall()
    return {prop for (prop,) in rows}


def _add_writers(conn: duckdb.DuckDBPyConnection, entity: str, props: list[str], delivery: DeliveryRecord, now: datetime) -> None:
    if props:  # never an empty INSERT ... SELECT (see _record_property_changes)
        conn.execute(
            "INSERT INTO property_writers (entity, property, connection, goal, delivery_id, first_written_at) "
            "SELECT $entity, unnest($props), $connection, $goal, $delivery, $now",
            {"entity": entity, "props": props, "connection": delivery.connection, "goal": delivery.goal, "delivery": delivery.delivery_id, "now": now},
        )


def _record_property_writers(
    conn: duckdb.DuckDBPyConnection, entity: str, table: str, id_column: str, props: list[str], delivery: DeliveryRecord, now: datetime
) -> None:
    """The properties of ``props`` this delivery is the first of its goal to write (a new profile
    or group created with a value, or a stored value changed), in ``property_writers``: staging
    reads that small table to warn about properties other goals fill, instead of scanning every
    profile. Written before the UPDATE (it compares with the stored value); properties the goal
    is already listed for cost nothing, so only a goal's first deliveries pay for the check."""
    pending = [p for p in props if p not in _known_writers(conn, entity, delivery)]
    if not pending:
        return
    written = ", ".join(
        f"coalesce(bool_or(CASE WHEN m._is_new THEN m.{quote(p)} IS NOT NULL ELSE m.{quote(p)} IS DISTINCT FROM t.{quote(p)} END), false)"
        for p in pending
    )
    row = conn.execute(
        f"SELECT {written} FROM merged m LEFT JOIN {quote(table)} t ON t.{id_column} = {_stored_id('m')} WHERE m._consented"
    ).fetchone()
    _add_writers(conn, entity, [p for p, wrote in zip(pending, row or (), strict=False) if wrote], delivery, now)


def _as_text(expression: str, prop: PropertyDefinition) -> str:
    """A value as property_changes holds it: text, lists as JSON arrays."""
    return f"CAST(to_json({expression}) AS VARCHAR)" if prop.type == "list" else f"CAST({expression} AS VARCHAR)"


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
    """One history row per value this delivery changes on an existing profile (or group), written
    before the UPDATE (it compares with the stored value) and in the same transaction: history and
    profiles can never disagree (issue G: provenance and values as of a past date).

    A new profile gets no rows: its values are in its row, with ``created_at`` and
    ``created_delivery_id`` (one row per value of every new profile was half of a first load's
    merge). When such a value first changes, the row its creation stands for is written first
    (``_record_creation_values``), so the history of every value that ever changed is complete;
    the view property_history adds the values not changed since creation."""
    entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"
    # The changed rows with their new and stored values, joined once: one join of ``merged`` with
    # the whole table per property scanned both once per property, the main cost of the history
    # when a delivery changes few rows.
    pairs = ", ".join(f"m.{quote(p)} AS _new_{i}, t.{quote(p)} AS _stored_{i}" for i, p in enumerate(props))
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE changed_values AS
        SELECT m._id, {pairs}
        FROM merged m JOIN {quote(table)} t ON t.{id_column} = m._id
        WHERE m._consented AND NOT m._is_new AND m._changed
        """
    )
    selects = [
        f"""
        SELECT _id AS entity_id, {literal(prop)} AS property, {_as_text(f"_new_{i}", properties[prop])} AS value,
               {_as_text(f"_stored_{i}", properties[prop])} AS stored_value
        FROM changed_values WHERE _new_{i} IS DISTINCT FROM _stored_{i}
        """
        for i, prop in enumerate(props)
    ]
    conn.execute(f"CREATE OR REPLACE TEMP TABLE value_changes AS {' UNION ALL '.join(selects)}")
    # Never an empty INSERT ... SELECT before a large one into the same table within a transaction
    # (DuckDB 2.0 then loses the large one, see store/segments.py): empty steps are skipped.
    _drop(conn, "changed_values")
    (pending,) = conn.execute("SELECT count(*) FROM value_changes").fetchall()[0]
    if not pending:
        _drop(conn, "value_changes")
        return
    _record_creation_values(conn, table, id_column, entity, "value_changes")
    conn.execute(
        """
        INSERT INTO property_changes
        SELECT $entity, entity_id, property, value, $now, $connection, $goal, $delivery, $run FROM value_changes
        """,
        {"entity": entity, "now": now, "connection": delivery.connection, "goal": delivery.goal, "delivery": delivery.delivery_id, "run": run_id},
    )
    _drop(conn, "value_changes")


def _record_creation_values(conn: duckdb.DuckDBPyConnection, table: str, id_column: str, entity: str, changes: str) -> None:
    """Before the first change of a value a profile was created with, the history row its creation
    stands for: the stored value, at ``created_at``, by the creating delivery (its connection,
    goal and run). ``changes`` holds ``entity_id``, ``property`` and ``stored_value`` (the value
    as text before this change). Values that already have history rows, values that were empty,
    and profiles without a known creating delivery (created before the column existed, when
    their creation rows were written at once) get none."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE creation_values AS
        SELECT c.entity_id, c.property, c.stored_value AS value, t.created_at, d.connection, d.goal, d.delivery_id, d.run_id
        FROM {changes} c
        JOIN {quote(table)} t ON t.{id_column} = c.entity_id
        JOIN deliveries d ON d.delivery_id = t.created_delivery_id
        WHERE c.stored_value IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM property_changes h WHERE h.entity = $entity AND h.entity_id = c.entity_id AND h.property = c.property)
        """,
        {"entity": entity},
    )
    (pending,) = conn.execute("SELECT count(*) FROM creation_values").fetchall()[0]
    if pending:
        conn.execute(
            """
            INSERT INTO property_changes
            SELECT $entity, entity_id, property, value, created_at, connection, goal, delivery_id, run_id FROM creation_values
            """,
            {"entity": entity},
        )
    _drop(conn, "creation_values")


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
