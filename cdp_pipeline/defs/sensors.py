"""One sensor per connection: new deliveries in the remote folder become partitions and runs.

Never a wall-clock cursor (teamster#4993): eligibility comes from what the listing shows, the
cursor only remembers when we first saw each file at its current size/mtime, so stability is
measured on our clock between polls (reliability #1, #69). The run_key carries the listing
identity, so a re-upload with changes runs again while an unchanged file never does.
"""


import json
import posixpath
import time

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.resources import transport_key
from cdp_pipeline.deliveries import goal_claims, scan_deliveries
from cdp_pipeline.dialects.flow import scan as dialect_scan
from cdp_pipeline.errors import TransientError
from cdp_pipeline.store.ledger import merged_file_identities
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
        state = json.loads(context.cursor) if context.cursor else {}
        # path -> [identity, first seen, directory, last seen] (older cursors hold the first two only)
        previous: dict[str, list] = state.get("seen", {})
        slices: dict[str, str | None] = state.get("slices", {})
        now = time.time()
        seen: dict[str, list] = {}
        next_slices: dict[str, str | None] = {}
        listings: dict[str, list[RemoteFile]] = {}
        goals_by_directory: dict[str, list] = {}
        for goal in connection.import_goals:
            goals_by_directory.setdefault(goal.files.directory, []).append(goal)
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

        def remember(remote: RemoteFile, directory: str, observed: bool = True, wanted: bool | None = None) -> None:
            # Merged files and files no goal of the folder wants stay out of the cursor: with
            # after_import "leave" a folder keeps every file ever delivered, and a cursor holding
            # all of them would be rewritten every tick.
            if wanted is None:
                wanted = any(goal_claims(goal, remote.name) for goal in goals_by_directory.get(directory, ()))
            if is_merged(remote) or not wanted:
                return
            entry = previous.get(remote.path)
            if entry and entry[0] == remote.identity:
                last = now if observed else (entry[3] if len(entry) > 3 else entry[1])
                seen[remote.path] = [entry[0], entry[1], directory, last]
            else:
                seen[remote.path] = [remote.identity, now, directory, now]

        def is_stable(remote: RemoteFile, stable_for: float) -> bool:
            """Seen with the same size and mtime at two listings at least ``stable_for`` apart."""
            if stable_for == 0 or is_merged(remote):
                return True  # a merged file is complete; is_new then reports it as already merged
            entry = seen.get(remote.path)
            return bool(entry and entry[0] == remote.identity and entry[3] - entry[1] >= stable_for)

        def list_directory(transport, directory: str) -> list[RemoteFile]:
            """The directory's files; a large S3 prefix a bounded slice per tick (reliability #9).

            S3 lists 1,000 keys per request: a prefix of 100,000 objects would cost 100 requests
            on every tick. With ``list_files_after`` the sensor walks the prefix ``max_keys_per_tick``
            keys at a time and starts over at the end, so a new key is seen within one walk. The
            files of earlier slices that are not yet merged are carried in the cursor, so a root
            file and its linked file can meet although they were listed on different ticks; a
            carried file counts as stable only from two real sightings, never from the calendar.
            """
            if directory in listings:  # goals that share a folder share its listing
                return listings[directory]
            listings[directory] = _list_directory(transport, directory)
            return listings[directory]

        def _list_directory(transport, directory: str) -> list[RemoteFile]:
            if not hasattr(transport, "list_files_after"):
                listing = transport.list_files(directory)
                for remote in listing:
                    remember(remote, directory)
                return listing
            after = slices.get(directory)
            listing, continuation = transport.list_files_after(directory, after, settings.max_keys_per_tick)
            next_slices[directory] = continuation
            for remote in listing:
                remember(remote, directory)
            if after is None and continuation is None:
                return listing  # the whole prefix fitted in one slice
            listed = {remote.path for remote in listing}
            carried = []
            for path, entry in previous.items():
                if len(entry) < 4 or entry[2] != directory or path in listed:
                    continue
                if (after is None or path > after) and (continuation is None or path <= continuation):
                    continue  # this slice covered its key and did not list it: the file is gone
                size, mtime, etag = entry[0].split(":", 2)
                remote = RemoteFile(path=path, size=int(size), mtime=float(mtime), etag=etag or None)
                remember(remote, directory, observed=False)
                carried.append(remote)
            return listing + carried
        try:
            with getattr(context.resources, resource_key).open() as transport:
                for goal in connection.import_goals:
                    stable_for = goal.files.readiness.stable_seconds

                    listing = list_directory(transport, goal.files.directory)
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
                        # The dialect asks only about files it wants.
                        remember(remote, posixpath.dirname(remote.path), wanted=True)
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
        cursor = json.dumps({"seen": seen, "slices": next_slices})
        if not run_requests:
            reasons = waiting[:5] + ([f"{len(already)} delivery(ies) already merged: {', '.join(already[:3])}"] if already else [])
            return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(reasons) or "no new deliveries"), cursor=cursor)
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[partitions.build_add_request(keys)],
            cursor=cursor,
        )

    return deliveries_sensor
