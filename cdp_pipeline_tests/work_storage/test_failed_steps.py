"""A delivery that fails part-way with ``work_storage: s3``: no plaintext stays on local disk; a
quarantined delivery's customer data leaves the bucket (its reject report stays); one left for a
re-execution keeps its work in the bucket until the stale-work sweep removes it a day later."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from cdp_pipeline import work_storage
from cdp_pipeline.config.loading import load_project
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.run_history import read_history
from cdp_pipeline_tests.demo_home import prepare_demo_home
from cdp_pipeline_tests.fixtures.gpg_keys import GpgCli, PgpTestKeys
from cdp_pipeline_tests.fixtures.moto_s3 import S3Bucket
from cdp_pipeline_tests.work_storage.s3_project import PREFIX, files_below, s3_work_config

STEPS = ["fetched_files", "decrypted_files", "import_tables", "profile_store"]
QUARANTINE = {"action": "move_to_done", "quarantine_directory": "quarantine"}


@pytest.fixture
def s3_home(tmp_path, monkeypatch) -> Path:
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=30)
    monkeypatch.setenv("CDP_SCRATCH_DIR", str(tmp_path / "scratch"))
    yield home
    project_config.cache_clear()


def _run(partition: str, steps: list[str] = STEPS) -> dg.ExecuteInProcessResult:
    project_config.cache_clear()
    from cdp_pipeline.definitions import defs

    definitions = defs()
    assets = [definitions.resolve_assets_def(dg.AssetKey(["demo_local", step])) for step in steps]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("demo_local__deliveries", [partition])
    return dg.materialize(assets, partition_key=partition, instance=instance, raise_on_error=False)


def _break_household_size(inbox: Path) -> None:
    households = inbox / "households_20260115.csv"
    lines = households.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:-1] + ["three"])
    households.write_text("\n".join(lines) + "\n")


def _relative_keys(bucket: S3Bucket) -> list[str]:
    return sorted(key.split("/", 3)[3] for key in bucket.keys(f"{PREFIX}/demo_local/"))


def test_rows_rejected_in_staging_quarantine_and_leave_only_the_report(tmp_path, monkeypatch, s3_home, s3_bucket: S3Bucket):
    monkeypatch.setenv("CDP_CONFIG_DIR", str(s3_work_config(tmp_path, s3_bucket, ["households"], QUARANTINE)))
    inbox = s3_home / "demo" / "inbox"
    _break_household_size(inbox)
    result = _run("households:households_20260115.csv")
    assert not result.success
    failed = [event.step_key for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed == ["demo_local__import_tables"]
    assert (inbox / "quarantine" / "households_20260115.csv").exists()
    # The customer data left the bucket; the reject report stays for whoever fixes the file, encrypted.
    assert _relative_keys(s3_bucket) == ["decrypted.json", "fetched.json", "rejects.csv"]
    [report] = [key for key in s3_bucket.keys(f"{PREFIX}/") if key.endswith("rejects.csv")]
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=report)["ServerSideEncryption"] == "AES256"
    text = s3_bucket.get(report).decode()
    assert "household_size" in text and ",4," in text
    assert files_below(tmp_path / "scratch") == []
    assert not (s3_home / "work").exists()


def test_a_file_that_cannot_be_decrypted_leaves_no_plaintext_anywhere(
    tmp_path, monkeypatch, s3_home, s3_bucket: S3Bucket, gpg_cli: GpgCli, pgp_keys: PgpTestKeys
):
    monkeypatch.setenv("CDP_CONFIG_DIR", str(s3_work_config(tmp_path, s3_bucket, ["customers"], QUARANTINE)))
    inbox = s3_home / "demo" / "inbox"
    plain = inbox / "profiles_20260115.csv"
    encrypted = gpg_cli.encrypt(plain, tmp_path / "profiles.pgp", pgp_keys.stranger)
    plain.write_bytes(encrypted.read_bytes())  # encrypted content under the same name; the demo has no key
    result = _run("customers:profiles_20260115.csv")
    assert not result.success
    failed = [event.step_key for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failed == ["demo_local__decrypted_files"]
    assert (inbox / "quarantine" / "profiles_20260115.csv").exists()
    assert _relative_keys(s3_bucket) == ["fetched.json"]
    assert files_below(tmp_path / "scratch") == []
    assert not (s3_home / "work").exists()


def test_a_failure_without_quarantine_keeps_the_work_for_a_retry_until_the_sweep(tmp_path, monkeypatch, s3_home, s3_bucket: S3Bucket):
    monkeypatch.setenv("CDP_CONFIG_DIR", str(s3_work_config(tmp_path, s3_bucket, ["households"])))
    _break_household_size(s3_home / "demo" / "inbox")
    assert not _run("households:households_20260115.csv").success
    kept = _relative_keys(s3_bucket)
    assert {"fetched.json", "fetched/households.bin", "decrypted.json", "decrypted/households.plain", "rejects.csv"} <= set(kept)
    assert not [key for key in kept if key.startswith("tables/")]
    assert files_below(tmp_path / "scratch") == []
    project = load_project()
    # A day has not passed: a re-execution still finds the work.
    assert work_storage.sweep_stale_work(project, "demo_local") == []
    assert _relative_keys(s3_bucket) == kept
    swept = work_storage.sweep_stale_work(project, "demo_local", now=time.time() + 25 * 3600)
    assert len(swept) == 1 and swept[0].startswith(f"s3://{s3_bucket.name}/{PREFIX}/demo_local/households_")
    assert s3_bucket.keys(f"{PREFIX}/") == []


def test_work_that_cannot_be_downloaded_at_a_steps_start_is_a_failed_run_in_the_history(tmp_path, monkeypatch, s3_home, s3_bucket: S3Bucket):
    # The bucket, not the partner's file, failed: the history a person reads must still show the run.
    monkeypatch.setenv("CDP_CONFIG_DIR", str(s3_work_config(tmp_path, s3_bucket, ["households"], QUARANTINE)))
    partition = "households:households_20260115.csv"
    assert _run(partition, ["fetched_files"]).success
    downloads = [key for key in s3_bucket.keys(f"{PREFIX}/demo_local/") if "/fetched/" in key]
    assert downloads
    s3_bucket.client.delete_objects(Bucket=s3_bucket.name, Delete={"Objects": [{"Key": key} for key in downloads]})

    result = _run(partition, ["decrypted_files"])
    assert not result.success
    project = load_project()
    rows = [row for row in read_history(project.read_location, "demo_local") if row.kind == "import"]
    assert [(row.goal, row.status, row.partition_key) for row in rows] == [("households", "FAILURE", partition)]
    cause = rows[0].error or ""
    assert "named by fetched.json, is missing from the bucket" in cause and "run the import of the delivery again" in cause
    # Our storage failed, not the file: it is not quarantined.
    assert (s3_home / "demo" / "inbox" / "households_20260115.csv").exists()
    assert files_below(tmp_path / "scratch") == []
