"""Print the tables and views of the store as Markdown, from the code that creates them.

    python docs/generate_store_reference.py                 # the bundled demo catalog
    python docs/generate_store_reference.py CONFIG_DIR      # your own store.yaml

The tables come from ``FIXED_TABLES`` and ``catalog_tables`` in ``cdp_pipeline/store/schema.py``;
the views are created in an in-memory DuckDB by ``ensure_schema`` and read back with their
comments. ``docs/store.md`` holds this output for the demo catalog between the
``generated`` markers, and ``cdp_pipeline_tests/test_docs.py`` checks that it is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, load_project
from cdp_pipeline.store.schema import FIXED_TABLES, catalog_tables, ensure_schema


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(name: str, comment: str, columns: list[tuple[str, str, str]]) -> list[str]:
    lines = [f"### `{name}`", "", _cell(comment), "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{column}` | `{sql_type}` | {_cell(meaning)} |" for column, sql_type, meaning in columns]
    return lines + [""]


def _views(catalog: Catalog) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    conn = duckdb.connect()
    try:
        ensure_schema(conn, catalog)
        views = conn.execute(
            "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY view_name"
        ).fetchall()
        out = []
        for view, comment in views:
            columns = conn.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = $v ORDER BY column_index", {"v": view}
            ).fetchall()
            out.append((view, comment or "", [(column, data_type, "") for column, data_type in columns]))
        return out
    finally:
        conn.close()


def store_reference(catalog: Catalog) -> str:
    """The Markdown reference of every table (catalog tables first) and view."""
    lines: list[str] = []
    tables = {**catalog_tables(catalog), **FIXED_TABLES}
    for name, (comment, columns) in tables.items():
        lines += _table(name, comment, columns)
    for name, comment, columns in _views(catalog):
        lines += [f"### `{name}` (view)", "", _cell(comment), "", "| column | type |", "|---|---|"]
        lines += [f"| `{column}` | `{sql_type}` |" for column, sql_type, _ in columns]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    config_dir = Path(argv[1]) if len(argv) > 1 else BUNDLED_CONFIG_DIR
    project = load_project(config_dir, Path.cwd())
    sys.stdout.write(store_reference(project.catalog))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
