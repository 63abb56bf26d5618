"""SARE pairs and Netmera files through the SAME asset graph, ledger and store as every other
delivery: the example connections (with a local folder as their remote) run end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.dialects.test_netmera import SEED_PROFILE, SEED_PUSH
from cdp_pipeline_tests.dialects.test_sare import SEED_CSV, SEED_SIDECAR

EXAMPLES = Path(__file__).resolve().parents[2] / "cdp_pipeline" / "demo" / "examples"


def _project(tmp_path: Path, monkeypatch, example: str, directory_keys: dict[str, str]) -> tuple[Path, str]:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(EXAMPLES / "store_sare_netmera.yaml", config / "store.yaml")
    connection = yaml.safe_load((EXAMPLES / example).read_text())
    connection["source"] = {"type": "local", "path": "remote"}
    connection["dialect"].update(directory_keys)
    connection["dialect"].pop("spamtrap_list", None)
    connection.pop("pgp", None)
    for goal in connection["goals"]:
        goal.get("target", {}).pop("encrypt", None)
    (config / "connections" / "example.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    home = tmp_path / "home"
    (home / "remote").mkdir(parents=True)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    return home, connection["name"]


@pytest.fixture(autouse=True)
def _clear_cache():
    yield
    project_config.cache_clear()


def test_sare_pair_through_the_pipeline(tmp_path, monkeypatch):
    home, name = _project(tmp_path, monkeypatch, "sare_connection.yaml", {"directory": "in/import"})
    inbox = home / "remote" / "in" / "import"
    inbox.mkdir(parents=True)
    (inbox / "exemple.csv").write_text(SEED_CSV, encoding="utf-8")
    (inbox / "exemple.import").write_text(SEED_SIDECAR, encoding="utf-8")
    (inbox / "lonely.csv").write_text(SEED_CSV, encoding="utf-8")  # no sidecar: waits, is reported
    messages: list[str] = []
    summary = run_now(name, echo=messages.append)
    assert summary["imports"] and all(item["success"] for item in summary["imports"]), summary
    assert [item["delivery"] for item in summary["imports"]] == ["sare_import:exemple.csv"]
    assert any("lonely.csv" in message for message in messages)
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (3,)
        groups = conn.execute("SELECT DISTINCT unnest(sare_groups) FROM profiles").fetchall()
        assert groups == [("45",)] or groups == [(45,)]
        assert conn.execute("SELECT status, goal FROM deliveries").fetchall() == [("merged", "sare_import")]
    # Processed pairs move to done/ (autodelete 0).
    assert (inbox / "done" / "exemple.csv").exists() and (inbox / "done" / "exemple.import").exists()
    assert not (inbox / "exemple.csv").exists()


def test_netmera_push_and_profile_files_through_the_pipeline(tmp_path, monkeypatch):
    home, name = _project(tmp_path, monkeypatch, "netmera_connection.yaml", {})
    (home / "remote" / "push").mkdir()
    (home / "remote" / "Profile").mkdir()
    (home / "remote" / "Profile" / "attributes_20260302.txt").write_text(SEED_PROFILE, encoding="utf-8")
    (home / "remote" / "push" / "push_20260302.csv").write_text(SEED_PUSH, encoding="utf-8")
    summary = run_now(name, echo=lambda *_: None)
    assert all(item["success"] for item in summary["imports"]), summary
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] >= 2
        (pushes,) = conn.execute("SELECT count(*) FROM timeline_push_request").fetchone()
        assert pushes >= 1  # pushes for the external ids that have profiles
    # "When the file is processed successfully, it will disappear from the folder."
    assert not any((home / "remote" / "Profile").glob("*.txt"))
    assert not any((home / "remote" / "push").glob("*.csv"))
