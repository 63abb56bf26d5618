"""Timeline events' nested rows (order lines) as items: the key of each row within its event, its
position, its properties typed and marked where a cell did not parse."""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from cdp_pipeline.config.catalog import PropertyDefinition
from cdp_pipeline.config.connection import NestedEventMapping
from cdp_pipeline.errors import InputProblem
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.delivery_files import ImportGoal, _DeliveryFiles, _failed_lines, _format_for, _n, _reject_rows, _RejectTally
from cdp_pipeline.tables.row_keys import _CELL_SEPARATOR, _EMPTY_CELL, _key_text
from cdp_pipeline.tables.staged import LINE, NOT_IMPORTED

# Internal columns of the timeline and sum frames (never a property name: those cannot start with "_").
_EVENT_ID = "_event_id"
_ITEM_KEY = "_item_key"
#: a linked row's parent row (its ``_line``).
_PARENT_LINE = "_parent_line"


def _item_keys(joined: pl.DataFrame, nested: NestedEventMapping, display: str, problems: list[InputProblem], tally: _RejectTally) -> pl.DataFrame:
    """Each nested row's key within its event (``_item_key``): the text of the declared ``key``
    columns, else its content (the mapped cells) numbered among identical rows of the event, so two
    identical lines of one order stay two lines. A row whose declared key is empty is left out:
    it could never be matched again."""
    if nested.key:
        columns = [_n(c) for c in nested.key]
        joined = _reject_rows(
            joined, pl.all_horizontal(*(_key_text(pl.col(c)).is_null() for c in columns)), display, columns[0],
            "empty nested key", f"every nested row needs a value in {', '.join(columns)}", problems, tally,
        )
        return joined.with_columns(pl.concat_str([_key_text(pl.col(c)).fill_null("") for c in columns], separator=_CELL_SEPARATOR).alias(_ITEM_KEY))
    cells = [pl.col(_n(c)).cast(pl.String).fill_null(_EMPTY_CELL) for c in nested.properties.values()]
    content = pl.concat_str(cells, separator=_CELL_SEPARATOR) if cells else pl.lit("")
    # The content text is built once, inside the key: a column of it beside the keys was the
    # stage's largest column at its memory peak (a 4M-line file's every cell, once more).
    return joined.with_columns(pl.concat_str([pl.lit("content"), content, _content_occurrence(joined, content)], separator="\x1e").alias(_ITEM_KEY))


#: rows whose content text is built at a time to hash it (about 15 MB of text for order lines).
_HASH_SLICE_ROWS = 1 << 18


def _content_occurrence(joined: pl.DataFrame, content: pl.Expr) -> pl.Series | pl.Expr:
    """The occurrence of each nested row's ``content`` within its event, as text ("1" for content
    that does not repeat, the usual case).

    Repeats are looked for on a 64-bit hash of (event, content), built a slice of rows at a time,
    and numbered only among the rows whose hash repeats: finding them on the texts themselves,
    and a window over every row, held several copies of a 4M-line file's content texts at once
    (the stage's memory peak). A hash collision only sends a row that does not repeat to the
    numbering, where it is number 1 as well, since the numbering compares the texts."""
    if not joined.height:
        return pl.lit("1")
    hashed = pl.struct(pl.col("event_id"), content.alias("content")).hash()
    hashes = pl.concat(
        [joined.slice(start, _HASH_SLICE_ROWS).select(hashed).to_series() for start in range(0, joined.height, _HASH_SLICE_ROWS)]
    )
    maybe_repeated = hashes.is_duplicated()
    del hashes
    if not maybe_repeated.any():
        return pl.lit("1")
    rows = maybe_repeated.arg_true()
    numbered = joined[rows].select(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(pl.col("event_id"), content)).to_series()
    return pl.repeat(1, joined.height, dtype=pl.Int64, eager=True).scatter(rows, numbered).cast(pl.String)


def _with_item_index(items: pl.DataFrame) -> pl.DataFrame:
    """``item_index``: the row's position (1-based) among its event's rows, in file order (the
    frame is in line order). Files list an event's nested rows together, so the position is the
    distance from the start of the event's run; only a file whose events are interleaved pays for
    the window over every row."""
    event_ids = items["event_id"]
    starts = event_ids.ne_missing(event_ids.shift(1))
    runs = starts.sum()
    # Distinct hashes are at most the distinct ids, which are at most the runs: equal hashes and
    # runs prove every event has one run, without a table of the ids' texts.
    if items.height and runs != event_ids.hash().n_unique() and runs != event_ids.n_unique():
        return items.with_columns(pl.col(LINE).rank("ordinal").over("event_id").cast(pl.Int64).alias("item_index"))
    position = pl.int_range(pl.len(), dtype=pl.Int64)
    run_start = pl.when(starts).then(position).forward_fill()
    return items.with_columns((position - run_start + 1).alias("item_index"))


def _typed_properties(
    frame: pl.DataFrame, definitions: dict[str, PropertyDefinition], columns: dict[str, str], display: str, goal: ImportGoal,
    problems: list[InputProblem], tally: _RejectTally, files: _DeliveryFiles, name: str,
) -> pl.DataFrame:
    """Event and nested properties whose column stayed text because it is also a key are typed
    here; a value that does not parse is not imported (listed and counted), the row is. Every
    row gets ``NOT_IMPORTED``: the properties whose cell did not parse, so the merge keeps the
    stored value of a known event or nested row instead of clearing it."""
    formats = {prop: _format_for(d) for prop, d in definitions.items() if d.type != "text" and frame.schema.get(prop) == pl.String}
    failed = {prop: files.failed_cells(name, _n(column)) for prop, column in columns.items()}
    if formats:
        typed, found = parse_typed(frame, formats, display, goal.files.root.csv.decimal_comma)
        problems.extend(replace(problem, column=columns.get(problem.column or "", problem.column)) for problem in found)
        for prop, fmt in formats.items():
            lines = _failed_lines(frame, typed, prop)
            tally.add(display, lines, columns[prop], f"value does not parse as {fmt.type}", value=True)
            failed[prop] = pl.concat([failed[prop].cast(pl.Int64), lines.cast(pl.Int64)])
        frame = typed
    marks = [pl.when(pl.col(LINE).is_in(lines.implode())).then(pl.lit(prop)) for prop, lines in failed.items() if lines.len()]
    if not marks:
        return frame.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias(NOT_IMPORTED))
    return frame.with_columns(pl.concat_list(marks).list.drop_nulls().alias(NOT_IMPORTED))
