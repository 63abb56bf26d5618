"""One sensor per connection: new deliveries in the remote folders become partitions and runs.

The rules (when a file is complete, the cursor, sliced listings, the ledger) are the engine's
``discover()`` with the ``SightingsOnOurClock`` readiness policy; this module only translates
its result into Dagster's. Never a wall-clock cursor (teamster#4993): eligibility comes from what
the listing shows, stability is measured on our clock between ticks, and the run key carries the
listing identity, so a re-upload with changes runs again while an unchanged file never does.
"""

import dagster as dg

from cdp_pipeline import importing
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.resources import transport_key
from cdp_pipeline.deliveries import SensorCursor, SightingsOnOurClock
from cdp_pipeline.dialects import sensor_interval_seconds
from cdp_pipeline.errors import TransientError


def build_delivery_sensor(project: ProjectConfig, connection: Connection, import_job, partitions: dg.DynamicPartitionsDefinition) -> dg.SensorDefinition:
    settings = connection.sensor
    running = connection.enabled and settings.enabled
    resource_key = transport_key(connection.name)

    @dg.sensor(
        name=f"{connection.name}_deliveries",
        job=import_job,
        minimum_interval_seconds=sensor_interval_seconds(connection, project.dialects.get(connection.name)),
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={resource_key},
        description=(
            f"Lists the remote folders of {connection.name}, waits until each delivery is complete (stable size and "
            "mtime, or a marker file), adds one partition per delivery and requests one run per new content version."
        ),
    )
    def deliveries_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        policy = SightingsOnOurClock(previous=SensorCursor.from_json(context.cursor), max_keys_per_tick=settings.max_keys_per_tick)
        # The ledger is read from the analysts' copy, so the sensor never waits for the writer's lock.
        merged = importing.merged_under_current_configuration(project, connection)
        try:
            with getattr(context.resources, resource_key).open() as transport:
                found = importing.discover_deliveries(
                    project, connection, transport, policy, merged=merged, max_requests=settings.max_deliveries_per_tick
                )
        except TransientError as error:
            # A server that is down for a moment is not a failed tick; credentials and host keys are
            # (they raise), because skipping those would look exactly like "no new files".
            return dg.SkipReason(f"{connection.name}: listing failed for now, retried next tick: {error}")
        # The tick's log says what waits and why (the UI shows it under the tick), not only the
        # daemon's terminal.
        for reason in found.waiting:
            context.log.info(f"waiting: {reason}")
        for problem in found.problems:
            context.log.warning(problem)
        if found.already_merged:
            context.log.info(f"{len(found.already_merged)} delivery(ies) already merged: {', '.join(found.already_merged)}")
        cursor = policy.cursor.to_json()
        ran_before = earlier_runs(context.instance, [request.run_key for request in found.requests])
        for request in found.requests:
            if request.run_key in ran_before:
                context.log.info(ran_before_reason(request.partition_key, ran_before[request.run_key]))
        requests = [request for request in found.requests if request.run_key not in ran_before]
        if not requests:
            reasons = [ran_before_reason(request.partition_key, ran_before[request.run_key]) for request in found.requests]
            why = "; ".join(part for part in [found.skip_reason(), *reasons[:5]] if part)
            return dg.SensorResult(skip_reason=dg.SkipReason(why or "no files in the source folders"), cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=request.run_key,
                    partition_key=request.partition_key,
                    tags={"cdp/connection": connection.name, "cdp/goal": request.goal},
                )
                for request in requests
            ],
            dynamic_partitions_requests=[partitions.build_add_request(sorted({request.partition_key for request in requests}))],
            cursor=cursor,
        )

    return deliveries_sensor


def earlier_runs(instance: dg.DagsterInstance, run_keys: list[str]) -> dict[str, dg.DagsterRun]:
    """The runs already launched under these run keys. Dagster drops a request whose run key was
    used before without a word; naming them is what lets a tick that requests nothing say why."""
    found = {}
    for run_key in run_keys:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
        if runs:
            found[run_key] = runs[0]
    return found


def ran_before_reason(partition_key: str, run: dg.DagsterRun) -> str:
    if run.status == dg.DagsterRunStatus.FAILURE:
        return (
            f"{partition_key}: this version of its files failed in run {run.run_id}; it is requested again when a file "
            "changes (a corrected upload), or re-execute that run after fixing the cause"
        )
    if run.is_finished:
        return f"{partition_key}: this version of its files ran in run {run.run_id} ({run.status.value}); it is not requested twice"
    return f"{partition_key}: run {run.run_id} for this version of its files has not finished ({run.status.value})"
