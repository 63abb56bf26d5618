"""A user-defined processor as a goal would reference it:
``function: cdp_pipeline_tests.tables.custom_processor_example:add_score``."""

from __future__ import annotations

import polars as pl


def add_score(lf: pl.LazyFrame, *, column: str = "score", points: int = 10) -> pl.LazyFrame:
    """Add a constant integer score column: the smallest useful custom processor."""
    return lf.with_columns(pl.lit(points, dtype=pl.Int64).alias(column))


def not_a_frame(lf: pl.LazyFrame) -> pl.DataFrame:
    """Returns the wrong type on purpose, for the error test."""
    return lf.collect()


def failing(lf: pl.LazyFrame) -> pl.LazyFrame:
    raise RuntimeError("boom")
