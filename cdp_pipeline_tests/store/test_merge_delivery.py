"""Deliveries from small files through build_import_tables / stage_delivery into a real DuckDB
store: the row delta of sums over three versions of one file, reprocess, several identifiers,
consent, timeline re-imports, the product store, groups, and the reject report with on_error."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.config.property_writers import property_writers, shared_property_warnings
from cdp_pipeline.errors import InputError
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.tables.import_tables import build_import_tables
from cdp_pipeline_tests.fixtures.store_backends import StoreBackend

NOW = datetime(2026, 1, 15, 12, 0)

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "customer_number": {"type": "text", "unique": True},
            "email": {"type": "text", "unique": True},
            "first_name": {"type": "text"},
            "city": {"type": "text"},
            "channels": {"type": "list"},
            "consents": {"type": "list"},
            "spend": {"type": "decimal"},
            "orders": {"type": "integer"},
            "household_id": {"type": "text"},
        },
        "group_types": {"household": {"profile_property": "household_id", "properties": {"name": {"type": "text"}, "size": {"type": "integer"}}}},
        "event_types": {
            "order": {
                "properties": {"total": {"type": "decimal"}},
                "nested": {"order_line": {"properties": {"product_id": {"type": "text"}, "quantity": {"type": "integer"}}}},
            }
        },
        "objectives": {"marketing": {}},
    }
)

ORDERS_GOAL = {
    "name": "orders",
    "type": "import_profiles",
    "files": {
        "directory": "in",
        "root": {"name": "orders", "pattern": "orders_*.csv"},
        "linked": [{"name": "order_lines", "pattern": "order_lines_*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
    },
    "processors": [{"type": "fixed_value", "column": "order_count", "value": "1"}],
    "identifiers": [{"column": "customer_id", "property": "customer_number"}],
    "allow_new_profiles": True,
    "on_error": "skip_rows",
    # These small files reject a row on purpose; the share guard is tested in scenarios/.
    "max_reject_share": 1,
    "mappings": [
        {"column": "total", "property": "spend", "rule": "sum"},
        {"column": "order_count", "property": "orders", "rule": "sum"},
        {"column": "channel", "property": "channels", "rule": "add"},
        {"column": "city", "property": "city", "rule": "set"},
    ],
    "timeline": [
        {
            "event_type": "order", "file": "orders", "event_id": "order_id", "event_time": "order_date",
            "properties": {"total": "total"}, "add_to_product_store": True,
            "nested": [{"type": "order_line", "file": "order_lines", "properties": {"product_id": "product_id", "quantity": "quantity"}}],
        }
    ],
}
ORDERS_HEADER = "order_id,customer_id,order_date,total,channel,city\n"
LINES_HEADER = "order_id,product_id,quantity\n"


class Harness:
    """A project with one store, and deliveries written as the fetch/decrypt steps leave them."""

    def __init__(self, tmp_path: Path, connections: list[dict], backend: StoreBackend | None = None):
        self.tmp_path = tmp_path
        self.backend = backend
        settings = backend.settings if backend else StoreSettings(path=str(tmp_path / "store.duckdb"), published_path=None)
        self.project = ProjectConfig(config_dir=tmp_path, home=tmp_path / "home", store=settings, catalog=CATALOG)
        for spec in connections:
            connection = Connection.model_validate({"source": {"type": "local", "path": "remote"}, **spec})
            self.project.connections[connection.name] = connection
        self.deliveries = 0

    def stage(self, connection: str, goal: str, files: dict[str, tuple[str, str]]) -> Path:
        """``files``: logical name → (remote path, text). Returns the delivery's work directory."""
        self.deliveries += 1
        work_dir = self.tmp_path / "work" / f"d{self.deliveries}"
        work_dir.mkdir(parents=True)
        listed = []
        for name, (remote_path, text) in files.items():
            local = work_dir / f"{name}.plain"
            local.write_text(text)
            listed.append(
                {"name": name, "remote_path": remote_path, "size": local.stat().st_size, "mtime": 0.0, "etag": None,
                 "sha256": hashlib.sha256(local.read_bytes()).hexdigest(), "local_path": str(local)}
            )
        root = self.project.connections[connection].goal(goal).files.root.name
        manifest = {"files": listed, "partition_key": f"{goal}:{Path(files[root][0]).name}"}
        (work_dir / "decrypted.json").write_text(json.dumps(manifest))
        return work_dir

    def run(self, connection: str, goal: str, files: dict[str, tuple[str, str]], *, reprocess: bool = False) -> importing.MergeOutcome:
        work_dir = self.stage(connection, goal, files)
        conn_cfg = self.project.connections[connection]
        goal_cfg = importing.import_goal(conn_cfg, goal)
        importing.stage_delivery(self.project, conn_cfg, goal_cfg, work_dir, NOW)
        return importing.merge_staged(self.project, conn_cfg, goal_cfg, work_dir, f"run{self.deliveries}", NOW, reprocess=reprocess)

    def rerun(self, work_dir: Path, connection: str, goal: str, *, reprocess: bool) -> importing.MergeOutcome:
        conn_cfg = self.project.connections[connection]
        return importing.merge_staged(self.project, conn_cfg, importing.import_goal(conn_cfg, goal), work_dir, "rerun", NOW, reprocess=reprocess)

    def query(self, sql: str) -> list[tuple]:
        if self.backend is not None:
            return self.backend.read(sql)
        with duckdb.connect(str(self.project.store_path), read_only=True) as conn:
            return conn.execute(sql).fetchall()


def _orders(orders: str, lines: str = "", path: str = "in/orders_1.csv") -> dict[str, tuple[str, str]]:
    return {"orders": (path, ORDERS_HEADER + orders), "order_lines": (path.replace("orders_", "order_lines_"), LINES_HEADER + lines)}


def _shop(tmp_path: Path, backend: StoreBackend | None = None, **connection) -> Harness:
    return Harness(tmp_path, [{"name": "shop", "goals": [ORDERS_GOAL], **connection}], backend)


def _profile(h: Harness, customer: str) -> tuple:
    (row,) = h.query(f"SELECT spend, orders, channels, city FROM profiles WHERE customer_number = '{customer}'")
    return row


# ---------------------------------------------------------------- row delta (D.1)


def test_row_delta_over_three_versions_of_one_file_counts_each_row_once(tmp_path, store_backend):
    h = _shop(tmp_path, store_backend)
    v1 = "o1,C1,2026-01-01T10:00:00,10,web,Oslo\no2,C1,2026-01-02T10:00:00,5,web,Oslo\n"
    first = h.run("shop", "orders", _orders(v1, "o1,A,1\n"))
    assert first.counts.sum_rows_counted == 4 and first.counts.sum_rows_already_counted == 0
    assert _profile(h, "C1") == (Decimal("15"), 2, ["web"], "Oslo")

    # v2, same path: one new order, the old rows reordered, a city changed, and an extra column.
    v2_text = (
        "order_id,customer_id,order_date,total,channel,city,note\n"
        "o2,C1,2026-01-02T10:00:00,5,web,Bergen,\n"
        "o3,C1,2026-01-03T10:00:00,7,app,Bergen,new\n"
        "o1,C1,2026-01-01T10:00:00,10,web,Bergen,\n"
    )
    second = h.run("shop", "orders", {"orders": ("in/orders_1.csv", v2_text), "order_lines": ("in/order_lines_1.csv", LINES_HEADER + "o3,B,2\n")})
    assert second.status == "merged"
    assert (second.counts.sum_rows_counted, second.counts.sum_rows_already_counted) == (2, 4)
    assert _profile(h, "C1") == (Decimal("22"), 3, ["web", "app"], "Bergen")  # set and add apply as usual

    # v3: a second customer, and o1 delivered twice. The orders are timeline events, so their sums
    # are keyed by the order id: o1 is one real-world order however often a file carries it (this
    # test used to expect the second copy to be added, 32 / 4 orders: the double count of issue H).
    v3 = v1 + "o3,C1,2026-01-03T10:00:00,7,app,Bergen\no4,C2,2026-01-04T10:00:00,1,web,Oslo\no1,C1,2026-01-01T10:00:00,10,web,Oslo\n"
    third = h.run("shop", "orders", _orders(v3, "o1,A,1\n"))
    assert (third.counts.sum_rows_counted, third.counts.sum_rows_already_counted) == (2, 6)
    assert _profile(h, "C1")[:2] == (Decimal("22"), 3)
    assert _profile(h, "C2")[:2] == (Decimal("1"), 1)
    assert h.query("SELECT property, count(*) FROM delivery_rows GROUP BY 1 ORDER BY 1") == [("orders", 4), ("spend", 4)]
    assert h.query("SELECT count(*) FROM timeline_order") == [(4,)]  # o1 re-imported, never duplicated


def test_another_file_path_is_another_scope(tmp_path):
    """Daily files: the same row in tomorrow's file is tomorrow's order and counts."""
    h = _shop(tmp_path)
    row = "o1,C1,2026-01-01T10:00:00,10,web,Oslo\n"
    h.run("shop", "orders", _orders(row, path="in/orders_1.csv"))
    h.run("shop", "orders", _orders(row.replace("o1", "o2"), path="in/orders_2.csv"))
    assert _profile(h, "C1")[:2] == (Decimal("20"), 2)


def test_same_content_under_another_name_after_a_config_change_is_not_counted_again(tmp_path, store_backend):
    h = _shop(tmp_path, store_backend)
    rows = "o1,C1,2026-01-01T10:00:00,10,web,Oslo\n"
    h.run("shop", "orders", _orders(rows, path="in/orders_1.csv"))
    # A configuration change reimports; the renamed copy of the same bytes must not add again.
    changed = {**ORDERS_GOAL, "description": "changed"}
    h.project.connections["shop"] = Connection.model_validate({"name": "shop", "source": {"type": "local", "path": "remote"}, "goals": [changed]})
    outcome = h.run("shop", "orders", _orders(rows, path="in/orders_1_copy.csv"))
    assert outcome.status == "merged" and outcome.counts.sum_rows_already_counted == 2
    assert _profile(h, "C1")[:2] == (Decimal("10"), 1)


# ---------------------------------------------------------------- reprocess (D.8)


def test_reprocess_applies_set_and_add_again_and_never_counts_a_sum_twice(tmp_path, store_backend):
    h = _shop(tmp_path, store_backend)
    work_dir = h.stage("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\n", "o1,A,2\n"))
    conn_cfg = h.project.connections["shop"]
    goal = importing.import_goal(conn_cfg, "orders")
    importing.stage_delivery(h.project, conn_cfg, goal, work_dir, NOW)
    importing.merge_staged(h.project, conn_cfg, goal, work_dir, "r1", NOW)
    with open_writer(h.project.store_location, CATALOG) as conn:  # an operator "repairs" values by hand
        conn.execute("UPDATE profiles SET city = 'Nowhere', channels = ['store']")

    assert h.rerun(work_dir, "shop", "orders", reprocess=False).status == "skipped"
    outcome = h.rerun(work_dir, "shop", "orders", reprocess=True)
    assert outcome.status == "merged" and outcome.reprocessed
    assert (outcome.counts.sum_rows_counted, outcome.counts.sum_rows_already_counted) == (0, 2)
    assert _profile(h, "C1") == (Decimal("10"), 1, ["store", "web"], "Oslo")
    assert h.query("SELECT status FROM deliveries ORDER BY merged_at, status") == [("merged",), ("reprocessed",)]
    if store_backend.name == "ducklake":  # the same delivery twice: each ledger row names its own snapshot
        snapshots = h.query("SELECT lake_snapshot_id FROM deliveries ORDER BY merged_at")
        assert len({s for (s,) in snapshots if s is not None}) == 2
    assert h.query("SELECT count(*) FROM timeline_order") == [(1,)]
    assert h.query("SELECT product_id, times_bought, quantity_bought FROM product_store") == [("A", 1, Decimal("2"))]


# ---------------------------------------------------------------- timeline events and product store


def test_nested_positions_of_new_and_redelivered_events_in_one_delivery(tmp_path):
    # Positions by default merge: a re-delivered event's known rows keep their place and its new
    # rows follow its stored ones; a new event's rows are numbered in file order, also when the
    # lines file interleaves the events. Expected positions written out by hand.
    h = _shop(tmp_path)
    h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\n", "o1,A,1\no1,B,3\n"))
    h.run(
        "shop", "orders",
        _orders(
            "o1,C1,2026-01-01T10:00:00,10,web,Oslo\no2,C2,2026-01-02T10:00:00,5,web,Bergen\n",
            "o2,X,1\no1,D,4\no2,Y,2\no1,A,1\no2,Z,3\n",
            path="in/orders_2.csv",
        ),
    )
    assert h.query("SELECT event_id, item_index, product_id, quantity FROM timeline_order__order_line ORDER BY event_id, item_index") == [
        ("o1", 1, "A", 1), ("o1", 2, "B", 3), ("o1", 3, "D", 4),
        ("o2", 1, "X", 1), ("o2", 2, "Y", 2), ("o2", 3, "Z", 3),
    ]
    assert h.query("SELECT product_id, times_bought FROM product_store ORDER BY 1") == [("A", 1), ("B", 1), ("D", 1), ("X", 1), ("Y", 1), ("Z", 1)]


def test_event_reimport_updates_the_event_its_items_and_the_product_store(tmp_path):
    # A corrected order that drops a line needs ``nested: replace`` since issue H: by default the
    # nested rows merge by key, and a later file carrying only some lines removes none.
    h = Harness(tmp_path, [{"name": "shop", "goals": [{**ORDERS_GOAL, "nested": "replace"}]}])
    first = h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\n", "o1,A,1\no1,B,3\n"))
    assert (first.counts.events_created, first.counts.events_updated) == (1, 0)
    assert h.query("SELECT product_id, times_bought, quantity_bought FROM product_store ORDER BY 1") == [("A", 1, Decimal("1")), ("B", 1, Decimal("3"))]

    # The order corrected in a later file: new total, line B dropped, line C added.
    second = h.run("shop", "orders", _orders("o1,C1,2026-01-01T11:00:00,12,web,Oslo\n", "o1,A,2\no1,C,1\n", path="in/orders_2.csv"))
    assert (second.counts.events_created, second.counts.events_updated) == (0, 1)
    assert h.query("SELECT event_id, total, event_time FROM timeline_order") == [("o1", Decimal("12"), datetime(2026, 1, 1, 11))]
    assert h.query("SELECT product_id, quantity FROM timeline_order__order_line ORDER BY item_index") == [("A", 2), ("C", 1)]
    assert h.query("SELECT product_id, times_bought, quantity_bought, last_bought_at FROM product_store ORDER BY 1") == [
        ("A", 1, Decimal("2"), datetime(2026, 1, 1, 11)),
        ("B", 0, Decimal("0"), datetime(2026, 1, 1, 10)),
        ("C", 1, Decimal("1"), datetime(2026, 1, 1, 11)),
    ]


def test_duplicate_keys_in_one_delivery_reach_the_store_once(tmp_path):
    h = _shop(tmp_path)
    h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\no2,C1,2026-01-02T10:00:00,5,app,Bergen\no3,C1,2026-01-03T10:00:00,1,web,\n"))
    assert h.query("SELECT count(*) FROM profiles") == [(1,)]
    # last row wins for set (an empty value keeps what the earlier state was: here nothing stored
    # before, the last row's empty city means "no value"), add collects, sum adds.
    assert _profile(h, "C1") == (Decimal("16"), 3, ["web", "app"], None)


# ---------------------------------------------------------------- several identifiers


IDENTIFY_GOAL = {
    "name": "customers",
    "type": "import_profiles",
    "files": {"root": {"name": "customers", "pattern": "customers_*.csv"}},
    "identifiers": [{"column": "customer_id", "property": "customer_number"}, {"column": "email", "property": "email"}],
    "allow_new_profiles": True,
    "on_error": "skip_rows",
    "max_reject_share": 1,
    "mappings": [{"column": "first_name", "property": "first_name"}, {"column": "spend", "property": "spend", "rule": "sum"}],
}


def test_several_identifiers_match_in_declared_order_and_new_profiles_carry_all(tmp_path):
    h = Harness(tmp_path, [{"name": "crm", "goals": [IDENTIFY_GOAL]}])
    with open_writer(h.project.store_path, CATALOG) as conn:
        conn.execute(
            "INSERT INTO profiles (profile_id, customer_number, email, first_name) VALUES "
            "('P1', 'C1', NULL, 'old1'), ('P2', NULL, 'b@x.com', 'old2'), ('P3', 'C3', 'e@x.com', 'old3')"
        )
    text = (
        "customer_id,email,first_name,spend\n"
        "C1,a@x.com,Ann,1\n"  # customer number finds P1; P1 gets the e-mail (set_if_empty)
        "C9,b@x.com,Bea,2\n"  # C9 unknown, the e-mail finds P2; P2 gets customer number C9
        "C7,c@x.com,Cy,3\n"  # nothing matches: a new profile carrying both identifiers
        ",d@x.com,Di,4\n"  # only an e-mail: a new profile from it
        "C3,b@x.com,Eve,5\n"  # customer number first: P3, although the e-mail is P2's
        ",e@x.com,Eva,6\n"  # the e-mail finds P3 too: combined with the row above
        ",,Nobody,7\n"  # no identifier at all: rejected
    )
    outcome = h.run("crm", "customers", {"customers": ("in/customers_1.csv", text)})
    rows = h.query("SELECT profile_id, customer_number, email, first_name, spend FROM profiles ORDER BY first_name")
    new_c7 = hashlib.md5(b"customer_number:C7").hexdigest()
    new_d = hashlib.md5(b"email:d@x.com").hexdigest()
    assert rows == [
        ("P1", "C1", "a@x.com", "Ann", Decimal("1")),
        ("P2", "C9", "b@x.com", "Bea", Decimal("2")),
        (new_c7, "C7", "c@x.com", "Cy", Decimal("3")),
        (new_d, None, "d@x.com", "Di", Decimal("4")),
        ("P3", "C3", "e@x.com", "Eva", Decimal("11")),
    ]
    assert (outcome.counts.profiles_created, outcome.counts.profiles_updated, outcome.counts.rows_rejected) == (2, 3, 1)


def test_without_creation_unmatched_rows_are_ignored_and_counted(tmp_path):
    goal = {**IDENTIFY_GOAL, "allow_new_profiles": False}
    h = Harness(tmp_path, [{"name": "crm", "goals": [goal]}])
    with open_writer(h.project.store_path, CATALOG) as conn:
        conn.execute("INSERT INTO profiles (profile_id, email) VALUES ('P1', 'a@x.com')")
    text = "customer_id,email,first_name,spend\nC1,a@x.com,Ann,1\nC2,z@x.com,Zed,1\nC2,z@x.com,Zed,1\n,y@x.com,Yo,1\n"
    outcome = h.run("crm", "customers", {"customers": ("in/customers_1.csv", text)})
    assert h.query("SELECT profile_id, customer_number, first_name FROM profiles") == [("P1", "C1", "Ann")]
    assert (outcome.counts.profiles_created, outcome.counts.profiles_updated, outcome.counts.profiles_ignored) == (0, 1, 3)
    # Ignored rows were not counted into sums, so they still count once their profile exists.
    assert h.query("SELECT count(*) FROM delivery_rows") == [(1,)]


# ---------------------------------------------------------------- consent (D.7)


CONSENT_GOAL = {
    "name": "customers",
    "type": "import_profiles",
    "files": {"root": {"name": "customers", "pattern": "customers_*.csv"}},
    "identifiers": [{"column": "customer_id", "property": "customer_number"}],
    "allow_new_profiles": True,
    "mappings": [
        {"column": "first_name", "property": "first_name"},
        {"column": "consent", "property": "consents", "rule": "add"},
        {"column": "spend", "property": "spend", "rule": "sum"},
    ],
}


def test_objectives_import_only_profiles_that_consented(tmp_path):
    h = Harness(tmp_path, [{"name": "crm", "goals": [CONSENT_GOAL]}, {"name": "newsletter", "objectives": ["marketing"], "goals": [CONSENT_GOAL]}])
    # Stored consent from an earlier import by a connection without objectives.
    h.run("crm", "customers", {"customers": ("in/customers_0.csv", "customer_id,first_name,consent,spend\nC3,Cy,marketing,\nC5,Ed,,\n")})
    text = (
        "customer_id,first_name,consent,spend\n"
        "C1,Ann,marketing,1\n"  # consents now: created
        "C2,Bob,other,1\n"  # consented to something else only: skipped
        "C2,Bob,,1\n"
        "C3,Cyd,,1\n"  # no consent in the row, the stored one counts: updated
        "C4,Dan,,1\n"  # new and without consent: not created
        "C5,Eddie,,1\n"  # stored without consent: not updated
    )
    outcome = h.run("newsletter", "customers", {"customers": ("in/customers_1.csv", text)})
    assert h.query("SELECT customer_number, first_name, consents, spend FROM profiles ORDER BY 1") == [
        ("C1", "Ann", ["marketing"], Decimal("1")),
        ("C3", "Cyd", ["marketing"], Decimal("1")),
        ("C5", "Ed", None, None),
    ]
    assert outcome.counts.consent_skipped == 4
    assert (outcome.counts.profiles_created, outcome.counts.profiles_updated) == (1, 1)
    assert h.query("SELECT consent_skipped FROM deliveries WHERE connection = 'newsletter'") == [(4,)]
    # Skipped rows are not counted into sums: when C5 consents later, its row counts once.
    assert h.query("SELECT count(*) FROM delivery_rows WHERE connection = 'newsletter'") == [(2,)]


def test_objectives_need_a_list_consent_property(tmp_path):
    h = Harness(tmp_path, [{"name": "newsletter", "objectives": ["marketing"], "goals": [CONSENT_GOAL]}])
    h.project.store = StoreSettings(path=str(tmp_path / "store.duckdb"), published_path=None, consent_property="first_name")
    with pytest.raises(Exception, match="consent_property 'first_name' must be a list profile property"):
        h.run("newsletter", "customers", {"customers": ("in/customers_1.csv", "customer_id,first_name,consent,spend\nC1,Ann,marketing,1\n")})


# ---------------------------------------------------------------- groups


def test_group_import_then_profiles_join_their_household(tmp_path):
    households = {
        "name": "households", "type": "import_groups", "group_type": "household", "group_id": "household_id",
        "files": {"root": {"name": "households", "pattern": "households_*.csv"}},
        "bulk_mapping": {"rule": "set"},
    }
    customers = {
        "name": "customers", "type": "import_profiles",
        "files": {"root": {"name": "customers", "pattern": "customers_*.csv"}},
        "identifiers": [{"column": "customer_id", "property": "customer_number"}], "allow_new_profiles": True,
        "mappings": [{"column": "household_id", "property": "household_id"}],
    }
    h = Harness(tmp_path, [{"name": "crm", "goals": [households, customers]}])
    groups = h.run("crm", "households", {"households": ("in/households_1.csv", "household_id,name,size\nH1,Jansen,2\nH2,Berg,1\n")})
    assert groups.counts.groups_created == 2
    h.run("crm", "customers", {"customers": ("in/customers_1.csv", "customer_id,household_id\nC1,H1\nC2,H1\nC3,\n")})
    joined = h.query(
        "SELECT p.customer_number, g.name, g.size FROM profiles p JOIN groups_household g ON g.group_id = p.household_id ORDER BY 1"
    )
    assert joined == [("C1", "Jansen", 2), ("C2", "Jansen", 2)]
    again = h.run("crm", "households", {"households": ("in/households_2.csv", "household_id,name,size\nH1,Jansen-Berg,3\n")})
    assert (again.counts.groups_created, again.counts.groups_updated) == (0, 1)


# ---------------------------------------------------------------- reject report and on_error


def test_on_error_fail_writes_the_report_and_merges_nothing(tmp_path):
    goal = {**ORDERS_GOAL, "on_error": "fail"}
    h = Harness(tmp_path, [{"name": "shop", "goals": [goal]}])
    h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\n", path="in/orders_0.csv"))
    before = h.query("SELECT * FROM profiles")
    work_dir = h.stage(
        "shop", "orders", _orders("o2,C1,2026-01-02T10:00:00,5,web,Bergen\no3,C1,2026-01-03T10:00:00,12abc,web,Bergen\no4,,2026-01-03T10:00:00,1,web,X\n")
    )
    conn_cfg = h.project.connections["shop"]
    with pytest.raises(InputError) as raised:
        importing.stage_delivery(h.project, conn_cfg, importing.import_goal(conn_cfg, "orders"), work_dir, NOW)
    assert "orders_1.csv line 3, column 'total': cannot parse '12abc'" in str(raised.value)
    report = pl.read_csv(work_dir / "rejects.csv")
    assert report.select("file", "line", "column").rows() == [("in/orders_1.csv", 3, "total"), ("in/orders_1.csv", 4, "customer_id")]
    assert not (work_dir / "tables").exists()  # nothing staged, so nothing can be merged
    assert h.query("SELECT * FROM profiles") == before
    assert h.query("SELECT count(*) FROM deliveries") == [(1,)]


def test_on_error_skip_rows_merges_without_them_and_stores_the_rejects(tmp_path):
    h = _shop(tmp_path)
    work_dir = h.stage(
        "shop", "orders", _orders("o2,C1,2026-01-02T10:00:00,5,web,Bergen\no3,C1,2026-01-03T10:00:00,12abc,app,Bergen\no4,,2026-01-03T10:00:00,1,web,X\n")
    )
    conn_cfg = h.project.connections["shop"]
    goal = importing.import_goal(conn_cfg, "orders")
    staged = importing.stage_delivery(h.project, conn_cfg, goal, work_dir, NOW)
    assert staged.reject_report == str(work_dir / "rejects.csv")
    assert pl.read_csv(work_dir / "rejects.csv").height == 2
    outcome = importing.merge_staged(h.project, conn_cfg, goal, work_dir, "r1", NOW)
    # o3's total is not imported; the row's other values (channel, order count) are.
    assert _profile(h, "C1") == (Decimal("5"), 2, ["web", "app"], "Bergen")
    assert outcome.counts.rows_rejected == 2
    assert h.query("SELECT file, line, column_name FROM rejects ORDER BY line") == [("in/orders_1.csv", 3, "total"), ("in/orders_1.csv", 4, "customer_id")]
    assert h.query("SELECT count(*) FROM timeline_order") == [(2,)]  # o3's event without its total, o4 never


def test_merge_failure_rolls_back_every_part(tmp_path):
    h = _shop(tmp_path)
    staged = build_import_tables(
        importing.import_goal(h.project.connections["shop"], "orders"), CATALOG,
        {
            "orders": _write(tmp_path / "o.csv", ORDERS_HEADER + "o1,C1,2026-01-01T10:00:00,10,web,Oslo\n"),
            "order_lines": _write(tmp_path / "l.csv", LINES_HEADER + "o1,A,1\n"),
        },
        {"orders": "in/orders_1.csv", "order_lines": "in/order_lines_1.csv"}, NOW,
    )
    staged.events["no_such_type"] = staged.events["order"]  # fails after profiles and sums were written
    record = DeliveryRecord("d1", "shop", "orders", "orders:orders_1.csv", "in/orders_1.csv", [], "sha", "cfg")
    with open_writer(h.project.store_path, CATALOG) as conn:
        with pytest.raises(KeyError):
            merge_delivery(conn, CATALOG, staged, record, "r1", NOW)
        for table in ("profiles", "delivery_rows", "timeline_order", "product_store", "deliveries"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], table


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- a property another connection fills


def test_warning_when_another_connection_fills_the_same_property(tmp_path):
    crm = {"name": "crm", "goals": [CONSENT_GOAL]}
    shop = {"name": "shop", "goals": [ORDERS_GOAL]}
    webshop_mappings = [{"column": "first_name", "property": "first_name"}, {"column": "spend", "property": "spend", "rule": "sum"}]
    webshop = {"name": "webshop", "goals": [{**CONSENT_GOAL, "mappings": webshop_mappings}]}
    h = Harness(tmp_path, [crm, shop, webshop])
    writers = property_writers(h.project)
    assert writers[("profiles", "spend")] == [("crm", "customers"), ("shop", "orders"), ("webshop", "customers")]
    assert writers[("profiles", "city")] == [("shop", "orders")]
    warnings = shared_property_warnings(h.project, "webshop", "customers")
    assert warnings == [
        "profiles.first_name is also filled by crm/customers: the merge rules of both decide the value; "
        "map into another property if the two sources must not overwrite each other",
        "profiles.spend is also filled by crm/customers, shop/orders: the merge rules of both decide the value; "
        "map into another property if the two sources must not overwrite each other",
    ]
    work_dir = h.stage("webshop", "customers", {"customers": ("in/customers_1.csv", "customer_id,first_name,consent,spend\nC1,Ann,,1\n")})
    conn_cfg = h.project.connections["webshop"]
    staged = importing.stage_delivery(h.project, conn_cfg, importing.import_goal(conn_cfg, "customers"), work_dir, NOW)
    assert [w for w in staged.warnings if "also filled by" in w] == warnings


def test_group_sums_use_the_row_delta_and_ignored_groups_are_not_counted(tmp_path):
    households = {
        "name": "households", "type": "import_groups", "group_type": "household", "group_id": "household_id",
        "files": {"root": {"name": "households", "pattern": "households_*.csv"}}, "allow_new_groups": False,
        "mappings": [{"column": "people", "property": "size", "rule": "sum"}],
    }
    h = Harness(tmp_path, [{"name": "crm", "goals": [households]}])
    with open_writer(h.project.store_path, CATALOG) as conn:
        conn.execute("INSERT INTO groups_household (group_id, size) VALUES ('H1', 1)")
    first = h.run("crm", "households", {"households": ("in/households_1.csv", "household_id,people\nH1,2\nH9,5\n")})
    assert first.counts.sum_rows_counted == 1  # H9 matched no group: not counted
    h.run("crm", "households", {"households": ("in/households_1.csv", "household_id,people\nH1,2\nH9,5\nH1,3\n")})
    assert h.query("SELECT group_id, size FROM groups_household") == [("H1", 6)]


def test_rows_counted_before_sums_had_keys_are_not_added_again(tmp_path):
    """A store whose sum rows were remembered per file (before keys existed): the same file again
    finds them by their per-file identity and remembers them by key from then on, so neither the
    upgrade nor a later file under another name adds those orders a second time."""
    h = _shop(tmp_path)
    rows = "o1,C1,2026-01-01T10:00:00,10,web,Oslo\n"
    goal = importing.import_goal(h.project.connections["shop"], "orders")
    paths = {"orders": _write(tmp_path / "o.csv", ORDERS_HEADER + rows), "order_lines": _write(tmp_path / "l.csv", LINES_HEADER)}
    staged = build_import_tables(goal, CATALOG, paths, {"orders": "in/orders_1.csv", "order_lines": "in/order_lines_1.csv"}, NOW)
    # What the earlier code left: per-file identities, no key.
    staged.sum_rows = {
        prop: frame.drop("_row_hash_hi", "_row_hash_lo", "_keyed").rename({"_file_hash_hi": "_row_hash_hi", "_file_hash_lo": "_row_hash_lo"})
        for prop, frame in staged.sum_rows.items()
    }
    record = DeliveryRecord("legacy", "shop", "orders", "orders:orders_1.csv", "in/orders_1.csv", [], "old-sha", "old-cfg")
    with open_writer(h.project.store_path, CATALOG) as conn:
        merge_delivery(conn, CATALOG, staged, record, "r0", NOW)
        conn.execute("UPDATE delivery_rows SET keyed = NULL, value = NULL")  # as the earlier schema left them
    assert _profile(h, "C1")[:2] == (Decimal("10"), 1)
    again = h.run("shop", "orders", _orders(rows, path="in/orders_1.csv"))
    assert (again.counts.sum_rows_already_counted, _profile(h, "C1")[:2]) == (2, (Decimal("10"), 1))
    later = h.run("shop", "orders", _orders(rows + "o2,C1,2026-01-02T10:00:00,5,web,Oslo\n", path="in/orders_2.csv"))
    assert later.counts.sum_rows_already_counted == 2
    assert _profile(h, "C1")[:2] == (Decimal("15"), 2)


def test_an_order_moved_to_another_customer_moves_its_amount(tmp_path):
    """The partner corrects an order's customer: the sum follows the order (C1 gives back what it
    counted, C2 gets it), with or without a changed amount, and the history shows both values."""
    h = _shop(tmp_path)
    h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,10,web,Oslo\no2,C1,2026-01-02T10:00:00,5,web,Oslo\n", path="in/orders_1.csv"))
    h.run("shop", "orders", _orders("o1,C2,2026-01-01T10:00:00,10,web,Bergen\n", path="in/orders_2.csv"))
    assert (_profile(h, "C1")[:2], _profile(h, "C2")[:2]) == ((Decimal("5"), 1), (Decimal("10"), 1))
    h.run("shop", "orders", _orders("o1,C1,2026-01-01T10:00:00,12,web,Oslo\n", path="in/orders_3.csv"))
    assert (_profile(h, "C1")[:2], _profile(h, "C2")[:2]) == ((Decimal("17"), 2), (Decimal("0"), 0))
    assert h.query("SELECT profile_id, event_id FROM timeline_order ORDER BY 2")[0][1] == "o1"
    spend = h.query(
        "SELECT p.customer_number, v.value FROM property_provenance v JOIN profiles p ON p.profile_id = v.entity_id WHERE v.property = 'spend' ORDER BY 1"
    )
    assert spend == [("C1", "17.0000"), ("C2", "0.0000")]
