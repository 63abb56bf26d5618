"""An upload cut short in its last row, through `cdp-pipeline run` with real files and a real store:
nothing is merged and the failure names the file, the line and the setting; the complete file
that replaces it is imported; a partner whose files end without a line break opts in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb


def _project(tmp_path: Path, csv_options: str = "") -> tuple[Path, dict[str, str]]:
    config, drop = tmp_path / "config", tmp_path / "drop"
    (config / "connections").mkdir(parents=True)
    drop.mkdir()
    (config / "store.yaml").write_text(
        "store: {published_path: null}\n"
        "catalog:\n  profile_properties:\n    customer_number: {type: text, unique: true}\n    city: {type: text}\n"
    )
    csv_block = f", csv: {{{csv_options}}}" if csv_options else ""
    (config / "connections" / "shop.yaml").write_text(
        f"name: shop\nsource: {{type: local, path: {drop}}}\ngoals:\n"
        "  - name: customers\n    type: import_profiles\n"
        f"    files: {{root: {{name: customers, pattern: 'customers_*.csv'{csv_block}}}, readiness: {{stable_seconds: 0}}}}\n"
        "    identifiers: [{column: customer_id, property: customer_number}]\n    allow_new_profiles: true\n"
        "    on_error: skip_rows\n    max_reject_share: 1\n"
        "    mappings: [{column: city, property: city}]\n"
    )
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    return drop, env


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path / "home"), "run", "shop"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def _cities(tmp_path: Path) -> list[tuple]:
    store = tmp_path / "home" / "store.duckdb"
    if not store.exists():
        return []
    with duckdb.connect(str(store), read_only=True) as conn:
        if not conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'profiles'").fetchone()[0]:
            return []
        return conn.execute("SELECT profile_id IS NOT NULL, city FROM profiles ORDER BY city").fetchall()


def test_a_cut_last_row_fails_the_delivery_and_the_complete_file_is_imported_afterwards(tmp_path: Path) -> None:
    drop, env = _project(tmp_path)
    upload = drop / "customers_1.csv"
    upload.write_bytes(b"customer_id,city\nC1,Berlin\nC2,Rot")
    cut = _run(tmp_path, env)
    assert cut.returncode == 1, cut.stdout[-3000:] + cut.stderr[-3000:]
    failure = cut.stdout[cut.stdout.index("FAILED customers:customers_1.csv"):]
    assert "customers_1.csv line 3" in failure and "cut short" in failure
    assert "csv.last_line_without_newline: accept" in failure
    assert _cities(tmp_path) == []  # not even the whole rows before it: the delivery is one unit

    upload.write_bytes(b"customer_id,city\nC1,Berlin\nC2,Rotterdam\n")
    whole = _run(tmp_path, env)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert _cities(tmp_path) == [(True, "Berlin"), (True, "Rotterdam")]


def test_reject_row_leaves_only_the_cut_row_out_and_records_it(tmp_path: Path) -> None:
    drop, env = _project(tmp_path, "last_line_without_newline: reject_row")
    (drop / "customers_1.csv").write_bytes(b"customer_id,city\nC1,Berlin\nC2,Rot")
    result = _run(tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _cities(tmp_path) == [(True, "Berlin")]
    with duckdb.connect(str(tmp_path / "home" / "store.duckdb"), read_only=True) as conn:
        rejects = conn.execute("SELECT file, line, reason FROM rejects").fetchall()
        assert conn.execute("SELECT rows_rejected FROM deliveries").fetchall() == [(1,)]
    assert [(Path(file).name, line) for file, line, _ in rejects] == [("customers_1.csv", 3)]
    assert "cut short" in rejects[0][2]


def test_accept_imports_a_last_row_without_line_break(tmp_path: Path) -> None:
    drop, env = _project(tmp_path, "last_line_without_newline: accept")
    (drop / "customers_1.csv").write_bytes(b"customer_id,city\nC1,Berlin\nC2,Rotterdam")
    result = _run(tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _cities(tmp_path) == [(True, "Berlin"), (True, "Rotterdam")]
