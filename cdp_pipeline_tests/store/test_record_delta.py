"""The row-level delta of profile imports (store/record_delta.py) against the full merge.

Every scenario runs the same sequence of deliveries and store changes on two real DuckDB files,
one merging with the delta and one without; after each step the two stores must hold the same
profiles, exchange stamps, value history, ledger counts and property writers. Plain Python
expectations over the delivered rows check the values themselves, and each scenario asserts how
many records the delta left out, so a delta that never acts cannot pass."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.tables.staged import StagedImport

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "customer_number": {"type": "text", "unique": True},
            "email": {"type": "text", "unique": True},
            "name": {"type": "text"},
            "city": {"type": "text"},
            "tier": {"type": "text"},
            "birth": {"type": "text"},
            "tags": {"type": "list"},
            "spend": {"type": "decimal"},
        }
    }
)
RULES = {"name": "set", "city": "set", "tier": "set_or_clear", "birth": "set_if_empty", "tags": "add"}
SCHEMA = {"_key": pl.String, "_line": pl.Int64, "name": pl.String, "city": pl.String, "tier": pl.String, "birth": pl.String,
          "tags": pl.List(pl.String)}
START = datetime(2026, 1, 1)

#: the tables a delta must leave exactly as the full merge does.
COMPARED = {
    "profiles": "profile_id",
    "exchanged_profiles": "connection, direction, profile_id",
    "property_changes": "entity, entity_id, property, changed_at, value",
    "deliveries": "delivery_id",
    "property_writers": "entity, property, connection, goal",
}


def rows(n: int, changed: dict[int, dict] | None = None) -> list[dict]:
    """``n`` profiles p0..p(n-1); ``changed`` replaces some rows' values."""
    out = []
    for i in range(n):
        row = {"_key": f"p{i}", "_line": i + 2, "name": f"name{i}", "city": f"city{i % 7}", "tier": "gold" if i % 3 else None,
               "birth": f"19{i % 90 + 10}", "tags": [f"t{i % 4}"]}
        row.update((changed or {}).get(i, {}))
        out.append(row)
    return out


def staged(records: list[dict], rules: dict[str, str] = RULES, schema: dict = SCHEMA) -> StagedImport:
    frame = pl.DataFrame(records, schema=schema)
    return StagedImport(target="profiles", identifier_property="profile_id", allow_create=True, rules=dict(rules), records=frame,
                        rows_read=frame.height)


class Twins:
    """Two stores given the same steps: ``delta`` merges with the row-level delta, ``full`` without."""

    def __init__(self, tmp_path: Path):
        self.paths = {"delta": tmp_path / "delta.duckdb", "full": tmp_path / "full.duckdb"}
        self.deliveries = 0
        self.now = START

    def merge(self, item: StagedImport, *, connection: str = "crm", goal: str = "people", config: str = "cfg1") -> int:
        """Merge into both stores; returns how many records the delta left out."""
        self.deliveries += 1
        self.now += timedelta(hours=1)
        left_out = 0
        for name, path in self.paths.items():
            record = DeliveryRecord(f"d{self.deliveries}", connection, goal, f"{goal}:f{self.deliveries}", f"f{self.deliveries}.csv", [],
                                    f"sha{self.deliveries}", config)
            with open_writer(path, CATALOG) as conn:
                conn.execute("DROP TABLE IF EXISTS delta_skipped")
                merge_delivery(conn, CATALOG, item, record, f"run{self.deliveries}", self.now, row_delta=name == "delta")
                if name == "delta":
                    exists = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'delta_skipped'").fetchall()[0][0]
                    left_out = conn.execute("SELECT count(*) FROM delta_skipped").fetchall()[0][0] if exists else 0
        self.assert_equal()
        return left_out

    def sql(self, statement: str) -> None:
        """A change made to the store by something else (another tool, a future feature)."""
        self.now += timedelta(hours=1)
        for path in self.paths.values():
            with duckdb.connect(str(path)) as conn:
                conn.execute(statement, {"now": self.now} if "$now" in statement else None)

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.paths["delta"]), read_only=True) as conn:
            return conn.execute(sql).fetchall()

    def assert_equal(self) -> None:
        for table, order in COMPARED.items():
            found = {}
            for name, path in self.paths.items():
                with duckdb.connect(str(path), read_only=True) as conn:
                    found[name] = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            assert found["delta"] == found["full"], f"{table} differs after delivery {self.deliveries}"

    def values(self, key: str) -> dict:
        with duckdb.connect(str(self.paths["delta"]), read_only=True) as conn:
            cursor = conn.execute("SELECT name, city, tier, birth, tags FROM profiles WHERE profile_id = ?", [key])
            row = cursor.fetchone()
            return dict(zip(("name", "city", "tier", "birth", "tags"), row, strict=True)) if row else {}


def _expected(delivered: dict) -> dict:
    return {k: delivered[k] for k in ("name", "city", "tier", "birth", "tags")}


def test_one_percent_changed_redelivery_merges_only_the_changed_records(tmp_path):
    t = Twins(tmp_path)
    first = rows(200)
    assert t.merge(staged(first)) == 0
    changed = {5: {"name": "renamed", "city": "Elsewhere"}, 77: {"tier": "silver"}}
    second = rows(200, changed)
    assert t.merge(staged(second)) == 198
    assert t.values("p5") == {**_expected(first[5]), "name": "renamed", "city": "Elsewhere"}
    assert t.values("p77")["tier"] == "silver"
    assert t.values("p6") == _expected(first[6])
    # Counted as the full merge counts them, and every profile stamped by this delivery.
    assert t.query("SELECT profiles_updated, profiles_unchanged FROM deliveries WHERE delivery_id = 'd2'") == [(2, 198)]
    assert t.query("SELECT count(*) FROM exchanged_profiles WHERE last_at = (SELECT max(merged_at) FROM deliveries)") == [(200,)]
    assert t.query("SELECT count(*) FROM property_changes WHERE delivery_id = 'd2'") == [(3,)]
    # The same content again: every record left out.
    assert t.merge(staged(second)) == 200


def test_a_value_another_connection_changed_is_set_again(tmp_path):
    t = Twins(tmp_path)
    records = rows(20)
    t.merge(staged(records))
    other = [{"_key": "p3", "_line": 2, "city": "Overwritten", "tags": ["other"], "birth": None}]
    other_schema = {"_key": pl.String, "_line": pl.Int64, "city": pl.String, "tags": pl.List(pl.String), "birth": pl.String}
    t.merge(staged(other, {"city": "set", "tags": "add", "birth": "set_or_clear"}, other_schema), connection="shop", goal="orders", config="cfg9")
    assert t.values("p3")["city"] == "Overwritten"
    # The identical delivery again: p3 changed since, so it is merged (city set back, birth set
    # again since it was emptied, tags keep the other connection's item); the rest is left out.
    assert t.merge(staged(records)) == 19
    assert t.values("p3") == {**_expected(records[3]), "tags": [*records[3]["tags"], "other"]}


def test_set_or_clear_with_an_emptied_cell_and_add_lists(tmp_path):
    t = Twins(tmp_path)
    t.merge(staged(rows(10, {1: {"tier": "gold", "tags": ["a", "b"]}})))
    emptied = rows(10, {1: {"tier": None, "tags": ["c", "a"]}})
    assert t.merge(staged(emptied)) == 9
    assert t.values("p1")["tier"] is None and t.values("p1")["tags"] == ["a", "b", "c"]
    assert t.merge(staged(emptied)) == 10
    assert t.values("p1")["tier"] is None and t.values("p1")["tags"] == ["a", "b", "c"]


def test_changes_made_outside_a_merge_are_seen_even_without_updated_at(tmp_path):
    t = Twins(tmp_path)
    records = rows(10)
    t.merge(staged(records))
    t.sql("UPDATE profiles SET city = 'edited', birth = NULL WHERE profile_id = 'p2'")  # updated_at left as it was
    t.sql("UPDATE profiles SET updated_at = $now WHERE profile_id = 'p4'")  # touched, values the same
    assert t.merge(staged(records)) == 8
    assert t.values("p2") == _expected(records[2])


def test_a_profile_deleted_between_deliveries_is_created_again(tmp_path):
    t = Twins(tmp_path)
    records = rows(10)
    t.merge(staged(records))
    t.sql("DELETE FROM profiles WHERE profile_id = 'p7'")
    assert t.merge(staged(records)) == 9
    assert t.values("p7") == _expected(records[7])
    assert t.query("SELECT profiles_created FROM deliveries WHERE delivery_id = 'd2'") == [(1,)]


def test_a_changed_mapping_merges_every_record(tmp_path):
    t = Twins(tmp_path)
    records = rows(10)
    t.merge(staged(records))
    t.sql("UPDATE profiles SET name = NULL, updated_at = $now WHERE profile_id = 'p1'")
    # Same config hash text, other rules: still not the content that was merged.
    assert t.merge(staged(records, {**RULES, "name": "set_if_empty"})) == 0
    assert t.merge(staged(records, {**RULES, "name": "set_if_empty"}), config="cfg2") == 0
    assert t.merge(staged(records, {**RULES, "name": "set_if_empty"}), config="cfg2") == 10


def test_sum_mappings_are_never_left_out(tmp_path):
    t = Twins(tmp_path)
    schema = {"_key": pl.String, "_line": pl.Int64, "spend": pl.Float64}
    frame = [{"_key": "p1", "_line": 2, "spend": 5.0}]

    def item() -> StagedImport:
        s = staged(frame, {"spend": "sum"}, schema)
        s.sum_rows = {"spend": pl.DataFrame({"_key": ["p1"], "_row_hash_hi": [1], "_row_hash_lo": [2], "value": [5.0]},
                                            schema={"_key": pl.String, "_row_hash_hi": pl.UInt64, "_row_hash_lo": pl.UInt64, "value": pl.Float64})}
        return s

    assert t.merge(item()) == 0
    assert t.merge(item()) == 0  # another file: its row counts again, as the full merge counts it
    assert t.query("SELECT spend FROM profiles WHERE profile_id = 'p1'") == [(Decimal("10"),)]


IDENT_SCHEMA = {"_key": pl.String, "_key_index": pl.Int32, "_ident_0": pl.String, "_ident_1": pl.String, "_line": pl.Int64, "city": pl.String}


def identified(records: list[tuple[str | None, str | None, str]]) -> StagedImport:
    """Records by (customer number, email, city), keyed on the first identifier that has a value."""
    frame = [
        {"_key": number or email, "_key_index": 0 if number else 1, "_ident_0": number, "_ident_1": email, "_line": line, "city": city}
        for line, (number, email, city) in enumerate(records, start=2)
    ]
    return StagedImport(
        target="profiles", identifier_property="customer_number", identifiers=["customer_number", "email"], allow_create=True,
        rules={"city": "set"}, records=pl.DataFrame(frame, schema=IDENT_SCHEMA), rows_read=len(frame),
    )


def test_identity_changes_between_deliveries(tmp_path):
    t = Twins(tmp_path)
    records = [("c1", "a@x", "Oslo"), ("c2", "b@x", "Rome"), ("c3", "c@x", "Nice")]
    t.merge(identified(records))
    assert t.merge(identified(records)) == 3
    # Linking: c2's profile is merged into c1's (its email now belongs to c1's profile, c2's row is
    # gone) as an identity resolution would do; c3's email moves to a new profile that sorts first.
    t.sql("DELETE FROM profiles WHERE customer_number = 'c2'")
    t.sql("UPDATE profiles SET email = 'b@x', updated_at = $now WHERE customer_number = 'c1'")
    t.sql("INSERT INTO profiles (profile_id, customer_number, city, created_at, updated_at, domain_group) "
          "SELECT '0000', 'c3', 'Paris', $now, $now, domain_group FROM profiles LIMIT 1")
    assert t.merge(identified(records)) == 0
    # c1's and c2's records now both find c1's profile and are combined (the later line wins);
    # c3 finds the new profile first.
    cities = dict(t.query("SELECT profile_id, city FROM profiles"))
    (c1_profile,) = t.query("SELECT profile_id FROM profiles WHERE customer_number = 'c1'")[0]
    assert cities[c1_profile] == "Rome" and cities["0000"] == "Nice" and len(cities) == 3
    # Next time only the new profile, reached by one record that left it as it is, is left out.
    assert t.merge(identified(records)) == 1


def test_records_that_meet_in_one_profile_are_never_left_out(tmp_path):
    t = Twins(tmp_path)
    t.merge(identified([("c1", "a@x", "Oslo")]))
    # The same profile found by its customer number and, in another record, by its email: the
    # merge combines them (the later line wins), so neither may be left out alone.
    both = [("c1", None, "Oslo"), (None, "a@x", "Bergen")]
    assert t.merge(identified(both)) == 0
    assert t.query("SELECT city FROM profiles") == [("Bergen",)]
    assert t.merge(identified(both)) == 0
    # c1 alone with the content it had in the first delivery: the profile is no longer as that
    # merge left it, so it is merged in full (city back to Oslo).
    assert t.merge(identified([("c1", "a@x", "Oslo")])) == 0
    assert t.query("SELECT city FROM profiles") == [("Oslo",)]
    assert t.merge(identified([("c1", "a@x", "Oslo")])) == 1
