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
