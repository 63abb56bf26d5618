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
from cdp_pipeline.deliveries import MergedFiles, SensorCursor, SightingsOnOurClock
from cdp_pipeline.dialects import sensor_interval_seconds
from cdp_pipeline.errors import TransientError
from cdp_pipeline.store.ledger import merged_file_identities


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
        merged = MergedFiles.of(merged_file_identities(project.published_store_path, connection.name))
        try:
            with getattr(context.resources, resource_key).open() as transport:
                found = importing.discover_deliveries(
                    project, connection, transport, policy, merged=merged, max_requests=settings.max_deliveries_per_tick
                )
        except TransientError as error:
            # A server that is down for a moment is not a failed tick; credentials and host keys are
            # (they raise), because skipping those would look exactly like "no new files".
            return dg.SkipReason(f"{connection.name}: listing failed for now, retried next tick: {error}")
        for problem in found.problems:
            context.log.warning(problem)
        cursor = policy.cursor.to_json()
        if not found.requests:
            return dg.SensorResult(skip_reason=dg.SkipReason(found.skip_reason() or "no new deliveries"), cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=request.run_key,
                    partition_key=request.partition_key,
                    tags={"cdp/connection": connection.name, "cdp/goal": request.goal},
                )
                for request in found.requests
            ],
            dynamic_partitions_requests=[partitions.build_add_request(sorted({request.partition_key for request in found.requests}))],
            cursor=cursor,
        )

    return deliveries_sensor
