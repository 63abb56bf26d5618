"""Reading delimited files into all-text Polars frames, and typing their columns.

The engine half of "Define file and field handling": no Dagster here.

How a file is read (``read_delimited``):

1. The bytes are streamed once, in chunks, through a vectorised record scan (NumPy over each chunk:
   quote parity, structural newlines and delimiters). The scan finds, without any per-row Python,
   the physical line where each record starts, each record's field count, blank and
   delimiter-only lines, NUL bytes and an unterminated quote. Ragged rows are reported from it
   with line numbers, which Polars cannot do (it pads short rows with nulls silently).
2. Only when the bytes are not already UTF-8 RFC 4180 (a declared legacy encoding, gzip, an
   escape character) the same pass writes a UTF-8 copy to a temporary file; a UTF-8 file is
   never copied.
3. Polars reads the (original or converted) file with every column as ``pl.String``; the scan's
   line numbers become the ``_line`` column.

Memory stays bounded by the chunk size plus the resulting frame: no file is read into a Python
string. The scan's per-record arrays cost ~17 bytes per record.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl

if sys.byteorder != "little":  # pragma: no cover - _quote_parity packs bytes into little-endian words
    raise ImportError("cdp_pipeline.tables.csv_reading needs a little-endian machine")

from cdp_pipeline.config.csv_options import ColumnFormat, CsvOptions
from cdp_pipeline.errors import ConfigError, InputError, InputProblem
from cdp_pipeline.tables.staged import LINE as LINE_COLUMN

#: bytes read per step of the streaming passes.
CHUNK_BYTES = 8 * 1024 * 1024
#: a record (one row, quoted newlines included) longer than this is refused: in practice it is an
#: unterminated quote swallowing the rest of the file, and refusing it keeps memory bounded.
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: cell problems listed one by one before the rest are summarised.
MAX_LISTED_PROBLEMS = 100

_GZIP_MAGIC = b"\x1f\x8b"
#: codecs whose bytes Polars reads as they are (a UTF-8 BOM at the start is stripped by Polars).
_UTF8_CODECS = {"utf-8", "utf-8-sig"}
#: bytes that carry no value on their own: a line made only of these is skipped.
_SPACE_BYTES = (0x20, 0x09, 0x0D)
#: delimiters suggested when a header parses as a single column.
_LIKELY_DELIMITERS = (";", "\t", "|", ",", "~")

_NAME_RUN = re.compile(r"[^a-z0-9]+")


# --------------------------------------------------------------------------- column names


def normalise_column_name(name: str) -> str:
    """Turn a header cell into the column name used everywhere in the configuration.

    The rule, applied in this order:

    1. strip a byte-order mark (U+FEFF) and surrounding whitespace;
    2. lower-case;
    3. replace every run of characters outside ``[a-z0-9]`` with a single ``_``
       (so accented letters become ``_`` too: ``Imię`` → ``imi``);
    4. strip leading and trailing ``_``;
    5. prefix a name that starts with a digit with ``_`` (``2nd Email`` → ``_2nd_email``).

    Examples: ``"Customer ID"`` → ``customer_id``, ``"E-Mail "`` → ``e_mail``,
    ``"\\ufeffcustomer_id"`` → ``customer_id``.

    Raises ``ValueError`` when nothing is left (a blank header cell or one made only of
    punctuation); ``read_delimited`` turns that into an ``InputError`` naming the file and line.
    """
    cleaned = name.replace("\ufeff", "").strip().lower()
    cleaned = _NAME_RUN.sub("_", cleaned).strip("_")
    if not cleaned:
        raise ValueError(f"column name {name!r} is empty after normalisation (it has no letters or digits)")
    if cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def _normalised_names(raw_names: list[str | None], display_name: str, header_line: int | None) -> list[str]:
    """Normalise every header name; blanks and collisions become one InputError listing them all."""
    problems: list[InputProblem] = []
    names: list[str] = []
    raw_names_by_name: dict[str, list[str]] = {}
    for position, raw in enumerate(raw_names, start=1):
        try:
            normalised = normalise_column_name(raw or "")
        except ValueError:
            problems.append(
                InputProblem(
                    file=display_name,
                    line=header_line,
                    column=raw or None,
                    reason=f"header column {position} has no usable name ({raw!r})",
                    fix="Give every column a name with at least one letter or digit, or set csv.column_names",
                )
            )
            normalised = f"__blank_{position}"
        names.append(normalised)
        raw_names_by_name.setdefault(normalised, []).append(raw or "")
    for normalised, raws in raw_names_by_name.items():
        if len(raws) > 1 and not normalised.startswith("__blank_"):
            listed = ", ".join(repr(raw) for raw in raws)
            problems.append(
                InputProblem(
                    file=display_name,
                    line=header_line,
                    column=raws[0],
                    reason=f"header columns {listed} all become {normalised!r} after normalisation",
                    fix="Rename the duplicates in the file (names are compared after lower-casing and turning "
                    "non-alphanumerics into '_'), or set csv.column_names",
                )
            )
    if problems:
        raise InputError(problems)
    return names


# --------------------------------------------------------------------------- byte sources


def _open_bytes(path: Path) -> tuple[BinaryIO, bool]:
    """Open the file for binary reading, transparently decompressing gzip (detected by magic bytes,
    not by the name, because decrypted deliveries often lose their extension)."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        # gzip.open owns its file handle (GzipFile(fileobj=...) would leave it open on close).
        return gzip.open(path, "rb"), True  # type: ignore[return-value]
    return open(path, "rb"), False


def _raw_chunks(stream: BinaryIO, display_name: str, max_bytes: int | None = None) -> Iterator[bytes]:
    total = 0
    try:
        while chunk := stream.read(CHUNK_BYTES):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise InputError(
                    InputProblem(
                        file=display_name,
                        line=None,
                        column=None,
                        reason=f"the gzip-compressed file expands to more than {max_bytes:,} bytes, the connection's max_file_gb",
                        fix="If the file is genuine, raise max_file_gb in the connection; otherwise it is a compression bomb",
                    )
                )
            yield chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InputError(
            InputProblem(
                file=display_name,
                line=None,
                column=None,
                reason=f"the gzip-compressed file is corrupt or truncated ({exc})",
                fix="Deliver the complete file again",
            )
        ) from exc


def _looks_like_utf16(head: bytes) -> bool:
    """A UTF-16/32 byte-order mark, or NULs on every other byte (Excel "Unicode text")."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    sample = head[:4096]
    if len(sample) < 8:
        return False
    even_nuls = sample[0::2].count(0) / len(sample[0::2])
    odd_nuls = sample[1::2].count(0) / len(sample[1::2])
    return (even_nuls > 0.3 and odd_nuls < 0.05) or (odd_nuls > 0.3 and even_nuls < 0.05)


def _decode_error(
    exc: UnicodeDecodeError,
    *,
    chunk: bytes,
    chunk_offset: int,
    pending: bytes,
    saved_state: tuple[bytes, int],
    codec: str,
    lines_before: int,
    declared: str,
    display_name: str,
) -> InputError:
    """Name the byte offset and line of an undecodable byte."""
    # exc.object is the decoder's buffered bytes followed by this chunk.
    start_in_chunk = exc.start - len(pending)
    offset = chunk_offset + start_in_chunk
    counter = codecs.getincrementaldecoder(codec)(errors="replace")
    counter.setstate(saved_state)
    line = lines_before + counter.decode(chunk[: max(start_in_chunk, 0)]).count("\n") + 1
    bad = exc.object[exc.start : exc.start + 1]
    shown = f"byte 0x{bad.hex().upper()}" if bad else "an incomplete character at the end of the file"
    return InputError(
        InputProblem(
            file=display_name,
            line=line,
            column=None,
            reason=f"{shown} at byte offset {offset} is not valid {codec}: expected encoding {declared}",
            fix="Set csv.encoding to the file's real encoding (e.g. cp1250, latin-1, utf-16)",
        )
    )


def _decoded_utf8_chunks(
    chunks: Iterator[bytes], codec: str, declared: str, display_name: str
) -> Iterator[bytes]:
    """Strictly decode ``codec`` chunk by chunk and re-encode as UTF-8 (a streaming transcode)."""
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    offset = 0
    lines = 0
    at_start = True
    for chunk in chunks:
        saved_state = decoder.getstate()
        pending = saved_state[0]
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise _decode_error(
                exc, chunk=chunk, chunk_offset=offset, pending=pending, saved_state=saved_state, codec=codec,
                lines_before=lines, declared=declared, display_name=display_name,
            ) from None
        offset += len(chunk)
        lines += text.count("\n")
        # A UTF-8 BOM decoded by a plain utf-8 codec would survive as U+FEFF; drop it once at the start.
        if at_start and text:
            at_start = False
            text = text.removeprefix("\ufeff")
        yield text.encode("utf-8")
    saved_state = decoder.getstate()
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _decode_error(
            exc, chunk=b"", chunk_offset=offset, pending=saved_state[0], saved_state=saved_state, codec=codec,
            lines_before=lines, declared=declared, display_name=display_name,
        ) from None
    if tail:
        yield tail.encode("utf-8")


def _locate_invalid_utf8(path: Path, display_name: str, declared: str) -> InputError | None:
    """Find the first invalid UTF-8 byte of a file Polars refused, for an error with offset and line."""
    stream, _ = _open_bytes(path)
    with stream:
        try:
            for _ in _decoded_utf8_chunks(_raw_chunks(stream, display_name), "utf-8", declared, display_name):
                pass
        except InputError as exc:
            return exc
    return None


def _escapes_as_doubled_quotes(chunks: Iterator[bytes], escape: bytes, quote: bytes) -> Iterator[bytes]:
    """Rewrite backslash-style escapes (``\\"`` inside quotes) as RFC 4180 doubled quotes, which is the
    only quoting Polars understands. ``<esc><esc>`` becomes one ``<esc>``; an escape before any other
    character is kept as it is. Pure ``bytes.replace`` calls: C speed, no per-row Python."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        # A trailing run of escape characters pairs up with what the next chunk starts with.
        kept = data.rstrip(escape)
        carry = data[len(kept) :]
        yield _translate_escapes(kept, escape, quote)
    if carry:
        yield _translate_escapes(carry, escape, quote)


def _translate_escapes(data: bytes, escape: bytes, quote: bytes) -> bytes:
    if b"\x00" in data:
        # NUL is the placeholder below; a file with NULs is rejected by the scan anyway, so leave it
        # untouched and let the scan name the line.
        return data
    # bytes.replace pairs left to right, exactly like a reader consuming "\\\\" before "\\\"".
    return data.replace(escape + escape, b"\x00").replace(escape + quote, quote + quote).replace(b"\x00", escape)


# --------------------------------------------------------------------------- record scan


@dataclass
class _Scan:
    """What the record scan learnt about the records after the skipped lines."""

    start_lines: list[np.ndarray] = field(default_factory=list)
    field_counts: list[np.ndarray] = field(default_factory=list)
    ignorable: list[np.ndarray] = field(default_factory=list)
    #: bytes of the first record that is not blank (the header when the file has one).
    first_record: bytes | None = None
    first_record_line: int | None = None
    first_record_fields: int | None = None


_BYTE_LANES = np.uint64(0x0101010101010101)


def _quote_parity(arr: np.ndarray, quote: int) -> np.ndarray:
    """Per byte, 1 when an odd number of quote characters precede it (inclusive), else 0.

    A prefix XOR done eight bytes at a time on uint64 words (shift-xor inside each word, then one
    accumulate over the words), in place: about four times faster than ``np.cumsum`` over the bytes.
    """
    length = arr.size
    padded = np.zeros((length + 7) // 8 * 8, dtype=np.uint8)
    np.equal(arr, quote, out=padded[:length].view(np.bool_))
    words = padded.view(np.uint64)  # the shifts below assume little-endian lanes
    scratch = np.empty_like(words)
    for shift in (8, 16, 32):
        np.left_shift(words, np.uint64(shift), out=scratch)
        np.bitwise_xor(words, scratch, out=words)
    np.right_shift(words, np.uint64(56), out=scratch)  # each word's own parity
    np.bitwise_xor.accumulate(scratch, out=scratch)
    np.multiply(scratch[:-1], _BYTE_LANES, out=scratch[:-1])  # spread to every byte lane
    np.bitwise_xor(words[1:], scratch[:-1], out=words[1:])
    return padded[:length]


class _RecordScanner:
    """Splits a UTF-8 byte stream into records the way Polars does, vectorised per chunk.

    Quote state is quote-character parity (RFC 4180 doubled quotes toggle twice, so they cancel).
    Each processed block ends at a structural newline, so every block starts outside quotes and no
    parity has to be carried between blocks; only the bytes of one incomplete record are carried.
    """

    def __init__(self, delimiter: bytes, quote: bytes | None, skip_rows: int, display_name: str):
        self.delimiter = delimiter[0]
        self.quote = quote[0] if quote else None
        self.lines_to_skip = skip_rows
        self.display_name = display_name
        self.carry = b""
        #: physical lines (newlines) before the first byte of ``carry``.
        self.lines_before = 0
        self.first_chunk = True
        self.result = _Scan()

    # -- feeding

    def feed(self, chunk: bytes) -> None:
        if self.first_chunk:
            self.first_chunk = False
            if not self.lines_to_skip:
                # Polars drops a leading UTF-8 BOM too; without this a BOM-only file would have a "record".
                chunk = chunk.removeprefix(b"\xef\xbb\xbf")
            if b"\n" not in chunk and b"\r" in chunk:
                raise InputError(
                    InputProblem(
                        file=self.display_name,
                        line=1,
                        column=None,
                        reason="the file uses CR-only line endings (classic Mac OS), which are not supported",
                        fix="Convert the line endings to LF or CRLF before delivery",
                    )
                )
        data = self.carry + chunk if self.carry else chunk
        if self.lines_to_skip:
            data = self._skip_lines(data)
        self._process(data, final=False)

    def finish(self) -> _Scan:
        if self.carry:
            self._process(self.carry, final=True)
        return self.result

    def _skip_lines(self, data: bytes) -> bytes:
        """Drop ``skip_rows`` physical lines (quotes not respected, like Polars' ``skip_lines``)."""
        position = 0
        while self.lines_to_skip:
            newline = data.find(b"\n", position)
            if newline < 0:
                return b""  # the skipped line continues in the next chunk
            position = newline + 1
            self.lines_to_skip -= 1
            self.lines_before += 1
        return data[position:]

    # -- one block

    def _process(self, data: bytes, *, final: bool) -> None:
        if not data:
            self.carry = b""
            return
        arr = np.frombuffer(data, dtype=np.uint8)
        if b"\x00" in data:
            line = self.lines_before + data.count(b"\n", 0, data.index(b"\x00")) + 1
            raise InputError(
                InputProblem(
                    file=self.display_name,
                    line=line,
                    column=None,
                    reason="the line contains a NUL byte (0x00)",
                    fix="Remove the NUL bytes; if every other byte is NUL the file is UTF-16: set csv.encoding: utf-16",
                )
            )
        newlines = np.flatnonzero(arr == 0x0A)
        parity: np.ndarray | None = None
        if self.quote is not None and self.quote in data:
            parity = _quote_parity(arr, self.quote)
        structural = newlines if parity is None else newlines[parity[newlines] == 0]

        if final:
            if parity is not None and parity[-1]:
                raise self._unterminated(len(data))
            ends = np.append(structural, len(data)) if (structural.size == 0 or structural[-1] != len(data) - 1) else structural
            self.carry = b""
            block_end = len(data)
        else:
            if structural.size == 0:
                self.carry = data
                if len(data) > MAX_RECORD_BYTES:
                    raise self._unterminated(len(data))
                return
            ends = structural
            block_end = int(structural[-1]) + 1
            self.carry = data[block_end:]

        block = arr[:block_end]
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        # Line of each record's first byte: newlines before it, quoted ones included.
        start_lines = self.lines_before + np.searchsorted(newlines, starts) + 1

        is_delimiter = np.equal(block, self.delimiter)
        if parity is not None:
            # delimiter (1) and outside quotes (parity 0) in one comparison: 1 > 0
            np.greater(is_delimiter.view(np.uint8), parity[:block_end], out=is_delimiter)
        delimiters = np.flatnonzero(is_delimiter)
        field_counts = np.diff(np.searchsorted(delimiters, ends), prepend=0) + 1

        lengths = ends - starts
        ignorable = lengths == 0
        first_bytes = block[np.minimum(starts, block_end - 1)]
        maybe_blank = ~ignorable & np.isin(first_bytes, (self.delimiter, *_SPACE_BYTES))
        if maybe_blank.any():
            # Only lines that start with a delimiter or a space can be blank: check them fully.
            content = ~(np.isin(block, (self.delimiter, 0x0A, *_SPACE_BYTES)))
            has_content = np.logical_or.reduceat(content, starts)
            ignorable |= maybe_blank & ~has_content

        scan = self.result
        if scan.first_record is None:
            valued = np.flatnonzero(~ignorable)
            if valued.size:
                first = int(valued[0])
                scan.first_record = bytes(block[starts[first] : ends[first]])
                scan.first_record_line = int(start_lines[first])
                scan.first_record_fields = int(field_counts[first])
        scan.start_lines.append(start_lines.astype(np.int64, copy=False))
        scan.field_counts.append(field_counts.astype(np.int64, copy=False))
        scan.ignorable.append(ignorable)
        self.lines_before += int(np.searchsorted(newlines, block_end))

    def _unterminated(self, length: int) -> InputError:
        line = self.lines_before + 1
        if length > MAX_RECORD_BYTES:
            reason = (
                f"the record starting at line {line} is longer than {MAX_RECORD_BYTES // (1024 * 1024)} MiB: "
                "a quote opened there is most likely never closed"
            )
        else:
            reason = f"unterminated quote: a quoted field in the record starting at line {line} is never closed"
        return InputError(
            InputProblem(
                file=self.display_name,
                line=line,
                column=None,
                reason=reason,
                fix="Close the quote; if the quote character is part of an unquoted value (e.g. 24\" screen), "
                "quote that value with doubled quotes (RFC 4180) or set csv.quote_char: null",
            )
        )


# --------------------------------------------------------------------------- reading


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


def read_delimited(path: Path, options: CsvOptions, display_name: str, *, max_bytes: int | None = None) -> pl.DataFrame:
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
    like another delimiter, blank or colliding column names, a corrupt gzip stream, or one that
    expands past ``max_bytes``.
    """
    delimiter = options.delimiter
    quote = options.quote_char or None
    for role, char in (("delimiter", delimiter), ("quote_char", quote), ("escape_char", options.escape_char)):
        if char is not None and len(char.encode("utf-8")) != 1:
            raise ConfigError(f"csv.{role} {char!r} must be a single-byte (ASCII) character for {display_name}")
    escape = options.escape_char if (options.escape_char and quote and options.escape_char != quote) else None
    codec = codecs.lookup(options.encoding).name

    stream, compressed = _open_bytes(path)
    temp_path: Path | None = None
    pool: ThreadPoolExecutor | None = None
    early_read: Future[pl.DataFrame] | None = None
    early_width = 0
    try:
        with stream:
            # Only a gzip stream can grow past the size the file was checked at when it arrived.
            chunks = _raw_chunks(stream, display_name, max_bytes if compressed else None)
            head = next(chunks, b"")
            if not head:
                raise _empty_file_error(display_name)
            if not codec.startswith(("utf-16", "utf-32")) and _looks_like_utf16(head):
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
            if codec not in _UTF8_CODECS:
                utf8_chunks = _decoded_utf8_chunks(utf8_chunks, codec, options.encoding, display_name)
            if escape:
                utf8_chunks = _escapes_as_doubled_quotes(utf8_chunks, escape.encode(), quote.encode())  # type: ignore[union-attr]
            rewrite = compressed or codec not in _UTF8_CODECS or escape is not None

            scanner = _RecordScanner(delimiter.encode(), quote.encode() if quote else None, options.skip_rows, display_name)
            if rewrite:
                temp_path = _temp_path_near(path)
                with open(temp_path, "wb") as converted:
                    for chunk in utf8_chunks:
                        converted.write(chunk)
                        scanner.feed(chunk)
            else:
                # The file is final, so Polars can parse it in a thread while the scan runs (NumPy and
                # Polars both release the GIL): the scan costs about as much as the parse.
                for chunk in utf8_chunks:
                    scanner.feed(chunk)
                    if early_read is None and scanner.result.first_record_fields is not None:
                        early_width = scanner.result.first_record_fields
                        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv-parse")
                        early_read = pool.submit(_read_all_text, path, early_width, options, quote, False)
            scan = scanner.finish()
        source = temp_path or path

        def read_frame(width: int, truncate: bool) -> pl.DataFrame:
            if early_read is not None and early_width == width and not truncate:
                return early_read.result()
            return _read_all_text(source, width, options, quote, truncate)

        return _frame_from_scan(source, scan, options, display_name, quote, read_frame)
    finally:
        if pool is not None:
            # On an error the early parse is abandoned, not awaited.
            pool.shutdown(wait=False, cancel_futures=True)
        if temp_path is not None:
            temp_path.unlink(missing_ok=True)


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
    scan: _Scan,
    options: CsvOptions,
    display_name: str,
    quote: str | None,
    read_frame: Callable[[int, bool], pl.DataFrame],
) -> pl.DataFrame:
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
        return _empty_frame(_normalised_names(list(options.column_names), display_name, None))

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
        names = _normalised_names(list(options.column_names), display_name, None)
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
        names = _normalised_names(list(raw_names), display_name, header_line)
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
        # A trailer ("Total,11") would otherwise be imported as a row keyed "Total" (reliability
        # #43); it may have any number of fields, so it is left out before the width check.
        footer[np.flatnonzero(is_data)[-options.skip_footer_rows :]] = True
        is_data &= ~footer

    ragged = np.flatnonzero(is_data & (field_counts != width))
    if ragged.size:
        raise InputError(_ragged_problems(ragged, start_lines, field_counts, width, display_name, delimiter))

    data_rows = np.flatnonzero(is_data)
    if data_rows.size == 0:
        return _empty_frame(names)

    # Lines of delimiters only may be longer than the header; they are dropped below, so only then is
    # truncation safe (every other record was checked to have exactly `width` fields).
    truncate = bool(((ignorable | footer) & (field_counts > width)).any())
    try:
        frame = read_frame(width, truncate)
    except pl.exceptions.PolarsError as exc:
        message = str(exc)
        if "utf-8" in message.lower() or "utf8" in message.lower():
            located = _locate_invalid_utf8(source, display_name, options.encoding)
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
    return frame.select(
        *[
            pl.when(pl.col(f"column_{position}").is_in(null_tokens))
            .then(None)
            .otherwise(pl.col(f"column_{position}"))
            .alias(name)
            for position, name in enumerate(names, start=1)
        ],
        pl.Series(LINE_COLUMN, start_lines[data_rows], dtype=pl.Int64),
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


# --------------------------------------------------------------------------- typing

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
    parsed = df.with_columns(typed_exprs)

    problems: list[InputProblem] = []
    failures_by_column: dict[str, int] = {}
    if failure_exprs:
        failure_masks = parsed.select(failure_exprs)
        counts = failure_masks.sum().row(0, named=True)
        failures_by_column = {name: int(count) for name, count in counts.items() if count}
        has_lines = LINE_COLUMN in df.columns
        for name in failures_by_column:
            column_format = to_parse[name]
            bad = parsed.filter(failure_masks[name]).head(max_problems)
            lines = bad[LINE_COLUMN].to_list() if has_lines else [None] * bad.height
            for line, value in zip(lines, bad[name].to_list()):
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
