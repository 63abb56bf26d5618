"""A SARE pair's generated goal and its "import": false marker are saved at staging and read at the
merge: with ``work_storage: s3`` they travel through the bucket like the rest of the work folder."""

from __future__ import annotations

import csv
import io
import json

import dagster as dg
import duckdb
import pytest
import yaml

from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.dialects.test_dialect_pipeline import _project
from cdp_pipeline_tests.dialects.test_sare import SEED_CSV, SEED_SIDECAR
from cdp_pipeline_tests.fixtures.moto_s3 import S3Bucket
from cdp_pipeline_tests.work_storage.s3_project import PREFIX, files_below, work_storage_yaml

STEPS = ["fetched_files", "decrypted_files", "import_tables", "profile_store"]


@pytest.fixture(autouse=True)
def _clear_cache():
    yield
    project_config.cache_clear()


def _sare_home(tmp_path, monkeypatch, s3_bucket: S3Bucket, sidecar: str):
    home, name = _project(tmp_path, monkeypatch, "sare_connection.yaml", {"directory": "in/import"})
    store_yaml = tmp_path / "config" / "store.yaml"
    store = yaml.safe_load(store_yaml.read_text())
    store["work_storage"] = work_storage_yaml(s3_bucket)
    store_yaml.write_text(yaml.safe_dump(store, sort_keys=False))
    monkeypatch.setenv("CDP_SCRATCH_DIR", str(tmp_path / "scratch"))
    inbox = home / "remote" / "in" / "import"
    inbox.mkdir(parents=True)
    (inbox / "exemple.csv").write_text(SEED_CSV, encoding="utf-8")
    (inbox / "exemple.import").write_text(sidecar, encoding="utf-8")
    project_config.cache_clear()
    from cdp_pipeline.definitions import defs

    definitions = defs()
    assets = [definitions.resolve_assets_def(dg.AssetKey([name, step])) for step in STEPS]
    instance = dg.DagsterInstance.ephemeral()
    partition = "sare_import:exemple.csv"
    instance.add_dynamic_partitions(f"{name}__deliveries", [partition])
    return home, inbox, assets, instance, partition


def test_a_sare_pair_merges_under_its_generated_goal_through_the_bucket(tmp_path, monkeypatch, s3_bucket: S3Bucket):
    home, inbox, assets, instance, partition = _sare_home(tmp_path, monkeypatch, s3_bucket, SEED_SIDECAR)
    emails = {row["email"].strip().lower() for row in csv.DictReader(io.StringIO(SEED_CSV), delimiter=";")}
    result = dg.materialize(assets, partition_key=partition, instance=instance)
    assert result.success
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert {row[0] for row in conn.execute("SELECT email FROM profiles").fetchall()} == emails
        assert conn.execute("SELECT status, goal FROM deliveries").fetchall() == [("merged", "sare_import")]
    # Finished per the goal generated at staging (autodelete 0: both files to done/).
    assert (inbox / "done" / "exemple.csv").exists() and (inbox / "done" / "exemple.import").exists()
    assert s3_bucket.keys(f"{PREFIX}/") == []
    assert files_below(tmp_path / "scratch") == []


def test_a_pair_marked_not_for_import_stays_where_it_is(tmp_path, monkeypatch, s3_bucket: S3Bucket):
    sidecar = json.dumps({**json.loads(SEED_SIDECAR), "import": False})
    home, inbox, assets, instance, partition = _sare_home(tmp_path, monkeypatch, s3_bucket, sidecar)
    staging = dg.materialize(assets[:3], partition_key=partition, instance=instance)
    assert staging.success
    [marker] = [key for key in s3_bucket.keys(f"{PREFIX}/") if key.endswith("/skip.json")]
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=marker)["ServerSideEncryption"] == "AES256"
    merge = dg.materialize(assets, partition_key=partition, instance=instance, selection=[assets[3]])
    assert merge.success
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (0,)
    assert (inbox / "exemple.csv").exists() and (inbox / "exemple.import").exists()
    assert s3_bucket.keys(f"{PREFIX}/") == []
    assert files_below(tmp_path / "scratch") == []
