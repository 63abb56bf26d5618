"""File and field handling of a delimited file: the "Define file and field handling" step of a goal."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ColumnType = Literal["text", "integer", "decimal", "boolean", "date", "datetime", "list"]


class StrictModel(BaseModel):
    """Every config model refuses unknown keys, so a misspelt key fails at load instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnFormat(StrictModel):
    """How one input column is parsed before it is mapped."""

    type: ColumnType = "text"
    #: strptime format for date/datetime columns, e.g. "%m/%d/%Y %H:%M" or "%d.%m.%Y"; ISO when omitted.
    format: str | None = None
    #: for list columns: the separator between items inside the cell.
    list_separator: str = "|"


class CsvOptions(StrictModel):
    """Options for reading (imports) or writing (exports) one delimited file."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote_char: str | None = Field(default='"', max_length=1)
    #: character that escapes a quote inside a quoted field; None means RFC 4180 doubled quotes.
    escape_char: str | None = Field(default=None, max_length=1)
    #: utf-8 (a BOM is stripped), utf-8-sig, cp1250, latin-1, utf-16 ... any Python codec name.
    encoding: str = "utf-8"
    has_header: bool = True
    #: names of the columns when the file has no header row (or to replace the header).
    column_names: list[str] | None = None
    skip_rows: int = Field(default=0, ge=0)
    #: records at the end of the file that are not data (a "Total,11" or "rows: 3" trailer line).
    skip_footer_rows: int = Field(default=0, ge=0)
    #: cell values read as empty (in addition to the empty string).
    null_values: list[str] = Field(default_factory=list)
    decimal_comma: bool = False
    #: per-column parse rules, keyed by the normalised column name.
    columns: dict[str, ColumnFormat] = Field(default_factory=dict)
    #: "ignore" logs a warning for columns nobody maps; "fail" rejects the file.
    extra_columns: Literal["ignore", "fail"] = "ignore"
    #: a last record without a line terminator in a file whose other records end with one: an upload
    #: cut short looks exactly like this (a last row ending "city = Rot"), so by default the delivery
    #: fails with that reason and a changed (complete) file is picked up again. "reject_row" leaves
    #: that row out as a reject; "accept" imports it, for partners whose files end without a newline.
    last_line_without_newline: Literal["fail", "reject_row", "accept"] = "fail"
    #: the longest record (one row, quoted line breaks included) read, in MiB; None is the reader's
    #: default (64). A longer one is refused before it is parsed, so a file without line breaks
    #: (or with a quote never closed) cannot take memory without bound.
    max_record_mb: int | None = Field(default=None, ge=1, le=2048)
    #: for exports: line ending written.
    line_ending: Literal["lf", "crlf"] = "lf"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}; use a Python codec name such as utf-8, cp1250, latin-1, utf-16") from exc
        return value
