"""The run history of a connection as a person reads it: one line per run of a goal (imports per
delivery, exports per goal), successes and failures with their cause, from the store's ``runs``
table and the ``deliveries`` ledger. ``cdp-pipeline history <connection>`` prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cdp_pipeline.config.ducklake import DuckLakeLocation
from cdp_pipeline.errors import CdpError
from cdp_pipeline.store.database import open_reader

#: column headers of the printed table, in order.
HEADERS = (
    "started", "kind", "goal", "status", "files", "rows read", "rejected",
    "created", "updated", "unchanged", "events", "groups", "exported", "delivery / cause",
)


@dataclass(frozen=True)
class HistoryRow:
    started_at: datetime
    kind: str
    goal: str
    status: str
    partition_key: str | None
    #: files of the delivery, from the ledger (imports that merged); None when not known.
    files: int | None
    counts: dict
    error: str | None

    def cells(self) -> list[str]:
        def n(*keys: str) -> str:
            values = [self.counts[key] for key in keys if key in self.counts]
            return str(sum(int(value or 0) for value in values)) if values else "-"

        exported = n("profiles_exported")
        if exported != "-":
            exported = f"{exported}/{n('profiles_available')}"
        return [
            self.started_at.strftime("%Y-%m-%d %H:%M:%S"), self.kind, self.goal, self.status,
            "-" if self.files is None else str(self.files),
            n("rows_read"), n("rows_rejected"), n("profiles_created"), n("profiles_updated"), n("profiles_unchanged"),
            n("events_created", "events_updated"), n("groups_created", "groups_updated"), exported,
            # A cause can span lines (one per problem); the table keeps one line per run.
            " — ".join(part for part in (self.partition_key, self.error) if part).replace("\n", " | "),
        ]


def read_history(store: Path | DuckLakeLocation, connection: str, limit: int = 50) -> list[HistoryRow]:
    """The connection's last ``limit`` runs, newest first, from ``store``: the project's
    ``read_location`` (the analysts' copy, the live file, or the lake at its latest snapshot)."""
    if isinstance(store, Path) and not store.exists():
        raise CdpError(f"{store}: no store yet; run the connection first (cdp-pipeline run {connection})")
    with open_reader(store) as conn:
        rows = conn.execute(
            """
            SELECT r.started_at, r.kind, r.goal, r.status, r.partition_key, r.counts, r.error,
                   (SELECT max(json_array_length(d.files)) FROM deliveries d
                     WHERE d.run_id = r.run_id AND d.connection = r.connection AND d.partition_key = r.partition_key) AS files
            FROM runs r
            WHERE r.connection = $connection
            ORDER BY r.started_at DESC, r.kind DESC, r.goal
            LIMIT $limit
            """,
            {"connection": connection, "limit": limit},
        ).fetchall()
    return [
        HistoryRow(
            started_at=started, kind=kind, goal=goal, status=status, partition_key=partition, files=files,
            counts=json.loads(counts) if counts else {}, error=error,
        )
        for started, kind, goal, status, partition, counts, error, files in rows
    ]


def history_table(rows: list[HistoryRow]) -> str:
    """Aligned plain-text columns, the header first."""
    table = [list(HEADERS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in table
    )
