"""Folders and files that hold customer data are private from the moment they exist.

Creating a folder and narrowing its mode afterwards leaves a window, and a process killed inside
it (or a later chmod that never runs) leaves customer data readable by every local user. Here the
mode is part of the creation itself: every missing level of a work folder is made 0700 by
``os.mkdir``, and a file DuckDB creates is made under a 0077 umask.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_umask_lock = threading.Lock()


def private_directory(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 (existing folders are narrowed to 0700
    only for ``path`` itself: a parent such as CDP_HOME may be shared on purpose)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are 0600 at most (for a library that creates them itself, as DuckDB
    does its database file). The umask is per process, so keep the body short."""
    with _umask_lock:
        previous = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(previous)
