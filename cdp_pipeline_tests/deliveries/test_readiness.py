"""The readiness rules and discover(), over a real folder (LocalTransport) and a real S3 server
(moto), without Dagster: two sightings on our clock, two listings within a schedule's tick,
carried files of a sliced listing, the ledger and the cursor kept to wanted files."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from cdp_pipeline.config.connection import ProfileImportGoal
from cdp_pipeline.deliveries import (
    GoalSource,
    ListedNow,
    MergedFiles,
    SensorCursor,
    SightingsOnOurClock,
    SlicedListing,
    TwoListingsInTick,
    discover,
)
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline.transports.s3 import S3Transport, s3_client_for

HOUR_AGO = time.time() - 3600


def _goal(stable_seconds: float = 30, directory: str = "inbox") -> ProfileImportGoal:
    return ProfileImportGoal.model_validate(
        {
            "name": "orders",
            "type": "import_profiles",
            "files": {
                "directory": directory,
                "root": {"name": "orders", "pattern": "orders_*.csv"},
                "linked": [{"name": "lines", "pattern": "lines_*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
                "readiness": {"mode": "stable", "stable_seconds": stable_seconds},
            },
            "identifiers": [{"column": "customer_id", "property": "customer_number"}],
        }
    )


def _drop(folder: Path, name: str, text: str = "order_id\n1\n", mtime: float = HOUR_AGO) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def _tick(transport, sources, cursor: SensorCursor, now: float, merged: MergedFiles | None = None, max_keys: int = 10_000):
    policy = SightingsOnOurClock(previous=cursor, now=now, max_keys_per_tick=max_keys)
    return discover("shop", sources, transport, policy, merged=merged), policy.cursor


def test_two_sightings_on_our_clock_make_a_delivery_ready(tmp_path):
    _drop(tmp_path / "inbox", "orders_1.csv")
    _drop(tmp_path / "inbox", "lines_1.csv")
    transport, sources = LocalTransport(tmp_path), [GoalSource(_goal(stable_seconds=30))]
    first, cursor = _tick(transport, sources, SensorCursor(), now=1000.0)
    # The server's mtime is an hour old, yet the first sighting alone never makes a file ready.
    assert first.requests == [] and any("not complete yet" in reason for reason in first.waiting)
    early, cursor_early = _tick(transport, sources, cursor, now=1029.0)
    assert early.requests == []
    later, _ = _tick(transport, sources, cursor_early, now=1030.0)
    assert [request.partition_key for request in later.requests] == ["orders:orders_1.csv"]


def test_a_file_that_changes_between_ticks_starts_its_window_again(tmp_path):
    _drop(tmp_path / "inbox", "orders_1.csv")
    lines = _drop(tmp_path / "inbox", "lines_1.csv")
    transport, sources = LocalTransport(tmp_path), [GoalSource(_goal(stable_seconds=30))]
    _, cursor = _tick(transport, sources, SensorCursor(), now=1000.0)
    lines.write_text("order_id\n1\n2\n")  # still uploading: the size changes
    os.utime(lines, (HOUR_AGO, HOUR_AGO))
    second, cursor = _tick(transport, sources, cursor, now=1040.0)
    assert second.requests == []
    assert cursor.seen["inbox/lines_1.csv"].first_seen == 1040.0
    assert cursor.seen["inbox/orders_1.csv"].first_seen == 1000.0
    third, _ = _tick(transport, sources, cursor, now=1070.0)
    assert [request.partition_key for request in third.requests] == ["orders:orders_1.csv"]


def test_an_older_cursor_entry_keeps_its_first_sighting(tmp_path):
    orders = _drop(tmp_path / "inbox", "orders_1.csv")
    lines = _drop(tmp_path / "inbox", "lines_1.csv")
    transport, sources = LocalTransport(tmp_path), [GoalSource(_goal(stable_seconds=30))]
    # The identity as an older version wrote it: size, mtime with three decimals, no ETag.
    identity = {path.name: f"{path.stat().st_size}:{path.stat().st_mtime:.3f}:" for path in (orders, lines)}
    deployed = json.dumps({"seen": {f"inbox/{name}": [value, 900.0] for name, value in identity.items()}})
    found, cursor = _tick(transport, sources, SensorCursor.from_json(deployed), now=1000.0)
    assert [request.partition_key for request in found.requests] == ["orders:orders_1.csv"]
    assert cursor.seen["inbox/orders_1.csv"].first_seen == 900.0 and cursor.seen["inbox/orders_1.csv"].directory == "inbox"


def test_run_key_and_partition_key_of_a_request(tmp_path):
    orders = _drop(tmp_path / "inbox", "orders_7.csv")
    lines = _drop(tmp_path / "inbox", "lines_7.csv")
    found = discover("shop", [GoalSource(_goal(stable_seconds=0))], LocalTransport(tmp_path))
    (request,) = found.requests
    payload = sorted(
        (name, f"inbox/{path.name}", path.stat().st_size, round(path.stat().st_mtime, 3), None) for name, path in (("orders", orders), ("lines", lines))
    )
    identity = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    assert request.partition_key == "orders:orders_7.csv"
    assert request.run_key == f"orders:orders_7.csv@{identity}"


def test_the_cursor_keeps_only_wanted_files_the_ledger_lacks(tmp_path):
    for name in ("orders_1.csv", "lines_1.csv", "orders_2.csv", "lines_2.csv", "archive_2019.zip", "notes.txt"):
        _drop(tmp_path / "inbox", name)
    transport, sources = LocalTransport(tmp_path), [GoalSource(_goal(stable_seconds=30))]
    merged = MergedFiles.of(
        (f.path, f.size, round(f.mtime, 3)) for f in transport.list_files("inbox") if f.name in ("orders_1.csv", "lines_1.csv")
    )
    found, cursor = _tick(transport, sources, SensorCursor(), now=1000.0, merged=merged)
    assert sorted(cursor.seen) == ["inbox/lines_2.csv", "inbox/orders_2.csv"]
    # A merged delivery is complete at once and reported as merged, never requested.
    assert found.already_merged == ["orders:orders_1.csv"] and found.requests == []
    assert "1 delivery(ies) already merged: orders:orders_1.csv" in found.skip_reason()
    assert found.skip_reason().startswith("orders_2.csv: not complete yet")


def test_max_requests_keeps_the_oldest_deliveries(tmp_path):
    for index, mtime in ((1, HOUR_AGO + 20), (2, HOUR_AGO), (3, HOUR_AGO + 10)):
        _drop(tmp_path / "inbox", f"orders_{index}.csv", mtime=mtime)
        _drop(tmp_path / "inbox", f"lines_{index}.csv", mtime=mtime)
    found = discover("shop", [GoalSource(_goal())], LocalTransport(tmp_path), ListedNow(), max_requests=2)
    assert [request.partition_key for request in found.requests] == ["orders:orders_2.csv", "orders:orders_3.csv"]


def test_sources_sharing_a_folder_list_it_once(tmp_path):
    _drop(tmp_path / "inbox", "orders_1.csv")
    _drop(tmp_path / "inbox", "lines_1.csv")
    listed: list[str] = []

    class CountingTransport(LocalTransport):
        def list_files(self, directory: str):
            listed.append(directory)
            return super().list_files(directory)

    other = _goal().model_copy(update={"name": "orders_again"})
    found = discover("shop", [GoalSource(_goal()), GoalSource(other)], CountingTransport(tmp_path))
    assert listed == ["inbox"]
    assert sorted(request.partition_key for request in found.requests) == ["orders:orders_1.csv", "orders_again:orders_1.csv"]


def test_two_listings_in_a_tick_refuse_a_growing_file_behind_an_old_mtime(tmp_path):
    _drop(tmp_path / "inbox", "orders_1.csv")
    lines = _drop(tmp_path / "inbox", "lines_1.csv")

    def upload_continues(_seconds: float) -> None:
        with lines.open("a") as handle:
            handle.write("2\n")
        os.utime(lines, (HOUR_AGO, HOUR_AGO))  # what a server whose clock runs behind reports

    transport, sources = LocalTransport(tmp_path), [GoalSource(_goal(stable_seconds=30))]
    during = discover("shop", sources, transport, TwoListingsInTick(window=30, sleep=upload_continues))
    assert during.requests == [] and any("lines_1.csv" in reason for reason in during.waiting)
    after = discover("shop", sources, transport, TwoListingsInTick(window=30, sleep=lambda _s: None))
    assert [request.partition_key for request in after.requests] == ["orders:orders_1.csv"]


def test_two_listings_in_a_tick_wait_for_a_fresh_mtime_to_age(tmp_path):
    now = time.time()
    _drop(tmp_path / "inbox", "orders_1.csv", mtime=now)
    _drop(tmp_path / "inbox", "lines_1.csv", mtime=now)
    pauses: list[float] = []
    found = discover("shop", [GoalSource(_goal())], LocalTransport(tmp_path), TwoListingsInTick(window=300, pause_seconds=10, sleep=pauses.append))
    assert found.requests == [] and pauses == [10]


def test_only_a_transport_that_lists_in_slices_is_walked_in_slices(tmp_path, s3_bucket):
    location = s3_bucket.location
    client = s3_client_for(location, os.environ[location.access_key_id_env], os.environ[location.secret_access_key_env], None)
    assert isinstance(S3Transport(client, location), SlicedListing)
    assert not isinstance(LocalTransport(tmp_path), SlicedListing)


def test_a_root_file_meets_its_linked_file_listed_a_slice_earlier(s3_bucket):
    location = s3_bucket.location
    transport = S3Transport(
        s3_client_for(location, os.environ[location.access_key_id_env], os.environ[location.secret_access_key_env], None), location
    )
    # Key order: lines_1.csv, orders_1.csv: with one key per tick they are never listed together.
    s3_bucket.put("drop/lines_1.csv", "order_id\n1\n")
    s3_bucket.put("drop/orders_1.csv", "order_id\n1\n")
    sources = [GoalSource(_goal(stable_seconds=30, directory="drop"))]
    cursor, now, requested, ticks = SensorCursor(), 1000.0, [], 0
    while not requested and ticks < 10:
        found, cursor = _tick(transport, sources, cursor, now=now, max_keys=1)
        requested = [request.partition_key for request in found.requests]
        now, ticks = now + 20, ticks + 1
    assert requested == ["orders:orders_1.csv"]
    assert ticks >= 3  # each file needs two real sightings 30 s apart, one key per tick
    assert sorted(path.rsplit("/", 1)[-1] for path in cursor.seen) == ["lines_1.csv", "orders_1.csv"]


def test_a_key_no_path_addresses_exactly_is_a_discovery_problem_not_a_delivery(s3_bucket):
    # "drop/orders_1.csv/." would once have been fetched as the object "drop/orders_1.csv".
    location = s3_bucket.location
    transport = S3Transport(
        s3_client_for(location, os.environ[location.access_key_id_env], os.environ[location.secret_access_key_env], None), location
    )
    s3_bucket.put("drop/orders_1.csv", "order_id\n1\n")
    s3_bucket.put("drop/lines_1.csv", "order_id\n1\n")
    s3_bucket.put("drop/.", "not a delivery")
    found = discover("shop", [GoalSource(_goal(stable_seconds=0, directory="drop"))], transport, ListedNow())
    assert [request.partition_key for request in found.requests] == ["orders:orders_1.csv"]
    assert [line.split(": ", 1)[0] for line in found.problems] == [f"s3://{s3_bucket.name}/drop/."]
    assert "Rename the object" in found.skip_reason()
