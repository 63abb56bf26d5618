"""``idle_exports``: an export goal sends nothing when no profile changed after its last export,
read from the live store; anything it cannot read at once (a writer holds the store), a first
export, a changed profile or a copy behind the store leaves the decision to the run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb

from cdp_pipeline.config.loading import load_project
from cdp_pipeline.idle_exports import IdleExport, idle_exports
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.segments import refresh_memberships

MARK = datetime(2026, 3, 1, 12, 0, 0)


def _project(tmp_path: Path):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(
        "catalog:\n  profile_properties:\n    customer_number: {type: text, unique: true}\n    city: {type: text}\n"
        "  segments:\n    everyone: {condition: \"customer_number IS NOT NULL\"}\n"
    )
    (config / "connections" / "shop.yaml").write_text(
        "name: shop\nsource: {type: local, path: drop}\ngoals:\n"
        "  - name: out\n    type: export_profiles\n    segment: everyone\n"
        "    target: {directory: out, file_name: 'everyone_{date}.csv'}\n"
        "    columns: [{header: customer_number, property: customer_number}]\n"
    )
    return load_project(config, tmp_path / "home")


def _store(project, *, updated_at: datetime, marked: bool = True, refreshed: bool = True) -> None:
    """One profile updated at ``updated_at``, the goal's mark at MARK (plain SQL), the members
    refreshed as a run leaves them (unless ``refreshed`` is false), the copy taken."""
    with open_writer(project.store_location, project.catalog) as conn:
        conn.execute("DELETE FROM profiles")
        conn.execute("DELETE FROM export_state")
        conn.execute("INSERT INTO profiles (profile_id, customer_number, created_at, updated_at) VALUES ('p1', 'C1', $t, $t)", {"t": updated_at})
        if marked:
            conn.execute("INSERT INTO export_state (connection, goal, last_export_at, last_run_id) VALUES ('shop', 'out', $m, 'r1')", {"m": MARK})
        if refreshed:
            refresh_memberships(conn, project.catalog, MARK)
        conn.execute("CHECKPOINT")
    shutil.copyfile(project.store_location, project.published_store_path)


def test_nothing_changed_after_the_mark_is_idle_and_every_doubt_runs(tmp_path):
    project = _project(tmp_path)
    shop = project.connections["shop"]
    assert idle_exports(project, shop) is None  # no store yet

    _store(project, updated_at=datetime(2026, 3, 1, 11, 59, 59))
    assert idle_exports(project, shop) == [IdleExport("out", "no profile changed since its last export at 2026-03-01 12:00:00 UTC (changed_only)")]
    assert idle_exports(project, shop, full_export=True) is None

    _store(project, updated_at=datetime(2026, 3, 1, 12, 0, 1))  # one second after the mark
    assert idle_exports(project, shop) is None

    _store(project, updated_at=datetime(2026, 3, 1, 11, 0, 0), marked=False)  # never exported: a first export sends all
    assert idle_exports(project, shop) is None

    # Profiles changed since the last refresh (a run killed between its merge and its refresh),
    # even before the mark: the members may be stale, so the run refreshes them.
    _store(project, updated_at=datetime(2026, 3, 1, 10, 0, 0), refreshed=False)
    assert idle_exports(project, shop) is None
    _store(project, updated_at=datetime(2026, 3, 1, 10, 0, 0))
    assert idle_exports(project, shop) is not None
    # A merge's ledger row committed after the last refresh: the same doubt.
    with duckdb.connect(str(project.store_location)) as conn:
        conn.execute(
            "INSERT INTO deliveries (delivery_id, connection, goal, partition_key, root_file, content_sha256, config_hash, status, merged_at) "
            "VALUES ('d1', 'shop', 'in', 'k1', 'in.csv', 'sha', 'cfg', 'merged', $m)",
            {"m": MARK},
        )
    shutil.copyfile(project.store_location, project.published_store_path)
    assert idle_exports(project, shop) is None

    # The copy behind the store (a run killed before it published): the run publishes it.
    _store(project, updated_at=datetime(2026, 3, 1, 11, 0, 0))
    with duckdb.connect(str(project.store_location)) as conn:
        conn.execute(
            "INSERT INTO runs (run_id, connection, kind, goal, started_at, ended_at, status) VALUES ('r2', 'shop', 'export', 'out', $m, $m, 'SUCCESS')",
            {"m": MARK},
        )
    assert idle_exports(project, shop) is None
    shutil.copyfile(project.store_location, project.published_store_path)
    assert idle_exports(project, shop) is not None


def test_a_writer_holding_the_store_is_not_waited_for(tmp_path):
    project = _project(tmp_path)
    _store(project, updated_at=datetime(2026, 3, 1, 11, 0, 0))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time; c = duckdb.connect({str(project.store_location)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert idle_exports(project, project.connections["shop"]) is None
        assert time.monotonic() - started < 10  # gave up at once (the writers' own wait is 120 s)
    finally:
        holder.kill()
        holder.wait(timeout=30)
