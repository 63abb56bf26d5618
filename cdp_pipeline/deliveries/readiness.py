"""When a listed file counts as complete: the readiness policies of the sensor, the scheduled
imports and an operator's "Run now".

A policy lists the folders the connection's sources watch and then answers, per file, whether
it may be imported. It never trusts the server's mtime against our clock: a server clock running
behind makes a file that is still being uploaded look old. So completeness is judged from
sightings on our side:

* ``SightingsOnOurClock`` (the sensor): the same size, mtime and ETag at two listings at least
  the goal's ``stable_seconds`` apart, remembered in the sensor's cursor between ticks;
* ``TwoListingsInTick`` (a schedule, which keeps no state between ticks): the same identity at two
  listings a few seconds apart within the tick AND an mtime older than the stability window, so
  an upload in progress, which changes between the listings, is not taken;
* ``ListedNow`` ("Run now", fetching a requested delivery): the operator or the sensor has already
  judged completeness, so whatever is listed is ready.

Marker files (``readiness.mode: marker``) are judged by the grouping itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cdp_pipeline.deliveries.cursor import SensorCursor, Sighting
from cdp_pipeline.deliveries.grouping import Delivery
from cdp_pipeline.transports.base import RemoteFile, SlicedListing, Transport

#: decides whether a file name is wanted in a folder (some source of the folder claims it).
Claims = Callable[[str], bool]


@dataclass(frozen=True)
class MergedFiles:
    """(remote path, size, mtime) of the files the ledger has merged (read from the analysts' copy).

    Files merged before are not requested again even when the run keys are gone (a new Dagster
    home, a reset cursor); the merge step's own ledger check stays the authority."""

    files: frozenset[tuple[str, int, float]] = frozenset()

    @classmethod
    def of(cls, identities: Iterable[tuple[str, int, float]]) -> MergedFiles:
        return cls(frozenset(identities))

    def has(self, remote: RemoteFile) -> bool:
        return bool(self.files) and (remote.path, remote.size, round(remote.mtime, 3)) in self.files

    def covers(self, delivery: Delivery) -> bool:
        return bool(self.files) and all(self.has(remote) for remote in delivery.files.values())


class ReadinessPolicy(Protocol):
    @property
    def now(self) -> float | None:
        """Seconds since the epoch the listing is judged at (a lone SARE file's age), None when unknown."""
        ...

    def list_folders(self, transport: Transport, folders: dict[str, Claims], merged: MergedFiles) -> dict[str, list[RemoteFile]]:
        """Every folder's listing, each listed once although several sources share it."""
        ...

    def is_ready(self, remote: RemoteFile, stable_for: float) -> bool:
        """Whether ``remote`` counts as completely uploaded, for a source whose window is ``stable_for``."""
        ...


@dataclass
class ListedNow:
    """Everything listed is ready: "Run now" and fetching a delivery the sensor already requested."""

    now: float | None = None

    def list_folders(self, transport: Transport, folders: dict[str, Claims], merged: MergedFiles) -> dict[str, list[RemoteFile]]:
        return {directory: transport.list_files(directory) for directory in folders}

    def is_ready(self, remote: RemoteFile, stable_for: float) -> bool:
        return True


@dataclass
class TwoListingsInTick:
    """A schedule's rule: unchanged between two listings within the tick, and older than ``window``."""

    window: float
    #: the pause between the two listings: long enough for an upload in progress to change size,
    #: short enough for Dagster's schedule evaluation timeout.
    pause_seconds: float = 10.0
    now: float | None = None
    sleep: Callable[[float], None] = time.sleep
    _first: dict[str, str] = field(default_factory=dict)

    def list_folders(self, transport: Transport, folders: dict[str, Claims], merged: MergedFiles) -> dict[str, list[RemoteFile]]:
        self._first = {remote.path: remote.identity for directory in folders for remote in transport.list_files(directory)}
        self.sleep(min(self.window, self.pause_seconds))
        self.now = time.time()
        return {directory: transport.list_files(directory) for directory in folders}

    def is_ready(self, remote: RemoteFile, stable_for: float) -> bool:
        if self.now is None:
            raise RuntimeError("list_folders() comes before is_ready()")
        return self._first.get(remote.path) == remote.identity and self.now - remote.mtime >= self.window


@dataclass
class SightingsOnOurClock:
    """The sensor's rule: seen with the same identity at two listings at least ``stable_for`` apart.

    ``previous`` is the cursor of the last tick; ``cursor`` becomes the next one. Only files a
    source of the folder wants and the ledger lacks are remembered: with after_import "leave" a
    folder keeps every file ever delivered, and a cursor holding all of them would be rewritten
    every tick.

    A folder on a transport with sliced listing is walked ``max_keys_per_tick`` keys per tick,
    starting over at the end, so a new key is seen within one walk. The files earlier slices
    listed and the ledger lacks are carried in the cursor, so a root file and its linked file meet
    although they were listed on different ticks. A carried file counts as stable only from two
    real sightings, never from the calendar.
    """

    previous: SensorCursor
    now: float = field(default_factory=time.time)
    max_keys_per_tick: int = 10_000
    cursor: SensorCursor = field(default_factory=SensorCursor)
    _merged: MergedFiles = field(default_factory=MergedFiles)

    def list_folders(self, transport: Transport, folders: dict[str, Claims], merged: MergedFiles) -> dict[str, list[RemoteFile]]:
        self._merged = merged
        return {directory: self._list_folder(transport, directory, claims, merged) for directory, claims in folders.items()}

    def is_ready(self, remote: RemoteFile, stable_for: float) -> bool:
        if stable_for == 0 or self._merged.has(remote):
            return True  # a merged file is complete; discover() then reports it as already merged
        sighting = self.cursor.seen.get(remote.path)
        return bool(sighting and sighting.identity == remote.identity and sighting.seen_for() >= stable_for)

    def _remember(self, remote: RemoteFile, directory: str, claims: Claims, merged: MergedFiles, *, observed: bool = True) -> None:
        if merged.has(remote) or not claims(remote.name):
            return
        now = self.now
        before = self.previous.seen.get(remote.path)
        if before is not None and before.identity == remote.identity:
            self.cursor.seen[remote.path] = Sighting(before.identity, before.first_seen, directory, now if observed else before.last_seen)
        else:
            self.cursor.seen[remote.path] = Sighting(remote.identity, now, directory, now)

    def _list_folder(self, transport: Transport, directory: str, claims: Claims, merged: MergedFiles) -> list[RemoteFile]:
        if not isinstance(transport, SlicedListing):
            listing = transport.list_files(directory)
            for remote in listing:
                self._remember(remote, directory, claims, merged)
            return listing
        after = self.previous.slices.get(directory)
        listing, continuation = transport.list_files_after(directory, after, self.max_keys_per_tick)
        self.cursor.slices[directory] = continuation
        for remote in listing:
            self._remember(remote, directory, claims, merged)
        if after is None and continuation is None:
            return listing  # the whole folder fitted in one slice
        listed = {remote.path for remote in listing}
        carried = []
        for path, sighting in self.previous.seen.items():
            if sighting.directory != directory or path in listed:
                continue
            if (after is None or path > after) and (continuation is None or path <= continuation):
                continue  # this slice covered its key and did not list it: the file is gone
            size, mtime, etag = sighting.identity.split(":", 2)
            remote = RemoteFile(path=path, size=int(size), mtime=float(mtime), etag=etag or None)
            self._remember(remote, directory, claims, merged, observed=False)
            carried.append(remote)
        return listing + carried
