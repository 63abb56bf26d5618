"""The SQL side of an export goal: which profiles leave, with which columns, straight from DuckDB
to CSV files with ``COPY`` (streamed by DuckDB, bounded memory at 1M profiles).

The steps, each one set-based statement over temp tables of the writer connection:

1. :func:`select_profiles` (``selection``) fills ``export_candidates``: the segment's members that consented and
   have a value for at least one selected property, each flagged ``changed`` when it changed
   since the goal's last successful export (or always, for a full export).
2. :func:`build_export_rows` (``rows``, with the cells of ``columns``) fills ``export_rows``: one row per profile that leaves, every cell
   already the text written (columns ``c1 … cN`` in declared order), after the goal's data
   processors and the formula guard, with a row number per part and, in diff mode, a row hash.
3. :func:`write_profile_parts`, :func:`write_diff_csv` and :func:`write_timeline_csvs` (``files``)
   ``COPY`` from those tables; :func:`save_selection` (``state``) keeps what :func:`record_export`
   needs after the writer lock was released for the upload.

No value ever passes through Python row by row; processors run in their SQL form
(``cdp_pipeline.tables.processors``), except a chain with a ``custom`` processor, which runs
through Polars over batches of rows.
"""

from cdp_pipeline.store.exports.files import DIFF_CHANGE_COLUMN, part_count, write_diff_csv, write_profile_parts, write_timeline_csvs, writes_utf8
from cdp_pipeline.store.exports.rows import build_export_rows
from cdp_pipeline.store.exports.selection import ExportSelection, select_profiles
from cdp_pipeline.store.exports.state import record_export, save_selection

__all__ = [
    "DIFF_CHANGE_COLUMN",
    "ExportSelection",
    "build_export_rows",
    "part_count",
    "record_export",
    "save_selection",
    "select_profiles",
    "write_diff_csv",
    "write_profile_parts",
    "write_timeline_csvs",
    "writes_utf8",
]
