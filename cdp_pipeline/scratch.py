"""Where a process keeps short-lived customer data of its own when the work folders are on S3: the
import steps' private scratch folders and DuckDB's spill files. With ``work_storage: s3`` nothing of
a delivery stays in ``CDP_HOME/work`` (a pod's volume may be shared or long-lived); an ``emptyDir``
named by ``CDP_SCRATCH_DIR`` is the natural place in a pod."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdp_pipeline.config.loading import ProjectConfig

SCRATCH_ENV = "CDP_SCRATCH_DIR"


def scratch_root(project: ProjectConfig) -> Path:
    configured = os.environ.get(SCRATCH_ENV, "").strip()
    return Path(configured).expanduser() if configured else project.home / "scratch"
