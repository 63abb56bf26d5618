"""A configuration directory for the demo connection with its work folders on the test bucket."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline_tests.fixtures.moto_s3 import ACCESS_KEY_ENV, SECRET_KEY_ENV, S3Bucket

PREFIX = "cdp-work"


def work_storage_yaml(bucket: S3Bucket, encryption: str = "AES256") -> dict:
    return {
        "type": "s3",
        "s3": {
            "bucket": bucket.name,
            "prefix": PREFIX,
            "region": bucket.server.region,
            "endpoint_url": bucket.server.endpoint_url,
            "access_key_id_env": ACCESS_KEY_ENV,
            "secret_access_key_env": SECRET_KEY_ENV,
            "server_side_encryption": encryption,
        },
    }


def s3_work_config(tmp_path: Path, bucket: S3Bucket, goals: list[str], after_import: dict | None = None) -> Path:
    """The bundled store.yaml plus ``work_storage: s3``, and demo_local with only ``goals``."""
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    store = yaml.safe_load((BUNDLED_CONFIG_DIR / "store.yaml").read_text())
    store["work_storage"] = work_storage_yaml(bucket)
    (config / "store.yaml").write_text(yaml.safe_dump(store, sort_keys=False))
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["goals"] = [goal for goal in demo["goals"] if goal["name"] in goals]
    for goal in demo["goals"]:
        if after_import is not None:
            goal["files"]["after_import"] = after_import
    demo["schedules"] = []
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    return config


def customer_numbers(path: Path) -> set[str]:
    with path.open(newline="") as handle:
        return {row["customer_id"].strip() for row in csv.DictReader(handle) if row["customer_id"].strip()}


def files_below(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []



