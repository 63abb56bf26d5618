"""`cdp-pipeline run` again over a source with nothing new: no run is started when nothing would be
imported or sent (for an export goal: changed_only, no profile changed since its last export, no
condition on the clock), and a new file, a changed profile, a clock condition or write_empty_files
still start one."""

from __future__ import annotations

import contextlib
import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb


def _config(tmp_path: Path, drop: Path, *, export: bool = False, notify: str | None = None) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True, exist_ok=True)
    (config / "store.yaml").write_text(
        "catalog:\n  profile_properties:\n    customer_number: {type: text, unique: true}\n    city: {type: text}\n"
        "  segments:\n    everyone: {condition: \"customer_number IS NOT NULL\"}\n"
    )
    goals = (
        "goals:\n"
        "  - name: people\n    type: import_profiles\n"
        "    files: {root: {name: people, pattern: 'people_*.csv'}, readiness: {stable_seconds: 0}}\n"
        "    identifiers: [{column: customer_id, property: customer_number}]\n    allow_new_profiles: true\n"
        "    mappings: [{column: city, property: city, rule: set}]\n"
    )
    if export:
        goals += (
            "  - name: out\n    type: export_profiles\n    segment: everyone\n"
            "    target: {directory: out, file_name: 'everyone_{date}.csv'}\n"
            "    columns: [{header: customer_number, property: customer_number}, {header: city, property: city}]\n"
        )
    notifications = f"notifications: {{emails: [ops@example.invalid], when: {notify}}}\n" if notify else ""
    (config / "connections" / "shop.yaml").write_text(f"name: shop\nsource: {{type: local, path: {drop}}}\n{notifications}{goals}")
    return config


def _runs(dagster_home: Path) -> int:
    """Runs recorded in the Dagster instance, counted in its SQLite run storage (plain SQL)."""
    database = dagster_home / "history" / "runs.db"
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def _cli(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path / "home"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def _cities(tmp_path: Path) -> list[tuple[str, str]]:
    with duckdb.connect(str(tmp_path / "home" / "store.duckdb"), read_only=True) as conn:
        return conn.execute("SELECT customer_number, city FROM profiles ORDER BY customer_number").fetchall()


def test_an_unchanged_rerun_of_an_import_only_connection_starts_no_run_and_a_new_file_does(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "people_1.csv").write_text("customer_id,city\nC1,Oslo\nC2,Rome\n")
    config = _config(tmp_path, drop)
    first = _cli(tmp_path, config, "run", "shop")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "imported people:people_1.csv: merged" in first.stdout
    runs_after_first = _runs(tmp_path / "dagster_home")
    assert runs_after_first >= 1
    history = _cli(tmp_path, config, "history", "shop").stdout

    again = _cli(tmp_path, config, "run", "shop")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already merged (not fetched again): people:people_1.csv" in again.stdout
    assert "no run started" in again.stdout
    assert _runs(tmp_path / "dagster_home") == runs_after_first
    assert _cli(tmp_path, config, "history", "shop").stdout == history  # the run history says what it said
    assert _cities(tmp_path) == [("C1", "Oslo"), ("C2", "Rome")]

    # A command killed while it executed runs here may still hold the store's write pool: the
    # next command starts a run (which frees such claims) even with nothing new, and then forgets it.
    dagster_home = tmp_path / "dagster_home"
    killed = subprocess.run(
        [sys.executable, "-c", f"import os; from pathlib import Path; from cdp_pipeline.orphans import mark_owner; "
         f"d = Path({str(dagster_home)!r}) / f'cdp-executing-{{os.getpid()}}'; d.mkdir(); mark_owner(d)"],
        capture_output=True, text=True, timeout=60,
    )
    assert killed.returncode == 0, killed.stderr
    assert len(list(dagster_home.glob("cdp-executing-*"))) == 1
    after_kill = _cli(tmp_path, config, "run", "shop")
    assert after_kill.returncode == 0, after_kill.stdout[-3000:] + after_kill.stderr[-3000:]
    assert "no run started" not in after_kill.stdout
    assert "already merged (not fetched again): people:people_1.csv" in after_kill.stdout
    assert _runs(dagster_home) == runs_after_first + 1
    assert list(dagster_home.glob("cdp-executing-*")) == []
    runs_after_first += 1

    (drop / "people_2.csv").write_text("customer_id,city\nC2,Lima\n")
    new = _cli(tmp_path, config, "run", "shop")
    assert new.returncode == 0, new.stdout[-3000:] + new.stderr[-3000:]
    assert "imported people:people_2.csv: merged" in new.stdout
    assert "no run started" not in new.stdout
    assert _runs(tmp_path / "dagster_home") > runs_after_first
    assert _cities(tmp_path) == [("C1", "Oslo"), ("C2", "Lima")]


def test_a_connection_with_a_mail_after_every_run_still_runs(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "people_1.csv").write_text("customer_id,city\nC1,Oslo\n")
    config = _config(tmp_path, drop, notify="always")
    first = _cli(tmp_path, config, "run", "shop")
    assert "imported people:people_1.csv: merged" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
    runs = _runs(tmp_path / "dagster_home")
    again = _cli(tmp_path, config, "run", "shop")
    assert "already merged (not fetched again): people:people_1.csv" in again.stdout
    assert "no run started" not in again.stdout
    assert _runs(tmp_path / "dagster_home") == runs + 1


def _exported_rows(out: Path) -> dict[str, list[list[str]]]:
    """Each export file's rows without its header, by file name (plain csv reading)."""
    return {path.name: list(csv.reader(path.read_text().splitlines()))[1:] for path in sorted(out.glob("*.csv"))}


def _set_in_yaml(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_export_goal_with_nothing_to_send_starts_no_run_until_a_profile_changes_or_a_rule_says_run(tmp_path):
    drop, crm_drop = tmp_path / "drop", tmp_path / "crm_drop"
    drop.mkdir()
    crm_drop.mkdir()
    (drop / "people_1.csv").write_text("customer_id,city\nC1,Oslo\nC2,Rome\n")
    config = _config(tmp_path, drop, export=True)
    # A second connection writing into the same store: a profile can change without a delivery of shop.
    (config / "connections" / "crm.yaml").write_text(
        f"name: crm\nsource: {{type: local, path: {crm_drop}}}\ngoals:\n"
        "  - name: moves\n    type: import_profiles\n"
        "    files: {root: {name: moves, pattern: 'moves_*.csv'}, readiness: {stable_seconds: 0}}\n"
        "    identifiers: [{column: customer_id, property: customer_number}]\n    allow_new_profiles: false\n"
        "    mappings: [{column: city, property: city, rule: set}]\n"
    )
    dagster_home, out = tmp_path / "dagster_home", drop / "out"
    first = _cli(tmp_path, config, "run", "shop")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(row for rows in _exported_rows(out).values() for row in rows) == [["C1", "Oslo"], ["C2", "Rome"]]
    runs, history, files = _runs(dagster_home), _cli(tmp_path, config, "history", "shop").stdout, _exported_rows(out)

    # Nothing new in the source, no profile changed since the export: no run, one line per goal.
    again = _cli(tmp_path, config, "run", "shop")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already merged (not fetched again): people:people_1.csv" in again.stdout
    assert "export out: nothing sent, no run started (no profile changed since its last export at " in again.stdout
    assert "nothing to import and nothing to send: no run started" in again.stdout
    assert _runs(dagster_home) == runs
    assert _cli(tmp_path, config, "history", "shop").stdout == history
    assert _exported_rows(out) == files

    # Another connection changes one profile after the mark: the export runs and sends just that one.
    (crm_drop / "moves_1.csv").write_text("customer_id,city\nC2,Lima\n")
    moved = _cli(tmp_path, config, "run", "crm")
    assert "imported moves:moves_1.csv: merged" in moved.stdout, moved.stdout[-3000:] + moved.stderr[-3000:]
    runs = _runs(dagster_home)
    changed = _cli(tmp_path, config, "run", "shop")
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "no run started" not in changed.stdout
    assert _runs(dagster_home) == runs + 1
    new_files = {name: rows for name, rows in _exported_rows(out).items() if name not in files}
    assert list(new_files.values()) == [[["C2", "Lima"]]]
    files = _exported_rows(out)
    assert "no run started" in _cli(tmp_path, config, "run", "shop").stdout

    # A condition on the clock: memberships move without a change, so the run (and its refresh) happens.
    store_yaml = config / "store.yaml"
    plain_store_yaml = store_yaml.read_text()
    _set_in_yaml(store_yaml, "  segments:\n", "  segments:\n    recent: {condition: \"created_at > now() - INTERVAL 1 DAY\"}\n")
    runs = _runs(dagster_home)
    clock = _cli(tmp_path, config, "run", "shop")
    assert clock.returncode == 0, clock.stdout[-3000:] + clock.stderr[-3000:]
    assert "already merged (not fetched again): people:people_1.csv" in clock.stdout  # not an import that started it
    assert "no run started" not in clock.stdout
    assert _runs(dagster_home) == runs + 1
    store_yaml.write_text(plain_store_yaml)
    # "recent" is gone from store.yaml but its members are still stored: the members are not what
    # a refresh would compute, so one run refreshes them (sending nothing); then nothing runs.
    runs = _runs(dagster_home)
    assert "no run started" not in _cli(tmp_path, config, "run", "shop").stdout
    assert _runs(dagster_home) == runs + 1 and _exported_rows(out) == files
    assert "no run started" in _cli(tmp_path, config, "run", "shop").stdout

    # write_empty_files sends a header-only file when nothing changed: the run happens and sends it.
    _set_in_yaml(config / "connections" / "shop.yaml", "file_name: 'everyone_{date}.csv'}", "file_name: 'everyone_{date}.csv', write_empty_files: true}")
    runs = _runs(dagster_home)
    empty = _cli(tmp_path, config, "run", "shop")
    assert empty.returncode == 0, empty.stdout[-3000:] + empty.stderr[-3000:]
    assert "no run started" not in empty.stdout
    assert _runs(dagster_home) == runs + 1
    assert [rows for name, rows in _exported_rows(out).items() if name not in files] == [[]]

    # --always-run starts the run although nothing would be sent.
    _set_in_yaml(config / "connections" / "shop.yaml", ", write_empty_files: true}", "}")
    runs = _runs(dagster_home)
    forced = _cli(tmp_path, config, "run", "shop", "--always-run")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "no run started" not in forced.stdout
    assert _runs(dagster_home) == runs + 1
