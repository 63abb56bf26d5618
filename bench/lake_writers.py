"""Merge time on the DuckLake store with 1, 2 and 4 concurrent writers (a script, not a test).

Makes ``--deliveries`` staged profile deliveries of ``--profiles`` rows each (a text property under
``set``, a list under ``add``, a decimal under ``sum``; a quarter of each delivery's ids also occur
in another delivery, so concurrent merges touch the same profiles), then for each writer count W:

* a fresh lake (catalog: a new database on the PostgreSQL server named by ``$CDP_BENCH_LAKE_DSN``,
  a libpq string without dbname; data: a temporary folder) is merged into by W processes taking
  deliveries from one queue, each through ``merge_delivery`` retried on DuckLake's write conflicts,
  as ``importing.merge_staged`` does;
* the wall time for all deliveries, the mean time of one merge transaction, and the conflicts
  retried are printed, and the store is checked: one row per profile id, every delivery in the ledger.

The same deliveries merged one after the other into a DuckDB file give the baseline.

    CDP_BENCH_LAKE_DSN="host=127.0.0.1 port=5432 user=postgres" python bench/lake_writers.py [--profiles 20000] [--deliveries 8] [--writers 1 2 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from cdp_pipeline.config.catalog import Catalog  # noqa: E402
from cdp_pipeline.config.ducklake import DuckLakeLocation, DuckLakeSettings  # noqa: E402
from cdp_pipeline.store.conflicts import is_conflict  # noqa: E402
from cdp_pipeline.store.database import open_writer  # noqa: E402
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery  # noqa: E402
from cdp_pipeline.tables.staged import StagedImport  # noqa: E402

CATALOG = Catalog.model_validate(
    {"profile_properties": {"name": {"type": "text"}, "tags": {"type": "list"}, "spend": {"type": "decimal"}}}
)
DSN_ENV = "CDP_BENCH_LAKE_DSN_DB"


def staged_delivery(index: int, profiles: int, deliveries: int) -> StagedImport:
    rng = np.random.default_rng(index)
    own = np.arange(index * profiles, index * profiles + profiles)
    shared = rng.choice(deliveries * profiles, size=profiles // 4, replace=False)
    ids = np.unique(np.concatenate([own[: profiles - profiles // 4], shared]))
    records = pl.DataFrame(
        {
            "_key": [f"c{i:09d}" for i in ids],
            "_line": np.arange(2, 2 + len(ids)),
            "name": [f"name {index}-{i}" for i in ids],
            "tags": [[f"t{index}"] for _ in ids],
            "spend": rng.integers(1, 10_000, size=len(ids)) / 100,
        }
    )
    return StagedImport(
        target="profiles", identifier_property="profile_id", allow_create=True,
        rules={"name": "set", "tags": "add", "spend": "sum"}, records=records, rows_read=len(ids),
    )


def _merge(target: Path | DuckLakeLocation, staged: StagedImport, index: int) -> tuple[float, int]:
    record = DeliveryRecord(f"d{index}", "bench", "g", f"g:f{index}", f"f{index}.csv", [], f"sha{index}", "cfg")
    conflicts = 0
    with open_writer(target, CATALOG) as conn:
        started = time.perf_counter()
        while True:
            try:
                merge_delivery(conn, CATALOG, staged, record, f"run{index}", datetime(2026, 1, 1))
                return time.perf_counter() - started, conflicts
            except duckdb.Error as exc:
                if not is_conflict(exc):
                    raise
                conflicts += 1
                time.sleep(0.05)


def _worker(target, queue, results, profiles: int, deliveries: int) -> None:
    while True:
        index = queue.get()
        if index is None:
            return
        results.put((index, *_merge(target, staged_delivery(index, profiles, deliveries), index)))


def run(target: Path | DuckLakeLocation, writers: int, profiles: int, deliveries: int) -> dict:
    ctx = mp.get_context("fork")
    queue, results = ctx.Queue(), ctx.Queue()
    # The schema is created before the clock starts: the first open of a new store is not a merge.
    with open_writer(target, CATALOG):
        pass
    for index in range(deliveries):
        queue.put(index)
    for _ in range(writers):
        queue.put(None)
    started = time.perf_counter()
    processes = [ctx.Process(target=_worker, args=(target, queue, results, profiles, deliveries)) for _ in range(writers)]
    for process in processes:
        process.start()
    merged = [results.get(timeout=3600) for _ in range(deliveries)]
    for process in processes:
        process.join()
    wall = time.perf_counter() - started
    with open_writer(target, CATALOG) as conn:
        (rows, ids) = conn.execute("SELECT count(*), count(DISTINCT profile_id) FROM profiles").fetchall()[0]
        (ledger,) = conn.execute("SELECT count(*) FROM deliveries").fetchall()[0]
    assert rows == ids and ledger == deliveries, (rows, ids, ledger)
    return {
        "writers": writers, "wall_s": wall, "mean_merge_s": sum(m[1] for m in merged) / len(merged),
        "conflicts": sum(m[2] for m in merged), "profiles": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--deliveries", type=int, default=8)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--file-only", action="store_true", help="only the DuckDB file baseline (runs on any DuckDB version)")
    args = parser.parse_args()
    server = os.environ.get("CDP_BENCH_LAKE_DSN", "")
    if args.file_only:
        args.writers = []
    elif not server:
        print("set CDP_BENCH_LAKE_DSN to a libpq string of a PostgreSQL server (without dbname)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="cdp-lake-bench-"))
    print(f"{args.deliveries} deliveries x {args.profiles:,} rows; duckdb {duckdb.__version__}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    try:
        baseline = run(root / "store.duckdb", 1, args.profiles, args.deliveries)
        print(f"duckdb file, 1 writer : all {baseline['wall_s']:6.1f} s, one merge {baseline['mean_merge_s']:5.2f} s, {baseline['profiles']:,} profiles")
        for writers in args.writers:
            database = f"cdp_bench_{uuid.uuid4().hex[:8]}"
            host = dict(part.split("=", 1) for part in server.split())
            subprocess.run(
                ["psql", "-h", host.get("host", "127.0.0.1"), "-p", host.get("port", "5432"), "-U", host.get("user", "postgres"),
                 "-c", f'CREATE DATABASE "{database}"'], check=True, capture_output=True,
            )
            os.environ[DSN_ENV] = f"{server} dbname={database}"
            folder = root / f"lake{writers}"
            location = DuckLakeLocation(DuckLakeSettings(catalog_dsn_env=DSN_ENV, data_path=str(folder)), folder)
            result = run(location, writers, args.profiles, args.deliveries)
            print(
                f"ducklake, {writers} writer(s): all {result['wall_s']:6.1f} s, one merge {result['mean_merge_s']:5.2f} s "
                f"(incl. retries), {result['conflicts']} conflicts retried, {result['profiles']:,} profiles, load {os.getloadavg()[0]:.1f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
