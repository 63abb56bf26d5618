"""The steps of importing one delivery, as plain functions the Dagster assets (and the CLI and
benchmark) call: fetch → decrypt → stage import tables → merge → finish the remote files.

Each step reads and writes the delivery's private work directory (mode 0700), so a step can be
re-run alone and no data frame travels through Dagster's IO manager.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp_pipeline import progress
from cdp_pipeline.config.connection import Connection, GroupImportGoal, ProfileImportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.config.property_writers import shared_property_warnings
from cdp_pipeline.crypto.sniffing import looks_encrypted
from cdp_pipeline.deliveries import (
    Delivery,
    DeliverySource,
    Discovery,
    GoalSource,
    LocalFile,
    MergeContext,
    MergedFiles,
    ReadinessPolicy,
    StagingInput,
    discover,
    split_partition_key,
)
from cdp_pipeline.dialects import dialect_sources
from cdp_pipeline.disk_space import HEADROOM, DiskSpaceError, disk_full_error, is_disk_full, require_free_space
from cdp_pipeline.errors import CdpError, FileVanishedError, InputError, InputProblem
from cdp_pipeline.fault_injection import fault_point
from cdp_pipeline.private_files import private_directory
from cdp_pipeline.store.conflicts import ATTEMPTS, FIRST_DELAY_SECONDS, retry_on_conflict
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.lake import LAKE_FIRST_DELAY_SECONDS
from cdp_pipeline.store.ledger import merged_file_identities, stored_property_writers
from cdp_pipeline.store.memory import writer_memory
from cdp_pipeline.store.merge import DeliveryRecord, MergeCounts, delivery_is_merged, merge_delivery
from cdp_pipeline.store.publish import publish_copy
from cdp_pipeline.store.runs import record_run
from cdp_pipeline.store.schema import event_table
from cdp_pipeline.store.segments import refresh_memberships, refresh_memberships_if_changed
from cdp_pipeline.tables.staged import StagedImport, write_reject_report
from cdp_pipeline.transports.base import EtagPinnedFinishing, ParallelDownloads, RemoteFile, Transport

ImportGoal = GroupImportGoal | ProfileImportGoal
#: in a delivery's work directory: the goal a dialect generated for it at staging (for the merge's
#: ledger row and for finishing the remote files) ...
GOAL_FILE = "goal.json"
#: ... and why it is deliberately not imported (a SARE sidecar with "import": false: nothing is
#: merged, the files stay where they are).
SKIP_FILE = "skip.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_CHUNK = 8 * 1024 * 1024


def delivery_work_dir(project: ProjectConfig, connection: str, partition_key: str) -> Path:
    """Private directory of one delivery. Remote names never become local paths directly (a name
    such as ``../../etc/x`` would escape): a sanitised name plus a hash of the original keeps them
    unique and inside the work dir."""
    safe = _UNSAFE.sub("_", partition_key)[:80]
    digest = hashlib.sha256(partition_key.encode()).hexdigest()[:10]
    path = private_directory(project.work_dir / connection / f"{safe}-{digest}")
    for folder in (project.work_dir, project.work_dir / connection):
        os.chmod(folder, 0o700)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def import_goal(connection: Connection, goal_name: str) -> ImportGoal:
    goal = connection.goal(goal_name)
    if not isinstance(goal, (GroupImportGoal, ProfileImportGoal)):
        raise CdpError(f"goal {goal_name!r} of {connection.name!r} is not an import goal")
    return goal


def connection_sources(project: ProjectConfig, connection: Connection) -> list[DeliverySource]:
    """Where the connection's deliveries come from, in import order: its import goals in
    BlueConic's goal order (groups, then profiles), then its dialect's (SARE pairs, Netmera files)."""
    sources: list[DeliverySource] = [GoalSource(goal) for goal in connection.import_goals]
    settings = project.dialects.get(connection.name)
    if settings is not None:
        sources += dialect_sources(settings)
    return sources


def source_for(project: ProjectConfig, connection: Connection, goal_name: str) -> DeliverySource:
    """The source a partition's goal name stands for; not an import goal is an error."""
    for source in connection_sources(project, connection):
        if source.goal_name == goal_name:
            return source
    return GoalSource(import_goal(connection, goal_name))


def goal_for(project: ProjectConfig, connection: Connection, goal_name: str) -> ImportGoal:
    """The goal a partition's goal name stands for; a dialect's goal is its listing goal (where the
    files are, what happens to them) until the delivery's own goal is generated at staging."""
    return source_for(project, connection, goal_name).listing_goal


def _source_of(project: ProjectConfig, connection: Connection, goal: ImportGoal) -> DeliverySource:
    """The source staging and merging ``goal``: a dialect's when it generates goals of this name,
    else the goal as given."""
    settings = project.dialects.get(connection.name)
    if settings is not None:
        for source in dialect_sources(settings):
            if source.goal_name == goal.name:
                return source
    return GoalSource(goal)


def discover_deliveries(
    project: ProjectConfig,
    connection: Connection,
    transport: Transport,
    policy: ReadinessPolicy | None = None,
    *,
    merged: MergedFiles | None = None,
    max_requests: int | None = None,
) -> Discovery:
    """``deliveries.discover`` over every source of the connection (see there)."""
    return discover(connection.name, connection_sources(project, connection), transport, policy, merged=merged, max_requests=max_requests)


def merged_under_current_configuration(project: ProjectConfig, connection: Connection) -> MergedFiles:
    """The files of the connection's deliveries that the ledger (the analysts' copy) has merged
    under their goal's current configuration: listing them is enough to know they would be
    skipped, so nothing of them is fetched, decrypted or staged again.

    Only goals that leave their files in place: a merged delivery still listed under a goal that
    marks, moves or deletes its files is one whose finishing step did not happen (a crash after
    the merge's commit), and its import run finishes it."""
    goals = [goal.name for goal in connection.import_goals]
    settings = project.dialects.get(connection.name)
    if settings is not None:
        goals += list(settings.goal_names)
    hashes = {}
    for goal in goals:
        try:
            leaves_files = goal_for(project, connection, goal).files.after_import.action == "leave"
        except CdpError:  # a generated goal name no source lists: its deliveries go through the import
            continue
        if leaves_files:
            hashes[goal] = project.goal_config_hash(connection.name, goal)
    return MergedFiles.of(merged_file_identities(project.ledger_location, connection.name, hashes))


def find_delivery(transport: Transport, project: ProjectConfig, connection: Connection, partition_key: str) -> Delivery:
    """The current files of the delivery a partition stands for (goal:root file name)."""
    goal_name, root_name = split_partition_key(partition_key)
    source = source_for(project, connection, goal_name)
    found = discover(connection.name, [source], transport)
    for item in found.scans:
        for delivery in item.scan.deliveries:
            if delivery.root.name == root_name:
                return delivery
    reasons = [reason for reason in found.reasons if root_name in reason]
    raise FileVanishedError(
        f"{transport.uri}/{source.listing_goal.files.directory}: delivery {partition_key!r} is not complete or no longer there"
        + (f" ({'; '.join(reasons)})" if reasons else "")
    )


@dataclass
class FetchedFile:
    name: str  # logical name in the goal
    remote_path: str
    size: int
    mtime: float
    etag: str | None
    sha256: str
    local_path: str

    def as_ledger(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "local_path"}


def _write_manifest(path: Path, files: list[FetchedFile], **extra) -> None:
    path.write_text(json.dumps({"files": [vars(f) for f in files], **extra}, indent=2))


def read_manifest(path: Path) -> tuple[list[FetchedFile], dict]:
    data = json.loads(path.read_text())
    files = [FetchedFile(**f) for f in data.pop("files")]
    return files, data


def fetch_delivery(transport: Transport, delivery: Delivery, work_dir: Path, max_file_bytes: int | None = None) -> list[FetchedFile]:
    """Download every file of the delivery (temp name → size check → rename) and hash it.

    A file larger than ``max_file_bytes`` (the connection's ``max_file_gb``) is refused before
    anything is downloaded."""
    oversized = [remote for remote in delivery.files.values() if max_file_bytes is not None and remote.size > max_file_bytes]
    if oversized:
        raise InputError(
            [
                InputProblem(
                    file=remote.path, line=None, column=None,
                    reason=f"the file has {remote.size:,} bytes, more than the connection's max_file_gb ({max_file_bytes:,} bytes)",
                    fix="If the file is genuine, raise max_file_gb in the connection; otherwise ask the sender to split it",
                )
                for remote in oversized
            ]
        )
    target = work_dir / "fetched"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    os.chmod(target, 0o700)
    fetched = []
    planned = [(remote, target / f"{name}.bin") for name, remote in delivery.files.items()]
    purpose = f"download delivery {delivery.partition_key}"
    require_free_space(target, int(sum(remote.size for remote, _ in planned) * HEADROOM), purpose)
    try:
        with progress.stage("download", delivery.partition_key, "bytes", measure=lambda: progress.folder_bytes(target)):
            if len(planned) > 1 and isinstance(transport, ParallelDownloads) and transport.parallel_downloads > 1:
                # Several SSH streams side by side: over a long link one stream is bound by its window.
                transport.download_many(planned, parallel=min(transport.parallel_downloads, len(planned)))
            else:
                for remote, local in planned:
                    transport.download(remote, local)
    except Exception as exc:
        if is_disk_full(exc) or isinstance(exc, DiskSpaceError):
            shutil.rmtree(target, ignore_errors=True)  # the files already down would only keep the disk full
            raise disk_full_error(work_dir, purpose) from None
        raise
    fault_point("fetch")
    for name, remote in delivery.files.items():
        local = target / f"{name}.bin"
        fetched.append(
            FetchedFile(
                name=name, remote_path=remote.path, size=remote.size, mtime=remote.mtime, etag=remote.etag,
                sha256=sha256_file(local), local_path=str(local),
            )
        )
    _write_manifest(work_dir / "fetched.json", fetched, transport=transport.uri, partition_key=delivery.partition_key)
    return fetched


def content_sha256(files: list[FetchedFile]) -> str:
    """The delivery's content identity: the same bytes under other names give the same value."""
    payload = sorted((f.name, f.sha256) for f in files)
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _decrypt_or_link(
    fetched: list[FetchedFile], encrypted: list[FetchedFile], target: Path, keyring: Any, max_file_bytes: int | None, out: list[FetchedFile]
) -> None:
    for item in fetched:
        local = Path(item.local_path)
        plain = target / f"{item.name}.plain"
        if item in encrypted:
            keyring.decrypt_file(local, plain, item.remote_path, max_output_bytes=max_file_bytes)
        else:
            os.link(local, plain)  # no copy: the plaintext is already private (0600)
        os.chmod(plain, 0o600)
        out.append(FetchedFile(**{**vars(item), "local_path": str(plain)}))
        if item in encrypted:
            fault_point("decrypt")


def decrypt_delivery(work_dir: Path, keyring_factory=None, max_file_bytes: int | None = None) -> tuple[list[FetchedFile], int]:
    """Decrypt the encrypted files (decided by content, not name) into 0600 files; plain files
    pass through. Returns the files and how many were encrypted. gpg stops a file whose plaintext
    grows past ``max_file_bytes`` (a compressed PGP message can expand a thousandfold)."""
    fetched, extra = read_manifest(work_dir / "fetched.json")
    target = work_dir / "decrypted"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    os.chmod(target, 0o700)
    encrypted = [f for f in fetched if looks_encrypted(Path(f.local_path))]
    purpose = f"decrypt {', '.join(f.remote_path for f in encrypted)}"
    if encrypted:
        require_free_space(target, int(sum(f.size for f in encrypted) * HEADROOM), purpose)
    out: list[FetchedFile] = []
    keyring: Any = None  # whatever keyring_factory gives: a context manager with decrypt_file
    decrypting: AbstractContextManager[Any] = progress.stage(
        "decrypt", str(extra.get("partition_key", work_dir.name)), "bytes", measure=lambda: progress.folder_bytes(target)
    ) if encrypted else nullcontext()
    try:
        if encrypted:
            if keyring_factory is None:
                raise CdpError(
                    f"{', '.join(f.remote_path for f in encrypted)}: the file is PGP-encrypted but the connection has no "
                    "pgp.private_keys_env; add the decryption key"
                )
            keyring = keyring_factory()
            keyring.__enter__()
        with decrypting:
            _decrypt_or_link(fetched, encrypted, target, keyring, max_file_bytes, out)
    except Exception as exc:
        if is_disk_full(exc) or isinstance(exc, DiskSpaceError):
            shutil.rmtree(target, ignore_errors=True)  # no half-written plaintext stays behind
            raise disk_full_error(work_dir, purpose) from None
        raise
    finally:
        if keyring is not None:
            keyring.__exit__(None, None, None)
    # Which files arrived encrypted, so staging (a SARE sidecar must agree) need not read the downloads again.
    _write_manifest(work_dir / "decrypted.json", out, **extra, encrypted_files=len(encrypted), encrypted_names=sorted(f.name for f in encrypted))
    return out, len(encrypted)


def stage_delivery(project: ProjectConfig, connection: Connection, goal: ImportGoal, work_dir: Path, run_time: datetime) -> StagedImport:
    """Build the import tables of the delivery in ``work_dir`` and save them for the merge.

    The reject report ``work_dir/rejects.csv`` (file, line, column, reason) is written in every
    case, also when the delivery fails with ``InputError`` (``on_error: fail`` and rejected rows,
    a missing required column ...), so the operator finds the list beside the run's other output;
    ``staged.reject_report`` holds its path. Warnings about properties another connection also
    fills are added to ``staged.warnings``."""
    files, extra = read_manifest(work_dir / "decrypted.json")
    report = work_dir / REJECT_REPORT
    source = _source_of(project, connection, goal)
    inputs = StagingInput(
        catalog=project.catalog,
        files=_local_files(files),
        run_time=run_time,
        root_was_encrypted=_root_was_encrypted(work_dir, goal, extra),
        max_file_bytes=connection.max_file_bytes,
    )
    (work_dir / SKIP_FILE).unlink(missing_ok=True)
    try:
        with progress.stage("read", str(extra.get("partition_key", work_dir.name)), "rows") as meter:
            result = source.stage(inputs)
            meter.done = result.staged.rows_read
    except InputError as error:
        write_reject_report(error.problems, report)
        raise
    staged = result.staged
    fault_point("tables")
    if source.generates_goal:
        (work_dir / GOAL_FILE).write_text(result.goal.model_dump_json())
    if result.skip_reason is not None:
        (work_dir / SKIP_FILE).write_text(json.dumps({"reason": result.skip_reason}))
    write_reject_report(staged, report)
    staged.reject_report = str(report)
    if not source.generates_goal:  # a generated goal is not in the connection's goals
        entity = "profile" if staged.target == "profiles" else f"group:{staged.group_type}"
        written = list(staged.rules)
        stored = stored_property_writers(project.ledger_location, entity, written)
        staged.warnings.extend(shared_property_warnings(project, connection.name, goal.name, written=written, stored=stored))
    staged.save(work_dir / "tables")
    return staged


def _local_files(files: list[FetchedFile]) -> dict[str, LocalFile]:
    return {f.name: LocalFile(path=Path(f.local_path), remote_path=f.remote_path, remote_mtime=f.mtime) for f in files}


def _root_was_encrypted(work_dir: Path, goal: ImportGoal, decrypted: dict) -> bool:
    """Whether the delivery's root file arrived PGP-encrypted (a SARE sidecar must agree), as the
    decryption recorded it. A work folder decrypted by an earlier release has no such record: its
    downloads are sniffed again, and without them (a staging step re-run from the decrypted files
    alone) the answer is False."""
    if "encrypted_names" in decrypted:
        return goal.files.root.name in decrypted["encrypted_names"]
    if not (work_dir / "fetched.json").exists():
        return False
    fetched, _ = read_manifest(work_dir / "fetched.json")
    return any(
        looks_encrypted(Path(f.local_path)) for f in fetched if f.name == goal.files.root.name and Path(f.local_path).exists()
    )


def _saved_goal(work_dir: Path) -> ProfileImportGoal | None:
    path = work_dir / GOAL_FILE
    return ProfileImportGoal.model_validate_json(path.read_text()) if path.exists() else None


def _skip_reason(work_dir: Path) -> str | None:
    path = work_dir / SKIP_FILE
    return json.loads(path.read_text())["reason"] if path.exists() else None


#: file name of the reject report inside a delivery's work directory.
REJECT_REPORT = "rejects.csv"


@dataclass
class MergeOutcome:
    status: str  # merged | skipped (a reprocess is "merged", with ``reprocessed`` set)
    delivery_id: str
    counts: MergeCounts
    segment_sizes: dict[str, int]
    duplicate_of: str | None = None
    #: merged again although the ledger had it (operator's reprocess); the ledger row says "reprocessed".
    reprocessed: bool = False


def merge_staged(
    project: ProjectConfig, connection: Connection, goal: ImportGoal, work_dir: Path, run_id: str, now: datetime, *, reprocess: bool = False
) -> MergeOutcome:
    """Merge the staged delivery in one transaction with its ledger row.

    The same content under the same configuration is skipped, unless ``reprocess`` (run tag
    ``cdp/reprocess=true``): then it is merged again and ledgered as ``reprocessed``. A reprocess
    applies the set rules and add again (idempotent) and adds to sums only the rows whose identity
    is not yet in ``delivery_rows``, so the delivery's earlier contribution is never counted twice."""
    files, extra = read_manifest(work_dir / "decrypted.json")
    staged = StagedImport.load(work_dir / "tables")
    source = _source_of(project, connection, goal)
    if source.generates_goal:
        goal = _saved_goal(work_dir) or goal
    sha = content_sha256(files)
    config_hash = project.goal_config_hash(connection.name, goal.name)
    delivery_id = hashlib.sha256(f"{connection.name}\0{goal.name}\0{sha}\0{config_hash}".encode()).hexdigest()[:24]
    root = next(f for f in files if f.name == goal.files.root.name)
    record = DeliveryRecord(
        delivery_id=delivery_id,
        connection=connection.name,
        goal=goal.name,
        partition_key=extra.get("partition_key", ""),
        root_file=root.remote_path,
        files=[f.as_ledger() for f in files],
        content_sha256=sha,
        config_hash=config_hash,
    )
    # A refused commit (a DuckLake writer that committed first, a same-process session that wrote
    # the same rows of a DuckDB file) runs the whole transaction again on the newer state, its
    # ledger check included; a lake with several writers is given more attempts.
    lake = project.store.ducklake if project.store.backend == "ducklake" else None
    attempts, first_delay = (lake.write_attempts, LAKE_FIRST_DELAY_SECONDS) if lake else (ATTEMPTS, FIRST_DELAY_SECONDS)
    with open_writer(project.store_location, project.catalog, threads=project.store.threads, memory=writer_memory(project)) as conn:

        def merge_once() -> tuple[str | None, MergeCounts | None]:
            # Stamp changes with a time taken after the lock is ours: an export that ran while this
            # merge waited must never have a later mark than the changes it did not see.
            stamp = max(now, datetime.now(UTC).replace(tzinfo=None))
            already = delivery_is_merged(conn, sha, config_hash, connection.name, goal.name)
            if already and not reprocess:
                return already, None
            steps = source.around_merge(
                MergeContext(
                    catalog=project.catalog, files=_local_files(files), connection=connection.name, goal=goal.name,
                    root_file=root.remote_path, content_sha256=sha, now=stamp,
                )
            )
            prepared = steps.prepare(conn, staged) if steps.prepare is not None else staged
            return already, merge_delivery(
                conn, project.catalog, prepared, record, run_id, stamp,
                before=steps.before, after=steps.after,
                objectives=connection.objectives, consent_property=project.store.consent_property,
                record_history=project.store.history,
                status="reprocessed" if already else "merged",
            )

        with progress.stage("merge", record.partition_key or goal.name, "rows") as meter:
            already, counts = retry_on_conflict(
                merge_once, what=f"merging delivery {record.partition_key or record.root_file}", attempts=attempts, first_delay=first_delay
            )
            if counts is None and already is not None:
                # Same bytes, same configuration: nothing would change (sums skip counted rows anyway),
                # unless the run that merged it died before refreshing the segments (a retry after a kill).
                sizes = refresh_memberships_if_changed(conn, project.catalog, now, attempts=attempts, first_delay=first_delay) or {}
                return MergeOutcome(
                    status="skipped", delivery_id=already, counts=MergeCounts(rows_read=staged.rows_read), segment_sizes=sizes, duplicate_of=already
                )
            if counts is None:
                raise AssertionError("a merge that neither ran nor found its delivery merged")
            fault_point("after_commit")
            sizes = refresh_memberships(conn, project.catalog, now, attempts=attempts, first_delay=first_delay)
            meter.done = staged.rows_read
    return MergeOutcome(status="merged", delivery_id=delivery_id, counts=counts, segment_sizes=sizes, reprocessed=already is not None)


@dataclass(frozen=True)
class FinishedFiles:
    """What finishing did to a delivery's remote files."""

    #: remote paths marked done, moved to done/ or deleted, per the goal's after_import.
    finished: list[str]
    #: remote paths left where they are because a new version was uploaded under the same name
    #: after the fetch: that version was not imported, so it stays for the next listing.
    left_changed: list[str]


def _changed_since_fetch(transport: Transport, files: list[FetchedFile]) -> set[str]:
    """Paths whose file now differs (size, mtime, ETag) from the version that was fetched.

    A partner may upload the next version under the same name while this one is merged; marking
    or deleting it then would finish a delivery nobody imported. A file that is gone counts as
    unchanged: a retry of this step after a crash finds its own earlier rename done."""
    changed = set()
    for directory in sorted({posixpath.dirname(item.remote_path) for item in files}):
        listed = {remote.path: remote for remote in transport.list_files(directory)}
        for item in files:
            remote = listed.get(item.remote_path)
            if posixpath.dirname(item.remote_path) != directory or remote is None:
                continue
            fetched = RemoteFile(path=item.remote_path, size=item.size, mtime=item.mtime, etag=item.etag)
            if remote.identity != fetched.identity:
                changed.add(item.remote_path)
    return changed


def finish_remote_files(transport: Transport, goal: ImportGoal, work_dir: Path) -> FinishedFiles:
    """After a successful merge: leave, mark ``.done``, move to ``done/`` or delete the delivery's
    remote files (per goal). Idempotent, so a retry after a crash is harmless."""
    if _skip_reason(work_dir):
        return FinishedFiles([], [])  # a SARE pair with "import": false stays where it is
    goal = _saved_goal(work_dir) or goal
    files, _ = read_manifest(work_dir / "fetched.json")
    action = goal.files.after_import
    if action.action == "leave":
        return FinishedFiles([], [])
    changed = _changed_since_fetch(transport, files)
    # S3 can also refuse the move itself when the object changed between this check and the call.
    pinned = transport if isinstance(transport, EtagPinnedFinishing) else None
    done = []
    for item in files:
        if item.remote_path in changed:
            continue
        if action.action == "delete":
            if pinned is not None and item.etag:
                pinned.delete_if_unchanged(item.remote_path, item.etag)
            else:
                transport.delete(item.remote_path)
        else:
            if action.action == "done_suffix":
                target = item.remote_path + action.done_suffix
            else:
                directory, name = posixpath.split(item.remote_path)
                target = posixpath.join(directory, action.done_directory, name)
            if pinned is not None and item.etag:
                pinned.rename_if_unchanged(item.remote_path, target, item.etag)
            else:
                transport.rename(item.remote_path, target)
        done.append(item.remote_path)
    return FinishedFiles(done, sorted(changed))


def finish_delivery(transport: Transport, goal: ImportGoal, work_dir: Path) -> FinishedFiles:
    """After the merge (or its skip): finish the remote files, then remove the customer data.

    A skipped delivery is finished too: it is either the same bytes delivered again or the retry
    of a run that committed its merge and died before this step; either way its content is in the
    store and its files must not stay to be offered again."""
    finished = finish_remote_files(transport, goal, work_dir)
    clean_plaintext(work_dir)
    return finished


def record_import(
    project: ProjectConfig, outcome: MergeOutcome, *, run_id: str, connection: str, goal: str, partition_key: str, started_at: datetime,
    publish: bool = True,
) -> None:
    """The import's row in the run ledger and, in the same writer session, the analysts' copy of
    the store refreshed (so what they query includes this delivery). ``publish=False``: the
    caller publishes once when its run ends (a connection run of several deliveries)."""
    with open_writer(project.store_location, project.catalog) as conn:
        record_run(
            conn, run_id=run_id, connection=connection, kind="import", goal=goal, partition_key=partition_key,
            started_at=started_at, ended_at=datetime.now(UTC).replace(tzinfo=None),
            status="SUCCESS" if outcome.status == "merged" else "SKIPPED",
            counts=outcome.counts.as_metadata(), last_profiles=outcome.counts.last_profiles, error=None,
        )
        if publish and project.published_store_path is not None:
            publish_copy(conn, project.published_store_path)


def quarantine_delivery(transport: Transport, goal: ImportGoal, work_dir: Path) -> list[str]:
    """A delivery that cannot be imported is moved aside (when its goal has a quarantine folder),
    so it is not retried blindly and the other deliveries keep flowing. Returns the paths moved."""
    if not goal.files.after_import.quarantine_directory or not (work_dir / "fetched.json").exists():
        return []
    files, _ = read_manifest(work_dir / "fetched.json")
    return quarantine_remote_files(transport, goal, [f.remote_path for f in files])


def quarantine_remote_files(transport: Transport, goal: ImportGoal, remote_paths: list[str]) -> list[str]:
    """Move a failed delivery's files aside so the rest keep flowing and nobody re-imports them blindly."""
    directory_name = goal.files.after_import.quarantine_directory
    if not directory_name:
        return []
    moved = []
    for remote_path in remote_paths:
        directory, name = posixpath.split(remote_path)
        transport.rename(remote_path, posixpath.join(directory, directory_name, name))
        moved.append(remote_path)
    return moved


# What a delivery's work directory holds of the customers' data, as opposed to its manifests and
# reject report (which name files, lines and reasons, and stay for whoever fixes the delivery).
_CUSTOMER_DATA_FOLDERS = ("fetched", "decrypted", "tables")


def clean_plaintext(work_dir: Path) -> None:
    """Downloaded, decrypted and staged customer data never outlives the run that needed it."""
    for folder in _CUSTOMER_DATA_FOLDERS:
        shutil.rmtree(work_dir / folder, ignore_errors=True)


def sweep_stale_work(project: ProjectConfig, connection: str, older_than_hours: float = 24, now: float | None = None) -> list[Path]:
    """Remove the customer data of deliveries whose runs failed or died more than
    ``older_than_hours`` ago: a run that died cannot clean up after itself, so the next one does.

    A failed run leaves its files for the re-execution that usually follows; a day later they are
    only a copy of customer data nobody looks after. Returns the work directories cleaned.
    """
    root = project.work_dir / connection
    if not root.is_dir():
        return []
    limit = (time.time() if now is None else now) - older_than_hours * 3600
    cleaned = []
    for work_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        present = [work_dir / folder for folder in _CUSTOMER_DATA_FOLDERS if (work_dir / folder).exists()]
        if present and max(path.stat().st_mtime for path in present) < limit:
            clean_plaintext(work_dir)
            cleaned.append(work_dir)
    return cleaned


def created_properties(staged: StagedImport) -> dict[str, str]:
    """What a delivery's bulk mappings create, for the import's metadata: profile properties by
    name, event properties as ``timeline_<type>.<name>``, each with its inferred type."""
    created = dict(staged.detected_properties)
    for event_type, properties in staged.detected_event_properties.items():
        created.update({f"{event_table(event_type)}.{name}": kind for name, kind in properties.items()})
    return created

