"""Attaching a new lake from two writers at once: the slower one's failure to create catalog
tables that the other just created is retried; any other attach failure is raised at once.
(The race itself runs for real in test_ducklake_store.py's two-worker test; which of the two
PostgreSQL errors it gives depends on timing, so both are pinned here.)"""

from __future__ import annotations

import duckdb
import pytest

from cdp_pipeline.store.lake import _attach


class _Attaching:
    """A connection whose ATTACH fails with ``errors`` in turn, then succeeds."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        self.calls = 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.errors:
            raise duckdb.Error(self.errors.pop(0))


@pytest.mark.parametrize(
    "race",
    [
        'Failed to initialize DuckLake: duplicate key value violates unique constraint "pg_type_typname_nsp_index"',
        'Failed to initialize DuckLake: relation "ducklake_metadata" already exists',
    ],
)
def test_the_catalog_creation_race_is_attached_again(race, monkeypatch):
    monkeypatch.setattr("cdp_pipeline.store.lake.time.sleep", lambda _seconds: None)
    conn = _Attaching([race])
    _attach(conn, "ATTACH ...")  # type: ignore[arg-type]
    assert conn.calls == 2


def test_other_attach_failures_are_not_retried(monkeypatch):
    monkeypatch.setattr("cdp_pipeline.store.lake.time.sleep", lambda _seconds: None)
    conn = _Attaching(["IO Error: could not connect to server"])
    with pytest.raises(duckdb.Error, match="could not connect"):
        _attach(conn, "ATTACH ...")  # type: ignore[arg-type]
    assert conn.calls == 1


def test_a_race_that_does_not_end_is_raised_after_the_attempts(monkeypatch):
    monkeypatch.setattr("cdp_pipeline.store.lake.time.sleep", lambda _seconds: None)
    conn = _Attaching(['relation "ducklake_metadata" already exists'] * 9)
    with pytest.raises(duckdb.Error, match="already exists"):
        _attach(conn, "ATTACH ...", attempts=3)  # type: ignore[arg-type]
    assert conn.calls == 3
