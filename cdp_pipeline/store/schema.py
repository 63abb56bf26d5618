"""The store's tables, created from the catalog: wide, typed, commented, for analysts first.

No PRIMARY KEY or UNIQUE constraints on purpose: in DuckDB an ART index made a 1M-row upsert of
list columns ten times slower when measured. Uniqueness is kept by the merge itself (one row
per key, pre-aggregated in Polars) and watched by asset checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, RESERVED_GROUP_COLUMNS, RESERVED_PROFILE_COLUMNS, Catalog, PropertyDefinition
from cdp_pipeline.errors import CdpError

SQL_TYPES = {
    "text": "VARCHAR",
    "integer": "BIGINT",
    "decimal": "DECIMAL(18,4)",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "list": "VARCHAR[]",
}


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def group_table(group_type: str) -> str:
    return f"groups_{group_type}"


def event_table(event_type: str) -> str:
    return f"timeline_{event_type}"


def item_table(event_type: str, nested_type: str) -> str:
    return f"timeline_{event_type}__{nested_type}"


# Tables whose shape does not depend on the catalog. Comments are part of the schema: analysts read
# them with `SELECT * FROM duckdb_columns()` or in their SQL client.
FIXED_TABLES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "schema_version": (
        "The store's schema version: one row per migration applied, the newest last. "
        "SELECT max(version) FROM schema_version is the version of this store.",
        [
            ("version", "INTEGER", "Migration number; migrations run in this order, each once."),
            ("applied_at", "TIMESTAMP", "When it was applied to this store (UTC)."),
            ("description", "VARCHAR", "What the migration changed."),
        ],
    ),
    "deliveries": (
        "The ledger: one row per delivery (a root file and its linked files) merged, rejected or skipped.",
        [
            ("delivery_id", "VARCHAR", "Stable id: hash of connection, goal, the files' sha256 and the goal's configuration hash."),
            ("connection", "VARCHAR", "Connection name from the YAML."),
            ("goal", "VARCHAR", "Goal name within the connection."),
            ("partition_key", "VARCHAR", "Dagster partition of the delivery (goal:root file name)."),
            ("root_file", "VARCHAR", "Remote path of the root file."),
            ("files", "JSON", "Every file of the delivery: logical name, remote path, size, mtime, etag, sha256."),
            ("content_sha256", "VARCHAR", "sha256 over the files' sha256 values: the content identity."),
            ("config_hash", "VARCHAR", "Hash of the goal's configuration when it was imported."),
            ("status", "VARCHAR", "merged, or reprocessed (merged again on an operator's request). "
             "Skipped and failed deliveries are in Dagster's run history."),
            ("rows_read", "BIGINT", "Data rows read from the root file."),
            ("rows_rejected", "BIGINT", "Rows left out, with reasons in rejects."),
            ("profiles_created", "BIGINT", "Profiles this delivery created."),
            ("profiles_updated", "BIGINT", "Existing profiles whose values changed."),
            ("profiles_unchanged", "BIGINT", "Matched profiles whose values stayed the same."),
            ("profiles_ignored", "BIGINT", "Rows whose identifier matched no profile while creation was off."),
            ("consent_skipped", "BIGINT", "Rows skipped because the profile consented to none of the connection's objectives."),
            ("groups_created", "BIGINT", "Groups created."),
            ("groups_updated", "BIGINT", "Groups whose values changed."),
            ("events_created", "BIGINT", "Timeline events created."),
            ("events_updated", "BIGINT", "Timeline events imported again (same event id) with changed values."),
            ("run_id", "VARCHAR", "Dagster run that merged it."),
            ("merged_at", "TIMESTAMP", "When the delivery's transaction ran (UTC, taken once the store's write lock was held)."),
            ("events_unchanged", "BIGINT", "Timeline events delivered again with the same values (left as they were)."),
            ("values_not_imported", "BIGINT", "Cells that did not parse for their property and were not imported (the rest of the row was); see rejects."),
            ("lake_snapshot_id", "BIGINT", "store.backend ducklake: the lake snapshot the merge committed; query the store as it was "
             "after this delivery with AT (VERSION => lake_snapshot_id). NULL on a DuckDB file store."),
        ],
    ),
    "delivery_rows": (
        "The row delta of sums: per root file, the identities of the source rows already added to each sum "
        "property. A new version of the file (or a reprocess) adds only rows not listed here, so a sum never "
        "counts a row twice. Set rules and add apply again as usual.",
        [
            ("connection", "VARCHAR", "Connection name."),
            ("goal", "VARCHAR", "Import goal."),
            ("root_file", "VARCHAR", "Remote path of the delivery's root file: the scope of the identities."),
            ("property", "VARCHAR", "Sum property (profile or group property) the row was added to."),
            ("row_hash", "UHUGEINT", "Keyed rows: md5 of the key. Other rows: md5 of the row's raw identifier or link cells, "
             "event ids and the sum's source cell, plus its occurrence among identical rows."),
            ("delivery_id", "VARCHAR", "Delivery that added the row (see deliveries)."),
            ("value", "DECIMAL(38,4)", "Keyed rows: the value the row contributes to the sum now (a corrected value adds the difference)."),
            ("entity_id", "VARCHAR", "Keyed rows: the profile or group the value is counted on (a key that moves to another one moves its value)."),
            ("keyed", "BOOLEAN", "true: row_hash is the row's key (event id, nested key or the mapping's identity columns), "
             "remembered for the goal whatever the file is called; false: the per-file identity, scoped by root_file."),
        ],
    ),
    "rejects": (
        "Rows and files that were not imported, with file, line, column and reason.",
        [
            ("delivery_id", "VARCHAR", "Delivery the row belongs to."),
            ("connection", "VARCHAR", "Connection name."),
            ("goal", "VARCHAR", "Goal name."),
            ("file", "VARCHAR", "Remote path of the file."),
            ("line", "BIGINT", "Physical line number (1-based) where the record starts."),
            ("column_name", "VARCHAR", "Column concerned, if any."),
            ("reason", "VARCHAR", "What was wrong and what to do."),
            ("run_id", "VARCHAR", "Dagster run."),
            ("recorded_at", "TIMESTAMP", "When it was recorded (UTC)."),
        ],
    ),
    "runs": (
        "Run history per connection, as the Run history table of a BlueConic connection.",
        [
            ("run_id", "VARCHAR", "Dagster run id."),
            ("connection", "VARCHAR", "Connection name."),
            ("kind", "VARCHAR", "import or export."),
            ("goal", "VARCHAR", "Goal name."),
            ("partition_key", "VARCHAR", "Delivery partition for imports."),
            ("started_at", "TIMESTAMP", "Start (UTC)."),
            ("ended_at", "TIMESTAMP", "End (UTC)."),
            ("status", "VARCHAR", "SUCCESS, SKIPPED (same content already merged) or FAILURE (the cause in error)."),
            ("counts", "JSON", "Counts of the goal: checked, created, updated, unchanged, rejected, events ..."),
            ("last_profiles", "VARCHAR[]", "The last five profiles created or updated."),
            ("error", "VARCHAR", "Error message of a failed run."),
        ],
    ),
    "property_changes": (
        "History of property values: one row per value a delivery changed on an existing profile (or group). "
        "A new profile's values are not written here when it is created: the first change of a value writes two rows, "
        "the value it was created with (at created_at, by the creating delivery) and the new one. A value without rows "
        "is the one the profile was created with. See the view property_provenance.",
        [
            ("entity", "VARCHAR", "profile, or group:<group type>."),
            ("entity_id", "VARCHAR", "profile_id or group_id."),
            ("property", "VARCHAR", "Property name."),
            ("value", "VARCHAR", "The new value as text (lists as JSON arrays); NULL when the delivery cleared it."),
            ("changed_at", "TIMESTAMP", "When the delivery was merged (UTC)."),
            ("connection", "VARCHAR", "Connection that set it."),
            ("goal", "VARCHAR", "Goal that set it."),
            ("delivery_id", "VARCHAR", "Delivery that set it (see deliveries)."),
            ("run_id", "VARCHAR", "Dagster run that set it."),
        ],
    ),
    "property_writers": (
        "Which goals have written each property: one row per (entity, property, connection, goal) that set a value of it "
        "(created with a value, or changed it), kept by the merge in the delivery's transaction. An import reads it to warn "
        "that another connection or goal already fills a property, without scanning the profiles.",
        [
            ("entity", "VARCHAR", "profile, or group:<group type>."),
            ("property", "VARCHAR", "Property name."),
            ("connection", "VARCHAR", "Connection whose delivery wrote it."),
            ("goal", "VARCHAR", "Goal whose delivery wrote it."),
            ("delivery_id", "VARCHAR", "The first delivery of that goal that wrote it (see deliveries); NULL when taken from the "
             "value history of a store made before this table."),
            ("first_written_at", "TIMESTAMP", "When that delivery was merged (UTC)."),
        ],
    ),
    "segment_members": (
        "Current members of each segment, refreshed after every merge.",
        [
            ("segment", "VARCHAR", "Segment name from store.yaml."),
            ("profile_id", "VARCHAR", "Member profile."),
            ("member_since", "TIMESTAMP", "When the profile entered the segment (UTC)."),
        ],
    ),
    "segment_sizes": (
        "Segment sizes measured at every refresh: segment sizes over time.",
        [
            ("segment", "VARCHAR", "Segment name."),
            ("measured_at", "TIMESTAMP", "When it was measured (UTC)."),
            ("size", "BIGINT", "Number of members."),
        ],
    ),
    "lifecycle_members": (
        "The stage of each profile in each lifecycle (the first stage whose condition it meets).",
        [
            ("lifecycle", "VARCHAR", "Lifecycle name."),
            ("stage", "VARCHAR", "Stage name."),
            ("profile_id", "VARCHAR", "Profile."),
            ("stage_since", "TIMESTAMP", "When the profile entered this stage (UTC)."),
        ],
    ),
    "export_state": (
        "Per export goal: when it last exported successfully (profiles changed after it are exported next).",
        [
            ("connection", "VARCHAR", "Connection name."),
            ("goal", "VARCHAR", "Export goal."),
            ("last_export_at", "TIMESTAMP", "Store time of the last successful export (UTC)."),
            ("last_run_id", "VARCHAR", "Run that made it."),
        ],
    ),
    # Added for export diff mode (issue E): what a diff goal last sent, per profile, so the next
    # run can tell added / changed / removed. Replaced in the transaction that moves export_state.
    "export_snapshots": (
        "Per export goal in diff mode: a hash of each profile's row as last sent (the base of <name>.diff.csv).",
        [
            ("connection", "VARCHAR", "Connection name."),
            ("goal", "VARCHAR", "Export goal (diff: true)."),
            ("profile_id", "VARCHAR", "Profile whose row was sent."),
            ("row_hash", "VARCHAR", "md5 of the row's cells as written (after processors and formula guard)."),
            ("exported_at", "TIMESTAMP", "Store time of that export (UTC), equal to export_state.last_export_at."),
            ("run_id", "VARCHAR", "Run that sent it."),
        ],
    ),
    "exchanged_profiles": (
        "Unique profiles imported or exported per connection: BlueConic's Data exchange figure.",
        [
            ("connection", "VARCHAR", "Connection name."),
            ("direction", "VARCHAR", "imported or exported."),
            ("profile_id", "VARCHAR", "Profile."),
            ("first_at", "TIMESTAMP", "First exchange (UTC)."),
            ("last_at", "TIMESTAMP", "Latest exchange (UTC)."),
        ],
    ),
    # SARE's checkSpamtrap compares a file's addresses with this list; it lives in the store so every
    # connection and the analysts see the same list (fill it with INSERT INTO spamtraps (address, source, added_at) ...).
    "spamtraps": (
        "Known spam-trap addresses: rows of SARE files with checkSpamtrap true whose address is here are left out (compared trimmed, lower case).",
        [
            ("address", "VARCHAR", "The e-mail address of the spam trap."),
            ("source", "VARCHAR", "Where the entry came from (a list name, a ticket, a person)."),
            ("added_at", "TIMESTAMP", "When it was added (UTC)."),
        ],
    ),
    "catalog_properties": (
        "Properties created by a bulk mapping (\"add all detected fields\") because store.yaml does not declare "
        "them: their column in profiles (or groups_<group type>, timeline_<event type>), the type inferred from the first file, "
        "and who created them.",
        [
            ("property", "VARCHAR", "Property name: the column of profiles (or of the entity's table)."),
            ("entity", "VARCHAR", "profile, group:<group type> (the column is in groups_<group type>) or event:<event type> "
             "(the column is in timeline_<event type>)."),
            ("type", "VARCHAR", "Catalog type inferred from the file: text, integer, decimal or date."),
            ("connection", "VARCHAR", "Connection whose delivery created it."),
            ("goal", "VARCHAR", "Import goal whose bulk mapping created it."),
            ("delivery_id", "VARCHAR", "Delivery that created it (see deliveries)."),
            ("created_at", "TIMESTAMP", "When it was created (UTC)."),
        ],
    ),
    # DuckLake has no unique constraints and lets two appending transactions both commit; every
    # merge on a lake also raises this counter, so two overlapping merges conflict and one retries.
    "write_turn": (
        "One row: a counter each merge into a shared (DuckLake) store raises, so overlapping merges are "
        "committed one after the other. Unused on a DuckDB file store.",
        [
            ("turn", "BIGINT", "Number of merge transactions committed since the table was created."),
        ],
    ),
    "product_store": (
        "Per product: how often and how recently it was bought (\"add to product store\").",
        [
            ("product_id", "VARCHAR", "Product id from the order lines."),
            ("times_bought", "BIGINT", "Number of order lines with this product."),
            ("quantity_bought", "DECIMAL(18,4)", "Sum of quantities, when the lines have a quantity."),
            ("first_bought_at", "TIMESTAMP", "Earliest order time."),
            ("last_bought_at", "TIMESTAMP", "Latest order time."),
        ],
    ),
}


def _property_columns(properties: dict[str, PropertyDefinition]) -> list[tuple[str, str, str]]:
    return [(name, SQL_TYPES[prop.type], prop.description or f"{prop.type} property") for name, prop in properties.items()]


CREATED_DELIVERY_COMMENT = (
    "Delivery that created the {entity} (see deliveries). Its values then are in property_changes only from their first "
    "change on (with this delivery and created_at); until then the stored value is the one it was created with. "
    "NULL for {entity}s created before this column existed, and after SARE's overwrite 3 cleared their history."
)


def catalog_tables(catalog: Catalog) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    tables: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
        "profiles": (
            "One row per customer profile; one typed column per profile property in store.yaml.",
            [
                ("profile_id", "VARCHAR", "The profile identifier."),
                ("created_at", "TIMESTAMP", "When the profile was created (UTC)."),
                ("updated_at", "TIMESTAMP", "When a property value last changed (UTC)."),
                ("last_delivery_id", "VARCHAR", "Delivery that last changed the profile (see deliveries)."),
                ("last_run_id", "VARCHAR", "Dagster run that last changed the profile."),
                ("domain_group", "VARCHAR", "Domain group of the profile: identifiers match only within it (the same e-mail in two "
                 f"groups is two profiles). {DEFAULT_DOMAIN_GROUP!r} unless its import goal names another."),
                ("created_delivery_id", "VARCHAR", CREATED_DELIVERY_COMMENT.format(entity="profile")),
                *_property_columns(catalog.profile_properties),
            ],
        )
    }
    for name, group in catalog.group_types.items():
        tables[group_table(name)] = (
            group.description or f"Groups of type {name}.",
            [
                ("group_id", "VARCHAR", "Group identifier."),
                ("created_at", "TIMESTAMP", "When the group was created (UTC)."),
                ("updated_at", "TIMESTAMP", "When a group property last changed (UTC)."),
                ("last_delivery_id", "VARCHAR", "Delivery that last changed the group."),
                ("created_delivery_id", "VARCHAR", CREATED_DELIVERY_COMMENT.format(entity="group")),
                *_property_columns(group.properties),
            ],
        )
    for name, event in catalog.event_types.items():
        tables[event_table(name)] = (
            event.description or f"Timeline events of type {name}.",
            [
                ("event_id", "VARCHAR", "Event id; importing it again replaces the event."),
                ("profile_id", "VARCHAR", "Profile the event belongs to."),
                ("event_time", "TIMESTAMP", "When the event happened."),
                *_property_columns(event.properties),
                ("delivery_id", "VARCHAR", "Delivery that imported it."),
                ("imported_at", "TIMESTAMP", "When it was imported (UTC)."),
            ],
        )
        for nested_name, nested in event.nested.items():
            tables[item_table(name, nested_name)] = (
                nested.description or f"Nested {nested_name} items of {name} events.",
                [
                    ("event_id", "VARCHAR", f"The {name} event the item belongs to."),
                    ("item_index", "BIGINT", "Position of the item within the event (file order, from 1; later additions follow)."),
                    ("item_key", "VARCHAR", "The item's key within its event: the nested mapping's key columns, else its content and occurrence."),
                    *_property_columns(nested.properties),
                ],
            )
    return tables


class StoreSchemaError(CdpError):
    """The store file cannot be used with this code and store.yaml as they are: its schema is newer
    than the code, or a column's stored type differs from the type store.yaml now declares."""


#: columns filled for rows that existed before the column did, and for inserts that do not name it.
COLUMN_DEFAULTS: dict[tuple[str, str], str] = {("profiles", "domain_group"): literal(DEFAULT_DOMAIN_GROUP)}


def _column_sql(table: str, name: str, sql_type: str) -> str:
    default = COLUMN_DEFAULTS.get((table, name))
    return f"{quote(name)} {sql_type}" + (f" DEFAULT {default}" if default else "")


@dataclass(frozen=True)
class Migration:
    """One numbered step of the fixed tables' history. Steps are idempotent (IF NOT EXISTS), so a
    store made before versioning, which may already have some of their columns, takes them all."""

    version: int
    description: str
    statements: Callable[[], list[str]]
    #: fills what the step created from what the store already holds, after its statements.
    backfill: Callable[[duckdb.DuckDBPyConnection], None] | None = None


def _create_fixed(table: str, leave_out: tuple[str, ...] = ()) -> str:
    _, columns = FIXED_TABLES[table]
    column_sql = ", ".join(f"{quote(name)} {sql_type}" for name, sql_type, _ in columns if name not in leave_out)
    return f"CREATE TABLE IF NOT EXISTS {quote(table)} ({column_sql})"


def _add_fixed(table: str, *names: str) -> list[str]:
    types = {name: sql_type for name, sql_type, _ in FIXED_TABLES[table][1]}
    return [f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {quote(name)} {types[name]}" for name in names]


#: columns that later migrations add to tables of the first version.
_LATER_DELIVERY_COLUMNS = ("events_unchanged", "values_not_imported")
_LATER_DELIVERY_ROW_COLUMNS = ("value", "entity_id", "keyed")
#: fixed tables that later migrations create.
_LATER_TABLES = ("spamtraps", "catalog_properties")
_LAKE_TABLES = ("write_turn",)
_WRITER_TABLES = ("property_writers",)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the ledger, row delta, rejects, runs, property history, segments, lifecycles, export state and snapshots, "
        "data exchange and product store tables",
        lambda: [
            _create_fixed("deliveries", (*_LATER_DELIVERY_COLUMNS, "lake_snapshot_id")),
            _create_fixed("delivery_rows", _LATER_DELIVERY_ROW_COLUMNS),
            *(
                _create_fixed(table)
                for table in FIXED_TABLES
                if table not in ("schema_version", "deliveries", "delivery_rows", *_LATER_TABLES, *_LAKE_TABLES, *_WRITER_TABLES)
            ),
        ],
    ),
    Migration(
        2,
        "deliveries.events_unchanged and deliveries.values_not_imported: events delivered again unchanged, cells not imported",
        lambda: _add_fixed("deliveries", *_LATER_DELIVERY_COLUMNS),
    ),
    Migration(
        3,
        "delivery_rows.value, entity_id and keyed: keyed sums remember each row's value and profile",
        lambda: _add_fixed("delivery_rows", *_LATER_DELIVERY_ROW_COLUMNS),
    ),
    Migration(
        4,
        "spamtraps (addresses a SARE import refuses) and catalog_properties (properties bulk mapping created)",
        lambda: [_create_fixed(table) for table in _LATER_TABLES],
    ),
    Migration(
        5,
        "deliveries.lake_snapshot_id (the DuckLake snapshot of each merge) and write_turn (merges into a shared lake take turns)",
        lambda: [
            *_add_fixed("deliveries", "lake_snapshot_id"),
            _create_fixed("write_turn"),
            "INSERT INTO write_turn (turn) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM write_turn)",
        ],
    ),
    Migration(
        6,
        "property_writers (which goals have written each property), filled from the value history and the stored values",
        lambda: [_create_fixed("property_writers")],
        backfill=lambda conn: _backfill_property_writers(conn),
    ),
)
#: the schema version this code writes; a store with a higher one was written by newer code.
SCHEMA_VERSION = MIGRATIONS[-1].version


def _entity_of(table: str, catalog: Catalog) -> str:
    if table == "profiles":
        return "profile property"
    for name in catalog.group_types:
        if table == group_table(name):
            return f"property of group type {name!r}"
    for name, event in catalog.event_types.items():
        if table == event_table(name):
            return f"property of event type {name!r}"
        for nested_name in event.nested:
            if table == item_table(name, nested_name):
                return f"property of nested type {nested_name!r} of event type {name!r}"
    return "column"


#: fixed columns whose type differs on a DuckLake store. DuckLake 1.5.5 writes a 128-bit integer to
#: Parquet as a double, so a 128-bit hash would come back changed; its decimal text is exact, and
#: DuckDB compares and inserts it against the merge's UHUGEINT values unchanged.
LAKE_TYPES: dict[tuple[str, str], tuple[str, str]] = {("delivery_rows", "row_hash"): ("UHUGEINT", "VARCHAR")}


def _on_lake(statement: str) -> str:
    for (table, column), (file_type, lake_type) in LAKE_TYPES.items():
        if quote(table) in statement:
            statement = statement.replace(f"{quote(column)} {file_type}", f"{quote(column)} {lake_type}")
    return statement


def _backfill_property_writers(conn: duckdb.DuckDBPyConnection) -> None:
    """The writers a store already knows: every (connection, goal) in the value history, and the
    creating delivery of each value a profile (or group) still holds from its creation. Runs once,
    when the table is created; from then on the merge keeps it."""
    columns = conn.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' AND database_name = current_database() "
        "AND (table_name = 'profiles' OR starts_with(table_name, 'groups_'))"
    ).fetchall()
    by_table: dict[str, list[str]] = {}
    for table, column in columns:
        by_table.setdefault(table, []).append(column)
    parts = ["SELECT DISTINCT entity, property, connection, goal FROM property_changes"]
    for table, names in by_table.items():
        if "created_delivery_id" not in names:
            continue  # made before creations stopped writing history: property_changes holds them
        entity, id_column, reserved = (
            ("profile", "profile_id", RESERVED_PROFILE_COLUMNS) if table == "profiles"
            else (f"group:{table.removeprefix('groups_')}", "group_id", RESERVED_GROUP_COLUMNS)
        )
        for name in names:
            if name in reserved:
                continue
            parts.append(
                f"""
                SELECT DISTINCT {literal(entity)}, {literal(name)}, d.connection, d.goal
                FROM {quote(table)} t JOIN deliveries d ON d.delivery_id = t.created_delivery_id
                WHERE t.{quote(name)} IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM property_changes c WHERE c.entity = {literal(entity)} AND c.property = {literal(name)} AND c.entity_id = t.{id_column})
                """
            )
    (pending,) = conn.execute(f"SELECT count(*) FROM ({' UNION '.join(parts)})").fetchone() or (0,)
    if pending:  # never an empty INSERT ... SELECT (see store/segments.py)
        conn.execute(
            f"INSERT INTO property_writers (entity, property, connection, goal) SELECT * FROM ({' UNION '.join(parts)})"
        )


def _migrate(conn: duckdb.DuckDBPyConnection, store_name: str) -> list[str]:
    conn.execute(_create_fixed("schema_version"))
    (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone() or (0,)
    if current > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"the store {store_name} has schema version {current}, newer than this cdp_pipeline understands "
            f"(version {SCHEMA_VERSION}): it was written by a newer release. Upgrade cdp_pipeline; the store was not changed"
        )
    changes: list[str] = []
    lake = is_lake(conn)
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        for statement in migration.statements():
            conn.execute(_on_lake(statement) if lake else statement)
        if migration.backfill is not None:
            migration.backfill(conn)
        conn.execute(
            "INSERT INTO schema_version (version, applied_at, description) VALUES (?, now()::TIMESTAMP, ?)",
            [migration.version, migration.description],
        )
        changes.append(f"applied schema migration {migration.version}: {migration.description}")
    return changes


def ensure_schema(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[str]:
    """Bring the store to this code's schema version and store.yaml's catalog; returns what changed.

    The fixed tables evolve by numbered migrations, recorded in ``schema_version``; a store newer
    than the code is refused. The catalog's tables and columns are created as store.yaml declares
    them. A property whose declared type changed is refused rather than converted silently, with
    the statement that would migrate it: a cast can fail or lose values, so the operator decides.
    Callers run this inside a transaction (``open_writer``), so a failed step changes nothing.
    """
    (store_name,) = conn.execute(
        "SELECT coalesce(path, current_database()) FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone() or ("",)
    changes = _migrate(conn, str(store_name))
    tables = {**FIXED_TABLES, **catalog_tables(catalog)}
    columns_now = conn.execute(
        "SELECT table_name, column_name, data_type, comment FROM duckdb_columns() WHERE schema_name = 'main' AND database_name = current_database()"
    ).fetchall()
    existing = {(table, name): data_type for table, name, data_type, _ in columns_now}
    # Comments are written only where they differ: ~150 COMMENT statements at every writer open
    # were most of the time a run spent opening the store (about twenty opens a job).
    comments: dict[tuple[str, str | None], str | None] = {(table, name): comment for table, name, _, comment in columns_now}
    comments.update(
        ((table, None), comment)
        for table, comment in conn.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'main' AND database_name = current_database()"
        ).fetchall()
    )
    existing_tables = {table for table, _ in existing}
    for table, (comment, columns) in tables.items():
        if table not in existing_tables:
            column_sql = ", ".join(_column_sql(table, name, sql_type) for name, sql_type, _ in columns)
            conn.execute(f"CREATE TABLE {quote(table)} ({column_sql})")
            changes.append(f"created table {table}")
        else:
            for name, sql_type, _ in columns:
                current = existing.get((table, name))
                if current is None:
                    if table in FIXED_TABLES:
                        raise RuntimeError(f"the schema migrations do not create {table}.{name}: add a migration for it")
                    conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {_column_sql(table, name, sql_type)}")
                    changes.append(f"added column {table}.{name}")
                elif current.replace(" ", "") != sql_type.replace(" ", "") and current != LAKE_TYPES.get((table, name), ("", ""))[1]:
                    raise StoreSchemaError(
                        f"store.yaml declares the {_entity_of(table, catalog)} {name!r} as {sql_type}, but the store "
                        f"{store_name} holds it as {current} (column {table}.{name}); the store was not changed. To keep "
                        f"the values, migrate the column while no run is active: ALTER TABLE {quote(table)} ALTER COLUMN "
                        f"{quote(name)} SET DATA TYPE {sql_type} (a value that does not convert fails it, and nothing changes); "
                        "or give the property a new name, or put the old type back in store.yaml"
                    )
        if comments.get((table, None)) != comment:
            conn.execute(f"COMMENT ON TABLE {quote(table)} IS {literal(comment)}")
        for name, _, column_comment in columns:
            if comments.get((table, name)) != column_comment:
                conn.execute(f"COMMENT ON COLUMN {quote(table)}.{quote(name)} IS {literal(column_comment)}")
    views = {row[0] for row in conn.execute("SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal").fetchall()}
    # A lake's views are replaced only when the tables they read changed (or one is missing), for
    # the same reason; a DuckDB file replaces them on every open, as it always did.
    if not is_lake(conn) or changes or not views >= _expected_views(catalog):
        _create_views(conn, catalog)
    return changes


def _expected_views(catalog: Catalog) -> set[str]:
    consents = catalog.profile_properties.get("consents")
    return {
        "property_provenance", "data_exchange",
        *(["timeline_events"] if catalog.event_types else []),
        *(["groups"] if catalog.group_types else []),
        *(["consents"] if consents is not None and consents.type == "list" else []),
    }


def is_lake(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the connection's default catalog is a DuckLake (``store.backend: ducklake``)."""
    rows = conn.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return bool(rows) and rows[0][0] == "ducklake"


def _create_views(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    # One view over every event type so "all events of a profile" needs no knowledge of the types.
    if catalog.event_types:
        union = " UNION ALL ".join(
            f"SELECT {literal(name)} AS event_type, event_id, profile_id, event_time, delivery_id FROM {quote(event_table(name))}"
            for name in catalog.event_types
        )
        conn.execute(f"CREATE OR REPLACE VIEW timeline_events AS {union}")
        conn.execute("COMMENT ON VIEW timeline_events IS 'Every timeline event of every type: type, id, profile and time.'")
    if catalog.group_types:
        union = " UNION ALL ".join(
            f"SELECT {literal(name)} AS group_type, group_id, created_at, updated_at FROM {quote(group_table(name))}"
            for name in catalog.group_types
        )
        conn.execute(f"CREATE OR REPLACE VIEW groups AS {union}")
        conn.execute("COMMENT ON VIEW groups IS 'Every group of every type (households, companies ...); properties are in groups_<type>.'")
    consents = catalog.profile_properties.get("consents")
    if consents is not None and consents.type == "list":
        # One row per profile and objective it consented to: the shape privacy questions are asked in.
        conn.execute(
            "CREATE OR REPLACE VIEW consents AS SELECT profile_id, unnest(consents) AS objective, updated_at FROM profiles"
        )
        conn.execute("COMMENT ON VIEW consents IS 'One row per profile and objective it consented to (from the consents list property).'")
    _create_history_view(conn, catalog)
    conn.execute(
        """
        CREATE OR REPLACE VIEW property_provenance AS
        SELECT entity, entity_id, property,
               arg_max(value, changed_at) AS value, max(changed_at) AS changed_at,
               arg_max(connection, changed_at) AS connection, arg_max(delivery_id, changed_at) AS delivery_id,
               arg_max(run_id, changed_at) AS run_id
        FROM property_history GROUP BY entity, entity_id, property
        """
    )
    conn.execute(
        "COMMENT ON VIEW property_provenance IS 'For each property value: which connection, delivery and run last set it "
        "(from property_history, so also the values a profile still has from its creation).'"
    )
    conn.execute(
        """
        CREATE OR REPLACE VIEW data_exchange AS
        SELECT connection,
               count(DISTINCT profile_id) FILTER (WHERE direction = 'imported') AS unique_profiles_imported,
               count(DISTINCT profile_id) FILTER (WHERE direction = 'exported') AS unique_profiles_exported
        FROM exchanged_profiles GROUP BY connection
        """
    )
    conn.execute("COMMENT ON VIEW data_exchange IS 'Unique profiles imported and exported per connection, each profile counted once.'")


#: columns of profiles and groups_<type> that are not properties.
_ENTITY_COLUMNS = {"profile_id", "group_id", "created_at", "updated_at", "last_delivery_id", "last_run_id", "domain_group", "created_delivery_id"}


def _create_history_view(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    """property_history: property_changes plus, for every value not changed since its profile (or
    group) was created, the row the creation would have written (at created_at, by the creating
    delivery). The merge writes no history rows for new profiles (one per value of every new
    profile was most of a first load's time) and writes a value's creation row only when the
    value first changes; this view puts the unchanged creation values back, so it holds what the
    history always held. Built from the tables' columns, so properties a bulk mapping created
    are included."""
    entities = [("profiles", "profile_id", "'profile'")]
    entities += [(group_table(name), "group_id", literal(f"group:{name}")) for name in catalog.group_types]
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, name, data_type in conn.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' AND database_name = current_database() "
        "ORDER BY table_name, column_index"
    ).fetchall():
        columns.setdefault(table, []).append((name, data_type))
    parts = ["SELECT entity, entity_id, property, value, changed_at, connection, goal, delivery_id, run_id FROM property_changes"]
    for table, id_column, entity in entities:
        props = [(name, data_type) for name, data_type in columns.get(table, []) if name not in _ENTITY_COLUMNS]
        if not props or "created_delivery_id" not in {name for name, _ in columns.get(table, [])}:
            continue
        texts = ", ".join(
            f"CAST(to_json({quote(name)}) AS VARCHAR) AS {quote(name)}" if data_type.endswith("[]") else f"CAST({quote(name)} AS VARCHAR) AS {quote(name)}"
            for name, data_type in props
        )
        # UNPIVOT leaves NULLs out: a value the profile was created without had no history row either.
        parts.append(
            f"""
            SELECT {entity} AS entity, u.{id_column} AS entity_id, u.property, u.value, u.created_at AS changed_at,
                   d.connection, d.goal, d.delivery_id, d.run_id
            FROM (UNPIVOT (SELECT {id_column}, created_at, created_delivery_id, {texts} FROM {quote(table)} WHERE created_delivery_id IS NOT NULL)
                  ON {', '.join(quote(name) for name, _ in props)} INTO NAME property VALUE value) u
            JOIN deliveries d ON d.delivery_id = u.created_delivery_id
            WHERE NOT EXISTS (SELECT 1 FROM property_changes c WHERE c.entity = {entity} AND c.entity_id = u.{id_column} AND c.property = u.property)
            """
        )
    conn.execute(f"CREATE OR REPLACE VIEW property_history AS {' UNION ALL '.join(parts)}")
    conn.execute(
        "COMMENT ON VIEW property_history IS 'Every value a property had, with when and by which delivery it was set: "
        "property_changes plus the values profiles and groups still have from their creation. The value as of a date "
        "is the latest row at or before it.'"
    )
