"""Work left behind by steps that died: a killed step cannot clean up after itself, so the next
fetch of the connection does, a day later (the re-execution of a failed run usually comes first
and needs the files)."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from cdp_pipeline import importing
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.scratch import scratch_root
from cdp_pipeline.store.memory import SPILL_FOLDER


def sweep_stale_work(project: ProjectConfig, connection: str, older_than_hours: float = 24, now: float | None = None) -> list[str]:
    """Remove what the connection's deliveries left more than ``older_than_hours`` ago; returns
    the work folders (local) or bucket folders (S3) removed.

    Local: the customer data of each work folder, as ``importing.sweep_stale_work``. S3: every
    delivery folder in the bucket whose newest object is that old (its customer data, manifests
    and reject report), and the scratch folders of steps on this host that were killed."""
    cleaned = [path.name for path in importing.sweep_stale_work(project, connection, older_than_hours, now)]
    settings = project.work_storage.s3
    if settings is None:
        return cleaned
    limit = (time.time() if now is None else now) - older_than_hours * 3600
    _sweep_scratch(scratch_root(project), limit)
    from cdp_pipeline.work_storage.bucket import WorkBucket  # boto3: only with work_storage s3

    bucket = WorkBucket(settings)
    newest: dict[str, datetime] = {}
    for item in bucket.objects(f"{connection}/"):
        folder = "/".join(item.key.split("/")[:2]) + "/"
        newest[folder] = max(newest.get(folder, item.last_modified), item.last_modified)
    stale = sorted(folder for folder, moment in newest.items() if moment < datetime.fromtimestamp(limit, UTC))
    for folder in stale:
        bucket.delete_below(folder)
    return cleaned + [bucket.uri(folder) for folder in stale]


def _sweep_scratch(root: Path, limit: float) -> None:
    if not root.is_dir():
        return
    for folder in root.iterdir():
        # DuckDB's spill folders belong to live processes for as long as those run; they have a
        # sweep of their own, by whether the owning process is gone, not by age.
        if folder.name == SPILL_FOLDER:
            continue
        if folder.is_dir() and folder.stat().st_mtime < limit:
            shutil.rmtree(folder, ignore_errors=True)
