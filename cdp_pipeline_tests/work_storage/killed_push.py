"""A fetch step of ``work_storage: s3`` in a process of its own, for a test to kill part-way
(``CDP_PIPELINE_FAULT_AT=work_push``). Arguments: home, partition key, the file's content;
``CDP_TEST_WORK_STORAGE`` holds the settings as JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cdp_pipeline import work_storage
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.config.work_storage import WorkStorageSettings
from cdp_pipeline_tests.work_storage.test_step_folders import _fake_fetch


def main() -> None:
    home, partition, content = sys.argv[1:4]
    settings = WorkStorageSettings.model_validate_json(os.environ["CDP_TEST_WORK_STORAGE"])
    project = ProjectConfig(config_dir=Path(home), home=Path(home), store=StoreSettings(), catalog=Catalog(), work_storage=settings)
    with work_storage.delivery_work(project, "demo", partition, "fetch") as work:
        _fake_fetch(work.path, content.encode())


if __name__ == "__main__":
    main()
