"""What happens when a run dies after its store commit: the retry must
finish the job, never undo it. The merge or export is real; only the moment of failure is chosen."""

from __future__ import annotations

import shutil

import duckdb
import yaml

from cdp_pipeline import connection_run
from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.errors import TransientError
from cdp_pipeline_tests.demo_home import prepare_demo_home


def run(connection: str = "demo_local") -> dict:
    try:
        return run_now(connection, echo=lambda *_: None)
    finally:
        project_config.cache_clear()


def test_delivery_merged_but_not_archived_is_archived_by_the_next_run(tmp_path, monkeypatch) -> None:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    for goal in demo["goals"]:
        if "files" in goal:
            goal["files"]["after_import"] = {"action": "move_to_done"}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=40)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    assert run()["success"]
    inbox, done = home / "demo" / "inbox", home / "demo" / "inbox" / "done"
    archived = sorted(path.name for path in done.iterdir())
    assert len(archived) == 4
    # What a crash between the merge's COMMIT and the archive step leaves behind: the store has
    # the deliveries, the remote folder still offers their files.
    for name in archived:
        shutil.move(done / name, inbox / name)
    summary = run()
    assert summary["success"]
    assert {item.get("status") for item in summary["imports"]} == {"skipped"}
    assert sorted(path.name for path in done.iterdir()) == archived
    assert not [path for path in inbox.iterdir() if path.is_file()]
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (40,)


def test_export_whose_run_cannot_be_recorded_is_not_sent_again(tmp_path, monkeypatch) -> None:
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=60)
    record_run = connection_run.record_run
    export_attempts: list[str] = []

    def store_locked_for_exports(conn, **fields):
        if fields["kind"] == "export":
            export_attempts.append(fields["goal"])
            raise TransientError("the store is locked by another process")
        return record_run(conn, **fields)

    # the export asset records its run through connection_run.record_export
    monkeypatch.setattr(connection_run, "record_run", store_locked_for_exports)
    summary = run()
    assert all(item["success"] for item in summary["imports"])
    assert summary["export_success"] is False
    # Once: a retry would export "what changed since" (nothing) under the same name and
    # overwrite the file the consumer has not fetched yet.
    assert export_attempts == ["high_value_export"]
    [exported] = (home / "demo" / "outbox" / "segments").glob("high_value_*.csv")
    assert len(exported.read_text().splitlines()) > 1  # the delivered rows are still there
