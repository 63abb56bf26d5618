"""One run of a connection, the seeds' "Run now" and a scheduled tick: every complete delivery
imported in goal order (groups, then profiles, then the dialect's), then the export goals.

The seeds say categories always run in the order listed: import groups, import profiles, export
profiles. Doing all of it in ONE call, imports first, is what keeps that order whatever starts
the run (the UI's ``<connection>_run_now`` job, a schedule's tick, the CLI): an export can never
start before the imports of its tick have ended, so it holds the deliveries that were complete
when the tick began.

The steps are the ones the partitioned assets call (``importing``, ``exporting``), with the same
partition and run keys, and the ledger decides what is merged already, so a delivery the sensor
also sees is never merged twice. This module never imports Dagster: the caller passes how to
open the transports and keyrings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from cdp_pipeline import exporting, importing
from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.deliveries import DeliveryRequest, ListedNow, ReadinessPolicy, TwoListingsInTick
from cdp_pipeline.disk_space import DiskSpaceError
from cdp_pipeline.errors import CdpError, InputError
from cdp_pipeline.exporting import ExportOutcome
from cdp_pipeline.idle_exports import IdleExport, idle_exports, sends_without_change
from cdp_pipeline.store.checks import CheckOutcome, evaluate_store_checks
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.publish import publish_copy
from cdp_pipeline.store.runs import record_run
from cdp_pipeline.tables.staged import records_as_stored
from cdp_pipeline.transports.base import Transport

OpenTransport = Callable[[], AbstractContextManager[Transport]]
KeyringFactory = Callable[[], AbstractContextManager[Any]]


# The second listing of a scheduled tick comes this long after the first: long enough for an upload
# in progress to change size. A server clock running behind makes a file being uploaded look old,
# so the mtime alone never decides.
SECOND_LISTING_AFTER_SECONDS = 10.0

#: how a run's lines about deliveries that wait, and about deliveries the ledger has merged
#: already, begin (the Run now job's log lines, and the CLI's when no run was needed).
WAITING_PREFIX = "waiting: "
ALREADY_MERGED_PREFIX = "already merged (not fetched again): "


def readiness_policy(project: ProjectConfig, connection: Connection, *, scheduled: bool) -> ReadinessPolicy:
    """When a delivery counts as complete in a run: for "Run now" whatever is listed (the operator
    says it is complete); for a schedule's tick, which keeps no state between ticks, unchanged
    between two listings a few seconds apart and older than the goals' stability window."""
    if not scheduled:
        return ListedNow()
    sources = importing.connection_sources(project, connection)
    window = max((source.listing_goal.files.readiness.stable_seconds for source in sources), default=30)
    return TwoListingsInTick(window=window, pause_seconds=SECOND_LISTING_AFTER_SECONDS)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class DeliveryRun:
    """What one delivery did in a connection run."""

    partition_key: str
    run_key: str
    goal: str
    #: merged | skipped (same content and configuration already merged) | failed
    status: str
    counts: dict = field(default_factory=dict)
    last_profiles: list[str] = field(default_factory=list)
    #: the cause of a failure: the engine's message (file, line, column, reason), no customer values.
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    #: properties a bulk mapping created, name → type (the file's column names, never values).
    created_properties: dict[str, str] = field(default_factory=dict)
    #: the first records as they are stored, user's columns only; only when store.ui_preview_rows opts in.
    preview: pl.DataFrame | None = None


@dataclass
class ExportRun:
    goal: str
    outcome: ExportOutcome | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None


@dataclass
class ConnectionRun:
    #: deliveries that wait (a missing partner, a marker, an upload in progress) and why.
    waiting: list[str] = field(default_factory=list)
    #: partition keys of complete deliveries whose files the ledger has: not fetched again.
    already_merged: list[str] = field(default_factory=list)
    imports: list[DeliveryRun] = field(default_factory=list)
    exports: list[ExportRun] = field(default_factory=list)
    #: the store checks evaluated after the run's last step, when it merged a delivery (name → outcome).
    store_checks: dict[str, CheckOutcome] = field(default_factory=dict)
    #: why the store checks could not be evaluated (the run's result stands; the next merge checks again).
    store_checks_error: str | None = None
    #: why the analysts' copy could not be published at the end of the run.
    publish_error: str | None = None

    @property
    def success(self) -> bool:
        return (
            all(item.status != "failed" for item in self.imports) and all(item.success for item in self.exports) and self.publish_error is None
        )


def chosen_goals(project: ProjectConfig, connection: Connection, goals: Collection[str] | None) -> tuple[set[str], list[ExportGoal]]:
    """The import sources' goal names and the export goals a run covers: all of them when
    ``goals`` names none (BlueConic runs every goal of a connection), else the ones named."""
    imports = {source.goal_name for source in importing.connection_sources(project, connection)}
    exports = list(connection.export_goals)
    if goals is None:
        return imports, exports
    unknown = set(goals) - imports - {goal.name for goal in exports}
    if unknown:
        raise CdpError(
            f"connection {connection.name!r} has no import or export goal named {', '.join(sorted(unknown))}; "
            f"its goals: {', '.join(sorted(imports | {goal.name for goal in exports}))}"
        )
    return imports & set(goals), [goal for goal in exports if goal.name in goals]


def record_failure(
    project: ProjectConfig, *, run_id: str, connection: str, kind: str, goal: str, partition_key: str | None, started_at: datetime, cause: str,
    publish: bool = True,
) -> None:
    """A failed import or export in the store's run history, with its cause, so history shows
    failures beside successes (a history of successes only looks like nothing went wrong).
    A store that cannot be written is not allowed to hide the original failure."""
    try:
        with open_writer(project.store_location, project.catalog) as conn:
            record_run(
                conn, run_id=run_id, connection=connection, kind=kind, goal=goal, partition_key=partition_key,
                started_at=started_at, ended_at=_now(), status="FAILURE", counts={}, last_profiles=[], error=cause,
            )
            if publish and project.published_store_path is not None:
                publish_copy(conn, project.published_store_path)
    except CdpError:
        pass


def record_export(
    project: ProjectConfig, outcome: ExportOutcome, *, run_id: str, connection: str, goal: str, started_at: datetime, publish: bool = True
) -> None:
    """The export's row in the run history and (``publish``) the analysts' copy refreshed, in one writer session."""
    with open_writer(project.store_location, project.catalog) as conn:
        record_run(
            conn, run_id=run_id, connection=connection, kind="export", goal=goal, partition_key=None,
            started_at=started_at, ended_at=_now(), status="SUCCESS",
            counts={"profiles_available": outcome.profiles_available, "profiles_exported": outcome.profiles_exported},
            last_profiles=[], error=None,
        )
        if publish and project.published_store_path is not None:
            publish_copy(conn, project.published_store_path)


def import_one(
    project: ProjectConfig,
    connection: Connection,
    request: DeliveryRequest,
    transport: Transport,
    *,
    decrypt_keyring: KeyringFactory | None,
    run_id: str,
    publish: bool = True,
) -> DeliveryRun:
    """fetch → decrypt → stage → merge → finish → record of one delivery, as the assets do it;
    a failure is recorded in the run history with its cause and returned, never raised, so the
    connection's other deliveries still run. ``publish=False`` leaves the analysts' copy to the
    caller (a connection run publishes once, at its end)."""
    started = _now()
    goal = importing.goal_for(project, connection, request.goal)
    # Its own work directory (by run key): a sensor run of the same partition working at the same
    # moment never sees its files replaced under it.
    work_dir = importing.delivery_work_dir(project, connection.name, request.run_key)
    item = DeliveryRun(partition_key=request.partition_key, run_key=request.run_key, goal=request.goal, status="failed")
    step = "fetch"
    try:
        importing.fetch_delivery(transport, request.delivery, work_dir, connection.max_file_bytes)
        step = "decrypt"
        try:
            importing.decrypt_delivery(work_dir, decrypt_keyring, connection.max_file_bytes)
        except DiskSpaceError:
            raise  # our disk, not the partner's file: the delivery stays and is offered again
        except CdpError:
            item.quarantined = importing.quarantine_delivery(transport, goal, work_dir)
            raise
        step = f"{goal.name}: the delivery cannot be imported"
        try:
            staged = importing.stage_delivery(project, connection, goal, work_dir, started)
        except InputError:
            item.quarantined = importing.quarantine_delivery(transport, goal, work_dir)
            raise
        item.warnings = list(staged.warnings)
        item.created_properties = importing.created_properties(staged)
        if project.store.ui_preview_rows:
            item.preview = records_as_stored(staged, project.store.ui_preview_rows)
        step = f"{goal.name}: merge"
        outcome = importing.merge_staged(project, connection, goal, work_dir, run_id, started)
        step = "finish"
        finished = importing.finish_delivery(transport, goal, work_dir)
        item.warnings += [
            f"{path}: a new version was uploaded after this delivery was fetched; it was left in place for the next listing"
            for path in finished.left_changed
        ]
        importing.record_import(
            project, outcome, run_id=run_id, connection=connection.name, goal=goal.name, partition_key=request.partition_key, started_at=started,
            publish=publish,
        )
    except CdpError as error:
        item.error = f"{step}: {error}"
        record_failure(
            project, run_id=run_id, connection=connection.name, kind="import", goal=request.goal,
            partition_key=request.partition_key, started_at=started, cause=item.error, publish=publish,
        )
        return item
    item.status = outcome.status
    item.counts = outcome.counts.as_metadata()
    item.last_profiles = list(outcome.counts.last_profiles)
    return item


def export_one(
    project: ProjectConfig,
    connection: Connection,
    goal: ExportGoal,
    open_target: OpenTransport,
    *,
    encrypt_keyring: KeyringFactory | None,
    run_id: str,
    full: bool = False,
    publish: bool = True,
) -> ExportRun:
    started = _now()
    try:
        with open_target() as transport:
            outcome = exporting.run_export(project, connection, goal, transport, run_id, started, full=full, keyring_factory=encrypt_keyring)
    except CdpError as error:
        cause = f"export {goal.name}: {error}"
        record_failure(
            project, run_id=run_id, connection=connection.name, kind="export", goal=goal.name, partition_key=None, started_at=started, cause=cause,
            publish=publish,
        )
        return ExportRun(goal.name, error=cause)
    try:
        record_export(project, outcome, run_id=run_id, connection=connection.name, goal=goal.name, started_at=started, publish=publish)
    except CdpError as error:
        delivered = ", ".join(f.remote_path for f in outcome.files)
        # Never retried: the files are delivered, a second export would find nothing changed.
        return ExportRun(goal.name, outcome, error=f"export {goal.name}: the files were delivered ({delivered}) but the run could not be recorded: {error}")
    return ExportRun(goal.name, outcome)


def run_connection(
    project: ProjectConfig,
    connection: Connection,
    *,
    open_source: OpenTransport,
    open_target: Callable[[ExportGoal], OpenTransport],
    decrypt_keyring: KeyringFactory | None,
    encrypt_keyring: KeyringFactory | None,
    run_id: str,
    goals: Collection[str] | None = None,
    policy: ReadinessPolicy | None = None,
    full_export: bool = False,
    on_discovered: Callable[[list[DeliveryRequest]], None] | None = None,
    on_import: Callable[[DeliveryRun], None] | None = None,
) -> ConnectionRun:
    """Import every complete delivery of the chosen goals, in goal order, then export.

    ``policy`` judges completeness (default: whatever is listed, the operator's "complete now";
    a schedule's tick passes ``TwoListingsInTick``). Deliveries whose files the ledger has are not
    fetched again. ``on_discovered`` sees the requests before any import starts (the Dagster job
    registers their partitions), ``on_import`` each delivery's result as it ends.

    The run ends with one store session: the store checks when a delivery was merged, then the
    analysts' copy published once (not after every merge and export: each publish is a checkpoint
    and a full copy of the store). The copy is published too when a step raised, so readers never
    keep a copy older than what the run committed."""
    import_names, export_goals = chosen_goals(project, connection, goals)
    result = ConnectionRun()
    merged = importing.merged_under_current_configuration(project, connection)
    wrote = False
    try:
        with open_source() as transport:
            found = importing.discover_deliveries(project, connection, transport, policy, merged=merged)
            result.waiting = found.reasons
            result.already_merged = list(found.already_merged)
            # discover() returns requests in the connection's source order: groups, then profiles,
            # then the dialect's; each source's oldest delivery first.
            requests = [request for request in found.requests if request.goal in import_names]
            if on_discovered is not None:
                on_discovered(requests)
            for request in requests:
                wrote = True
                item = import_one(project, connection, request, transport, decrypt_keyring=decrypt_keyring, run_id=run_id, publish=False)
                result.imports.append(item)
                if on_import is not None:
                    on_import(item)
        for goal in export_goals:
            wrote = True
            result.exports.append(
                export_one(
                    project, connection, goal, open_target(goal), encrypt_keyring=encrypt_keyring, run_id=run_id, full=full_export, publish=False
                )
            )
    except BaseException:
        if wrote:
            with contextlib.suppress(CdpError, duckdb.Error):  # the step's own failure is the one to report
                _end_of_run(project, connection, ConnectionRun())
        raise
    if wrote:
        _end_of_run(project, connection, result)
    return result


def _end_of_run(project: ProjectConfig, connection: Connection, result: ConnectionRun) -> None:
    """The run's last store session: the store checks after a merge, then the analysts' copy."""
    check = any(item.status == "merged" for item in result.imports)
    if not check and project.published_store_path is None:
        return
    try:
        with open_writer(project.store_location, project.catalog) as conn:
            if check:
                try:
                    result.store_checks = evaluate_store_checks(conn, project.catalog, connection.name)
                except duckdb.Error as error:
                    result.store_checks_error = str(error).splitlines()[0]
            if project.published_store_path is not None:
                publish_copy(conn, project.published_store_path)
    except (CdpError, OSError, duckdb.Error) as error:
        if check and not result.store_checks and result.store_checks_error is None:
            result.store_checks_error = str(error).splitlines()[0]
        if project.published_store_path is not None:
            result.publish_error = (
                f"the run's changes are in the store, but its analysts' copy {project.published_store_path} could not be published "
                f"(the next run publishes it): {error}"
            )


@dataclass
class NothingToRun:
    """What a Run now would have found when it would do nothing at all (see ``nothing_to_run``)."""

    waiting: list[str] = field(default_factory=list)
    already_merged: list[str] = field(default_factory=list)
    #: each export goal and why it would send nothing.
    idle_exports: list[IdleExport] = field(default_factory=list)


def nothing_to_run(
    project: ProjectConfig, connection: Connection, open_source: OpenTransport, *, full_export: bool = False
) -> NothingToRun | None:
    """What a Run now of ``connection`` would find when it would do nothing at all, else None.

    Nothing at all: no delivery of its sources waits to be imported, every export goal provably
    sends nothing (``idle_exports``: changed_only, nothing changed since its last export, no
    condition on the clock), and its notifications do not ask for a mail after every run. Such a
    run would import nothing and send nothing; the caller may then skip starting one (what it
    would have recorded is in docs/cli.md). Listed as the run would list (every listed file
    complete, the same ledger check before fetch); the store is read only when the listing has
    nothing to import.
    """
    if connection.notifications is not None and connection.notifications.when == "always":
        return None
    if full_export and connection.export_goals:
        return None
    if any(sends_without_change(goal) for goal in connection.export_goals):
        return None
    import_names, _ = chosen_goals(project, connection, None)
    merged = importing.merged_under_current_configuration(project, connection)
    with open_source() as transport:
        found = importing.discover_deliveries(project, connection, transport, ListedNow(), merged=merged)
    if any(request.goal in import_names for request in found.requests):
        return None
    exports = idle_exports(project, connection, full_export=full_export)
    if exports is None:
        return None
    return NothingToRun(waiting=found.reasons, already_merged=list(found.already_merged), idle_exports=exports)
