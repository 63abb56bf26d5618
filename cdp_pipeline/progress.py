"""Progress of long stages (download, decrypt, read, merge, export) for whoever is watching.

The engine reports; it never prints. A command line sets a sink for the length of a command
(``reporting``), and each stage then tells it how far it got: while the stage runs, a ticker
thread reports every few seconds (bytes on disk so far, or only the time spent when the count is
known at the end), and once it ends it reports the total and the time taken. With no sink set (a
run launched by the daemon or the UI) a stage costs nothing. Only counts are reported, never a
row's values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Unit = Literal["bytes", "rows"]


@dataclass(frozen=True)
class Progress:
    stage: str
    #: what the stage works on: a delivery's partition key, an export goal.
    subject: str
    unit: Unit
    #: bytes or rows so far; None while the stage cannot count yet (a file being parsed).
    done: int | None
    seconds: float
    finished: bool

    @property
    def per_second(self) -> float | None:
        if self.done is None or self.seconds <= 0:
            return None
        return self.done / self.seconds


class ProgressSink(Protocol):
    def __call__(self, progress: Progress, /) -> None: ...


@dataclass
class _Reporting:
    sink: ProgressSink
    tick_seconds: float


_current: _Reporting | None = None
_lock = threading.Lock()


@contextmanager
def reporting(sink: ProgressSink, *, tick_seconds: float = 5.0) -> Iterator[None]:
    """Send every stage's progress to ``sink`` until the block ends. Process-wide, not per
    thread: Dagster runs a job's steps and a transport its parallel downloads on other threads."""
    global _current
    with _lock:
        previous, _current = _current, _Reporting(sink, max(tick_seconds, 0.05))
    try:
        yield
    finally:
        with _lock:
            _current = previous


class Meter:
    """What a stage has done so far; the stage sets ``done`` when it knows it."""

    def __init__(self) -> None:
        self.done: int | None = None


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` right now: a download or decryption in progress, whatever
    the transport or gpg, without them having to call back."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # renamed away between listing and stat
    except FileNotFoundError:
        return 0
    return total


@contextmanager
def stage(name: str, subject: str, unit: Unit, *, measure: Callable[[], int] | None = None) -> Iterator[Meter]:
    """Report the stage while it runs (``measure`` gives the count so far, if it can be known
    before the end) and once it ends, with ``meter.done`` as its total. A stage that fails
    reports nothing more: the failure is what the command prints."""
    meter = Meter()
    current = _current
    if current is None:
        yield meter
        return
    started = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(current.tick_seconds):
            done = measure() if measure is not None else meter.done
            current.sink(Progress(name, subject, unit, done, time.monotonic() - started, finished=False))

    ticker = threading.Thread(target=tick, name=f"progress-{name}", daemon=True)
    ticker.start()
    try:
        yield meter
    finally:
        stop.set()
        ticker.join()
    done = meter.done if meter.done is not None else (measure() if measure is not None else None)
    current.sink(Progress(name, subject, unit, done, time.monotonic() - started, finished=True))


def describe(progress: Progress) -> str:
    """One line for a person: the stage, what it works on, the count and its rate."""
    elapsed = f"{progress.seconds:.1f} s"
    if progress.done is None:
        return f"{progress.stage} {progress.subject}: {'done' if progress.finished else 'running'} after {elapsed}"
    rate = progress.per_second
    if progress.unit == "bytes":
        amount = f"{progress.done / 1e6:,.1f} MB"
        speed = f"{rate / 1e6:,.1f} MB/s" if rate is not None else "-"
    else:
        amount = f"{progress.done:,} rows"
        speed = f"{rate:,.0f} rows/s" if rate is not None else "-"
    verb = "done" if progress.finished else "so far"
    return f"{progress.stage} {progress.subject}: {amount} {verb} in {elapsed} ({speed})"
