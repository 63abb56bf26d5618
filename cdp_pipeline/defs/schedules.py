"""Schedules of a connection, from the seed's options (every X minutes, N times per day, days of
the week, days of the month, weekday of the month), each in its own time zone.

A schedule runs the connection's export goals ("scheduled batch export"); imports are driven by
the delivery sensor, which picks files up as soon as they are complete.
"""

from __future__ import annotations

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.scheduling import cron_specs, describe


def build_schedules(connection: Connection, export_job) -> list[dg.ScheduleDefinition]:
    schedules = []
    for index, schedule in enumerate(connection.schedules, start=1):
        specs = cron_specs(schedule)
        job = export_job
        chosen = [goal for goal in connection.export_goals if schedule.goals is None or goal.name in schedule.goals]
        if schedule.goals is not None:
            # A schedule naming some goals runs only their exports (import goals run on the sensor).
            keys = [dg.AssetKey([connection.name, f"{goal.name}_{kind}"]) for goal in chosen for kind in ("segment_export", "timeline_export") if kind == "segment_export" or goal.timeline]
            if not keys:
                continue
            job = dg.define_asset_job(
                f"{connection.name}_schedule_{index}_exports",
                selection=dg.AssetSelection.assets(*keys),
                executor_def=dg.in_process_executor,
                tags={"cdp/connection": connection.name},
            )
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{connection.name}_schedule_{index}",
                cron_schedule=[spec.cron for spec in specs] if len(specs) > 1 else specs[0].cron,
                execution_timezone=schedule.timezone,
                job=job,
                default_status=dg.DefaultScheduleStatus.RUNNING if connection.enabled else dg.DefaultScheduleStatus.STOPPED,
                description=f"{connection.name}: exports {describe(schedule)}.",
                tags={"cdp/connection": connection.name},
            )
        )
    return schedules
