"""apply_processors: every processor kind on real Polars frames."""

from __future__ import annotations

import datetime as dt
import hashlib

import polars as pl
import pytest
from pydantic import TypeAdapter

from cdp_pipeline.config.processors import Processor
from cdp_pipeline.errors import ConfigError, InputError
from cdp_pipeline.tables.processors import apply_processors

RUN_TIME = dt.datetime(2024, 5, 17, 9, 30, 15)
PROCESSORS = TypeAdapter(list[Processor])


def run(frame: dict | pl.DataFrame, *processors: dict, run_time: dt.datetime = RUN_TIME) -> pl.DataFrame:
    if isinstance(frame, dict):
        frame = pl.DataFrame(frame)
    lf = apply_processors(frame.lazy(), PROCESSORS.validate_python(list(processors)), display_name="profiles.csv", run_time=run_time)
    assert isinstance(lf, pl.LazyFrame)
    return lf.collect()


def test_no_processors_is_identity() -> None:
    frame = pl.DataFrame({"a": ["x"]})
    assert run(frame).equals(frame)


def test_normalize_email() -> None:
    emails = [
        "  John.Doe@GMIAL.com ",
        "a@gmai.com",
        "b@gnail.com",
        "c@gmal.com",
        "d@hotmial.com",
        "e@hotmal.com",
        "f@yaho.com",
        "g@yahooo.com",
        "h@outlok.com",
        "i@example.con",
        "j@gmail.cmo",
        "k@gmial.con",
        "l@firma.co",
        "m@gmail.com.pl",
        "no-at-sign",
        "   ",
        None,
    ]
    result = run({"email": emails}, {"type": "normalize_email", "columns": ["email"]})
    assert result["email"].to_list() == [
        "john.doe@gmail.com",
        "a@gmail.com",
        "b@gmail.com",
        "c@gmail.com",
        "d@hotmail.com",
        "e@hotmail.com",
        "f@yahoo.com",
        "g@yahoo.com",
        "h@outlook.com",
        "i@example.com",
        "j@gmail.com",
        "k@gmail.com",
        "l@firma.co",
        "m@gmail.com.pl",
        "no-at-sign",
        None,
        None,
    ]


def test_normalize_email_on_list_items() -> None:
    frame = pl.DataFrame({"emails": [[" A@Gmial.con", "b@x.com"], None]}, schema={"emails": pl.List(pl.String)})
    result = run(frame, {"type": "normalize_email", "columns": ["emails"]})
    assert result["emails"].to_list() == [["a@gmail.com", "b@x.com"], None]


def test_trim_lowercase_uppercase() -> None:
    result = run(
        {"a": ["  x  ", "   ", None], "b": ["MiXeD", "ŁÓDŹ", None], "c": ["abc", "żółw", None]},
        {"type": "trim", "columns": ["a"]},
        {"type": "lowercase", "columns": ["b"]},
        {"type": "uppercase", "columns": ["c"]},
    )
    assert result.rows() == [("x", "mixed", "ABC"), (None, "łódź", "ŻÓŁW"), (None, None, None)]


def test_text_processors_apply_to_list_items() -> None:
    frame = pl.DataFrame({"tags": [[" A ", "b"], None]}, schema={"tags": pl.List(pl.String)})
    result = run(frame, {"type": "trim", "columns": ["tags"]}, {"type": "uppercase", "columns": ["tags"]})
    assert result["tags"].to_list() == [["A", "B"], None]


def test_text_processor_on_a_typed_column_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="works on text.*typed Int64"):
        run({"age": [1, 2]}, {"type": "trim", "columns": ["age"]})


@pytest.mark.parametrize(("keep", "expected"), [(True, ["1", "3"]), (False, ["2", "4"])])
def test_filter_rows_keep_or_drop_nulls_never_match(keep: bool, expected: list[str]) -> None:
    frame = {"id": ["1", "2", "3", "4"], "country": ["NL", "DE", "NL-x", None]}
    result = run(frame, {"type": "filter_rows", "column": "country", "pattern": "^NL", "keep_matching": keep})
    assert result["id"].to_list() == expected


def test_filter_rows_invalid_pattern() -> None:
    with pytest.raises(ConfigError, match="invalid pattern"):
        run({"a": ["x"]}, {"type": "filter_rows", "column": "a", "pattern": "("})


def test_drop_empty() -> None:
    frame = {"id": ["1", "2", "3", "4"], "email": ["a@x", None, "  ", "d@x"], "name": ["A", "B", "C", None]}
    assert run(frame, {"type": "drop_empty", "columns": ["email"]})["id"].to_list() == ["1", "4"]
    assert run(frame, {"type": "drop_empty", "columns": ["email", "name"]})["id"].to_list() == ["1"]


def test_fixed_value_new_and_existing_column() -> None:
    result = run({"a": ["x", None]}, {"type": "fixed_value", "column": "source", "value": "crm"}, {"type": "fixed_value", "column": "a", "value": "y"})
    assert result.rows() == [("y", "crm"), ("y", "crm")]


def test_concatenate_skips_nulls() -> None:
    frame = {"first": ["Jan", "Anna", None, None], "last": ["Kowalski", None, "Nowak", None]}
    result = run(frame, {"type": "concatenate", "columns": ["first", "last"], "target": "full_name"})
    assert result["full_name"].to_list() == ["Jan Kowalski", "Anna", "Nowak", None]
    result = run(frame, {"type": "concatenate", "columns": ["last", "first"], "target": "last", "separator": ", "})
    assert result["last"].to_list() == ["Kowalski, Jan", "Anna", "Nowak", None]


@pytest.mark.parametrize(
    ("unmapped", "default", "expected"),
    [
        ("keep", None, ["female", "male", "X", None]),
        ("empty", None, ["female", "male", None, None]),
        ("default", "unknown", ["female", "male", "unknown", None]),
    ],
)
def test_map_values(unmapped: str, default: str | None, expected: list[str | None]) -> None:
    processor = {"type": "map_values", "column": "gender", "mapping": {"F": "female", "M": "male"}, "unmapped": unmapped}
    if default is not None:
        processor["default"] = default
    assert run({"gender": ["F", "M", "X", None]}, processor)["gender"].to_list() == expected


def test_map_values_default_without_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="default"):
        run({"g": ["F"]}, {"type": "map_values", "column": "g", "mapping": {}, "unmapped": "default"})


def test_current_date_and_datetime() -> None:
    result = run(
        {"a": ["x", "y"]},
        {"type": "current_date", "column": "imported_on"},
        {"type": "current_date", "column": "imported_at", "with_time": True},
    )
    assert result.schema["imported_on"] == pl.Date and result.schema["imported_at"] == pl.Datetime("us")
    assert result["imported_on"].to_list() == [dt.date(2024, 5, 17)] * 2
    assert result["imported_at"].to_list() == [RUN_TIME] * 2
    zoned = dt.datetime(2024, 5, 17, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    result = run({"a": ["x"]}, {"type": "current_date", "column": "at", "with_time": True}, run_time=zoned)
    assert result["at"].to_list() == [dt.datetime(2024, 5, 16, 23, 0)]  # stored as naive UTC


def test_remove_null_strings_defaults_extra_tokens_and_all_text_columns() -> None:
    frame = pl.DataFrame(
        {"a": ["NULL", "null", " None ", "N/A", "n/a", "-", "", "keep", "unknown", "Nil"], "n": list(range(10))}
    )
    result = run(frame, {"type": "remove_null_strings", "columns": ["a"]})
    assert result["a"].to_list() == [None] * 7 + ["keep", "unknown", "Nil"]
    result = run(frame, {"type": "remove_null_strings", "tokens": ["UNKNOWN", "nil"]})
    assert result["a"].to_list() == [None] * 7 + ["keep", None, None]
    assert result["n"].to_list() == list(range(10))


def test_pseudonymize_salted_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_TEST_SALT", "pepper")
    emails = [f"user{i}@example.com" for i in range(5000)] + [None]
    result = run({"email": emails, "id": [str(i) for i in range(5001)]}, {"type": "pseudonymize", "columns": ["email"], "salt_env": "CDP_TEST_SALT"})
    expected = [hashlib.sha256(f"pepper{e}".encode()).hexdigest() for e in emails[:-1]] + [None]
    assert result["email"].to_list() == expected  # order preserved across batches
    assert result["id"].to_list() == [str(i) for i in range(5001)]


def test_pseudonymize_without_salt_env_and_with_missing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run({"e": ["ä"]}, {"type": "pseudonymize", "columns": ["e"]})
    assert result["e"].to_list() == [hashlib.sha256("ä".encode()).hexdigest()]
    monkeypatch.delenv("CDP_MISSING_SALT", raising=False)
    with pytest.raises(ConfigError, match="CDP_MISSING_SALT"):
        run({"e": ["x"]}, {"type": "pseudonymize", "columns": ["e"], "salt_env": "CDP_MISSING_SALT"})


def test_custom_processor() -> None:
    function = "cdp_pipeline_tests.tables.custom_processor_example:add_score"
    result = run({"a": ["x"]}, {"type": "custom", "function": function, "options": {"points": 7}})
    assert result.rows() == [("x", 7)]
    assert run({"a": ["x"]}, {"type": "custom", "function": function})["score"].to_list() == [10]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("cdp_pipeline_tests.tables.no_such_module:f", "cannot import"),
        ("cdp_pipeline_tests.tables.custom_processor_example:missing", "has no function"),
        ("cdp_pipeline_tests.tables.custom_processor_example:not_a_frame", "returned DataFrame"),
    ],
)
def test_custom_processor_errors_name_the_processor(function: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        run({"a": ["x"]}, {"type": "custom", "function": function})
    assert function in str(caught.value)


def test_custom_processor_exception_is_annotated() -> None:
    with pytest.raises(RuntimeError, match="boom") as caught:
        run({"a": ["x"]}, {"type": "custom", "function": "cdp_pipeline_tests.tables.custom_processor_example:failing"})
    assert any("custom_processor_example:failing" in note for note in caught.value.__notes__)


def test_missing_column_is_an_input_error_with_a_hint() -> None:
    with pytest.raises(InputError) as caught:
        run({"e_mail": ["x"]}, {"type": "normalize_email", "columns": ["E-Mail"]})
    (problem,) = caught.value.problems
    assert problem.file == "profiles.csv" and problem.line is None and problem.column == "E-Mail"
    assert problem.reason.startswith("processor normalize_email needs column 'E-Mail'") and "'e_mail'" in problem.reason


@pytest.mark.parametrize(
    "processor",
    [
        {"type": "filter_rows", "column": "x", "pattern": "a"},
        {"type": "drop_empty", "columns": ["x"]},
        {"type": "concatenate", "columns": ["a", "x"], "target": "t"},
        {"type": "map_values", "column": "x", "mapping": {}},
        {"type": "remove_null_strings", "columns": ["x"]},
        {"type": "pseudonymize", "columns": ["x"]},
    ],
)
def test_every_column_processor_checks_its_columns(processor: dict) -> None:
    with pytest.raises(InputError, match=f"processor {processor['type']} needs column 'x'"):
        run({"a": ["1"]}, processor)


def test_chaining_order_matters() -> None:
    frame = {"email": [" A@GMIAL.COM", "b@x.com"]}
    normalise_then_filter = run(
        frame, {"type": "normalize_email", "columns": ["email"]}, {"type": "filter_rows", "column": "email", "pattern": "@gmail\\.com$"}
    )
    filter_then_normalise = run(
        frame, {"type": "filter_rows", "column": "email", "pattern": "@gmail\\.com$"}, {"type": "normalize_email", "columns": ["email"]}
    )
    assert normalise_then_filter["email"].to_list() == ["a@gmail.com"]
    assert filter_then_normalise.height == 0


def test_columns_created_by_the_chain_are_visible_later() -> None:
    result = run(
        {"first": ["Jan"], "last": [" Nowak "]},
        {"type": "trim", "columns": ["last"]},
        {"type": "concatenate", "columns": ["first", "last"], "target": "full"},
        {"type": "uppercase", "columns": ["full"]},
    )
    assert result["full"].to_list() == ["JAN NOWAK"]


def test_processors_keep_line_column_and_row_order() -> None:
    frame = pl.DataFrame({"id": ["3", "1", "2"], "_line": [2, 3, 4]})
    result = run(frame, {"type": "remove_null_strings"}, {"type": "fixed_value", "column": "s", "value": "x"})
    assert result["_line"].to_list() == [2, 3, 4] and result["id"].to_list() == ["3", "1", "2"]
