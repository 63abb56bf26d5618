"""The peer: dlt loading the same profiles file into DuckDB (filesystem source → duckdb destination).

Two timed loads into one dlt pipeline, in this order:

1. first load: the delivery's profiles file into an empty dataset (``write_disposition="append"``);
2. merge: the update batch (every profile again, some values changed) with ``write_disposition="merge"``
   and ``primary_key="customer_id"`` (dlt's delete-insert).

dlt is a bench extra (``pip install -e '.[bench]'``), never a runtime dependency of cdp_pipeline.

    python bench/dlt_compare.py --first DIR/profiles_20260115.csv --update DIR/profiles_20260116.csv --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _load(pipeline, folder: Path, glob: str, disposition: str) -> tuple[float, int]:
    from dlt.sources.filesystem import filesystem, read_csv_duckdb

    files = filesystem(bucket_url=folder.resolve().as_uri(), file_glob=glob)
    # dlt's fastest CSV reader (DuckDB → Arrow batches; its pandas reader is slower and needs pandas).
    # Every cell as text, as the product reads them: ids keep their zeros, a column's type never flips.
    rows = (files | read_csv_duckdb(chunk_size=100_000, use_pyarrow=True, all_varchar=True)).with_name("profiles")
    hints = {"write_disposition": disposition}
    if disposition == "merge":
        hints["primary_key"] = "customer_id"
    rows.apply_hints(**hints)
    started = time.perf_counter()
    info = pipeline.run(rows)
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        count = client.execute_sql("SELECT count(*) FROM profiles")[0][0]
    return seconds, int(count)


def run(first: Path, update: Path, work: Path, on_stage=None) -> dict:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    work.mkdir(parents=True, exist_ok=True)
    pipeline = dlt.pipeline(
        pipeline_name="bench_profiles",
        pipelines_dir=str(work / "dlt_pipelines"),
        destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")),
        dataset_name="bench",
    )
    result: dict = {}
    if on_stage:
        on_stage("dlt first load")
    result["first_load_seconds"], result["rows_after_first"] = _load(pipeline, first.parent, first.name, "append")
    if on_stage:
        on_stage("dlt merge")
    result["merge_seconds"], result["rows_after_merge"] = _load(pipeline, update.parent, update.name, "merge")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=Path, required=True)
    parser.add_argument("--update", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.first, args.update, args.work), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
