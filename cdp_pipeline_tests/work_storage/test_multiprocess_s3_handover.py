"""With ``work_storage: s3`` the steps of an import hand over through the bucket: each step runs in a
process of its own (multiprocess executor) with a scratch root no other step sees, the objects are
written with server-side encryption, and after the merge nothing of the delivery is left in the
bucket or on local disk."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home
from cdp_pipeline_tests.fixtures.moto_s3 import S3Bucket
from cdp_pipeline_tests.work_storage import multiprocess_job
from cdp_pipeline_tests.work_storage.s3_project import PREFIX, customer_numbers, files_below, s3_work_config

PARTITION = "customers:profiles_20260115.csv"
STAGING = ["fetched_files", "decrypted_files", "import_tables"]


def _keys(step: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["demo_local", step])]


def _workers(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED).records
    return {record.event_log_entry.step_key for record in records}


# Each step process loads the code location first (tens of seconds on a loaded 2-core host).
@pytest.mark.timeout(1200)
def test_steps_in_separate_processes_hand_over_through_s3(tmp_path, monkeypatch, s3_bucket: S3Bucket):
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=60)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(s3_work_config(tmp_path, s3_bucket, ["customers"])))
    monkeypatch.setenv("CDP_EXECUTOR", "multiprocess")
    scratch = tmp_path / "scratch"
    monkeypatch.setenv(multiprocess_job.SCRATCH_BASE_ENV, str(scratch))
    monkeypatch.setenv("CDP_SCRATCH_DIR", str(scratch / "orchestrator"))  # restored after the test
    source = home / "demo" / "inbox" / "profiles_20260115.csv"
    source_bytes = source.read_bytes()
    expected = customer_numbers(source)
    assert len(expected) == 60
    project_config.cache_clear()
    job = dg.reconstructable(multiprocess_job.import_job)
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("demo_local__deliveries", [PARTITION])
            staging = dg.execute_job(
                job, instance=instance, tags={"dagster/partition": PARTITION},
                asset_selection=[key for step in STAGING for key in _keys(step)],
            )
            assert staging.success
            assert _workers(instance, staging.run_id) == {f"demo_local__{step}" for step in STAGING}
            # Three step processes, three scratch roots: nothing a step left locally reached the next.
            roots = sorted(path.name for path in scratch.iterdir() if path.name.startswith("pid-"))
            assert len(roots) >= 3, roots
            assert files_below(scratch) == []
            assert not (home / "work").exists()

            keys = s3_bucket.keys(f"{PREFIX}/demo_local/")
            [folder] = {key.split("/")[2] for key in keys}
            relative = sorted(key.split("/", 3)[3] for key in keys)
            assert relative[:2] == ["decrypted.json", "decrypted/profiles.plain"]
            assert {"fetched.json", "fetched/profiles.bin", "rejects.csv", "tables/manifest.json", "tables/records.parquet"} <= set(relative)
            for key in keys:
                assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key).get("ServerSideEncryption") == "AES256", key
            assert s3_bucket.get(f"{PREFIX}/demo_local/{folder}/fetched/profiles.bin") == source_bytes
            # The plain file passed through decryption as a server-side copy, still encrypted at rest.
            copy = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=f"{PREFIX}/demo_local/{folder}/decrypted/profiles.plain")
            assert copy["Metadata"] == {"cdp-copy-of": f"demo_local/{folder}/fetched/profiles.bin"}
            assert s3_bucket.get(f"{PREFIX}/demo_local/{folder}/decrypted/profiles.plain") == source_bytes

            # The merge, in a later run and yet another process, continues from the bucket alone.
            merge = dg.execute_job(job, instance=instance, tags={"dagster/partition": PARTITION}, asset_selection=_keys("profile_store"))
            assert merge.success
            assert "demo_local__profile_store" in _workers(instance, merge.run_id)
    finally:
        project_config.cache_clear()
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        stored = [row[0] for row in conn.execute("SELECT customer_number FROM profiles").fetchall()]
    assert sorted(stored) == sorted(expected)
    assert s3_bucket.keys(f"{PREFIX}/") == []
    assert files_below(scratch) == []
    assert not (home / "work").exists()
