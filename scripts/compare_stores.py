"""Compare two store files table by table, leaving out the columns that hold run times, run ids and
file mtimes: a refactoring must leave every other value the same for the same input.

Usage: python scripts/compare_stores.py BEFORE.duckdb AFTER.duckdb   (exit 1 when a table differs)
"""

from __future__ import annotations

import sys

import duckdb

# Columns that differ between two runs of the same input: times, run and delivery ids (a delivery
# id hashes its run), file lists (they hold mtimes) and configuration hashes (they hold paths).
VOLATILE = ("_at", "_since", "run_id", "delivery_id", "measured", "started", "ended", "timestamp", "seconds", "path", "files", "config_hash")



def _sql_text(value: str) -> str:
    """A SQL string literal: ATTACH takes no parameters on DuckDB 1.5."""
    return "'" + str(value).replace("'", "''") + "'"

def _names(conn: duckdb.DuckDBPyConnection, sql: str, *parameters: str) -> list[str]:
    return [row[0] for row in conn.execute(sql, list(parameters)).fetchall()]


def compare(before: str, after: str) -> int:
    conn = duckdb.connect()
    conn.execute("ATTACH " + _sql_text(before) + " AS a (READ_ONLY)")
    conn.execute("ATTACH " + _sql_text(after) + " AS b (READ_ONLY)")
    tables_sql = "SELECT table_name FROM duckdb_tables() WHERE database_name = ?"
    columns_sql = "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ?"
    in_a, in_b = set(_names(conn, tables_sql, "a")), set(_names(conn, tables_sql, "b"))
    print("only before:", sorted(in_a - in_b), "only after:", sorted(in_b - in_a))
    differing = 0
    for table in sorted(in_a & in_b):
        columns_a = _names(conn, columns_sql, "a", table)
        columns_b = set(_names(conn, columns_sql, "b", table))
        compared = [c for c in columns_a if c in columns_b and not any(v in c for v in VOLATILE)]
        if not compared:
            continue
        select = ", ".join(f'"{c}"' for c in compared)

        def extra(left: str, right: str, table: str = table, select: str = select) -> int:
            row = conn.execute(f'SELECT count(*) FROM (SELECT {select} FROM {left}."{table}" EXCEPT ALL SELECT {select} FROM {right}."{table}")').fetchone()
            return int(row[0]) if row else 0

        only_a, only_b = extra("a", "b"), extra("b", "a")
        same = only_a == only_b == 0
        differing += not same
        print(f"{'SAME' if same else 'DIFF'} {table}: rows only before {only_a}, only after {only_b}; "
              f"{len(compared)} columns compared, new columns {sorted(columns_b - set(columns_a))}")
    print("tables differing:", differing)
    return differing


if __name__ == "__main__":
    sys.exit(1 if compare(sys.argv[1], sys.argv[2]) else 0)
