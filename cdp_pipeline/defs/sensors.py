"""One sensor per connection: new deliveries in the remote folder become partitions and runs.

Never a wall-clock cursor (teamster#4993): eligibility comes from what the listing shows, the
cursor only remembers when we first saw each file at its current size/mtime, so stability is
measured on our clock between polls (reliability #1, #69). The run_key carries the listing
identity, so a re-upload with changes runs again while an unchanged file never does.
"""


import json
import time

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.dialects.flow import scan as dialect_scan
from cdp_pipeline.deliveries import scan_deliveries
from cdp_pipeline.defs.resources import transport_key
from cdp_pipeline.store.ledger import merged_file_identities
from cdp_pipeline.errors import TransientError
from cdp_pipeline.transports.base import RemoteFile


def build_delivery_sensor(project: ProjectConfig, connection: Connection, import_job, partitions: dg.DynamicPartitionsDefinition) -> dg.SensorDefinition:
    settings = connection.sensor
    running = connection.enabled and settings.enabled
    resource_key = transport_key(connection.name)

    @dg.sensor(
        name=f"{connection.name}_deliveries",
        job=import_job,
        minimum_interval_seconds=settings.minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={resource_key},
        description=(
            f"Lists the remote folders of {connection.name}, waits until each delivery is complete (stable size and "
            "mtime, or a marker file), adds one partition per delivery and requests one run per new content version."
        ),
    )
    def deliveries_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        previous: dict[str, list] = json.loads(context.cursor).get("seen", {}) if context.cursor else {}
        now = time.time()
        seen: dict[str, list] = {}
        run_requests: list[dg.RunRequest] = []
        waiting: list[str] = []
        # The ledger, read from the analysts' copy: files merged before (same path, size and mtime)
        # are not requested again even when the run keys are gone (a new DAGSTER_HOME, a reset cursor).
        merged = merged_file_identities(project.published_store_path, connection.name)
        already: list[str] = []

        def is_merged(remote: RemoteFile) -> bool:
            return bool(merged) and (remote.path, remote.size, round(remote.mtime, 3)) in merged

        def is_new(delivery) -> bool:
            if merged and all(is_merged(f) for f in delivery.files.values()):
                already.append(delivery.partition_key)
                return False
            return True

        def remember(remote: RemoteFile) -> None:
            # Merged files stay out of the cursor: with after_import "leave" a folder keeps every
            # file ever delivered, and a cursor holding all of them would be rewritten every tick.
            if not is_merged(remote):
                first = previous.get(remote.path)
                seen[remote.path] = first if first and first[0] == remote.identity else [remote.identity, now]

        def is_stable(remote: RemoteFile, stable_for: float) -> bool:
            if stable_for == 0 or is_merged(remote):
                return True  # a merged file is complete; is_new then reports it as already merged
            first = previous.get(remote.path)
            return bool(first and first[0] == remote.identity and now - first[1] >= stable_for)
        try:
            with getattr(context.resources, resource_key).open() as transport:
                for goal in connection.import_goals:
                    stable_for = goal.files.readiness.stable_seconds

                    listing = transport.list_files(goal.files.directory)
                    for remote in listing:
                        remember(remote)
                    scan = scan_deliveries(connection.name, goal, listing, lambda remote, stable_for=stable_for: is_stable(remote, stable_for))
                    waiting += scan.waiting + scan.problems
                    for problem in scan.problems:
                        context.log.warning(problem)
                    for delivery in filter(is_new, scan.deliveries):
                        run_requests.append(
                            dg.RunRequest(
                                run_key=f"{delivery.partition_key}@{delivery.listing_identity}",
                                partition_key=delivery.partition_key,
                                tags={"cdp/connection": connection.name, "cdp/goal": goal.name},
                            )
                        )
                dialect = project.dialects.get(connection.name)
                if dialect is not None:
                    # A dialect (SARE pairs, Netmera files) lists its own folders; stability is
                    # judged the same way, with the dialect's window.
                    def dialect_ready(remote: RemoteFile, stable_for=dialect.stable_seconds) -> bool:
                        remember(remote)
                        return is_stable(remote, stable_for)

                    for goal, scan in dialect_scan(connection.name, dialect, transport, dialect_ready, now):
                        waiting += scan.waiting + scan.problems
                        for problem in scan.problems:
                            context.log.warning(problem)
                        run_requests += [
                            dg.RunRequest(
                                run_key=f"{delivery.partition_key}@{delivery.listing_identity}",
                                partition_key=delivery.partition_key,
                                tags={"cdp/connection": connection.name, "cdp/goal": goal.name},
                            )
                            for delivery in filter(is_new, scan.deliveries)
                        ]
        except TransientError as error:
            # A server that is down for a moment is not a failed tick; credentials and host keys are
            # (they raise), because skipping those would look exactly like "no new files".
            return dg.SkipReason(f"{connection.name}: listing failed for now, retried next tick: {error}")
        run_requests = run_requests[: settings.max_deliveries_per_tick]
        keys = sorted({request.partition_key for request in run_requests})
        cursor = json.dumps({"seen": seen})
        if not run_requests:
            reasons = waiting[:5] + ([f"{len(already)} delivery(ies) already merged: {', '.join(already[:3])}"] if already else [])
            return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(reasons) or "no new deliveries"), cursor=cursor)
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[partitions.build_add_request(keys)],
            cursor=cursor,
        )

    return deliveries_sensor
