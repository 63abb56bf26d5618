"""The fair hand-rolled baseline: the demo connection's work as one plain script (no cdp_pipeline import).

It does what ``demo_local``'s main job does, with the same rules, and nothing the product adds
around them (no ledger, no value history, no rejects, no segment tables, no published copy):

1. fetch: copy the four files from the drop folder into a work folder, sha256 each;
2. decrypt: the gpg command line for files that start with an OpenPGP packet;
3. Polars: read every cell as text, type it (dates, datetimes, decimals, integers, ``|`` lists),
   clean it as the demo's processors do (e-mail normalised, names trimmed), one row per key with
   the demo's rules for repeated keys (set rules: the last row; add: the union in file order;
   sum: the total), order lines numbered within their order;
4. DuckDB: ``MERGE INTO`` the tables of an EXISTING store (created beforehand by ``create_store``,
   not timed) with the five merge rules, one transaction per goal, then a checkpoint;
5. both exports: the high_value segment file (with its segments and lifecycle columns) and the
   order and order-line timeline files of its members, each one ``COPY``.

The merge rules (t = stored, s = incoming; empty = NULL or an empty list): set → s unless s is
empty; set_if_empty → t unless t is empty; set_or_clear → s (empty clears); add → t followed by the
items of s not in t; sum → coalesce(t, 0) + s unless s is empty.

    python bench/handrolled.py --drop DIR --work DIR [--gnupg-home DIR] [--date YYYYMMDD]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

FILES = ("households", "profiles", "orders", "order_lines")

# The demo's normalize_email: top-level-domain typos of ".com", then whole-domain typos.
TLD_TYPOS = (".con", ".cmo", ".ocm", ".cpm", ".vom", ".comm")
DOMAIN_FIXES = {
    "gmial.com": "gmail.com", "gmai.com": "gmail.com", "gnail.com": "gmail.com", "gmal.com": "gmail.com",
    "gmaill.com": "gmail.com", "gamil.com": "gmail.com", "hotmial.com": "hotmail.com", "hotmal.com": "hotmail.com",
    "hotmai.com": "hotmail.com", "hotmil.com": "hotmail.com", "yaho.com": "yahoo.com", "yahooo.com": "yahoo.com",
    "yahho.com": "yahoo.com", "outlok.com": "outlook.com", "outloo.com": "outlook.com", "outlookk.com": "outlook.com",
}  # fmt: skip

STORE_DDL = """
CREATE TABLE IF NOT EXISTS groups_household (group_id VARCHAR, household_name VARCHAR, city VARCHAR, household_size BIGINT);
CREATE TABLE IF NOT EXISTS profiles (
    profile_id VARCHAR, customer_number VARCHAR, email VARCHAR, first_name VARCHAR, last_name VARCHAR, city VARCHAR,
    country VARCHAR, birth_date DATE, signup_date DATE, loyalty_tier VARCHAR, interests VARCHAR[], consents VARCHAR[],
    household_id VARCHAR, lifetime_value DECIMAL(18,4), order_count BIGINT, last_order_at TIMESTAMP, channels VARCHAR[]);
CREATE TABLE IF NOT EXISTS timeline_order (
    event_id VARCHAR, profile_id VARCHAR, event_time TIMESTAMP, total DECIMAL(18,4), currency VARCHAR, channel VARCHAR);
CREATE TABLE IF NOT EXISTS timeline_order__order_line (
    event_id VARCHAR, item_index BIGINT, line_number BIGINT, product_id VARCHAR, product_name VARCHAR, quantity BIGINT,
    unit_price DECIMAL(18,4));
"""


def create_store(path: Path) -> None:
    """The existing store the merge writes into (set-up, not part of the timed work)."""
    with duckdb.connect(str(path)) as conn:
        conn.execute(STORE_DDL)


# ----------------------------------------------------------------------------- rules as SQL


def _set(t: str, s: str) -> str:
    return f"CASE WHEN {s} IS NULL THEN {t} ELSE {s} END"


def _set_if_empty(t: str, s: str) -> str:
    return f"CASE WHEN {t} IS NULL THEN {s} ELSE {t} END"


def _set_or_clear(t: str, s: str) -> str:
    return s


def _add(t: str, s: str) -> str:
    return (f"CASE WHEN {s} IS NULL OR len({s}) = 0 THEN {t} "
            f"ELSE list_concat(coalesce({t}, []::VARCHAR[]), list_filter({s}, lambda x: NOT list_contains(coalesce({t}, []::VARCHAR[]), x))) END")


def _sum(t: str, s: str) -> str:
    return f"CASE WHEN {s} IS NULL THEN {t} ELSE coalesce({t}, 0) + {s} END"


PROFILE_RULES = {
    "customer_number": _set_if_empty, "email": _set, "first_name": _set, "last_name": _set, "city": _set, "country": _set,
    "birth_date": _set_if_empty, "signup_date": _set_if_empty, "loyalty_tier": _set_or_clear, "interests": _add,
    "consents": _add, "household_id": _set,
}  # fmt: skip
ORDER_RULES = {"lifetime_value": _sum, "order_count": _sum, "channels": _add, "last_order_at": _set}
GROUP_RULES = {"household_name": _set, "city": _set, "household_size": _set}


def merge_sql(table: str, key: str, source: str, rules: dict, *, insert: bool) -> str:
    """MERGE INTO an existing table: matched rows get each rule, new keys are inserted (a rule
    applied to an empty stored value), only when ``insert``."""
    updates = ", ".join(f"{column} = {rule(f't.{column}', f's.{column}')}" for column, rule in rules.items())
    sql = f"MERGE INTO {table} t USING {source} s ON t.{key} = s.{key} WHEN MATCHED THEN UPDATE SET {updates}"
    if insert:
        columns = ", ".join([key, *rules])
        values = ", ".join([f"s.{key}", *(rule("NULL", f"s.{column}") for column, rule in rules.items())])
        sql += f" WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    return sql


# ----------------------------------------------------------------------------- Polars: parse, type, combine


def _text(column: str) -> pl.Expr:
    """Trimmed text, empty as NULL (the demo's trim processor and the reader's empty cells)."""
    value = pl.col(column).str.strip_chars()
    return pl.when(value != "").then(value)


def _email(column: str) -> pl.Expr:
    email = _text(column).str.to_lowercase()
    parts = email.str.splitn("@", 2)
    domain = parts.struct.field("field_1")
    tld_pattern = "(" + "|".join(t.replace(".", r"\.") for t in TLD_TYPOS) + ")$"
    fixed = domain.str.replace(tld_pattern, ".com").replace(DOMAIN_FIXES)
    return pl.when(domain.is_null()).then(email).otherwise(pl.concat_str(parts.struct.field("field_0"), pl.lit("@"), fixed))


def _list(column: str) -> pl.Expr:
    items = pl.col(column).str.split("|", literal=True).list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
    return pl.when(items.list.len() > 0).then(items)


def _read(path: Path) -> pl.DataFrame:
    # Every cell as text: ids keep their zeros, and typing is explicit below.
    return pl.read_csv(path, infer_schema=False)


def _one_row_per_key(frame: pl.DataFrame, key: str, last: list[str], union: list[str]) -> pl.DataFrame:
    """Repeated keys in one file: the last row's value for the set rules, the union for add."""
    return frame.group_by(key, maintain_order=True).agg(
        *(pl.col(c).last() for c in last),
        *(pl.col(c).explode().drop_nulls().unique(maintain_order=True) for c in union),
    )


def stage_tables(plain: dict[str, Path]) -> dict[str, pl.DataFrame]:
    households = _read(plain["households"]).select(
        _text("household_id").alias("group_id"), _text("household_name"), _text("city"), _text("household_size").cast(pl.Int64)
    )
    households = _one_row_per_key(households, "group_id", ["household_name", "city", "household_size"], [])
    profiles = _read(plain["profiles"]).select(
        _text("customer_id").alias("customer_number"), _email("email"), _text("first_name"), _text("last_name"), _text("city"),
        _text("country"), _text("birth_date").str.strptime(pl.Date, "%Y-%m-%d"), _text("signup_date").str.strptime(pl.Date, "%Y-%m-%d"),
        _text("loyalty_tier"), _list("interests"), _list("marketing_consent").alias("consents"), _text("household_id"),
    )
    set_columns = ["email", "first_name", "last_name", "city", "country", "birth_date", "signup_date", "loyalty_tier", "household_id"]
    profiles = _one_row_per_key(profiles, "customer_number", set_columns, ["interests", "consents"])
    orders = _read(plain["orders"]).select(
        _text("order_id").alias("event_id"), _text("customer_id").alias("customer_number"),
        _text("order_date").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S").alias("event_time"),
        _text("total").cast(pl.Decimal(18, 4)), _text("currency"), _text("channel"),
    )
    lines = _read(plain["order_lines"]).select(
        _text("order_id").alias("event_id"), _text("line_number").cast(pl.Int64), _text("product_id"), _text("product_name"),
        _text("quantity").cast(pl.Int64), _text("unit_price").cast(pl.Decimal(18, 4)),
    )
    # Lines belong to an order of this delivery; numbered 1, 2, ... within it in file order.
    lines = lines.join(orders.select("event_id"), on="event_id", how="semi", maintain_order="left").with_columns(
        (pl.int_range(pl.len()).over("event_id") + 1).cast(pl.Int64).alias("item_index")
    )
    per_customer = orders.group_by("customer_number", maintain_order=True).agg(
        pl.col("total").sum().alias("lifetime_value"), pl.len().cast(pl.Int64).alias("order_count"),
        pl.col("event_time").last().alias("last_order_at"), pl.col("channel").drop_nulls().unique(maintain_order=True).alias("channels"),
    )
    return {"households": households, "profiles": profiles, "orders": orders, "per_customer": per_customer, "lines": lines}


# ----------------------------------------------------------------------------- DuckDB: merge and export


def merge(conn: duckdb.DuckDBPyConnection, frames: dict[str, pl.DataFrame]) -> None:
    for name, frame in frames.items():
        conn.register(f"staged_{name}", frame)
    conn.execute("BEGIN")
    conn.execute(merge_sql("groups_household", "group_id", "staged_households", GROUP_RULES, insert=True))
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    profiles = "(SELECT md5('customer_number:' || customer_number) AS profile_id, * FROM staged_profiles)"
    conn.execute(merge_sql("profiles", "profile_id", profiles, PROFILE_RULES, insert=True))
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    # Orders update existing profiles only (allow_new_profiles: false); events of unknown customers are dropped.
    per_customer = "(SELECT md5('customer_number:' || customer_number) AS profile_id, * EXCLUDE (customer_number) FROM staged_per_customer)"
    conn.execute(merge_sql("profiles", "profile_id", per_customer, ORDER_RULES, insert=False))
    conn.execute(
        """
        MERGE INTO timeline_order t
        USING (SELECT o.event_id, p.profile_id, o.event_time, o.total, o.currency, o.channel
               FROM staged_orders o JOIN profiles p ON p.profile_id = md5('customer_number:' || o.customer_number)) s
        ON t.event_id = s.event_id
        WHEN MATCHED THEN UPDATE SET profile_id = s.profile_id, event_time = s.event_time, total = s.total, currency = s.currency, channel = s.channel
        WHEN NOT MATCHED THEN INSERT (event_id, profile_id, event_time, total, currency, channel)
             VALUES (s.event_id, s.profile_id, s.event_time, s.total, s.currency, s.channel)
        """
    )
    conn.execute(
        """
        MERGE INTO timeline_order__order_line t
        USING (SELECT l.event_id, l.item_index, l.line_number, l.product_id, l.product_name, l.quantity, l.unit_price
               FROM staged_lines l SEMI JOIN timeline_order o ON o.event_id = l.event_id) s
        ON t.event_id = s.event_id AND t.item_index = s.item_index
        WHEN MATCHED THEN UPDATE SET line_number = s.line_number, product_id = s.product_id, product_name = s.product_name,
             quantity = s.quantity, unit_price = s.unit_price
        WHEN NOT MATCHED THEN INSERT (event_id, item_index, line_number, product_id, product_name, quantity, unit_price)
             VALUES (s.event_id, s.item_index, s.line_number, s.product_id, s.product_name, s.quantity, s.unit_price)
        """
    )
    conn.execute("COMMIT")
    conn.execute("CHECKPOINT")  # durable, as the product's store is after a run


SEGMENT_EXPORT_SQL = """
SELECT profile_id, customer_number, email, first_name, lifetime_value, order_count, loyalty_tier,
       concat_ws('|', CASE WHEN customer_number IS NOT NULL THEN 'all_customers' END, 'high_value',
                 CASE WHEN email IS NOT NULL AND list_contains(consents, 'marketing') THEN 'high_value_reachable' END) AS segments,
       'customer_journey:' || CASE WHEN order_count >= 3 THEN 'loyal' WHEN order_count >= 1 THEN 'active' ELSE 'prospect' END AS lifecycle,
       'cdp_pipeline demo' AS source
FROM profiles WHERE lifetime_value >= 500
"""
ORDER_EXPORT_SQL = """
SELECT e.event_id, e.profile_id, e.event_time, e.total, e.currency, e.channel
FROM timeline_order e SEMI JOIN profiles p ON p.profile_id = e.profile_id AND p.lifetime_value >= 500
"""
ORDER_LINE_EXPORT_SQL = """
SELECT i.event_id, i.item_index, i.line_number, i.product_id, i.product_name, i.quantity, i.unit_price
FROM timeline_order__order_line i SEMI JOIN (
    SELECT e.event_id FROM timeline_order e SEMI JOIN profiles p ON p.profile_id = e.profile_id AND p.lifetime_value >= 500) m
ON m.event_id = i.event_id
"""


def export(conn: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, int]:
    """The segment file and the two timeline files, one COPY each; returns rows per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, sql in (("high_value.csv", SEGMENT_EXPORT_SQL), ("order.csv", ORDER_EXPORT_SQL), ("order_line.csv", ORDER_LINE_EXPORT_SQL)):
        target = out_dir / name
        (count,) = conn.execute(f"COPY ({sql}) TO '{target}' (HEADER, DELIMITER ',')").fetchone()
        rows[name] = int(count)
    return rows


# ----------------------------------------------------------------------------- the whole script


def _is_pgp(path: Path) -> bool:
    with path.open("rb") as handle:
        first = handle.read(1)
    return bool(first) and bool(first[0] & 0x80)  # a binary OpenPGP packet tag; CSV text never sets the high bit first


def run(drop: Path, work: Path, date: str, gnupg_home: Path | None, on_stage=None) -> dict:
    """The timed job. ``on_stage(name)`` is called as each stage starts (the caller's memory sampler)."""
    stages: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        if on_stage:
            on_stage(name)
        started = time.perf_counter()
        yield
        stages[name] = time.perf_counter() - started

    fetched: dict[str, Path] = {}
    with stage("fetch"):
        for name in FILES:
            target = work / f"{name}.download"
            shutil.copyfile(drop / f"{name}_{date}.csv", target)
            digest = hashlib.sha256()
            with target.open("rb") as handle:
                while chunk := handle.read(8 * 1024 * 1024):
                    digest.update(chunk)
            fetched[name] = target
    plain: dict[str, Path] = {}
    with stage("decrypt"):
        for name, path in fetched.items():
            if gnupg_home is not None and _is_pgp(path):
                target = work / f"{name}.csv"
                env = {"PATH": os.environ.get("PATH", os.defpath), "GNUPGHOME": str(gnupg_home), "LC_ALL": "C"}
                subprocess.run(["gpg", "--batch", "--no-tty", "--quiet", "--yes", "--output", str(target), "--decrypt", str(path)],
                               env=env, check=True, capture_output=True)
                plain[name] = target
            else:
                plain[name] = path
    with stage("tables"):
        frames = stage_tables(plain)
    with stage("merge"):
        conn = duckdb.connect(str(work / "store.duckdb"))
        merge(conn, frames)
        del frames
    with stage("export"):
        rows = export(conn, work / "outbox")
        conn.close()
    return {"stages": stages, "total_seconds": sum(stages.values()), "export_rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drop", type=Path, required=True, help="the drop folder holding <name>_<date>.csv (plain or gpg-encrypted)")
    parser.add_argument("--work", type=Path, required=True, help="work folder: downloads, store.duckdb, outbox/")
    parser.add_argument("--date", default="20260115")
    parser.add_argument("--gnupg-home", type=Path, help="GNUPGHOME holding the key that decrypts encrypted files")
    parser.add_argument("--json", type=Path, help="write the timings here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    create_store(args.work / "store.duckdb")
    result = run(args.drop, args.work, args.date, args.gnupg_home)
    if args.json:
        args.json.write_text(json.dumps(result))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
