"""Does the project's store hold what the hand-rolled baseline's store holds? (DuckDB SQL only.)

A ratio against a baseline that computed something else would be meaningless, so the bench
compares the two stores on the same input before it reports one: the profile rows (every catalog
property of the demo), the households, the order events and the order lines, each as a multiset
of rows (``EXCEPT ALL`` both ways), plus the row counts.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

COMPARED = {
    "profiles": "profile_id, customer_number, email, first_name, last_name, city, country, birth_date, signup_date, loyalty_tier, "
    "interests, consents, household_id, lifetime_value, order_count, last_order_at, channels",
    "groups_household": "group_id, household_name, city, household_size",
    "timeline_order": "event_id, profile_id, event_time, total, currency, channel",
    "timeline_order__order_line": "event_id, item_index, line_number, product_id, product_name, quantity, unit_price",
}


def compare_stores(project_store: Path, baseline_store: Path, *, examples: int = 3) -> dict:
    """Returns ``{"equal": bool, "tables": {table: {...counts, differing rows, examples}}}``."""
    conn = duckdb.connect()
    try:
        conn.execute(f"ATTACH '{project_store}' AS project (READ_ONLY)")
        conn.execute(f"ATTACH '{baseline_store}' AS baseline (READ_ONLY)")
        tables: dict[str, dict] = {}
        for table, columns in COMPARED.items():
            only_project = f"SELECT {columns} FROM project.{table} EXCEPT ALL SELECT {columns} FROM baseline.{table}"
            only_baseline = f"SELECT {columns} FROM baseline.{table} EXCEPT ALL SELECT {columns} FROM project.{table}"
            (rows_project,) = conn.execute(f"SELECT count(*) FROM project.{table}").fetchone()
            (rows_baseline,) = conn.execute(f"SELECT count(*) FROM baseline.{table}").fetchone()
            (differ_project,) = conn.execute(f"SELECT count(*) FROM ({only_project})").fetchone()
            (differ_baseline,) = conn.execute(f"SELECT count(*) FROM ({only_baseline})").fetchone()
            entry = {"rows_project": rows_project, "rows_baseline": rows_baseline,
                     "only_in_project": differ_project, "only_in_baseline": differ_baseline}
            if differ_project or differ_baseline:
                entry["examples_project"] = [str(r) for r in conn.execute(f"{only_project} LIMIT {examples}").fetchall()]
                entry["examples_baseline"] = [str(r) for r in conn.execute(f"{only_baseline} LIMIT {examples}").fetchall()]
            tables[table] = entry
    finally:
        conn.close()
    equal = all(t["rows_project"] == t["rows_baseline"] and not t["only_in_project"] and not t["only_in_baseline"] for t in tables.values())
    return {"equal": equal, "tables": tables}
