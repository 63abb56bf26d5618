"""The demo import job, rebuilt in each process the multiprocess executor starts, with a scratch
root of that process's own (``CDP_SCRATCH_DIR`` = ``<base>/pid-<pid>``): a step then cannot read
what an earlier step left on local disk, only what it pushed to the bucket."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

SCRATCH_BASE_ENV = "CDP_TEST_SCRATCH_BASE"
JOB = "demo_local_import"


def import_job() -> dg.JobDefinition:
    os.environ["CDP_SCRATCH_DIR"] = str(Path(os.environ[SCRATCH_BASE_ENV]) / f"pid-{os.getpid()}")
    from cdp_pipeline.definitions import defs

    return defs().resolve_job_def(JOB)
