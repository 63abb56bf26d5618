"""``cdp-pipeline preview``: the files per goal and a dry run that writes nothing and moves nothing."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import duckdb

STORE = """
catalog:
  profile_properties:
    email: {type: text, unique: true}
    spend: {type: decimal}
    city: {type: text}
"""
CONNECTION = """
name: acme
source: {type: local, path: drop}
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
    on_error: skip_rows
    max_reject_share: 0.5
    mappings:
      - {column: city, property: city, rule: set}
      - {column: spend, property: spend, rule: sum}
"""
ROWS = [
    ("ann@example.com", "Berlin", "10.5"),
    ("bob@example.com", "Paris", "3"),
    ("cid@example.com", "Rome", "not a number"),
    ("", "Oslo", "1"),
    ("dan@example.com", "Lyon", "7"),
]
STORED = ["bob@example.com", "dan@example.com", "zed@example.com"]


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    config, home = tmp_path / "config", tmp_path / "home"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(STORE)
    (config / "connections" / "acme.yaml").write_text(CONNECTION)
    drop = home / "drop"
    drop.mkdir(parents=True)
    with (drop / "people_20260115.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "city", "spend"])
        writer.writerows(ROWS)
    (drop / "notes.txt").write_text("not a delivery")
    # A store holding two of the file's customers, made with plain DuckDB.
    with duckdb.connect(str(home / "store.duckdb")) as conn:
        conn.execute("CREATE TABLE profiles (profile_id VARCHAR, email VARCHAR, city VARCHAR, spend DECIMAL(18, 4))")
        conn.executemany("INSERT INTO profiles VALUES (?, ?, 'old', 1)", [[f"p{i}", email] for i, email in enumerate(STORED)])
    return config, home


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def _cli(home: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CDP_CONFIG_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", *args, "--home", str(home), "--config-dir", str(config)],
        env=env, capture_output=True, text=True, timeout=180,
    )


def test_preview_changes_nothing_and_counts_match_the_file(tmp_path):
    config, home = _setup(tmp_path)
    store = home / "store.duckdb"
    before_store = hashlib.sha256(store.read_bytes()).hexdigest()
    before_drop = _listing(home / "drop")

    result = _cli(home, config, "preview", "acme", "--rows", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    assert hashlib.sha256(store.read_bytes()).hexdigest() == before_store
    assert _listing(home / "drop") == before_drop
    assert not list((home / "work").glob("preview-*")), "the temporary work folder is removed"

    # The independent expectation, in plain Python over the rows written above.
    keyed = [email for email, _, _ in ROWS if email]
    assert "complete: people:people_20260115.csv" in out
    assert "ignored: notes.txt: matches none of the file patterns" in out
    assert f"rows read: {len(ROWS)}" in out
    assert "rows rejected: 2  values not imported: 1" in out  # the row without e-mail, the spend that is not a number
    assert "line 5" in out and "line 4" in out  # the rejects name their lines (header is line 1)
    assert f"would create {len([e for e in keyed if e not in STORED])}, would match existing {len([e for e in keyed if e in STORED])}" in out
    assert "first 2 row(s) as they would be stored:" in out
    assert "email\tcity\tspend" in out and "ann@example.com\tBerlin\t10.5" in out
    assert "_key" not in out and "_line" not in out
