"""E-mail notifications, received by a real SMTP server on 127.0.0.1: a failed import tells the
connection, the goal and the error; a successful run (when: always) carries the counts and the
last profiles changed."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from cdp_pipeline.cli import run_connection
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home


@pytest.fixture
def notifying_demo(tmp_path, monkeypatch, smtp_server):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["notifications"] = {"emails": ["crm-ops@example.com"], "when": "always"}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=60)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("CDP_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("CDP_SMTP_SECURITY", "none")
    monkeypatch.setenv("CDP_SMTP_FROM", "cdp@example.com")
    project_config.cache_clear()
    yield home, smtp_server
    project_config.cache_clear()


def _sensor_context(definitions, name, instance, run, event):
    return dg.build_run_status_sensor_context(sensor_name=name, dagster_instance=instance, dagster_run=run, dagster_event=event)


def test_failure_and_success_mails(notifying_demo):
    home, smtp = notifying_demo
    # Break the customers file: its required column email is gone.
    profiles = home / "demo" / "inbox" / "profiles_20260115.csv"
    lines = profiles.read_text().splitlines()
    profiles.write_text("\n".join(line.replace("email", "mail", 1) if i == 0 else line for i, line in enumerate(lines)) + "\n")
    summary = run_connection("demo_local", echo=lambda *_: None)
    assert not summary["success"]

    from cdp_pipeline.definitions import defs

    definitions = defs()
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    failed = next(r for r in runs if r.status == dg.DagsterRunStatus.FAILURE)
    failure_event = next(
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(failed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    )
    sensor = definitions.resolve_sensor_def("demo_local_email_on_failure")
    sensor(_sensor_context(definitions, sensor.name, instance, failed, failure_event).for_run_failure())
    assert len(smtp.messages) == 1
    mail = smtp.messages[0]
    assert mail.recipients == ["crm-ops@example.com"]
    body = mail.message.get_content()
    assert "demo_local" in mail.message["Subject"] and "FAIL" in mail.message["Subject"].upper()
    assert "profiles_20260115.csv" in body and "email" in body  # the file and the missing column

    succeeded = next(r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS and r.tags.get("dagster/partition", "").startswith("orders"))
    success_event = next(
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(succeeded.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records
    )
    success_sensor = definitions.resolve_sensor_def("demo_local_email_on_success")
    success_sensor(_sensor_context(definitions, success_sensor.name, instance, succeeded, success_event))
    assert len(smtp.messages) == 2
    body = smtp.messages[1].message.get_content()
    assert "orders" in body and "events_created" in body
