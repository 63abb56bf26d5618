"""Invariants of the store, as SQL: what the asset checks watch after every merge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import fetch_row
from cdp_pipeline.store.schema import event_table, item_table, quote


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, int]


def unique_profile_ids(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    # No PRIMARY KEY on purpose (speed): this check is what guarantees one row per profile id.
    (duplicates,) = fetch_row(conn, "SELECT count(*) FROM (SELECT profile_id FROM profiles GROUP BY 1 HAVING count(*) > 1)")
    (total,) = fetch_row(conn, "SELECT count(*) FROM profiles")
    return CheckOutcome(
        duplicates == 0, f"{duplicates} profile id(s) appear more than once among {total} profiles", {"duplicate_ids": duplicates, "profiles": total}
    )


def events_have_profiles(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> CheckOutcome:
    orphans = 0
    for event_type, definition in catalog.event_types.items():
        (count,) = fetch_row(conn,
            f"SELECT count(*) FROM {quote(event_table(event_type))} e WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.profile_id = e.profile_id)"
        )
        orphans += count
        for nested_type in definition.nested:
            (count,) = fetch_row(conn,
                f"SELECT count(*) FROM {quote(item_table(event_type, nested_type))} i "
                f"WHERE NOT EXISTS (SELECT 1 FROM {quote(event_table(event_type))} e WHERE e.event_id = i.event_id)"
            )
            orphans += count
    return CheckOutcome(orphans == 0, f"{orphans} event(s) or item(s) without their profile or event", {"orphans": orphans})


def ledger_matches_store(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Every profile's last delivery is in the ledger as merged: a change without its ledger row
    would mean a merge committed half (it cannot, by design; this watches the design)."""
    (unknown,) = fetch_row(conn,
        """
        SELECT count(*) FROM profiles p
        WHERE p.last_delivery_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.delivery_id = p.last_delivery_id AND d.status = 'merged')
        """
    )
    (deliveries,) = fetch_row(conn, "SELECT count(*) FROM deliveries")
    return CheckOutcome(
        unknown == 0, f"{unknown} profile(s) point at a delivery missing from the ledger", {"unledgered_profiles": unknown, "deliveries": deliveries}
    )


def rejects_within_bounds(conn: duckdb.DuckDBPyConnection, connection: str, max_share: float = 0.05) -> CheckOutcome:
    """The connection's latest delivery rejected at most ``max_share`` of its rows."""
    row = fetch_row(conn,
        "SELECT rows_read, rows_rejected FROM deliveries WHERE connection = $c AND status = 'merged' ORDER BY merged_at DESC LIMIT 1",
        {"c": connection},
    )
    if row is None:
        return CheckOutcome(True, "no delivery merged yet", {"rows_read": 0, "rows_rejected": 0})
    rows_read, rejected = row
    share = rejected / rows_read if rows_read else 0.0
    return CheckOutcome(
        share <= max_share,
        f"latest delivery rejected {rejected} of {rows_read} rows ({share:.1%}; bound {max_share:.0%})",
        {"rows_read": rows_read, "rows_rejected": rejected},
    )


#: the store checks by name, in the order the UI lists them; each takes (conn, catalog, connection).
STORE_CHECKS: dict[str, Callable[[duckdb.DuckDBPyConnection, Catalog, str], CheckOutcome]] = {
    "unique_profile_ids": lambda conn, catalog, connection: unique_profile_ids(conn),
    "events_have_profiles": lambda conn, catalog, connection: events_have_profiles(conn, catalog),
    "ledger_matches_store": lambda conn, catalog, connection: ledger_matches_store(conn),
    "rejects_within_bounds": lambda conn, catalog, connection: rejects_within_bounds(conn, connection),
}


def evaluate_store_checks(conn: duckdb.DuckDBPyConnection, catalog: Catalog, connection: str) -> dict[str, CheckOutcome]:
    """Every store check in one session (one store open instead of four)."""
    return {name: check(conn, catalog, connection) for name, check in STORE_CHECKS.items()}
