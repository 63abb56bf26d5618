"""The store's own pre-flight checks (``store_access_check``) against the moto S3 server: the work
bucket's variables, a probe object written with the configured encryption and removed again, and
``validate`` naming the store's unset variables. What is left in the bucket is looked up with a
client of the test's own, not through the code under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from cdp_pipeline.config.loading import load_project
from cdp_pipeline.connection_check import check_connection
from cdp_pipeline.store_access_check import store_checks
from cdp_pipeline_tests.fixtures.moto_s3 import ACCESS_KEY_ENV, SECRET_KEY_ENV
from cdp_pipeline_tests.work_storage.s3_project import PREFIX, s3_work_config


def _project(tmp_path: Path, test_bucket, **settings):
    config = s3_work_config(tmp_path, test_bucket, ["customers"])
    store = yaml.safe_load((config / "store.yaml").read_text())
    store["work_storage"]["s3"].update(settings)
    (config / "store.yaml").write_text(yaml.safe_dump(store, sort_keys=False))
    return load_project(config, tmp_path / "home")


def test_the_work_bucket_takes_an_encrypted_object_and_gives_it_up(tmp_path, s3_bucket):
    project = _project(tmp_path, s3_bucket)
    results = {result.name: result for result in store_checks(project, os.environ)}

    assert results[f"env {ACCESS_KEY_ENV}"].passed and results[f"env {SECRET_KEY_ENV}"].passed
    probe = results[f"work storage s3://{s3_bucket.name}/{PREFIX}"]
    assert probe.passed, probe.detail
    assert "AES256" in probe.detail
    assert s3_bucket.keys() == []


def test_the_store_checks_are_part_of_every_connection_check(tmp_path, s3_bucket):
    project = _project(tmp_path, s3_bucket)
    names = [result.name for result in check_connection(project, project.connections["demo_local"])]
    assert f"work storage s3://{s3_bucket.name}/{PREFIX}" in names and f"env {ACCESS_KEY_ENV}" in names


def test_an_unset_key_fails_its_check_and_the_probe_is_not_tried(tmp_path, monkeypatch, s3_bucket):
    project = _project(tmp_path, s3_bucket)
    monkeypatch.delenv(SECRET_KEY_ENV)
    results = {result.name: result for result in store_checks(project, os.environ)}

    assert not results[f"env {SECRET_KEY_ENV}"].passed and "work_storage.s3: secret access key" in results[f"env {SECRET_KEY_ENV}"].detail
    probe = results[f"work storage s3://{s3_bucket.name}/{PREFIX}"]
    assert not probe.passed and probe.detail == f"not checked: {SECRET_KEY_ENV} not set"


def test_a_bucket_that_does_not_exist_fails_the_probe_with_what_to_fix(tmp_path, s3_bucket):
    project = _project(tmp_path, s3_bucket, bucket=f"{s3_bucket.name}-missing")
    (probe,) = [result for result in store_checks(project, os.environ) if result.name.startswith("work storage")]
    assert not probe.passed and "NoSuchBucket" in probe.detail and "s3:DeleteObject" in probe.fix


def test_without_delete_permission_nothing_is_written(tmp_path, monkeypatch, s3_bucket, s3_iam):
    # A work bucket the pipeline cannot delete from would keep every delivery's plaintext.
    key_id, secret = s3_iam.user(["s3:ListBucket", "s3:GetObject", "s3:PutObject"], s3_bucket.name)
    monkeypatch.setenv(ACCESS_KEY_ENV, key_id)
    monkeypatch.setenv(SECRET_KEY_ENV, secret)
    project = _project(tmp_path, s3_bucket)
    s3_iam.enforce()
    try:
        (probe,) = [result for result in store_checks(project, os.environ) if result.name.startswith("work storage")]
    finally:
        s3_bucket.server.set_auth(False)
    assert not probe.passed and probe.detail.startswith("no probe was written: deleting is refused")
    assert s3_bucket.keys() == []


def test_a_local_file_store_has_nothing_of_its_own_to_check(tmp_path):
    from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR

    assert store_checks(load_project(BUNDLED_CONFIG_DIR, tmp_path / "home"), {}) == []


def test_validate_names_the_store_variables_that_are_not_set(tmp_path, s3_bucket):
    config = s3_work_config(tmp_path, s3_bucket, ["customers"])
    env = {key: value for key, value in os.environ.items() if key not in (ACCESS_KEY_ENV, SECRET_KEY_ENV)}
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "validate", "--home", str(tmp_path / "home"), "--config-dir", str(config), "--strict"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    for variable in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
        assert f"error: store.yaml: environment variable {variable} is not set or empty (work_storage.s3:" in result.stderr
