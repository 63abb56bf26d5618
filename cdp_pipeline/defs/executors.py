"""Which executor the jobs run their steps with, chosen per deployment by ``CDP_EXECUTOR``.

``in_process`` (the default, the embedded set-up): every step of a run in the run worker's own
process, no per-step start-up cost, nothing to share. ``multiprocess``: each step in a process of
its own (memory of a large delivery freed after its step; one step's crash does not take the
others). The steps hand each other files in the delivery's work folder, never Python objects, so
both work on one host; a step in another pod needs that folder on shared storage: a shared volume,
or ``work_storage: s3`` (docs/deployment.md).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "CDP_EXECUTOR"

EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
}


def job_executor() -> dg.ExecutorDefinition:
    choice = os.environ.get(EXECUTOR_ENV, "").strip() or "in_process"
    if choice not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={choice!r} is not an executor this code location offers: set it to one of {', '.join(EXECUTORS)} (or leave it unset)")
    return EXECUTORS[choice]
