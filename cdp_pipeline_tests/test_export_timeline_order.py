"""``timeline.order``: the documented order (events by event time and id, items by their event's
place and item_index) and ``none`` (the store's order, no sort). Both files are compared with what
plain Python makes of the rows inserted: the same rows and cells either way, in the documented
order unless the goal opts out."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pydantic
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.exports.files import _timestamp_literal
from cdp_pipeline.store.segments import refresh_memberships
from cdp_pipeline_tests.test_exporting import T0, Runner, make_goal, rows_of

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {"email": {"type": "text"}},
        "event_types": {
            "order": {
                "properties": {"channel": {"type": "text"}, "total": {"type": "decimal"}},
                "nested": {"line": {"properties": {"sku": {"type": "text"}, "quantity": {"type": "integer"}}}},
            }
        },
        "segments": {"reachable": {"condition": "email IS NOT NULL"}},
    }
)
TEXTS = ["web", "=1+1", "+31", "-x", "@a", "\tt", "é=", "", None]
TOTALS = ["0", "100", "-0.5", "19.99", "0.0001", None]
SINCE, UNTIL = T0 - timedelta(days=10), T0 - timedelta(days=2)


def guarded(value: str | None) -> str:
    return "" if value is None else ("'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value)


def decimal_text(value: str | None) -> str:
    if value is None:
        return ""
    trimmed = str(Decimal(value).quantize(Decimal("0.0001"))).rstrip("0")
    return trimmed + "0" if trimmed.endswith(".") else trimmed


@pytest.fixture
def stored(tmp_path: Path) -> tuple[ProjectConfig, list[tuple], list[tuple]]:
    """20,000 events over ten of DuckDB's vectors, stored in random order, with 1–3 items each
    (also shuffled); half the profiles have no e-mail and are not exported; two threads. Some
    events sit exactly on the period's bounds and some share a time."""
    project = ProjectConfig(
        config_dir=tmp_path, home=tmp_path / "home", store=StoreSettings(path="store.duckdb", published_path=None, threads=2), catalog=CATALOG
    )
    generator = random.Random(15)
    times = [SINCE, UNTIL, SINCE + timedelta(seconds=1), UNTIL - timedelta(seconds=1)]
    events = [
        (
            f"E{n:06d}",
            f"p{n % 400}",
            times[(n // 50) % 4] if n % 50 == 0 else T0 - timedelta(minutes=generator.randrange(20 * 24 * 60)),
            TEXTS[n % len(TEXTS)],
            TOTALS[n % len(TOTALS)],
        )
        for n in range(20_000)
    ]
    lines = [(e[0], index, TEXTS[(n + index) % len(TEXTS)], index - 2) for n, e in enumerate(events) for index in range(1, 1 + generator.randrange(1, 4))]
    generator.shuffle(events)
    generator.shuffle(lines)
    with open_writer(project.store_path, CATALOG) as conn:
        conn.execute(
            "INSERT INTO profiles (profile_id, email, created_at, updated_at) "
            "SELECT 'p' || i, CASE WHEN i % 2 = 0 THEN 'x' || i || '@example.com' END, $t, $t FROM range(400) r(i)",
            {"t": T0},
        )
        event_frame = pl.DataFrame(events, schema=["event_id", "profile_id", "event_time", "channel", "total"], orient="row")  # noqa: F841
        line_frame = pl.DataFrame(lines, schema=["event_id", "item_index", "sku", "quantity"], orient="row")  # noqa: F841
        conn.execute(
            "INSERT INTO timeline_order (event_id, profile_id, event_time, channel, total) "
            "SELECT event_id, profile_id, event_time, channel, CAST(total AS DECIMAL(18,4)) FROM event_frame"
        )
        conn.execute("INSERT INTO timeline_order__line (event_id, item_index, sku, quantity) SELECT * FROM line_frame")
        refresh_memberships(conn, CATALOG, T0)
    return project, events, lines


def expected_files(events: list[tuple], lines: list[tuple], *, since: datetime | None, until: datetime | None) -> tuple[list[list[str]], list[list[str]]]:
    """The two files in the documented order, from the inserted rows: even profiles only (the
    ones with an e-mail), events in [since, until)."""
    kept = [
        e for e in events
        if int(e[1][1:]) % 2 == 0 and (since is None or e[2] >= since) and (until is None or e[2] < until)
    ]
    kept.sort(key=lambda e: (e[2], e[0]))
    rank = {e[0]: index for index, e in enumerate(kept)}
    order_rows = [[guarded(e[0]), e[1], e[2].strftime("%Y-%m-%d %H:%M:%S"), guarded(e[3]), decimal_text(e[4])] for e in kept]
    line_rows = [
        [guarded(line[0]), str(line[1]), guarded(line[2]), str(line[3])]
        for line in sorted((line for line in lines if line[0] in rank), key=lambda line: (rank[line[0]], line[1]))
    ]
    return order_rows, line_rows


@pytest.mark.parametrize("period", [False, True], ids=["all", "since_until"])
def test_documented_order_and_no_order_write_the_same_rows(stored, tmp_path: Path, period: bool):
    project, events, lines = stored
    since, until = (SINCE, UNTIL) if period else (None, None)
    bounds = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()} if period else {}
    want_orders, want_lines = expected_files(events, lines, since=since, until=until)
    assert want_orders and want_lines
    runner = Runner(project, tmp_path / "remote")
    columns = [{"header": "id", "profile_id": True}]
    runner(make_goal(name="ordered", segment="reachable", columns=columns, timeline={"directory": "ordered", **bounds}))
    runner(make_goal(name="unordered", segment="reachable", columns=columns, timeline={"directory": "unordered", "order": "none", **bounds}))

    def read(directory: str, name: str) -> list[list[str]]:
        return rows_of(runner.read(f"{directory}/{name}"))

    assert read("ordered", "order.csv") == [["event_id", "profile_id", "event_time", "channel", "total"], *want_orders]
    assert read("ordered", "line.csv") == [["event_id", "item_index", "sku", "quantity"], *want_lines]
    # No order asked for: the same header and the same rows (as a multiset), in any order.
    unordered_orders, unordered_lines = read("unordered", "order.csv"), read("unordered", "line.csv")
    assert unordered_orders[0] == ["event_id", "profile_id", "event_time", "channel", "total"]
    assert sorted(unordered_orders[1:]) == sorted(want_orders)
    assert unordered_lines[0] == ["event_id", "item_index", "sku", "quantity"]
    assert sorted(unordered_lines[1:]) == sorted(want_lines)


def test_timeline_order_accepts_only_its_two_values():
    assert make_goal(timeline={}).timeline.order == "event_time"  # type: ignore[union-attr]
    assert make_goal(timeline={"order": "none"}).timeline.order == "none"  # type: ignore[union-attr]
    with pytest.raises(pydantic.ValidationError, match="order"):
        make_goal(timeline={"order": "event_id"})


def test_a_period_bound_with_an_offset_is_the_same_instant_in_the_store_s_utc():
    """DuckDB drops the offset of a TIMESTAMP literal; the bound must be converted, never shifted."""
    aware = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    (bound,) = duckdb.sql(f"SELECT {_timestamp_literal(aware)}").fetchone()
    assert bound == datetime(2026, 1, 1, 8, 0)
    (naive,) = duckdb.sql(f"SELECT {_timestamp_literal(datetime(2026, 1, 1, 10, 0, 0, 5))}").fetchone()
    assert naive == datetime(2026, 1, 1, 10, 0, 0, 5)
