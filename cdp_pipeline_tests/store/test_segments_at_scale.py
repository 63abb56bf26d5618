"""Segment membership at scale. Pins a DuckDB 2.0 fault the refresh works around: an empty
INSERT ... SELECT followed, in the same transaction, by a large one into the same table lost the
large one (found by bench/pipeline.py at 1M profiles: high_value counted 268k, stored none)."""

from __future__ import annotations

from datetime import datetime

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.segments import refresh_memberships

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {"spend": {"type": "decimal"}},
        "segments": {
            "nobody": {"condition": "spend < 0"},
            "everybody": {"condition": "spend >= 0"},
            "everybody_again": {"based_on": ["everybody"], "condition": "TRUE"},
        },
        "lifecycles": {"spend": {"stages": [{"name": "none", "condition": "spend < 0"}, {"name": "some", "condition": "TRUE"}]}},
    }
)


def test_a_large_segment_after_an_empty_one_is_kept(tmp_path):
    profiles = 200_000
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        conn.execute(f"INSERT INTO profiles (profile_id, spend) SELECT 'p' || range, range FROM range({profiles})")
        sizes = refresh_memberships(conn, CATALOG, datetime(2026, 1, 1))
        assert sizes == {"nobody": 0, "everybody": profiles, "everybody_again": profiles}
        stored = dict(conn.execute("SELECT segment, count(*) FROM segment_members GROUP BY 1").fetchall())
        assert stored == {"everybody": profiles, "everybody_again": profiles}
        assert conn.execute("SELECT stage, count(*) FROM lifecycle_members GROUP BY 1").fetchall() == [("some", profiles)]
