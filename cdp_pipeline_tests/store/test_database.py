"""The writing connection on a real, small file system: a full disk is named and rolled back."""

from __future__ import annotations

import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.disk_space import DiskSpaceError
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
