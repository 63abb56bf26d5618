"""The executor of every job is the deployment's choice (CDP_EXECUTOR), in process unless chosen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.executors import job_executor
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.errors import ConfigError

JOBS = ["demo_local_import", "demo_local_export", "demo_local_run_now", "demo_local_store_checks", "demo_local_check"]


def _executors(tmp_path, monkeypatch, config: Path | None = None) -> dict[str, str]:
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    if config is None:
        monkeypatch.delenv("CDP_CONFIG_DIR", raising=False)
    else:
        monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
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
    monkeypatch.setenv("CDP_EXECUTOR", "kubernetes")
    with pytest.raises(ConfigError, match=r"CDP_EXECUTOR='kubernetes'.*in_process, multiprocess, k8s"):
        job_executor()


def _s3_work_config(tmp_path) -> Path:
    """The bundled configuration with the work folders on a bucket (never contacted at load)."""
    config = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, config)
    store = yaml.safe_load((config / "store.yaml").read_text())
    store["work_storage"] = {
        "type": "s3",
        "s3": {"bucket": "acme-cdp-work", "endpoint_url": "http://127.0.0.1:9", "server_side_encryption": "AES256"},
    }
    (config / "store.yaml").write_text(yaml.safe_dump(store, sort_keys=False))
    return config


def test_k8s_runs_every_job_step_per_pod_when_the_work_folders_are_on_s3(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_EXECUTOR", "k8s")
    config = _s3_work_config(tmp_path)
    assert _executors(tmp_path, monkeypatch, config) == dict.fromkeys(JOBS, "k8s")


def test_k8s_is_refused_at_load_while_the_work_folders_are_on_this_hosts_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_EXECUTOR", "k8s")
    # Dagster wraps the error of the definitions module that loaded the configuration first.
    with pytest.raises(Exception) as caught:
        _executors(tmp_path, monkeypatch)
    causes = [caught.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    [refusal] = [cause for cause in causes if isinstance(cause, ConfigError)]
    assert "CDP_EXECUTOR=k8s runs each step in a pod of its own" in str(refusal) and "work_storage: s3" in str(refusal)
