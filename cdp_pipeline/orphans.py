"""Folders owned by one process, and their removal once that process is gone.

A run killed with SIGKILL runs no ``finally``: its throw-away GnuPG home (with the private keys)
and its export work folder (plaintext CSVs, their ciphertext) stay on disk. Each such folder
carries an owner mark (process id and start time), and the next run that makes a folder of the
same kind removes the ones whose owner no longer runs. The start time guards against a reused
process id: a new process with the old number is not the owner.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

OWNER_FILE = ".owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None when it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # /proc unreadable: the process exists, its start time is unknown
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]


def _runs(pid: int, start_time: str) -> bool:
    if Path("/proc").is_dir() and Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (now in ("", start_time) or not start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_owner(folder: Path) -> None:
    """Record this process as the folder's owner."""
    pid = os.getpid()
    (folder / OWNER_FILE).write_text(f"{pid} {_start_time(pid) or ''}\n")


def owner_gone(folder: Path) -> bool:
    """True when the folder's owner mark names a process that no longer runs. A folder without a
    readable mark is never called orphaned: it may be another tool's, or being made right now."""
    try:
        pid_text, _, start_time = (folder / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return not _runs(pid, start_time)


def remove_orphans(parent: Path, prefix: str, before_remove: Callable[[Path], None] | None = None) -> list[Path]:
    """Remove the folders ``parent/<prefix>*`` whose owner is gone; returns those removed.
    ``before_remove`` runs first on each (e.g. to stop a gpg-agent still serving it)."""
    removed: list[Path] = []
    try:
        candidates = [path for path in parent.iterdir() if path.name.startswith(prefix) and path.is_dir()]
    except OSError:
        return removed
    for folder in sorted(candidates):
        if not owner_gone(folder):
            continue
        if before_remove is not None:
            before_remove(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed
