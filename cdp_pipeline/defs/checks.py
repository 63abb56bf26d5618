"""Asset checks on each connection's profile_store: the store's invariants after every merge."""

# No postponed annotations here: Dagster reads the check body's `context` annotation at definition time.
import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.store import checks
from cdp_pipeline.store.database import open_writer

# name → (description, severity); what each evaluates is the engine's ``checks.STORE_CHECKS``.
STORE_CHECKS = {
    "unique_profile_ids": ("Every profile id appears once in profiles.", dg.AssetCheckSeverity.ERROR),
    "events_have_profiles": ("No timeline event without its profile, no nested item without its event.", dg.AssetCheckSeverity.ERROR),
    "ledger_matches_store": ("Every profile's last delivery is a merged delivery in the ledger.", dg.AssetCheckSeverity.ERROR),
    "rejects_within_bounds": ("The latest delivery rejected at most 5% of its rows.", dg.AssetCheckSeverity.WARN),
}


def check_evaluation(connection: str, name: str, outcome: checks.CheckOutcome) -> dg.AssetCheckEvaluation:
    """A check evaluated outside an asset check's own step (the Run now op evaluates all four in
    its last store session): recorded like the asset check's result, so the UI shows it on the
    same check of ``profile_store``."""
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey([connection, "profile_store"]), check_name=name, passed=outcome.passed,
        description=outcome.description, metadata=outcome.metadata, severity=STORE_CHECKS[name][1],
    )


def build_store_checks(project: ProjectConfig, connection: Connection) -> list[dg.AssetChecksDefinition]:
    """The four checks as one step that opens the store once: each open of a writer costs a
    connect, the schema check and a checkpoint at close, and the checks run after every merge a
    sensor imports (a Run now shares its own last session instead)."""
    profile_store = dg.AssetKey([connection.name, "profile_store"])
    specs = [dg.AssetCheckSpec(name, asset=profile_store, description=description) for name, (description, _) in STORE_CHECKS.items()]

    # The checks open the store like a writer does (DuckDB's single-process lock), so they share
    # the writers' pool and never collide with a merge. Subsettable: a check launched alone from
    # the UI evaluates alone.
    @dg.multi_asset_check(name=f"{connection.name}__store_checks", specs=specs, can_subset=True, pool="duckdb_write")
    def store_checks(context: dg.AssetCheckExecutionContext):
        chosen = [key.name for key in context.selected_asset_check_keys]
        with open_writer(project.store_location, project.catalog) as conn:
            outcomes = {name: checks.STORE_CHECKS[name](conn, project.catalog, connection.name) for name in STORE_CHECKS if name in chosen}
        for name, outcome in outcomes.items():
            yield dg.AssetCheckResult(
                asset_key=profile_store, check_name=name, passed=outcome.passed,
                description=outcome.description, metadata=outcome.metadata, severity=STORE_CHECKS[name][1],
            )

    return [store_checks]


def store_checks_job_name(connection: str) -> str:
    return f"{connection}_store_checks"


def build_store_checks_runs(connection: Connection, monitored_jobs: list) -> "tuple[dg.UnresolvedAssetJobDefinition, dg.SensorDefinition]":
    """The store checks run in their own run, requested when an import run has merged a delivery
    (a Run now evaluates them itself and records their evaluations: no second run then).

    Inside the import job they were planned with the merge: when the merge failed they never ran,
    yet the UI showed all four as failed ("0 / 4 passed"), which is not true. Running them after a
    successful merge means every evaluation shown is one that happened."""
    profile_store = dg.AssetKey([connection.name, "profile_store"])
    job = dg.define_asset_job(
        store_checks_job_name(connection.name),
        selection=dg.AssetSelection.checks_for_assets(profile_store),
        executor_def=job_executor(),
        description=f"{connection.name}: the store's invariants, checked after each run that merged a delivery.",
        tags={"cdp/connection": connection.name},
    )

    @dg.run_status_sensor(
        name=f"{connection.name}_store_checks_after_merge",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=monitored_jobs,
        request_job=job,
        default_status=dg.DefaultSensorStatus.RUNNING if connection.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Runs {store_checks_job_name(connection.name)} after a successful run of {connection.name} that merged a delivery.",
    )
    def after_merge(context: dg.RunStatusSensorContext):
        merged = context.instance.get_records_for_run(run_id=context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        if not any(record.asset_key == profile_store for record in merged):
            return dg.SkipReason(f"run {context.dagster_run.run_id} merged no delivery")
        if context.instance.get_records_for_run(run_id=context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=1).records:
            # A Run now evaluates the checks itself, after its last merge, in its own process.
            return dg.SkipReason(f"run {context.dagster_run.run_id} evaluated the store checks itself")
        return dg.RunRequest(run_key=f"checks-after-{context.dagster_run.run_id}", tags={"cdp/connection": connection.name})

    return job, after_merge
