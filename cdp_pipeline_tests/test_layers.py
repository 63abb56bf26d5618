"""The engine is plain Python: no engine module imports Dagster (the wiring in cdp_pipeline/defs
does), so it can be tested, benchmarked and reused alone."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import cdp_pipeline

ENGINE_MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(cdp_pipeline.__path__, "cdp_pipeline.")
    if not info.name.startswith(("cdp_pipeline.defs", "cdp_pipeline.definitions", "cdp_pipeline.cli"))
)


def test_engine_modules_never_import_dagster():
    assert "cdp_pipeline.store.merge" in ENGINE_MODULES and "cdp_pipeline.importing" in ENGINE_MODULES
    code = (
        "import importlib, sys\n"
        f"for name in {ENGINE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.') or m.startswith('dagster_')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
