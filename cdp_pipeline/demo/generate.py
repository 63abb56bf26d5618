"""Deterministic demo delivery: households, profiles, orders and order lines as four CSV files.

The quick start imports these files and the benchmark times the pipeline on them, so they must be
(1) byte-identical for the same arguments, (2) referentially sound (every order's customer exists,
every line's order exists, order totals equal their lines exactly) and (3) a little dirty on
purpose, so the demo's processors and merge rules have something to do (see docs/demo-data.md).

Generation is vectorised (numpy ``default_rng`` + Polars, written with ``write_csv``): one million
profiles, 1.5 M orders and 4 M lines take seconds, not minutes. Determinism holds for a given
numpy version: numpy does not promise identical ``Generator`` streams across releases.

Engine code: this module must not import dagster.

CLI: ``python -m cdp_pipeline.demo.generate --out DIR --profiles N --seed S --date YYYYMMDD``
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

# ---------------------------------------------------------------- embedded vocabularies
# Small fixed lists keep the output independent of any locale or faker package. A few
# non-ASCII names make sure encodings and e-mail slugs are exercised.

FIRST_NAMES: tuple[str, ...] = (
    "Emma", "Liam", "Sophie", "Noah", "Julia", "Lucas", "Anna", "Daan", "Mila", "Finn",
    "Lotte", "Max", "Sara", "Jan", "Eva", "Thomas", "Laura", "Pieter", "Marie", "David",
    "Zoë", "Łukasz", "José", "Chloé", "Søren", "Anaïs", "Jürgen", "Inés", "François", "Małgorzata",
    "Björn", "Agnieszka", "Mateo", "Lucía", "Ömer", "Niamh", "Sean", "Giulia", "Marco", "Ingrid",
)  # fmt: skip

LAST_NAMES: tuple[str, ...] = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Peeters", "Janssens", "Müller", "Schmidt", "Schneider",
    "Fischer", "Weber", "Martin", "Bernard", "Dubois", "García", "Fernández", "López", "Martínez", "Nowak",
    "Kowalski", "Wiśniewski", "Wójcik", "Rossi", "Russo", "Ferrari", "Hansen", "Nielsen", "Murphy", "O'Brien",
    "Kelly", "Silva", "Santos", "Gruber", "Huber", "Meier", "Brown", "Smith", "Yılmaz", "Öztürk",
)  # fmt: skip

#: (city, ISO 3166-1 alpha-2 country); city and country always travel together.
CITIES: tuple[tuple[str, str], ...] = (
    ("Amsterdam", "NL"), ("Rotterdam", "NL"), ("Utrecht", "NL"), ("Antwerpen", "BE"), ("Gent", "BE"),
    ("Berlin", "DE"), ("München", "DE"), ("Köln", "DE"), ("Hamburg", "DE"), ("Paris", "FR"),
    ("Lyon", "FR"), ("Madrid", "ES"), ("Málaga", "ES"), ("Kraków", "PL"), ("Łódź", "PL"),
    ("Warszawa", "PL"), ("Zürich", "CH"), ("Wien", "AT"), ("Milano", "IT"), ("København", "DK"),
    ("Dublin", "IE"), ("Lisboa", "PT"),
)  # fmt: skip

LOYALTY_TIERS: tuple[str, ...] = ("bronze", "silver", "gold", "platinum")
_LOYALTY_WEIGHTS = (50, 30, 15, 5)

INTERESTS: tuple[str, ...] = ("running", "cooking", "travel", "books", "gaming", "music")
#: probability of a profile having 0, 1, 2 or 3 interests.
_INTEREST_COUNT_WEIGHTS = (15, 35, 30, 20)

#: clean e-mail domains and how common they are.
EMAIL_DOMAINS: tuple[str, ...] = (
    "gmail.com", "hotmail.com", "outlook.com", "yahoo.com", "gmx.de", "web.de", "proton.me",
)  # fmt: skip
_EMAIL_DOMAIN_WEIGHTS = (35, 15, 15, 10, 10, 8, 7)

#: the misspelt domains written into ≈1 % of the e-mails, with what the normalize_email processor
#: should turn them into. Exposed so the processor's tests can check it fixes every one of them.
EMAIL_DOMAIN_TYPOS: dict[str, str] = {
    "gmial.com": "gmail.com",
    "gmal.com": "gmail.com",
    "hotmial.com": "hotmail.com",
    "hotmal.com": "hotmail.com",
    "outlok.com": "outlook.com",
    "yaho.com": "yahoo.com",
}

CHANNELS: tuple[str, ...] = ("web", "store", "app")
_CHANNEL_WEIGHTS = (55, 25, 20)

#: (product name, list price in cents). Ids are P0001... in this order. A comma and a pair of
#: double quotes in two names make the writer quote those cells (RFC 4180), so readers are tested.
PRODUCTS: tuple[tuple[str, int], ...] = (
    ("Trail running shoes", 12995), ("Road running shoes", 10995), ("Running socks, 3 pairs", 1495),
    ("Running jacket", 7995), ("Sports watch", 19900), ("Water bottle 750 ml", 1299), ("Head torch", 3495),
    ("Foam roller", 2495), ("Chef's knife 20 cm", 8900), ("Cast-iron skillet 28 cm", 5495),
    ("Dutch oven 5 L", 9995), ("Cutting board oak", 3995), ("Spice set 12 jars", 2795),
    ("Espresso beans 1 kg", 2299), ("Pasta maker", 6995), ("Apron linen", 2495), ("Cookbook: Weeknight Dinners", 2999),
    ("Carry-on backpack 40 L", 8995), ("Travel adapter", 1995), ("Packing cubes set", 2995),
    ("Neck pillow", 1795), ("Luggage scale", 1299), ("Passport wallet", 2495), ("Travel guide: Lisbon", 1995),
    ("Noise-cancelling headphones", 24900), ("Paperback: The Long Harbour", 1299), ("Hardcover: Maps of Home", 2499),
    ("E-reader", 12999), ("Reading lamp", 3495), ("Bookends walnut", 2995), ("Book light", 1495),
    ("Game controller", 5999), ("Gaming headset", 7999), ("Mechanical keyboard", 11999), ("Mouse pad XL", 1999),
    ("Board game: Harbour Lights", 3999), ("Puzzle 1000 pieces", 1899), ("Gift card 25", 2500),
    ("Bluetooth speaker", 8995), ("Vinyl record: Blue Hour", 2799), ('Poster "Skyline" 50x70', 1995),
    ("Guitar strings", 1099), ("Ukulele", 5995), ("Turntable", 24995), ("Concert ticket voucher", 5000),
    ("Tote bag", 995), ("Notebook A5 dotted", 1295), ("Fountain pen", 3995), ("Scented candle", 1995),
    ("Gift wrapping", 395),
)  # fmt: skip

# ---------------------------------------------------------------- shape of the delivery

ORDERS_PER_PROFILE = 1.5
LINES_PER_PROFILE = 4
HOUSEHOLD_SHARE = 0.90  # profiles with a household_id
CONSENT_SHARE = 0.80  # profiles with marketing_consent = "marketing"
DUPLICATE_SHARE = 0.005  # extra rows repeating an earlier customer_id (a later correction)
EMAIL_TYPO_SHARE = 0.01
EMAIL_UPPERCASE_SHARE = 0.01
EMAIL_SPACES_SHARE = 0.01

HEADERS: dict[str, tuple[str, ...]] = {
    "households": ("household_id", "household_name", "city", "household_size"),
    "profiles": (
        "customer_id", "email", "first_name", "last_name", "city", "country", "birth_date",
        "signup_date", "loyalty_tier", "interests", "marketing_consent", "household_id",
    ),  # fmt: skip
    "orders": ("order_id", "customer_id", "order_date", "total", "currency", "channel"),
    "order_lines": ("order_id", "line_number", "product_id", "product_name", "quantity", "unit_price"),
}

_EPOCH = dt.date(1970, 1, 1)
_SECONDS_PER_DAY = 86_400


# ---------------------------------------------------------------- small vectorised helpers


def _pick(rng: np.random.Generator, weights: tuple[float, ...], size: int) -> np.ndarray:
    """Indices into ``weights`` drawn with those relative weights (inverse CDF on one uniform)."""
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.searchsorted(cumulative / cumulative[-1], rng.random(size), side="right").astype(np.uint32)


def _take(values: tuple[str, ...] | list[str], indices: np.ndarray) -> pl.Series:
    """The strings ``values[i]`` for every i, as a Polars column (a gather, no Python loop per row)."""
    return pl.Series(values, dtype=pl.String).gather(pl.Series(indices, dtype=pl.UInt32))


def _id_width(largest: int, usual: int) -> int:
    """Digits of an id: ``usual`` (C0000001 has 7), more only for deliveries too big for it."""
    return max(usual, len(str(largest)))


def _padded_ids(prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    """``prefix`` + zero-padded number (C0000001): the leading zeros are part of the id, so readers
    must keep ids as text."""
    return prefix + pl.Series(numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)


def _money(cents: pl.Expr) -> pl.Expr:
    """Integer cents as ``"123.45"``: built from integers, so no float ever rounds a total."""
    return cents.floordiv(100).cast(pl.String) + "." + cents.mod(100).cast(pl.String).str.zfill(2)


def _slug(name: str) -> str:
    """ASCII e-mail local part of a name: Łukasz → lukasz, de Vries → devries, O'Brien → obrien."""
    # NFKD splits ë into e + combining diaeresis; these letters have no decomposition at all.
    special = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "ı": "i"})
    decomposed = unicodedata.normalize("NFKD", name.translate(special))
    return "".join(ch for ch in decomposed if ch.isascii() and ch.isalnum()).lower()


def _interest_subsets() -> tuple[list[str], np.ndarray, np.ndarray]:
    """All cells the interests column can hold ("" and 1–3 items joined by "|"), grouped by size.

    Returns the cells, the index of the first cell of each size and the number of cells per size,
    so a row picks a size and then a cell of that size with two vectorised draws.
    """
    cells: list[str] = []
    starts: list[int] = []
    counts: list[int] = []
    for size in range(len(_INTEREST_COUNT_WEIGHTS)):
        combos = ["|".join(combo) for combo in itertools.combinations(INTERESTS, size)]
        starts.append(len(cells))
        counts.append(len(combos))
        cells.extend(combos)
    return cells, np.asarray(starts), np.asarray(counts)


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    """UTF-8 without BOM, LF, quotes only where needed; written beside and renamed into place, so a
    folder watcher matching ``profiles_*.csv`` never picks up a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    frame.write_csv(
        partial,
        include_header=True,
        include_bom=False,
        line_terminator="\n",
        quote_style="necessary",
        null_value="",
        date_format="%Y-%m-%d",
        datetime_format="%Y-%m-%d %H:%M:%S",
    )
    os.replace(partial, path)


# ---------------------------------------------------------------- the four tables


def _parse_delivery_date(date: str) -> int:
    """The delivery date ``YYYYMMDD`` as days since 1970-01-01; nothing is dated on or after it."""
    try:
        # strptime alone would take "2026115" too; the file names need the full eight digits.
        if len(date) != 8 or not date.isdigit():
            raise ValueError(date)
        parsed = dt.datetime.strptime(date, "%Y%m%d").date()
    except ValueError as exc:
        raise ValueError(f"date must be YYYYMMDD, got {date!r}") from exc
    return (parsed - _EPOCH).days


def _household_attributes(rng: np.random.Generator, household_count: int) -> dict[str, np.ndarray]:
    """What members inherit from their household (surname, city), drawn before the profiles."""
    return {
        "surname": rng.integers(0, len(LAST_NAMES), household_count),
        # A fifth of the households carry two surnames ("Jansen, de Vries family").
        "second_surname": np.where(
            rng.random(household_count) < 0.2, rng.integers(0, len(LAST_NAMES), household_count), -1
        ),
        "city": rng.integers(0, len(CITIES), household_count),
    }


def _households_frame(
    rng: np.random.Generator, household: dict[str, np.ndarray], members_per_household: np.ndarray
) -> pl.DataFrame:
    """The households file; ``members_per_household`` counts the customers pointing at each one."""
    household_count = len(household["city"])
    surname = _take(LAST_NAMES, household["surname"])
    has_two = household["second_surname"] >= 0
    second = _take(LAST_NAMES, np.where(has_two, household["second_surname"], 0))
    # The declared size counts people, not customers: some members never signed up themselves.
    household_size = np.maximum(members_per_household + rng.integers(0, 3, household_count), 1)
    return pl.DataFrame(
        {
            "household_id": _padded_ids("HH", np.arange(1, household_count + 1), _id_width(household_count, 6)),
            # The comma in "Jansen, de Vries family" makes the writer quote those cells.
            "household_name": pl.select(
                pl.when(pl.lit(pl.Series(has_two))).then(surname + ", " + second).otherwise(surname) + " family"
            ).to_series(),
            "city": _take([city for city, _ in CITIES], household["city"]),
            "household_size": pl.Series(household_size, dtype=pl.Int64),
        }
    )


def _profiles(
    rng: np.random.Generator, profile_count: int, household: dict[str, np.ndarray], delivery_day: int
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The profiles file (with its duplicate rows), the household index of every customer (-1: none)
    and every customer's signup day (orders are placed after it)."""
    household_count = len(household["city"])
    customer_number = np.arange(1, profile_count + 1)

    in_household = rng.random(profile_count) < HOUSEHOLD_SHARE
    household_of = np.where(in_household, rng.integers(0, household_count, profile_count), -1)
    safe_household = np.maximum(household_of, 0)  # a valid index for the gathers below; masked anyway

    first_name = rng.integers(0, len(FIRST_NAMES), profile_count)
    # Most members share their household's surname and all live in its city.
    shares_surname = in_household & (rng.random(profile_count) < 0.75)
    last_name = np.where(
        shares_surname, household["surname"][safe_household], rng.integers(0, len(LAST_NAMES), profile_count)
    )
    city = np.where(in_household, household["city"][safe_household], rng.integers(0, len(CITIES), profile_count))

    # Ages 18–90 around 42; customers sign up in the last 11 years but never before turning 18.
    age_days = (np.clip(rng.normal(42.0, 14.0, profile_count), 18.1, 90.0) * 365.25).astype(np.int64)
    birth_day = delivery_day - age_days
    # 18 × 366 days is on or after the 18th birthday whatever the leap years; ages start at 18.1
    # years (6611 days), so every customer has at least three weeks in which to sign up.
    signup_start = np.maximum(delivery_day - 11 * 365, birth_day + 18 * 366)
    signup_day = signup_start + (rng.random(profile_count) * (delivery_day - signup_start)).astype(np.int64)

    loyalty_tier = _pick(rng, _LOYALTY_WEIGHTS, profile_count)
    interest_cells, interest_starts, interest_counts = _interest_subsets()
    interest_size = _pick(rng, _INTEREST_COUNT_WEIGHTS, profile_count)
    interest_cell = interest_starts[interest_size] + (
        rng.random(profile_count) * interest_counts[interest_size]
    ).astype(np.int64)
    has_consent = rng.random(profile_count) < CONSENT_SHARE

    # E-mail: first.last17, firstlast17 or f.last17 at a common domain. The customer number makes
    # every address unique, so e-mail can serve as an identifier in the demo.
    email_format = rng.integers(0, 3, profile_count)
    # One uniform decides the dirt so the kinds never overlap: typo | upper case | spaces | clean.
    dirt = rng.random(profile_count)
    typo_below = EMAIL_TYPO_SHARE
    upper_below = typo_below + EMAIL_UPPERCASE_SHARE
    spaces_below = upper_below + EMAIL_SPACES_SHARE
    typo_domain = rng.integers(0, len(EMAIL_DOMAIN_TYPOS), profile_count)
    # A misspelt address is a misspelling of the customer's real domain, so fixing the typo gives
    # back exactly the address of the clean correction row.
    domain_behind_typo = np.asarray([EMAIL_DOMAINS.index(fixed) for fixed in EMAIL_DOMAIN_TYPOS.values()])
    email_domain = np.where(
        dirt < typo_below, domain_behind_typo[typo_domain], _pick(rng, _EMAIL_DOMAIN_WEIGHTS, profile_count)
    )

    first_slug = _take([_slug(name) for name in FIRST_NAMES], first_name)
    last_slug = _take([_slug(name) for name in LAST_NAMES], last_name)
    number = pl.Series(customer_number, dtype=pl.Int64).cast(pl.String)
    columns = pl.DataFrame(
        {
            "customer_id": _padded_ids("C", customer_number, _id_width(profile_count, 7)),
            "first_name": _take(FIRST_NAMES, first_name),
            "last_name": _take(LAST_NAMES, last_name),
            "city": _take([name for name, _ in CITIES], city),
            "country": _take([country for _, country in CITIES], city),
            "birth_date": pl.Series(birth_day.astype(np.int32)).cast(pl.Date),
            "signup_date": pl.Series(signup_day.astype(np.int32)).cast(pl.Date),
            "_tier": pl.Series(loyalty_tier, dtype=pl.UInt32),
            "interests": _take(interest_cells, interest_cell),
            "_consent": has_consent,
            "household_id": _padded_ids("HH", safe_household + 1, _id_width(household_count, 6)),
            "_in_household": in_household,
            "_first": first_slug,
            "_last": last_slug,
            "_number": number,
            "_format": email_format,
            "_domain": _take(EMAIL_DOMAINS, email_domain),
            "_typo": _take(list(EMAIL_DOMAIN_TYPOS), typo_domain),
            "_dirt": dirt,
            # Sort key: original row i sits at 2i, its correction at an odd key further down.
            "_order": pl.Series(2 * np.arange(profile_count), dtype=pl.Int64),
        }
    )
    local_part = (
        pl.when(pl.col("_format") == 0)
        .then(pl.col("_first") + "." + pl.col("_last"))
        .when(pl.col("_format") == 1)
        .then(pl.col("_first") + pl.col("_last"))
        .otherwise(pl.col("_first").str.slice(0, 1) + "." + pl.col("_last"))
    ) + pl.col("_number")
    clean_email = local_part + "@" + pl.col("_domain")
    dirty_email = (
        pl.when(pl.col("_dirt") < typo_below)
        .then(local_part + "@" + pl.col("_typo"))
        .when(pl.col("_dirt") < upper_below)
        .then(clean_email.str.to_uppercase())
        .when(pl.col("_dirt") < spaces_below)
        .then(" " + clean_email + " ")
        .otherwise(clean_email)
    )
    columns = columns.with_columns(
        _clean_email=clean_email,
        email=dirty_email,
        # Empty cells, not a "no" value: the import reads consent as "holds the objective name".
        marketing_consent=pl.when(pl.col("_consent")).then(pl.lit("marketing")),
        # No interests is an empty cell (null); an empty *string* would be written as "".
        interests=pl.when(pl.col("interests") != "").then(pl.col("interests")),
        household_id=pl.when(pl.col("_in_household")).then(pl.col("household_id")),
    )

    # ≈0.5 % corrections: a later row with the same customer_id, the e-mail cleaned and the tier
    # raised one step. The import documents "last row wins", so the store must end up with these.
    duplicate_count = round(profile_count * DUPLICATE_SHARE)
    corrected_rows = np.sort(rng.choice(profile_count, duplicate_count, replace=False))
    corrected_at = np.minimum(corrected_rows + rng.integers(1, 1001, duplicate_count), profile_count - 1)
    corrections = columns[corrected_rows].with_columns(
        email=pl.col("_clean_email"),
        _tier=pl.min_horizontal(pl.col("_tier") + 1, pl.lit(len(LOYALTY_TIERS) - 1, dtype=pl.UInt32)),
        _order=pl.Series(2 * corrected_at + 1, dtype=pl.Int64),
    )
    profiles_frame = (
        pl.concat([columns, corrections])
        # Two corrections can land on the same key; maintain_order keeps their order fixed.
        .sort("_order", maintain_order=True)
        .with_columns(loyalty_tier=pl.lit(pl.Series(LOYALTY_TIERS, dtype=pl.String)).gather(pl.col("_tier")))
        .select(HEADERS["profiles"])
    )
    return profiles_frame, household_of, signup_day


def _orders_and_lines(
    rng: np.random.Generator, profile_count: int, signup_day: np.ndarray, delivery_day: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    order_count = max(1, round(profile_count * ORDERS_PER_PROFILE))
    line_count = max(order_count, profile_count * LINES_PER_PROFILE)

    # Skewed activity: a gamma weight per customer gives a few heavy buyers and many with no order.
    activity = np.cumsum(rng.gamma(0.6, 1.0, profile_count))
    customer = np.minimum(
        np.searchsorted(activity, rng.random(order_count) * activity[-1], side="right"), profile_count - 1
    )
    # Between the customer's signup and the day before the delivery, at 07:00–23:00.
    days_as_customer = delivery_day - signup_day[customer]
    order_day = signup_day[customer] + (rng.random(order_count) * days_as_customer).astype(np.int64)
    order_second = order_day * _SECONDS_PER_DAY + rng.integers(7 * 3600, 23 * 3600, order_count)
    channel = _pick(rng, _CHANNEL_WEIGHTS, order_count)
    # Order ids rise with time, as a shop's order numbers do.
    chronological = np.argsort(order_second, kind="stable")
    customer, order_second, channel = customer[chronological], order_second[chronological], channel[chronological]

    # Every order gets one line; the remaining lines land on random orders.
    extra_line_order = rng.integers(0, order_count, line_count - order_count)
    lines_per_order = 1 + np.bincount(extra_line_order, minlength=order_count)
    first_line = np.cumsum(lines_per_order) - lines_per_order
    order_of_line = np.repeat(np.arange(order_count), lines_per_order)
    line_number = np.arange(line_count) - np.repeat(first_line, lines_per_order) + 1

    product_weights = tuple(1.0 / (rank + 1) ** 0.7 for rank in range(len(PRODUCTS)))
    product = _pick(rng, product_weights, line_count)
    quantity = 1 + _pick(rng, (70, 18, 7, 3, 2), line_count).astype(np.int64)
    list_cents = np.asarray([cents for _, cents in PRODUCTS], dtype=np.int64)[product]
    # 15 % of the lines were bought at 20 % off, rounded half up to the cent.
    on_sale = rng.random(line_count) < 0.15
    unit_cents = np.where(on_sale, (list_cents * 80 + 50) // 100, list_cents)
    # Totals are sums of integer cents, so total == Σ quantity × unit_price holds exactly.
    order_cents = np.add.reduceat(quantity * unit_cents, first_line)

    order_ids = _padded_ids("O", np.arange(1, order_count + 1), _id_width(order_count, 8))
    orders = pl.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": _padded_ids("C", customer + 1, _id_width(profile_count, 7)),
            "order_date": pl.from_epoch(pl.Series(order_second, dtype=pl.Int64), time_unit="s"),
            "total": pl.select(_money(pl.lit(pl.Series(order_cents, dtype=pl.Int64)))).to_series(),
            "currency": pl.repeat("EUR", order_count, dtype=pl.String, eager=True),
            "channel": _take(CHANNELS, channel),
        }
    )
    product_ids = [f"P{number:04d}" for number in range(1, len(PRODUCTS) + 1)]
    lines = pl.DataFrame(
        {
            "order_id": order_ids.gather(pl.Series(order_of_line, dtype=pl.UInt32)),
            "line_number": pl.Series(line_number, dtype=pl.Int64),
            "product_id": _take(product_ids, product),
            "product_name": _take([name for name, _ in PRODUCTS], product),
            "quantity": pl.Series(quantity, dtype=pl.Int64),
            "unit_price": pl.select(_money(pl.lit(pl.Series(unit_cents, dtype=pl.Int64)))).to_series(),
        }
    )
    return orders, lines


def generate_delivery(
    out_dir: Path, profiles: int = 3000, seed: int = 42, date: str = "20260115"
) -> dict[str, Path]:
    """Write ``households_<date>.csv``, ``profiles_<date>.csv``, ``orders_<date>.csv`` and
    ``order_lines_<date>.csv`` into ``out_dir`` and return their paths by table name.

    ``profiles`` is the number of distinct customers; the profiles file holds ≈0.5 % more rows
    (later corrections of earlier rows). Same arguments (and numpy version) → byte-identical files.
    """
    if profiles < 1:
        raise ValueError(f"profiles must be at least 1, got {profiles}")
    delivery_day = _parse_delivery_date(date)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # One child stream per table: changing how one table is drawn leaves the others' values alone.
    household_rng, profile_rng, order_rng = np.random.default_rng(seed).spawn(3)
    household_count = max(1, profiles // 3)
    household = _household_attributes(household_rng, household_count)
    profiles_frame, household_of, signup_day = _profiles(profile_rng, profiles, household, delivery_day)
    members_per_household = np.bincount(household_of[household_of >= 0], minlength=household_count)
    households_frame = _households_frame(household_rng, household, members_per_household)
    orders_frame, lines_frame = _orders_and_lines(order_rng, profiles, signup_day, delivery_day)

    paths = {name: out_dir / f"{name}_{date}.csv" for name in HEADERS}
    # Children before parents: a watcher that starts on the profiles (or households) file finds
    # the files linked to it already complete.
    _write_csv(lines_frame, paths["order_lines"])
    _write_csv(orders_frame, paths["orders"])
    _write_csv(households_frame, paths["households"])
    _write_csv(profiles_frame, paths["profiles"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdp_pipeline.demo.generate",
        description="Write a deterministic demo delivery: households, profiles, orders and order lines as CSV.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write the four files into (created if missing)"
    )
    parser.add_argument("--profiles", type=int, default=3000, help="distinct customers (default 3000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--date", default="20260115", help="delivery date YYYYMMDD, used in the file names (default 20260115)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        paths = generate_delivery(args.out, profiles=args.profiles, seed=args.seed, date=args.date)
    except ValueError as exc:
        parser.error(str(exc))
    elapsed = time.perf_counter() - started
    for name, path in paths.items():
        print(f"{name:12} {path}  ({path.stat().st_size:,} bytes)")
    print(f"generated {args.profiles:,} profiles in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
