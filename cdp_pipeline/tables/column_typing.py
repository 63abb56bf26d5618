"""Column typing: the text columns of a read file cast to the types ``csv.columns`` declares.

Parsing is non-strict and vectorised (Polars expressions): a non-blank cell that does not parse
becomes null and is reported as a problem with its file, line, column and the expected spelling,
so that no value is dropped silently.
"""

from __future__ import annotations

import re

import polars as pl

from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.tables.csv_reading import MAX_LISTED_PROBLEMS
from cdp_pipeline.tables.staged import LINE as LINE_COLUMN

_TYPE_LABELS = {
    "integer": "INTEGER",
    "decimal": "DECIMAL",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "DATETIME",
}
#: decimals are exact: the store keeps DECIMAL(18,4), so a value that does not fit fails here, visibly.
DECIMAL_DTYPE = pl.Decimal(18, 4)
_BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "y": True, "n": False}
#: ISO 8601 spellings tried when a datetime column has no format, most specific first.
_ISO_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M")
_ISO_ZONED_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
#: whitespace used as a thousands separator (space, no-break space, narrow no-break space).
_SPACES_PATTERN = r"[ \u00a0\u202f]"
#: a decimal-comma number: thousands groups of three separated by '.', then an optional ',' fraction.
_DECIMAL_COMMA_PATTERN = r"^[+-]?(\d{1,3}(\.\d{3})+|\d+)(,\d+)?$"


def _typed_expr(text: pl.Expr, column_format: ColumnFormat, decimal_comma: bool) -> pl.Expr:
    """The non-strict parse of one trimmed text column: a value that does not parse becomes null."""
    kind = column_format.type
    if kind == "integer":
        return text.str.replace_all(_SPACES_PATTERN, "").str.to_integer(strict=False)
    if kind == "decimal":
        digits = text.str.replace_all(_SPACES_PATTERN, "")
        if decimal_comma:
            # '.' is accepted only as a thousands separator in groups of three, so "1.5" in a
            # decimal-comma file fails instead of silently becoming 15.
            digits = (
                pl.when(digits.str.contains(_DECIMAL_COMMA_PATTERN))
                .then(digits.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
                .otherwise(None)
            )
        return digits.cast(DECIMAL_DTYPE, strict=False)
    if kind == "boolean":
        return text.str.to_lowercase().replace_strict(_BOOLEAN_WORDS, default=None, return_dtype=pl.Boolean)
    if kind == "date":
        return text.str.strptime(pl.Date, column_format.format or "%Y-%m-%d", strict=False, exact=True)
    if kind == "datetime":
        if column_format.format:
            parsed = text.str.strptime(pl.Datetime("us"), column_format.format, strict=False, exact=True)
            if re.search(r"%[#:]?z", column_format.format):
                parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return parsed
        return pl.coalesce(
            *[text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True) for fmt in _ISO_NAIVE_FORMATS],
            *[
                text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
                .dt.convert_time_zone("UTC")
                .dt.replace_time_zone(None)
                for fmt in _ISO_ZONED_FORMATS
            ],
            text.str.strptime(pl.Date, "%Y-%m-%d", strict=False, exact=True).cast(pl.Datetime("us")),
        )
    raise ValueError(f"no parser for column type {kind!r}")


def _list_expr(column: pl.Expr, separator: str) -> pl.Expr:
    items = column.str.split(separator, literal=True).list.eval(
        pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != "")
    )
    return pl.when(items.list.len() > 0).then(items).otherwise(None)


def _expected_spelling(column_format: ColumnFormat, decimal_comma: bool) -> str:
    if column_format.type in ("date", "datetime"):
        if column_format.format:
            return f" (format {column_format.format})"
        return " (ISO 8601, e.g. 2024-01-31)" if column_format.type == "date" else " (ISO 8601, e.g. 2024-01-31T13:45:00)"
    if column_format.type == "decimal":
        return " (decimal comma, e.g. 1.234,56)" if decimal_comma else " (e.g. 1234.56; at most 14 digits before the point)"
    if column_format.type == "boolean":
        return " (true/false, 1/0, yes/no, y/n)"
    return ""


def _shown(value: str, limit: int = 20) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def parse_typed(
    df: pl.DataFrame,
    formats: dict[str, ColumnFormat],
    display_name: str,
    decimal_comma: bool = False,
    *,
    max_problems: int = MAX_LISTED_PROBLEMS,
) -> tuple[pl.DataFrame, list[InputProblem]]:
    """Cast the columns named in ``formats`` (``csv.columns``, keyed by normalised name); the others
    stay as they are. Dtypes: integer → Int64, decimal → Decimal(18, 4), boolean → Boolean,
    date → Date, datetime → Datetime("us") (naive; values with an offset are converted to UTC),
    list → List(String), text → unchanged. Values are trimmed first; blank cells are null, not errors.

    A non-blank cell that does not parse becomes null and yields one ``InputProblem`` (file, its
    ``_line``, column, the value cut to 20 characters, the expected type and format). The first
    ``max_problems`` are listed, ordered by line, then one summary problem (``line`` None) counts the
    rest per column. A column that is not of type String is left untouched (already typed).
    Raises ``InputError`` when ``formats`` names a column the frame lacks.
    """
    missing = [name for name in formats if name not in df.columns]
    if missing:
        raise InputError(
            [
                InputProblem(
                    file=display_name,
                    line=None,
                    column=name,
                    reason=f"csv.columns declares column {name!r}, which the file does not have",
                    fix=f"Use the normalised column name (lower-case, non-alphanumerics as '_'); the file has {', '.join(df.columns[:30])}",
                )
                for name in missing
            ]
        )
    to_parse = {
        name: column_format
        for name, column_format in formats.items()
        if column_format.type != "text" and df.schema[name] == pl.String
    }
    if not to_parse:
        return df, []

    typed_names = {name: f"__typed__{name}" for name in to_parse}
    typed_exprs = []
    failure_exprs = []
    for name, column_format in to_parse.items():
        if column_format.type == "list":
            typed_exprs.append(_list_expr(pl.col(name), column_format.list_separator).alias(typed_names[name]))
            continue  # a list always parses
        text = pl.col(name).str.strip_chars()
        text = pl.when(text != "").then(text)
        typed_exprs.append(_typed_expr(text, column_format, decimal_comma).alias(typed_names[name]))
        failure_exprs.append(
            (pl.col(name).str.strip_chars().ne("").fill_null(False) & pl.col(typed_names[name]).is_null()).alias(name)
        )
    # One column at a time: evaluated together, every column's trimmed and cleaned copies of its
    # text were alive at once, the read's memory peak for a file of millions of rows.
    parsed = df
    for typed_expr in typed_exprs:
        parsed = parsed.with_columns(typed_expr)

    problems: list[InputProblem] = []
    failures_by_column: dict[str, int] = {}
    if failure_exprs:
        failure_masks = pl.DataFrame([parsed.select(failure_expr).to_series() for failure_expr in failure_exprs])
        counts = failure_masks.sum().row(0, named=True)
        failures_by_column = {name: int(count) for name, count in counts.items() if count}
        has_lines = LINE_COLUMN in df.columns
        for name in failures_by_column:
            column_format = to_parse[name]
            bad = parsed.filter(failure_masks[name]).head(max_problems)
            lines = bad[LINE_COLUMN].to_list() if has_lines else [None] * bad.height
            for line, value in zip(lines, bad[name].to_list(), strict=True):
                problems.append(
                    InputProblem(
                        file=display_name,
                        line=line,
                        column=name,
                        reason=f"cannot parse {_shown(value.strip())!r} as {_TYPE_LABELS[column_format.type]}"
                        f"{_expected_spelling(column_format, decimal_comma)}",
                        fix="Correct the value or the column's format in csv.columns",
                    )
                )
        problems.sort(key=lambda problem: (problem.line is None, problem.line or 0))
        total = sum(failures_by_column.values())
        if total > max_problems:
            problems = problems[:max_problems]
            per_column = ", ".join(f"{name}: {count}" for name, count in failures_by_column.items())
            problems.append(
                InputProblem(
                    file=display_name,
                    line=None,
                    column=None,
                    reason=f"{total} cells in all cannot be parsed ({per_column}); the first {max_problems} are listed",
                    fix="Correct the values or the columns' formats in csv.columns",
                )
            )

    result = parsed.with_columns(pl.col(typed_names[name]).alias(name) for name in to_parse).drop(list(typed_names.values()))
    return result, problems
