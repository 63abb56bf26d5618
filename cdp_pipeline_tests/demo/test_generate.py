"""The demo/benchmark data generator: deterministic, referentially sound, dirty on purpose."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cdp_pipeline.demo.generate import (
    EMAIL_DOMAIN_TYPOS,
    FIRST_NAMES,
    HEADERS,
    INTERESTS,
    LOYALTY_TIERS,
    PRODUCTS,
    generate_delivery,
    main,
)

PROFILES = 3000
DATE = "20260115"


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_delivery(tmp_path_factory.mktemp("delivery"), profiles=PROFILES, seed=42, date=DATE)


@pytest.fixture(scope="module")
def tables(delivery: dict[str, Path]) -> dict[str, pl.DataFrame]:
    # Everything read as text: ids keep their leading zeros and we check the raw cell formats.
    return {name: pl.read_csv(path, infer_schema=False) for name, path in delivery.items()}


def _cents(column: str) -> pl.Expr:
    """"12.34" → 1234 without floats."""
    return pl.col(column).str.replace(".", "", literal=True).cast(pl.Int64)


def test_file_names_and_returned_keys(delivery: dict[str, Path]) -> None:
    assert list(delivery) == ["households", "profiles", "orders", "order_lines"]
    assert {path.name for path in delivery.values()} == {f"{name}_{DATE}.csv" for name in HEADERS}
    # No partial file is left behind by the write-then-rename.
    assert sorted(p.name for p in next(iter(delivery.values())).parent.iterdir()) == sorted(
        p.name for p in delivery.values()
    )


def test_headers_encoding_and_line_endings(delivery: dict[str, Path]) -> None:
    expected = {
        "households": b"household_id,household_name,city,household_size",
        "profiles": b"customer_id,email,first_name,last_name,city,country,birth_date,signup_date,"
        b"loyalty_tier,interests,marketing_consent,household_id",
        "orders": b"order_id,customer_id,order_date,total,currency,channel",
        "order_lines": b"order_id,line_number,product_id,product_name,quantity,unit_price",
    }
    for name, path in delivery.items():
        raw = path.read_bytes()
        assert raw.split(b"\n", 1)[0] == expected[name]
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert b"\r" not in raw
        assert raw.endswith(b"\n")
        raw.decode("utf-8")


def test_deterministic_and_seed_dependent(tmp_path: Path, delivery: dict[str, Path]) -> None:
    again = generate_delivery(tmp_path / "again", profiles=PROFILES, seed=42, date=DATE)
    other_seed = generate_delivery(tmp_path / "other", profiles=PROFILES, seed=43, date=DATE)
    for name in HEADERS:
        assert again[name].read_bytes() == delivery[name].read_bytes(), name
        assert other_seed[name].read_bytes() != delivery[name].read_bytes(), name


def test_sizes(tables: dict[str, pl.DataFrame]) -> None:
    assert tables["households"].height == PROFILES // 3
    assert tables["profiles"]["customer_id"].n_unique() == PROFILES
    assert tables["orders"].height == 4500
    assert tables["order_lines"].height == 12000


def test_ids_are_zero_padded_text(tables: dict[str, pl.DataFrame]) -> None:
    profiles, orders, lines, households = (tables[n] for n in ("profiles", "orders", "order_lines", "households"))
    assert profiles["customer_id"][0] == "C0000001"
    assert orders["order_id"][0] == "O00000001"
    assert households["household_id"][0] == "HH000001"
    assert profiles["customer_id"].str.contains(r"^C\d{7}$").all()
    assert orders["order_id"].str.contains(r"^O\d{8}$").all()
    assert households["household_id"].str.contains(r"^HH\d{6}$").all()
    assert lines["product_id"].str.contains(r"^P\d{4}$").all()
    assert orders["order_id"].is_unique().all()
    assert households["household_id"].is_unique().all()


def test_referential_integrity_and_exact_totals(tables: dict[str, pl.DataFrame]) -> None:
    profiles, orders, lines, households = (tables[n] for n in ("profiles", "orders", "order_lines", "households"))
    assert orders["customer_id"].is_in(profiles["customer_id"].implode()).all()
    assert lines["order_id"].is_in(orders["order_id"].implode()).all()
    assert orders["order_id"].is_in(lines["order_id"].implode()).all()  # every order has ≥1 line
    assert profiles["household_id"].drop_nulls().is_in(households["household_id"].implode()).all()

    # line numbers run 1..n within each order
    numbering = lines.group_by("order_id").agg(
        pl.col("line_number").cast(pl.Int64).sort().alias("numbers"), pl.len().alias("n")
    )
    assert numbering.filter(pl.col("numbers") != pl.int_ranges(1, pl.col("n") + 1)).height == 0

    assert orders["total"].str.contains(r"^\d+\.\d{2}$").all()
    assert lines["unit_price"].str.contains(r"^\d+\.\d{2}$").all()
    line_sums = lines.group_by("order_id").agg(
        line_cents=(pl.col("quantity").cast(pl.Int64) * _cents("unit_price")).sum()
    )
    checked = orders.join(line_sums, on="order_id", how="left").with_columns(total_cents=_cents("total"))
    assert checked.filter(pl.col("total_cents") != pl.col("line_cents")).height == 0


def test_values_are_in_their_domains(tables: dict[str, pl.DataFrame]) -> None:
    profiles, orders, lines = tables["profiles"], tables["orders"], tables["order_lines"]
    assert set(profiles["loyalty_tier"]) == set(LOYALTY_TIERS)
    assert set(profiles["marketing_consent"].unique().to_list()) == {"marketing", None}
    items = profiles["interests"].str.split("|")
    assert items.list.len().fill_null(0).max() <= 3
    assert (items.list.len() == items.list.unique().list.len()).fill_null(True).all()
    assert set(items.explode().drop_nulls()) == set(INTERESTS)
    assert profiles["interests"].null_count() > 0  # some profiles have no interests
    assert set(orders["currency"]) == {"EUR"}
    assert set(orders["channel"]) == {"web", "store", "app"}
    assert set(lines["product_name"]) <= {name for name, _ in PRODUCTS}
    assert lines["quantity"].cast(pl.Int64).min() >= 1
    # Non-ASCII names survive the round trip.
    assert {"Zoë", "Łukasz", "José"} <= set(profiles["first_name"])
    assert set(profiles["first_name"]) <= set(FIRST_NAMES)


def test_dates_are_iso_and_consistent(tables: dict[str, pl.DataFrame]) -> None:
    profiles = tables["profiles"].with_columns(
        birth=pl.col("birth_date").str.to_date("%Y-%m-%d"), signup=pl.col("signup_date").str.to_date("%Y-%m-%d")
    )
    delivery_day = pl.date(2026, 1, 15)
    assert profiles.filter(pl.col("signup") >= delivery_day).height == 0
    assert profiles.filter(pl.col("signup") < pl.col("birth").dt.offset_by("18y")).height == 0
    orders = tables["orders"].with_columns(placed=pl.col("order_date").str.to_datetime("%Y-%m-%d %H:%M:%S"))
    placed_after_signup = orders.join(
        profiles.unique("customer_id", keep="first").select("customer_id", "signup"), on="customer_id"
    )
    assert placed_after_signup.filter(pl.col("placed").dt.date() < pl.col("signup")).height == 0
    assert placed_after_signup.filter(pl.col("placed").dt.date() >= delivery_day).height == 0
    # order ids rise with time
    assert orders["placed"].is_sorted()


def test_dirty_emails_in_roughly_the_documented_shares(tables: dict[str, pl.DataFrame]) -> None:
    emails = tables["profiles"]["email"]
    rows = emails.len()
    typo_share = emails.str.extract(r"@(.+?)\s*$").is_in(list(EMAIL_DOMAIN_TYPOS)).sum() / rows
    case_or_space_share = ((emails != emails.str.strip_chars()) | (emails != emails.str.to_lowercase())).sum() / rows
    assert 0.005 <= typo_share <= 0.016
    assert 0.01 <= case_or_space_share <= 0.03
    # Everything else is already clean: lower case, trimmed, a known good domain.
    normalised = emails.str.strip_chars().str.to_lowercase()
    for typo, fixed in EMAIL_DOMAIN_TYPOS.items():
        normalised = normalised.str.replace(f"@{typo}", f"@{fixed}", literal=True)
    assert normalised.str.contains(r"^[a-z]+\.?[a-z]+\d+@[a-z]+\.[a-z]+$").all()
    # Distinct customers have distinct (normalised) addresses: e-mail can serve as an identifier.
    assert tables["profiles"].with_columns(email=normalised).unique(["customer_id", "email"]).height == PROFILES


def test_shares_of_consent_and_households(tables: dict[str, pl.DataFrame]) -> None:
    profiles = tables["profiles"]
    assert 0.77 <= profiles["marketing_consent"].is_not_null().mean() <= 0.83
    assert 0.87 <= profiles["household_id"].is_not_null().mean() <= 0.93
    members = profiles.unique("customer_id").drop_nulls("household_id").group_by("household_id").len()
    sizes = tables["households"].join(members, on="household_id", how="left").with_columns(
        pl.col("household_size").cast(pl.Int64), pl.col("len").fill_null(0)
    )
    assert sizes.filter(pl.col("household_size") < pl.col("len")).height == 0


def test_duplicate_rows_are_later_corrections(tables: dict[str, pl.DataFrame]) -> None:
    profiles = tables["profiles"].with_row_index("row")
    assert profiles.height == PROFILES + round(PROFILES * 0.005)
    repeated = profiles.filter(pl.col("customer_id").is_duplicated())
    assert repeated["customer_id"].n_unique() == round(PROFILES * 0.005)
    rank_of_tier = {tier: rank for rank, tier in enumerate(LOYALTY_TIERS)}
    tier_rank = pl.col("loyalty_tier").replace_strict(rank_of_tier, return_dtype=pl.Int64)
    first_last = repeated.sort("row").group_by("customer_id").agg(
        first_tier=tier_rank.first(), last_tier=tier_rank.last(), last_email=pl.col("email").last(), n=pl.len()
    )
    assert (first_last["n"] == 2).all()
    assert (first_last["last_tier"] >= first_last["first_tier"]).all()
    # the correction carries a clean e-mail
    assert (first_last["last_email"] == first_last["last_email"].str.strip_chars().str.to_lowercase()).all()
    assert not first_last["last_email"].str.extract(r"@(.+)$").is_in(list(EMAIL_DOMAIN_TYPOS)).any()


def test_cells_needing_quotes_are_quoted_rfc4180(delivery: dict[str, Path], tables: dict[str, pl.DataFrame]) -> None:
    raw_lines = delivery["order_lines"].read_text(encoding="utf-8")
    assert ',"Running socks, 3 pairs",' in raw_lines
    assert ',"Poster ""Skyline"" 50x70",' in raw_lines
    assert 'Poster "Skyline" 50x70' in set(tables["order_lines"]["product_name"])
    assert '"' not in delivery["orders"].read_text(encoding="utf-8")  # nothing there needs quoting
    assert tables["households"]["household_name"].str.contains(", ").any()


def test_small_and_invalid_arguments(tmp_path: Path) -> None:
    tiny = generate_delivery(tmp_path / "tiny", profiles=1, seed=1, date="20250101")
    orders = pl.read_csv(tiny["orders"], infer_schema=False)
    assert set(orders["customer_id"]) == {"C0000001"}
    for bad_date in ("2026-01-15", "2026115", "20261315"):
        with pytest.raises(ValueError, match="YYYYMMDD"):
            generate_delivery(tmp_path / "bad", date=bad_date)
    with pytest.raises(ValueError, match="at least 1"):
        generate_delivery(tmp_path / "bad", profiles=0)


def test_cli_writes_the_delivery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "cli"), "--profiles", "30", "--seed", "7", "--date", "20260201"]) == 0
    assert (tmp_path / "cli" / "profiles_20260201.csv").exists()
    assert "order_lines" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "cli"), "--date", "tomorrow"])


def test_engine_module_does_not_import_dagster() -> None:
    probe = "import sys, cdp_pipeline.demo.generate; sys.exit('dagster' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
