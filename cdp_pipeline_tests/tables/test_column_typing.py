"""parse_typed on small frames of text columns, as read_delimited returns them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import InputError
from cdp_pipeline.tables.column_typing import parse_typed


def frame_of(**columns: list[str | None]) -> pl.DataFrame:
    height = len(next(iter(columns.values())))
    return pl.DataFrame({**columns, "_line": list(range(2, height + 2))}, schema={**{c: pl.String for c in columns}, "_line": pl.Int64})


def test_parse_integer_decimal_boolean(tmp_path: Path) -> None:
    frame = frame_of(
        n=["7", " -12 ", None, "1 000"],
        amount=["1234.5", "0.00001", "-3", "12"],
        flag=["TRUE", "no", "Y", "0"],
        name=["a", "b", "c", "d"],
    )
    typed, problems = parse_typed(
        frame, {"n": ColumnFormat(type="integer"), "amount": ColumnFormat(type="decimal"), "flag": ColumnFormat(type="boolean")}, "f.csv"
    )
    assert problems == []
    assert typed.schema == pl.Schema({"n": pl.Int64, "amount": pl.Decimal(18, 4), "flag": pl.Boolean, "name": pl.String, "_line": pl.Int64})
    assert typed["n"].to_list() == [7, -12, None, 1000]
    assert typed["amount"].to_list() == [Decimal("1234.5"), Decimal("0"), Decimal("-3"), Decimal("12")]
    assert typed["flag"].to_list() == [True, False, True, False]


def test_parse_decimal_comma() -> None:
    frame = frame_of(amount=["1.234,56", "12,5", "-0,01", "1234567,8", "1.5", "1,234.56"])
    typed, problems = parse_typed(frame, {"amount": ColumnFormat(type="decimal")}, "f.csv", decimal_comma=True)
    assert typed["amount"].to_list()[:4] == [Decimal("1234.56"), Decimal("12.5"), Decimal("-0.01"), Decimal("1234567.8")]
    # "1.5" is not a decimal-comma number: reported, never silently read as 15
    assert [(p.line, p.column) for p in problems] == [(6, "amount"), (7, "amount")]
    assert "decimal comma" in problems[0].reason


def test_parse_dates_with_formats() -> None:
    frame = frame_of(
        ordered=["01/31/2024 13:45", "2/1/2024 07:05", "31/01/2024 13:45"],
        birthday=["31.01.1990", "01.02.2000", "2000-02-01"],
        iso_day=["2024-01-31", None, "2024-02-30"],
    )
    typed, problems = parse_typed(
        frame,
        {
            "ordered": ColumnFormat(type="datetime", format="%m/%d/%Y %H:%M"),
            "birthday": ColumnFormat(type="date", format="%d.%m.%Y"),
            "iso_day": ColumnFormat(type="date"),
        },
        "orders.csv",
    )
    assert typed.schema["ordered"] == pl.Datetime("us") and typed.schema["birthday"] == pl.Date
    assert typed["ordered"].to_list()[:2] == [dt.datetime(2024, 1, 31, 13, 45), dt.datetime(2024, 2, 1, 7, 5)]
    assert typed["birthday"].to_list()[:2] == [dt.date(1990, 1, 31), dt.date(2000, 2, 1)]
    assert typed["iso_day"].to_list() == [dt.date(2024, 1, 31), None, None]
    assert [(p.line, p.column) for p in problems] == [(4, "ordered"), (4, "birthday"), (4, "iso_day")]
    ordered = problems[0]
    assert ordered.file == "orders.csv"
    assert ordered.reason == "cannot parse '31/01/2024 13:45' as DATETIME (format %m/%d/%Y %H:%M)"
    assert problems[1].reason == "cannot parse '2000-02-01' as DATE (format %d.%m.%Y)"
    assert ordered.fix == "Correct the value or the column's format in csv.columns"


def test_parse_iso_datetimes_without_format() -> None:
    frame = frame_of(at=["2024-01-31T10:11:12", "2024-01-31 10:11:12.5", "2024-01-31T10:11", "2024-01-31T10:11:12+02:00", "2024-01-31T10:11:12Z", "2024-01-31"])
    typed, problems = parse_typed(frame, {"at": ColumnFormat(type="datetime")}, "f.csv")
    assert problems == []
    assert typed["at"].to_list() == [
        dt.datetime(2024, 1, 31, 10, 11, 12),
        dt.datetime(2024, 1, 31, 10, 11, 12, 500000),
        dt.datetime(2024, 1, 31, 10, 11),
        dt.datetime(2024, 1, 31, 8, 11, 12),
        dt.datetime(2024, 1, 31, 10, 11, 12),
        dt.datetime(2024, 1, 31),
    ]


def test_parse_list() -> None:
    frame = frame_of(tags=["a| b |c", "x||", None, " | "], other=["a,b", "c", None, ""])
    typed, problems = parse_typed(
        frame, {"tags": ColumnFormat(type="list"), "other": ColumnFormat(type="list", list_separator=",")}, "f.csv"
    )
    assert problems == []
    assert typed.schema["tags"] == pl.List(pl.String)
    assert typed["tags"].to_list() == [["a", "b", "c"], ["x"], None, None]
    assert typed["other"].to_list() == [["a", "b"], ["c"], None, None]


def test_unparseable_cells_are_reported_with_line_and_column_and_nulled() -> None:
    frame = frame_of(age=["12", "12abc", "  ", "x" * 40], flag=["maybe", "yes", None, "n"])
    typed, problems = parse_typed(frame, {"age": ColumnFormat(type="integer"), "flag": ColumnFormat(type="boolean")}, "p.csv")
    assert typed["age"].to_list() == [12, None, None, None]
    assert typed["flag"].to_list() == [None, True, None, False]
    assert [(p.line, p.column) for p in problems] == [(2, "flag"), (3, "age"), (5, "age")]
    assert problems[1].reason == "cannot parse '12abc' as INTEGER"
    assert problems[2].reason == f"cannot parse '{'x' * 20}…' as INTEGER"


def test_problems_are_capped_with_a_summary() -> None:
    frame = frame_of(n=["bad"] * 150, d=["x"] * 150)
    typed, problems = parse_typed(frame, {"n": ColumnFormat(type="integer"), "d": ColumnFormat(type="date")}, "p.csv")
    assert len(problems) == 101
    assert all(p.line is not None for p in problems[:100])
    assert problems[-1].line is None and "300 cells" in problems[-1].reason and "n: 150" in problems[-1].reason
    assert len(parse_typed(frame, {"n": ColumnFormat(type="integer")}, "p.csv", max_problems=500)[1]) == 150


def test_parse_typed_unknown_column_is_an_error() -> None:
    with pytest.raises(InputError, match="does not have"):
        parse_typed(frame_of(a=["1"]), {"b": ColumnFormat(type="integer")}, "p.csv")
