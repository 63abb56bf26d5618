"""Data processors declared per goal: transformations applied, in order, to the rows of a file
before identifiers are linked and columns mapped ("Process CSV data" in the seeds).

Each kind is registered once in ``cdp_pipeline.tables.processors.PROCESSOR_KINDS`` with its Polars
form (imports) and its DuckDB SQL form (exports); a new kind needs a model here and an entry there.

Every processor of an import goal may name the goal's files it runs on (``files: [orders,
order_lines]``, logical names from ``files.root`` / ``files.linked``); without ``files`` it runs on
the root file. Each file gets, in declared order, the processors that name it, before any linking.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from cdp_pipeline.config.csv_options import StrictModel


class _FileScoped(StrictModel):
    """What every processor shares: the goal files it runs on."""

    #: logical file names of the goal (root or linked) this processor runs on; the root file when omitted.
    files: list[str] | None = Field(default=None, min_length=1)


class NormalizeEmail(_FileScoped):
    """Trim, lower-case and fix common domain typos (gmial.com → gmail.com)."""

    type: Literal["normalize_email"]
    columns: list[str]


class Trim(_FileScoped):
    type: Literal["trim"]
    columns: list[str]


class Lowercase(_FileScoped):
    type: Literal["lowercase"]
    columns: list[str]


class Uppercase(_FileScoped):
    type: Literal["uppercase"]
    columns: list[str]


class FilterRows(_FileScoped):
    """Keep (or drop) the rows whose column matches a regular expression."""

    type: Literal["filter_rows"]
    column: str
    pattern: str
    keep_matching: bool = True


class DropEmpty(_FileScoped):
    """Drop rows where any of the columns is empty."""

    type: Literal["drop_empty"]
    columns: list[str]


class FixedValue(_FileScoped):
    type: Literal["fixed_value"]
    column: str
    value: str


class Concatenate(_FileScoped):
    type: Literal["concatenate"]
    columns: list[str]
    target: str
    separator: str = " "


class MapValues(_FileScoped):
    """Convert values through a mapping table; unmapped values are kept, emptied or set to ``default``."""

    type: Literal["map_values"]
    column: str
    mapping: dict[str, str]
    unmapped: Literal["keep", "empty", "default"] = "keep"
    default: str | None = None


class CurrentDate(_FileScoped):
    """Write the run's date (or date-time) into a column, e.g. a "last imported" property."""

    type: Literal["current_date"]
    column: str
    with_time: bool = False


class RemoveNullStrings(_FileScoped):
    """Empty the cells that spell "nothing": NULL, null, None, N/A, n/a, -, and the extra tokens given."""

    type: Literal["remove_null_strings"]
    columns: list[str] | None = None
    tokens: list[str] = Field(default_factory=list)


class Pseudonymize(_FileScoped):
    """Replace values by a salted SHA-256 hex digest; the salt comes from an environment variable."""

    type: Literal["pseudonymize"]
    columns: list[str]
    salt_env: str | None = None


class CustomProcessor(_FileScoped):
    """A user-defined processor: ``function`` is ``package.module:name`` of a callable
    ``(lf: pl.LazyFrame, **options) -> pl.LazyFrame``."""

    type: Literal["custom"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)


Processor = Annotated[
    NormalizeEmail
    | Trim
    | Lowercase
    | Uppercase
    | FilterRows
    | DropEmpty
    | FixedValue
    | Concatenate
    | MapValues
    | CurrentDate
    | RemoveNullStrings
    | Pseudonymize
    | CustomProcessor,
    Field(discriminator="type"),
]
