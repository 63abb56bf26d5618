"""Keys as they are compared (identifiers, links, event ids, nested keys) and the 128-bit row
identities sums remember: md5 in DuckDB, stable across versions (the values are stored for years)."""

from __future__ import annotations

import duckdb
import polars as pl

from cdp_pipeline.tables.staged import HASH_HI, HASH_LO, LINE

#: separates the cells of a row identity; a cell never contains it in practice, and a NUL marks an
#: empty cell so "" and NULL differ only through this marker (both are "no value" on read anyway).
_CELL_SEPARATOR = "\x1f"
_EMPTY_CELL = "/"
#: a row's key text (event id, nested key, identity columns) that a sum remembers its contribution by.
_ROW_KEY = "_row_key"


def ident_column(index: int) -> str:
    """Column of the records holding the key's value of identifier ``index``."""
    return f"_ident_{index}"


def _blank_as_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _link_keys(count: int) -> list[str]:
    return [f"_link_{index}" for index in range(count)]


def _key_text(expression: pl.Expr) -> pl.Expr:
    """A key (identifier, link, event id, nested key, sum identity) as it is compared: the text as
    written, without surrounding blanks, in Unicode NFC (an "é" typed as one code point or as "e"
    plus an accent is one key), blank as missing. Keys are never typed: "007" stays "007" whatever
    type a property fed by the same column has, or a customer number would lose its leading zeros
    and every order would miss its customer."""
    text = expression.cast(pl.String).str.strip_chars()
    # ASCII text is already NFC: only the other cells go through the normaliser, which cost
    # ~1 s per 400k cells and runs on every identifier, link, event id and key column.
    ascii_only = text.str.len_bytes() == text.str.len_chars()
    return _blank_as_null(pl.when(ascii_only).then(text).otherwise(text.str.normalize("NFC")))


def _link_values(columns: list[str], keys: list[str]) -> list[pl.Expr]:
    """Link values as they are compared (see ``_key_text``): a padded "O1 " in one file finds "O1"
    in the other; the columns themselves keep their values."""
    return [_key_text(pl.col(column)).alias(key) for column, key in zip(columns, keys, strict=True)]


def row_identities(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``_line`` → the row's 128-bit identity (``_row_hash_hi``, ``_row_hash_lo``: md5 as two UInt64).

    The identity is md5 over the cells of ``columns`` (raw text). Identical rows are told apart by
    their occurrence (the n-th identical row hashes ``text + n``), so a file with the same row
    twice contributes it twice. md5 runs in DuckDB, vectorised; Polars' own ``hash`` is not used
    because it is not stable across Polars versions, and these values are stored for years.
    Only rows whose identity occurs more than once pay for the occurrence numbering."""
    cells = [pl.col(c).cast(pl.String).fill_null(_EMPTY_CELL) for c in columns]
    text = pl.concat_str(cells, separator=_CELL_SEPARATOR) if cells else pl.lit("", dtype=pl.String)
    identities = frame.select(pl.col(LINE), text.alias("identity"))
    hashed = _md5_halves(identities, "identity")
    # Repeats are found on the hash in Polars; only the repeated rows go back to DuckDB to be
    # numbered and hashed again (most files have none).
    # The high half first: no repeat in it is no repeat at all, found without the pairs' table
    # (which, as a struct, cost about as much memory as the texts they were hashed from).
    if not hashed[HASH_HI].is_duplicated().any():
        return hashed
    repeated = pl.struct(HASH_HI, HASH_LO).is_duplicated()
    if not hashed.select(repeated.any()).item():
        return hashed
    again = hashed.filter(repeated).join(identities, on=LINE, how="inner")
    connection = duckdb.connect()
    try:
        connection.register("repeated_rows", again)
        renumbered = connection.sql(
            f"""
            SELECT _line, CAST(h >> 64 AS UBIGINT) AS {HASH_HI}, CAST(h & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT) AS {HASH_LO}
            FROM (
                SELECT _line, md5_number(identity || chr(30) || CAST(occurrence AS VARCHAR)) AS h, occurrence
                FROM (
                    SELECT _line, identity, row_number() OVER (PARTITION BY {HASH_HI}, {HASH_LO} ORDER BY _line) AS occurrence
                    FROM repeated_rows
                )
            )
            WHERE occurrence > 1
            """
        ).pl()
    finally:
        connection.close()
    return hashed.update(renumbered, on=LINE, how="left")


def _md5_halves(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """``_line`` → md5 of ``column`` as two UInt64 halves, in DuckDB (stable across versions).

    A slice of rows at a time: DuckDB's copy of a whole file's texts and its result, on top of the
    frames staging holds, were the orders stage's memory peak (twice, once per sum)."""
    connection = duckdb.connect()
    try:
        halves = []
        for start in range(0, max(frame.height, 1), _MD5_SLICE_ROWS):
            connection.register("row_text", frame.slice(start, _MD5_SLICE_ROWS))
            halves.append(
                connection.sql(
                    f"""
                    SELECT _line, CAST(h >> 64 AS UBIGINT) AS {HASH_HI}, CAST(h & CAST(18446744073709551615 AS UHUGEINT) AS UBIGINT) AS {HASH_LO}
                    FROM (SELECT _line, md5_number({column}) AS h FROM row_text)
                    """
                ).pl()
            )
            connection.unregister("row_text")
        return pl.concat(halves, how="vertical")
    finally:
        connection.close()


#: rows hashed by DuckDB at a time (``_md5_halves``).
_MD5_SLICE_ROWS = 1 << 18


def key_identities(keys: pl.DataFrame) -> pl.DataFrame:
    """``_line`` → the 128-bit md5 of the row's key text (``_row_hash_hi``, ``_row_hash_lo``),
    computed in DuckDB: the values are stored for years, Polars' own hash is not stable."""
    return _md5_halves(keys, _ROW_KEY)


def _last_per(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The last row of each ``key`` value, in the frame's order; a frame whose keys are all
    distinct (the usual delivery) is returned as it is instead of being gathered again."""
    if _all_distinct(frame, key):
        return frame
    return frame.unique(subset=key, keep="last", maintain_order=True)


def _all_distinct(frame: pl.DataFrame, key: list[str]) -> bool:
    """Whether no ``key`` value repeats. Tried first on a 64-bit hash per row (as many distinct
    hashes as rows proves it, without a table of the key texts); only a frame with a repeated
    hash is checked on the values themselves."""
    values = pl.struct(key) if len(key) > 1 else pl.col(key[0])
    if frame.select(values.hash().n_unique()).item() == frame.height:
        return True
    return bool(frame.select(values.n_unique()).item() == frame.height)


def _in_line_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by line; joins that keep the left order leave it sorted already, and a
    sort would still copy every column (a few hundred MB for a 4M-line file)."""
    return frame if frame[LINE].is_sorted() else frame.sort(LINE)
