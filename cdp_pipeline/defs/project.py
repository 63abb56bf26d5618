"""The loaded configuration (config directory + CDP_HOME) shared by the definition factories."""

from __future__ import annotations

import functools

from cdp_pipeline.config.loading import ProjectConfig, load_project
from cdp_pipeline.defs.executors import check_executor_fits


@functools.cache
def project_config() -> ProjectConfig:
    """Loaded once per process; a YAML error fails the code location load with the file, key
    path and allowed values in the message."""
    project = load_project()
    check_executor_fits(project)
    return project
