"""Running an export goal: select the segment's profiles in the store, write the CSV files,
encrypt them when asked, deliver them complete-or-not-at-all, then record the export.

The order matters and is what makes a run safe to retry:

1. With the store's writer connection: refresh segment and lifecycle membership, select the
   profiles, ``COPY`` every file (profile file or its parts, diff file, timeline files) into the
   run's private work directory, and keep the exported ids (and diff snapshot) as Parquet there.
   The writer is then closed, so an import is never blocked by a slow upload.
2. Re-encode (and gzip) when the goal's encoding is not UTF-8.
3. Encrypt **every** file before uploading **any**: a bad, expired or missing key fails the run
   with nothing sent, and plaintext is never uploaded in its place.
4. Upload each file to ``<name>.part`` and rename (the transports do it, so a consumer never reads
   a half-written file), then the manifests,
   so a consumer that waits for manifests sees every data file complete.
5. Reopen the writer and record the export (``export_state``, ``exchanged_profiles`` and the diff
   snapshot) in one transaction. A failure anywhere before leaves the goal's state as it was: the
   next run sends the same profiles again under the same names (at least once, never lost).

The work directory holds personal data and is removed in ``finally``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import posixpath
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cdp_pipeline import progress
from cdp_pipeline.config.catalog import consent_property_problem
from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.errors import CdpError, ConfigError, CryptoError, ExportCollisionError, TransportError
from cdp_pipeline.fault_injection import fault_point
from cdp_pipeline.orphans import mark_owner, remove_orphans
from cdp_pipeline.private_files import private_directory
from cdp_pipeline.store.conflicts import retry_on_conflict
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.exports import (
    build_export_rows,
    part_count,
    record_export,
    save_selection,
    select_profiles,
    write_diff_csv,
    write_profile_parts,
    write_timeline_csvs,
    writes_utf8,
)
from cdp_pipeline.store.memory import writer_memory
from cdp_pipeline.store.segments import refresh_memberships_if_changed
from cdp_pipeline.transports.base import Transport

#: placeholders of ``target.file_name`` and ``timeline.directory``.
NAME_PLACEHOLDERS = ("date", "time", "datetime", "run_id", "goal", "segment")
_CHUNK = 1024 * 1024


@dataclass
class ExportedFile:
    remote_path: str
    rows: int
    bytes: int
    sha256: str
    #: profiles (the profile file or one of its parts), diff, events (one event type), items (one nested type) or report.
    kind: str = "profiles"


@dataclass
class ExportOutcome:
    profiles_available: int
    profiles_exported: int
    #: the profile file, or its first part when the export is split (see ``profile_files``).
    profile_file: ExportedFile | None
    timeline_files: list[ExportedFile] = field(default_factory=list)
    target_uri: str = ""
    #: every part of the profile file in order; one item unless ``target.split_rows`` is set.
    profile_files: list[ExportedFile] = field(default_factory=list)
    #: ``<name>.diff.csv`` in diff mode.
    diff_file: ExportedFile | None = None
    #: rows of the diff file per change: added, changed, removed.
    diff_counts: dict[str, int] = field(default_factory=dict)
    #: remote paths of the manifests (``target.manifest``).
    manifests: list[str] = field(default_factory=list)
    #: a Netmera goal's campaign and transactional reports (``netmera_reports``).
    report_files: list[ExportedFile] = field(default_factory=list)

    @property
    def files(self) -> list[ExportedFile]:
        return [*self.profile_files, *([self.diff_file] if self.diff_file else []), *self.timeline_files, *self.report_files]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def profile_rows(self) -> int:
        return sum(f.rows for f in self.profile_files)

    @property
    def profile_bytes(self) -> int:
        return sum(f.bytes for f in self.profile_files)

    @property
    def events_exported(self) -> int:
        """Timeline events sent (rows of the event type files, not of their nested items)."""
        return sum(f.rows for f in self.timeline_files if f.kind == "events")


def render_name(template: str, *, goal: str, segment: str, run_id: str, now: datetime) -> str:
    values = {
        "goal": goal,
        "segment": segment,
        "run_id": run_id[:8],
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S"),
        "datetime": now.strftime("%Y%m%dT%H%M%S"),
    }
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"export goal {goal!r}: name template {template!r} does not render ({type(exc).__name__}: {exc}); "
            f"use only the placeholders {', '.join('{' + p + '}' for p in NAME_PLACEHOLDERS)} and double literal braces"
        ) from None


def _split_extension(name: str) -> tuple[str, str]:
    """("high_value_20260115", ".csv.gz") for "high_value_20260115.csv.gz"."""
    compressed = ".gz" if name.endswith(".gz") else ""
    core = name[: -len(compressed)] if compressed else name
    dot = core.rfind(".")
    if dot <= 0:
        return core, compressed
    return core[:dot], core[dot:] + compressed


def part_names(name: str, parts: int) -> list[str]:
    """``x_part001.csv`` … in order. The number has at least three digits and as many as the last
    part needs, so the names of one export sort in part order."""
    stem, extension = _split_extension(name)
    width = max(3, len(str(parts)))
    return [f"{stem}_part{index:0{width}d}{extension}" for index in range(1, parts + 1)]


#: outer extensions a numbered name keeps after the number: x.csv.gz.pgp → x_2.csv.gz.pgp.
_OUTER_EXTENSIONS = (".pgp", ".gpg", ".asc", ".gz")
#: how many numbered names a run tries before it gives up (a folder nobody empties).
MAX_NAME_NUMBER = 999


def numbered_name(path: str, number: int) -> str:
    """``out/x_2.csv.pgp`` for ``out/x.csv.pgp`` and 2: the number goes before every extension so
    the name still opens with the same program and sorts beside the first file."""
    directory, name = posixpath.split(path)
    outer = ""
    while name.endswith(_OUTER_EXTENSIONS):
        extension = next(e for e in _OUTER_EXTENSIONS if name.endswith(e))
        name, outer = name[: -len(extension)], extension + outer
    dot = name.rfind(".")
    stem, inner = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    return posixpath.join(directory, f"{stem}_{number}{inner}{outer}")


def diff_name(name: str) -> str:
    """``x.diff.csv`` for ``x.csv`` (``x.diff.csv.gz`` when gzipped)."""
    stem, extension = _split_extension(name)
    return f"{stem}.diff{extension}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * _CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _utc_naive(moment: datetime) -> datetime:
    """The store keeps naive UTC timestamps; an aware time is converted, not just stripped."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def _period(goal: ExportGoal, now: datetime) -> tuple[datetime | None, datetime | None]:
    if goal.timeline is None:
        raise ConfigError(f"export goal {goal.name!r} has no timeline, so it has no timeline period")

    def parse(key: str, value: str | None) -> datetime | None:
        if not value:
            return None
        try:
            return _utc_naive(datetime.fromisoformat(value))
        except ValueError:
            raise ConfigError(f"export goal {goal.name!r}: timeline.{key} {value!r} is not an ISO date or date-time (2026-01-31)") from None

    since, until = parse("since", goal.timeline.since), parse("until", goal.timeline.until)
    if goal.timeline.last_days:
        since = now - timedelta(days=goal.timeline.last_days)
    return since, until


@dataclass
class _Planned:
    """One file on its way out."""

    local: Path
    remote: str
    rows: int
    kind: str


def run_export(
    project: ProjectConfig,
    connection: Connection,
    goal: ExportGoal,
    transport: Transport,
    run_id: str,
    now: datetime,
    *,
    full: bool = False,
    keyring_factory: Callable[[], AbstractContextManager[Any]] | None = None,
    consent_property: str | None = None,
) -> ExportOutcome:
    """Export ``goal`` of ``connection`` through ``transport``; see the module docstring.

    ``full`` exports every available profile instead of only the changed ones. ``keyring_factory``
    returns a context manager giving a keyring with ``encrypt_file(src, dst)`` (a
    ``PgpKeyring`` with the connection's public key). ``consent_property`` overrides
    ``store.consent_property``, the list property holding the objectives a profile consented to
    (the import filters on the same one).
    """
    now = _utc_naive(now)
    if consent_property is not None and connection.objectives and (problem := consent_property_problem(project.catalog.profile_properties, consent_property)):
        # Loading checked store.consent_property; an override here has not been through load.
        raise ConfigError(problem)
    consent_property = consent_property or project.store.consent_property
    work = project.work_dir / connection.name / f"export-{goal.name}-{run_id[:12]}"
    shutil.rmtree(work, ignore_errors=True)
    # An export killed with SIGKILL left its plaintext files and their ciphertext behind.
    remove_orphans(work.parent, f"export-{goal.name}-")
    private_directory(work)
    mark_owner(work)
    os.chmod(project.work_dir, 0o700)
    try:
        file_name = render_name(goal.target.file_name, goal=goal.name, segment=goal.segment, run_id=run_id, now=now)
        if goal.target.gzip and not file_name.endswith(".gz"):
            file_name += ".gz"
        if goal.diff and not any(column.kind == "profile_id" for column in goal.columns):
            raise ConfigError(
                f"export goal {goal.name!r}: diff mode needs a profile identifier column to tell the consumer which row "
                "changed or went away; add {header: profile_id, profile_id: true} to columns"
            )
        timeline_directory = ""
        since = until = None
        if goal.timeline is not None:
            since, until = _period(goal, now)
            timeline_directory = render_name(
                goal.timeline.directory or posixpath.join(goal.target.directory, "{goal}_timeline_{date}"),
                goal=goal.name, segment=goal.segment, run_id=run_id, now=now,
            )
        files_dir = work / "files"
        files_dir.mkdir()
        plan: list[_Planned] = []
        diff_counts: dict[str, int] = {}

        subject = f"{connection.name}.{goal.name}"
        writer = open_writer(project.store_location, project.catalog, threads=project.store.threads, memory=writer_memory(project))
        with progress.stage("export", subject, "rows") as meter, writer as conn:
            refresh_memberships_if_changed(conn, project.catalog, now)
            selection = select_profiles(
                conn, project.catalog, connection.name, goal, full=full, consent_property=consent_property, objectives=connection.objectives
            )
            rows = build_export_rows(
                conn, project.catalog, goal, run_time=now, consent_property=consent_property, include_unchanged=goal.diff
            )
            if goal.target.split_rows:
                names = part_names(file_name, part_count(rows, goal.target.split_rows))
                written = write_profile_parts(conn, goal, [files_dir / name for name in names])
            else:
                written = write_profile_parts(conn, goal, files_dir / file_name)
            if rows or goal.target.write_empty_files:
                plan += [_Planned(path, posixpath.join(goal.target.directory, path.name), count, "profiles") for path, count in written]
            if goal.diff:
                path = files_dir / diff_name(file_name)
                diff_counts = write_diff_csv(conn, connection.name, goal, path)
                if sum(diff_counts.values()) or goal.target.write_empty_files:
                    plan.append(_Planned(path, posixpath.join(goal.target.directory, path.name), sum(diff_counts.values()), "diff"))
            if goal.timeline is not None:
                timeline = write_timeline_csvs(conn, project.catalog, goal, work / "timeline", since=since, until=until)
                # As the profile file: a run that has no event to send sends no header-only files
                # (a second run the same day must not leave the partner an empty set next to the
                # morning's). When any event goes out, the whole set goes, so a consumer always
                # finds every type's file beside the others.
                if any(count for _, count in timeline.values()) or goal.target.write_empty_files:
                    plan += [
                        _Planned(path, posixpath.join(timeline_directory, path.name), count, "items" if "/" in key else "events")
                        for key, (path, count) in timeline.items()
                    ]
            if goal.netmera_reports:
                # Imported here: the dialects package loads the whole import side (discovery,
                # staging, Polars), which an ordinary export never needs.
                from cdp_pipeline.dialects.netmera import NetmeraSettings
                from cdp_pipeline.dialects.netmera_reports import report_period, write_netmera_reports

                dialect = project.dialects.get(connection.name)
                first, last = report_period(since, until, now)
                reports = write_netmera_reports(
                    conn, dialect if isinstance(dialect, NetmeraSettings) else None, project.catalog, goal, work / "reports",
                    since=first, until=last, now=now,
                )
                # As the profile file: a report without rows is sent only when write_empty_files asks for it.
                plan += [
                    _Planned(path, posixpath.join(goal.target.directory, path.name), count, "report")
                    for path, count in reports
                    if count or goal.target.write_empty_files
                ]
            exported_ids, snapshot_rows = save_selection(conn, work / "state", diff=goal.diff)
            meter.done = sum(item.rows for item in plan)

        # The writer is closed from here on: encoding, encryption and upload never hold the store.
        fault_point("export")
        for item in plan:
            _finish_encoding(item.local, goal)
        if goal.target.encrypt:
            _encrypt_all(plan, goal, transport, keyring_factory)
        _avoid_existing_names(plan, goal, transport)
        fault_point("upload")
        sent: list[ExportedFile] = []
        with (
            progress.stage("upload", subject, "bytes", measure=lambda: sum(f.bytes for f in sent)) as uploaded,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-sha256") as hashing,
        ):
            # Each file is hashed while files are uploaded (hashlib and the transports' copies
            # release the GIL), not read once for the hash and then again for the upload.
            digests = [hashing.submit(_sha256, item.local) for item in plan]
            try:
                for item, digest in zip(plan, digests, strict=True):
                    size = item.local.stat().st_size
                    _upload(transport, item.local, item.remote, goal, done=len(sent), total=len(plan))
                    sent.append(ExportedFile(remote_path=item.remote, rows=item.rows, bytes=size, sha256=digest.result(), kind=item.kind))
            except BaseException:
                for digest in digests:
                    digest.cancel()  # a failed upload does not wait for the other files' hashes
                raise
            uploaded.done = sum(f.bytes for f in sent)
        manifests = []
        if goal.target.manifest:
            # After every data file: a consumer that waits for manifests never sees a partial set.
            for item, exported in zip(plan, sent, strict=True):
                manifest = item.local.with_name(item.local.name + ".manifest.json")
                manifest.write_text(
                    json.dumps(
                        {
                            "file": posixpath.basename(exported.remote_path),
                            "rows": exported.rows,
                            "bytes": exported.bytes,
                            "sha256": exported.sha256,
                            "goal": goal.name,
                            "run_id": run_id,
                        },
                        indent=2,
                    )
                )
                _upload(transport, manifest, exported.remote_path + ".manifest.json", goal, done=len(sent), total=len(plan))
                manifests.append(exported.remote_path + ".manifest.json")

        with open_writer(project.store_location, project.catalog, threads=project.store.threads, memory=writer_memory(project)) as conn:
            retry_on_conflict(
                lambda: record_export(conn, connection.name, goal.name, run_id, now, exported=exported_ids, rows=snapshot_rows),
                what=f"recording export {goal.name}",
            )

        profile_files = [f for f in sent if f.kind == "profiles"]
        return ExportOutcome(
            profiles_available=selection.profiles_available,
            profiles_exported=rows,
            profile_file=profile_files[0] if profile_files else None,
            timeline_files=[f for f in sent if f.kind in ("events", "items")],
            target_uri=transport.uri,
            profile_files=profile_files,
            diff_file=next((f for f in sent if f.kind == "diff"), None),
            diff_counts=diff_counts,
            manifests=manifests,
            report_files=[f for f in sent if f.kind == "report"],
        )
    finally:
        # Export files hold personal data: nothing stays in the work directory after the run.
        shutil.rmtree(work, ignore_errors=True)


def _finish_encoding(path: Path, goal: ExportGoal) -> None:
    """DuckDB writes UTF-8 (and gzips it itself). Any other encoding is re-encoded here in 1 MiB
    chunks, then gzipped when asked; the gzip header carries no name or time, so the same rows
    give the same bytes."""
    if writes_utf8(goal):
        return
    encoding = goal.csv.encoding
    temporary = path.with_name(path.name + ".enc")
    try:
        with path.open("r", encoding="utf-8", newline="") as source, temporary.open("wb") as raw:
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if goal.target.gzip else raw
            with sink:
                encoder = _incremental_encoder(encoding)
                offset = 0
                while chunk := source.read(_CHUNK):
                    try:
                        sink.write(encoder.encode(chunk))
                    except UnicodeEncodeError as exc:
                        # The code point, not the value: error messages carry no personal data.
                        raise CdpError(
                            f"export goal {goal.name!r}: {path.name} holds the character U+{ord(exc.object[exc.start]):04X} "
                            f"(near character {offset + exc.start}) that encoding {encoding!r} cannot represent; use "
                            "csv.encoding utf-8, or a processor (map_values, filter_rows) that removes such values"
                        ) from None
                    offset += len(chunk)
                sink.write(encoder.encode("", final=True))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _incremental_encoder(encoding: str) -> codecs.IncrementalEncoder:
    return codecs.getincrementalencoder(encoding)(errors="strict")


def _encrypt_all(
    plan: list[_Planned], goal: ExportGoal, transport: Transport, keyring_factory: Callable[[], AbstractContextManager[Any]] | None
) -> None:
    """Replace every planned file by its ciphertext (``.pgp``). Any failure raises before a
    single byte is uploaded; the plaintext is never sent instead."""
    where = f"{transport.uri}/{plan[0].remote}.pgp" if plan else transport.uri
    if keyring_factory is None:
        raise CryptoError(
            f"export goal {goal.name!r} asks for encryption (target.encrypt) but the connection has no public key; set "
            f"pgp.public_key_env (and pgp.public_key_fingerprint). Nothing was uploaded to {where}"
        )
    try:
        with keyring_factory() as keyring:
            for item in plan:
                encrypted = item.local.with_name(item.local.name + ".pgp")
                keyring.encrypt_file(item.local, encrypted)
                item.local.unlink()
                item.local, item.remote = encrypted, item.remote + ".pgp"
    except CryptoError as exc:
        raise CryptoError(
            f"export goal {goal.name!r}: {exc} Nothing was uploaded (first file would have been {where}); "
            "the export state was not advanced, so the next run sends the same profiles."
        ) from exc


def _avoid_existing_names(plan: list[_Planned], goal: ExportGoal, transport: Transport) -> None:
    """Give this run's files names no file on the target has yet.

    A second export on the same day renders the same ``{date}`` name; uploading it would replace
    the morning's file before the partner fetched it. All files of one run get the same number,
    so the parts, the diff and the manifests of a run still belong together by name."""
    if not plan:
        return

    def names(number: int) -> list[str]:
        remotes = [item.remote if number == 1 else numbered_name(item.remote, number) for item in plan]
        return remotes + ([remote + ".manifest.json" for remote in remotes] if goal.target.manifest else [])

    taken = [name for name in names(1) if transport.exists(name)]
    if not taken:
        return
    if goal.target.on_existing_file == "fail":
        raise ExportCollisionError(
            f"export goal {goal.name!r}: {transport.uri}/{taken[0]} already exists and target.on_existing_file is 'fail'; "
            "nothing was sent and the export state was not advanced. Let the partner fetch (or remove) the file, "
            "put {time} or {run_id} in target.file_name, or set on_existing_file: suffix"
        )
    for number in range(2, MAX_NAME_NUMBER + 1):
        if not any(transport.exists(name) for name in names(number)):
            for item in plan:
                item.remote = numbered_name(item.remote, number)
            return
    raise ExportCollisionError(
        f"export goal {goal.name!r}: {transport.uri}/{taken[0]} and its numbered names up to _{MAX_NAME_NUMBER} all exist; "
        "nothing was sent. Put {time} or {run_id} in target.file_name or clear the target folder"
    )


def _upload(transport: Transport, local: Path, remote: str, goal: ExportGoal, *, done: int, total: int) -> None:
    context = (
        f"export goal {goal.name!r}: upload of {transport.uri}/{remote} failed"
        + (f" after {done} of {total} files were delivered" if done else "")
        + "; the export state was not advanced, so the next run sends every file again"
    )
    try:
        transport.upload(local, remote)
    except CdpError as exc:
        # Same type (transient errors stay retryable), with the goal and what happens next.
        try:
            wrapped = type(exc)(f"{context}: {exc}")
        except TypeError:
            exc.add_note(context)
            raise
        raise wrapped from exc
    except OSError as exc:
        raise TransportError(
            f"{context}: {exc.strerror or exc}. Check that target.directory exists and the account may write to it"
        ) from exc
