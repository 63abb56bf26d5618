"""The sensor's cursor reads the JSON deployed sensors hold, including entries of older versions."""

from __future__ import annotations

import json

from cdp_pipeline.deliveries import SensorCursor, Sighting

DEPLOYED = {
    "seen": {
        "inbox/profiles_1.csv": ["120:1700000000.000:", 1700000100.5, "inbox", 1700000160.5],
        # written before the cursor knew folders and last sightings
        "inbox/profiles_0.csv": ["99:1690000000.000:", 1690000100.0],
    },
    "slices": {"inbox": "inbox/profiles_1.csv", "other": None},
}


def test_todays_cursor_is_read_entry_by_entry():
    cursor = SensorCursor.from_json(json.dumps(DEPLOYED))
    assert cursor.seen["inbox/profiles_1.csv"] == Sighting("120:1700000000.000:", 1700000100.5, "inbox", 1700000160.5)
    assert cursor.seen["inbox/profiles_1.csv"].seen_for() == 60.0
    assert cursor.slices == {"inbox": "inbox/profiles_1.csv", "other": None}


def test_an_older_two_item_entry_has_no_folder_and_was_last_seen_when_first_seen():
    old = SensorCursor.from_json(json.dumps(DEPLOYED)).seen["inbox/profiles_0.csv"]
    assert (old.identity, old.first_seen, old.directory, old.last_seen) == ("99:1690000000.000:", 1690000100.0, None, 1690000100.0)
    assert old.seen_for() == 0


def test_written_back_in_the_same_format():
    cursor = SensorCursor.from_json(json.dumps(DEPLOYED))
    state = json.loads(cursor.to_json())
    assert state["slices"] == DEPLOYED["slices"]
    assert state["seen"]["inbox/profiles_1.csv"] == DEPLOYED["seen"]["inbox/profiles_1.csv"]
    assert state["seen"]["inbox/profiles_0.csv"] == ["99:1690000000.000:", 1690000100.0, None, 1690000100.0]


def test_no_cursor_is_an_empty_memory():
    assert SensorCursor.from_json(None) == SensorCursor() == SensorCursor.from_json("")
    assert json.loads(SensorCursor().to_json()) == {"seen": {}, "slices": {}}
