"""``discover()``: which deliveries of a connection to import now, which wait and why.

The one place the sensor, the scheduled imports, "Run now", fetching a requested delivery and
the benchmark find deliveries. Each source's folder is listed once per call (sources sharing a
folder share its listing), grouped into deliveries by the source, judged complete by the
readiness policy, and deliveries whose files the ledger has merged are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cdp_pipeline.deliveries.grouping import Delivery, DeliveryScan
from cdp_pipeline.deliveries.keys import run_key
from cdp_pipeline.deliveries.readiness import Claims, ListedNow, MergedFiles, ReadinessPolicy
from cdp_pipeline.deliveries.sources import DeliverySource
from cdp_pipeline.transports.base import RefusedEntries, RemoteFile, Transport


@dataclass(frozen=True)
class DeliveryRequest:
    """A complete delivery to import, with the keys a run of it goes by."""

    delivery: Delivery

    @property
    def goal(self) -> str:
        return self.delivery.goal

    @property
    def partition_key(self) -> str:
        return self.delivery.partition_key

    @property
    def run_key(self) -> str:
        return run_key(self.delivery.partition_key, self.delivery.listing_identity)


@dataclass(frozen=True)
class SourceScan:
    source: DeliverySource
    scan: DeliveryScan


@dataclass
class Discovery:
    #: every source's grouping of its listing, in the connection's source order.
    scans: list[SourceScan] = field(default_factory=list)
    #: complete deliveries the ledger lacks, in source order (each source's oldest first).
    requests: list[DeliveryRequest] = field(default_factory=list)
    #: partition keys of complete deliveries whose files the ledger has merged.
    already_merged: list[str] = field(default_factory=list)
    #: entries the transport's listings left out, one problem line each (see ``RefusedEntries``).
    refused_entries: list[str] = field(default_factory=list)

    @property
    def waiting(self) -> list[str]:
        """Deliveries that cannot start yet and why (missing partner, still uploading)."""
        return [reason for item in self.scans for reason in item.scan.waiting]

    @property
    def problems(self) -> list[str]:
        """Deliveries that cannot be formed at all (ambiguous partner, bad names, unaddressable keys)."""
        return [problem for item in self.scans for problem in item.scan.problems] + self.refused_entries

    @property
    def reasons(self) -> list[str]:
        """What waits and why, then what cannot be formed, source by source."""
        return [reason for item in self.scans for reason in item.scan.waiting + item.scan.problems] + self.refused_entries

    def skip_reason(self, limit: int = 5) -> str:
        """Why nothing is requested: the first reasons and how many deliveries are merged already."""
        merged = [f"{len(self.already_merged)} delivery(ies) already merged: {', '.join(self.already_merged[:3])}"] if self.already_merged else []
        return "; ".join(self.reasons[:limit] + merged)


def _folders(sources: Sequence[DeliverySource]) -> dict[str, Claims]:
    by_folder: dict[str, list[DeliverySource]] = {}
    for source in sources:
        by_folder.setdefault(source.listing_goal.files.directory, []).append(source)

    def claims_of(members: list[DeliverySource]) -> Claims:
        return lambda name: any(member.claims(name) for member in members)

    return {directory: claims_of(members) for directory, members in by_folder.items()}


def discover(
    connection: str,
    sources: Sequence[DeliverySource],
    transport: Transport,
    policy: ReadinessPolicy | None = None,
    *,
    merged: MergedFiles | None = None,
    max_requests: int | None = None,
) -> Discovery:
    """List the sources' folders and group them into deliveries to request, waiting and problems.

    ``policy`` decides completeness (default ``ListedNow``: whatever is listed); ``merged`` are the
    files the ledger has (their deliveries go to ``already_merged``); ``max_requests`` bounds the
    requests of one call (a backlog is worked off over several ticks, oldest first per source)."""
    readiness: ReadinessPolicy = policy or ListedNow()
    merged = merged or MergedFiles()
    listings = readiness.list_folders(transport, _folders(sources), merged)
    found = Discovery()
    for source in sources:
        stable_for = source.listing_goal.files.readiness.stable_seconds

        def is_ready(remote: RemoteFile, stable_for: float = stable_for) -> bool:
            return readiness.is_ready(remote, stable_for)

        scan = source.scan(connection, listings[source.listing_goal.files.directory], is_ready, readiness.now)
        found.scans.append(SourceScan(source, scan))
        # A goal that moves, renames or deletes its files after the merge: merged files still in
        # place mean the run stopped between the merge's COMMIT and the finish. Requested again,
        # the merge finds the delivery in the ledger (skipped) and the files are finished.
        files_stay = source.listing_goal.files.after_import.action == "leave"
        for delivery in scan.deliveries:
            if files_stay and merged.covers(delivery):
                found.already_merged.append(delivery.partition_key)
            else:
                found.requests.append(DeliveryRequest(delivery))
    if isinstance(transport, RefusedEntries):
        found.refused_entries = transport.refused_entries()
    if max_requests is not None:
        found.requests = found.requests[:max_requests]
    return found
