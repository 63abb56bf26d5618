"""``work_storage`` in store.yaml: local unless chosen; with s3 the bucket and the server-side
encryption are required, and a mistake is reported at load with the file and the key."""

from __future__ import annotations

import shutil

import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, load_project
from cdp_pipeline.errors import ConfigError


def _config(tmp_path, work_storage: dict | None):
    config = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, config)
    store = yaml.safe_load((config / "store.yaml").read_text())
    if work_storage is not None:
        store["work_storage"] = work_storage
    (config / "store.yaml").write_text(yaml.safe_dump(store, sort_keys=False))
    return config


def _s3(**changes) -> dict:
    settings = {"bucket": "cdp-work", "server_side_encryption": "AES256", **changes}
    return {"type": "s3", "s3": {key: value for key, value in settings.items() if value is not None}}


def test_work_stays_on_this_host_unless_chosen(tmp_path):
    project = load_project(_config(tmp_path, None), tmp_path / "home")
    assert project.work_storage.type == "local" and project.work_storage.s3 is None


def test_s3_settings_load(tmp_path):
    project = load_project(_config(tmp_path, _s3(server_side_encryption="aws:kms", kms_key_id="alias/cdp", prefix="/work/")), tmp_path / "home")
    assert project.work_storage.s3 is not None
    assert (project.work_storage.s3.server_side_encryption, project.work_storage.s3.kms_key_id) == ("aws:kms", "alias/cdp")
    assert project.work_storage.s3.prefix == "work"


@pytest.mark.parametrize(
    ("work_storage", "message"),
    [
        (_s3(server_side_encryption=None), r"work_storage\.s3\.server_side_encryption: required key is missing"),
        (_s3(server_side_encryption="none"), r"work_storage\.s3\.server_side_encryption: Input should be 'AES256' or 'aws:kms'"),
        (_s3(bucket=None), r"work_storage\.s3\.bucket: required key is missing"),
        ({"type": "s3"}, r"work_storage: .*type s3 needs the s3 settings"),
        (_s3(kms_key_id="alias/cdp"), r"kms_key_id is used with server_side_encryption: aws:kms only"),
        (_s3(endpoint_url="http://minio.internal:9000"), r"work_storage\.s3\.endpoint_url: .*customer data would cross the network unencrypted"),
        (_s3(access_key_id_env="WORK_KEY"), r"give both access_key_id_env and secret_access_key_env"),
    ],
)
def test_mistakes_are_reported_at_load_with_file_and_key(tmp_path, work_storage, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_project(_config(tmp_path, work_storage), tmp_path / "home")
    assert "store.yaml" in str(raised.value)


def test_http_is_accepted_for_a_server_on_this_host(tmp_path):
    for endpoint in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000", "https://minio.internal"):
        project = load_project(_config(tmp_path / endpoint.replace("/", "_").replace(":", "_"), _s3(endpoint_url=endpoint)), tmp_path / "home")
        assert project.work_storage.s3 is not None and project.work_storage.s3.endpoint_url == endpoint
