"""The asset graph of one connection, one delivery (partition) at a time:

    fetched_files → decrypted_files → import_tables → profile_store → <goal>_segment_export + <goal>_timeline_export

Asset bodies only call the engine (``cdp_pipeline.importing`` / ``cdp_pipeline.exporting``) and
turn its results into metadata the UI plots.
"""


from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl

from cdp_pipeline import connection_run, exporting, importing, work_storage
from cdp_pipeline.config.connection import Connection, ExportGoal, FtpLocation, LocalLocation, S3Location, SftpLocation
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.defs.resources import export_transport_key, pgp_key, transport_key
from cdp_pipeline.deliveries import partition_set_name, split_partition_key
from cdp_pipeline.disk_space import DiskSpaceError
from cdp_pipeline.errors import CdpError, InputError, TransientError
from cdp_pipeline.tables.staged import records_as_stored

# Network steps retry transient failures; everything else fails once with its named error.
NETWORK_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def deliveries_partitions(connection: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partition_set_name(connection))


_LOCATION_KINDS: dict[type, str] = {LocalLocation: "file", SftpLocation: "sftp", S3Location: "s3", FtpLocation: "ftp"}


def source_kind(connection: Connection) -> str:
    return _LOCATION_KINDS[type(connection.source)]


def markdown_preview(frame: pl.DataFrame, rows: int = 10) -> str:
    """The first rows as a markdown table for the asset page: every column under its full name
    (Polars' own table hides middle columns and cuts long names), values cut at 40 characters."""
    if frame.height == 0:
        return "(no rows)"

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text if len(text) <= 40 else text[:39] + "…"
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(name) for name in frame.columns) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.head(rows).iter_rows()]
    return "\n".join(lines)


def per_goal(goal: str, numbers: dict[str, int | float]) -> dict[str, int | float]:
    """A delivery's counters under ``<goal>/<counter>`` keys. The UI draws one plot per numeric
    metadata key of an asset; with the goal in the key, households, customers and orders each get
    their own series instead of alternating on one line."""
    return {f"{goal}/{key}": value for key, value in numbers.items()}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _fail(error: Exception, what: str) -> dg.Failure:
    """Terminal errors fail once, with the engine's message (file, line, column, fix)."""
    return dg.Failure(description=f"{what}: {error}", allow_retries=False)


def _failed(
    project: ProjectConfig, context: dg.AssetExecutionContext, error: Exception, what: str, *, connection: str, kind: str, goal: str, started: datetime
) -> dg.Failure:
    """``_fail``, with the failure in the store's run history too (its cause, no customer values),
    so the history a person reads shows failed runs beside the successful ones."""
    failure = _fail(error, what)
    connection_run.record_failure(
        project, run_id=context.run.run_id, connection=connection, kind=kind, goal=goal,
        partition_key=context.partition_key if kind == "import" else None, started_at=started, cause=failure.description or what,
    )
    return failure


@contextmanager
def _delivery_work(
    project: ProjectConfig, context: dg.AssetExecutionContext, *, connection: str, step: work_storage.Step, goal: str, started: datetime
) -> Iterator[work_storage.DeliveryWork]:
    """``delivery_work``, with a failure of the work folder itself (on S3: the download at the
    step's start, the upload at its end) in the run history like the step's own failures; without
    it such a run would be missing from ``cdp-pipeline history``. A slow or busy server stays a
    retry."""
    from_the_step = False
    try:
        with work_storage.delivery_work(project, connection, context.partition_key, step) as work:
            try:
                yield work
            except BaseException:
                from_the_step = True  # the step's own errors are the step's to record (or not)
                raise
    except TransientError:
        raise
    except CdpError as error:
        if from_the_step:
            raise
        raise _failed(project, context, error, f"{goal}: {step}", connection=connection, kind="import", goal=goal, started=started) from error


def _quarantine(context: dg.AssetExecutionContext, transport_resource_key: str, goal, work: work_storage.DeliveryWork) -> list[str]:
    """``importing.quarantine_delivery`` with its outcome in the run's log; a failure to move the
    files aside is logged, never hides the delivery's own error."""
    try:
        with getattr(context.resources, transport_resource_key).open() as transport:
            moved = importing.quarantine_delivery(transport, goal, work.path)
    except CdpError as error:
        context.log.error(f"could not quarantine the files of {work.path.name}: {error}")
        return []
    if moved:
        context.log.warning(f"quarantined {moved} into {goal.files.after_import.quarantine_directory}/")
        try:
            work.quarantined()
        except CdpError as error:
            context.log.error(f"could not delete the quarantined delivery's customer data from {work.location}: {error}")
    return moved


def build_connection_assets(project: ProjectConfig, connection: Connection) -> list[dg.AssetsDefinition]:
    name = connection.name
    partitions = deliveries_partitions(name)
    kind = source_kind(connection)
    common: dict[str, Any] = {"group_name": name, "owners": connection.owners or None, "tags": {label: "" for label in connection.labels}}
    transport_resource_key = transport_key(name)
    pgp_resource_key = pgp_key(name)

    def goal_of(context: dg.AssetExecutionContext):
        return importing.goal_for(project, connection, split_partition_key(context.partition_key)[0])

    @dg.asset(
        key=[name, "fetched_files"],
        partitions_def=partitions,
        kinds={kind},
        required_resource_keys={transport_resource_key, "cdp_project"},
        retry_policy=NETWORK_RETRY,
        description=(
            f"The files of one delivery of {name} (a goal's root file plus its linked files), copied from "
            f"the remote folder into a private work directory: downloaded under a temporary name, size "
            "checked against the listing, hashed (sha256)."
        ),
        **common,
    )
    def fetched_files(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        project_ = context.resources.cdp_project.load()
        started = _now()
        for stale in work_storage.sweep_stale_work(project_, name):
            context.log.info(f"removed the downloaded and decrypted files of {stale}, left by a run more than a day ago")
        try:
            with (
                work_storage.delivery_work(project_, name, context.partition_key, "fetch") as work,
                getattr(context.resources, transport_resource_key).open() as transport,
            ):
                work_dir = work.path
                delivery = importing.find_delivery(transport, project_, connection, context.partition_key)
                fetched = importing.fetch_delivery(transport, delivery, work_dir, connection.max_file_bytes)
                uri = transport.uri
        except TransientError:
            raise
        except CdpError as error:
            goal_name = split_partition_key(context.partition_key)[0]
            raise _failed(project_, context, error, "fetch", connection=name, kind="import", goal=goal_name, started=started) from error
        return dg.MaterializeResult(
            metadata={
                **per_goal(split_partition_key(context.partition_key)[0], {"files": len(fetched), "bytes": sum(f.size for f in fetched)}),
                "dagster/uri": f"{uri}/{delivery.root.path}",
                "root_file": delivery.root.path,
                "content_sha256": importing.content_sha256(fetched),
            }
        )

    @dg.asset(
        key=[name, "decrypted_files"],
        deps=[fetched_files],
        partitions_def=partitions,
        kinds={"pgp"},
        required_resource_keys={pgp_resource_key, transport_resource_key},
        description=(
            "The delivery's files in plain text: PGP-encrypted files (recognised by content, not by name) are "
            "decrypted with the connection's private key in a fresh GnuPG home; plain files pass through. "
            "Plaintext is mode 0600 and removed after the merge."
        ),
        **common,
    )
    def decrypted_files(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        project_ = project
        pgp = getattr(context.resources, pgp_resource_key)
        started = _now()
        goal_name = split_partition_key(context.partition_key)[0]
        with _delivery_work(project_, context, connection=name, step="decrypt", goal=goal_name, started=started) as work:
            try:
                files, encrypted = importing.decrypt_delivery(work.path, pgp.keyring if pgp.can_decrypt else None, connection.max_file_bytes)
            except DiskSpaceError as error:
                # Our disk, not the partner's file: the delivery stays where it is and is offered again.
                raise _failed(project_, context, error, "decrypt", connection=name, kind="import", goal=goal_name, started=started) from error
            except CdpError as error:
                _quarantine(context, transport_resource_key, goal_of(context), work)
                raise _failed(project_, context, error, "decrypt", connection=name, kind="import", goal=goal_name, started=started) from error
        metadata: dict = {"files": len(files), "encrypted_files": encrypted}
        if pgp.can_decrypt:
            # Keys expire (SARE rotates yearly with three weeks' notice): show the days left so the UI
            # plots them, and warn ahead of time.
            with pgp.keyring() as keyring:
                expiries = [info.days_left for info in keyring.key_expiries() if info.days_left is not None]
                for warning in keyring.expiry_warnings(pgp.expiry_warning_days):
                    context.log.warning(warning)
            if expiries:
                metadata["pgp_key_days_left"] = min(expiries)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=[name, "import_tables"],
        deps=[decrypted_files],
        partitions_def=partitions,
        kinds={"polars"},
        required_resource_keys={transport_resource_key},
        description=(
            "The delivery as tables ready to merge, built in Polars: each file read with its file and field "
            "handling, data processors applied, identifiers linked, nested files joined to their parents, "
            "one row per profile (last row wins), timeline events with their nested items, and the rejected rows."
        ),
        **common,
    )
    def import_tables(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        goal = goal_of(context)
        started = _now()
        with _delivery_work(project, context, connection=name, step="stage", goal=goal.name, started=started) as work:
            try:
                staged = importing.stage_delivery(project, connection, goal, work.path, started)
            except InputError as error:
                _quarantine(context, transport_resource_key, goal, work)
                what = f"{goal.name}: the delivery cannot be imported"
                raise _failed(project, context, error, what, connection=name, kind="import", goal=goal.name, started=started) from error
        for warning in staged.warnings:
            context.log.warning(warning)
        preview_rows = project.store.ui_preview_rows
        return dg.MaterializeResult(
            metadata={
                **per_goal(goal.name, {
                    "rows_read": staged.rows_read,
                    "rows_rejected": staged.rows_rejected if staged.rows_rejected is not None else len({(p.file, p.line) for p in staged.rejects}),
                    "values_not_imported": staged.values_not_imported,
                    "records": staged.records.height,
                    "events": sum(f.height for f in staged.events.values()),
                    "nested_items": sum(f.height for f in staged.items.values()),
                    "warnings": len(staged.warnings),
                }),
                # Property names and types only (the file's column names), never values.
                **(
                    {"created_properties": dg.MetadataValue.json(created)}
                    if (created := importing.created_properties(staged))
                    else {}
                ),
                # Customer values in Dagster's event log, for as long as it keeps runs: a setting.
                **({"preview": dg.MetadataValue.md(markdown_preview(records_as_stored(staged, preview_rows), preview_rows))} if preview_rows else {}),
            }
        )

    @dg.asset(
        key=[name, "profile_store"],
        deps=[import_tables],
        freshness_policy=(
            dg.FreshnessPolicy.time_window(
                fail_window=timedelta(hours=connection.freshness_hours), warn_window=timedelta(hours=connection.freshness_hours * 0.75)
            )
            if connection.freshness_hours
            else None
        ),
        partitions_def=partitions,
        kinds={"duckdb"},
        pool="duckdb_write",
        required_resource_keys={transport_resource_key},
        description=(
            "The delivery merged into the DuckDB profile store in ONE transaction: groups, profiles (per-property "
            "merge rules set / set_if_empty / set_or_clear / add / sum), timeline events, product store, rejects "
            "and the ledger row. The same content under the same configuration is never merged twice."
        ),
        **common,
    )
    def profile_store(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        goal = goal_of(context)
        started = _now()
        reprocess = context.run.tags.get("cdp/reprocess") == "true"
        with _delivery_work(project, context, connection=name, step="merge", goal=goal.name, started=started) as work:
            try:
                outcome = importing.merge_staged(project, connection, goal, work.path, context.run.run_id, started, reprocess=reprocess)
            except TransientError as error:
                # The store is locked by a process outside the pool (an analyst on the live file): the
                # merge is atomic, so trying again later is safe.
                context.log.warning(str(error))
                raise dg.RetryRequested(max_retries=3, seconds_to_wait=60) from error
            except CdpError as error:
                raise _failed(project, context, error, f"{goal.name}: merge", connection=name, kind="import", goal=goal.name, started=started) from error
            with getattr(context.resources, transport_resource_key).open() as transport:
                finished = importing.finish_delivery(transport, goal, work.path)
            work.finished()
        for path in finished.left_changed:
            context.log.warning(f"{path}: a new version was uploaded after this delivery was fetched; it was left in place for the next listing")
        importing.record_import(
            project, outcome, run_id=context.run.run_id, connection=name, goal=goal.name, partition_key=context.partition_key, started_at=started
        )
        counts = outcome.counts
        if outcome.status == "skipped":
            context.log.info(f"{context.partition_key}: same content and configuration already merged as {outcome.duplicate_of}; skipped")
        return dg.MaterializeResult(
            metadata={
                **per_goal(goal.name, {
                    **counts.as_metadata(),
                    "remote_files_finished": len(finished.finished),
                    "seconds": round((_now() - started).total_seconds(), 3),
                }),
                "status": outcome.status,
                "delivery_id": outcome.delivery_id,
                "last_profiles": dg.MetadataValue.json(counts.last_profiles),
                "dagster/table_name": "profiles",
                # The store's segments after this merge: one series per segment, whichever goal merged.
                **{f"segment_size/{segment}": size for segment, size in outcome.segment_sizes.items()},
            }
        )

    assets = [fetched_files, decrypted_files, import_tables, profile_store]
    for goal in connection.export_goals:
        assets.append(_export_asset(project, connection, goal, profile_store, common))
    return assets


def _export_asset(project: ProjectConfig, connection: Connection, goal: ExportGoal, upstream, common: dict) -> dg.AssetsDefinition:
    name = connection.name
    target_key = export_transport_key(name, goal.name) if goal.target.location else transport_key(name)
    target_kind = source_kind(connection) if goal.target.location is None else _LOCATION_KINDS[type(goal.target.location)]
    segment_key = dg.AssetKey([name, f"{goal.name}_segment_export"])
    timeline_key = dg.AssetKey([name, f"{goal.name}_timeline_export"])
    specs = [
        dg.AssetSpec(
            segment_key,
            deps=[upstream],
            kinds={"duckdb", target_kind} | ({"pgp"} if goal.target.encrypt else set()),
            description=(
                f"Profiles of segment {goal.segment!r} written to {goal.target.directory}/{goal.target.file_name}: "
                f"{'only profiles changed since the last successful export' if goal.changed_only else 'all members'}, "
                "with at least one value among the selected properties, columns in the declared order."
            ),
            **common,
        )
    ]
    if goal.timeline is not None:
        specs.append(
            dg.AssetSpec(
                timeline_key,
                deps=[segment_key],
                kinds={"duckdb", target_kind},
                description="Timeline events of the exported profiles: one CSV per event type (order.csv) and one per nested type (order_line.csv).",
                **common,
            )
        )

    @dg.multi_asset(
        name=f"{name}__{goal.name}_export",
        specs=specs,
        pool="duckdb_write",
        required_resource_keys={target_key, pgp_key(name)},
        retry_policy=NETWORK_RETRY,
    )
    def export(context: dg.AssetExecutionContext):
        full = context.run.tags.get("cdp/full_export") == "true"
        pgp = getattr(context.resources, pgp_key(name))
        now = _now()
        key_days_left = None
        if goal.target.encrypt and pgp.public_key:
            # The partner's key expires too (SARE: yearly, three weeks' notice): warn before it does.
            with pgp.keyring() as keyring:
                for warning in keyring.expiry_warnings(pgp.expiry_warning_days):
                    context.log.warning(warning)
                days = [info.days_left for info in keyring.key_expiries() if info.days_left is not None]
                key_days_left = min(days) if days else None
        try:
            with getattr(context.resources, target_key).open() as transport:
                outcome = exporting.run_export(
                    project, connection, goal, transport, context.run.run_id, now, full=full,
                    keyring_factory=pgp.keyring if pgp.public_key else None,
                )
        except TransientError:
            raise
        except CdpError as error:
            raise _failed(project, context, error, f"export {goal.name}", connection=name, kind="export", goal=goal.name, started=now) from error
        try:
            connection_run.record_export(project, outcome, run_id=context.run.run_id, connection=name, goal=goal.name, started_at=now)
        except CdpError as error:
            # The files are delivered and the export's state is recorded. A retry of this step
            # would export only what changed since (nothing) under the same file name and
            # overwrite the delivery the consumer has not fetched yet.
            delivered = ", ".join(f.remote_path for f in outcome.files)
            raise dg.Failure(
                description=(
                    f"export {goal.name}: the files were delivered ({delivered}) but the run could not be recorded "
                    f"in the store: {error}. Do not re-run the export for this; the next scheduled export carries on."
                ),
                allow_retries=False,
            ) from error
        yield dg.MaterializeResult(asset_key=segment_key, metadata=segment_export_metadata(outcome, key_days_left))
        if goal.timeline is not None:
            yield dg.MaterializeResult(asset_key=timeline_key, metadata=timeline_export_metadata(outcome))

    return export


def segment_export_metadata(outcome: exporting.ExportOutcome, key_days_left: int | None = None) -> dict[str, Any]:
    """What the UI shows and plots of one export's profile file; the export asset and the Run now
    job both record it so."""
    profile_file = outcome.profile_file
    return {
        "profiles_available": outcome.profiles_available,
        "profiles_exported": outcome.profiles_exported,
        "dagster/row_count": outcome.profile_rows,
        "bytes": outcome.profile_bytes,
        "files": len(outcome.profile_files),
        "dagster/uri": f"{outcome.target_uri}/{profile_file.remote_path}" if profile_file else "",
        "sha256": profile_file.sha256 if profile_file else "",
        **({"pgp_key_days_left": key_days_left} if key_days_left is not None else {}),
        **{f"diff_{change}": count for change, count in (outcome.diff_counts or {}).items()},
    }


def timeline_export_metadata(outcome: exporting.ExportOutcome) -> dict[str, Any]:
    return {
        "files": len(outcome.timeline_files),
        "events_exported": outcome.events_exported,
        "rows": sum(f.rows for f in outcome.timeline_files),
        "bytes": sum(f.bytes for f in outcome.timeline_files),
        "paths": dg.MetadataValue.json([f.remote_path for f in outcome.timeline_files]),
    }
