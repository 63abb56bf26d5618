"""Finishing a delivery's remote files after its merge: done suffix, done folder, delete.

A partner may upload the next version under the same name while the previous one is being
merged. Finishing must then leave the new version where it is (it was not imported), on every
transport: checked against a local folder and the moto S3 server, where the move is also pinned
to the fetched ETag.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.connection import ProfileImportGoal
from cdp_pipeline.deliveries import scan_deliveries
from cdp_pipeline.transports.base import Transport
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline.transports.s3 import S3Transport

FIRST = b"customer_id,email\nC1,a@example.com\n"
SECOND = b"customer_id,email\nC1,a@example.com\nC2,b@example.com\n"


def _goal(action: str) -> ProfileImportGoal:
    return ProfileImportGoal.model_validate(
        {
            "name": "customers",
            "type": "import_profiles",
            "files": {
                "directory": "in",
                "root": {"name": "customers", "pattern": "customers_*.csv"},
                "after_import": {"action": action},
            },
            "identifiers": [{"column": "customer_id", "property": "customer_number"}],
            "mappings": [{"column": "email", "property": "email"}],
        }
    )


def _fetch(transport: Transport, goal: ProfileImportGoal, work_dir: Path) -> None:
    (delivery,) = scan_deliveries("shop", goal, transport.list_files("in")).deliveries
    importing.fetch_delivery(transport, delivery, work_dir)


@pytest.fixture(params=["local", "s3"])
def drop(request: pytest.FixtureRequest, tmp_path: Path):
    """(transport, write(name, bytes), read names in the drop folder tree)."""
    if request.param == "local":
        root = tmp_path / "remote"
        (root / "in").mkdir(parents=True)

        def write(name: str, data: bytes) -> None:
            path = root / "in" / name
            path.write_bytes(data)
            # A new version gets a new mtime even within the file system's timestamp granularity.
            stamp = time.time() + (1 if name.endswith(".csv") and data == SECOND else 0)
            os.utime(path, (stamp, stamp))

        def names() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

        return LocalTransport(root), write, names
    bucket = request.getfixturevalue("s3_bucket")

    def put(name: str, data: bytes) -> None:
        bucket.put(f"in/{name}", data)

    def keys() -> list[str]:
        return sorted(bucket.keys())

    return S3Transport.from_environment(bucket.location), put, keys


@pytest.mark.parametrize("action", ["done_suffix", "move_to_done", "delete"])
def test_the_fetched_version_is_finished(drop, tmp_path: Path, action: str):
    transport, write, names = drop
    write("customers_1.csv", FIRST)
    goal = _goal(action)
    with transport:
        _fetch(transport, goal, tmp_path / "work")
        outcome = importing.finish_delivery(transport, goal, tmp_path / "work")
        again = importing.finish_remote_files(transport, goal, tmp_path / "work")  # a retry after a crash
    assert outcome.finished == ["in/customers_1.csv"] and outcome.left_changed == []
    assert again.left_changed == []
    expected = {"done_suffix": ["in/customers_1.csv.done"], "move_to_done": ["in/done/customers_1.csv"], "delete": []}[action]
    assert names() == expected


@pytest.mark.parametrize("action", ["done_suffix", "move_to_done", "delete"])
def test_a_new_version_uploaded_after_the_fetch_stays_for_the_next_listing(drop, tmp_path: Path, action: str):
    transport, write, names = drop
    write("customers_1.csv", FIRST)
    goal = _goal(action)
    with transport:
        _fetch(transport, goal, tmp_path / "work")
        write("customers_1.csv", SECOND)  # the partner re-sends while the first version is merged
        outcome = importing.finish_delivery(transport, goal, tmp_path / "work")
        assert outcome.finished == [] and outcome.left_changed == ["in/customers_1.csv"]
        assert names() == ["in/customers_1.csv"]
        # The new version is still there, whole, for the sensor to offer as a new delivery.
        (delivery,) = scan_deliveries("shop", goal, transport.list_files("in")).deliveries
        importing.fetch_delivery(transport, delivery, tmp_path / "work2")
    fetched, _ = importing.read_manifest(tmp_path / "work2" / "fetched.json")
    assert Path(fetched[0].local_path).read_bytes() == SECOND
