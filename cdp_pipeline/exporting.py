"""Running an export goal: select the segment's profiles in the store, write the CSV files,
encrypt them when asked, deliver them complete-or-not-at-all, then record the export."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.errors import CdpError
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.exports import record_export, select_profiles, write_profiles_csv, write_timeline_csvs
from cdp_pipeline.store.segments import refresh_memberships
from cdp_pipeline.transports.base import Transport


@dataclass
class ExportedFile:
    remote_path: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class ExportOutcome:
    profiles_available: int
    profiles_exported: int
    profile_file: ExportedFile | None
    timeline_files: list[ExportedFile] = field(default_factory=list)
    target_uri: str = ""

    @property
    def bytes(self) -> int:
        files = ([self.profile_file] if self.profile_file else []) + self.timeline_files
        return sum(f.bytes for f in files)


def render_name(template: str, *, goal: str, segment: str, run_id: str, now: datetime) -> str:
    return template.format(
        goal=goal,
        segment=segment,
        run_id=run_id[:8],
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S"),
        datetime=now.strftime("%Y%m%dT%H%M%S"),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _deliver(transport: Transport, local: Path, remote_path: str, rows: int, goal: ExportGoal, keyring_factory) -> ExportedFile:
    """Encrypt (when asked), upload via a temporary name, write the manifest. Encryption failing
    raises before anything is uploaded: plaintext never leaves when encryption was asked (#73)."""
    to_send = local
    if goal.target.encrypt:
        if keyring_factory is None:
            raise CdpError(f"export goal {goal.name!r} asks for encryption but the connection has no public key")
        encrypted = local.with_name(local.name + ".pgp")
        with keyring_factory() as keyring:
            keyring.encrypt_file(local, encrypted)
        to_send, remote_path = encrypted, remote_path + ".pgp"
    size = to_send.stat().st_size
    sha = _sha256(to_send)
    transport.upload(to_send, remote_path)
    if goal.target.manifest:
        manifest = to_send.with_name(to_send.name + ".manifest.json")
        manifest.write_text(json.dumps({"file": posixpath.basename(remote_path), "rows": rows, "bytes": size, "sha256": sha}, indent=2))
        transport.upload(manifest, remote_path + ".manifest.json")
    return ExportedFile(remote_path=remote_path, rows=rows, bytes=size, sha256=sha)


def run_export(
    project: ProjectConfig,
    connection: Connection,
    goal: ExportGoal,
    transport: Transport,
    run_id: str,
    now: datetime,
    *,
    full: bool = False,
    keyring_factory=None,
    consent_property: str | None = "consents",
) -> ExportOutcome:
    work = project.work_dir / connection.name / f"export-{goal.name}-{run_id[:12]}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o700)
    try:
        with open_writer(project.store_path, project.catalog, threads=project.store.threads) as conn:
            refresh_memberships(conn, project.catalog, now)
            selection = select_profiles(
                conn, project.catalog, connection.name, goal, full=full, consent_property=consent_property, objectives=connection.objectives
            )
            suffix = ".gz" if goal.target.gzip and not goal.target.file_name.endswith(".gz") else ""
            file_name = render_name(goal.target.file_name, goal=goal.name, segment=goal.segment, run_id=run_id, now=now) + suffix
            local = work / file_name
            rows = write_profiles_csv(conn, project.catalog, goal, local)
            timeline: dict[str, tuple[Path, int]] = {}
            if goal.timeline is not None:
                since = datetime.fromisoformat(goal.timeline.since) if goal.timeline.since else None
                until = datetime.fromisoformat(goal.timeline.until) if goal.timeline.until else None
                if goal.timeline.last_days:
                    since = now - timedelta(days=goal.timeline.last_days)
                timeline = write_timeline_csvs(conn, project.catalog, goal, work / "timeline", since=since, until=until)
            _transcode(local, goal)
            outcome = ExportOutcome(profiles_available=selection.profiles_available, profiles_exported=rows, profile_file=None, target_uri=transport.uri)
            outcome.profile_file = _deliver(transport, local, posixpath.join(goal.target.directory, file_name), rows, goal, keyring_factory)
            if goal.timeline is not None:
                directory = render_name(
                    goal.timeline.directory or posixpath.join(goal.target.directory, "{goal}_timeline_{date}"),
                    goal=goal.name, segment=goal.segment, run_id=run_id, now=now,
                )
                for path, count in timeline.values():
                    _transcode(path, goal)
                    outcome.timeline_files.append(_deliver(transport, path, posixpath.join(directory, path.name), count, goal, keyring_factory))
            record_export(conn, connection.name, goal.name, run_id, now)
        return outcome
    finally:
        # Export files hold personal data: nothing stays in the work directory after the run.
        shutil.rmtree(work, ignore_errors=True)


def _transcode(path: Path, goal: ExportGoal) -> None:
    """DuckDB writes UTF-8; re-encode for consumers that need another encoding."""
    encoding = goal.csv.encoding
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") or goal.target.gzip:
        return
    temporary = path.with_name(path.name + ".enc")
    with path.open("r", encoding="utf-8", newline="") as source, temporary.open("w", encoding=encoding, newline="", errors="strict") as target:
        shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(temporary, path)
