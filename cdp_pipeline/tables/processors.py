"""Data processors ("Process CSV data"): the goal's transformations, applied in order to one file's
rows before identifiers are linked and columns mapped, and to the cells of an export file.

Each kind is registered once, in :data:`PROCESSOR_KINDS`, with both of its forms: a Polars form
(the import, and exports with a ``custom`` processor) and a DuckDB SQL form (exports, so a million
rows never leave DuckDB). A new kind is a config model in ``cdp_pipeline.config.processors`` plus
one entry here; ``test_processor_registry`` runs every entry through both forms and requires the
same cells.

Nothing runs Python per row. The one exception to "pure Polars" is ``pseudonymize``: Polars has no
SHA-256 for strings (2.1 only offers the non-cryptographic ``Expr.hash``), so each batch of values
is hashed by DuckDB's ``sha256`` (vectorised, in C) through ``Expr.map_batches`` — one call per
column batch, not per value.

Text processors (trim, lowercase, uppercase, normalize_email, remove_null_strings, map_values)
work on ``String`` columns and apply item-wise to ``List(String)`` columns; on a column typed
otherwise (a date, a number) they raise a clear error instead of silently casting.
"""

from __future__ import annotations

import importlib
import os
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

import polars as pl

from cdp_pipeline.config.processors import (
    Concatenate,
    CurrentDate,
    CustomProcessor,
    DropEmpty,
    FilterRows,
    FixedValue,
    Lowercase,
    MapValues,
    NormalizeEmail,
    Processor,
    Pseudonymize,
    RemoveNullStrings,
    Trim,
    Uppercase,
)
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.store.schema import literal
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.staged import LINE

#: whole-domain typos fixed by normalize_email (after the top-level-domain typos below became ".com").
EMAIL_DOMAIN_FIXES: dict[str, str] = {
    "gmial.com": "gmail.com",
    "gmai.com": "gmail.com",
    "gnail.com": "gmail.com",
    "gmal.com": "gmail.com",
    "gmaill.com": "gmail.com",
    "gamil.com": "gmail.com",
    "hotmial.com": "hotmail.com",
    "hotmal.com": "hotmail.com",
    "hotmai.com": "hotmail.com",
    "hotmil.com": "hotmail.com",
    "yaho.com": "yahoo.com",
    "yahooo.com": "yahoo.com",
    "yahho.com": "yahoo.com",
    "outlok.com": "outlook.com",
    "outloo.com": "outlook.com",
    "outlookk.com": "outlook.com",
}
#: top-level-domain typos of ".com" that are not real TLDs (".cm" and ".co" are real, so they are left alone).
EMAIL_TLD_TYPOS: tuple[str, ...] = (".con", ".cmo", ".ocm", ".cpm", ".vom", ".comm")
#: tokens remove_null_strings always empties (compared trimmed and case-insensitively).
DEFAULT_NULL_TOKENS = ("null", "none", "n/a", "-", "")

_TLD_PATTERN = r"(" + "|".join(re.escape(typo) for typo in EMAIL_TLD_TYPOS) + r")$"
# What Polars' ``str.strip_chars()`` (Rust ``char::is_whitespace``) strips. DuckDB's ``trim``
# strips spaces only, so the SQL forms strip this class to give the Polars forms' result.
_WHITESPACE = r"[\s\x{0B}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"

P = TypeVar("P")


# ---------------------------------------------------------------- what each form is given


@dataclass(frozen=True)
class FrameScope:
    """What the Polars form of a processor works with besides the frame: its schema before the
    processor, the file's name for errors, and the run time ``current_date`` writes."""

    schema: pl.Schema
    display_name: str
    run_time: datetime

    def check(self, columns: list[str], kind: str) -> None:
        _check_columns(self.schema, columns, kind, self.display_name)

    def text(self, column: str, kind: str, transform: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
        return _text_transform(self.schema, column, kind, self.display_name, transform)

    def label(self, kind: str) -> str:
        return f"processor {kind} on {self.display_name}"


@dataclass
class SqlScope:
    """What the SQL form of a processor works with: the SQL column names behind each header it may
    name (an export may repeat a header, so one header can stand for several columns), the run
    time, and ``params``, where a form puts values that must be bound, never spliced (the salt)."""

    #: who runs the chain, for errors: "export goal 'crm'".
    subject: str
    #: position of the processor in the chain, for errors and parameter names.
    index: int
    #: header → SQL column names, in column order.
    columns: dict[str, list[str]]
    run_time: datetime
    params: dict[str, Any] = field(default_factory=dict)

    def names(self, kind: str, headers: list[str]) -> list[str]:
        names = []
        for header in headers:
            if header not in self.columns:
                raise ConfigError(
                    f"{self.subject}: processors.{self.index} ({kind}) names column {header!r}, which is not a column "
                    f"of the export; processors on the way out work on the export's headers: {', '.join(self.columns)}"
                )
            names.extend(self.columns[header])
        return names

    def all_names(self) -> list[str]:
        return [name for names in self.columns.values() for name in names]

    def label(self, kind: str) -> str:
        return f"{self.subject}: processors.{self.index} {kind}"


@dataclass(frozen=True)
class SqlStep:
    """One processor in SQL: new text for some columns (``replace``: column name → expression over
    the previous step's columns) and/or a row condition (``where``)."""

    replace: dict[str, str] = field(default_factory=dict)
    where: str | None = None


@dataclass(frozen=True)
class ProcessorKind(Generic[P]):
    """A processor kind: its config model and its two forms. ``sql`` is None for a kind that only
    Polars can run (``custom``); a chain holding one runs in Polars everywhere."""

    config: type[P]
    polars: Callable[[pl.LazyFrame, P, FrameScope], pl.LazyFrame]
    sql: Callable[[P, SqlScope], SqlStep] | None


def _missing_column(display_name: str, kind: str, column: str, schema: pl.Schema) -> InputError:
    present = [name for name in schema.names() if name != LINE]
    suggestion = ""
    try:
        normalised = normalise_column_name(column)
    except ValueError:
        normalised = ""
    if normalised and normalised != column and normalised in schema:
        suggestion = f"; did you mean {normalised!r} (column names are normalised)?"
    return InputError(
        InputProblem(
            file=display_name,
            line=None,
            column=column,
            reason=f"processor {kind} needs column {column!r}, which the file does not have{suggestion}",
            fix=f"Use one of the file's columns ({', '.join(present[:30])}) or remove the processor",
        )
    )


def _check_columns(schema: pl.Schema, columns: list[str], kind: str, display_name: str) -> None:
    for column in columns:
        if column not in schema:
            raise _missing_column(display_name, kind, column, schema)


def _text_transform(
    schema: pl.Schema, column: str, kind: str, display_name: str, transform: Callable[[pl.Expr], pl.Expr]
) -> pl.Expr:
    """Apply a String → String transform to a text column, or to every item of a list-of-text column."""
    dtype = schema[column]
    if dtype == pl.String:
        return transform(pl.col(column)).alias(column)
    if dtype == pl.List(pl.String):
        return pl.col(column).list.eval(transform(pl.element())).alias(column)
    raise InputError(
        InputProblem(
            file=display_name,
            line=None,
            column=column,
            reason=f"processor {kind} works on text, but column {column!r} is typed {dtype}",
            fix="Remove the column from the processor, or declare the column as text in csv.columns",
        )
    )


def _empty_as_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _cleaned_email(column: pl.Expr) -> pl.Expr:
    return _empty_as_null(column.str.strip_chars().str.to_lowercase())


def _fixed_email(email: pl.Expr, parts: pl.Expr) -> pl.Expr:
    """``parts`` is ``email.str.splitn("@", 2)``; the domain (after the first '@') gets the typo fixes."""
    domain = parts.struct.field("field_1")
    fixed_domain = domain.str.replace(_TLD_PATTERN, ".com").replace(EMAIL_DOMAIN_FIXES)
    return pl.when(domain.is_null()).then(email).otherwise(pl.concat_str(parts.struct.field("field_0"), pl.lit("@"), fixed_domain))


def _normalised_email(column: pl.Expr) -> pl.Expr:
    """normalize_email as one expression (used for the items of list columns)."""
    email = _cleaned_email(column)
    return _fixed_email(email, email.str.splitn("@", 2))


def _normalise_emails(lf: pl.LazyFrame, schema: pl.Schema, columns: list[str], display_name: str) -> pl.LazyFrame:
    """normalize_email on text columns in three steps, so the cleaned address and its split are
    computed once each (measured ~2x faster than one nested expression)."""
    text_columns = [column for column in columns if schema[column] == pl.String]
    other_columns = [column for column in columns if column not in text_columns]
    if other_columns:
        lf = lf.with_columns(_text_transform(schema, column, "normalize_email", display_name, _normalised_email) for column in other_columns)
    if not text_columns:
        return lf
    parts = {column: f"__email_parts__{column}" for column in text_columns}
    return (
        lf.with_columns(_cleaned_email(pl.col(column)).alias(column) for column in text_columns)
        .with_columns(pl.col(column).str.splitn("@", 2).alias(parts[column]) for column in text_columns)
        .with_columns(_fixed_email(pl.col(column), pl.col(parts[column])).alias(column) for column in text_columns)
        .drop(list(parts.values()))
    )


def _sha256_hex(values: pl.Series, *, salt: str) -> pl.Series:
    """SHA-256 of ``salt + value`` (UTF-8) as lower-case hex, for one batch, computed by DuckDB."""
    import duckdb

    connection = duckdb.connect()
    try:
        connection.register("batch", values.rename("value").to_frame())
        # Projection only: DuckDB preserves the input order (preserve_insertion_order is on by default).
        hashed = connection.sql("SELECT sha256($salt || value) AS digest FROM batch", params={"salt": salt}).pl()
    finally:
        connection.close()
    return hashed["digest"].rename(values.name)


def _salt(processor: Pseudonymize, display_name: str) -> str:
    if processor.salt_env is None:
        return ""
    salt = os.environ.get(processor.salt_env)
    if not salt:
        raise ConfigError(
            f"processor pseudonymize on {display_name}: environment variable {processor.salt_env} (salt_env) is "
            "not set or empty; set it to the secret salt in the code location's environment"
        )
    return salt


def _custom(lf: pl.LazyFrame, processor: CustomProcessor, display_name: str) -> pl.LazyFrame:
    module_name, function_name = processor.function.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"custom processor {processor.function!r}: cannot import module {module_name!r} ({exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"custom processor {processor.function!r}: module {module_name!r} has no function {function_name!r}")
    try:
        result = function(lf, **processor.options)
    except Exception as exc:
        exc.add_note(f"raised by custom processor {processor.function!r} on {display_name}")
        raise
    if not isinstance(result, pl.LazyFrame):
        raise ConfigError(
            f"custom processor {processor.function!r} returned {type(result).__name__}, expected a polars LazyFrame"
        )
    return result


# ---------------------------------------------------------------- shared by both forms


def _null_tokens(processor: RemoveNullStrings) -> list[str]:
    return sorted({*DEFAULT_NULL_TOKENS, *(token.strip().lower() for token in processor.tokens)})


def _check_map_values(processor: MapValues, label: str) -> None:
    if processor.unmapped == "default" and processor.default is None:
        raise ConfigError(f"{label}: unmapped: default needs a default value")


def _check_pattern(pattern: str, label: str) -> None:
    """Both forms refuse a pattern Polars' (Rust) regex engine rejects, so a goal that exports
    also imports with the same pattern."""
    try:
        pl.select(pl.lit("").str.contains(pattern))
    except pl.exceptions.PolarsError as exc:
        raise ConfigError(f"{label}: invalid pattern {pattern!r} ({exc})") from exc


def _sql_strip(x: str) -> str:
    return f"regexp_replace({x}, '^{_WHITESPACE}+|{_WHITESPACE}+$', '', 'g')"


# ---------------------------------------------------------------- the kinds, each with both forms


def _normalize_email_polars(lf: pl.LazyFrame, processor: NormalizeEmail, scope: FrameScope) -> pl.LazyFrame:
    scope.check(processor.columns, processor.type)
    return _normalise_emails(lf, scope.schema, processor.columns, scope.display_name)


def _normalised_email_sql(x: str) -> str:
    """trim, lower case, '' → NULL, then fix the domain (after the first '@'): ".com" typos first,
    then whole-domain typos — the order of the Polars form."""
    cleaned = f"nullif(lower({_sql_strip(x)}), '')"
    tld = "(" + "|".join(t.replace(".", "\\.") for t in EMAIL_TLD_TYPOS) + ")$"
    domain = f"regexp_replace(substr(v, strpos(v, '@') + 1), {literal(tld)}, '.com')"
    fixes = " ".join(f"WHEN {literal(bad)} THEN {literal(good)}" for bad, good in EMAIL_DOMAIN_FIXES.items())
    fixed = f"CASE d {fixes} ELSE d END"
    # list_transform binds the cleaned address and its domain once each, as the Polars form does.
    return (
        f"list_transform([{cleaned}], lambda v: CASE WHEN strpos(v, '@') = 0 THEN v ELSE "
        f"substr(v, 1, strpos(v, '@') - 1) || '@' || list_transform([{domain}], lambda d: {fixed})[1] END)[1]"
    )


def _normalize_email_sql(processor: NormalizeEmail, scope: SqlScope) -> SqlStep:
    return SqlStep(replace={n: _normalised_email_sql(n) for n in scope.names(processor.type, processor.columns)})


def _case_kind(
    config: type[Trim | Lowercase | Uppercase], polars: Callable[[pl.Expr], pl.Expr], sql: Callable[[str], str]
) -> ProcessorKind[Any]:
    """trim, lowercase and uppercase: one text transform per named column."""

    def in_polars(lf: pl.LazyFrame, processor: Trim | Lowercase | Uppercase, scope: FrameScope) -> pl.LazyFrame:
        scope.check(processor.columns, processor.type)
        return lf.with_columns(scope.text(column, processor.type, polars) for column in processor.columns)

    def in_sql(processor: Trim | Lowercase | Uppercase, scope: SqlScope) -> SqlStep:
        return SqlStep(replace={n: sql(n) for n in scope.names(processor.type, processor.columns)})

    return ProcessorKind(config, in_polars, in_sql)


def _filter_rows_polars(lf: pl.LazyFrame, processor: FilterRows, scope: FrameScope) -> pl.LazyFrame:
    scope.check([processor.column], processor.type)
    label = scope.label(processor.type)
    try:
        # The import also asks Python's re (as it always did): a pattern it refuses fails the import.
        re.compile(processor.pattern)
    except re.error as exc:
        raise ConfigError(f"{label}: invalid pattern {processor.pattern!r} ({exc})") from exc
    _check_pattern(processor.pattern, label)
    # Nulls never match: a row without a value is dropped by keep_matching, kept otherwise.
    matches = pl.col(processor.column).cast(pl.String).str.contains(processor.pattern).fill_null(False)
    return lf.filter(matches if processor.keep_matching else ~matches)


def _filter_rows_sql(processor: FilterRows, scope: SqlScope) -> SqlStep:
    (name, *_) = scope.names(processor.type, [processor.column])
    _check_pattern(processor.pattern, scope.label(processor.type))
    matches = f"coalesce(regexp_matches({name}, {literal(processor.pattern)}), FALSE)"
    return SqlStep(where=matches if processor.keep_matching else f"NOT {matches}")


def _drop_empty_polars(lf: pl.LazyFrame, processor: DropEmpty, scope: FrameScope) -> pl.LazyFrame:
    scope.check(processor.columns, processor.type)
    present = [
        pl.col(column).str.strip_chars().ne("").fill_null(False) if scope.schema[column] == pl.String else pl.col(column).is_not_null()
        for column in processor.columns
    ]
    return lf.filter(pl.all_horizontal(present))


def _drop_empty_sql(processor: DropEmpty, scope: SqlScope) -> SqlStep:
    names = scope.names(processor.type, processor.columns)
    return SqlStep(where=" AND ".join(f"coalesce({_sql_strip(n)} <> '', FALSE)" for n in names))


def _fixed_value_polars(lf: pl.LazyFrame, processor: FixedValue, scope: FrameScope) -> pl.LazyFrame:
    return lf.with_columns(pl.lit(processor.value, dtype=pl.String).alias(processor.column))


def _fixed_value_sql(processor: FixedValue, scope: SqlScope) -> SqlStep:
    return SqlStep(replace={n: literal(processor.value) for n in scope.names(processor.type, [processor.column])})


def _concatenate_polars(lf: pl.LazyFrame, processor: Concatenate, scope: FrameScope) -> pl.LazyFrame:
    scope.check(processor.columns, processor.type)
    parts = [_empty_as_null(pl.col(column).cast(pl.String)) for column in processor.columns]
    joined = pl.concat_str(parts, separator=processor.separator, ignore_nulls=True)
    return lf.with_columns(_empty_as_null(joined).alias(processor.target))


def _concatenate_sql(processor: Concatenate, scope: SqlScope) -> SqlStep:
    parts = ", ".join(f"nullif({n}, '')" for n in scope.names(processor.type, processor.columns))
    joined = f"nullif(concat_ws({literal(processor.separator)}, {parts}), '')"
    return SqlStep(replace={n: joined for n in scope.names(processor.type, [processor.target])})


def _map_values_polars(lf: pl.LazyFrame, processor: MapValues, scope: FrameScope) -> pl.LazyFrame:
    scope.check([processor.column], processor.type)
    _check_map_values(processor, scope.label(processor.type))
    mapping = processor.mapping
    transform: Callable[[pl.Expr], pl.Expr]
    if processor.unmapped == "keep":

        def transform(text: pl.Expr) -> pl.Expr:
            return text.replace(mapping)

    else:
        fallback = None if processor.unmapped == "empty" else processor.default

        def transform(text: pl.Expr) -> pl.Expr:
            mapped = text.replace_strict(mapping, default=pl.lit(fallback, dtype=pl.String), return_dtype=pl.String)
            return pl.when(text.is_null()).then(None).otherwise(mapped)

    return lf.with_columns(scope.text(processor.column, processor.type, transform))


def _map_values_sql(processor: MapValues, scope: SqlScope) -> SqlStep:
    _check_map_values(processor, scope.label(processor.type))
    whens = " ".join(f"WHEN {{x}} = {literal(k)} THEN {literal(v)}" for k, v in processor.mapping.items())
    fallback = {"keep": "{x}", "empty": "NULL", "default": literal(processor.default or "")}[processor.unmapped]
    template = f"CASE WHEN {{x}} IS NULL THEN NULL {whens} ELSE {fallback} END"
    return SqlStep(replace={n: template.replace("{x}", n) for n in scope.names(processor.type, [processor.column])})


def _current_date_polars(lf: pl.LazyFrame, processor: CurrentDate, scope: FrameScope) -> pl.LazyFrame:
    moment = scope.run_time
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    value = pl.lit(moment, dtype=pl.Datetime("us")) if processor.with_time else pl.lit(moment.date(), dtype=pl.Date)
    return lf.with_columns(value.alias(processor.column))


def _current_date_sql(processor: CurrentDate, scope: SqlScope) -> SqlStep:
    # The export hands in its run time as naive UTC already, the date the Polars form writes.
    moment = scope.run_time.strftime("%Y-%m-%d %H:%M:%S" if processor.with_time else "%Y-%m-%d")
    return SqlStep(replace={n: literal(moment) for n in scope.names(processor.type, [processor.column])})


def _remove_null_strings_polars(lf: pl.LazyFrame, processor: RemoveNullStrings, scope: FrameScope) -> pl.LazyFrame:
    columns = processor.columns
    if columns is None:
        columns = [name for name, dtype in scope.schema.items() if dtype in (pl.String, pl.List(pl.String))]
    scope.check(columns, processor.type)
    tokens = _null_tokens(processor)

    def transform(text: pl.Expr) -> pl.Expr:
        return pl.when(text.str.strip_chars().str.to_lowercase().is_in(tokens)).then(None).otherwise(text)

    return lf.with_columns(scope.text(column, processor.type, transform) for column in columns)


def _remove_null_strings_sql(processor: RemoveNullStrings, scope: SqlScope) -> SqlStep:
    names = scope.all_names() if processor.columns is None else scope.names(processor.type, processor.columns)
    tokens = ", ".join(literal(t) for t in _null_tokens(processor))
    return SqlStep(replace={n: f"CASE WHEN lower({_sql_strip(n)}) IN ({tokens}) THEN NULL ELSE {n} END" for n in names})


def _pseudonymize_polars(lf: pl.LazyFrame, processor: Pseudonymize, scope: FrameScope) -> pl.LazyFrame:
    scope.check(processor.columns, processor.type)
    hash_batch = partial(_sha256_hex, salt=_salt(processor, scope.display_name))
    return lf.with_columns(
        pl.col(column).cast(pl.String).map_batches(hash_batch, return_dtype=pl.String, is_elementwise=True).alias(column)
        for column in processor.columns
    )


def _pseudonymize_sql(processor: Pseudonymize, scope: SqlScope) -> SqlStep:
    # The salt is a bound parameter, never SQL text: an error message quoting the statement
    # cannot leak it. sha256(salt || value) is exactly the Polars form's digest, so exported
    # pseudonyms join with imported ones.
    salt_key = f"salt{scope.index}"
    scope.params[salt_key] = _salt(processor, scope.subject)
    return SqlStep(replace={n: f"sha256(${salt_key} || {n})" for n in scope.names(processor.type, processor.columns)})


def _custom_polars(lf: pl.LazyFrame, processor: CustomProcessor, scope: FrameScope) -> pl.LazyFrame:
    return _custom(lf, processor, scope.display_name)


#: every processor kind, by its ``type``, with both forms. A kind missing here fails at import.
PROCESSOR_KINDS: dict[str, ProcessorKind[Any]] = {
    "normalize_email": ProcessorKind(NormalizeEmail, _normalize_email_polars, _normalize_email_sql),
    "trim": _case_kind(Trim, lambda text: _empty_as_null(text.str.strip_chars()), lambda x: f"nullif({_sql_strip(x)}, '')"),
    "lowercase": _case_kind(Lowercase, lambda text: text.str.to_lowercase(), lambda x: f"lower({x})"),
    "uppercase": _case_kind(Uppercase, lambda text: text.str.to_uppercase(), lambda x: f"upper({x})"),
    "filter_rows": ProcessorKind(FilterRows, _filter_rows_polars, _filter_rows_sql),
    "drop_empty": ProcessorKind(DropEmpty, _drop_empty_polars, _drop_empty_sql),
    "fixed_value": ProcessorKind(FixedValue, _fixed_value_polars, _fixed_value_sql),
    "concatenate": ProcessorKind(Concatenate, _concatenate_polars, _concatenate_sql),
    "map_values": ProcessorKind(MapValues, _map_values_polars, _map_values_sql),
    "current_date": ProcessorKind(CurrentDate, _current_date_polars, _current_date_sql),
    "remove_null_strings": ProcessorKind(RemoveNullStrings, _remove_null_strings_polars, _remove_null_strings_sql),
    "pseudonymize": ProcessorKind(Pseudonymize, _pseudonymize_polars, _pseudonymize_sql),
    "custom": ProcessorKind(CustomProcessor, _custom_polars, None),
}


def _declared_kinds() -> dict[str, type]:
    """``type`` literal → config model, for every member of the ``Processor`` union."""
    (union, *_) = typing.get_args(Processor)
    return {typing.get_args(model.model_fields["type"].annotation)[0]: model for model in typing.get_args(union)}


def _check_registry() -> None:
    """A kind added to the config union but not here (or registered under the wrong model) would
    otherwise fail only when a goal first uses it: refuse to import instead."""
    declared = _declared_kinds()
    registered = {name: kind.config for name, kind in PROCESSOR_KINDS.items()}
    if registered != declared:
        raise ImportError(f"processor kinds declared {declared} and registered {registered} differ")


_check_registry()


# ---------------------------------------------------------------- running a chain


def apply_processors(
    lf: pl.LazyFrame, processors: list[Processor], *, display_name: str, run_time: datetime
) -> pl.LazyFrame:
    """Apply ``processors`` in order and return the lazy result (nothing is collected here).

    ``display_name`` names the file in errors; ``run_time`` is what ``current_date`` writes. A
    processor naming a column the frame lacks raises ``InputError`` (line None, the column, the
    columns present). Columns the chain creates (fixed_value, concatenate's target, current_date)
    are visible to the processors after it.
    """
    for processor in processors:
        scope = FrameScope(lf.collect_schema(), display_name, run_time)
        lf = PROCESSOR_KINDS[processor.type].polars(lf, processor, scope)
    return lf


def processors_in_sql(processors: Iterable[Processor]) -> bool:
    """Whether every processor of the chain has a SQL form (all kinds but ``custom``)."""
    return all(PROCESSOR_KINDS[p.type].sql is not None for p in processors)


def processors_sql(
    processors: list[Processor],
    base: str,
    *,
    columns: dict[str, list[str]],
    run_time: datetime,
    subject: str,
    params: dict[str, Any],
) -> str:
    """The chain as nested SELECTs over the query ``base``, giving the same text cells as the
    Polars forms on text columns. ``columns`` maps each header a processor may name to the SQL
    column(s) behind it; ``params`` receives the values the query must bind."""
    sql = base
    for index, processor in enumerate(processors):
        in_sql = PROCESSOR_KINDS[processor.type].sql
        if in_sql is None:
            raise ConfigError(f"{subject}: processors.{index}: {processor.type} cannot run in SQL")
        scope = SqlScope(subject, index, columns, run_time)
        step = in_sql(processor, scope)
        params.update(scope.params)
        if step.replace:
            sql = f"SELECT * REPLACE ({', '.join(f'{expr} AS {name}' for name, expr in step.replace.items())}) FROM ({sql})"
        if step.where:
            sql = f"SELECT * FROM ({sql}) WHERE {step.where}"
    return sql
