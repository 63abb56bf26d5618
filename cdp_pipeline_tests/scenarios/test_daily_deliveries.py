"""Many days of deliveries for one connection, as a partner really sends them: a full extract,
increments, overlapping extracts under new names, an identical copy, corrections, new lines for
an old order, an order re-sent with fewer lines, a row without id, a non-numeric amount, a file
in another encoding, a broken file the reject guard stops, and a reprocess.

After every step the store (a real DuckDB file, and a real DuckLake: catalog in PostgreSQL, data on
the S3 server) is compared with an expectation computed in plain
DuckDB SQL over the union of the rows of every delivery that was accepted: every profile
property, every event, every nested row and every sum to the cent. The expectation never goes
through the project's code; it states the rules directly:

* a profile per distinct trimmed customer id; ``set``: the latest non-empty value; ``add``: the
  distinct values in order of first delivery;
* an event per order id with the fields of its latest row; a nested row per (order id, line id)
  with the values of its latest row, a price that is not a number not imported (the latest
  numeric one stays); nothing disappears because a later file left it out;
* the sum of item prices per customer counts each (order id, line id) once, with its latest
  numeric price, whatever the files are called.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.errors import InputError
from cdp_pipeline_tests.fixtures.store_backends import StoreBackend

NOW = datetime(2026, 1, 15, 12, 0)

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "customer_number": {"type": "text", "unique": True},
            # Fed by the link column customer_id too: typing applies to this property only.
            "customer_code": {"type": "integer"},
            "email": {"type": "text"},
            "name": {"type": "text"},
            # A list property fed by the link column order_id of the orders file.
            "order_ids": {"type": "list"},
            "total_spent": {"type": "decimal"},
            "visit_points": {"type": "integer"},
        },
        "event_types": {
            "order": {
                "properties": {"status": {"type": "text"}},
                "nested": {
                    "order_item": {
                        "properties": {"product_id": {"type": "text"}, "price": {"type": "decimal"}, "quantity": {"type": "integer"}}
                    }
                },
            }
        },
    }
)

SHOP_GOAL = {
    "name": "shop",
    "type": "import_profiles",
    "files": {
        "directory": "in",
        "root": {"name": "customers", "pattern": "customers_*.csv"},
        "linked": [
            {"name": "orders", "pattern": "orders_*.csv", "parent": "customers", "link": {"customer_id": "customer_id"}},
            {"name": "order_items", "pattern": "order_items_*.csv", "parent": "orders", "link": {"order_id": "order_id"}},
        ],
    },
    "identifiers": [{"column": "customer_id", "property": "customer_number"}],
    "allow_new_profiles": True,
    "mappings": [
        {"column": "customer_id", "property": "customer_code"},
        {"column": "email", "property": "email"},
        {"column": "name", "property": "name"},
        {"column": "order_id", "property": "order_ids", "rule": "add", "file": "orders"},
        {"column": "price", "property": "total_spent", "rule": "sum", "file": "order_items"},
    ],
    "timeline": [
        {
            "event_type": "order", "file": "orders", "event_id": "order_id", "event_time": "order_date",
            "properties": {"status": "status"},
            "nested": [{"type": "order_item", "file": "order_items", "key": ["line_id"],
                        "properties": {"product_id": "product_id", "price": "price", "quantity": "quantity"}}],
        }
    ],
}

CUSTOMERS_HEADER = ("customer_id", "email", "name")
ORDERS_HEADER = ("order_id", "customer_id", "order_date", "status")
ITEMS_HEADER = ("order_id", "line_id", "product_id", "price", "quantity")


def csv_text(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "\n".join([",".join(header), *(",".join(row) for row in rows)]) + "\n"


@dataclass
class Shop:
    """The store of one connection and the rows of every accepted delivery (the expectation's input)."""

    tmp_path: Path
    goals: list[dict]
    #: the store's backend (a DuckDB file unless a test passes the ``store_backend`` fixture's).
    backend: StoreBackend | None = None
    project: ProjectConfig = field(init=False)
    expected: duckdb.DuckDBPyConnection = field(init=False)
    deliveries: int = 0

    def __post_init__(self) -> None:
        if self.backend is None:
            path = self.tmp_path / "store.duckdb"
            self.backend = StoreBackend(name="duckdb", settings=StoreSettings(path=str(path), published_path=None), target=path)
        self.project = ProjectConfig(config_dir=self.tmp_path, home=self.tmp_path / "home", store=self.backend.settings, catalog=CATALOG)
        connection = Connection.model_validate({"name": "acme", "source": {"type": "local", "path": "remote"}, "goals": self.goals})
        self.project.connections["acme"] = connection
        self.expected = duckdb.connect()
        self.expected.execute("CREATE TABLE d_customers (seq INT, line INT, customer_id VARCHAR, email VARCHAR, name VARCHAR)")
        self.expected.execute("CREATE TABLE d_orders (seq INT, line INT, order_id VARCHAR, customer_id VARCHAR, order_date VARCHAR, status VARCHAR)")
        self.expected.execute(
            "CREATE TABLE d_items (seq INT, line INT, order_id VARCHAR, line_id VARCHAR, product_id VARCHAR, price VARCHAR, quantity VARCHAR)"
        )
        self.expected.execute("CREATE TABLE d_visits (seq INT, line INT, scope VARCHAR, customer_id VARCHAR, points VARCHAR)")

    def stage(self, goal: str, files: dict[str, tuple[str, bytes]]) -> Path:
        self.deliveries += 1
        work_dir = self.tmp_path / "work" / f"d{self.deliveries}"
        work_dir.mkdir(parents=True)
        listed = []
        for name, (remote_path, data) in files.items():
            local = work_dir / f"{name}.plain"
            local.write_bytes(data)
            listed.append(
                {"name": name, "remote_path": remote_path, "size": len(data), "mtime": 0.0, "etag": None,
                 "sha256": hashlib.sha256(data).hexdigest(), "local_path": str(local)}
            )
        root = self.project.connections["acme"].goal(goal).files.root.name
        (work_dir / "decrypted.json").write_text(json.dumps({"files": listed, "partition_key": f"{goal}:{Path(files[root][0]).name}"}))
        return work_dir

    def deliver(self, goal: str, files: dict[str, tuple[str, bytes]]) -> tuple[Path, importing.MergeOutcome]:
        """Stage and merge through the engine functions the Dagster assets call."""
        work_dir = self.stage(goal, files)
        connection = self.project.connections["acme"]
        goal_config = importing.import_goal(connection, goal)
        importing.stage_delivery(self.project, connection, goal_config, work_dir, NOW)
        return work_dir, importing.merge_staged(self.project, connection, goal_config, work_dir, f"run{self.deliveries}", NOW)

    def shop_day(self, stamp: str, customers: list[tuple], orders: list[tuple], items: list[tuple], *, encoding: str = "utf-8"):
        files = {
            "customers": (f"in/customers_{stamp}.csv", csv_text(CUSTOMERS_HEADER, customers).encode(encoding)),
            "orders": (f"in/orders_{stamp}.csv", csv_text(ORDERS_HEADER, orders).encode("utf-8")),
            "order_items": (f"in/order_items_{stamp}.csv", csv_text(ITEMS_HEADER, items).encode("utf-8")),
        }
        work_dir, outcome = self.deliver("shop", files)
        self.accept(customers, orders, items)
        return work_dir, outcome

    def accept(self, customers: list[tuple], orders: list[tuple], items: list[tuple]) -> None:
        """The delivery was taken: its rows join the expectation's input (line 2 is the first data row)."""
        seq = self.deliveries
        for table, rows in (("d_customers", customers), ("d_orders", orders), ("d_items", items)):
            if rows:
                self.expected.executemany(
                    f"INSERT INTO {table} VALUES ({', '.join('?' * (len(rows[0]) + 2))})",
                    [(seq, line, *row) for line, row in enumerate(rows, start=2)],
                )

    # ------------------------------------------------------------ the expectation, in plain SQL

    def expected_profiles(self) -> str:
        return """
        WITH c AS (
            SELECT seq, line, trim(customer_id) AS id, nullif(trim(email), '') AS email, nullif(trim(name), '') AS name
            FROM d_customers WHERE nullif(trim(customer_id), '') IS NOT NULL
        ),
        -- an order belongs to the customer its latest row names
        o AS (
            SELECT trim(order_id) AS order_id, arg_max(trim(customer_id), seq * 1000000 + line) AS customer_id
            FROM d_orders GROUP BY 1
        ),
        first_orders AS (
            SELECT trim(customer_id) AS id, trim(order_id) AS order_id, min(seq * 1000000 + line) AS first_seen
            FROM d_orders GROUP BY ALL
        ),
        item_prices AS (
            SELECT trim(order_id) AS order_id, trim(line_id) AS line_id,
                   arg_max(TRY_CAST(trim(price) AS DECIMAL(18,4)), seq * 1000000 + line)
                       FILTER (WHERE TRY_CAST(trim(price) AS DECIMAL(18,4)) IS NOT NULL) AS price
            FROM d_items GROUP BY ALL
        ),
        spent AS (SELECT o.customer_id AS id, sum(i.price) AS total FROM item_prices i JOIN o USING (order_id) GROUP BY 1)
        SELECT c.id AS customer_number,
               arg_max(TRY_CAST(c.id AS BIGINT), c.seq * 1000000 + c.line) AS customer_code,
               arg_max(c.email, c.seq * 1000000 + c.line) FILTER (WHERE c.email IS NOT NULL) AS email,
               arg_max(c.name, c.seq * 1000000 + c.line) FILTER (WHERE c.name IS NOT NULL) AS name,
               (SELECT list(f.order_id ORDER BY f.first_seen) FROM first_orders f WHERE f.id = c.id) AS order_ids,
               CAST(any_value(s.total) AS DECIMAL(18,4)) AS total_spent
        FROM c LEFT JOIN spent s ON s.id = c.id
        GROUP BY c.id
        """

    def expected_events(self) -> str:
        return """
        SELECT trim(order_id) AS event_id,
               arg_max(trim(customer_id), seq * 1000000 + line) AS customer_number,
               arg_max(CAST(trim(order_date) AS TIMESTAMP), seq * 1000000 + line) AS event_time,
               arg_max(nullif(trim(status), ''), seq * 1000000 + line) AS status
        FROM d_orders GROUP BY 1
        """

    def expected_items(self) -> str:
        return """
        SELECT trim(order_id) AS event_id, trim(line_id) AS item_key,
               arg_max(nullif(trim(product_id), ''), seq * 1000000 + line) AS product_id,
               arg_max(TRY_CAST(trim(price) AS DECIMAL(18,4)), seq * 1000000 + line)
                   FILTER (WHERE TRY_CAST(trim(price) AS DECIMAL(18,4)) IS NOT NULL) AS price,
               arg_max(TRY_CAST(trim(quantity) AS BIGINT), seq * 1000000 + line) AS quantity
        FROM d_items GROUP BY ALL
        """

    def assert_store_matches(self, step: str) -> None:
        assert self.backend is not None
        self.backend.attach(self.expected, "store")
        try:
            comparisons = {
                "profiles": (
                    self.expected_profiles(),
                    "SELECT customer_number, customer_code, email, name, order_ids, total_spent FROM store.profiles",
                ),
                "events": (
                    self.expected_events(),
                    "SELECT e.event_id, p.customer_number, e.event_time, e.status FROM store.timeline_order e JOIN store.profiles p USING (profile_id)",
                ),
                "nested rows": (
                    self.expected_items(),
                    "SELECT event_id, item_key, product_id, price, quantity FROM store.timeline_order__order_item",
                ),
            }
            for what, (expected_sql, actual_sql) in comparisons.items():
                missing = self.expected.execute(f"({expected_sql}) EXCEPT ALL ({actual_sql}) ORDER BY 1").fetchall()
                extra = self.expected.execute(f"({actual_sql}) EXCEPT ALL ({expected_sql}) ORDER BY 1").fetchall()
                assert not missing and not extra, f"after {step}: {what} differ\n  expected, not stored: {missing}\n  stored, not expected: {extra}"
            (doubled,) = self.expected.execute(
                "SELECT count(*) FROM (SELECT event_id, item_index FROM store.timeline_order__order_item GROUP BY ALL HAVING count(*) > 1)"
            ).fetchall()[0]
            assert doubled == 0, f"after {step}: two nested rows share a position"
        finally:
            self.expected.execute("DETACH store")

    def store(self, sql: str) -> list[tuple]:
        assert self.backend is not None
        return self.backend.read(sql)


# ------------------------------------------------------------ the partner's data


def customer(i: int, email: str | None = None, name: str | None = None) -> tuple[str, str, str]:
    cid = f"{i:03d}"  # zero-padded: "007" must stay "007"
    return (cid, email or f"c{cid}@example.com", name or f"Customer {cid}")


def order(i: int, customer_index: int, status: str = "paid", day: int = 1) -> tuple[str, str, str, str]:
    return (f"O{i}", f"{customer_index:03d}", f"2026-01-{day:02d}T10:{i % 60:02d}:00", status)


def item(i: int, line: int, price: str | None = None) -> tuple[str, str, str, str, str]:
    return (f"O{i}", str(line), f"P{(i + line) % 5}", price or f"{i * 10 + line}.{(i * 7 + line * 13) % 100:02d}", str(line))


def items_of(i: int, lines: int) -> list[tuple]:
    return [item(i, line) for line in range(1, lines + 1)]


def test_a_fortnight_of_deliveries_matches_plain_sql_after_every_step(tmp_path, store_backend):
    shop = Shop(tmp_path, [SHOP_GOAL], store_backend)
    everyone = [customer(i) for i in range(1, 25)]
    owner = {i: (i - 1) % 12 + 1 for i in range(1, 13)}  # O1..O12 → customers 001..012

    # 1. Full extract: 24 customers, 8 orders with their lines.
    d1_orders = [order(i, owner[i]) for i in range(1, 9)]
    d1_items = [row for i in range(1, 9) for row in items_of(i, i % 3 + 1)]
    _, first = shop.shop_day("20260101", everyone, d1_orders, d1_items)
    assert (first.counts.profiles_created, first.counts.events_created) == (24, 8)
    shop.assert_store_matches("1 full extract")

    # 2. Increment: the customers of the new orders only, plus a new customer 025.
    d2_customers = [customer(9), customer(10), customer(25)]
    d2_orders = [order(9, 9, day=2), order(10, 10, day=2), order(11, 25, day=2)]
    d2_items = items_of(9, 1) + items_of(10, 2) + items_of(11, 3)
    shop.shop_day("20260102", d2_customers, d2_orders, d2_items)
    shop.assert_store_matches("2 increment")

    # 3. Overlapping extract under a new name ("the last seven days"): O7..O11 again, O12 new.
    d3_customers = [customer(i) for i in (7, 8, 9, 10, 12, 25)]
    d3_orders = [order(7, 7), order(8, 8), order(9, 9, day=2), order(10, 10, day=2), order(11, 25, day=2), order(12, 12, day=3)]
    d3_items = items_of(7, 2) + items_of(8, 3) + items_of(9, 1) + items_of(10, 2) + items_of(11, 3) + items_of(12, 1)
    _, third = shop.shop_day("20260103", d3_customers, d3_orders, d3_items)
    assert (third.counts.events_created, third.counts.events_unchanged) == (1, 5)
    assert third.counts.sum_rows_counted == 1  # only O12's line adds
    shop.assert_store_matches("3 overlapping extract")

    # 4. The same files again, renamed: the same content is not merged again.
    _, copy = shop.shop_day("20260103_copy", d3_customers, d3_orders, d3_items)
    assert copy.status == "skipped"
    shop.assert_store_matches("4 identical copy renamed")

    # 5. A correction of one amount: O2 line 1 costs 12.50 now; the sum moves by the difference.
    before = shop.store("SELECT total_spent FROM profiles WHERE customer_number = '002'")[0][0]
    old_price = item(2, 1)[3]
    _, fifth = shop.shop_day("20260104", [customer(2)], [order(2, 2)], [item(2, 1, "12.50"), item(2, 2), item(2, 3)])
    after = shop.store("SELECT total_spent FROM profiles WHERE customer_number = '002'")[0][0]
    assert after - before == Decimal("12.50") - Decimal(old_price)
    assert fifth.counts.sum_rows_corrected == 1
    shop.assert_store_matches("5 correction of one amount")

    # 6. New lines for an existing order, sent alone: O3 gets line 4; lines 1..1 stay.
    shop.shop_day("20260105", [customer(3)], [order(3, 3)], [item(3, 4)])
    assert shop.store("SELECT item_key, item_index FROM timeline_order__order_item WHERE event_id = 'O3' ORDER BY item_index") == [("1", 1), ("4", 2)]
    shop.assert_store_matches("6 new items for an existing order")

    # 7. An order re-sent with fewer lines (and a new status): nothing of it disappears.
    _, seventh = shop.shop_day("20260106", [customer(1)], [order(1, 1, status="shipped")], [item(1, 1)])
    assert (seventh.counts.events_updated, seventh.counts.events_created) == (1, 0)
    assert shop.store("SELECT count(*) FROM timeline_order__order_item WHERE event_id = 'O1'") == [(2,)]
    shop.assert_store_matches("7 order re-sent with fewer items")

    # 8. A snapshot of every customer, 007's e-mail changed, one row without id: that row is
    # excluded (recorded), the rest is imported.
    d8_customers = [customer(i) for i in range(1, 26) if i != 7] + [customer(7, email="new007@example.com"), ("", "ghost@example.com", "No Id")]
    work8, eighth = shop.shop_day("20260107", d8_customers, [], [])
    assert eighth.counts.rows_rejected == 1
    assert shop.store("SELECT file, line, column_name FROM rejects") == [("in/customers_20260107.csv", 27, "customer_id")]
    shop.assert_store_matches("8 a row with an empty id")

    # 9. The partner's full daily snapshot of every order and line, plus a new O13, where O5's first
    # line has the price "n/a": that value is not imported (recorded; the stored price and what the
    # line added to the sum stay), the rest of the row is.
    current_lines = {1: [1, 2], 2: [1, 2, 3], 3: [1, 4], 4: [1, 2], 5: [1, 2, 3], 6: [1], 7: [1, 2], 8: [1, 2, 3], 9: [1], 10: [1, 2], 11: [1, 2, 3], 12: [1]}
    d9_orders = [order(i, 25 if i == 11 else owner[i], status="shipped" if i == 1 else "paid", day=1 if i <= 8 else 2 if i <= 11 else 3) for i in range(1, 13)]
    d9_orders.append(order(13, 4, day=8))
    d9_items = [item(i, line, {(2, 1): "12.50", (5, 1): "n/a"}.get((i, line))) for i in range(1, 13) for line in current_lines[i]]
    d9_items += [item(13, 1), item(13, 2), item(13, 3)]
    d9_customers = [customer(i) for i in range(1, 26) if i != 7] + [customer(7, email="new007@example.com")]
    work9, ninth = shop.shop_day("20260108", d9_customers, d9_orders, d9_items)
    assert ninth.counts.values_not_imported == 1
    assert ninth.counts.sum_rows_counted == 3  # O13's lines; everything else was counted before
    assert ("in/order_items_20260108.csv", "price") in shop.store("SELECT file, column_name FROM rejects")
    shop.assert_store_matches("9 a non-numeric sum cell")

    # 10. Saved from Excel in cp1252 while the goal reads UTF-8: a named failure, nothing merged.
    umlaut = [customer(14, name="Zoë Ångström")]
    with pytest.raises(InputError, match="not valid utf-8"):
        shop.deliver("shop", {
            "customers": ("in/customers_20260109.csv", csv_text(CUSTOMERS_HEADER, umlaut).encode("cp1252")),
            "orders": ("in/orders_20260109.csv", csv_text(ORDERS_HEADER, []).encode()),
            "order_items": ("in/order_items_20260109.csv", csv_text(ITEMS_HEADER, []).encode()),
        })
    shop.assert_store_matches("10 a file in another encoding (refused)")

    # 11. The same re-sent as UTF-8 with a byte order mark: merged.
    shop.deliver("shop", {
        "customers": ("in/customers_20260109b.csv", b"\xef\xbb\xbf" + csv_text(CUSTOMERS_HEADER, umlaut).encode("utf-8")),
        "orders": ("in/orders_20260109b.csv", csv_text(ORDERS_HEADER, []).encode()),
        "order_items": ("in/order_items_20260109b.csv", csv_text(ITEMS_HEADER, []).encode()),
    })
    shop.accept(umlaut, [], [])
    assert shop.store("SELECT name FROM profiles WHERE customer_number = '014'") == [("Zoë Ångström",)]
    shop.assert_store_matches("11 the same in UTF-8")

    # 12. Most order times written day-first without event_time_format: two of three events would be
    # dropped. The reject guard fails the delivery as a whole (O14 is not merged either) and names
    # the setting.
    bad_orders = [("O14", "005", "2026-01-09T10:00:00", "paid"), ("O15", "006", "09/01/2026 11:00", "paid"), ("O16", "006", "09/01/2026 12:00", "paid")]
    with pytest.raises(InputError) as failed:
        shop.deliver("shop", {
            "customers": ("in/customers_20260110.csv", csv_text(CUSTOMERS_HEADER, [customer(5), customer(6)]).encode()),
            "orders": ("in/orders_20260110.csv", csv_text(ORDERS_HEADER, bad_orders).encode()),
            "order_items": ("in/order_items_20260110.csv", csv_text(ITEMS_HEADER, [item(14, 1), item(15, 1), item(16, 1)]).encode()),
        })
    message = str(failed.value)
    assert "2 of 3 rows (66.7%)" in message and "max_reject_share (5%)" in message and "event_time_format" in message
    assert "order_date" in message
    shop.assert_store_matches("12 a delivery that fails its reject guard")

    # 13. An operator reprocesses day 9: set rules and add apply again, no sum moves.
    spent = shop.store("SELECT customer_number, total_spent FROM profiles ORDER BY 1")
    assert shop.store("SELECT name FROM profiles WHERE customer_number = '014'") == [("Zoë Ångström",)]
    again = importing.merge_staged(shop.project, shop.project.connections["acme"], importing.import_goal(shop.project.connections["acme"], "shop"),
                                   work9, "reprocess", NOW, reprocess=True)
    assert again.reprocessed and again.counts.sum_rows_counted == 0
    # For the expectation a reprocess is day 9's rows delivered once more (014's name is day 9's again).
    shop.deliveries += 1
    shop.accept(d9_customers, d9_orders, d9_items)
    assert shop.store("SELECT customer_number, total_spent FROM profiles ORDER BY 1") == spent
    shop.assert_store_matches("13 reprocess")
    assert work8.exists()

    # The ledger says what happened each day.
    statuses = shop.store("SELECT status, count(*) FROM deliveries GROUP BY 1 ORDER BY 1")
    assert statuses == [("merged", 9), ("reprocessed", 1)]


# ------------------------------------------------------------ sums fed by rows without a key

VISITS_GOAL = {
    "name": "visits",
    "type": "import_profiles",
    "files": {"directory": "in", "root": {"name": "visits", "pattern": "visits_*.csv"}},
    "identifiers": [{"column": "customer_id", "property": "customer_number"}],
    "allow_new_profiles": True,
    "mappings": [{"column": "points", "property": "visit_points", "rule": "sum"}],
}


def test_a_sum_fed_by_rows_without_a_key_counts_each_row_once_per_file(tmp_path):
    """Rows with nothing that identifies them (no event, no identity columns) cannot be told
    apart from a new row with the same values in another file, so they follow the per-file rule:
    within one file (also a changed version, or the same bytes renamed) a row counts once; the
    same row in another file counts again. The expectation says exactly that in SQL: distinct
    (scope, customer, points, occurrence) rows, where a renamed identical copy keeps its scope."""
    shop = Shop(tmp_path, [VISITS_GOAL])

    def visit_day(path: str, scope: str, rows: list[tuple[str, str]]):
        _, outcome = shop.deliver("visits", {"visits": (path, csv_text(("customer_id", "points"), rows).encode())})
        if outcome.status == "merged":
            shop.expected.executemany(
                "INSERT INTO d_visits VALUES (?, ?, ?, ?, ?)", [(shop.deliveries, line, scope, *row) for line, row in enumerate(rows, start=2)]
            )
        expected = shop.expected.execute(
            """
            SELECT customer_id, CAST(sum(CAST(points AS BIGINT)) AS BIGINT) FROM (
                SELECT DISTINCT scope, trim(customer_id) AS customer_id, points, occurrence FROM (
                    SELECT scope, customer_id, points, row_number() OVER (PARTITION BY seq, trim(customer_id), points ORDER BY line) AS occurrence
                    FROM d_visits
                )
            ) GROUP BY 1 ORDER BY 1
            """
        ).fetchall()
        assert shop.store("SELECT customer_number, visit_points FROM profiles ORDER BY 1") == expected, path
        return outcome

    day1 = [("001", "5"), ("002", "3"), ("001", "5")]  # 001 visited twice for 5 points
    visit_day("in/visits_1.csv", "in/visits_1.csv", day1)
    visit_day("in/visits_2.csv", "in/visits_2.csv", [("002", "4")])
    # The same file name with one more row: only that row adds.
    visit_day("in/visits_2.csv", "in/visits_2.csv", [("002", "4"), ("003", "7")])
    # The same bytes as day 1 under another name: the same content, not counted again.
    assert visit_day("in/visits_1_copy.csv", "in/visits_1.csv", day1).status == "skipped"
    # A row identical to one of day 1, in another file: another visit, counted (per-file rule).
    visit_day("in/visits_3.csv", "in/visits_3.csv", [("001", "5")])
    assert shop.store("SELECT customer_number, visit_points FROM profiles ORDER BY 1") == [("001", 15), ("002", 7), ("003", 7)]


def test_a_sum_beyond_its_type_fails_the_delivery_naming_key_line_and_property(tmp_path):
    """9,223,372,036,854,775,807 is the largest integer the store holds: one more point must
    not wrap to a negative total or surface as a bare DuckDB error, and nothing is merged."""
    shop = Shop(tmp_path, [VISITS_GOAL])
    header = ("customer_id", "points")
    shop.deliver("visits", {"visits": ("in/visits_1.csv", csv_text(header, [("001", str(2**63 - 2)), ("002", "1")]).encode())})
    with pytest.raises(InputError) as failed:
        shop.deliver("visits", {"visits": ("in/visits_2.csv", csv_text(header, [("002", "5"), ("001", "3")]).encode())})
    message = str(failed.value)
    assert "in/visits_2.csv line 3, column 'visit_points'" in message
    assert "the sum 'visit_points' of key '001' would become 9223372036854775809" in message
    assert shop.store("SELECT customer_number, visit_points FROM profiles ORDER BY 1") == [("001", 2**63 - 2), ("002", 1)]
    assert shop.store("SELECT count(*) FROM deliveries") == [(1,)]
