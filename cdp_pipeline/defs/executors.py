"""Which executor the jobs run their steps with, chosen per deployment by ``CDP_EXECUTOR``.

``in_process`` (the default, the embedded set-up): every step of a run in the run worker's own
process, no per-step start-up cost, nothing to share. ``multiprocess``: each step in a process of
its own (memory of a large delivery freed after its step; one step's crash does not take the
others). ``k8s``: each step in a Kubernetes pod of its own (``dagster-k8s``, the ``deploy`` extra).
The steps hand each other files in the delivery's work folder, never Python objects, so the first
two work on one host; a step in another pod needs that folder on shared storage, which is why
``k8s`` is refused unless ``work_storage: s3`` (docs/deployment.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg

from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.errors import ConfigError

EXECUTOR_ENV = "CDP_EXECUTOR"


def _k8s_job_executor() -> dg.ExecutorDefinition:
    # Imported only when chosen: the Quick start installs no Kubernetes client.
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ConfigError(f"{EXECUTOR_ENV}=k8s needs dagster-k8s: install the deploy extra (pip install 'cdp-pipeline[deploy]')") from error
    return k8s_job_executor


EXECUTORS: dict[str, Callable[[], dg.ExecutorDefinition]] = {
    "in_process": lambda: dg.in_process_executor,
    "multiprocess": lambda: dg.multiprocess_executor,
    "k8s": _k8s_job_executor,
}
#: executors whose steps may run on different hosts: the work folders must be on S3.
_STEPS_ON_OTHER_HOSTS = {"k8s"}


def executor_choice() -> str:
    choice = os.environ.get(EXECUTOR_ENV, "").strip() or "in_process"
    if choice not in EXECUTORS:
        offered = ", ".join(EXECUTORS)
        raise ConfigError(f"{EXECUTOR_ENV}={choice!r} is not an executor this code location offers: set it to one of {offered} (or leave it unset)")
    return choice


def check_executor_fits(project: ProjectConfig) -> None:
    """Refused at load rather than at the second step: a step in another pod would find the work
    folder a previous step left on a disk it cannot see."""
    choice = executor_choice()
    if choice in _STEPS_ON_OTHER_HOSTS and project.work_storage.type != "s3":
        raise ConfigError(
            f"{EXECUTOR_ENV}={choice} runs each step in a pod of its own, but the delivery work folders are on this "
            "host's disk (work_storage: local): set work_storage: s3 in store.yaml (docs/deployment.md, Work folders on S3) "
            f"or choose {EXECUTOR_ENV}=multiprocess"
        )


def job_executor() -> dg.ExecutorDefinition:
    return EXECUTORS[executor_choice()]()
