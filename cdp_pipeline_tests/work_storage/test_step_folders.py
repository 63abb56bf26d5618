"""The engine's side of ``work_storage: s3`` on a real (moto) S3 server, without Dagster: what a step
pulls and pushes, what it leaves on local disk, and how it names what is missing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdp_pipeline import importing, work_storage
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.config.work_storage import WorkStorageS3, WorkStorageSettings
from cdp_pipeline.errors import CdpError
from cdp_pipeline_tests.fixtures.moto_s3 import S3Bucket
from cdp_pipeline_tests.work_storage.s3_project import PREFIX, files_below, work_storage_yaml

PARTITION = "customers:../../etc/profiles_1.csv"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch, s3_bucket: S3Bucket) -> ProjectConfig:
    monkeypatch.setenv("CDP_SCRATCH_DIR", str(tmp_path / "scratch"))
    settings = WorkStorageSettings.model_validate(work_storage_yaml(s3_bucket))
    return ProjectConfig(config_dir=tmp_path, home=tmp_path / "home", store=StoreSettings(), catalog=Catalog(), work_storage=settings)


def _fake_fetch(path, content: bytes = b"id\n1\n") -> None:
    (path / "fetched").mkdir(mode=0o700)
    (path / "fetched" / "profiles.bin").write_bytes(content)
    entry = {"name": "profiles", "remote_path": "in/p.csv", "size": len(content), "mtime": 1.0, "etag": None, "sha256": "x",
             "local_path": str(path / "fetched" / "profiles.bin")}
    (path / "fetched.json").write_text(json.dumps({"files": [entry], "partition_key": PARTITION}))


def test_the_bucket_folder_has_the_local_folder_name_and_the_next_step_finds_the_files(project, tmp_path, s3_bucket: S3Bucket):
    local_name = importing.delivery_work_dir(dataclasses.replace(project, home=tmp_path / "other"), "demo", PARTITION).name
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
        fetched_at = work.path
    assert work.folder == f"demo/{local_name}/" and work.folder.count("/") == 2  # the remote name stays one folder
    assert sorted(s3_bucket.keys(f"{PREFIX}/")) == [f"{PREFIX}/demo/{local_name}/fetched.json", f"{PREFIX}/demo/{local_name}/fetched/profiles.bin"]
    assert not fetched_at.exists() and files_below(tmp_path / "scratch") == []
    with work_storage.delivery_work(project, "demo", PARTITION, "decrypt") as work:
        assert work.path != fetched_at
        files, extra = importing.read_manifest(work.path / "fetched.json")
        # The manifest names the file where this step has it, not where the fetch step had it.
        assert files[0].local_path == str(work.path / "fetched" / "profiles.bin")
        assert (work.path / "fetched" / "profiles.bin").read_bytes() == b"id\n1\n"
        assert (work.path / "fetched" / "profiles.bin").stat().st_mode & 0o777 == 0o600
        assert extra["partition_key"] == PARTITION
    assert files_below(tmp_path / "scratch") == []


def test_a_marker_an_earlier_attempt_left_is_removed_when_the_step_no_longer_writes_it(project, s3_bucket: S3Bucket):
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
    s3_bucket.put(f"{PREFIX}/{work.folder}decrypted.json", json.dumps({"files": []}))
    s3_bucket.put(f"{PREFIX}/{work.folder}{importing.SKIP_FILE}", json.dumps({"reason": "earlier"}))
    s3_bucket.put(f"{PREFIX}/{work.folder}tables/stale.parquet", b"old")
    with work_storage.delivery_work(project, "demo", PARTITION, "stage") as work:
        # Staged again, this time to be imported: no skip marker written.
        (work.path / "tables").mkdir()
        (work.path / "tables" / "manifest.json").write_text("{}")
        (work.path / importing.REJECT_REPORT).write_text("file,line,column,reason\n")
    keys = sorted(key.removeprefix(f"{PREFIX}/{work.folder}") for key in s3_bucket.keys(f"{PREFIX}/"))
    assert keys == ["decrypted.json", "fetched.json", "fetched/profiles.bin", "rejects.csv", "tables/manifest.json"]


def test_a_failed_step_keeps_only_its_report_and_removes_its_scratch(project, tmp_path, s3_bucket: S3Bucket):
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
    s3_bucket.put(f"{PREFIX}/{work.folder}decrypted.json", json.dumps({"files": []}))
    with pytest.raises(CdpError, match="bad rows"), work_storage.delivery_work(project, "demo", PARTITION, "stage") as work:
        (work.path / "tables").mkdir()
        (work.path / "tables" / "records.parquet").write_bytes(b"half written")
        (work.path / importing.REJECT_REPORT).write_text("file,line,column,reason\nin/p.csv,2,id,bad\n")
        raise CdpError("bad rows")
    keys = sorted(key.removeprefix(f"{PREFIX}/{work.folder}") for key in s3_bucket.keys(f"{PREFIX}/"))
    assert keys == ["decrypted.json", "fetched.json", "fetched/profiles.bin", "rejects.csv"]
    assert files_below(tmp_path / "scratch") == []


def test_a_step_whose_input_was_never_pushed_names_the_folder_and_what_to_do(project, s3_bucket: S3Bucket):
    with pytest.raises(CdpError, match=rf"s3://{s3_bucket.name}/{PREFIX}/demo/.*: decrypted.json, tables/ missing.*from its first step"):
        with work_storage.delivery_work(project, "demo", PARTITION, "merge"):
            pass


def test_kms_encryption_is_asked_for_on_every_object(project, s3_bucket: S3Bucket):
    settings = project.work_storage.s3
    assert settings is not None
    kms = WorkStorageS3.model_validate({**settings.model_dump(), "server_side_encryption": "aws:kms", "kms_key_id": "alias/cdp-work"})
    project = dataclasses.replace(project, work_storage=WorkStorageSettings(type="s3", s3=kms))
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
    for key in s3_bucket.keys(f"{PREFIX}/"):
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith("alias/cdp-work"), head["SSEKMSKeyId"]


def test_finished_and_quarantined_deliveries_leave_the_bucket(project, s3_bucket: S3Bucket):
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
    s3_bucket.put(f"{PREFIX}/{work.folder}rejects.csv", b"file,line,column,reason\n")
    work.quarantined()
    assert [key.removeprefix(f"{PREFIX}/{work.folder}") for key in sorted(s3_bucket.keys(f"{PREFIX}/"))] == ["fetched.json", "rejects.csv"]
    work.finished()
    assert s3_bucket.keys(f"{PREFIX}/") == []


def test_an_unset_key_variable_is_named(project, monkeypatch):
    monkeypatch.delenv("CDP_TEST_S3_SECRET_ACCESS_KEY")
    with pytest.raises(CdpError, match="CDP_TEST_S3_SECRET_ACCESS_KEY .secret_access_key_env. is not set"):
        with work_storage.delivery_work(project, "demo", PARTITION, "fetch"):
            pass


def test_a_large_plain_file_passed_through_decryption_downloads_intact(project, tmp_path, s3_bucket: S3Bucket):
    """Above boto3's multipart threshold (8 MiB) the download of the server-side copy is verified
    against a checksum of the copy's own, not the source's per-part one."""
    content = bytes(range(256)) * (9 * 4096)  # 9 MiB
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path, content)
    with work_storage.delivery_work(project, "demo", PARTITION, "decrypt") as work:
        (work.path / "decrypted").mkdir(mode=0o700)
        files, extra = importing.read_manifest(work.path / "fetched.json")
        (work.path / "decrypted" / "profiles.plain").hardlink_to(work.path / "fetched" / "profiles.bin")
        plain = dataclasses.replace(files[0], local_path=str(work.path / "decrypted" / "profiles.plain"))
        (work.path / "decrypted.json").write_text(json.dumps({"files": [vars(plain)], **extra}))
    s3_bucket.put(f"{PREFIX}/{work.folder}tables/manifest.json", b"{}")
    with work_storage.delivery_work(project, "demo", PARTITION, "merge") as work:
        assert (work.path / "decrypted" / "profiles.plain").read_bytes() == content


def test_an_object_whose_key_would_leave_the_step_folder_is_refused(project, tmp_path, s3_bucket: S3Bucket):
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path)
    s3_bucket.put(f"{PREFIX}/{work.folder}fetched/../../../../escaped.txt", b"x")
    with pytest.raises(CdpError, match=r"object 'fetched/\.\./.*' is not a work folder's file"):
        with work_storage.delivery_work(project, "demo", PARTITION, "decrypt"):
            pass
    assert not list(tmp_path.rglob("escaped.txt"))
    assert files_below(tmp_path / "scratch") == []



def test_a_step_killed_mid_push_leaves_no_earlier_manifest_and_its_scratch_is_swept(project, tmp_path, s3_bucket: S3Bucket):
    with work_storage.delivery_work(project, "demo", PARTITION, "fetch") as work:
        _fake_fetch(work.path, b"id\n1\n")
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "CDP_PIPELINE_FAULT_AT": "work_push",
        "CDP_TEST_WORK_STORAGE": project.work_storage.model_dump_json(),
    }
    killed = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline_tests.work_storage.killed_push", str(project.home), PARTITION, "id\n2\n"],
        env=env, capture_output=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    # The new download is in, the earlier manifest (naming the earlier bytes) is gone with it.
    assert [key.removeprefix(f"{PREFIX}/{work.folder}") for key in s3_bucket.keys(f"{PREFIX}/")] == ["fetched/profiles.bin"]
    assert s3_bucket.get(f"{PREFIX}/{work.folder}fetched/profiles.bin") == b"id\n2\n"
    with pytest.raises(CdpError, match="fetched.json missing"):
        with work_storage.delivery_work(project, "demo", PARTITION, "decrypt"):
            pass
    # A killed step cannot remove its scratch folder; the sweep does, a day later.
    left = files_below(tmp_path / "scratch")
    assert sorted(path.name for path in left) == ["fetched.json", "profiles.bin"]
    assert work_storage.sweep_stale_work(project, "demo") == []
    assert files_below(tmp_path / "scratch") == left
    swept = work_storage.sweep_stale_work(project, "demo", now=time.time() + 25 * 3600)
    assert swept == [f"s3://{s3_bucket.name}/{PREFIX}/{work.folder}"]
    assert files_below(tmp_path / "scratch") == []
    assert s3_bucket.keys(f"{PREFIX}/") == []
