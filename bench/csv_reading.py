"""Micro benchmark of the file-handling stage (not a test).

Generates a profiles-like CSV (default 1,000,000 rows: 32-hex ids, quoted names with the odd
embedded comma, emails with typos, dates in %d.%m.%Y, decimal amounts, some empty cells), then
times, in one process:

* ``read_delimited`` (record scan + Polars read),
* ``parse_typed`` (date, decimal, integer, boolean),
* a processor chain (normalize_email, trim, remove_null_strings, concatenate, current_date),
* a plain ``pl.read_csv`` of the same file as the baseline,

and prints rows/s and the peak RSS. Variants: ``--encoding cp1250`` (transcoded), ``--gzip``.

    python bench/csv_reading.py [--rows 1000000] [--encoding cp1250] [--gzip] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import TypeAdapter

from cdp_pipeline.config.csv_options import ColumnFormat, CsvOptions
from cdp_pipeline.config.processors import Processor
from cdp_pipeline.tables.column_typing import parse_typed
from cdp_pipeline.tables.csv_reading import read_delimited
from cdp_pipeline.tables.processors import apply_processors


def generate(path: Path, rows: int, encoding: str) -> None:
    """Build the file with Polars (vectorised), then write it in the requested encoding."""
    rng = np.random.default_rng(42)
    ids = pl.Series(rng.integers(0, 2**63, rows, dtype=np.int64)).cast(pl.String).str.pad_start(32, "0")
    domains = np.array(["gmail.com", "gmial.com", "hotmail.com", "example.con", "firma.pl", "yahoo.com"])
    first = np.array(["Anna", "Jan", "Łukasz", "Zoë", "Małgorzata", "Piotr", "O'Brien", "Smith, Jr."])
    frame = pl.DataFrame(
        {
            "Customer ID": ids,
            "First Name": first[rng.integers(0, len(first), rows)],
            "Last Name": pl.Series(rng.integers(0, 100000, rows)).cast(pl.String).str.pad_start(6, "x"),
            "E-mail": " User" + pl.Series(np.arange(rows)).cast(pl.String) + "@" + pl.Series(domains[rng.integers(0, len(domains), rows)]),
            "Birth Date": pl.Series(rng.integers(0, 20000, rows)).cast(pl.Date).dt.strftime("%d.%m.%Y"),
            "Total Spent": pl.Series(rng.integers(0, 10**7, rows) / 100).cast(pl.String),
            "Orders": pl.Series(rng.integers(0, 50, rows)).cast(pl.String),
            "Opt In": np.array(["yes", "no", "", "NULL"])[rng.integers(0, 4, rows)],
            "City": np.array(["Warszawa", "Kraków", "", "Gdańsk", "N/A"])[rng.integers(0, 5, rows)],
        }
    )
    frame.write_csv(path, quote_style="non_numeric")
    if encoding not in ("utf-8", "utf8"):
        converted = path.with_suffix(".enc")
        with open(path, encoding="utf-8", newline="") as source, open(converted, "w", encoding=encoding, newline="") as target:
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)
        converted.replace(path)


def peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not getrusage: Linux carries ru_maxrss over fork + exec,
    which would report the generating parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)  # internal: measure an existing file
    args = parser.parse_args()
    if args.file is None:
        generate_then_measure(args)
    else:
        measure(args.file, args.rows, args.encoding)


def generate_then_measure(args: argparse.Namespace) -> None:
    """Generate in this process, measure in a fresh one, so the peak RSS is the pipeline's alone."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-csv-"))
    path = workdir / "profiles.csv"
    started = time.perf_counter()
    generate(path, args.rows, args.encoding)
    if args.gzip:
        compressed = path.with_suffix(".csv.gz")
        with open(path, "rb") as source, gzip.open(compressed, "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)
        path.unlink()
        path = compressed
    size_mb = path.stat().st_size / 1e6
    print(f"generated {args.rows:,} rows, {size_mb:.0f} MB ({args.encoding}{', gzip' if args.gzip else ''}) in {time.perf_counter() - started:.1f} s")
    try:
        subprocess.run(
            [sys.executable, __file__, "--file", str(path), "--rows", str(args.rows), "--encoding", args.encoding], check=True
        )
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(workdir)


def measure(path: Path, rows: int, encoding: str) -> None:
    size_mb = path.stat().st_size / 1e6
    rss_before = peak_rss_mb()

    options = CsvOptions(
        encoding=encoding,
        null_values=["NULL"],
        columns={
            "birth_date": ColumnFormat(type="date", format="%d.%m.%Y"),
            "total_spent": ColumnFormat(type="decimal"),
            "orders": ColumnFormat(type="integer"),
            "opt_in": ColumnFormat(type="boolean"),
        },
    )
    processors = TypeAdapter(list[Processor]).validate_python(
        [
            {"type": "normalize_email", "columns": ["e_mail"]},
            {"type": "trim", "columns": ["first_name", "last_name"]},
            {"type": "remove_null_strings", "columns": ["city"]},
            {"type": "concatenate", "columns": ["first_name", "last_name"], "target": "full_name"},
            {"type": "current_date", "column": "imported_on"},
        ]
    )

    timings: dict[str, float] = {}
    if encoding in ("utf-8", "utf8") and path.suffix != ".gz":
        started = time.perf_counter()
        baseline = pl.read_csv(path, infer_schema=False)
        timings["baseline pl.read_csv (all String)"] = time.perf_counter() - started
        del baseline

    started = time.perf_counter()
    frame = read_delimited(path, options, path.name)
    timings["read_delimited"] = time.perf_counter() - started

    started = time.perf_counter()
    typed, problems = parse_typed(frame, options.columns, path.name, options.decimal_comma)
    timings["parse_typed"] = time.perf_counter() - started
    assert not problems, problems[:3]
    del frame

    started = time.perf_counter()
    result = apply_processors(typed.lazy(), processors, display_name=path.name, run_time=datetime.now()).collect()
    timings["processors"] = time.perf_counter() - started

    total = sum(value for key, value in timings.items() if not key.startswith("baseline"))
    for name, seconds in timings.items():
        print(f"{name:36s} {seconds:6.2f} s  {rows / seconds / 1e6:5.2f} M rows/s")
    print(f"{'read + parse + processors':36s} {total:6.2f} s  {rows / total / 1e6:5.2f} M rows/s  ({size_mb / total:.0f} MB/s)")
    print(f"peak RSS {peak_rss_mb():.0f} MB (at start: {rss_before:.0f} MB); result {result.shape}")


if __name__ == "__main__":
    main()
