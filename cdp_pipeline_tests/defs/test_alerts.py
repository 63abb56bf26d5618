"""E-mail notifications, received by a real SMTP server on 127.0.0.1, whatever started the run: a
`cdp-pipeline run` process mails its own run (the daemon's sensors never see a run executed in
another process), the daemon's sensors mail the runs they see. A failed import tells the
connection, the goal and the error; a successful run (when: always) carries the counts and the
last profiles changed; when: failure sends nothing for a success."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.demo_home import prepare_demo_home


def _write_config(config, when: str) -> None:
    (config / "connections").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    demo["notifications"] = {"emails": ["crm-ops@example.com"], "when": when}
    (config / "connections" / "demo_local.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))


@pytest.fixture
def notifying_demo(tmp_path, monkeypatch, smtp_server):
    config = tmp_path / "config"
    _write_config(config, "always")
    home = prepare_demo_home(tmp_path / "home", monkeypatch, profiles=60)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("CDP_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("CDP_SMTP_SECURITY", "none")
    monkeypatch.setenv("CDP_SMTP_FROM", "cdp@example.com")
    project_config.cache_clear()
    yield home, smtp_server, config
    project_config.cache_clear()


def _break_customers_file(home) -> None:
    """The customers file loses its required column email."""
    profiles = home / "demo" / "inbox" / "profiles_20260115.csv"
    lines = profiles.read_text().splitlines()
    profiles.write_text("\n".join(line.replace("email", "mail", 1) if i == 0 else line for i, line in enumerate(lines)) + "\n")


def test_a_cli_run_process_mails_its_failure(notifying_demo):
    home, smtp, _config = notifying_demo
    _break_customers_file(home)
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", "demo_local"],
        env=dict(os.environ), capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "e-mailed crm-ops@example.com about run" in result.stdout
    assert len(smtp.messages) == 1, [m.message["Subject"] for m in smtp.messages]
    mail = smtp.messages[0]
    assert mail.recipients == ["crm-ops@example.com"]
    assert mail.message["Subject"] == "[cdp_pipeline] demo_local: run FAILED"
    body = mail.message.get_content()
    assert "profiles_20260115.csv" in body and "email" in body  # the file and the missing column
    # The deliveries that did import are in the same message, per goal.
    assert "households" in body and "groups_created" in body


def test_in_process_runs_mail_success_and_failure_and_the_sensors_build_the_same_message(notifying_demo):
    home, smtp, _config = notifying_demo
    _break_customers_file(home)
    failed = run_now("demo_local", echo=lambda *_: None)
    assert not failed["success"]
    assert [m.message["Subject"] for m in smtp.messages] == ["[cdp_pipeline] demo_local: run FAILED"]

    # The daemon's failure sensor on the same run (what it sends for runs launched from the UI).
    from cdp_pipeline.definitions import defs

    definitions = defs()
    instance = dg.DagsterInstance.get()
    [run] = [r for r in instance.get_runs() if r.job_name == "demo_local_run_now"]
    failure_event = next(
        r.event_log_entry.dagster_event for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    )
    sensor = definitions.resolve_sensor_def("demo_local_email_on_failure")
    context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=failure_event)
    sensor(context.for_run_failure())
    assert len(smtp.messages) == 2
    assert "profiles_20260115.csv" in smtp.messages[1].message.get_content()

    # The file repaired: the next run succeeds and, with when: always, says so with its counts.
    profiles = home / "demo" / "inbox" / "profiles_20260115.csv"
    lines = profiles.read_text().splitlines()
    profiles.write_text("\n".join(line.replace("mail", "email", 1) if i == 0 else line for i, line in enumerate(lines)) + "\n")
    succeeded = run_now("demo_local", echo=lambda *_: None)
    assert succeeded["success"], succeeded
    assert len(smtp.messages) == 3
    mail = smtp.messages[2].message
    assert mail["Subject"] == "[cdp_pipeline] demo_local: run succeeded"
    body = mail.get_content()
    created = next(item for item in succeeded["imports"] if item["delivery"].startswith("customers"))["profiles_created"]
    assert created == 60
    assert "customers" in body and "profiles_created" in body and "60" in body
    assert "Last 5 created or updated profiles" in body


def test_failure_only_sends_nothing_for_a_success(notifying_demo):
    home, smtp, config = notifying_demo
    _write_config(config, "failure")
    project_config.cache_clear()
    summary = run_now("demo_local", echo=lambda *_: None)
    assert summary["success"], summary
    assert smtp.messages == []
