"""The writing connection on real files: a full disk is named and rolled back, the file is private
from its first byte, and a lock held elsewhere names its holder."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.disk_space import DiskSpaceError
from cdp_pipeline.errors import TransientError
from cdp_pipeline.store.database import open_reader, open_writer


def test_store_on_a_full_disk_says_so_and_keeps_nothing_of_the_write(small_disk) -> None:
    store = small_disk(3) / "store.duckdb"
    with open_writer(store, Catalog()) as conn:
        conn.execute("CREATE TABLE notes (text VARCHAR)")
        conn.execute("INSERT INTO notes VALUES ('before')")
    with pytest.raises(DiskSpaceError, match=rf"the disk of the store \({store.parent}\) is full: .*No space left on device"):
        with open_writer(store, Catalog()) as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO notes SELECT md5(i::VARCHAR) || md5((i + 1)::VARCHAR) FROM range(400000) r(i)")
            conn.execute("COMMIT")
    with open_reader(store) as conn:
        assert conn.execute("SELECT list(text) FROM notes").fetchone() == (["before"],)


ANALYST = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(120)"


def test_a_store_is_private_even_when_its_writer_is_killed(tmp_path) -> None:
    """The file is 0600 from the moment it exists, not after a close that a kill -9 prevents."""
    store = tmp_path / "new_folder" / "store.duckdb"
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path; from cdp_pipeline.config.catalog import Catalog; "
            "from cdp_pipeline.store.database import open_writer\n"
            "with open_writer(Path(sys.argv[1]), Catalog()) as conn:\n"
            "    conn.execute('CREATE TABLE notes AS SELECT 1 AS n'); print('open', flush=True); time.sleep(120)\n"
        ), str(store)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700


def test_an_existing_store_is_narrowed_to_0600_before_anything_is_written(tmp_path) -> None:
    store = tmp_path / "store.duckdb"
    duckdb.connect(str(store)).close()
    store.chmod(0o644)
    with open_writer(store, Catalog()):
        assert stat.S_IMODE(store.stat().st_mode) == 0o600


def test_a_locked_store_names_the_process_holding_it(tmp_path) -> None:
    store = tmp_path / "store.duckdb"
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout is not None and analyst.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(TransientError) as error, open_writer(store, Catalog(), lock_wait_seconds=2):
            pass
        assert time.monotonic() - started < 30
    finally:
        analyst.kill()
        analyst.wait(timeout=30)
    message = str(error.value)
    assert f"the store {store} is locked by process {analyst.pid} (" in message
    assert "time.sleep(120)" in message  # the holder's command line, so the operator knows what to close
    assert "waited 2 s" in message
