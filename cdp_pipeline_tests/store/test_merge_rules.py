"""The merge rule truth table, every cell against a real DuckDB file and a real DuckLake (catalog in
PostgreSQL, data on S3): incoming value / empty /
column absent × stored value / empty, for set, set_if_empty, set_or_clear, add and sum."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import polars as pl
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.tables.staged import StagedImport

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "name": {"type": "text"},
            "tags": {"type": "list"},
            "spend": {"type": "decimal"},
        }
    }
)
VALUES = {"name": ("old", "new"), "tags": (["a", "b"], ["b", "c"]), "spend": (Decimal("10.5"), 2.25)}
EMPTY = {"name": None, "tags": None, "spend": None}

# (rule, property) → {(incoming, stored): expected}; incoming in value/empty/absent, stored in value/empty
TABLE = {
    ("set", "name"): {
        ("value", "value"): "new", ("value", "empty"): "new", ("empty", "value"): "old",
        ("empty", "empty"): None, ("absent", "value"): "old", ("absent", "empty"): None,
    },
    ("set_if_empty", "name"): {
        ("value", "value"): "old", ("value", "empty"): "new", ("empty", "value"): "old",
        ("empty", "empty"): None, ("absent", "value"): "old", ("absent", "empty"): None,
    },
    ("set_or_clear", "name"): {
        ("value", "value"): "new", ("value", "empty"): "new", ("empty", "value"): None,
        ("empty", "empty"): None, ("absent", "value"): "old", ("absent", "empty"): None,
    },
    ("add", "tags"): {
        ("value", "value"): ["a", "b", "c"], ("value", "empty"): ["b", "c"], ("empty", "value"): ["a", "b"],
        ("empty", "empty"): None, ("absent", "value"): ["a", "b"], ("absent", "empty"): None,
    },
    ("sum", "spend"): {
        ("value", "value"): Decimal("12.75"), ("value", "empty"): Decimal("2.25"), ("empty", "value"): Decimal("10.5"),
        ("empty", "empty"): None, ("absent", "value"): Decimal("10.5"), ("absent", "empty"): None,
    },
}
CELLS = [(rule, prop, incoming, stored, expected) for (rule, prop), cells in TABLE.items() for (incoming, stored), expected in cells.items()]


def _staged(prop: str, rule: str, value) -> StagedImport:
    dtype = {"name": pl.String, "tags": pl.List(pl.String), "spend": pl.Float64}[prop]
    records = pl.DataFrame({"_key": ["p1"], "_line": [2], prop: [value]}, schema={"_key": pl.String, "_line": pl.Int64, prop: dtype})
    return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules={prop: rule}, records=records, rows_read=1)


def _record(n: int) -> DeliveryRecord:
    return DeliveryRecord(f"d{n}", "c", "g", "g:f", "f.csv", [], f"sha{n}", "cfg")


@pytest.mark.parametrize("rule,prop,incoming,stored,expected", CELLS, ids=[f"{c[0]}-{c[2]}-over-{c[3]}" for c in CELLS])
def test_truth_table_cell(store_backend, rule, prop, incoming, stored, expected):
    with open_writer(store_backend.target, CATALOG) as conn:
        # Store the starting value with set_or_clear (writes exactly what it is given).
        starting = VALUES[prop][0] if stored == "value" else EMPTY[prop]
        merge_delivery(conn, CATALOG, _staged(prop, "set_or_clear", starting), _record(1), "r1", datetime(2026, 1, 1))
        if incoming == "absent":
            staged = StagedImport(
                target="profiles", identifier_property="profile_id", allow_create=True, rules={},
                records=pl.DataFrame({"_key": ["p1"], "_line": [2]}), rows_read=1,
            )
        else:
            staged = _staged(prop, rule, VALUES[prop][1] if incoming == "value" else EMPTY[prop])
        merge_delivery(conn, CATALOG, staged, _record(2), "r2", datetime(2026, 1, 2))
        (value,) = conn.execute(f"SELECT {prop} FROM profiles WHERE profile_id = 'p1'").fetchone()
    assert value == expected


def test_failed_merge_leaves_nothing_behind(store_backend):
    bad = _staged("spend", "sum", 1.0)
    bad.events = {"order": pl.DataFrame({"event_id": ["e1"], "_key": ["p1"], "event_time": [datetime(2026, 1, 1)]})}
    with open_writer(store_backend.target, CATALOG) as conn:
        with pytest.raises(KeyError):  # "order" is not an event type of this catalog: fails mid-transaction
            merge_delivery(conn, CATALOG, bad, _record(1), "r1", datetime(2026, 1, 1))
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_history_and_provenance_answer_value_as_of_a_date(store_backend):
    with open_writer(store_backend.target, CATALOG) as conn:
        merge_delivery(conn, CATALOG, _staged("name", "set", "first"), _record(1), "r1", datetime(2026, 1, 1))
        merge_delivery(conn, CATALOG, _staged("name", "set", "first"), _record(2), "r2", datetime(2026, 1, 2))  # unchanged: no row
        merge_delivery(conn, CATALOG, _staged("name", "set", "second"), _record(3), "r3", datetime(2026, 1, 3))
        merge_delivery(conn, CATALOG, _staged("tags", "add", ["x"]), _record(4), "r4", datetime(2026, 1, 4))
        rows = conn.execute("SELECT property, value, delivery_id FROM property_changes ORDER BY changed_at").fetchall()
        assert rows == [("name", "first", "d1"), ("name", "second", "d3"), ("tags", '["x"]', "d4")]
        as_of = conn.execute(
            """
            SELECT arg_max(value, changed_at) FROM property_changes
            WHERE entity = 'profile' AND entity_id = 'p1' AND property = 'name' AND changed_at <= TIMESTAMP '2026-01-02 12:00'
            """
        ).fetchone()
        assert as_of == ("first",)
        assert conn.execute("SELECT value, run_id, connection FROM property_provenance WHERE property = 'name'").fetchone() == ("second", "r3", "c")


def _two_profiles(names: list[str | None], tags: list[list[str] | None]) -> StagedImport:
    records = pl.DataFrame(
        {"_key": ["p1", "p2"], "_line": [2, 3], "name": names, "tags": tags},
        schema={"_key": pl.String, "_line": pl.Int64, "name": pl.String, "tags": pl.List(pl.String)},
    )
    return StagedImport(
        target="profiles", identifier_property="profile_id", allow_create=True, rules={"name": "set", "tags": "set_or_clear"},
        records=records, rows_read=2,
    )


def test_new_profiles_write_no_history_rows_and_property_history_still_holds_every_value(tmp_path):
    """A first load writes no property_changes rows (the values are in profiles with created_at and
    created_delivery_id); the first change of a value writes its creation row and the new one, and
    property_history shows what the history held when every new value had its own row."""
    day = [datetime(2026, 1, d) for d in range(1, 5)]
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        merge_delivery(conn, CATALOG, _two_profiles(["Ann", "Bob"], [["x"], None]), _record(1), "r1", day[1])
        assert conn.execute("SELECT count(*) FROM property_changes").fetchone() == (0,)
        assert conn.execute("SELECT list(created_delivery_id ORDER BY profile_id) FROM profiles").fetchone() == (["d1", "d1"],)
        # p1 keeps its name and gets new tags; p2 gets tags for the first time (it was created without).
        merge_delivery(conn, CATALOG, _two_profiles(["Ann", "Bob"], [["y"], ["z"]]), _record(2), "r2", day[2])
        merge_delivery(conn, CATALOG, _two_profiles(["Anna", None], [["y"], ["z"]]), _record(3), "r3", day[3])
        changes = conn.execute(
            "SELECT entity_id, property, value, changed_at, delivery_id, run_id FROM property_changes ORDER BY ALL"
        ).fetchall()
        history = conn.execute(
            "SELECT entity_id, property, value, changed_at, delivery_id, run_id, connection, goal FROM property_history ORDER BY ALL"
        ).fetchall()
        provenance = conn.execute("SELECT entity_id, property, value, delivery_id FROM property_provenance ORDER BY ALL").fetchall()
        as_of = conn.execute(
            "SELECT arg_max(value, changed_at) FROM property_history WHERE entity_id = 'p1' AND property = 'tags' AND changed_at <= $t",
            {"t": datetime(2026, 1, 2, 12)},
        ).fetchone()
    # Written out by hand: one row per value set or changed, as the history has always read.
    assert history == [
        ("p1", "name", "Ann", day[1], "d1", "r1", "c", "g"),
        ("p1", "name", "Anna", day[3], "d3", "r3", "c", "g"),
        ("p1", "tags", '["x"]', day[1], "d1", "r1", "c", "g"),
        ("p1", "tags", '["y"]', day[2], "d2", "r2", "c", "g"),
        ("p2", "name", "Bob", day[1], "d1", "r1", "c", "g"),
        ("p2", "tags", '["z"]', day[2], "d2", "r2", "c", "g"),
    ]
    # Stored: only the changes of existing values, each first change with the creation row before it.
    assert changes == [
        ("p1", "name", "Ann", day[1], "d1", "r1"),
        ("p1", "name", "Anna", day[3], "d3", "r3"),
        ("p1", "tags", '["x"]', day[1], "d1", "r1"),
        ("p1", "tags", '["y"]', day[2], "d2", "r2"),
        ("p2", "tags", '["z"]', day[2], "d2", "r2"),
    ]
    assert provenance == [("p1", "name", "Anna", "d3"), ("p1", "tags", '["y"]', "d2"), ("p2", "name", "Bob", "d1"), ("p2", "tags", '["z"]', "d2")]
    assert as_of == ('["x"]',)


def test_group_history_has_one_row_per_changed_value(tmp_path):
    """The history of a group type's values: only values that change, with the creation row
    before each first change, for the changed groups only (expected rows written out by hand)."""
    catalog = Catalog.model_validate(
        {
            "profile_properties": {"household_id": {"type": "text"}},
            "group_types": {"household": {"profile_property": "household_id", "properties": {"name": {"type": "text"}, "size": {"type": "integer"}}}},
        }
    )
    schema = {"_key": pl.String, "_line": pl.Int64, "name": pl.String, "size": pl.Int64}

    def groups(names: list[str], sizes: list[int]) -> StagedImport:
        frame = pl.DataFrame({"_key": ["h1", "h2", "h3"], "_line": [2, 3, 4], "name": names, "size": sizes}, schema=schema)
        return StagedImport(target="groups", group_type="household", identifier_property="group_id", allow_create=True,
                            rules={"name": "set", "size": "set"}, records=frame, rows_read=3)

    day = [datetime(2026, 1, d) for d in range(1, 4)]
    with open_writer(tmp_path / "store.duckdb", catalog) as conn:
        merge_delivery(conn, catalog, groups(["A", "B", "C"], [1, 2, 3]), _record(1), "r1", day[0])
        merge_delivery(conn, catalog, groups(["A", "B2", "C"], [1, 2, 4]), _record(2), "r2", day[1])
        merge_delivery(conn, catalog, groups(["A", "B2", "C"], [1, 2, 4]), _record(3), "r3", day[2])
        changes = conn.execute("SELECT entity, entity_id, property, value, changed_at, delivery_id FROM property_changes ORDER BY ALL").fetchall()
    assert changes == [
        ("group:household", "h2", "name", "B", day[0], "d1"),
        ("group:household", "h2", "name", "B2", day[1], "d2"),
        ("group:household", "h3", "size", "3", day[0], "d1"),
        ("group:household", "h3", "size", "4", day[1], "d2"),
    ]
