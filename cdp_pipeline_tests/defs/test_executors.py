"""The executor of every job is the deployment's choice (CDP_EXECUTOR), in process unless chosen."""

from __future__ import annotations

import pytest

from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.defs.project import project_config

JOBS = ["demo_local_import", "demo_local_export", "demo_local_run_now", "demo_local_store_checks", "demo_local_check"]


def _executors(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CDP_CONFIG_DIR", raising=False)
    project_config.cache_clear()
    from cdp_pipeline.definitions import defs

    try:
        definitions = defs()
        return {name: definitions.resolve_job_def(name).executor_def.name for name in JOBS}
    finally:
        project_config.cache_clear()


def test_jobs_run_in_process_unless_the_deployment_chooses(tmp_path, monkeypatch):
    monkeypatch.delenv("CDP_EXECUTOR", raising=False)
    assert _executors(tmp_path, monkeypatch) == dict.fromkeys(JOBS, "in_process")


def test_multiprocess_applies_to_every_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_EXECUTOR", "multiprocess")
    assert _executors(tmp_path, monkeypatch) == dict.fromkeys(JOBS, "multiprocess")


def test_an_unknown_executor_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("CDP_EXECUTOR", "k8s")
    with pytest.raises(ValueError, match=r"CDP_EXECUTOR='k8s'.*in_process, multiprocess"):
        job_executor()
