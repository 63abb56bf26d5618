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


def test_preview_of_an_encrypted_sftp_delivery_leaves_the_server_folder_as_it_was(tmp_path, monkeypatch, sshd_server, pgp_keys, gpg_cli, pgp_env):
    import shutil

    import yaml

    from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, load_project
    from cdp_pipeline.demo.generate import generate_delivery
    from cdp_pipeline.preview import preview

    sftp = sshd_server.settings("password")
    for name, value in sftp.environment.items():
        monkeypatch.setenv(name, value)
    directory = sshd_server.fresh_directory("password", "drop")
    plain = generate_delivery(tmp_path / "plain", profiles=60, seed=11, date="20260201")
    for path in plain.values():
        encrypted = gpg_cli.encrypt(path, tmp_path / f"{path.name}.gpg", pgp_keys.recipient)
        sshd_server.drop_file("password", f"{directory}/{path.name}", encrypted.read_bytes())
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    connection = {
        **demo, "name": "partner_sftp", "source": sftp.location.model_dump(mode="json", exclude_none=True),
        "pgp": {k: v for k, v in pgp_env.items() if not k.startswith("signer")}, "schedules": [],
        "goals": [{**goal, "files": {**goal["files"], "directory": directory, "after_import": {"action": "done_suffix"}}}
                  for goal in demo["goals"] if "files" in goal],
    }
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    (config / "connections" / "partner.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    home = tmp_path / "home"
    project = load_project(config, home)
    folder = sshd_server.server_path("password", directory)
    before = _listing(folder)

    listing, result = preview(project, "partner_sftp", "customers")

    assert _listing(folder) == before  # no .done suffix, nothing moved or deleted
    assert not (home / "store.duckdb").exists()
    assert not list((home / "work").glob("preview-*"))
    assert [g.goal for g in listing] == ["customers"]
    assert listing[0].complete == [f"customers:{plain['profiles'].name} ({plain['profiles'].name})"]
    assert result is not None and result.failed is None
    with plain["profiles"].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert result.rows_read == len(rows)
    assert result.compared_with.startswith("no store yet")
    assert result.would_create == len({row["customer_id"].strip() for row in rows if row["customer_id"].strip()})
    assert result.would_match == 0
    assert result.first_rows.columns[0] == "customer_number"
    assert result.first_rows["customer_number"][0] == rows[0]["customer_id"].strip()


# ---------------------------------------------------------------- the Dagster job


def _preview_job(tmp_path: Path, monkeypatch, config: Path, home: Path):
    from cdp_pipeline.defs.project import project_config

    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    project_config.cache_clear()
    from cdp_pipeline.definitions import defs

    return defs().resolve_job_def("acme_preview")


def _output_metadata(result) -> dict:
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.event_specific_data.metadata.items()}


def _event_log_text(instance, run_id: str) -> str:
    return "\n".join(repr(entry) for entry in instance.all_logs(run_id))


def test_preview_job_shows_counts_not_values_and_changes_nothing(tmp_path, monkeypatch):
    import dagster as dg

    from cdp_pipeline.defs.project import project_config

    config, home = _setup(tmp_path)
    store = home / "store.duckdb"
    before_store = hashlib.sha256(store.read_bytes()).hexdigest()
    before_drop = _listing(home / "drop")
    try:
        job = _preview_job(tmp_path, monkeypatch, config, home)
        assert [node.name for node in job.nodes] == ["acme_preview_delivery"]
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(instance=instance, raise_on_error=False)
            assert result.success
            metadata = _output_metadata(result)
            log = _event_log_text(instance, result.run_id)
    finally:
        project_config.cache_clear()

    assert hashlib.sha256(store.read_bytes()).hexdigest() == before_store
    assert _listing(home / "drop") == before_drop
    assert not list((home / "work").glob("preview-*"))

    keyed = [email for email, _, _ in ROWS if email]
    assert metadata["delivery"] == "people:people_20260115.csv"
    assert metadata["rows_read"] == len(ROWS)
    assert metadata["rows_rejected"] == 2 and metadata["values_not_imported"] == 1
    assert metadata["profiles_would_create"] == len([e for e in keyed if e not in STORED])
    assert metadata["profiles_would_match"] == len([e for e in keyed if e in STORED])
    assert metadata["deliveries_complete"] == 1 and metadata["files_ignored"] == 1
    assert "| people | . | complete | people:people_20260115.csv (people_20260115.csv) |" in metadata["files"]
    assert "| people | . | ignored | notes.txt: matches none of the file patterns" in metadata["files"]
    # The rejects name file, line and column; the value that did not parse is hidden.
    assert "| people_20260115.csv | 4 | spend |" in metadata["rejects"]
    assert "(value hidden)" in metadata["rejects"]
    assert "first_rows" not in metadata
    # No customer value anywhere in the run's event log without the opt-in.
    for email, city, spend in ROWS:
        for value in (email, city, spend):
            if value and len(value) > 2:
                assert value not in log, value


def test_preview_job_shows_the_first_rows_when_the_store_opts_in(tmp_path, monkeypatch):
    import dagster as dg

    from cdp_pipeline.defs.project import project_config

    config, home = _setup(tmp_path)
    (config / "store.yaml").write_text("store: {ui_preview_rows: 2}\n" + STORE)
    try:
        job = _preview_job(tmp_path, monkeypatch, config, home)
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                instance=instance, raise_on_error=False,
                run_config={"ops": {"acme_preview_delivery": {"config": {"goal": "people", "delivery": "people:people_20260115.csv"}}}},
            )
            assert result.success
            metadata = _output_metadata(result)
    finally:
        project_config.cache_clear()
    assert "| ann@example.com | Berlin | 10.5" in metadata["first_rows"]
    assert "not a number" in metadata["rejects"]  # the opt-in shows the value that did not parse


def test_preview_job_fails_for_an_unknown_goal_with_its_close_match(tmp_path, monkeypatch):
    import dagster as dg

    from cdp_pipeline.defs.project import project_config

    config, home = _setup(tmp_path)
    try:
        job = _preview_job(tmp_path, monkeypatch, config, home)
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                instance=instance, raise_on_error=False, run_config={"ops": {"acme_preview_delivery": {"config": {"goal": "peple"}}}}
            )
    finally:
        project_config.cache_clear()
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "no import goal named 'peple'; did you mean people?" in failure.step_failure_data.user_failure_data.description


def test_preview_job_fails_when_the_import_would_and_hides_the_values_it_names(tmp_path, monkeypatch):
    import dagster as dg

    from cdp_pipeline.defs.project import project_config

    config, home = _setup(tmp_path)
    (config / "connections" / "acme.yaml").write_text(CONNECTION.replace("on_error: skip_rows", "on_error: fail"))
    before_store = hashlib.sha256((home / "store.duckdb").read_bytes()).hexdigest()
    before_drop = _listing(home / "drop")
    try:
        job = _preview_job(tmp_path, monkeypatch, config, home)
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(instance=instance, raise_on_error=False)
            log = _event_log_text(instance, result.run_id)
    finally:
        project_config.cache_clear()
    assert not result.success
    (failure,) = result.get_step_failure_events()
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure.description.startswith("the import of people:people_20260115.csv would fail: ")
    assert "people_20260115.csv line 4, column 'spend': " in user_failure.description
    assert "(value hidden)" in user_failure.metadata["rejects"].value
    assert "not a number" not in log
    assert hashlib.sha256((home / "store.duckdb").read_bytes()).hexdigest() == before_store
    assert _listing(home / "drop") == before_drop
