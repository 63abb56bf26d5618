"""How much memory DuckDB may take in a connection that merges or exports, and where it spills.

DuckDB's own default is 80 % of the host's memory, which a 1M-profile orders merge nearly used
up to the last gigabyte it could hold (its joins, windows and temporary tables grow with the
delivery). With a limit DuckDB writes what does not fit to its spill folder instead, so a run's
memory stays flat as deliveries grow. The spill files hold customer rows: they go to a private
folder of this connection under the work directory (0700) and are removed when it closes; a
killed run's folder is removed by the next writer that opens."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from cdp_pipeline.private_files import private_directory
from cdp_pipeline.scratch import scratch_root
from cdp_pipeline.store.schema import literal

if TYPE_CHECKING:
    from cdp_pipeline.config.loading import ProjectConfig

#: ``memory_limit: auto``: at most this much, and at most a quarter of the host's (or the
#: container's) memory. The process needs a few hundred MB beyond DuckDB's limit (Python, the
#: records frame, what DuckDB allocates outside its buffers), growing slowly with the delivery;
#: with 512 MB an orders merge measured 0.49 / 0.77 / 1.00 GB for the whole process at 100k /
#: 250k / 500k profiles, where 1 GB gave 0.53 / 0.92 / 1.29 GB (docs/benchmarks.md).
AUTO_LIMIT_BYTES = 512_000_000
AUTO = "auto"
#: sizes as DuckDB writes them (``SET memory_limit``).
SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)
#: not a possible connection name (no "-"), so no connection's work folder sweep takes it for its own.
SPILL_FOLDER = "duckdb-spill"


@dataclass(frozen=True)
class WriterMemory:
    #: a DuckDB size ("1GB"), ``auto``, or None for DuckDB's own default.
    limit: str | None
    #: where each writer connection gets its private spill folder.
    spill_root: Path


def writer_memory(project: ProjectConfig) -> WriterMemory:
    """The project's ``store.memory_limit``, spilling under its work directory, or under the
    process's scratch folder when the work folders are on S3 (nothing of a delivery stays in
    ``CDP_HOME/work`` then)."""
    root = scratch_root(project) if project.work_storage.type == "s3" else project.work_dir
    return WriterMemory(limit=project.store.memory_limit, spill_root=root / SPILL_FOLDER)


def host_memory_bytes() -> int:
    """The host's memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


def resolved_limit(limit: str | None) -> str | None:
    """The value for ``SET memory_limit``: ``auto`` becomes a size, None stays DuckDB's default."""
    if limit is None or limit.strip().lower() != AUTO:
        return limit
    return f"{min(AUTO_LIMIT_BYTES, host_memory_bytes() // 4) // 1_000_000}MB"


def _sweep_dead(spill_root: Path) -> None:
    """Spill folders of writers that were killed (their process is gone): DuckDB removes its files
    only when it closes normally."""
    for folder in spill_root.iterdir():
        owner = folder.name.split("-", 1)[0]
        if folder.is_dir() and owner.isdigit() and not _is_running(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def limit_memory(conn: duckdb.DuckDBPyConnection, memory: WriterMemory | None, store_file: Path | None) -> Path | None:
    """Apply ``memory`` to ``conn``; returns the spill folder to remove once the connection is
    closed, if any. Runtime settings, not connection options: same-process readers opened without
    them still share the database.

    The spill folder belongs to the DuckDB database: for a store file, every connection this
    process has open to it shares one (``<pid>-<file>``, left for the next writer's sweep, as
    another connection may still use it); a lake session is a database of its own, whose folder
    goes with it."""
    if memory is None:
        return None
    private_directory(memory.spill_root)
    _sweep_dead(memory.spill_root)
    if store_file is not None:
        digest = hashlib.sha256(str(store_file.resolve()).encode()).hexdigest()[:12]
        folder, owned = private_directory(memory.spill_root / f"{os.getpid()}-{digest}"), None
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=memory.spill_root))
        owned = folder
    conn.execute(f"SET temp_directory = {literal(str(folder))}")
    limit = resolved_limit(memory.limit)
    if limit is not None:
        conn.execute(f"SET memory_limit = {literal(limit)}")
    return owned
