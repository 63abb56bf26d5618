"""A delivery that cannot be imported is moved to the goal's quarantine folder, nothing of it is
merged, and the other deliveries of the connection keep flowing."""

from __future__ import annotations

import shutil

import duckdb
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home


def test_failed_delivery_is_quarantined_and_the_rest_flow(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    for goal in demo["goals"]:
        if "files" in goal:
            goal["files"]["after_import"] = {"action": "move_to_done", "quarantine_directory": "quarantine"}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=40)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    project_config.cache_clear()
    inbox = home / "demo" / "inbox"
    # A household size that is not a number: the households delivery fails (on_error: fail).
    households = inbox / "households_20260115.csv"
    lines = households.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:-1] + ["three"])
    households.write_text("\n".join(lines) + "\n")
    try:
        summary = run_now("demo_local", echo=lambda *_: None)
    finally:
        project_config.cache_clear()
    outcome = {item["delivery"].split(":")[0]: item["success"] for item in summary["imports"]}
    assert outcome == {"households": False, "customers": True, "orders": True}
    assert (inbox / "quarantine" / "households_20260115.csv").exists()
    assert not households.exists()
    assert (inbox / "done" / "profiles_20260115.csv").exists()
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM groups_household").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (40,)
    report = (home / "work" / "demo_local").glob("households*/rejects.csv")
    text = next(report).read_text()
    assert "line 4" in text or ",4," in text
    assert "household_size" in text
