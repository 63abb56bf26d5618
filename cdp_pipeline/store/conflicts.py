"""Transaction conflicts on the store: retried a bounded number of times, then named.

Within one process DuckDB runs transactions optimistically: when two connections change the same
row, the second one's statement fails with "Conflict on update/deletion" and its transaction is
aborted. DuckDB's advice is to run the transaction again. The pipeline's own writers are
serialised (one pool slot), so a conflict means something else wrote the same rows at the same
moment (an analyst's session in a notebook sharing the process, a hook): waiting a little and
running the whole transaction again is safe, because the failed attempt was rolled back entirely.

A DuckLake store refuses a commit the same way when another writer (another host) committed a
conflicting change first, and the answer is the same: run the whole transaction again on the
newer state. One loop serves both; only the number of attempts differs (a lake with several
writers is given ``store.ducklake.write_attempts``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

from cdp_pipeline.errors import TransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: attempts in all (the first and the retries) and the wait before the first retry, doubled each
#: time with jitter up to MAX_DELAY_SECONDS: about 3 s in all for the default, long enough for a
#: short conflicting transaction to end; a lake's many attempts wait at most 2 s each.
ATTEMPTS = 5
FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 2.0


class TransactionConflictError(TransientError):
    """The store write kept conflicting with another transaction; nothing of it was written."""


def is_conflict(exc: BaseException) -> bool:
    """A transaction refused because another one changed the same rows first: DuckDB's "Conflict on
    update/deletion" within a process, or DuckLake's refused commit between writers."""
    if not isinstance(exc, duckdb.Error):
        return False
    message = str(exc).lower()
    return "conflict" in message and (isinstance(exc, duckdb.TransactionException) or "transaction" in message)


def retry_on_conflict(work: Callable[[], T], *, what: str, attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY_SECONDS) -> T:
    """Run ``work`` (one whole transaction that rolls itself back when it fails and reads what it
    writes from the store again) until it does not conflict, at most ``attempts`` times; then fail
    naming ``what``, the cause and the fix."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except duckdb.Error as exc:
            if not is_conflict(exc):
                raise
            cause = str(exc).splitlines()[0]
            if attempt == attempts:
                raise TransactionConflictError(
                    f"{what}: the store write conflicted with another transaction {attempts} times in a row (DuckDB: {cause}); "
                    "it was rolled back each time, so nothing of it was written. On a DuckLake store other writers committed "
                    "first: raise store.ducklake.write_attempts or run fewer writers at once. On a DuckDB file another session "
                    "in the same process writes the same rows: end it (analysts: query the published copy). Then re-execute the run"
                ) from exc
            # Jitter, so writers that collided do not collide again in lockstep.
            wait = delay + random.uniform(0, delay)  # noqa: S311 - jitter, not security
            logger.warning("%s: transaction conflict (%s); attempt %d of %d in %.1f s", what, cause, attempt + 1, attempts, wait)
            time.sleep(wait)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
    raise AssertionError("unreachable: the last attempt returns or raises")
