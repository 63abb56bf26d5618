"""Schedules of a connection, from the seed's options (every X minutes, N times per day, days of
the week, days of the month, weekday of the month), each in its own time zone.

A schedule runs the goals it names, all goals when it names none, as BlueConic's scheduled run
of a connection does: its import goals through ``<connection>_schedule_N_imports`` (one run per
complete delivery, the same run keys and ledger as the sensor, so the two never import a file
twice) and its export goals through ``<connection>_schedule_N``.
"""

from __future__ import annotations

import dagster as dg

from cdp_pipeline import importing
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.config.schedules import Schedule
from cdp_pipeline.defs.resources import transport_key
from cdp_pipeline.deliveries import TwoListingsInTick, partition_set_name
from cdp_pipeline.errors import TransientError
from cdp_pipeline.scheduling import cron_specs, describe

# The second listing of a scheduled import comes this long after the first (at most): long enough
# for an upload in progress to change size, short enough for Dagster's schedule evaluation timeout.
# A server clock running behind makes a file being uploaded look old, so the mtime alone never decides.
SECOND_LISTING_AFTER_SECONDS = 10.0


def _import_schedule(project: ProjectConfig, connection: Connection, schedule: Schedule, index: int, import_job, cron, status) -> dg.ScheduleDefinition:
    import_goals = set(schedule.goals) if schedule.goals is not None else None
    resource_key = transport_key(connection.name)
    sources = importing.connection_sources(project, connection)
    window = max((source.listing_goal.files.readiness.stable_seconds for source in sources), default=30)

    @dg.schedule(
        name=f"{connection.name}_schedule_{index}_imports",
        cron_schedule=cron,
        execution_timezone=schedule.timezone,
        job=import_job,
        default_status=status,
        required_resource_keys={resource_key},
        description=f"{connection.name}: imports complete deliveries {describe(schedule)}.",
        tags={"cdp/connection": connection.name},
    )
    def import_schedule(context: dg.ScheduleEvaluationContext):
        # A schedule keeps no state between ticks, so completeness is judged within the tick
        # (TwoListingsInTick): two listings a few seconds apart, and an mtime older than the window.
        policy = TwoListingsInTick(window=window, pause_seconds=SECOND_LISTING_AFTER_SECONDS)
        try:
            with getattr(context.resources, resource_key).open() as transport:
                found = importing.discover_deliveries(project, connection, transport, policy)
        except TransientError as error:
            return dg.SkipReason(f"{connection.name}: listing failed for now, retried next time: {error}")
        requests = [request for request in found.requests if import_goals is None or request.goal in import_goals]
        if not requests:
            return dg.SkipReason(found.skip_reason() or "no complete deliveries")
        context.instance.add_dynamic_partitions(partition_set_name(connection.name), [request.partition_key for request in requests])
        return [
            dg.RunRequest(
                run_key=request.run_key,
                partition_key=request.partition_key,
                tags={"cdp/connection": connection.name, "cdp/goal": request.goal},
            )
            for request in requests
        ]

    return import_schedule


def build_schedules(project: ProjectConfig, connection: Connection, import_job, export_job) -> list[dg.ScheduleDefinition]:
    schedules = []
    status = dg.DefaultScheduleStatus.RUNNING if connection.enabled else dg.DefaultScheduleStatus.STOPPED
    import_names = {source.goal_name for source in importing.connection_sources(project, connection)}
    for index, schedule in enumerate(connection.schedules, start=1):
        specs = cron_specs(schedule)
        cron = [spec.cron for spec in specs] if len(specs) > 1 else specs[0].cron
        named = set(schedule.goals) if schedule.goals is not None else None
        if named is None or named & import_names:
            schedules.append(_import_schedule(project, connection, schedule, index, import_job, cron, status))
        chosen = [goal for goal in connection.export_goals if named is None or goal.name in named]
        if export_job is None or not chosen:
            continue
        job = export_job
        if named is not None:
            keys = [
                dg.AssetKey([connection.name, f"{goal.name}_{kind}"])
                for goal in chosen
                for kind in ("segment_export", "timeline_export")
                if kind == "segment_export" or goal.timeline
            ]
            job = dg.define_asset_job(
                f"{connection.name}_schedule_{index}_exports",
                selection=dg.AssetSelection.assets(*keys),
                executor_def=dg.in_process_executor,
                tags={"cdp/connection": connection.name},
            )
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{connection.name}_schedule_{index}",
                cron_schedule=cron,
                execution_timezone=schedule.timezone,
                job=job,
                default_status=status,
                description=f"{connection.name}: exports {describe(schedule)}.",
                tags={"cdp/connection": connection.name},
            )
        )
    return schedules
