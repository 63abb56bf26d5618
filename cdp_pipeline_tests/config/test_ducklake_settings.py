"""store.backend and store.ducklake: what is accepted, what is refused with a reason, and the catalog's
password kept out of every message."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.ducklake import DuckLakeLocation, DuckLakeSettings
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.errors import ConfigError, TransientError
from cdp_pipeline.store.database import open_writer


def test_the_default_backend_is_the_duckdb_file(tmp_path):
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=StoreSettings(), catalog=Catalog())
    assert project.store_location == tmp_path / "store.duckdb"
    assert project.published_store_path == tmp_path / "store_published.duckdb"


def test_a_lake_needs_its_settings_and_exactly_one_data_location():
    with pytest.raises(ValidationError, match="backend ducklake needs the ducklake settings"):
        StoreSettings(backend="ducklake")
    with pytest.raises(ValidationError, match="exactly one of data_path"):
        DuckLakeSettings(catalog_dsn_env="DSN")
    with pytest.raises(ValidationError, match="exactly one of data_path"):
        DuckLakeSettings.model_validate({"catalog_dsn_env": "DSN", "data_path": "/x", "s3": {"bucket": "b"}})
    with pytest.raises(ValidationError, match="not an environment variable name"):
        DuckLakeSettings(catalog_dsn_env="host=db password=secret", data_path="/x")
    with pytest.raises(ValidationError, match="looks like an AWS access key id"):
        DuckLakeSettings.model_validate({"catalog_dsn_env": "DSN", "s3": {"bucket": "b", "access_key_id_env": "AKIAABCDEFGHIJKLMNOP"}})


@pytest.mark.parametrize(
    ("s3", "message"),
    [
        ({"endpoint_url": "http://minio.internal:9000"}, "customer data would cross the network unencrypted"),
        ({"endpoint_url": "minio.internal:9000"}, "must be an http:// or https:// URL with a host"),
        ({"endpoint_url": "https://key:secret@minio.internal"}, "must not carry credentials"),
        ({"access_key_id_env": "LAKE_KEY"}, "give both access_key_id_env and secret_access_key_env"),
    ],
)
def test_the_lake_bucket_follows_the_same_rules_as_the_work_bucket(s3, message):
    # The lake's Parquet files are customer data, as the work folders are: TLS off this host, and a
    # URL the S3 secret can really use (a bare host:port gave DuckDB an empty endpoint before).
    with pytest.raises(ValidationError, match=message):
        DuckLakeSettings.model_validate({"catalog_dsn_env": "DSN", "s3": {"bucket": "b", **s3}})


def test_a_lake_bucket_on_this_host_may_use_http():
    for endpoint in ("http://127.0.0.1:9000", "http://localhost:9000", "https://minio.internal:9000"):
        settings = DuckLakeSettings.model_validate({"catalog_dsn_env": "DSN", "s3": {"bucket": "b", "endpoint_url": endpoint}})
        assert settings.s3 is not None and settings.s3.endpoint_url == endpoint


def test_a_lake_store_has_no_published_copy_and_resolves_its_folder(tmp_path):
    settings = DuckLakeSettings(catalog_dsn_env="DSN", data_path="lake")
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=StoreSettings(backend="ducklake", ducklake=settings), catalog=Catalog())
    assert project.published_store_path is None
    assert project.store_location == DuckLakeLocation(settings=settings, data_folder=tmp_path / "lake")


def test_a_missing_dsn_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("CDP_TEST_NO_SUCH_DSN", raising=False)
    location = DuckLakeLocation(DuckLakeSettings(catalog_dsn_env="CDP_TEST_NO_SUCH_DSN", data_path=str(tmp_path)), tmp_path)
    with pytest.raises(ConfigError, match="CDP_TEST_NO_SUCH_DSN is not set"):
        with open_writer(location, Catalog()):
            pass


def test_an_unreachable_catalog_fails_as_transient_without_the_password(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CDP_TEST_LAKE_DSN_BAD", f"host=127.0.0.1 port={port} dbname=lake user=cdp password=hunter2-not-for-logs connect_timeout=5")
    location = DuckLakeLocation(DuckLakeSettings(catalog_dsn_env="CDP_TEST_LAKE_DSN_BAD", data_path=str(tmp_path / "lake")), tmp_path / "lake")
    with pytest.raises(TransientError) as failed:
        with open_writer(location, Catalog()):
            pass
    message = str(failed.value)
    assert "CDP_TEST_LAKE_DSN_BAD" in message and "cannot be attached" in message
    assert "hunter2" not in message and "hunter2" not in repr(failed.value.__cause__) and failed.value.__suppress_context__
