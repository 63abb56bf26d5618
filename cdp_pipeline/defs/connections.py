"""Everything of every connection in the configuration: assets, jobs, sensor, schedules.

Adding a connection is adding a YAML document; this module needs no change.
"""

from __future__ import annotations

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.alerts import build_notification_sensors
from cdp_pipeline.defs.assets import build_connection_assets, deliveries_partitions
from cdp_pipeline.defs.checks import build_store_checks, build_store_checks_runs
from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.defs.run_now import build_run_now_job
from cdp_pipeline.defs.schedules import build_schedules
from cdp_pipeline.defs.sensors import build_delivery_sensor


def import_job_name(connection: str) -> str:
    return f"{connection}_import"


def export_job_name(connection: str) -> str:
    return f"{connection}_export"


def connection_definitions(project: ProjectConfig, connection: Connection) -> dg.Definitions:
    assets = build_connection_assets(project, connection)
    partitions = deliveries_partitions(connection.name)
    import_keys = [dg.AssetKey([connection.name, step]) for step in ("fetched_files", "decrypted_files", "import_tables", "profile_store")]
    import_job = dg.define_asset_job(
        import_job_name(connection.name),
        # The store checks run in a run of their own after a merge succeeded (defs/checks.py): planned
        # here, a failed merge showed them as failed although none had run.
        selection=dg.AssetSelection.assets(*import_keys).without_checks(),
        # In process by default (small steps, no per-step start-up); CDP_EXECUTOR=multiprocess runs each
        # step in its own process, handing over through the delivery's work folder (defs/executors.py).
        executor_def=job_executor(),
        description=f"{connection.description or connection.name}: import one delivery (choose the delivery partition).",
        tags={"cdp/connection": connection.name, **({"cdp/labels": ",".join(connection.labels)} if connection.labels else {})},
    )
    export_assets = [a for a in assets if a.keys.isdisjoint(import_keys)]
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [import_job]
    export_job = None
    if export_assets:
        export_job = dg.define_asset_job(
            export_job_name(connection.name),
            selection=dg.AssetSelection.assets(*export_assets),
            executor_def=job_executor(),
            description=f"{connection.description or connection.name}: run now, export the segments and timeline events.",
            tags={"cdp/connection": connection.name},
        )
        jobs.append(export_job)
    run_now_job = build_run_now_job(project, connection)
    jobs.append(run_now_job)
    schedules = build_schedules(connection, run_now_job)
    checks_job, checks_sensor = build_store_checks_runs(connection, [import_job, run_now_job])
    return dg.Definitions(
        assets=assets,
        asset_checks=build_store_checks(project, connection),
        jobs=[*jobs, checks_job],
        sensors=[build_delivery_sensor(project, connection, import_job, partitions), *build_notification_sensors(connection, jobs), checks_sensor],
        schedules=schedules,
    )


@dg.definitions
def defs() -> dg.Definitions:
    project = project_config()
    return dg.Definitions.merge(*(connection_definitions(project, c) for c in project.connections.values()))


def one_connection_definitions(name: str) -> dg.Definitions:
    """The definitions of one connection with its resources, built by the same functions as the
    code location's, for a command that runs that connection's jobs in its own process.

    ``load_from_defs_folder`` also loads every installed package registered as a Dagster component
    library (``dagster_aws`` with boto3 among them), to describe them to the UI: about 1 s of CPU
    at every command line start, for nothing a run of one connection uses."""
    from cdp_pipeline.defs.resources import connection_resources

    project = project_config()
    return dg.Definitions.merge(
        connection_definitions(project, project.connections[name]), dg.Definitions(resources=connection_resources(project, only=name))
    )
