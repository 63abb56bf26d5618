"""Dialects as delivery sources: discover() lists, pairs and remembers a dialect's files with the
same readiness rules as a plain goal (real folder, no Dagster)."""

from __future__ import annotations

import os
import time

from cdp_pipeline.deliveries import SensorCursor, SightingsOnOurClock, discover
from cdp_pipeline.dialects import NetmeraSettings, SareSettings, dialect_sources
from cdp_pipeline.transports.local import LocalTransport

HOUR_AGO = time.time() - 3600


def _drop(folder, name: str, text: str = "x\n") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    os.utime(folder / name, (HOUR_AGO, HOUR_AGO))


def test_a_sare_pair_is_requested_after_two_sightings_and_only_pair_files_are_remembered(tmp_path):
    for name in ("clients_01.csv", "clients_01.import", "readme.txt", "clients_02.csv.part"):
        _drop(tmp_path / "in", name)
    sources = dialect_sources(SareSettings(type="sare", directory="in", stable_seconds=30))
    transport = LocalTransport(tmp_path)
    first = SightingsOnOurClock(previous=SensorCursor(), now=1000.0)
    waiting = discover("sare_sftp", sources, transport, first)
    assert waiting.requests == [] and any("clients_01.csv" in reason and "not complete yet" in reason for reason in waiting.waiting)
    # readme.txt belongs to no pair: a problem to report, never a file to remember
    assert any("readme.txt" in problem for problem in waiting.problems)
    assert sorted(first.cursor.seen) == ["in/clients_01.csv", "in/clients_01.import"]
    second = SightingsOnOurClock(previous=first.cursor, now=1030.0)
    found = discover("sare_sftp", sources, transport, second)
    assert [(request.partition_key, sorted(request.delivery.files)) for request in found.requests] == [
        ("sare_import:clients_01.csv", ["data", "sidecar"])
    ]


def test_netmera_profile_files_come_before_push_files():
    sources = dialect_sources(NetmeraSettings(type="netmera"))
    assert [source.goal_name for source in sources] == ["netmera_profiles", "netmera_push"]
    assert [source.listing_goal.files.directory for source in sources] == ["Profile", "."]
    assert all(source.generates_goal for source in sources)
