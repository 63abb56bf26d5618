"""Peak resident memory of a whole process tree, sampled from /proc (a bench helper, Linux only).

Why sampling and not ``ru_maxrss``: the kernel's high-water mark is per process, a forked child
inherits its parent's mark (so ``RUSAGE_CHILDREN`` over-counts gpg and Dagster's subprocesses), and
resetting it per stage (``clear_refs``) hides the process's true peak from ``time -v``. Summing the
RSS of the root and all its descendants every few tens of milliseconds sees the tree as it is, at
the price of missing a spike shorter than the interval.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1_000_000


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            found.extend(int(child) for child in text.split())
    except OSError:
        pass
    return found


def tree_rss_bytes(root: int) -> int:
    """RSS of ``root`` and every descendant now (processes that end meanwhile count as 0)."""
    total = 0
    pending = [root]
    seen: set[int] = set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        pending.extend(_children(pid))
    return total


class TreeSampler:
    """Samples the tree under ``root`` in a thread; ``label`` names what is running now, and the
    peak is kept per label (a stage) and overall, with the load average when the label started."""

    def __init__(self, root: int | None = None, interval: float = 0.05):
        self.root = root if root is not None else os.getpid()
        self.interval = interval
        self.label = "-"
        self.peaks: dict[str, float] = {}
        self.loadavg: dict[str, float] = {}
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def set_label(self, label: str) -> None:
        self.sample()  # the previous stage's last state belongs to it
        self.label = label
        self.loadavg.setdefault(label, os.getloadavg()[0])
        self.sample()

    def sample(self) -> None:
        value = tree_rss_bytes(self.root) / MB
        if value > self.peaks.get(self.label, 0.0):
            self.peaks[self.label] = value
        self.peak = max(self.peak, value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_sampled(command: list[str], *, interval: float = 0.05, **popen_kwargs) -> tuple[int, float, float]:
    """Run ``command`` to its end; returns (exit code, wall seconds, peak RSS of its tree in MB)."""
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(command, **popen_kwargs)
    peak = 0.0
    while True:
        peak = max(peak, tree_rss_bytes(process.pid) / MB)
        try:
            code = process.wait(timeout=interval)  # returns at once when it ends: the wall time stays exact
        except subprocess.TimeoutExpired:
            continue
        return code, time.perf_counter() - started, peak
