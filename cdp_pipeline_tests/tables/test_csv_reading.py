"""read_delimited on small real files written to tmp_path (and parse_typed after it, end to end)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from cdp_pipeline.config.csv_options import ColumnFormat, CsvOptions
from cdp_pipeline.errors import InputError
from cdp_pipeline.tables import csv_decoding, record_scan
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.csv_reading import read_delimited, read_delimited_file


def write(tmp_path: Path, data: bytes, name: str = "profiles.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read(tmp_path: Path, data: bytes, name: str = "profiles.csv", **options) -> pl.DataFrame:
    return read_delimited(write(tmp_path, data, name), CsvOptions(**options), name)


def read_error(tmp_path: Path, data: bytes, **options) -> InputError:
    with pytest.raises(InputError) as caught:
        read(tmp_path, data, **options)
    return caught.value


def rows(frame: pl.DataFrame) -> list[tuple]:
    return frame.rows()


# ----------------------------------------------------------------- names


def test_duplicate_names_after_normalisation_list_the_header_names(tmp_path: Path) -> None:
    error = read_error(tmp_path, b"Email,email ,id\nx,y,1\n")
    (problem,) = error.problems
    assert problem.line == 1
    assert "'Email'" in problem.reason and "'email '" in problem.reason and "'email'" in problem.reason


def test_blank_header_name_is_an_error(tmp_path: Path) -> None:
    error = read_error(tmp_path, b"id,,name\n1,2,3\n")
    assert "header column 2" in error.problems[0].reason


# ----------------------------------------------------------------- shape, delimiters, quoting


def test_frame_shape_strings_in_file_order_plus_line(tmp_path: Path) -> None:
    frame = read(tmp_path, b"Customer ID,Email,Score\n00123,a@x.com,7\n")
    assert frame.columns == ["customer_id", "email", "score", "_line"]
    assert frame.dtypes == [pl.String, pl.String, pl.String, pl.Int64]
    assert rows(frame) == [("00123", "a@x.com", "7", 2)]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|", "~"])
def test_each_delimiter(tmp_path: Path, delimiter: str) -> None:
    d = delimiter.encode()
    data = b"id" + d + b"name\n1" + d + b'"Smith' + d + b' John"\n2' + d + b"Doe\n"
    frame = read(tmp_path, data, delimiter=delimiter)
    assert rows(frame) == [("1", f"Smith{delimiter} John", 2), ("2", "Doe", 3)]


def test_rfc4180_quotes_embedded_newlines_and_exact_lines(tmp_path: Path) -> None:
    data = b'id,address,note\n1,"Main St 1\nFloor 2\nRoom 3","say ""hi"""\n2,"a,b",x\n3,,\n'
    frame = read(tmp_path, data)
    assert rows(frame) == [
        ("1", "Main St 1\nFloor 2\nRoom 3", 'say "hi"', 2),
        ("2", "a,b", "x", 5),
        ("3", None, None, 6),
    ]


def test_single_quote_char(tmp_path: Path) -> None:
    frame = read(tmp_path, b"id;name\n1;'O''Brien; Pat'\n", delimiter=";", quote_char="'")
    assert rows(frame) == [("1", "O'Brien; Pat", 2)]


def test_no_quote_char_keeps_quotes_as_data(tmp_path: Path) -> None:
    frame = read(tmp_path, b'id\tsize\n1\t24" screen\n', delimiter="\t", quote_char=None)
    assert rows(frame) == [("1", '24" screen', 2)]


def test_backslash_escape_char(tmp_path: Path) -> None:
    data = b'id,quote,path\n1,"she said \\"hi\\"","C:\\\\temp"\n2,"end\\\\",x\n'
    frame = read(tmp_path, data, escape_char="\\")
    assert rows(frame) == [("1", 'she said "hi"', "C:\\temp", 2), ("2", "end\\", "x", 3)]


def test_escape_char_across_chunk_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 7)
    data = b'id,text\n1,"a\\"b\\\\"\n2,"\\"\\""\n'
    frame = read(tmp_path, data, escape_char="\\")
    assert rows(frame) == [("1", 'a"b\\', 2), ("2", '""', 3)]


def test_small_chunks_give_the_same_records_and_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'\xef\xbb\xbfid,text\n1,"multi\nline, with comma"\n\n2,plain\n3,"x"""\n,,\n'
    expected = rows(read(tmp_path, data))
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 5)
    assert rows(read(tmp_path, data)) == expected == [
        ("1", "multi\nline, with comma", 2),
        ("2", "plain", 5),
        ("3", 'x"', 6),
    ]


# ----------------------------------------------------------------- encodings


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    frame = read(tmp_path, b"\xef\xbb\xbfcustomer_id,email\n1,a@x.com\n")
    assert frame.columns[0] == "customer_id"
    assert rows(frame) == [("1", "a@x.com", 2)]


def test_utf8_bom_stripped_without_header(tmp_path: Path) -> None:
    frame = read(tmp_path, b"\xef\xbb\xbf1,a\n", has_header=False, column_names=["id", "name"])
    assert rows(frame) == [("1", "a", 1)]


def test_cp1250_polish_letters(tmp_path: Path) -> None:
    data = "id;imię;miasto\n1;ąęłńóśźż;Łódź\n".encode("cp1250")
    frame = read(tmp_path, data, delimiter=";", encoding="cp1250")
    assert frame.columns == ["id", "imi", "miasto", "_line"]
    assert rows(frame) == [("1", "ąęłńóśźż", "Łódź", 2)]


def test_latin1(tmp_path: Path) -> None:
    frame = read(tmp_path, "id,name\n1,Müller Ça\n".encode("latin-1"), encoding="latin-1")
    assert rows(frame) == [("1", "Müller Ça", 2)]


def test_utf16_declared(tmp_path: Path) -> None:
    data = "id\tname\r\n1\tŻaneta\r\n2\t\"a\tb\"\r\n".encode("utf-16")
    frame = read(tmp_path, data, delimiter="\t", encoding="utf-16")
    assert rows(frame) == [("1", "Żaneta", 2), ("2", "a\tb", 3)]


def test_undecodable_byte_names_offset_line_and_encoding(tmp_path: Path) -> None:
    # cp1250 bytes in a file declared UTF-8
    data = "id;name\n1;ok\n2;Łódź\n".encode("cp1250")
    (problem,) = read_error(tmp_path, data, delimiter=";").problems
    assert problem.line == 3
    assert "byte 0xA3 at byte offset 15" in problem.reason
    assert "expected encoding utf-8" in problem.reason and "csv.encoding" in problem.fix


def test_undecodable_byte_in_declared_cp1250(tmp_path: Path) -> None:
    (problem,) = read_error(tmp_path, b"id,name\n1,a\n2,\x81\n", encoding="cp1250").problems
    assert problem.line == 3
    assert "0x81" in problem.reason and "cp1250" in problem.reason


def test_utf16_not_declared_is_detected(tmp_path: Path) -> None:
    (problem,) = read_error(tmp_path, "id,name\n1,a\n".encode("utf-16")).problems
    assert "UTF-16 detected" in problem.reason and problem.fix == "Set csv.encoding: utf-16"
    # without a byte-order mark: NULs between the characters give it away
    (problem,) = read_error(tmp_path, "id,name\n1,abc\n2,def\n".encode("utf-16-le")).problems
    assert "UTF-16 detected" in problem.reason


def test_nul_byte_names_the_line(tmp_path: Path) -> None:
    (problem,) = read_error(tmp_path, b"id,name\n1,a\n2,b\x00c\n").problems
    assert problem.line == 3 and "NUL" in problem.reason


# ----------------------------------------------------------------- compression, line endings, blanks


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    data = gzip.compress("id;name\n1;Zoë\n".encode())
    assert rows(read(tmp_path, data, name="profiles.csv.gz", delimiter=";")) == [("1", "Zoë", 2)]
    # the name does not matter, the magic bytes do
    assert rows(read(tmp_path, data, name="decrypted.csv", delimiter=";")) == [("1", "Zoë", 2)]


def test_gzip_with_legacy_encoding(tmp_path: Path) -> None:
    data = gzip.compress("id,name\n1,żółw\n".encode("cp1250"))
    assert rows(read(tmp_path, data, name="p.csv.gz", encoding="cp1250")) == [("1", "żółw", 2)]


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"id,name\n" + b"1,a\n" * 1000)[:-20]
    assert "gzip" in read_error(tmp_path, data).problems[0].reason


def test_crlf_leaves_no_carriage_return(tmp_path: Path) -> None:
    frame = read(tmp_path, b'id,name,city\r\n1,a,"x"\r\n2,b,\r\n3,c,Rome\r\n')
    assert rows(frame) == [("1", "a", "x", 2), ("2", "b", None, 3), ("3", "c", "Rome", 4)]
    assert frame.columns == ["id", "name", "city", "_line"]


def test_cr_only_line_endings_are_an_error(tmp_path: Path) -> None:
    assert "CR-only" in read_error(tmp_path, b"id,name\r1,a\r").problems[0].reason


def test_trailing_blank_and_delimiter_only_lines_are_ignored(tmp_path: Path) -> None:
    data = b"id,name,city\n1,a,b\n\n,,\n2,c,d\n,,,,,\n   \n\r\n\n"
    assert rows(read(tmp_path, data)) == [("1", "a", "b", 2), ("2", "c", "d", 5)]


@pytest.mark.parametrize(
    "trailer",
    [b"Total,11,\n", b"rows: 2\n", b"Total,11,2026-01-15,x,y\n\n"],  # the file's width, fewer fields, more
)
def test_footer_rows_are_left_out_whatever_their_width(tmp_path: Path, trailer: bytes) -> None:
    data = b"id,name,city\n1,a,b\n2,c,d\n" + trailer
    assert rows(read(tmp_path, data, skip_footer_rows=1)) == [("1", "a", "b", 2), ("2", "c", "d", 3)]


def test_footer_of_another_width_without_the_setting_is_a_ragged_row(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="line 4"):
        read(tmp_path, b"id,name,city\n1,a,b\n2,c,d\nrows: 2\n")


def test_last_line_without_newline(tmp_path: Path) -> None:
    # Imported as it is only when the partner's files are known to end this way (the default
    # treats it as a possibly truncated upload: see the tests below).
    assert rows(read(tmp_path, b"id,name\n1,a\n2,b", last_line_without_newline="accept")) == [("1", "a", 2), ("2", "b", 3)]


@pytest.mark.parametrize(
    "data",
    [
        b"id,city\n1,Berlin\n2,Rot",  # cut inside the last field: the right width, a wrong value
        b"id,city,zip\n1,Berlin,10115\n2,Rot",  # cut before the last field: would read as ragged
        b"id,city\r\n1,Berlin\r\n2,Rotterdam\r",  # CRLF cut between CR and LF
        b'id,city\n1,Berlin\n2,"Rotterdam\nNorth"',  # a quoted newline is not a terminator
    ],
)
def test_a_last_record_without_terminator_after_terminated_ones_fails_naming_file_line_and_setting(tmp_path: Path, data: bytes) -> None:
    error = read_error(tmp_path, data)
    (problem,) = error.problems
    assert problem.file == "profiles.csv" and problem.line == 3
    assert "no line terminator" in problem.reason and "cut short" in problem.reason
    assert "csv.last_line_without_newline: accept" in problem.fix


def test_a_truncated_last_record_is_named_also_through_a_decoded_or_gzip_copy(tmp_path: Path) -> None:
    latin = "id,city\n1,Köln\n2,Mün".encode("latin-1")
    assert read_error(tmp_path, latin, encoding="latin-1").problems[0].line == 3
    (tmp_path / "gz").mkdir()
    with pytest.raises(InputError) as caught:
        read_delimited(write(tmp_path / "gz", gzip.compress(b"id,city\n1,Berlin\n2,Rot"), "p.csv.gz"), CsvOptions(), "p.csv.gz")
    assert caught.value.problems[0].line == 3 and "cut short" in caught.value.problems[0].reason


def test_a_file_that_is_whole_is_not_taken_for_truncated(tmp_path: Path) -> None:
    # A terminated last record, a header-only file without newline (no other record to compare
    # with), trailing blank or delimiter-only bytes and a trailer row skipped as footer.
    assert rows(read(tmp_path, b"id,city\n1,Berlin\n")) == [("1", "Berlin", 2)]
    assert read(tmp_path, b"id,city").height == 0
    assert rows(read(tmp_path, b"id,city\n1,Berlin\n  ")) == [("1", "Berlin", 2)]
    assert rows(read(tmp_path, b"id,city\n1,Berlin\n,")) == [("1", "Berlin", 2)]
    assert rows(read(tmp_path, b"id,city\n1,Berlin\nTotal,1", skip_footer_rows=1)) == [("1", "Berlin", 2)]


def test_reject_row_leaves_the_unterminated_last_record_out_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, b"id,city\n1,Berlin\n2,Rot")
    read_file = read_delimited_file(path, CsvOptions(last_line_without_newline="reject_row"), "profiles.csv")
    assert rows(read_file.frame) == [("1", "Berlin", 2)]
    (problem,) = read_file.left_out
    assert (problem.file, problem.line) == ("profiles.csv", 3) and "reject_row" in problem.reason
    # A caller without a reject report cannot lose the row silently: the read fails instead.
    with pytest.raises(InputError, match="cut short"):
        read_delimited(path, CsvOptions(last_line_without_newline="reject_row"), "profiles.csv")


# ----------------------------------------------------------------- malformed files


def test_ragged_rows_name_line_and_counts(tmp_path: Path) -> None:
    error = read_error(tmp_path, b"id,name,city\n1,a,b\n2,c\n3,d,e,f\n4,\"x\ny\",z\n5,g,h,i\n")
    assert [(p.line, p.reason) for p in error.problems] == [
        (3, "the row has 2 fields, expected 3"),
        (4, "the row has 4 fields, expected 3"),
        (7, "the row has 4 fields, expected 3"),
    ]


def test_unterminated_quote_points_at_the_record(tmp_path: Path) -> None:
    (problem,) = read_error(tmp_path, b'id,name\n1,a\n2,"open\n3,c\n4,d\n').problems
    assert problem.line == 3 and "unterminated quote" in problem.reason


def test_unterminated_quote_in_a_huge_record_is_refused_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 16)
    monkeypatch.setattr(record_scan, "MAX_RECORD_BYTES", 64)
    (problem,) = read_error(tmp_path, b'id,name\n1,"open\n' + b"2,c\n" * 100).problems
    assert problem.line == 2 and "longer than" in problem.reason


def test_a_record_over_the_cap_without_a_quote_is_not_blamed_on_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 16)
    monkeypatch.setattr(record_scan, "MAX_RECORD_BYTES", 64)
    (problem,) = read_error(tmp_path, b"id,name\n1,a\n2," + b"x" * 500).problems
    assert problem.line == 3 and "longer than 64 bytes" in problem.reason and "csv.max_record_mb" in problem.reason
    assert "quote" not in problem.reason and "csv.max_record_mb" in problem.fix
    # The cap also holds for a record that ends inside one chunk, and it is a setting.
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 8 * 1024 * 1024)
    (problem,) = read_error(tmp_path, b"id,name\n1,a\n2," + b"x" * (1024 * 1024 + 10) + b"\n3,b\n", max_record_mb=1).problems
    assert problem.line == 3 and "longer than 1 MiB" in problem.reason and "quote" not in problem.reason
    assert rows(read(tmp_path, b"id,name\n1," + b"x" * 1000 + b"\n", max_record_mb=1))[0][1] == "x" * 1000


_PEAK_RSS_SCRIPT = """
import resource, sys, time
from pathlib import Path
from cdp_pipeline.config.csv_options import CsvOptions
from cdp_pipeline.errors import InputError
from cdp_pipeline.tables import record_scan
from cdp_pipeline.tables.csv_reading import read_delimited

record_scan.MAX_RECORD_BYTES = 4 * 1024 * 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_delimited(Path(sys.argv[1]), CsvOptions(), "huge.csv")
except InputError as error:
    print(error.problems[0].reason)
# A parse left running in the background would keep growing meanwhile.
time.sleep(4)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_file_without_line_breaks_is_refused_within_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    line = b"x" * (1024 * 1024)
    with open(path, "wb") as handle:
        handle.write(b"id,name\n1,")
        for _ in range(300):  # 300 MiB in one record: 75 times the lowered 4 MiB cap
            handle.write(line)
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reason, growth = result.stdout.strip().splitlines()
    assert reason.startswith("the record starting at line 2 is longer than 4 MiB") and "quote" not in reason
    # The scan holds at most the cap plus a chunk or two (8 MiB each); parsing the record would take
    # several times its 300 MiB.
    assert int(growth) < 100, f"peak RSS grew by {growth} MiB"


@pytest.mark.parametrize(("data", "hint"), [(b"id;name\n1;a\n", ";"), (b"id\tname\n1\ta\n", "\t"), (b"id|name\n1|a\n", "|")])
def test_wrong_delimiter_hint(tmp_path: Path, data: bytes, hint: str) -> None:
    (problem,) = read_error(tmp_path, data).problems
    assert f"did you mean delimiter {hint!r}?" in problem.reason and problem.line == 1


def test_one_quoted_column_is_not_a_delimiter_mistake(tmp_path: Path) -> None:
    assert rows(read(tmp_path, b'"a;b"\n1\n')) == [("1", 2)]


def test_zero_byte_file(tmp_path: Path) -> None:
    assert read_error(tmp_path, b"").problems[0].reason == "empty file (0 bytes)"


def test_only_blank_lines(tmp_path: Path) -> None:
    assert "no header row" in read_error(tmp_path, b"\n\n\n").problems[0].reason


def test_only_a_bom_or_only_skipped_lines_is_empty(tmp_path: Path) -> None:
    assert "empty file" in read_error(tmp_path, b"\xef\xbb\xbf").problems[0].reason
    assert "empty file" in read_error(tmp_path, b"banner\n", skip_rows=1).problems[0].reason


def test_stray_quote_in_an_unquoted_value_is_reported_not_misread(tmp_path: Path) -> None:
    (problem,) = read_error(tmp_path, b'id,name\n1,5" screen\n2,"Bob"\n3,"Al"\n').problems
    assert problem.line == 2 and "quote_char: null" in problem.fix
    # paired quotes inside a value without delimiters are read as written, as Polars does
    assert rows(read(tmp_path, b'id,name\n1,a "x" b\n')) == [("1", 'a "x" b', 2)]


def test_header_only_file_is_an_empty_frame_with_columns(tmp_path: Path) -> None:
    frame = read(tmp_path, b"Customer ID,Email\r\n")
    assert frame.height == 0
    assert frame.schema == pl.Schema({"customer_id": pl.String, "email": pl.String, "_line": pl.Int64})


# ----------------------------------------------------------------- options


def test_skip_rows_counts_physical_lines(tmp_path: Path) -> None:
    data = b'Export "generated 2024\nby CRM\nid,name\n1,a\n2,b\n'
    frame = read(tmp_path, data, skip_rows=2)
    assert rows(frame) == [("1", "a", 4), ("2", "b", 5)]


def test_no_header_with_column_names(tmp_path: Path) -> None:
    frame = read(tmp_path, b"00123,a\n00456,b\n", has_header=False, column_names=["Customer ID", "Name"])
    assert frame.columns == ["customer_id", "name", "_line"]
    assert rows(frame) == [("00123", "a", 1), ("00456", "b", 2)]


def test_no_header_without_names_gets_positional_names(tmp_path: Path) -> None:
    assert read(tmp_path, b"1,a\n", has_header=False).columns == ["column_1", "column_2", "_line"]


def test_column_names_replace_the_header(tmp_path: Path) -> None:
    frame = read(tmp_path, b"ID,E\n1,a\n", column_names=["id", "email"])
    assert rows(frame) == [("1", "a", 2)] and frame.columns == ["id", "email", "_line"]
    assert "2 columns" in read_error(tmp_path, b"ID,E\n1,a\n", column_names=["id"]).problems[0].reason


def test_null_tokens_and_empty_strings_become_null(tmp_path: Path) -> None:
    data = b'id,a,b,c\n1,NULL,"",x\n2,n/a, ,NULL\n'
    frame = read(tmp_path, data, null_values=["NULL", "n/a"])
    assert rows(frame) == [("1", None, None, "x", 2), ("2", None, " ", None, 3)]


def test_leading_zeros_and_long_ids_stay_text(tmp_path: Path) -> None:
    frame = read(tmp_path, b"id,zip\n00123,01234\n12345678901234567890123,0\n")
    assert rows(frame) == [("00123", "01234", 2), ("12345678901234567890123", "0", 3)]


def test_a_realistic_file_of_some_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_decoding, "CHUNK_BYTES", 4096)
    lines = ["id,name,note"] + [f'{i:05d},"name {i}","line1\nline2"' if i % 7 == 0 else f"{i:05d},n{i},x" for i in range(3000)]
    frame = read(tmp_path, ("\n".join(lines) + "\n").encode())
    assert frame.height == 3000
    expected_lines, line = [], 2
    for i in range(3000):
        expected_lines.append(line)
        line += 2 if i % 7 == 0 else 1
    assert frame["_line"].to_list() == expected_lines
    assert frame["id"][7] == "00007" and frame["note"][7] == "line1\nline2"


# ----------------------------------------------------------------- read, then parse_typed


def test_read_then_parse_end_to_end(tmp_path: Path) -> None:
    data = "id;born;spent\n00123;31.01.1990;1.234,50\n00456;1990-01-31;7\n".encode("cp1250")
    options = CsvOptions(
        delimiter=";",
        encoding="cp1250",
        decimal_comma=True,
        columns={"born": ColumnFormat(type="date", format="%d.%m.%Y"), "spent": ColumnFormat(type="decimal")},
    )
    frame = read_delimited(write(tmp_path, data), options, "profiles.csv")
    typed, problems = parse_typed(frame, options.columns, "profiles.csv", options.decimal_comma)
    assert typed["id"].to_list() == ["00123", "00456"]
    assert typed["spent"].to_list() == [Decimal("1234.5"), Decimal("7")]
    assert [(p.line, p.column) for p in problems] == [(3, "born")]
