"""No statement of the merge is planned as a nested-loop join.

A LEFT JOIN whose ON clause adds a condition on one side only (``... AND NOT r._is_new``) beside
the key equality is planned by DuckDB 1.5 as a nested-loop join: every incoming row compared with
every stored row. On small stores nobody notices; at 250k profiles one merge statement took
36 s of CPU instead of 0.05 s, and a 1 %-changed re-delivery cost as much as the first load. The
result is the same either way, so only the plan shows it: every statement the merge runs against
the demo delivery (a first load, then a re-delivery that meets stored profiles, events, items and
counted sums) is explained, and no plan may hold a nested-loop join."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.loading import load_project
from cdp_pipeline.demo.generate import generate_delivery
from cdp_pipeline.store import database
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline_tests.demo_home import prepare_demo_home

#: DuckDB's physical operators that compare every row of one side with every row of the other.
NESTED_LOOPS = ("NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN")
#: statements whose plan reads or joins tables (set-up, transactions and pragmas have none worth checking).
PLANNED = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "CREATE TEMP TABLE", "CREATE OR REPLACE TEMP TABLE", "CREATE TABLE")


class _ExplainingConnection:
    """The writer connection, explaining each planned statement before running it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, plans: list[tuple[str, str]]):
        self._conn = conn
        self._plans = plans

    def execute(self, sql: str, parameters: object = None):
        statement = " ".join(sql.split())
        if statement.upper().startswith(PLANNED):
            explained = self._conn.execute(f"EXPLAIN {sql}", parameters).fetchall()
            self._plans.append((statement, "\n".join(str(row[-1]) for row in explained)))
        return self._conn.execute(sql, parameters)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def _deliver(project, connection, transport, plans_by_goal: dict[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch, run_id: str) -> None:
    real_open_writer = database.open_writer
    current: list[tuple[str, str]] = []

    @contextmanager
    def explaining_writer(*args, **kwargs) -> Iterator[_ExplainingConnection]:
        with real_open_writer(*args, **kwargs) as conn:
            yield _ExplainingConnection(conn, current)

    monkeypatch.setattr(importing, "open_writer", explaining_writer)
    found = importing.discover_deliveries(project, connection, transport)
    for item in found.scans:
        for delivery in item.scan.deliveries:
            goal = item.source.listing_goal
            work_dir = importing.delivery_work_dir(project, connection.name, delivery.partition_key)
            now = datetime.now(UTC).replace(tzinfo=None)
            importing.fetch_delivery(transport, delivery, work_dir)
            importing.decrypt_delivery(work_dir, None)
            importing.stage_delivery(project, connection, goal, work_dir, now)
            current.clear()
            outcome = importing.merge_staged(project, connection, goal, work_dir, run_id, now)
            assert outcome.status == "merged", (goal.name, outcome.status)
            plans_by_goal.setdefault(f"{run_id}/{goal.name}", []).extend(current)


def _age(folder: Path) -> None:
    """Past the goals' readiness (stable for 5 s): the files are complete."""
    hour_ago = time.time() - 3600
    for path in folder.iterdir():
        os.utime(path, (hour_ago, hour_ago))


def test_no_merge_statement_is_a_nested_loop_join(tmp_path, monkeypatch):
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=400)
    inbox = home / "demo" / "inbox"
    _age(inbox)
    project = load_project()
    connection = project.connections["demo_local"]
    transport = LocalTransport(home / "demo")
    plans: dict[str, list[tuple[str, str]]] = {}
    _deliver(project, connection, transport, plans, monkeypatch, "first")
    # The next day's delivery: the same customers (most profiles, households, orders stored now),
    # so the joins with stored rows and with counted sums all run.
    for path in inbox.iterdir():
        path.unlink()
    generate_delivery(inbox, profiles=400, seed=43, date="20260116")
    _age(inbox)
    _deliver(project, connection, transport, plans, monkeypatch, "second")

    assert {"first/orders", "second/customers", "second/orders"} <= set(plans)
    assert all(len(statements) >= 5 for statements in plans.values())  # the merge's statements were seen
    loops = [
        f"{merge}: {statement[:200]}\n{plan}"
        for merge, statements in plans.items()
        for statement, plan in statements
        # A side DuckDB proved empty (a first load's stored sums) leaves nothing to loop over.
        if any(operator in plan for operator in NESTED_LOOPS) and "EMPTY_RESULT" not in plan
    ]
    assert not loops, "merge statements planned as nested-loop joins:\n" + "\n".join(loops)
