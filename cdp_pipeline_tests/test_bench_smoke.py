"""The benchmark harness keeps working: bench/pipeline.py at a tiny size, and its store comparison.

The figures themselves are not asserted (the machine is shared); what is asserted is that the
harness runs the project and the hand-rolled baseline on the same encrypted input, that the two
stores were found equal before any ratio was reported, and that the comparison does see a
difference when there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def test_bench_runs_project_and_baseline_and_finds_their_stores_equal(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, str(BENCH / "pipeline.py"), "--profiles", "2000", "--pairs", "1", "--encrypt", "--no-dagster", "--no-dlt",
         "--tmp", str(tmp_path), "--json", str(report_file)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "store check: engine store equals the baseline's" in completed.stdout
    report = json.loads(report_file.read_text())
    (round_,) = report["rounds"]
    assert round_["equal"] == {"engine": True}
    # Every stage of both sides ran on the 2,000 profiles, gpg included.
    assert {row["stage"] for row in round_["engine"]["stages"]} >= {"fetch", "decrypt", "tables", "merge", "export"}
    assert set(round_["baseline"]["stages"]) == {"fetch", "decrypt", "tables", "merge", "export"}
    assert round_["baseline"]["stages"]["decrypt"] > 0
    assert round_["after"]["update_counts"]["profiles_updated"] == report["update_changed"]
    for key in ("engine core ÷ baseline", "segment export ÷ DuckDB COPY"):
        assert report["summary"][key]["median"] > 0
    assert round_["engine"]["peak_mb"] > 50  # a Python process with Polars and DuckDB loaded, sampled from /proc
    # The temporary folders are removed unless --keep.
    assert not list(tmp_path.glob("cdp-bench-*"))


def test_store_comparison_reports_a_differing_value(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import handrolled
        from store_equality import compare_stores
    finally:
        sys.path.remove(str(BENCH))
    stores = [tmp_path / "a.duckdb", tmp_path / "b.duckdb"]
    for store, city in zip(stores, ("Utrecht", "Gent"), strict=True):
        handrolled.create_store(store)
        with duckdb.connect(str(store)) as conn:
            conn.execute("INSERT INTO profiles (profile_id, customer_number, city) VALUES ('p1', 'C1', ?)", [city])
    verdict = compare_stores(stores[0], stores[0])
    assert verdict["equal"]
    verdict = compare_stores(stores[0], stores[1])
    assert not verdict["equal"]
    assert verdict["tables"]["profiles"]["only_in_project"] == 1
    assert "Utrecht" in verdict["tables"]["profiles"]["examples_project"][0]
