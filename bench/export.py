"""Benchmark of a segment export at scale (not a test).

Builds a store of N profiles (default 1,000,000) with the bundled demo catalog directly in DuckDB
(``INSERT … SELECT … FROM range(N)``, a few seconds: no CSV, no merge), every profile in the
``high_value`` segment, then runs ``exporting.run_export`` of the demo goal ``high_value_export``
(full export, 10 columns of every kind the store can fill) to a local folder **in a fresh
process**, so the peak RSS printed is the export's alone. Beside it, the same process times a
bare ``COPY (SELECT …) TO csv`` of the same profiles as the floor.

    python bench/export.py [--profiles 1000000] [--split-rows 250000] [--gzip] [--diff]
                           [--processors] [--events 0] [--memory-limit 1GB] [--keep]

``--processors`` adds normalize_email + pseudonymize (SQL path); ``--custom`` adds a custom
processor (Polars path over batches); ``--diff`` runs the export twice (the second run writes the
diff against the first); ``--events N`` adds N orders with 3 lines each to the timeline export.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config_dir(home: Path, args: argparse.Namespace) -> Path:
    """The bundled demo configuration, with the export goal adjusted by the options."""
    from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR

    config = home / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    connection = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    connection["schedules"] = []
    goal = next(g for g in connection["goals"] if g["name"] == "high_value_export")
    goal["target"] = {"directory": "outbox/segments", "file_name": "high_value_{date}.csv", "gzip": args.gzip}
    if args.split_rows:
        goal["target"]["split_rows"] = args.split_rows
    goal["diff"] = args.diff
    processors = []
    if args.processors:
        processors += [{"type": "normalize_email", "columns": ["email"]}, {"type": "pseudonymize", "columns": ["customer_number"]}]
    if args.custom:
        processors.append(
            {"type": "custom", "function": "cdp_pipeline_tests.tables.custom_processor_example:add_score", "options": {"column": "source", "points": 7}}
        )
    goal["processors"] = processors
    if not args.events:
        goal.pop("timeline", None)
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    return config


def build_store(home: Path, profiles: int, events: int, config: Path) -> float:
    """Fill profiles (and optionally orders + lines) with set-based inserts; returns seconds."""
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.store.database import open_writer
    from cdp_pipeline.store.segments import refresh_memberships

    project = load_project(config, home)
    started = time.perf_counter()
    with open_writer(project.store_path, project.catalog) as conn:
        conn.execute(
            """
            INSERT INTO profiles (profile_id, created_at, updated_at, customer_number, email, first_name, last_name, city, country,
                                  birth_date, signup_date, loyalty_tier, interests, consents, household_id, lifetime_value,
                                  order_count, last_order_at, channels)
            SELECT md5(i::VARCHAR), TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01',
                   'C' || lpad(i::VARCHAR, 8, '0'),
                   CASE WHEN i % 10 = 0 THEN ' User' || i || '@GMIAL.COM ' ELSE 'user' || i || '@example.com' END,
                   (['Anna', 'Jan', 'Łukasz', 'Zoë', 'Smith, Jr.', '=cmd'])[1 + i % 6],
                   'Name' || (i % 9973),
                   (['Warszawa', 'Kraków', 'Gdańsk', 'Amsterdam'])[1 + i % 4], 'PL',
                   DATE '1950-01-01' + (i % 20000)::INTEGER, DATE '2015-01-01' + (i % 3000)::INTEGER,
                   (['bronze', 'silver', 'gold', NULL])[1 + i % 4],
                   [(['cooking', 'running', 'travel'])[1 + i % 3]],
                   CASE WHEN i % 3 = 0 THEN []::VARCHAR[] ELSE ['marketing'] END,
                   'H' || (i // 3),
                   (500 + (i % 100000) / 100.0)::DECIMAL(18,4), 1 + i % 9,
                   TIMESTAMP '2025-01-01' + to_seconds(i % 31536000), ['web']
            FROM range($n) t(i)
            """,
            {"n": profiles},
        )
        if events:
            conn.execute(
                """
                INSERT INTO timeline_order (event_id, profile_id, event_time, total, currency, channel, delivery_id, imported_at)
                SELECT 'O' || lpad(i::VARCHAR, 9, '0'), md5((i % $n)::VARCHAR), TIMESTAMP '2024-01-01' + to_seconds(i * 7),
                       (10 + i % 500)::DECIMAL(18,4), 'EUR', 'web', 'bench', TIMESTAMP '2026-01-01'
                FROM range($e) t(i)
                """,
                {"n": profiles, "e": events},
            )
            conn.execute(
                """
                INSERT INTO timeline_order__order_line (event_id, item_index, line_number, product_id, product_name, quantity, unit_price)
                SELECT 'O' || lpad((i // 3)::VARCHAR, 9, '0'), 1 + i % 3, 1 + i % 3, 'P' || (i % 40), 'Product ' || (i % 40), 1,
                       (5 + i % 50)::DECIMAL(18,4)
                FROM range($e * 3) t(i)
                """,
                {"e": events},
            )
        # As every import does after its merge: the export then finds memberships up to date and
        # its own refresh measures the steady state (nothing changed since the last import).
        refresh_memberships(conn, project.catalog, datetime(2026, 1, 31))
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def measure(home: Path, config: Path, runs: int) -> dict:
    """In this (fresh) process: run_export ``runs`` times, then a bare COPY as the floor."""
    import duckdb

    from cdp_pipeline import exporting
    from cdp_pipeline.config.loading import load_project
    from cdp_pipeline.transports.local import LocalTransport

    project = load_project(config, home)
    connection = project.connections["demo_local"]
    goal = connection.goal("high_value_export")
    transport = LocalTransport(home / "demo")
    rss_start = peak_rss_mb()
    seconds, cpu = [], []
    outcome = None
    for run in range(runs):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        outcome = exporting.run_export(
            project, connection, goal, transport, f"bench{run:04d}runid", datetime(2026, 2, 1, 6, 0, run), full=True
        )
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # CPU seconds of all threads: steadier than wall time on a shared VM.
        cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
    export_rss = peak_rss_mb()
    assert outcome is not None
    floor_path = home / "floor.csv"
    with duckdb.connect(str(project.store_path)) as conn:
        started = time.perf_counter()
        conn.execute(
            f"""COPY (SELECT profile_id, customer_number, email, first_name, lifetime_value, order_count, loyalty_tier
                     FROM profiles ORDER BY profile_id) TO '{floor_path}' (HEADER)"""
        )
        floor = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "floor_copy_seconds": floor,
        "rows": outcome.profile_rows,
        "files": [f.remote_path for f in outcome.files],
        "bytes": outcome.bytes,
        "diff_counts": outcome.diff_counts,
        "events": outcome.events_exported,
        "peak_rss_mb": export_rss,
        "rss_at_start_mb": rss_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--split-rows", type=int, default=None)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--diff", action="store_true")
    parser.add_argument("--processors", action="store_true")
    parser.add_argument("--custom", action="store_true")
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit for the export process, e.g. 1GB")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--measure", nargs=2, metavar=("HOME", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]), 2 if args.diff else 1)))
        return

    home = Path(tempfile.mkdtemp(prefix="cdp_bench_export_"))
    try:
        config = _config_dir(home, args)
        built = build_store(home, args.profiles, args.events, config)
        size = (home / "store.duckdb").stat().st_size / 1e6
        print(f"store: {args.profiles:,} profiles, {args.events:,} orders built in {built:.1f} s ({size:.0f} MB)")
        environment = dict(os.environ)
        if args.memory_limit:
            # DuckDB reads no environment variable for this; the child sets it through duckdb's default config.
            environment["CDP_BENCH_MEMORY_LIMIT"] = args.memory_limit
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(home), str(config)],
            env=environment, check=True, capture_output=True, text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        runs = ", ".join(f"{s:.2f}" for s in result["seconds"])
        cpu = ", ".join(f"{s:.2f}" for s in result["cpu_seconds"])
        print(
            f"run_export: {runs} s (CPU {cpu} s) for {result['rows']:,} rows, {result['bytes'] / 1e6:.0f} MB in {len(result['files'])} files"
            f"{', diff ' + str(result['diff_counts']) if result['diff_counts'] else ''}"
            f"{', events ' + format(result['events'], ',') if result['events'] else ''}"
        )
        print(f"floor (bare COPY of the same profiles): {result['floor_copy_seconds']:.2f} s")
        print(f"peak RSS of the export process: {result['peak_rss_mb']:.0f} MB (at start: {result['rss_at_start_mb']:.0f} MB)")
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# The measuring child: applies --memory-limit to every DuckDB connection it opens, then measures.
_CHILD = """
import json, os, sys
from pathlib import Path
limit = os.environ.get("CDP_BENCH_MEMORY_LIMIT")
if limit:
    import duckdb
    _connect = duckdb.connect
    def connect(database=":memory:", read_only=False, config=None, **kwargs):
        return _connect(database, read_only=read_only, config={**(config or {}), "memory_limit": limit}, **kwargs)
    duckdb.connect = connect
diff_mode = "diff: true" in Path(sys.argv[2], "connections", "demo_local.yaml").read_text()
sys.argv = ["export.py", "--measure", sys.argv[1], sys.argv[2]] + (["--diff"] if diff_mode else [])
sys.path.insert(0, BENCH_DIRECTORY)
import export
export.main()
""".replace("BENCH_DIRECTORY", repr(str(Path(__file__).resolve().parent)))


if __name__ == "__main__":
    main()
