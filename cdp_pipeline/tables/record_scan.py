"""The record scan: where each record of a UTF-8 delimited file starts, and how many fields it has.

A vectorised pass over each chunk (NumPy: quote parity, structural newlines and delimiters) finds,
without any per-row Python, the physical line where each record starts, each record's field count,
blank and delimiter-only lines, NUL bytes and an unterminated quote. Ragged rows are reported from
it with line numbers, which Polars cannot do (it pads short rows with nulls silently). The per-record
arrays cost ~17 bytes per record.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from cdp_pipeline.errors import InputError, InputProblem

if sys.byteorder != "little":  # pragma: no cover - _quote_parity packs bytes into little-endian words
    raise ImportError("cdp_pipeline.tables.record_scan needs a little-endian machine")

#: a record (one row, quoted newlines included) longer than this is refused: in practice it is an
#: unterminated quote swallowing the rest of the file, and refusing it keeps memory bounded.
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: bytes that carry no value on their own: a line made only of these is skipped.
_SPACE_BYTES = (0x20, 0x09, 0x0D)


@dataclass
class RecordScan:
    """What the record scan learnt about the records after the skipped lines."""

    start_lines: list[np.ndarray] = field(default_factory=list)
    field_counts: list[np.ndarray] = field(default_factory=list)
    ignorable: list[np.ndarray] = field(default_factory=list)
    #: bytes of the first record that is not blank (the header when the file has one).
    first_record: bytes | None = None
    first_record_line: int | None = None
    first_record_fields: int | None = None
    #: the last record ends at the end of the file without a line terminator while records before it
    #: have one: what an upload cut short looks like (the reader decides what that means).
    last_record_unterminated: bool = False


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


class RecordScanner:
    """Splits a UTF-8 byte stream into records the way Polars does, vectorised per chunk.

    Quote state is quote-character parity (RFC 4180 doubled quotes toggle twice, so they cancel).
    Each processed block ends at a structural newline, so every block starts outside quotes and no
    parity has to be carried between blocks; only the bytes of one incomplete record are carried.
    """

    def __init__(self, delimiter: bytes, quote: bytes | None, skip_rows: int, display_name: str, max_record_bytes: int | None = None):
        #: looked up here, not bound at import, so the default can be lowered in one place.
        self.max_record_bytes = max_record_bytes or MAX_RECORD_BYTES
        self.delimiter = delimiter[0]
        self.quote = quote[0] if quote else None
        self.lines_to_skip = skip_rows
        self.display_name = display_name
        self.carry = b""
        #: physical lines (newlines) before the first byte of ``carry``.
        self.lines_before = 0
        self.first_chunk = True
        self.result = RecordScan()
        #: the bytes of the records the last ``finish`` accepted (see ``feed``).
        self.final_block = b""

    # -- feeding

    def feed(self, chunk: bytes) -> bytes:
        """Scan ``chunk``; returns the bytes of the whole records it completed, each within the record
        length cap, after skipped lines and a leading BOM: what a parser may safely read next."""
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
        return self._process(data, final=False)

    def finish(self) -> RecordScan:
        """The scan of the whole input; the bytes of its last records are left in ``final_block``."""
        self.final_block = b""
        if self.carry:
            terminated_before = bool(self.result.start_lines) and any(lines.size for lines in self.result.start_lines)
            self.final_block = self._process(self.carry, final=True)
            self.result.last_record_unterminated = terminated_before
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

    def _process(self, data: bytes, *, final: bool) -> bytes:
        if not data:
            self.carry = b""
            return b""
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

        quote_open = parity is not None and bool(parity[-1])
        if final:
            if quote_open:
                raise self._unterminated(len(data), quote_open=True)
            ends = np.append(structural, len(data)) if (structural.size == 0 or structural[-1] != len(data) - 1) else structural
            self.carry = b""
            block_end = len(data)
        else:
            if structural.size == 0:
                self.carry = data
                if len(data) > self.max_record_bytes:
                    # Refused while the record is still being read: a file without line breaks never
                    # gets into memory (or to a parser) beyond the cap.
                    raise self._unterminated(len(data), quote_open=quote_open)
                return b""
            ends = structural
            block_end = int(structural[-1]) + 1
            self.carry = data[block_end:]

        block = arr[:block_end]
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        # Line of each record's first byte: newlines before it, quoted ones included.
        start_lines = self.lines_before + np.searchsorted(newlines, starts) + 1
        lengths = ends - starts
        too_long = np.flatnonzero(lengths > self.max_record_bytes)
        if too_long.size:
            # A whole record over the cap (possible when the cap is below the chunk size): refused
            # like one still being read, before any parser sees it.
            first = int(too_long[0])
            spans_lines = int(np.searchsorted(newlines, ends[first])) - int(np.searchsorted(newlines, starts[first])) > 0
            raise self._unterminated(int(lengths[first]), quote_open=False, line=int(start_lines[first]), quoted_line_breaks=spans_lines)

        is_delimiter = np.equal(block, self.delimiter)
        if parity is not None:
            # delimiter (1) and outside quotes (parity 0) in one comparison: 1 > 0
            np.greater(is_delimiter.view(np.uint8), parity[:block_end], out=is_delimiter)
        delimiters = np.flatnonzero(is_delimiter)
        field_counts = np.diff(np.searchsorted(delimiters, ends), prepend=0) + 1

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
        return data if block_end == len(data) else data[:block_end]

    def _unterminated(self, length: int, *, quote_open: bool, line: int | None = None, quoted_line_breaks: bool = False) -> InputError:
        """The error for a record that never ends (an open quote at the end of the file) or is longer
        than the cap. A quote is named only when one is open: a file without line breaks blamed on
        "a quote never closed" sends the partner looking for a quote that is not there."""
        line = self.lines_before + 1 if line is None else line
        if length <= self.max_record_bytes:
            reason = f"unterminated quote: a quoted field in the record starting at line {line} is never closed"
            fix = _CLOSE_THE_QUOTE
        else:
            cap = _size_text(self.max_record_bytes)
            reason = f"the record starting at line {line} is longer than {cap}, the longest record read (csv.max_record_mb)"
            if quote_open:
                reason += ": a quote opened in it is still open there, most likely never closed"
                fix = _CLOSE_THE_QUOTE
            elif quoted_line_breaks:
                reason += ": a quoted value in it spans several lines, so a quote character is most likely part of an unquoted value"
                fix = _CLOSE_THE_QUOTE
            else:
                reason += ": no line break ends it within that length"
                fix = (
                    "Check that the file is a delimited text file with LF or CRLF line endings; if records this long "
                    "are genuine, raise csv.max_record_mb"
                )
        return InputError(InputProblem(file=self.display_name, line=line, column=None, reason=reason, fix=fix))


_CLOSE_THE_QUOTE = (
    "Close the quote; if the quote character is part of an unquoted value (e.g. 24\" screen), "
    "quote that value with doubled quotes (RFC 4180) or set csv.quote_char: null"
)


def _size_text(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib} MiB" if size % mib == 0 else f"{size:,} bytes"
