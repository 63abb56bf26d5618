"""Decoding: the bytes of a delivery as a stream of UTF-8 RFC 4180 chunks.

gzip is recognised by its magic bytes (decrypted deliveries often lose their extension), a declared
legacy encoding is transcoded strictly chunk by chunk (an undecodable byte is named by offset and
line), UTF-16 that was not declared is recognised, and backslash-style escapes are rewritten as
doubled quotes, the only quoting Polars understands. Nothing is read into one Python string.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cdp_pipeline.errors import InputError, InputProblem

#: bytes read per step of the streaming passes.
CHUNK_BYTES = 8 * 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"
#: codecs whose bytes Polars reads as they are (a UTF-8 BOM at the start is stripped by Polars).
UTF8_CODECS = {"utf-8", "utf-8-sig"}


def open_bytes(path: Path) -> tuple[BinaryIO, bool]:
    """Open the file for binary reading, transparently decompressing gzip (detected by magic bytes,
    not by the name, because decrypted deliveries often lose their extension)."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        # gzip.open owns its file handle (GzipFile(fileobj=...) would leave it open on close).
        return gzip.open(path, "rb"), True  # type: ignore[return-value]
    return open(path, "rb"), False


def raw_chunks(stream: BinaryIO, display_name: str, max_bytes: int | None = None) -> Iterator[bytes]:
    """The stream in pieces of ``CHUNK_BYTES``; a corrupt gzip stream, or one that expands past
    ``max_bytes``, becomes an InputError naming the file."""
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


def looks_like_utf16(head: bytes) -> bool:
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


def decoded_utf8_chunks(
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


def locate_invalid_utf8(path: Path, display_name: str, declared: str) -> InputError | None:
    """Find the first invalid UTF-8 byte of a file Polars refused, for an error with offset and line."""
    stream, _ = open_bytes(path)
    with stream:
        try:
            for _ in decoded_utf8_chunks(raw_chunks(stream, display_name), "utf-8", declared, display_name):
                pass
        except InputError as exc:
            return exc
    return None


def escapes_as_doubled_quotes(chunks: Iterator[bytes], escape: bytes, quote: bytes) -> Iterator[bytes]:
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
