"""Every registered processor kind, run through its Polars form and its SQL form over the same
text cells, gives the same cells; and both give the hand-written values below (the expectation
is written out, not computed by either form)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import duckdb
import polars as pl
import pytest
from pydantic import TypeAdapter

from cdp_pipeline.config.processors import Processor
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.tables.processors import PROCESSOR_KINDS, apply_processors, processors_in_sql, processors_sql

RUN_TIME = datetime(2026, 1, 15, 6, 0, 0)
SALT = "pepper"
PROCESSOR = TypeAdapter(Processor)


def _digest(value: str) -> str:
    return hashlib.sha256((SALT + value).encode()).hexdigest()


# (case id, processors, input columns, expected columns after the chain). Every row keeps an
# integer ``_id`` so both results can be put in input order.
CASES: list[tuple[str, list[dict[str, Any]], dict[str, list[str | None]], dict[str, list[str | None]]]] = [
    (
        "normalize_email",
        [{"type": "normalize_email", "columns": ["email"]}],
        {"email": ["  Anna@GMIAL.con ", "x@hotmial.com", "noat", "   ", None, "a@b@gmai.com", "\u00a0Bob@Yaho.com\u2003"]},
        {"email": ["anna@gmail.com", "x@hotmail.com", "noat", None, None, "a@b@gmai.com", "bob@yahoo.com"]},
    ),
    (
        "trim",
        [{"type": "trim", "columns": ["name"]}],
        {"name": ["  a ", "\u00a0b\u3000", "   ", None, "c", "\tin  side\n"]},
        {"name": ["a", "b", None, None, "c", "in  side"]},
    ),
    (
        "lowercase",
        [{"type": "lowercase", "columns": ["name"]}],
        {"name": ["ÀBC", None, "x", "KRAKÓW"]},
        {"name": ["àbc", None, "x", "kraków"]},
    ),
    (
        "uppercase",
        [{"type": "uppercase", "columns": ["name"]}],
        {"name": ["kraków", None, "Ab"]},
        {"name": ["KRAKÓW", None, "AB"]},
    ),
    (
        "filter_rows",
        [{"type": "filter_rows", "column": "email", "pattern": "@", "keep_matching": True}],
        {"email": ["a@b", "x", None, "@"]},
        {"email": ["a@b", "@"]},
    ),
    (
        "filter_rows_dropping",
        [{"type": "filter_rows", "column": "email", "pattern": "^x", "keep_matching": False}],
        {"email": ["a@b", "x", None]},
        {"email": ["a@b", None]},
    ),
    (
        "drop_empty",
        [{"type": "drop_empty", "columns": ["a", "b"]}],
        {"a": ["x", " ", "y", None, "z"], "b": ["1", "2", "  \u00a0", "3", "4"]},
        {"a": ["x", "z"], "b": ["1", "4"]},
    ),
    (
        "fixed_value",
        [{"type": "fixed_value", "column": "source", "value": "crm"}],
        {"source": ["a", None]},
        {"source": ["crm", "crm"]},
    ),
    (
        "concatenate",
        [{"type": "concatenate", "columns": ["first", "city"], "target": "full", "separator": " / "}],
        {"first": ["Ann", "", None, "Bo"], "city": ["Kr", "Wa", None, ""], "full": [None, None, "old", None]},
        {"first": ["Ann", "", None, "Bo"], "city": ["Kr", "Wa", None, ""], "full": ["Ann / Kr", "Wa", None, "Bo"]},
    ),
    (
        "map_values",
        [
            {"type": "map_values", "column": "keep", "mapping": {"a": "gold"}},
            {"type": "map_values", "column": "empty", "mapping": {"a": "gold"}, "unmapped": "empty"},
            {"type": "map_values", "column": "default", "mapping": {"a": "gold"}, "unmapped": "default", "default": "other"},
        ],
        {"keep": ["a", "b", None], "empty": ["a", "b", None], "default": ["a", "b", None]},
        {"keep": ["gold", "b", None], "empty": ["gold", None, None], "default": ["gold", "other", None]},
    ),
    (
        "current_date",
        [{"type": "current_date", "column": "day"}, {"type": "current_date", "column": "moment", "with_time": True}],
        {"day": ["x", None], "moment": [None, "y"]},
        {"day": ["2026-01-15", "2026-01-15"], "moment": ["2026-01-15 06:00:00", "2026-01-15 06:00:00"]},
    ),
    (
        "remove_null_strings",
        [{"type": "remove_null_strings", "tokens": ["Unknown "]}],
        {"a": ["NULL", " n/a ", "-", "unknown", "x", "", "None"], "b": ["null", "ok", "N/A", "UNKNOWN", "-x", " ", "nil"]},
        {"a": [None, None, None, None, "x", None, None], "b": [None, "ok", None, None, "-x", None, "nil"]},
    ),
    (
        "remove_null_strings_named",
        [{"type": "remove_null_strings", "columns": ["a"]}],
        {"a": ["NULL", "x"], "b": ["NULL", "y"]},
        {"a": [None, "x"], "b": ["NULL", "y"]},
    ),
    (
        "pseudonymize",
        [{"type": "pseudonymize", "columns": ["email"], "salt_env": "CDP_TEST_REGISTRY_SALT"}],
        {"email": ["anna@example.com", None, ""]},
        {"email": [_digest("anna@example.com"), None, _digest("")]},
    ),
    (
        "chain",
        [
            {"type": "trim", "columns": ["first"]},
            {"type": "remove_null_strings", "columns": ["city"]},
            {"type": "concatenate", "columns": ["first", "city"], "target": "full"},
            {"type": "drop_empty", "columns": ["full"]},
            {"type": "uppercase", "columns": ["full"]},
        ],
        {"first": [" ann ", "  ", None], "city": ["null", "-", "Wa"], "full": [None, None, None]},
        {"first": ["ann", None], "city": [None, "Wa"], "full": ["ANN", "WA"]},
    ),
]


def _frame(columns: dict[str, list[str | None]]) -> pl.DataFrame:
    height = len(next(iter(columns.values())))
    return pl.DataFrame({"_id": list(range(height)), **columns}, schema={"_id": pl.Int64, **{name: pl.String for name in columns}})


def _with_polars(processors: list[Processor], inputs: pl.DataFrame) -> dict[str, list[Any]]:
    out = apply_processors(inputs.lazy(), processors, display_name="cells.csv", run_time=RUN_TIME).collect()
    # As the export's Polars path writes cells: a date-time as "YYYY-MM-DD HH:MM:SS", others cast to text.
    out = out.select(
        pl.col("_id"),
        *[
            (pl.col(name).dt.strftime("%Y-%m-%d %H:%M:%S") if out.schema[name] == pl.Datetime else pl.col(name).cast(pl.String)).alias(name)
            for name in out.columns
            if name != "_id"
        ],
    ).sort("_id")
    return out.drop("_id").to_dict(as_series=False)


def _with_sql(processors: list[Processor], inputs: pl.DataFrame) -> dict[str, list[Any]]:
    params: dict[str, Any] = {}
    # As in an export, processors name headers and the SQL works on the columns c1 … cN behind them.
    headers = [name for name in inputs.columns if name != "_id"]
    sql_names = {header: f"c{index}" for index, header in enumerate(headers, start=1)}
    sql = processors_sql(
        processors, "SELECT * FROM cells", columns={h: [n] for h, n in sql_names.items()}, run_time=RUN_TIME, subject="test", params=params
    )
    with duckdb.connect() as conn:
        conn.register("cells", inputs.rename(sql_names))
        out = conn.sql(f"SELECT * FROM ({sql}) ORDER BY _id", params=params).pl()
    return out.select(pl.col(sql_names[h]).alias(h) for h in headers).to_dict(as_series=False)


def test_every_kind_with_a_sql_form_has_a_case_here():
    covered = {processor["type"] for _, processors, _, _ in CASES for processor in processors}
    assert covered == {name for name, kind in PROCESSOR_KINDS.items() if kind.sql is not None}
    # custom is the only kind without a SQL form; a chain holding it runs in Polars.
    assert [name for name, kind in PROCESSOR_KINDS.items() if kind.sql is None] == ["custom"]
    custom = PROCESSOR.validate_python({"type": "custom", "function": "cdp_pipeline_tests.tables.custom_processor_example:add_score"})
    assert not processors_in_sql([custom]) and processors_in_sql([PROCESSOR.validate_python(CASES[0][1][0])])


@pytest.mark.parametrize(("processors", "inputs", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_polars_and_sql_forms_give_the_same_cells(processors, inputs, expected, monkeypatch):
    monkeypatch.setenv("CDP_TEST_REGISTRY_SALT", SALT)
    chain = [PROCESSOR.validate_python(p) for p in processors]
    frame = _frame(inputs)
    in_polars = _with_polars(chain, frame)
    in_sql = _with_sql(chain, frame)
    assert in_polars == in_sql
    assert in_sql == expected


def test_sql_form_refuses_a_header_the_export_lacks():
    chain = [PROCESSOR.validate_python({"type": "trim", "columns": ["nope"]})]
    with pytest.raises(ConfigError, match=r"test: processors.0 \(trim\) names column 'nope'"):
        processors_sql(chain, "SELECT 1", columns={"name": ["c1"]}, run_time=RUN_TIME, subject="test", params={})


def test_both_forms_refuse_an_invalid_pattern():
    chain = [PROCESSOR.validate_python({"type": "filter_rows", "column": "email", "pattern": "(?=x)"})]
    with pytest.raises(ConfigError, match=r"processor filter_rows on cells.csv: invalid pattern"):
        _with_polars(chain, _frame({"email": ["x"]}))
    with pytest.raises(ConfigError, match=r"test: processors.0 filter_rows: invalid pattern"):
        _with_sql(chain, _frame({"email": ["x"]}))
