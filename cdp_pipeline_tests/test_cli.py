"""The README's first command (its entry point) in a subprocess, against a temporary directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import duckdb
import pytest


def test_demo_command_leaves_the_store_and_both_exports(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("CDP_CONFIG_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "demo", "--profiles", "200"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "imported customers:profiles_20260115.csv: merged" in result.stdout
    assert "dagster dev -w workspace.yaml" in result.stdout
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (200,)
    outbox = home / "demo" / "outbox"
    assert len(list((outbox / "segments").glob("high_value_*.csv"))) == 1
    assert (outbox / "timeline" / "order.csv").stat().st_size > 0
    assert (outbox / "timeline" / "order_line.csv").stat().st_size > 0


def test_validate_command_names_the_file_and_key_of_a_bad_config(tmp_path):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text("catalog:\n  profile_properties:\n    email: {type: text, unique: true}\n")
    (config / "connections" / "acme.yaml").write_text(
        "name: acme\nsource: {type: local, path: x}\ngoals:\n"
        "  - {name: people, type: import_profiles, files: {root: {name: people, pattern: '*.csv'}},\n"
        "     identifiers: [{column: email, property: email}], mappings: [{column: e, property: email, rule: overwrite}]}\n"
    )
    env = {**os.environ, "CDP_CONFIG_DIR": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path), "validate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.mappings.0.rule" in result.stderr
    assert "'set_if_empty'" in result.stderr


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only file system (root can write through any chmod, not through `ro`)."""
    point = tmp_path / "readonly"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(point)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"mounting a read-only tmpfs needs root: {mounted.stderr}"
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize("inside", [False, True])
def test_an_unwritable_dagster_home_is_one_line_naming_the_folder_and_the_fix(tmp_path, read_only_folder, inside):
    dagster_home = read_only_folder / "dagster_home" if inside else read_only_folder
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    env.pop("CDP_CONFIG_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path / "home"), "run", "demo_local"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"DAGSTER_HOME {dagster_home} cannot be written (Read-only file system); it holds Dagster's run history and the sensors' cursors. "
        f"Make it writable for this user (chmod u+w {dagster_home}) or point DAGSTER_HOME (or --home) at a folder that is."
    ]


def test_an_unwritable_cdp_home_is_named(tmp_path, read_only_folder):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(read_only_folder), "run", "demo_local"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"CDP_HOME {read_only_folder} cannot be written (Read-only file system); it holds the store")
    assert "Traceback" not in result.stderr


def test_a_new_cdp_home_is_private(tmp_path):
    home = tmp_path / "new" / "home"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("CDP_CONFIG_DIR", None)
    subprocess.run([sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", "no_such_connection"], env=env, capture_output=True, timeout=120)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_run_prints_what_each_delivery_did_and_exits_non_zero_when_one_failed(tmp_path):
    """A re-delivery that replaced events says so (not "events=0"), and a delivery the reject
    guard stopped (times written day-first without event_time_format) makes the run fail with
    the guard's own message, not a wrapper."""
    config, drop = tmp_path / "config", tmp_path / "drop"
    (config / "connections").mkdir(parents=True)
    drop.mkdir()
    (config / "store.yaml").write_text(
        "store: {published_path: null}\n"
        "catalog:\n  profile_properties:\n    customer_number: {type: text, unique: true}\n"
        "  event_types:\n    order: {properties: {total: {type: decimal}}}\n"
    )
    (config / "connections" / "shop.yaml").write_text(
        f"name: shop\nsource: {{type: local, path: {drop}}}\ngoals:\n"
        "  - name: orders\n    type: import_profiles\n"
        "    files: {root: {name: orders, pattern: 'orders_*.csv'}, readiness: {stable_seconds: 0}}\n"
        "    identifiers: [{column: customer_id, property: customer_number}]\n    allow_new_profiles: true\n"
        "    timeline: [{event_type: order, file: orders, event_id: order_id, event_time: order_date, properties: {total: total}}]\n"
    )
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "DAGSTER_HOME": str(tmp_path / "dagster_home")}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path / "home"), "run", "shop"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )

    header = "order_id,customer_id,order_date,total\n"
    (drop / "orders_1.csv").write_text(header + "O1,C1,2026-01-01T10:00:00,5\nO2,C2,2026-01-02T10:00:00,7\n")
    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "events created=2 updated=0 unchanged=0" in first.stdout
    (drop / "orders_2.csv").write_text(header + "O1,C1,2026-01-01T10:00:00,6\nO2,C2,2026-01-02T10:00:00,7\n")
    second = run()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "events created=0 updated=1 unchanged=1" in second.stdout
    (drop / "orders_3.csv").write_text(header + "O3,C1,2026-01-03T09:00:00,1\nO4,C1,03/01/2026 10:00,5\nO5,C2,03/01/2026 11:00,7\n")
    third = run()
    assert third.returncode == 1, third.stdout[-3000:] + third.stderr[-3000:]
    failure = third.stdout[third.stdout.index("FAILED orders:orders_3.csv"):]
    assert "2 of 3 rows (66.7%)" in failure and "max_reject_share" in failure and "event_time_format" in failure
    with duckdb.connect(str(tmp_path / "home" / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT event_id, total FROM timeline_order ORDER BY 1").fetchall() == [("O1", 6), ("O2", 7)]
