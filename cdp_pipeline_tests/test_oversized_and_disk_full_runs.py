"""Through the real runs (``run_now``): a PGP file that decrypts past ``max_file_gb`` is a
bad file and goes to quarantine; a full local disk is ours, so the file stays where it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.demo.generate import generate_delivery
from cdp_pipeline_tests.fixtures.gpg_keys import GpgCli, PgpTestKeys


def configure(tmp_path: Path, monkeypatch, home: Path, pgp: dict, **connection_settings) -> Path:
    """A connection with the demo's customers goal over a local inbox of encrypted files."""
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    customers = next(goal for goal in demo["goals"] if goal["name"] == "customers")
    customers["files"]["readiness"] = {"mode": "stable", "stable_seconds": 0}
    customers["files"]["after_import"] = {"action": "move_to_done", "quarantine_directory": "quarantine"}
    connection = {
        "name": "guarded",
        "source": {"type": "local", "path": str(tmp_path / "remote")},
        "pgp": {k: v for k, v in pgp.items() if not k.startswith(("signer", "public"))},
        "goals": [customers],
        **connection_settings,
    }
    (config / "connections" / "guarded.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    return tmp_path / "remote" / "inbox"


def encrypted_profiles(tmp_path: Path, inbox: Path, gpg_cli: GpgCli, pgp_keys: PgpTestKeys, copies: int) -> Path:
    """The demo's profiles file with its rows repeated: a few KB of ciphertext, MBs of plaintext."""
    generated = generate_delivery(tmp_path / "generated", profiles=40, seed=42, date="20260115")
    lines = generated["profiles"].read_text().splitlines(keepends=True)
    plain = tmp_path / "profiles_20260115.csv"
    plain.write_text(lines[0] + "".join(lines[1:]) * copies)
    inbox.mkdir(parents=True)
    return gpg_cli.encrypt(plain, inbox / "profiles_20260115.csv", pgp_keys.recipient)


def run(connection: str) -> dict:
    try:
        return run_now(connection, echo=lambda *_: None)
    finally:
        project_config.cache_clear()


def step_failures() -> str:
    """What the failed steps of every run in this test's Dagster instance said."""
    instance = dg.DagsterInstance.get()
    return "\n".join(
        record.dagster_event.step_failure_data.error.to_string()
        for run in instance.get_runs()
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    )


def profiles_in(home: Path) -> int:
    store = home / "store.duckdb"
    if not store.exists():
        return 0
    with duckdb.connect(str(store), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM profiles").fetchone()[0]


def test_file_that_decrypts_past_max_file_gb_is_quarantined(tmp_path, monkeypatch, gpg_cli, pgp_keys, pgp_env) -> None:
    home = tmp_path / "home"
    inbox = configure(tmp_path, monkeypatch, home, pgp_env, max_file_gb=0.001)  # 1 MB
    encrypted = encrypted_profiles(tmp_path, inbox, gpg_cli, pgp_keys, copies=400)
    assert encrypted.stat().st_size < 1_000_000 < (tmp_path / "profiles_20260115.csv").stat().st_size
    summary = run("guarded")
    assert [item["success"] for item in summary["imports"]] == [False]
    assert (inbox / "quarantine" / "profiles_20260115.csv").exists()
    assert "decrypts to more than 1,000,000 bytes, the connection's max_file_gb" in step_failures()
    assert profiles_in(home) == 0


def test_disk_full_during_decryption_leaves_the_file_in_place(tmp_path, monkeypatch, gpg_cli, pgp_keys, pgp_env, small_disk) -> None:
    home = small_disk(12)  # CDP_HOME, work directory and store on a 12 MB file system
    inbox = configure(tmp_path, monkeypatch, home, pgp_env)
    encrypted_profiles(tmp_path, inbox, gpg_cli, pgp_keys, copies=6_000)  # ~30 MB of plaintext
    summary = run("guarded")
    assert [item["success"] for item in summary["imports"]] == [False]
    assert (inbox / "profiles_20260115.csv").exists()
    assert not (inbox / "quarantine").exists()
    assert "filled up while trying to decrypt" in step_failures()
    assert not list((home / "work").rglob("*.plain"))
    assert profiles_in(home) == 0
