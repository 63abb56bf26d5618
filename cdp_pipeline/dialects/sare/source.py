"""SARE pairs as a ``DeliverySource``: listed, staged and merged by the ordinary delivery flow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from cdp_pipeline.config.connection import (
    AfterImport,
    Files,
    FileSelection,
    Identifier,
    ProfileImportGoal,
    Readiness,
)
from cdp_pipeline.deliveries.grouping import DeliveryScan
from cdp_pipeline.deliveries.sources import MergeContext, MergeSteps, StagedDelivery, StagingInput
from cdp_pipeline.dialects.sare.goal import SareActions, sare_goal
from cdp_pipeline.dialects.sare.scan import scan_sare_deliveries, split_pair_name
from cdp_pipeline.dialects.sare.settings import DATA, SIDECAR, SareSettings
from cdp_pipeline.dialects.sare.sidecar import parse_sidecar, read_header
from cdp_pipeline.dialects.sare.staging import stage_sare_pair
from cdp_pipeline.dialects.sare.store_actions import apply_store_actions, drop_stored_spamtraps, resolve_duplicates
from cdp_pipeline.tables.staged import KEY, LINE, StagedImport
from cdp_pipeline.transports.base import RemoteFile, is_temporary_upload

# --------------------------------------------------------------------------- the delivery source


def sare_listing_goal(settings: SareSettings) -> ProfileImportGoal:
    """A goal that says where the pairs are and what happens to them after the import (or on
    failure), before the pair's own goal is generated from its sidecar."""
    return ProfileImportGoal(
        type="import_profiles",
        name=settings.goal_name,
        files=Files(
            directory=settings.directory,
            root=FileSelection(name=DATA, pattern="*.csv"),
            readiness=Readiness(mode="stable", stable_seconds=settings.stable_seconds),
            after_import=AfterImport(action="move_to_done", done_directory=settings.done_directory, quarantine_directory=settings.quarantine_directory),
        ),
        identifiers=[Identifier(column="email", property=settings.email_property)],
    )


def _not_imported(actions: SareActions) -> StagedImport:
    """The staged tables of a pair whose sidecar says "import": false: no rows, the reason as a warning."""
    return StagedImport(
        target="profiles",
        identifier_property=actions.identifier_property,
        allow_create=False,
        rules={},
        records=pl.DataFrame(schema={KEY: pl.String, LINE: pl.Int64}),
        warnings=[actions.skip_reason or "the sidecar says import: false"],
    )


@dataclass(frozen=True)
class SareSource:
    """SARE pairs as a ``DeliverySource``: ``name.csv`` + ``name.import`` listed as one delivery,
    staged with the goal the sidecar describes, and the sidecar's store actions (group clears,
    history, blocked addresses, withdrawn consents) run inside the merge's transaction."""

    settings: SareSettings

    @property
    def goal_name(self) -> str:
        return self.settings.goal_name

    @property
    def listing_goal(self) -> ProfileImportGoal:
        return sare_listing_goal(self.settings)

    @property
    def generates_goal(self) -> bool:
        return True

    def claims(self, name: str) -> bool:
        return not is_temporary_upload(name) and split_pair_name(name) is not None

    def scan(self, connection: str, listing: list[RemoteFile], is_ready: Callable[[RemoteFile], bool], now: float | None) -> DeliveryScan:
        return scan_sare_deliveries(connection, listing, self.settings, is_ready, now)

    def stage(self, inputs: StagingInput) -> StagedDelivery:
        data, sidecar = inputs.files[DATA], inputs.files[SIDECAR]
        staging = stage_sare_pair(
            sidecar.path, data.path, sidecar_display=sidecar.remote_path, data_display=data.remote_path,
            catalog=inputs.catalog, settings=self.settings, run_time=inputs.run_time, data_was_encrypted=inputs.root_was_encrypted,
        )
        if staging.staged is None:
            return StagedDelivery(goal=staging.goal, staged=_not_imported(staging.actions), skip_reason=staging.actions.skip_reason)
        return StagedDelivery(goal=staging.goal, staged=staging.staged)

    def around_merge(self, context: MergeContext) -> MergeSteps:
        data, sidecar_file = context.files[DATA], context.files[SIDECAR]
        sidecar = parse_sidecar(sidecar_file.path, sidecar_file.remote_path)
        header = read_header(data.path, sidecar, data.remote_path)
        _, actions = sare_goal(sidecar, header, self.settings, context.catalog, data_name=data.remote_path, sidecar_name=sidecar_file.remote_path)
        if not actions.import_rows:
            return MergeSteps()
        catalog, now = context.catalog, context.now

        def resolve(conn, staged: StagedImport) -> StagedImport:
            staged = drop_stored_spamtraps(conn, staged, actions, data.remote_path)
            return resolve_duplicates(conn, staged, actions, data.remote_path)

        def before(conn, staged: StagedImport) -> None:
            apply_store_actions(conn, catalog, actions, staged, phase="before", now=now)

        def after(conn, staged: StagedImport) -> None:
            apply_store_actions(conn, catalog, actions, staged, phase="after", now=now)

        return MergeSteps(prepare=resolve, before=before, after=after)
