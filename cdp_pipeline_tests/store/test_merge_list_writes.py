"""The merge writes list properties apart, on the rows whose list changes, when few changed rows
change a list (a list column touched by an UPDATE costs DuckDB a rewrite at the next checkpoint);
what ends up stored must be exactly what the rules give, for every row and every column, after the
store is closed and opened again, on both paths."""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.tables.staged import StagedImport

CATALOG = Catalog.model_validate(
    {"profile_properties": {"city": {"type": "text"}, "tags": {"type": "list"}, "flags": {"type": "list"}}}
)
RULES = {"city": "set", "tags": "add", "flags": "set_or_clear"}
SCHEMA = {"_key": pl.String, "_line": pl.Int64, "city": pl.String, "tags": pl.List(pl.String), "flags": pl.List(pl.String)}


def _staged(rows: list[tuple]) -> StagedImport:
    records = pl.DataFrame(
        [(key, line, city, tags, flags) for line, (key, city, tags, flags) in enumerate(rows, start=2)], schema=SCHEMA, orient="row"
    )
    return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules=dict(RULES), records=records, rows_read=len(rows))


def _expected(stored: dict[str, dict], rows: list[tuple]) -> dict[str, dict]:
    """The rules in plain Python: set keeps the stored value for an empty cell, add appends new
    items in file order, set_or_clear replaces (an empty cell clears)."""
    result = {key: dict(values) for key, values in stored.items()}
    for key, city, tags, flags in rows:
        before = result.get(key, {"city": None, "tags": None, "flags": None})
        after = dict(before)
        if city is not None:
            after["city"] = city
        if tags:
            kept = list(before["tags"] or [])
            after["tags"] = kept + [t for t in tags if t not in kept]
        after["flags"] = list(flags) if flags else None
        result[key] = after
    return result


def _stored(conn: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    rows = conn.execute("SELECT profile_id, city, tags, flags FROM profiles ORDER BY 1").fetchall()
    return {key: {"city": city, "tags": tags, "flags": flags} for key, city, tags, flags in rows}


def test_lists_written_only_where_they_change_and_every_value_as_the_rules_give(tmp_path):
    store = tmp_path / "store.duckdb"
    first = [(f"p{i}", f"City {i}", [f"t{i}", "common"], [f"f{i}"]) for i in range(1, 301)]
    second = [
        ("p1", "Moved", ["t1", "common"], ["f1"]),  # a scalar changes, the lists are delivered as stored
        ("p2", "City 2", ["new"], ["f2"]),  # add: one new item
        ("p3", "City 3", None, None),  # set_or_clear: the list is cleared; add keeps the stored list
        ("p4", "City 4", ["t4", "common"], ["f4"]),  # nothing changes
        ("p5", None, ["common"], ["g5", "f5"]),  # set keeps the city; set_or_clear: another list
        ("p999", "New", ["x"], ["y"]),  # a new profile
        *[(f"p{i}", f"City {i}", [f"t{i}", "common"], [f"f{i}"]) for i in range(6, 301)],
        *[(f"p{i}", f"Changed {i}", [f"t{i}", "common"], [f"f{i}"]) for i in range(6, 301, 7)],  # repeated keys: the last line wins
    ]
    with open_writer(store, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged(first), DeliveryRecord("d1", "c", "g", "g:1", "a.csv", [], "s1", "cfg"), "r1", datetime(2026, 1, 1))
        after_first = _stored(conn)
        counts = merge_delivery(conn, CATALOG, _staged(second), DeliveryRecord("d2", "c", "g", "g:2", "b.csv", [], "s2", "cfg"), "r2", datetime(2026, 1, 2))
    expected_first = _expected({}, first)
    assert after_first == expected_first
    expected = _expected(expected_first, second)
    changed = {key for key in expected_first if expected[key] != expected_first[key]}
    assert {"p1", "p2", "p3", "p5"} <= changed and "p4" not in changed
    with duckdb.connect(str(store), read_only=True) as conn:
        assert _stored(conn) == expected
        stamped = dict(conn.execute("SELECT profile_id, last_delivery_id FROM profiles").fetchall())
    # A delivery whose changed rows almost all change a list (the lists written with the rest in
    # one UPDATE), a few only a scalar.
    third = [(f"p{i}", f"City {i}" if i % 50 else "Third", ["more"] if i % 50 else None, [f"f{i}"]) for i in range(1, 301)]
    with open_writer(store, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged(third), DeliveryRecord("d3", "c", "g", "g:3", "c.csv", [], "s3", "cfg"), "r3", datetime(2026, 1, 3))
    with duckdb.connect(str(store), read_only=True) as conn:
        assert _stored(conn) == _expected(expected, third)
    assert (counts.profiles_created, counts.profiles_updated, counts.profiles_unchanged) == (1, len(changed), 300 - len(changed))
    assert {key for key, delivery in stamped.items() if delivery == "d2"} == changed | {"p999"}
    assert expected["p3"]["flags"] is None and expected["p3"]["tags"] == ["t3", "common"]
    assert expected["p2"]["tags"] == ["t2", "common", "new"]


def test_imported_profiles_stamped_by_every_delivery(tmp_path):
    """exchanged_profiles per import: first_at when the connection first delivers a profile,
    last_at at every delivery of the connection that holds it, changed or not (what the table
    means to its readers; stamping only the changed profiles was measured and saves no CPU at
    250k, see docs/benchmarks.md). Expected rows written out by hand."""
    store = tmp_path / "store.duckdb"
    t1, t2, t3 = datetime(2026, 1, 1), datetime(2026, 1, 2), datetime(2026, 1, 3)
    first = [("p1", "A", ["x"], None), ("p2", "B", None, None), ("p3", "C", None, None)]
    with open_writer(store, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged(first), DeliveryRecord("d1", "c", "g", "g:1", "a.csv", [], "s1", "cfg"), "r1", t1)
        # Another connection creates p4; then connection c delivers p4 with the values it holds.
        merge_delivery(conn, CATALOG, _staged([("p4", "D", None, None)]), DeliveryRecord("o1", "other", "g", "g:1", "o.csv", [], "so", "cfg"), "r2", t1)
        second = [("p1", "A", ["x"], None), ("p2", "B2", None, None), ("p3", "C", None, None), ("p4", "D", None, None), ("p5", "E", None, None)]
        counts = merge_delivery(conn, CATALOG, _staged(second), DeliveryRecord("d2", "c", "g", "g:2", "b.csv", [], "s2", "cfg"), "r3", t2)
        # The same values again, one day later: every delivered profile's last_at moves.
        merge_delivery(conn, CATALOG, _staged(second), DeliveryRecord("d3", "c", "g", "g:3", "c.csv", [], "s3", "cfg"), "r4", t3)
        rows = conn.execute(
            "SELECT connection, profile_id, first_at, last_at FROM exchanged_profiles WHERE direction = 'imported' ORDER BY 1, 2"
        ).fetchall()
        figure = conn.execute("SELECT connection, unique_profiles_imported FROM data_exchange ORDER BY 1").fetchall()
    assert (counts.profiles_created, counts.profiles_updated, counts.profiles_unchanged) == (1, 1, 3)
    assert rows == [
        ("c", "p1", t1, t3),
        ("c", "p2", t1, t3),
        ("c", "p3", t1, t3),
        ("c", "p4", t2, t3),  # first delivered by c in d2 (created by the other connection)
        ("c", "p5", t2, t3),  # created by d2
        ("other", "p4", t1, t1),
    ]
    assert figure == [("c", 5), ("other", 1)]
