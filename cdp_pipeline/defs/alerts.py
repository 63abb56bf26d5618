"""E-mail notifications per connection: on every run or only on failure (the seeds' "Email
notifications" box), with the connection, goals, counts, error and the last profiles changed.

The message is built from the run's own materialization metadata in Dagster's event log, so the
sensor never opens the DuckDB store (it would compete with the writer for its lock).
"""

from datetime import UTC, datetime

import dagster as dg

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.notifications import RunStatus, RunSummary, SmtpNotConfigured, SmtpSettings, compose_message, send, should_notify


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, tz=UTC) if timestamp else None


def run_summary(instance: dg.DagsterInstance, run: dg.DagsterRun, connection: str, status: RunStatus, error: str | None) -> RunSummary:
    """Per-goal counts and the last changed profiles, from the run's materializations."""
    counts: dict[str, dict[str, int]] = {}
    last_profiles: list[str] = []
    records = instance.get_records_for_run(run_id=run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is None:
            continue
        step = materialization.asset_key.path[-1]
        goal = (materialization.partition or "").partition(":")[0] or step
        # A delivery's counters are under "<goal>/<counter>"; the message's table has the goal as its row.
        numbers = {
            k.removeprefix(f"{goal}/"): int(v.value)
            for k, v in materialization.metadata.items()
            if isinstance(v.value, (int, float)) and not isinstance(v.value, bool)
        }
        if step == "profile_store" or step.endswith("_export"):
            counts.setdefault(goal, {}).update({k: v for k, v in numbers.items() if k != "seconds"})
        profiles = materialization.metadata.get("last_profiles")
        if profiles is not None and isinstance(profiles.value, list):
            last_profiles = [str(p) for p in profiles.value] + last_profiles
    stats = instance.get_run_stats(run.run_id)
    return RunSummary(
        connection=connection,
        run_id=run.run_id,
        status=status,
        started_at=_utc(stats.start_time) or datetime.now(UTC),
        ended_at=_utc(stats.end_time),
        counts=counts,
        error=error,
        last_profiles=last_profiles[:5],
    )


def step_errors(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The failed steps' own messages (the run failure only says which steps failed)."""
    messages = []
    for record in instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        if event is None or data is None:
            continue
        text = (data.user_failure_data.description if data.user_failure_data and data.user_failure_data.description else None) or (
            data.error.message if data.error else ""
        )
        messages.append(f"{event.step_key}: {text.strip()}")
    return "\n".join(messages) or None


def _run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return next((record.event_log_entry.message for record in records if record.event_log_entry.message), "run failed")


def notify_run(instance: dg.DagsterInstance, run: dg.DagsterRun, connection: Connection, status: RunStatus, run_message: str | None = None) -> str | None:
    """The connection's notification about one ended run, whoever started it (the daemon's
    sensors for the runs they see, ``cdp-pipeline run`` for its own). Returns what was sent, None
    when ``notifications.when`` asks for no mail for this status; raises ``NotificationError``
    when mail should go out and cannot (``SmtpNotConfigured`` when CDP_SMTP_HOST is unset)."""
    settings = connection.notifications
    if settings is None or not should_notify(settings.when, status):
        return None
    smtp = SmtpSettings.from_env()
    if smtp is None:
        raise SmtpNotConfigured(f"{connection.name}: notifications are configured but CDP_SMTP_HOST is not set; no e-mail sent")
    error = None
    if status == "FAILURE":
        run_message = run_message or _run_failure_message(instance, run.run_id)
        details = step_errors(instance, run.run_id)
        error = f"{run_message}\n{details}" if details else run_message
    summary = run_summary(instance, run, connection.name, status, error)
    send(smtp, compose_message(summary, settings.emails, smtp.sender))
    return f"e-mailed {', '.join(settings.emails)} about run {run.run_id} ({status})"


def build_notification_sensors(connection: Connection, jobs: list) -> list[dg.SensorDefinition]:
    settings = connection.notifications
    if settings is None or not jobs:
        return []
    status = dg.DefaultSensorStatus.RUNNING if connection.enabled else dg.DefaultSensorStatus.STOPPED

    def notify(context, run_status: RunStatus, run_message: str | None) -> None:
        try:
            sent = notify_run(context.instance, context.dagster_run, connection, run_status, run_message)
        except SmtpNotConfigured as unset:
            context.log.warning(str(unset))
            return
        if sent:
            context.log.info(sent)

    @dg.run_failure_sensor(
        name=f"{connection.name}_email_on_failure",
        monitored_jobs=jobs,
        default_status=status,
        description=f"E-mails {', '.join(settings.emails)} when a run of {connection.name} fails.",
    )
    def email_on_failure(context: dg.RunFailureSensorContext) -> None:
        notify(context, "FAILURE", context.failure_event.message if context.failure_event else None)

    sensors = [email_on_failure]
    if settings.when == "always":

        @dg.run_status_sensor(
            name=f"{connection.name}_email_on_success",
            run_status=dg.DagsterRunStatus.SUCCESS,
            monitored_jobs=jobs,
            default_status=status,
            description=f"E-mails {', '.join(settings.emails)} after every successful run of {connection.name}.",
        )
        def email_on_success(context: dg.RunStatusSensorContext) -> None:
            notify(context, "SUCCESS", None)

        sensors.append(email_on_success)
    return sensors
