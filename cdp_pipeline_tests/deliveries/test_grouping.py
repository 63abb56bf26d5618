"""Which files form a delivery: the seed's wildcard rule, regular expressions, waiting for a
missing partner, the ambiguous partner as a named problem, several links per file and a chain of
three files."""

from __future__ import annotations

import pytest

from cdp_pipeline.config.connection import ProfileImportGoal
from cdp_pipeline.deliveries import scan_deliveries
from cdp_pipeline.transports.base import RemoteFile


def _goal(root: dict, linked: list[dict] | None = None, **files) -> ProfileImportGoal:
    return ProfileImportGoal.model_validate(
        {
            "name": "orders",
            "type": "import_profiles",
            "files": {"directory": "in", "root": root, "linked": linked or [], **files},
            "identifiers": [{"column": "customer_id", "property": "customer_number"}],
        }
    )


def _listing(*names: str, mtime: float = 1000.0) -> list[RemoteFile]:
    return [RemoteFile(path=f"in/{name}", size=10, mtime=mtime + index) for index, name in enumerate(names)]


ORDERS_WITH_LINES = _goal(
    {"name": "orders", "pattern": "orders_20*.csv"},
    [{"name": "order_lines", "pattern": "order_lines_20*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
)


def test_wildcard_value_of_the_root_selects_the_linked_file():
    """The seed: orders_20*.csv selecting orders_20244.csv needs order_lines_20244.csv."""
    scan = scan_deliveries("c", ORDERS_WITH_LINES, _listing("orders_20244.csv", "order_lines_20244.csv", "order_lines_20245.csv"))
    assert [({k: f.name for k, f in d.files.items()}) for d in scan.deliveries] == [
        {"orders": "orders_20244.csv", "order_lines": "order_lines_20244.csv"}
    ]
    assert scan.deliveries[0].partition_key == "orders:orders_20244.csv"
    assert scan.problems == []


def test_missing_partner_waits_and_names_the_linked_file():
    scan = scan_deliveries("c", ORDERS_WITH_LINES, _listing("orders_20244.csv", "order_lines_20245.csv"))
    assert scan.deliveries == []
    assert scan.waiting == ["orders_20244.csv: waiting for its linked file 'order_lines' (pattern 'order_lines_20*.csv')"]
    # Once the partner arrives, the delivery forms.
    later = scan_deliveries("c", ORDERS_WITH_LINES, _listing("orders_20244.csv", "order_lines_20245.csv", "order_lines_20244.csv"))
    assert [d.root.name for d in later.deliveries] == ["orders_20244.csv"]


def test_ambiguous_partner_is_a_named_problem():
    goal = _goal(
        {"name": "orders", "pattern": "orders_*.csv"},
        [{"name": "order_lines", "pattern": "lines_*_*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
    )
    scan = scan_deliveries("c", goal, _listing("orders_1.csv", "lines_1_a.csv", "lines_1_b.csv"))
    assert scan.deliveries == []
    assert len(scan.problems) == 1
    assert "orders_1.csv: linked file 'order_lines' is ambiguous" in scan.problems[0]
    assert "lines_1_a.csv" in scan.problems[0] and "lines_1_b.csv" in scan.problems[0]


def test_question_mark_wildcard_and_several_wildcards_carry_over_in_order():
    goal = _goal(
        {"name": "orders", "pattern": "orders_?_*.csv"},
        [{"name": "order_lines", "pattern": "lines_?_*.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
    )
    scan = scan_deliveries("c", goal, _listing("orders_a_2024.csv", "lines_a_2024.csv", "lines_b_2024.csv", "lines_a_2025.csv"))
    assert [d.files["order_lines"].name for d in scan.deliveries] == ["lines_a_2024.csv"]


def test_regular_expression_capture_groups_must_agree():
    goal = _goal(
        {"name": "orders", "pattern": r"orders_(\d{8})\.csv", "regex": True},
        [{"name": "order_lines", "pattern": r"order_lines_(\d{8})\.csv", "parent": "orders", "link": {"order_id": "order_id"}, "regex": True}],
    )
    listing = _listing("orders_20260115.csv", "orders_2026011.csv", "order_lines_20260115.csv", "order_lines_20260116.csv", "orders_20260115.csv.bak")
    scan = scan_deliveries("c", goal, listing)
    assert [(d.root.name, d.files["order_lines"].name) for d in scan.deliveries] == [("orders_20260115.csv", "order_lines_20260115.csv")]


def test_several_links_per_file_and_a_chain_of_three_files():
    goal = _goal(
        {"name": "orders", "pattern": "orders_*.csv"},
        [
            {"name": "order_lines", "pattern": "order_lines_*.csv", "parent": "orders", "link": {"order_id": "order_id", "shop": "shop"}},
            {"name": "line_notes", "pattern": "line_notes_*.csv", "parent": "order_lines", "link": {"order_id": "order_id", "line_number": "line_number"}},
        ],
    )
    assert goal.files.linked[0].link == {"order_id": "order_id", "shop": "shop"}
    scan = scan_deliveries("c", goal, _listing("orders_7.csv", "order_lines_7.csv", "line_notes_7.csv", "line_notes_8.csv"))
    assert [{k: f.name for k, f in d.files.items()} for d in scan.deliveries] == [
        {"orders": "orders_7.csv", "order_lines": "order_lines_7.csv", "line_notes": "line_notes_7.csv"}
    ]
    waiting = scan_deliveries("c", goal, _listing("orders_7.csv", "order_lines_7.csv"))
    assert waiting.deliveries == [] and "'line_notes'" in waiting.waiting[0]


def test_a_file_matching_a_linked_pattern_is_never_a_root():
    goal = _goal(
        {"name": "orders", "pattern": "orders_*.csv"},
        [{"name": "order_lines", "pattern": "orders_*_lines.csv", "parent": "orders", "link": {"order_id": "order_id"}}],
    )
    scan = scan_deliveries("c", goal, _listing("orders_1.csv", "orders_1_lines.csv"))
    assert [d.root.name for d in scan.deliveries] == ["orders_1.csv"]
    assert scan.waiting == [] and scan.problems == []


def test_root_and_linked_file_with_the_same_pattern_is_refused_at_load():
    with pytest.raises(ValueError, match="root file's name must differ"):
        _goal({"name": "orders", "pattern": "orders_*.csv"}, [{"name": "lines", "pattern": "orders_*.csv", "parent": "orders", "link": {"a": "a"}}])


def test_temporary_uploads_and_markers_and_oldest_first():
    goal = _goal({"name": "orders", "pattern": "orders_*.csv"}, readiness={"mode": "marker", "marker_suffix": ".ready"})
    listing = [
        RemoteFile("in/orders_b.csv", 1, 50.0),
        RemoteFile("in/orders_b.csv.ready", 0, 51.0),
        RemoteFile("in/orders_a.csv", 1, 50.0),
        RemoteFile("in/orders_a.csv.ready", 0, 52.0),
        RemoteFile("in/orders_c.csv", 1, 10.0),  # no marker yet
        RemoteFile("in/orders_d.csv.part", 1, 1.0),  # still uploading under a temporary name
    ]
    scan = scan_deliveries("c", goal, listing)
    # Equal mtimes are ordered by path, never by listing order.
    assert [d.root.name for d in scan.deliveries] == ["orders_a.csv", "orders_b.csv"]
    assert any(w.startswith("orders_c.csv: not complete yet") for w in scan.waiting)
    assert not any("orders_d" in w for w in scan.waiting + scan.problems)
