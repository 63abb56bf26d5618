"""What the merge's modules share: the ledger row's fields, the counts, and small SQL helpers
(temp tables dropped once read, the join key of stored rows, identifier columns)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import duckdb

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition
from cdp_pipeline.store.schema import quote
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
