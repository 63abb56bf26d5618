"""Asset checks on each connection's profile_store: the store's invariants after every merge."""

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.store import checks
from cdp_pipeline.store.database import open_writer

# name → (description, severity, the store check taking (conn, project, connection))
STORE_CHECKS = {
    "unique_profile_ids": ("Every profile id appears once in profiles.", dg.AssetCheckSeverity.ERROR, lambda conn, project, _: checks.unique_profile_ids(conn)),
    "events_have_profiles": (
        "No timeline event without its profile, no nested item without its event.",
        dg.AssetCheckSeverity.ERROR,
        lambda conn, project, _: checks.events_have_profiles(conn, project.catalog),
    ),
    "ledger_matches_store": (
        "Every profile's last delivery is a merged delivery in the ledger.",
        dg.AssetCheckSeverity.ERROR,
        lambda conn, project, _: checks.ledger_matches_store(conn),
    ),
    "rejects_within_bounds": (
        "The latest delivery rejected at most 5% of its rows.",
        dg.AssetCheckSeverity.WARN,
        lambda conn, project, connection: checks.rejects_within_bounds(conn, connection.name),
    ),
}


def _store_check(project: ProjectConfig, connection: Connection, name: str) -> dg.AssetChecksDefinition:
    description, severity, run = STORE_CHECKS[name]

    # The checks open the store like a writer does (DuckDB's single-process lock), so they share
    # the writers' pool and never collide with a merge.
    @dg.asset_check(asset=dg.AssetKey([connection.name, "profile_store"]), name=name, pool="duckdb_write", description=description)
    def store_check() -> dg.AssetCheckResult:
        with open_writer(project.store_path, project.catalog) as conn:
            outcome = run(conn, project, connection)
        return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description, metadata=outcome.metadata, severity=severity)

    return store_check


def build_store_checks(project: ProjectConfig, connection: Connection) -> list[dg.AssetChecksDefinition]:
    return [_store_check(project, connection, name) for name in STORE_CHECKS]
