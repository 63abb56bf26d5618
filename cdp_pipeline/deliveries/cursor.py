"""What the delivery sensor remembers between ticks, as typed state.

Stability is measured on our clock: the cursor keeps, per remote file, the identity (size, mtime,
ETag) we saw, when we first saw it with that identity and when we last listed it. The server's
mtime is never compared with our clock, because a server clock running behind makes a file that
is still being uploaded look old.

The JSON form is the one deployed sensors already hold, so an upgrade keeps their memory::

    {"seen": {path: [identity, first_seen, directory, last_seen]}, "slices": {directory: continuation}}

Entries written by older versions hold ``[identity, first_seen]`` only: they have no directory
(so they are never carried, see ``deliveries.readiness``) and were last seen when first seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sighting:
    """One remote file as the sensor has seen it, unchanged since ``first_seen``."""

    identity: str
    first_seen: float
    #: the listed folder the file was seen in; None for entries of older cursors.
    directory: str | None
    last_seen: float

    def to_json(self) -> list:
        return [self.identity, self.first_seen, self.directory, self.last_seen]

    @classmethod
    def from_json(cls, entry: list) -> Sighting:
        if len(entry) >= 4:
            return cls(identity=str(entry[0]), first_seen=float(entry[1]), directory=entry[2], last_seen=float(entry[3]))
        return cls(identity=str(entry[0]), first_seen=float(entry[1]), directory=None, last_seen=float(entry[1]))

    def seen_for(self) -> float:
        """How long the file has been seen unchanged, between two real listings."""
        return self.last_seen - self.first_seen


@dataclass
class SensorCursor:
    #: remote path → how it was seen; only files a source of the folder wants and the ledger lacks.
    seen: dict[str, Sighting] = field(default_factory=dict)
    #: listed folder → where the next slice of a sliced listing starts (None: from the start).
    slices: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> SensorCursor:
        if not text:
            return cls()
        state = json.loads(text)
        return cls(
            seen={path: Sighting.from_json(entry) for path, entry in state.get("seen", {}).items()},
            slices=dict(state.get("slices", {})),
        )

    def to_json(self) -> str:
        return json.dumps({"seen": {path: sighting.to_json() for path, sighting in self.seen.items()}, "slices": self.slices})
