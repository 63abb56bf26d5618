"""How a connection's dialect plugs into the ordinary delivery steps (``cdp_pipeline.importing``):
listing, staging and the merge hooks. The delivery still goes fetch → decrypt → stage → merge →
finish with the same ledger and store; only the goal is generated per delivery.

What a step needs later is kept in the delivery's work directory: ``goal.json`` (the generated
goal, for the merge's ledger row and for finishing the remote files) and ``skip.json`` (a SARE
pair whose sidecar says ``"import": false``: nothing merged, the files stay where they are).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import ProfileImportGoal
from cdp_pipeline.deliveries import DeliveryScan, scan_deliveries
from cdp_pipeline.dialects import netmera, sare
from cdp_pipeline.tables.staged import StagedImport
from cdp_pipeline.transports.base import RemoteFile, Transport

GOAL_FILE = "goal.json"
SKIP_FILE = "skip.json"


def listing_goal(settings, kind: str) -> ProfileImportGoal:
    """A goal that says where the dialect's files are and what happens to them after import (or
    on failure), before the per-delivery goal exists."""
    if kind == "sare":
        return _sare_listing_goal(settings)
    return netmera.netmera_listing_goal(settings, kind)


def _sare_listing_goal(settings: sare.SareSettings) -> ProfileImportGoal:
    from cdp_pipeline.config.connection import AfterImport, Files, FileSelection, Identifier, Readiness

    return ProfileImportGoal(
        type="import_profiles",
        name=settings.goal_name,
        files=Files(
            directory=settings.directory,
            root=FileSelection(name=sare.DATA, pattern="*.csv"),
            readiness=Readiness(mode="stable", stable_seconds=settings.stable_seconds),
            after_import=AfterImport(action="move_to_done", done_directory=settings.done_directory, quarantine_directory=settings.quarantine_directory),
        ),
        identifiers=[Identifier(column="email", property=settings.email_property)],
    )


def scan(connection: str, settings, transport: Transport, is_ready: Callable[[RemoteFile], bool], now: float | None = None) -> list[tuple[ProfileImportGoal, DeliveryScan]]:
    if settings.type == "sare":
        listing = transport.list_files(settings.directory)
        return [(listing_goal(settings, "sare"), sare.scan_sare_deliveries(connection, listing, settings, is_ready, now))]
    scans = []
    # Profile attributes first: a push for an external id finds the profile a same-run file created.
    for kind in ("profile", "push"):
        goal = netmera.netmera_listing_goal(settings, kind)
        listing = transport.list_files(goal.files.directory)
        scans.append((goal, scan_deliveries(connection, goal, listing, is_ready)))
    return scans


def stage(
    kind: str,
    settings,
    catalog: Catalog,
    files: dict[str, tuple[Path, str, float]],
    work_dir: Path,
    run_time: datetime,
    data_was_encrypted: bool,
) -> tuple[ProfileImportGoal, StagedImport]:
    """Generate the delivery's goal and read it with the ordinary engine. ``files``: logical name →
    (local plaintext path, remote path, remote mtime)."""
    (work_dir / SKIP_FILE).unlink(missing_ok=True)
    if kind == "sare":
        data_path, data_display, _ = files[sare.DATA]
        sidecar_path, sidecar_display, _ = files[sare.SIDECAR]
        staging = sare.stage_sare_pair(
            sidecar_path, data_path, sidecar_display=sidecar_display, data_display=data_display,
            catalog=catalog, settings=settings, run_time=run_time, data_was_encrypted=data_was_encrypted,
        )
        goal, staged = staging.goal, staging.staged
        if staged is None:
            (work_dir / SKIP_FILE).write_text(json.dumps({"reason": staging.actions.skip_reason}))
            staged = _empty_staged(staging.actions)
    else:
        name = netmera.PUSH if kind == "push" else netmera.PROFILE
        local, display, mtime = files[name]
        delivered_at = datetime.fromtimestamp(mtime, tz=UTC).replace(tzinfo=None)
        goal, staged = netmera.stage_netmera_file(
            kind, local, display_name=display, delivered_at=delivered_at, catalog=catalog, settings=settings, run_time=run_time
        )
    (work_dir / GOAL_FILE).write_text(goal.model_dump_json())
    return goal, staged


def _empty_staged(actions: sare.SareActions) -> StagedImport:
    import polars as pl

    return StagedImport(
        target="profiles",
        identifier_property=actions.identifier_property,
        allow_create=False,
        rules={},
        records=pl.DataFrame(schema={"_key": pl.String, "_line": pl.Int64}),
        warnings=[actions.skip_reason or "the sidecar says import: false"],
    )


def saved_goal(work_dir: Path) -> ProfileImportGoal | None:
    path = work_dir / GOAL_FILE
    return ProfileImportGoal.model_validate_json(path.read_text()) if path.exists() else None


def skipped(work_dir: Path) -> str | None:
    path = work_dir / SKIP_FILE
    return json.loads(path.read_text())["reason"] if path.exists() else None


@dataclass
class MergeHooks:
    """What a dialect adds around ``merge_delivery``: ``prepare`` before the transaction (may
    replace the staged tables), ``before`` and ``after`` inside it."""

    prepare: Callable | None = None
    before: Callable | None = None
    after: Callable | None = None


def merge_hooks(kind: str, settings, catalog: Catalog, work_dir: Path, files: dict[str, tuple[Path, str, float]], *, connection: str, goal: str, root_file: str, content_sha256: str, now: datetime) -> MergeHooks:
    if kind == "sare":
        sidecar_path, sidecar_display, _ = files[sare.SIDECAR]
        data_path, data_display, _ = files[sare.DATA]
        sidecar = sare.parse_sidecar(sidecar_path, sidecar_display)
        header = sare.read_header(data_path, sidecar, data_display)
        _, actions = sare.sare_goal(sidecar, header, settings, catalog, data_name=data_display, sidecar_name=sidecar_display)
        if not actions.import_rows:
            return MergeHooks()
        return MergeHooks(
            prepare=lambda conn, staged: sare.resolve_duplicates(conn, staged, actions, data_display),
            before=lambda conn, staged: sare.apply_store_actions(conn, catalog, actions, staged, phase="before", now=now),
            after=lambda conn, staged: sare.apply_store_actions(conn, catalog, actions, staged, phase="after", now=now),
        )
    return MergeHooks(
        prepare=lambda conn, staged: (
            netmera.check_file_name_unused(conn, connection=connection, goal=goal, root_file=root_file, content_sha256=content_sha256),
            staged,
        )[1],
    )
