"""``<connection>_run_now``: the seeds' "Run now" in the UI, and what the connection's schedules launch.

One op calls the engine's ``connection_run.run_connection`` (imports in goal order, then exports)
and turns its result into Dagster events: each delivery's ``profile_store`` materialisation under
its partition (the same partition keys as the sensor's runs, so its history stays in one place),
each export's, the store checks' evaluations after a merge (on ``profile_store``'s asset checks,
as their own run would record them), and a failure of the run naming every cause.
"""

from typing import Literal

import dagster as dg

from cdp_pipeline import connection_run
from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.assets import markdown_preview, per_goal, segment_export_metadata, timeline_export_metadata
from cdp_pipeline.defs.checks import check_evaluation
from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.defs.resources import export_transport_key, pgp_key, transport_key
from cdp_pipeline.deliveries import DeliveryRequest, partition_set_name


class RunNowConfig(dg.Config):
    #: goal names to run (import and export); none runs every goal of the connection.
    goals: list[str] | None = None
    #: "now": every listed delivery is complete (the operator's Run now); "two_listings": a
    #: schedule's tick, a file must stay unchanged between two listings and be old enough.
    readiness: Literal["now", "two_listings"] = "now"
    #: export every segment member, not only the profiles changed since the last export.
    full_export: bool = False


#: how the op's log lines about deliveries that wait, and about deliveries the ledger has merged
#: already, begin (the CLI prints them from the run's log, or itself when no run was needed).
WAITING_PREFIX = connection_run.WAITING_PREFIX
ALREADY_MERGED_PREFIX = connection_run.ALREADY_MERGED_PREFIX
#: how the op's line begins when the store checks could not be evaluated (the CLI prints it).
CHECKS_NOT_RUN_PREFIX = "store checks could not run: "


def run_now_job_name(connection: str) -> str:
    return f"{connection}_run_now"


def run_now_op_name(connection: str) -> str:
    return f"{connection}__run_now"


def build_run_now_job(project: ProjectConfig, connection: Connection) -> dg.JobDefinition:
    name = connection.name
    source_key = transport_key(name)
    target_keys = {goal.name: export_transport_key(name, goal.name) if goal.target.location else source_key for goal in connection.export_goals}

    @dg.op(
        name=run_now_op_name(name),
        # The whole run holds the store's one writer slot, as the sensor's merge and export steps
        # do: the two never write the store at the same time.
        pool="duckdb_write",
        out={},
        required_resource_keys={source_key, pgp_key(name), *target_keys.values()},
        description=f"{name}: import every complete delivery in goal order (groups, profiles, then the dialect's), then export.",
    )
    def run_now(context: dg.OpExecutionContext, config: RunNowConfig):
        pgp = getattr(context.resources, pgp_key(name))

        def open_target(goal: ExportGoal) -> connection_run.OpenTransport:
            return getattr(context.resources, target_keys[goal.name]).open

        def register(requests: list[DeliveryRequest]) -> None:
            if requests:
                context.instance.add_dynamic_partitions(partition_set_name(name), sorted({r.partition_key for r in requests}))

        def log_import(item: connection_run.DeliveryRun) -> None:
            for warning in item.warnings:
                context.log.warning(warning)
            if item.quarantined:
                context.log.warning(f"quarantined {item.quarantined}")
            if item.status == "failed":
                context.log.error(f"{item.partition_key}: {item.error}")
            else:
                context.log.info(f"{item.partition_key}: {item.status}")

        result = connection_run.run_connection(
            project, connection,
            open_source=getattr(context.resources, source_key).open,
            open_target=open_target,
            decrypt_keyring=pgp.keyring if pgp.can_decrypt else None,
            encrypt_keyring=pgp.keyring if pgp.public_key else None,
            run_id=context.run.run_id,
            goals=config.goals,
            policy=connection_run.readiness_policy(project, connection, scheduled=config.readiness == "two_listings"),
            full_export=config.full_export,
            on_discovered=register,
            on_import=log_import,
        )
        for reason in result.waiting:
            context.log.info(f"{WAITING_PREFIX}{reason}")
        for key in result.already_merged:
            context.log.info(f"{ALREADY_MERGED_PREFIX}{key}")
        if result.store_checks_error is not None:
            context.log.error(f"{CHECKS_NOT_RUN_PREFIX}{result.store_checks_error}")
        yield from run_events(name, result)

    @dg.job(
        name=run_now_job_name(name),
        executor_def=job_executor(),
        description=(
            f"{connection.description or name}: Run now. Imports every complete delivery of the source in goal order "
            "(groups, then profiles, then the dialect's), then runs the export goals. Config `goals` limits it to some goals."
        ),
        tags={"cdp/connection": name},
    )
    def run_now_job() -> None:
        run_now()

    return run_now_job


def run_events(connection: str, result: connection_run.ConnectionRun):
    """The run's result as Dagster events: a materialisation per delivery merged or skipped (under
    its partition, as the sensor's runs record it) and per export; an observation, with its cause,
    per delivery or export that failed (nothing was materialised, yet the partition's history
    shows the attempt); then a failure naming every cause."""
    for item in result.imports:
        if item.status == "failed":
            yield dg.AssetObservation(
                asset_key=[connection, "profile_store"], partition=item.partition_key,
                metadata={"status": "failed", "run_key": item.run_key, "error": dg.MetadataValue.text(item.error or "")},
            )
        else:
            yield dg.AssetMaterialization(
                asset_key=[connection, "profile_store"],
                partition=item.partition_key,
                metadata={
                    **per_goal(item.goal, item.counts),
                    "status": item.status,
                    "run_key": item.run_key,
                    "last_profiles": dg.MetadataValue.json(item.last_profiles),
                    **({"created_properties": dg.MetadataValue.json(item.created_properties)} if item.created_properties else {}),
                    # Customer values in Dagster's event log only when store.ui_preview_rows opts in.
                    **({"preview": dg.MetadataValue.md(markdown_preview(item.preview, len(item.preview)))} if item.preview is not None else {}),
                },
            )
    for export in result.exports:
        segment_key = dg.AssetKey([connection, f"{export.goal}_segment_export"])
        if export.outcome is None:
            yield dg.AssetObservation(asset_key=segment_key, metadata={"status": "failed", "error": dg.MetadataValue.text(export.error or "")})
            continue
        yield dg.AssetMaterialization(asset_key=segment_key, metadata=segment_export_metadata(export.outcome))
        if export.outcome.timeline_files:
            yield dg.AssetMaterialization(asset_key=[connection, f"{export.goal}_timeline_export"], metadata=timeline_export_metadata(export.outcome))
        if export.error is not None:
            # Delivered, but not recorded in the store's history: a materialisation AND the failure.
            yield dg.AssetObservation(asset_key=segment_key, metadata={"status": "failed", "error": dg.MetadataValue.text(export.error)})
    # The store checks of profile_store, evaluated after the run's merges (no run of their own).
    for check_name, outcome in result.store_checks.items():
        yield check_evaluation(connection, check_name, outcome)
    causes = [f"{item.partition_key}: {item.error}" for item in result.imports if item.error] + [e.error for e in result.exports if e.error]
    if result.publish_error is not None:
        causes.append(result.publish_error)
    if causes:
        raise dg.Failure(description="\n".join(causes), allow_retries=False)
