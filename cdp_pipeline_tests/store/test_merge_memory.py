"""Memory of the merge: the staged tables stay in their Parquet files and DuckDB reads them there,
and the writer's DuckDB keeps to ``store.memory_limit`` by spilling to a private folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import StoreSettings
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.memory import SPILL_FOLDER, WriterMemory, host_memory_bytes, resolved_limit
from cdp_pipeline.tables.staged import ParquetFrames, StagedImport
from cdp_pipeline_tests.store.test_merge_delivery import ORDERS_GOAL, Harness, _orders


def test_a_writer_spills_beyond_its_memory_limit_into_a_private_folder_and_removes_nothing_it_needs(tmp_path: Path) -> None:
    spill_root = tmp_path / "work" / SPILL_FOLDER
    # One thread: each thread holds buffers of its own, and with two a 64 MB sort can run out of
    # memory before it spills (seen on DuckDB 1.5).
    with open_writer(tmp_path / "store.duckdb", Catalog(), threads=1, memory=WriterMemory(limit="64MB", spill_root=spill_root)) as conn:
        assert conn.execute("SELECT current_setting('memory_limit')").fetchone() == ("61.0 MiB",)
        # A sort of ~300 MB of text cannot be done in 64 MB: DuckDB writes it to the spill folder.
        conn.execute("CREATE TEMP TABLE big AS SELECT md5(i::VARCHAR) || md5((i + 7)::VARCHAR) AS t FROM range(3000000) r(i)")
        conn.execute("CREATE TEMP TABLE sorted AS SELECT t FROM big ORDER BY t")
        spilled = [Path(path) for (path,) in conn.execute("SELECT path FROM duckdb_temporary_files()").fetchall()]
        assert spilled and all(path.parent.parent == spill_root for path in spilled)
        (folder,) = {path.parent for path in spilled}
        assert stat.S_IMODE(spill_root.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
        # Spilled, not lost: the sorted copy is complete and in order.
        assert conn.execute("SELECT count(*), count(DISTINCT t), min(t) = first(t) FROM sorted").fetchone() == (3000000, 3000000, True)
    assert not any(folder.iterdir()), "DuckDB removes its spill files when the store closes"


def test_the_spill_folder_of_a_killed_writer_is_removed_by_the_next_one(tmp_path: Path) -> None:
    spill_root = tmp_path / SPILL_FOLDER
    spill_root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout.strip()
    (spill_root / f"{dead}-0123456789ab").mkdir()
    (spill_root / f"{dead}-0123456789ab" / "duckdb_temp_storage_DEFAULT-0.tmp").write_bytes(b"customer rows")
    alive = spill_root / f"{os.getppid()}-fedcba987654"
    alive.mkdir()
    with open_writer(tmp_path / "store.duckdb", Catalog(), memory=WriterMemory(limit="auto", spill_root=spill_root)):
        pass
    assert sorted(p.name for p in spill_root.iterdir()) == sorted([alive.name, f"{os.getpid()}-" + _folder_suffix(spill_root)])


def _folder_suffix(spill_root: Path) -> str:
    (own,) = [p.name for p in spill_root.iterdir() if p.name.startswith(f"{os.getpid()}-")]
    return own.split("-", 1)[1]


def test_memory_limit_auto_is_a_quarter_of_the_host_at_most_one_gigabyte_and_a_wrong_size_is_refused() -> None:
    megabytes = int(str(resolved_limit("auto")).removesuffix("MB"))
    assert megabytes == min(512, host_memory_bytes() // 4 // 1_000_000)
    assert resolved_limit("2GB") == "2GB" and resolved_limit(None) is None
    assert StoreSettings(memory_limit="1.5 GiB").memory_limit == "1.5 GiB"
    with pytest.raises(ValidationError, match="memory_limit"):
        StoreSettings(memory_limit="a lot")


def test_staged_tables_are_read_from_their_parquet_files_and_the_merge_matches_plain_python(tmp_path: Path) -> None:
    """An orders delivery large enough that DuckDB must spill under a 40 MB limit: the store holds
    what the input rows say (computed here in Python), and the staged tables were never loaded
    as frames for the merge."""
    orders, lines, expected_spend, expected_lines = [], [], {}, 0
    for n in range(30000):
        customer, total = f"C{n % 9000}", Decimal(n % 500) + Decimal("0.25")
        orders.append(f"o{n},{customer},2026-01-01T10:00:00,{total},web,Oslo\n")
        expected_spend[customer] = expected_spend.get(customer, Decimal(0)) + total
        for line in range(n % 4):
            lines.append(f"o{n},P{(n + line) % 700},{line + 1}\n")
            expected_lines += 1
    h = Harness(tmp_path, [{"name": "shop", "goals": [ORDERS_GOAL]}])
    h.project.store = StoreSettings(path=str(tmp_path / "store.duckdb"), published_path=None, memory_limit="40MB")
    outcome = h.run("shop", "orders", _orders("".join(orders), "".join(lines)))

    assert outcome.counts.events_created == 30000
    assert h.query("SELECT count(*), sum(quantity) FROM timeline_order__order_line") == [(expected_lines, sum(n % 4 * (n % 4 + 1) // 2 for n in range(30000)))]
    stored = dict(h.query("SELECT customer_number, spend FROM profiles"))
    assert stored == expected_spend
    staged = StagedImport.load(tmp_path / "work" / "d1" / "tables")
    assert isinstance(staged.events, ParquetFrames) and isinstance(staged.items, ParquetFrames) and isinstance(staged.sum_rows, ParquetFrames)
    assert staged.items.path("order/order_line").suffix == ".parquet"
    assert staged.items["order/order_line"].height == expected_lines
    with pytest.raises(TypeError):
        staged.events["order"] = pl.DataFrame()  # type: ignore[index]


def test_the_day_old_scratch_sweep_leaves_the_spill_folders_of_live_processes(tmp_path: Path) -> None:
    # A code server merges for weeks: its spill folder is old but in use; only its owner's death frees it.
    from cdp_pipeline.work_storage.sweep import _sweep_scratch

    killed_step = tmp_path / "stage-abc123"
    live_spill = tmp_path / SPILL_FOLDER / f"{os.getpid()}-0123456789ab"
    killed_step.mkdir()
    live_spill.mkdir(parents=True)
    for folder in (killed_step, live_spill, live_spill.parent):
        os.utime(folder, (1_000_000_000, 1_000_000_000))
    _sweep_scratch(tmp_path, limit=2_000_000_000)
    assert not killed_step.exists() and live_spill.is_dir()


def test_running_out_of_memory_names_the_setting_to_raise(tmp_path: Path) -> None:
    from cdp_pipeline.errors import CdpError

    # A list of 3M texts is one value: DuckDB cannot spill it, whatever the limit.
    with pytest.raises(CdpError, match=r"more memory than store.memory_limit allows \(32MB\).*raise store.memory_limit in store.yaml"):
        with open_writer(tmp_path / "store.duckdb", Catalog(), memory=WriterMemory(limit="32MB", spill_root=tmp_path / SPILL_FOLDER)) as conn:
            conn.execute("SELECT list(md5(i::VARCHAR)) FROM range(3000000) r(i)").fetchall()


def test_asking_whether_a_staged_table_was_delivered_does_not_read_it(tmp_path: Path) -> None:
    """The merge asks ``key in staged.items`` for every nested type; a Mapping answers that by
    reading the value, which for an orders delivery was the whole order-lines file as a frame. The
    file here is not Parquet at all, so a read would fail."""
    not_parquet = tmp_path / "items__order__order_line.parquet"
    not_parquet.write_bytes(b"these bytes would fail any read")
    frames = ParquetFrames({"order/order_line": not_parquet})
    assert "order/order_line" in frames
    assert "order/other" not in frames
    with pytest.raises(pl.exceptions.PolarsError):
        frames["order/order_line"]
