"""Schedules of a connection, from the seed's options (every X minutes, N times per day, days of
the week, days of the month, weekday of the month), each in its own time zone.

A tick launches ONE run of ``<connection>_run_now`` for the goals the schedule names (all goals
when it names none), as BlueConic's scheduled run of a connection does: imports of groups, then
profiles, then the dialect's, and the exports after them in the same run. Two schedules firing on
the same cron (one importing, one exporting) let the export finish before that tick's imports
had started, and the data went out a day late. The run uses the same ledger and partition keys as
the sensor, so the two never import a file twice.
"""

from __future__ import annotations

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.defs.run_now import run_now_op_name
from cdp_pipeline.scheduling import cron_specs, describe


def build_schedules(connection: Connection, run_now_job: dg.JobDefinition) -> list[dg.ScheduleDefinition]:
    schedules = []
    status = dg.DefaultScheduleStatus.RUNNING if connection.enabled else dg.DefaultScheduleStatus.STOPPED
    op_name = run_now_op_name(connection.name)
    for index, schedule in enumerate(connection.schedules, start=1):
        specs = cron_specs(schedule)
        cron = [spec.cron for spec in specs] if len(specs) > 1 else specs[0].cron
        # A schedule keeps no state between ticks, so completeness is judged within the run: two
        # listings a few seconds apart, and an mtime older than the goals' stability window.
        config = {"readiness": "two_listings", **({"goals": list(schedule.goals)} if schedule.goals is not None else {})}
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{connection.name}_schedule_{index}",
                cron_schedule=cron,
                execution_timezone=schedule.timezone,
                job=run_now_job,
                run_config={"ops": {op_name: {"config": config}}},
                default_status=status,
                description=f"{connection.name}: imports complete deliveries, then exports, {describe(schedule)}.",
                tags={"cdp/connection": connection.name, "cdp/schedule": f"{connection.name}_schedule_{index}"},
            )
        )
    return schedules
