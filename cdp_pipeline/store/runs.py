"""Run history in the store, beside Dagster's own: analysts and the e-mail summary read it."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb


def record_run(
    conn: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    connection: str,
    kind: str,
    goal: str,
    partition_key: str | None,
    started_at: datetime,
    ended_at: datetime,
    status: str,
    counts: dict,
    last_profiles: list[str],
    error: str | None,
) -> None:
    conn.execute(
        "INSERT INTO runs (run_id, connection, kind, goal, partition_key, started_at, ended_at, status, counts, last_profiles, error) "
        "VALUES ($run, $connection, $kind, $goal, $partition, $started, $ended, $status, $counts, $last, $error)",
        {
            "run": run_id,
            "connection": connection,
            "kind": kind,
            "goal": goal,
            "partition": partition_key,
            "started": started_at,
            "ended": ended_at,
            "status": status,
            "counts": json.dumps(counts),
            "last": last_profiles,
            "error": error,
        },
    )
