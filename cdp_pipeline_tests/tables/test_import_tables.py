"""build_import_tables on small files written here, with real Polars: encodings and gzip through
the whole path, duplicate keys, several identifiers, processors per file, mappings from linked
files, orphans, schema drift, cell rejects (sum with a non-numeric value), row identities."""

from __future__ import annotations

import gzip
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import GroupImportGoal, ProfileImportGoal
from cdp_pipeline.errors import ConfigError, InputError
from cdp_pipeline.tables.import_tables import build_import_tables, row_identities
from cdp_pipeline.tables.staged import StagedImport, write_reject_report

RUN_TIME = datetime(2026, 1, 15, 12, 0)

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "customer_number": {"type": "text", "unique": True},
            "email": {"type": "text", "unique": True},
            "first_name": {"type": "text"},
            "city": {"type": "text"},
            "tier": {"type": "text"},
            "tags": {"type": "list"},
            "spend": {"type": "decimal"},
            "orders": {"type": "integer"},
            "items_bought": {"type": "integer"},
            "notes": {"type": "list"},
            "score": {"type": "integer"},
            "household_id": {"type": "text"},
        },
        "group_types": {
            "household": {
                "profile_property": "household_id",
                "properties": {"name": {"type": "text"}, "city": {"type": "text"}, "size": {"type": "integer"}, "members": {"type": "list"}},
            }
        },
        "event_types": {
            "order": {
                "properties": {"total": {"type": "decimal"}},
                "nested": {"order_line": {"properties": {"product_id": {"type": "text"}, "quantity": {"type": "integer"}}}},
            }
        },
    }
)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _profiles_goal(**overrides) -> ProfileImportGoal:
    spec = {
        "name": "customers",
        "type": "import_profiles",
        "files": {"root": {"name": "profiles", "pattern": "profiles_*.csv"}},
        "identifiers": [{"column": "customer_id", "property": "customer_number"}],
        "allow_new_profiles": True,
        "mappings": [{"column": "first_name", "property": "first_name"}],
    }
    spec.update(overrides)
    if overrides.get("on_error") == "skip_rows":
        # These small files reject rows on purpose, far above the default share guard (5 %); the
        # guard itself is tested in scenarios/.
        spec.setdefault("max_reject_share", 1)
    return ProfileImportGoal.model_validate(spec)


def _build(goal, paths: dict[str, Path]) -> StagedImport:
    return build_import_tables(goal, CATALOG, paths, {name: path.name for name, path in paths.items()}, RUN_TIME)


def _by_key(staged: StagedImport) -> dict[str, dict]:
    return {row["_key"]: row for row in staged.records.to_dicts()}


# ---------------------------------------------------------------- encodings, BOM, gzip


def test_cp1250_file(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id;first_name;city\nC1;Łukasz;Kraków\nC2;Žofie;Plzeň\n", "cp1250")
    goal = _profiles_goal(
        files={"root": {"name": "profiles", "pattern": "*.csv", "csv": {"delimiter": ";", "encoding": "cp1250"}}},
        mappings=[{"column": "first_name", "property": "first_name"}, {"column": "city", "property": "city"}],
    )
    records = _by_key(_build(goal, {"profiles": path}))
    assert records["C1"]["first_name"] == "Łukasz" and records["C1"]["city"] == "Kraków"
    assert records["C2"]["first_name"] == "Žofie" and records["C2"]["city"] == "Plzeň"


def test_cp1250_file_read_as_utf8_is_a_named_error(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name\nC1,Łukasz\n", "cp1250")
    with pytest.raises(InputError) as raised:
        _build(_profiles_goal(), {"profiles": path})
    assert "p.csv" in str(raised.value)


def test_utf8_bom_does_not_reach_the_first_column_name(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfcustomer_id,first_name\r\nC1,Ann\r\n")
    staged = _build(_profiles_goal(), {"profiles": path})
    assert _by_key(staged)["C1"]["first_name"] == "Ann"  # and no stray \r from CRLF


def test_gzip_file(tmp_path):
    path = tmp_path / "p.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"customer_id,first_name\nC1,Ann\nC2,Bob\n")
    staged = _build(_profiles_goal(), {"profiles": path})
    assert sorted(_by_key(staged)) == ["C1", "C2"] and staged.rows_read == 2


# ---------------------------------------------------------------- duplicate identifiers


def test_duplicate_identifiers_last_row_wins_add_collects_sum_adds(tmp_path):
    path = _write(
        tmp_path / "p.csv",
        "customer_id,first_name,tier,tags,spend\n"
        "C1,Ann,gold,a|b,10.50\n"
        "C2,Bob,,x,1\n"
        "C1,Anne,,b|c,2.25\n",
    )
    goal = _profiles_goal(
        mappings=[
            {"column": "first_name", "property": "first_name", "rule": "set"},
            {"column": "tier", "property": "tier", "rule": "set_or_clear"},
            {"column": "tags", "property": "tags", "rule": "add"},
            {"column": "spend", "property": "spend", "rule": "sum"},
        ]
    )
    staged = _build(goal, {"profiles": path})
    assert staged.records.height == 2  # one record per key, never two updates of one key
    c1 = _by_key(staged)["C1"]
    assert c1["first_name"] == "Anne"  # last row wins
    assert c1["tier"] is None  # last row wins for set_or_clear too: its empty value will clear
    assert c1["tags"] == ["a", "b", "c"]  # distinct, in file order
    assert c1["spend"] == Decimal("12.75")
    assert c1["_line"] == 4 and c1["_rows"] == 2
    # The sum's source rows stay one per row, each with its identity, for the row delta.
    assert sorted(staged.sum_rows["spend"]["value"].to_list()) == [Decimal("1"), Decimal("2.25"), Decimal("10.5")]


# ---------------------------------------------------------------- several identifiers


def test_several_identifiers_key_rows_by_the_first_non_empty_one(tmp_path):
    path = _write(
        tmp_path / "p.csv",
        "customer_id,email,first_name\n"
        "C1,ann@x.com,Ann\n"
        ",bob@x.com,Bob\n"
        ",ann@x.com,Annie\n"  # no customer id, but Ann's e-mail: joins C1 within the delivery
        ",,Nobody\n"
        ",  ,Blank\n",
    )
    goal = _profiles_goal(
        identifiers=[{"column": "customer_id", "property": "customer_number"}, {"column": "email", "property": "email"}],
        on_error="skip_rows",
    )
    staged = _build(goal, {"profiles": path})
    assert staged.identifiers == ["customer_number", "email"]
    records = {(r["_key"], r["_key_index"]): r for r in staged.records.to_dicts()}
    assert set(records) == {("C1", 0), ("bob@x.com", 1)}
    assert records[("C1", 0)]["first_name"] == "Annie"
    assert records[("C1", 0)]["_ident_1"] == "ann@x.com"
    assert records[("bob@x.com", 1)]["_ident_0"] is None
    rejected = [(p.line, p.column, p.reason) for p in staged.rejects]
    empty = "every identifier is empty (customer_id, email)"
    assert rejected == [(5, "customer_id", empty), (6, "customer_id", empty)]


def test_empty_identifier_fails_the_delivery_by_default(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name\nC1,Ann\n,Bob\n")
    with pytest.raises(InputError) as raised:
        _build(_profiles_goal(), {"profiles": path})
    assert "p.csv line 3, column 'customer_id': empty identifier" in str(raised.value)


# ---------------------------------------------------------------- sum with a non-numeric value (cell rejects)


def test_sum_with_a_non_numeric_value_is_a_reject_for_that_cell(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name,spend\nC1,Ann,10\nC2,Bob,12abc\nC2,Bob,1\n")
    mappings = [{"column": "first_name", "property": "first_name"}, {"column": "spend", "property": "spend", "rule": "sum"}]
    with pytest.raises(InputError) as raised:
        _build(_profiles_goal(mappings=mappings), {"profiles": path})
    assert "p.csv line 3, column 'spend': cannot parse '12abc'" in str(raised.value)

    staged = _build(_profiles_goal(mappings=mappings, on_error="skip_rows"), {"profiles": path})
    assert [(p.line, p.column) for p in staged.rejects] == [(3, "spend")]
    c2 = _by_key(staged)["C2"]
    assert c2["first_name"] == "Bob" and c2["spend"] == Decimal("1")  # the row's other values still import
    assert staged.sum_rows["spend"]["value"].to_list() == [Decimal("10"), Decimal("1")]


def test_a_failed_cell_under_set_or_clear_leaves_the_row_out(tmp_path):
    """An empty value would clear the stored one, so the row must not reach the store."""
    catalog_goal = _profiles_goal(
        mappings=[{"column": "first_name", "property": "first_name"}, {"column": "orders", "property": "orders", "rule": "set_or_clear"}],
        on_error="skip_rows",
    )
    path = _write(tmp_path / "p.csv", "customer_id,first_name,orders\nC1,Ann,3\nC1,Anne,many\n")
    staged = _build(catalog_goal, {"profiles": path})
    c1 = _by_key(staged)["C1"]
    assert c1["orders"] == 3 and c1["first_name"] == "Ann"
    assert [(p.line, p.column) for p in staged.rejects] == [(3, "orders")]


def test_processor_made_column_is_typed_and_reported_per_cell(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name\nC1,Ann\n")
    goal = _profiles_goal(
        processors=[{"type": "fixed_value", "column": "orders", "value": "one"}],
        mappings=[{"column": "first_name", "property": "first_name"}, {"column": "orders", "property": "orders", "rule": "sum"}],
        on_error="skip_rows",
    )
    staged = _build(goal, {"profiles": path})
    assert [(p.line, p.column) for p in staged.rejects] == [(2, "orders")]
    assert _by_key(staged)["C1"]["first_name"] == "Ann" and _by_key(staged)["C1"]["orders"] is None


# ---------------------------------------------------------------- processors


def test_custom_processor(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name\nC1,Ann\n")
    goal = _profiles_goal(
        processors=[{"type": "custom", "function": "cdp_pipeline_tests.tables.custom_processor_example:add_score", "options": {"points": 7}}],
        mappings=[{"column": "score", "property": "score", "rule": "sum"}],
    )
    assert _by_key(_build(goal, {"profiles": path}))["C1"]["score"] == 7


ORDERS_FILES = {
    "root": {"name": "orders", "pattern": "orders_*.csv"},
    "linked": [{"name": "order_lines", "pattern": "order_lines_*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
}
ORDERS_TIMELINE = [
    {
        "event_type": "order", "file": "orders", "event_id": "order_id", "event_time": "order_date",
        "properties": {"total": "total"},
        "nested": [{"type": "order_line", "file": "order_lines", "properties": {"product_id": "product_id", "quantity": "quantity"}}],
    }
]


def _orders(tmp_path: Path, orders: str, lines: str) -> dict[str, Path]:
    return {"orders": _write(tmp_path / "orders_1.csv", orders), "order_lines": _write(tmp_path / "order_lines_1.csv", lines)}


def test_processors_run_on_the_files_they_name(tmp_path):
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n1, c1 ,2026-01-01T10:00:00,5\n",
        "order_id,product_id,quantity\n1, sku-a ,2\n",
    )
    goal = _profiles_goal(
        files=ORDERS_FILES,
        timeline=ORDERS_TIMELINE,
        mappings=[],
        processors=[
            {"type": "trim", "columns": ["customer_id"]},  # default: the root file
            {"type": "uppercase", "columns": ["customer_id"], "files": ["orders"]},
            {"type": "trim", "columns": ["product_id"], "files": ["order_lines"]},
            {"type": "uppercase", "columns": ["product_id"], "files": ["order_lines"]},
        ],
    )
    staged = _build(goal, paths)
    assert staged.records["_key"].to_list() == ["C1"]
    assert staged.items["order/order_line"]["product_id"].to_list() == ["SKU-A"]


def test_nested_rows_without_a_key_are_keyed_by_content_and_numbered_where_it_repeats(tmp_path):
    """Order lines without a key column: the key is the row's content, and the same content twice
    in one order is two rows (occurrence 1 and 2); the same content in another order, or once,
    is occurrence 1."""
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n2,C1,2026-01-02T10:00:00,7\n",
        "order_id,product_id,quantity\n1,A,1\n1,B,2\n1,A,1\n2,A,1\n1,A,1\n",
    )
    goal = _profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[])
    items = _build(goal, paths).items["order/order_line"].sort("event_id", "item_index")
    cell, part = "\x1f", "\x1e"
    assert items.select("event_id", "item_index", "item_key").rows() == [
        ("1", 1, f"content{part}A{cell}1{part}1"),
        ("1", 2, f"content{part}B{cell}2{part}1"),
        ("1", 3, f"content{part}A{cell}1{part}2"),
        ("1", 4, f"content{part}A{cell}1{part}3"),
        ("2", 1, f"content{part}A{cell}1{part}1"),
    ]


@pytest.mark.parametrize("interleaved", [False, True])
def test_content_keys_and_positions_of_many_lines_match_a_count_in_plain_python(tmp_path, interleaved):
    """Thousands of lines over hundreds of orders, many repeating their order's content: repeats
    are found on hashes first and numbered among those rows only, so the numbering and the
    positions are checked here against a count over the file's text (and with the orders' lines
    interleaved, the positions' fallback)."""
    import random

    chooser = random.Random(15)
    orders = "order_id,customer_id,order_date,total\n" + "".join(f"{o},C{o % 7},2026-01-01T10:00:00,5\n" for o in range(300))
    rows = [(o, chooser.choice("ABC"), chooser.choice("12")) for o in range(300) for _ in range(chooser.randint(1, 12))]
    if interleaved:
        chooser.shuffle(rows)
    paths = _orders(tmp_path, orders, "order_id,product_id,quantity\n" + "".join(f"{o},{p},{q}\n" for o, p, q in rows))
    goal = _profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[])
    items = _build(goal, paths).items["order/order_line"]
    cell, part = "\x1f", "\x1e"
    positions: dict[str, int] = {}
    occurrences: dict[tuple[str, str], int] = {}
    expected = []
    for order, product, quantity in rows:
        event, content = str(order), f"{product}{cell}{quantity}"
        positions[event] = positions.get(event, 0) + 1
        occurrences[(event, content)] = occurrences.get((event, content), 0) + 1
        expected.append((event, positions[event], f"content{part}{content}{part}{occurrences[(event, content)]}"))
    assert sorted(items.select("event_id", "item_index", "item_key").rows()) == sorted(expected)
    assert any(key.endswith(f"{part}3") for _, _, key in expected)  # repeats were there to number


@pytest.mark.parametrize(
    "orders",
    [
        # Each order row has its own id: the lines of the order left out (empty time) have no event.
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n2,C1,2026-01-02T10:00:00,7\n3,C2,,9\n",
        # Order 1 twice, the later row without a time: its lines belong to the earlier row's event.
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n2,C1,2026-01-02T10:00:00,7\n3,C2,,9\n1,C1,,5\n",
    ],
)
@pytest.mark.parametrize(
    "lines",
    [
        "order_id,product_id,quantity\n1,A,1\n1,B,2\n2,C,1\n2,D,4\n2,E,1\n3,F,1\n",  # each order's lines together
        "order_id,product_id,quantity\n1,A,1\n2,C,1\n1,B,2\n3,F,1\n2,D,4\n2,E,1\n",  # interleaved
    ],
)
def test_nested_rows_join_their_event_and_are_numbered_in_file_order(tmp_path, orders, lines):
    """Expected values from the file text alone: a line belongs to the last order row of its id
    that has a time; item_index counts the event's lines in file order."""
    paths = _orders(tmp_path, orders, lines)
    goal = _profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[], on_error="skip_rows", max_reject_share=1)
    items = _build(goal, paths).items["order/order_line"]
    timed = {row.split(",")[0] for row in orders.splitlines()[1:] if row.split(",")[2]}
    expected, seen = [], {}
    for row in lines.splitlines()[1:]:
        order_id, product_id, _ = row.split(",")
        if order_id in timed:
            seen[order_id] = seen.get(order_id, 0) + 1
            expected.append((order_id, seen[order_id], product_id))
    assert items.select("event_id", "item_index", "product_id").rows() == expected


def test_processor_naming_an_unknown_file_is_refused_at_load():
    with pytest.raises(ValueError, match=r"processors.0.files: \['lines'\] are not files of this goal"):
        _profiles_goal(processors=[{"type": "trim", "columns": ["a"], "files": ["lines"]}])


def test_filter_on_a_linked_file_runs_before_linking(tmp_path):
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n",
        "order_id,product_id,quantity\n1,A,1\n1,TEST,1\n1,B,2\n",
    )
    goal = _profiles_goal(
        files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[],
        processors=[{"type": "filter_rows", "column": "product_id", "pattern": "^TEST$", "keep_matching": False, "files": ["order_lines"]}],
    )
    items = _build(goal, paths).items["order/order_line"]
    assert items["product_id"].to_list() == ["A", "B"] and items["item_index"].to_list() == [1, 2]


# ---------------------------------------------------------------- linked files: mappings, orphans, several links, three levels


def test_mappings_from_a_linked_file_resolve_per_key(tmp_path):
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n2,C1,2026-01-02T10:00:00,7\n3,C2,2026-01-02T10:00:00,1\n",
        "order_id,product_id,quantity\n1,A,1\n1,B,2\n2,A,4\n3,C,1\n",
    )
    goal = _profiles_goal(
        files=ORDERS_FILES,
        mappings=[
            {"column": "total", "property": "spend", "rule": "sum"},
            {"column": "quantity", "property": "items_bought", "rule": "sum", "file": "order_lines"},
            {"column": "product_id", "property": "tags", "rule": "add", "file": "order_lines"},
        ],
    )
    staged = _build(goal, paths)
    c1 = _by_key(staged)["C1"]
    assert (c1["spend"], c1["items_bought"], c1["tags"]) == (Decimal("12"), 7, ["A", "B"])
    assert _by_key(staged)["C2"]["items_bought"] == 1
    assert staged.sum_rows["items_bought"].height == 4


def test_orphan_nested_rows_error_by_default_or_rejected(tmp_path):
    orders = "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n"
    lines = "order_id,product_id,quantity\n1,A,1\n9,B,2\n"
    with pytest.raises(InputError) as raised:
        _build(_profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[]), _orders(tmp_path, orders, lines))
    assert "order_lines_1.csv line 3, column 'order_id': no matching row in 'orders' for order_id" in str(raised.value)

    files = {**ORDERS_FILES, "linked": [{**ORDERS_FILES["linked"][0], "orphans": "reject"}]}
    staged = _build(_profiles_goal(files=files, timeline=ORDERS_TIMELINE, mappings=[], on_error="skip_rows"), _orders(tmp_path, orders, lines))
    assert staged.items["order/order_line"]["product_id"].to_list() == ["A"]
    assert [(p.file, p.line) for p in staged.rejects] == [("order_lines_1.csv", 3)]


def test_several_links_per_file_and_three_levels(tmp_path):
    """order_lines link to orders by (order_id, shop); line_notes link to order_lines by
    (order_id, shop, line); a note's text reaches the profile through two joins."""
    files = {
        "root": {"name": "orders", "pattern": "orders_*.csv"},
        "linked": [
            {"name": "order_lines", "pattern": "order_lines_*.csv", "parent": "orders", "link": {"order_id": "order_id", "shop": "shop"}},
            {"name": "line_notes", "pattern": "line_notes_*.csv", "parent": "order_lines", "link": {"order_id": "order_id", "shop": "shop", "line": "line"}},
        ],
    }
    paths = {
        "orders": _write(tmp_path / "orders_1.csv", "order_id,shop,customer_id\n1,north,C1\n1,south,C2\n"),
        "order_lines": _write(tmp_path / "order_lines_1.csv", "order_id,shop,line,quantity\n1,north,1,2\n1,south,1,5\n1,south,2,1\n"),
        "line_notes": _write(tmp_path / "line_notes_1.csv", "order_id,shop,line,note\n1,south,2,gift\n1,north,1,rush\n1,south,1,rush\n"),
    }
    goal = _profiles_goal(
        files=files,
        mappings=[
            {"column": "quantity", "property": "items_bought", "rule": "sum", "file": "order_lines"},
            {"column": "note", "property": "notes", "rule": "add", "file": "line_notes"},
        ],
    )
    records = _by_key(_build(goal, paths))
    assert (records["C1"]["items_bought"], records["C1"]["notes"]) == (2, ["rush"])
    assert (records["C2"]["items_bought"], records["C2"]["notes"]) == (6, ["gift", "rush"])


def test_link_columns_stay_text_so_leading_zeros_link_exactly(tmp_path):
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n007,C1,2026-01-01T10:00:00,5\n7,C2,2026-01-01T10:00:00,5\n",
        "order_id,product_id,quantity\n007,A,1\n",
    )
    goal = _profiles_goal(files=ORDERS_FILES, mappings=[{"column": "product_id", "property": "tags", "rule": "add", "file": "order_lines"}])
    records = _by_key(_build(goal, paths))
    assert records["C1"]["tags"] == ["A"] and records["C2"]["tags"] is None


CUSTOMER_FILES = {
    "root": {"name": "customers", "pattern": "customers_*.csv"},
    "linked": [{"name": "orders", "pattern": "orders_*.csv", "parent": "customers", "link": {"customer_id": "customer_id"}}],
}


def _customers_and_orders(tmp_path: Path, customers: str, orders: str) -> dict[str, Path]:
    return {"customers": _write(tmp_path / "customers_1.csv", customers), "orders": _write(tmp_path / "orders_1.csv", orders)}


def test_a_link_column_mapped_to_an_integer_property_links_as_written(tmp_path):
    """The link compares "007" with "007"; only the stored property is typed (007 → 7). Typing
    the column first turned every order into an orphan of customer 7."""
    paths = _customers_and_orders(
        tmp_path, "customer_id,first_name\n007,Ann\n 008 ,Bob\n", "order_id,customer_id,total\nA,007,5\nB,008,2\nC,8,1\n"
    )
    files = {**CUSTOMER_FILES, "linked": [{**CUSTOMER_FILES["linked"][0], "orphans": "reject"}]}
    goal = _profiles_goal(
        files=files, on_error="skip_rows",
        mappings=[{"column": "customer_id", "property": "score"}, {"column": "total", "property": "spend", "rule": "sum", "file": "orders"}],
    )
    staged = _build(goal, paths)
    records = _by_key(staged)
    assert sorted(records) == ["007", "008"]
    assert (records["007"]["score"], records["007"]["spend"]) == (7, Decimal("5"))
    assert (records["008"]["score"], records["008"]["spend"]) == (8, Decimal("2"))
    # "8" is not "008": an orphan, rejected with its line.
    assert [(p.file, p.line, p.column) for p in staged.rejects] == [("orders_1.csv", 4, "customer_id")]


def test_a_link_column_mapped_to_a_list_property_links_and_fills_the_list(tmp_path):
    """A column used as link and as list property (rule add): the link stays text, the property
    gets the list (this crashed with Polars' "cannot cast List type")."""
    paths = _customers_and_orders(tmp_path, "customer_id,first_name\n007,Ann\n", "order_id,customer_id,total\nA,007,5\nB,007,2\n")
    goal = _profiles_goal(
        files=CUSTOMER_FILES,
        mappings=[{"column": "customer_id", "property": "tags", "rule": "add"}, {"column": "order_id", "property": "notes", "rule": "add", "file": "orders"}],
    )
    records = _by_key(_build(goal, paths))
    assert records["007"]["tags"] == ["007"] and records["007"]["notes"] == ["A", "B"]


def test_an_event_id_also_mapped_to_an_integer_event_property_stays_the_id_as_written(tmp_path):
    catalog = Catalog.model_validate(
        {**CATALOG.model_dump(), "event_types": {"order": {"properties": {"number": {"type": "integer"}}, "nested": {}}}}
    )
    path = _write(tmp_path / "orders_1.csv", "order_id,customer_id,order_date\n0042,C1,2026-01-01T10:00:00\n")
    goal = _profiles_goal(
        files={"root": {"name": "orders", "pattern": "orders_*.csv"}}, mappings=[],
        timeline=[{"event_type": "order", "file": "orders", "event_id": "order_id", "event_time": "order_date", "properties": {"number": "order_id"}}],
    )
    staged = build_import_tables(goal, catalog, {"orders": path}, {"orders": path.name}, RUN_TIME)
    assert staged.events["order"].select("event_id", "number").rows() == [("0042", 42)]


def test_identifiers_and_links_match_in_unicode_nfc(tmp_path):
    """"é" as one code point and as "e" + combining accent are one key."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    paths = _customers_and_orders(tmp_path, f"customer_id,first_name\n{composed},Ann\n", f"order_id,customer_id,total\nA,{decomposed},5\n")
    goal = _profiles_goal(files=CUSTOMER_FILES, mappings=[{"column": "total", "property": "spend", "rule": "sum", "file": "orders"}])
    records = _by_key(_build(goal, paths))
    assert list(records) == [composed] and records[composed]["spend"] == Decimal("5")


def test_nfc_in_a_column_of_ascii_and_accented_keys(tmp_path):
    """Only non-ASCII cells are normalised: in a column mixing both, each accented key still
    finds its composed form and each ASCII key stays as written."""
    paths = _customers_and_orders(
        tmp_path,
        "customer_id,first_name\nC1,Ann\ncaf\u00e9,Bo\n C2 ,Cy\nno\u00ebl,Di\n",
        "order_id,customer_id,total\nA,cafe\u0301,5\nB,C1,2\nC,noe\u0308l ,3\nD,C2,4\n",
    )
    goal = _profiles_goal(files=CUSTOMER_FILES, mappings=[{"column": "total", "property": "spend", "rule": "sum", "file": "orders"}])
    records = _by_key(_build(goal, paths))
    assert {key: records[key]["spend"] for key in records} == {
        "C1": Decimal("2"), "caf\u00e9": Decimal("5"), "C2": Decimal("4"), "no\u00ebl": Decimal("3"),
    }


def test_padded_link_values_link_and_keep_their_text(tmp_path):
    """Reliability #48: identifiers are trimmed, so link values are compared trimmed too; a value
    that is only blanks links nothing."""
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\nO1 ,C1,2026-01-01T10:00:00,5\n",
        "order_id,product_id,quantity\n O1,A,1\nO1,B,2\n   ,C,1\n",
    )
    files = {**ORDERS_FILES, "linked": [{**ORDERS_FILES["linked"][0], "orphans": "reject"}]}
    goal = _profiles_goal(files=files, timeline=ORDERS_TIMELINE, mappings=[], on_error="skip_rows")
    staged = _build(goal, paths)
    items = staged.items["order/order_line"]
    assert items["product_id"].to_list() == ["A", "B"] and items["item_index"].to_list() == [1, 2]
    # The event id is a key like the links (issue H): trimmed, so "O1 " today and "O1" tomorrow are
    # one event whose sums count once (this asserted the padded "O1 " before).
    assert items["event_id"].to_list() == ["O1", "O1"]
    assert [(p.line, p.column) for p in staged.rejects] == [(4, "order_id")]


# ---------------------------------------------------------------- schema drift


def test_missing_required_column_fails_before_anything_else(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,city\nC1,Oslo\n")
    goal = _profiles_goal(files={"root": {"name": "profiles", "pattern": "*.csv", "required_columns": ["email"]}})
    with pytest.raises(InputError) as raised:
        _build(goal, {"profiles": path})
    problems = {(p.line, p.column, p.reason) for p in raised.value.problems}
    assert problems == {(1, "email", "required column is missing from the header"), (1, "first_name", "required column is missing from the header")}
    assert "columns present: customer_id, city" in str(raised.value)


def test_extra_column_is_a_warning_or_fails_per_goal(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name,shoe_size\nC1,Ann,38\n")
    staged = _build(_profiles_goal(), {"profiles": path})
    assert staged.warnings == ["p.csv: columns not used by the goal were ignored: shoe_size"]
    strict = _profiles_goal(files={"root": {"name": "profiles", "pattern": "*.csv", "csv": {"extra_columns": "fail"}}})
    with pytest.raises(InputError, match=r"unexpected column\(s\) \['shoe_size'\]"):
        _build(strict, {"profiles": path})


def test_a_property_mapped_twice_is_a_config_error(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name,city\nC1,Ann,Oslo\n")
    goal = _profiles_goal(mappings=[{"column": "first_name", "property": "city"}, {"column": "city", "property": "city"}])
    with pytest.raises(ConfigError, match="mapped twice"):
        _build(goal, {"profiles": path})


# ---------------------------------------------------------------- events


def test_event_rows_without_a_time_are_rejected_and_event_ids_unique(tmp_path):
    paths = _orders(
        tmp_path,
        "order_id,customer_id,order_date,total\n1,C1,2026-01-01T10:00:00,5\n2,C1,,5\n1,C1,2026-01-03T10:00:00,6\n",
        "order_id,product_id,quantity\n1,A,1\n",
    )
    goal = _profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[], on_error="skip_rows")
    staged = _build(goal, paths)
    events = staged.events["order"]
    assert events["event_id"].to_list() == ["1"] and events["total"].to_list() == [Decimal("6")]  # last row of the id wins
    assert [(p.line, p.column, p.reason) for p in staged.rejects] == [(3, "order_date", "empty event time")]


# ---------------------------------------------------------------- groups


def test_group_goal_with_processors_bulk_mapping_and_a_linked_file(tmp_path):
    paths = {
        "households": _write(tmp_path / "households_1.csv", "household_id,name,city,size\nH1, jansen ,oslo,2\nH2,berg,bergen,3\n"),
        "members": _write(tmp_path / "members_1.csv", "household_id,member\nH1,ann\nH1,bob\nH2,cy\n"),
    }
    goal = GroupImportGoal.model_validate(
        {
            "name": "households", "type": "import_groups", "group_type": "household", "group_id": "household_id",
            "files": {
                "root": {"name": "households", "pattern": "households_*.csv"},
                "linked": [{"name": "members", "pattern": "members_*.csv", "parent": "households", "link": {"household_id": "household_id"}}],
            },
            "processors": [
                {"type": "trim", "columns": ["name"]},
                {"type": "uppercase", "columns": ["city"]},
                {"type": "uppercase", "columns": ["member"], "files": ["members"]},
            ],
            "bulk_mapping": {"rule": "set"},
            "mappings": [{"column": "member", "property": "members", "rule": "add", "file": "members"}],
        }
    )
    staged = _build(goal, paths)
    assert staged.target == "groups" and staged.identifier_property == "group_id"
    records = _by_key(staged)
    assert (records["H1"]["name"], records["H1"]["city"], records["H1"]["size"], records["H1"]["members"]) == ("jansen", "OSLO", 2, ["ANN", "BOB"])
    assert staged.rules == {"members": "add", "name": "set", "city": "set", "size": "set"}


# ---------------------------------------------------------------- row identities


def test_row_identities_ignore_other_columns_and_count_identical_rows():
    frame = pl.DataFrame({"_line": [2, 3, 4, 5], "customer_id": ["C1", "C1", "C2", "C1"], "total": ["5", "5", "5", None]})
    first = row_identities(frame, ["customer_id", "total"])
    # The same rows with another column, shuffled, in another order: the same identities per row.
    moved = pl.DataFrame({"_line": [9, 7, 8, 6], "extra": ["x", "y", "z", "w"], "total": [None, "5", "5", "5"], "customer_id": ["C1", "C2", "C1", "C1"]})
    second = row_identities(moved, ["customer_id", "total"])

    def identities(frame: pl.DataFrame, hashes: pl.DataFrame) -> list[tuple]:
        joined = frame.join(hashes, on="_line").sort("_line")
        return sorted(zip(joined["customer_id"], joined["total"], joined["_row_hash_hi"], joined["_row_hash_lo"], strict=True), key=str)

    assert identities(frame, first) == identities(moved, second)
    # Two identical (C1, 5) rows get two identities; an empty cell differs from a value.
    assert first.select(pl.struct("_row_hash_hi", "_row_hash_lo").n_unique()).item() == 4
    # Stable across runs and versions: md5, not Polars' seeded hash.
    again = row_identities(frame, ["customer_id", "total"])
    assert first.sort("_line").equals(again.sort("_line"))


def test_write_reject_report(tmp_path):
    path = _write(tmp_path / "p.csv", "customer_id,first_name,spend\nC1,Ann,x\n,Bob,1\n")
    goal = _profiles_goal(mappings=[{"column": "spend", "property": "spend", "rule": "sum"}], on_error="skip_rows")
    staged = _build(goal, {"profiles": path})
    assert write_reject_report(staged, tmp_path / "out" / "rejects.csv") == 2
    report = pl.read_csv(tmp_path / "out" / "rejects.csv")
    assert report.columns == ["file", "line", "column", "reason"]
    rows = report.rows()
    assert [row[:3] for row in rows] == [("p.csv", 2, "spend"), ("p.csv", 3, "customer_id")]
    assert rows[0][3].startswith("cannot parse 'x' as DECIMAL") and rows[0][3].endswith("Correct the value or the column's format in csv.columns")
    assert rows[1][3] == "empty identifier. every row needs a value in the identifier column"


def test_a_file_whose_every_event_time_fails_fails_whatever_the_share_allows(tmp_path):
    paths = _orders(tmp_path, "order_id,customer_id,order_date,total\nO1,C1,03/01/2026 10:00,5\nO2,C2,03/01/2026 11:00,7\n", "order_id,product_id,quantity\n")
    goal = _profiles_goal(files=ORDERS_FILES, timeline=ORDERS_TIMELINE, mappings=[], on_error="skip_rows", max_reject_share=1)
    with pytest.raises(InputError, match="none of the 2 event times parses.*event_time_format"):
        _build(goal, paths)
    # With the format declared the same file imports.
    timeline = [{**ORDERS_TIMELINE[0], "event_time_format": "%d/%m/%Y %H:%M"}]
    staged = _build(_profiles_goal(files=ORDERS_FILES, timeline=timeline, mappings=[]), paths)
    assert staged.events["order"]["event_time"].to_list() == [datetime(2026, 1, 3, 10), datetime(2026, 1, 3, 11)]
