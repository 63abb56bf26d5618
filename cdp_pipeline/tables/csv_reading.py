"""Reading delimited files into all-text Polars frames.

The engine half of "Define file and field handling": no Dagster here.

How a file is read (``read_delimited``):

1. The bytes are streamed once, in chunks, through the vectorised record scan
   (:mod:`cdp_pipeline.tables.record_scan`), which finds where each record starts and how many
   fields it has, without any per-row Python.
2. Only when the bytes are not already UTF-8 RFC 4180 (a declared legacy encoding, gzip, an
   escape character) the same pass writes a UTF-8 copy to a temporary file
   (:mod:`cdp_pipeline.tables.csv_decoding`); a UTF-8 file is never copied.
3. Polars reads the (original or converted) file with every column as ``pl.String``; the scan's
   line numbers become the ``_line`` column. Column names follow
   :mod:`cdp_pipeline.tables.column_names`; typing the columns is
   :mod:`cdp_pipeline.tables.column_typing`.

Memory stays bounded by the chunk size, the record length cap and the resulting frame: no file
is read into a Python string, and Polars only ever parses records the scan has accepted (a UTF-8
file is parsed block by block in a thread while the scan runs; a converted copy after it).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cdp_pipeline.config.csv_options import CsvOptions
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.tables.column_names import normalised_names
from cdp_pipeline.tables.csv_decoding import (
    UTF8_CODECS,
    decoded_utf8_chunks,
    escapes_as_doubled_quotes,
    locate_invalid_utf8,
    looks_like_utf16,
    open_bytes,
    raw_chunks,
)
from cdp_pipeline.tables.record_scan import RecordScan, RecordScanner
from cdp_pipeline.tables.staged import LINE as LINE_COLUMN

#: cell problems listed one by one before the rest are summarised.
MAX_LISTED_PROBLEMS = 100

#: delimiters suggested when a header parses as a single column.
_LIKELY_DELIMITERS = (";", "\t", "|", ",", "~")


def _delimiter_hint(first_record: bytes, delimiter: str, quote: str | None) -> str | None:
    """The delimiter a one-column header most likely uses, if it is not the configured one."""
    text = first_record.decode("utf-8", errors="replace")
    if quote and len(text) >= 2 and text.startswith(quote) and text.endswith(quote):
        return None  # one quoted name: a deliberate single column
    counts = {candidate: text.count(candidate) for candidate in _LIKELY_DELIMITERS if candidate != delimiter}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None


def _parse_header(first_record: bytes, delimiter: str, quote: str | None) -> list[str]:
    """Parse the one header record with the csv module (one record, not per-row work)."""
    text = first_record.decode("utf-8-sig", errors="replace").removesuffix("\r")
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quotechar=quote or '"',
        quoting=csv.QUOTE_NONE if quote is None else csv.QUOTE_MINIMAL,
        doublequote=True,
        strict=False,
    )
    return next(reader, [])


def _temp_path_near(path: Path) -> Path:
    """A temporary file beside the input (same disk, no tmpfs surprise), else in the system temp dir."""
    for directory in (path.parent, None):
        try:
            descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".utf8.csv", dir=directory)
        except OSError:
            continue
        os.close(descriptor)
        return Path(name)
    raise OSError(f"cannot create a temporary file for {path}")


def _empty_file_error(display_name: str, reason: str = "empty file (0 bytes)") -> InputError:
    return InputError(
        InputProblem(
            file=display_name,
            line=None,
            column=None,
            reason=reason,
            fix="Deliver the file with its header row (and data), or check the export that produced it",
        )
    )


@dataclass(frozen=True)
class DelimitedFile:
    """A delimited file as read: its text frame and the records left out of it as rejects."""

    frame: pl.DataFrame
    #: records the reader left out on purpose (``csv.last_line_without_newline: reject_row``), one
    #: problem each with file and line, for the caller to count and report with its other rejects.
    left_out: list[InputProblem] = field(default_factory=list)


def read_delimited(path: Path, options: CsvOptions, display_name: str, *, max_bytes: int | None = None) -> pl.DataFrame:
    """The frame of ``read_delimited_file``, for callers that have no reject report.

    A record the options say to leave out as a reject fails the read here instead, so it can never
    disappear without being counted.
    """
    read = read_delimited_file(path, options, display_name, max_bytes=max_bytes)
    if read.left_out:
        raise InputError(read.left_out)
    return read.frame


def read_delimited_file(path: Path, options: CsvOptions, display_name: str, *, max_bytes: int | None = None) -> DelimitedFile:
    """Read a delimited file into a frame of text columns.

    Returns one ``pl.String`` column per file column, named by ``normalise_column_name`` and in
    file order, followed by ``_line`` (``pl.Int64``): the physical 1-based line where the record
    starts in the (decompressed) file, exact also when quoted values contain newlines and after
    ``skip_rows``. Empty cells and ``options.null_values`` are null; nothing is type-inferred
    (``00123`` stays ``00123``). Blank lines and lines made only of delimiters and spaces are
    skipped. A header-only file gives an empty frame with the columns.

    Raises ``InputError`` (file, line, reason and fix) for: an empty file, UTF-16 in a file not
    declared so, an undecodable byte (offset and line), NUL bytes, CR-only line endings, ragged
    rows (expected vs actual field count), an unterminated quote, a one-column header that looks
    like another delimiter, blank or colliding column names, a corrupt gzip stream, one that
    expands past ``max_bytes``, or a last record without a line terminator after records with one
    (a possibly truncated upload) unless ``csv.last_line_without_newline`` says otherwise.
    """
    delimiter = options.delimiter
    quote = options.quote_char or None
    for role, char in (("delimiter", delimiter), ("quote_char", quote), ("escape_char", options.escape_char)):
        if char is not None and len(char.encode("utf-8")) != 1:
            raise ConfigError(f"csv.{role} {char!r} must be a single-byte (ASCII) character for {display_name}")
    escape = options.escape_char if (options.escape_char and quote and options.escape_char != quote) else None
    codec = codecs.lookup(options.encoding).name

    stream, compressed = open_bytes(path)
    temp_path: Path | None = None
    early: _EarlyParse | None = None
    try:
        with stream:
            # Only a gzip stream can grow past the size the file was checked at when it arrived.
            chunks = raw_chunks(stream, display_name, max_bytes if compressed else None)
            head = next(chunks, b"")
            if not head:
                raise _empty_file_error(display_name)
            if not codec.startswith(("utf-16", "utf-32")) and looks_like_utf16(head):
                raise InputError(
                    InputProblem(
                        file=display_name,
                        line=1,
                        column=None,
                        reason=f"UTF-16 detected (byte-order mark or NUL between characters) but csv.encoding is {options.encoding}",
                        fix="Set csv.encoding: utf-16",
                    )
                )
            utf8_chunks = _chain(head, chunks)
            if codec not in UTF8_CODECS:
                utf8_chunks = decoded_utf8_chunks(utf8_chunks, codec, options.encoding, display_name)
            if escape:
                utf8_chunks = escapes_as_doubled_quotes(utf8_chunks, escape.encode(), quote.encode())  # type: ignore[union-attr]
            rewrite = compressed or codec not in UTF8_CODECS or escape is not None

            max_record_bytes = options.max_record_mb * 1024 * 1024 if options.max_record_mb else None
            scanner = RecordScanner(delimiter.encode(), quote.encode() if quote else None, options.skip_rows, display_name, max_record_bytes)
            if rewrite:
                temp_path = _temp_path_near(path)
                with open(temp_path, "wb") as converted:
                    for chunk in utf8_chunks:
                        converted.write(chunk)
                        scanner.feed(chunk)
            else:
                # Polars parses the records in a thread while the scan runs (NumPy and Polars both
                # release the GIL; the scan costs about as much as the parse). It is given only the
                # records the scan has accepted, so a record over the cap is never parsed and the parse
                # stops with the scan: a 2 GB file without line breaks used to be parsed whole in the
                # background after the scan had refused it.
                waiting: list[bytes] | None = []
                for chunk in utf8_chunks:
                    block = scanner.feed(chunk)
                    if early is None and waiting is not None:
                        waiting.append(block)
                        if scanner.result.first_record_fields is not None:
                            early = _EarlyParse(scanner.result.first_record_fields, options, quote)
                            for held in waiting:
                                early.add(held)
                            waiting = []
                        elif sum(map(len, waiting)) > scanner.max_record_bytes:
                            # Only blank lines so far, and many of them: not worth holding for an
                            # early parse; the file is read after the scan instead.
                            waiting = None
                    elif early is not None:
                        early.add(block)
            scan = scanner.finish()
            if early is not None:
                early.add(scanner.final_block)
        source = temp_path or path
        expected_rows = sum(lines.size for lines in scan.start_lines)

        def read_frame(width: int, truncate: bool) -> pl.DataFrame:
            if early is not None and early.width == width and not truncate:
                frame = early.frame()
                # A block Polars read differently from the whole file (or could not read) is read
                # again as a whole; the scan has accepted every record by now, so that is bounded too.
                if frame is not None and frame.height == expected_rows:
                    return frame
            return _read_all_text(source, width, options, quote, truncate)

        return _frame_from_scan(source, scan, options, display_name, quote, read_frame)
    finally:
        if early is not None:
            # Waits for the block being parsed (one block at most), so no parse outlives the read.
            early.stop()
        if temp_path is not None:
            temp_path.unlink(missing_ok=True)


#: blocks handed to the background parse but not parsed yet: more would hold the file's bytes in
#: memory when the parse is slower than the scan.
_BLOCKS_AHEAD = 2


class _EarlyParse:
    """Polars parses the blocks of whole records the scan has accepted, in order, in one thread."""

    def __init__(self, width: int, options: CsvOptions, quote: str | None):
        self.width = width
        self.options = options
        self.quote = quote
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv-parse")
        self.parts: list[Future[pl.DataFrame]] = []

    def add(self, block: bytes) -> None:
        if not block:
            return
        self.parts.append(self.pool.submit(_parse_block, block, self.width, self.options, self.quote))
        pending = [part for part in self.parts if not part.done()]
        if len(pending) > _BLOCKS_AHEAD:
            wait(pending[: len(pending) - _BLOCKS_AHEAD])

    def frame(self) -> pl.DataFrame | None:
        """The blocks' frames in file order, or None when a block could not be parsed."""
        try:
            frames = [part.result() for part in self.parts]
        except pl.exceptions.PolarsError:
            return None
        return pl.concat(frames, how="vertical", rechunk=False) if frames else None

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _parse_block(block: bytes, width: int, options: CsvOptions, quote: str | None) -> pl.DataFrame:
    """One block of whole records (skipped lines and a BOM already removed by the scan); a block
    that starts with a blank line still gives one (empty) row per record, as the scan counts them."""
    return pl.read_csv(
        block,
        has_header=False,
        separator=options.delimiter,
        quote_char=quote,
        schema={f"column_{position}": pl.String for position in range(1, width + 1)},
        encoding="utf8",
        truncate_ragged_lines=False,
        missing_columns="insert",
        raise_if_empty=False,
    )


def _read_all_text(source: Path, width: int, options: CsvOptions, quote: str | None, truncate: bool) -> pl.DataFrame:
    """Polars parse of the whole file, header row included, every column as String."""
    return pl.read_csv(
        source,
        has_header=False,
        separator=options.delimiter,
        quote_char=quote,
        skip_lines=options.skip_rows,
        schema={f"column_{position}": pl.String for position in range(1, width + 1)},
        encoding="utf8",
        truncate_ragged_lines=truncate,
        raise_if_empty=False,
        glob=False,
    )


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


def _frame_from_scan(
    source: Path,
    scan: RecordScan,
    options: CsvOptions,
    display_name: str,
    quote: str | None,
    read_frame: Callable[[int, bool], pl.DataFrame],
) -> DelimitedFile:
    delimiter = options.delimiter
    if scan.first_record is None:
        if options.has_header or not options.column_names:
            if scan.start_lines:
                reason = "no header row: the file has only blank lines"
            elif options.skip_rows:
                reason = f"empty file: nothing after the {options.skip_rows} line(s) of csv.skip_rows"
            else:
                reason = "empty file (only a byte-order mark)"
            raise _empty_file_error(display_name, reason)
        return DelimitedFile(_empty_frame(normalised_names(list(options.column_names), display_name, None)))

    first_fields = scan.first_record_fields or 1
    if first_fields == 1 and not (options.column_names and len(options.column_names) == 1):
        hint = _delimiter_hint(scan.first_record, delimiter, quote)
        if hint:
            raise InputError(
                InputProblem(
                    file=display_name,
                    line=scan.first_record_line,
                    column=None,
                    reason=f"the {'header' if options.has_header else 'first row'} parses as one column with "
                    f"delimiter {delimiter!r} but contains {hint!r}: did you mean delimiter {hint!r}?",
                    fix=f"Set csv.delimiter: {hint!r}",
                )
            )

    header_line = scan.first_record_line if options.has_header else None
    if options.column_names:
        names = normalised_names(list(options.column_names), display_name, None)
        if options.has_header and len(names) != first_fields:
            raise InputError(
                InputProblem(
                    file=display_name,
                    line=header_line,
                    column=None,
                    reason=f"csv.column_names has {len(names)} names but the header has {first_fields} columns",
                    fix="List one name per column of the file in csv.column_names",
                )
            )
    elif options.has_header:
        raw_names = _parse_header(scan.first_record, delimiter, quote)
        names = normalised_names(list(raw_names), display_name, header_line)
    else:
        names = [f"column_{position}" for position in range(1, first_fields + 1)]
    width = len(names)

    start_lines = np.concatenate(scan.start_lines)
    field_counts = np.concatenate(scan.field_counts)
    ignorable = np.concatenate(scan.ignorable)
    is_data = ~ignorable
    if options.has_header:
        # The header is the first record that is not blank.
        is_data[: int(np.flatnonzero(is_data)[0]) + 1] = False
    footer = np.zeros_like(is_data)
    if options.skip_footer_rows:
        # A trailer ("Total,11") would otherwise be imported as a row keyed "Total"; it may have
        # any number of fields, so it is left out before the width check.
        footer[np.flatnonzero(is_data)[-options.skip_footer_rows :]] = True
        is_data &= ~footer

    left_out = np.zeros_like(is_data)
    left_out_problems: list[InputProblem] = []
    if scan.last_record_unterminated and is_data[-1] and options.last_line_without_newline != "accept":
        # Checked before the field counts: a row cut in its last field has the right width and would
        # merge "Rot" for "Rotterdam"; one cut earlier is short, and "ragged" would hide the cause.
        problem = _unterminated_last_record(display_name, int(start_lines[-1]), int(field_counts[-1]), width, options)
        if options.last_line_without_newline == "fail":
            raise InputError(problem)
        left_out[-1] = True
        is_data[-1] = False
        left_out_problems.append(problem)

    ragged = np.flatnonzero(is_data & (field_counts != width))
    if ragged.size:
        raise InputError(_ragged_problems(ragged, start_lines, field_counts, width, display_name, delimiter))

    data_rows = np.flatnonzero(is_data)
    if data_rows.size == 0:
        return DelimitedFile(_empty_frame(names), left_out_problems)

    # Lines of delimiters only may be longer than the header; they are dropped below, so only then is
    # truncation safe (every other record was checked to have exactly `width` fields).
    truncate = bool(((ignorable | footer | left_out) & (field_counts > width)).any())
    try:
        frame = read_frame(width, truncate)
    except pl.exceptions.PolarsError as exc:
        message = str(exc)
        if "utf-8" in message.lower() or "utf8" in message.lower():
            located = locate_invalid_utf8(source, display_name, options.encoding)
            if located is not None:
                raise located from None
        raise InputError(
            InputProblem(
                file=display_name,
                line=None,
                column=None,
                reason=f"the file cannot be parsed: {message.splitlines()[0] if message else type(exc).__name__}",
                fix="Check csv.delimiter and csv.quote_char; a quote character inside an unquoted value is a common cause",
            )
        ) from exc

    if frame.height != len(start_lines):
        raise InputError(
            InputProblem(
                file=display_name,
                line=None,
                column=None,
                reason=f"the file splits into {frame.height} rows for the parser but {len(start_lines)} records by quote scan",
                fix="A quote character inside an unquoted value is the usual cause: quote that value (RFC 4180) "
                "or set csv.quote_char: null",
            )
        )

    first_row, last_row = int(data_rows[0]), int(data_rows[-1])
    if last_row - first_row + 1 == data_rows.size:
        frame = frame.slice(first_row, data_rows.size)  # contiguous: zero-copy
    else:
        frame = frame.filter(pl.Series(is_data))
    null_tokens = ["", *options.null_values]
    frame = frame.select(
        *[
            pl.when(pl.col(f"column_{position}").is_in(null_tokens))
            .then(None)
            .otherwise(pl.col(f"column_{position}"))
            .alias(name)
            for position, name in enumerate(names, start=1)
        ],
        pl.Series(LINE_COLUMN, start_lines[data_rows], dtype=pl.Int64),
    )
    return DelimitedFile(frame, left_out_problems)


def _unterminated_last_record(display_name: str, line: int, fields: int, width: int, options: CsvOptions) -> InputProblem:
    shape = f" and has {fields} of the {width} fields" if fields != width else ""
    if options.last_line_without_newline == "fail":
        outcome = "nothing of the delivery was imported"
        fix = (
            "Deliver the complete file again (a changed file is picked up again); if this partner's files "
            "legitimately end without a line break, set csv.last_line_without_newline: accept "
            "(or reject_row to leave the last row out)"
        )
    else:
        outcome = "the row was left out (csv.last_line_without_newline: reject_row)"
        fix = "Deliver the complete file again, or set csv.last_line_without_newline: accept if the partner's files end without a line break"
    return InputProblem(
        file=display_name,
        line=line,
        column=None,
        reason=f"the last record has no line terminator while the records before it end with one{shape}: "
        f"the upload was probably cut short, so its last value may be incomplete; {outcome}",
        fix=fix,
    )


def _empty_frame(names: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={**{name: pl.String for name in names}, LINE_COLUMN: pl.Int64})


def _ragged_problems(
    ragged: np.ndarray, start_lines: np.ndarray, field_counts: np.ndarray, width: int, display_name: str, delimiter: str
) -> list[InputProblem]:
    problems = [
        InputProblem(
            file=display_name,
            line=int(start_lines[index]),
            column=None,
            reason=f"the row has {int(field_counts[index])} field{'' if field_counts[index] == 1 else 's'}, expected {width}",
            fix=f"Quote values that contain the delimiter {delimiter!r}, add the missing fields, "
            "or check for a stray quote character",
        )
        for index in ragged[:MAX_LISTED_PROBLEMS]
    ]
    if ragged.size > MAX_LISTED_PROBLEMS:
        problems.append(
            InputProblem(
                file=display_name,
                line=None,
                column=None,
                reason=f"{ragged.size} rows in all have a wrong number of fields; the first {MAX_LISTED_PROBLEMS} are listed",
                fix="Check csv.delimiter and the export that produced the file",
            )
        )
    return problems

