"""Asset checks on each connection's profile_store: the store's invariants after every merge."""

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.store import checks
from cdp_pipeline.store.database import open_writer


def _result(outcome: checks.CheckOutcome, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=outcome.passed, description=outcome.description, metadata=outcome.metadata, severity=severity)


def build_store_checks(project: ProjectConfig, connection: Connection) -> list[dg.AssetChecksDefinition]:
    asset = dg.AssetKey([connection.name, "profile_store"])

    # The checks open the store like a writer does (DuckDB's single-process lock), so they share
    # the writers' pool and never collide with a merge.
    @dg.asset_check(asset=asset, name="unique_profile_ids", pool="duckdb_write", description="Every profile id appears once in profiles.")
    def unique_profile_ids() -> dg.AssetCheckResult:
        with open_writer(project.store_path, project.catalog) as conn:
            return _result(checks.unique_profile_ids(conn))

    @dg.asset_check(asset=asset, name="events_have_profiles", pool="duckdb_write", description="No timeline event without its profile, no nested item without its event.")
    def events_have_profiles() -> dg.AssetCheckResult:
        with open_writer(project.store_path, project.catalog) as conn:
            return _result(checks.events_have_profiles(conn, project.catalog))

    @dg.asset_check(asset=asset, name="ledger_matches_store", pool="duckdb_write", description="Every profile's last delivery is a merged delivery in the ledger.")
    def ledger_matches_store() -> dg.AssetCheckResult:
        with open_writer(project.store_path, project.catalog) as conn:
            return _result(checks.ledger_matches_store(conn))

    @dg.asset_check(asset=asset, name="rejects_within_bounds", pool="duckdb_write", description="The latest delivery rejected at most 5% of its rows.")
    def rejects_within_bounds() -> dg.AssetCheckResult:
        with open_writer(project.store_path, project.catalog) as conn:
            return _result(checks.rejects_within_bounds(conn, connection.name), dg.AssetCheckSeverity.WARN)

    return [unique_profile_ids, events_have_profiles, ledger_matches_store, rejects_within_bounds]
