"""The permission level a file writes into ``permission_level``: one of BlueConic's levels, read
in any usual spelling; any other value is not imported (listed with its line), because a level
nobody defined would pass a consent check that compares words."""

from __future__ import annotations

import polars as pl

from cdp_pipeline.config.catalog import PERMISSION_LEVEL, PERMISSION_LEVELS
from cdp_pipeline.tables.staged import LINE


def spelt_level(value: pl.Expr) -> pl.Expr:
    """``Do not track`` / ``do-not-track`` / `` PERSONAL `` → ``do_not_track`` / ``personal``."""
    return value.cast(pl.String).str.strip_chars().str.to_lowercase().str.replace_all(r"[\s\-]+", "_")


def checked_levels(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """``rows`` with its ``permission_level`` column in the canonical spelling and unknown levels
    emptied, and the lines whose value was not a level (empty cells are not a problem)."""
    if PERMISSION_LEVEL not in rows.columns:
        return rows, pl.Series(LINE, [], dtype=pl.Int64)
    level = spelt_level(pl.col(PERMISSION_LEVEL))
    present = level.is_not_null() & (level != "")
    known = level.is_in(list(PERMISSION_LEVELS))
    bad = rows.filter(present & ~known)[LINE]
    return rows.with_columns(pl.when(present & known).then(level).otherwise(None).alias(PERMISSION_LEVEL)), bad
