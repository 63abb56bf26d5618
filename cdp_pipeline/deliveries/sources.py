"""Where deliveries come from: a ``DeliverySource`` is what the engine needs to know about one
goal name of a connection, whether the goal is written in the connection's YAML (``GoalSource``)
or generated per delivery by a dialect (SARE pairs, Netmera files, see ``cdp_pipeline.dialects``).

A source says which files it wants, groups a listing into deliveries, stages a delivery's local
files into the tables the merge takes, and names what it does around the merge inside the
delivery's transaction. The flow (fetch → decrypt → stage → merge → finish) and the ledger are
the same for every source, so a new file convention is a new source, not a second pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.deliveries.grouping import DeliveryScan, ImportGoal, goal_claims, scan_deliveries
from cdp_pipeline.tables.import_tables import build_import_tables
from cdp_pipeline.tables.staged import StagedImport
from cdp_pipeline.transports.base import RemoteFile

#: a step inside the merge's writer connection: ``(connection, staged) -> None``.
StoreStep = Callable[[Any, StagedImport], None]


@dataclass(frozen=True)
class LocalFile:
    """One file of a delivery on our disk (decrypted), with where it came from."""

    path: Path
    remote_path: str
    #: the file's mtime on the server (seconds since the epoch).
    remote_mtime: float


@dataclass(frozen=True)
class StagingInput:
    catalog: Catalog
    #: logical file name in the delivery → the decrypted local file.
    files: dict[str, LocalFile]
    run_time: datetime
    #: whether the delivery's root file arrived PGP-encrypted (decided by content).
    root_was_encrypted: bool
    max_file_bytes: int | None = None


@dataclass
class StagedDelivery:
    #: the goal the delivery was read with (a dialect generates it per delivery).
    goal: ImportGoal
    staged: StagedImport
    #: set when the delivery is deliberately not imported (a SARE sidecar with "import": false);
    #: nothing is merged and its remote files stay where they are.
    skip_reason: str | None = None


@dataclass(frozen=True)
class MergeContext:
    catalog: Catalog
    files: dict[str, LocalFile]
    connection: str
    goal: str
    root_file: str
    content_sha256: str
    now: datetime


@dataclass
class MergeSteps:
    """What a source adds around ``merge_delivery``: ``prepare`` in the writer connection before
    the transaction (it may replace the staged tables), ``before`` and ``after`` inside it."""

    prepare: Callable[[Any, StagedImport], StagedImport] | None = None
    before: StoreStep | None = None
    after: StoreStep | None = None


class DeliverySource(Protocol):
    """One goal name of a connection and how its deliveries are found, staged and merged."""

    @property
    def goal_name(self) -> str:
        """The goal name partitions (``<goal>:<root file>``) and ledger rows carry."""
        ...

    @property
    def listing_goal(self) -> ImportGoal:
        """Where the files are, when they are complete and what happens to them after the import
        or on failure; for a dialect, before the delivery's own goal is generated."""
        ...

    @property
    def generates_goal(self) -> bool:
        """Whether each delivery's goal is generated at staging (and so not in the connection's goals)."""
        ...

    def claims(self, name: str) -> bool:
        """Whether a file of this name can take part in one of the source's deliveries."""
        ...

    def scan(self, connection: str, listing: list[RemoteFile], is_ready: Callable[[RemoteFile], bool], now: float | None) -> DeliveryScan:
        """Group one listing of ``listing_goal.files.directory`` into deliveries."""
        ...

    def stage(self, inputs: StagingInput) -> StagedDelivery:
        """Read a delivery's decrypted files into the tables the merge takes."""
        ...

    def around_merge(self, context: MergeContext) -> MergeSteps:
        """The source's own store steps around the merge (none for a plain goal)."""
        ...


@dataclass(frozen=True)
class GoalSource:
    """An import goal written in the connection's YAML."""

    goal: ImportGoal

    @property
    def goal_name(self) -> str:
        return self.goal.name

    @property
    def listing_goal(self) -> ImportGoal:
        return self.goal

    @property
    def generates_goal(self) -> bool:
        return False

    def claims(self, name: str) -> bool:
        return goal_claims(self.goal, name)

    def scan(self, connection: str, listing: list[RemoteFile], is_ready: Callable[[RemoteFile], bool], now: float | None) -> DeliveryScan:
        return scan_deliveries(connection, self.goal, listing, is_ready)

    def stage(self, inputs: StagingInput) -> StagedDelivery:
        paths = {name: local.path for name, local in inputs.files.items()}
        display = {name: local.remote_path for name, local in inputs.files.items()}
        staged = build_import_tables(self.goal, inputs.catalog, paths, display, inputs.run_time, max_file_bytes=inputs.max_file_bytes)
        return StagedDelivery(goal=self.goal, staged=staged)

    def around_merge(self, context: MergeContext) -> MergeSteps:
        return MergeSteps()
