"""The README's first command (its entry point) in a subprocess, against a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb


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
    result = subprocess.run([sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path), "validate"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.mappings.0.rule" in result.stderr
    assert "'set_if_empty'" in result.stderr
