"""E-mail notifications against real SMTP servers on loopback (fixtures in fixtures/smtp.py)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest

from cdp_pipeline.notifications import (
    NotificationError,
    RunSummary,
    SmtpSettings,
    compose_message,
    send,
    should_notify,
)

# smtp_auth_server allows AUTH without TLS on purpose (loopback only); aiosmtpd warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

SENDER = "cdp@example.org"
RECIPIENTS = ["ops@example.org", "crm-team@example.org"]
STARTED = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def _summary(**overrides) -> RunSummary:
    values = dict(
        connection="demo_local",
        run_id="8c1f2a4e-1111-2222-3333-444455556666",
        status="FAILURE",
        started_at=STARTED,
        ended_at=STARTED + timedelta(minutes=1, seconds=5),
        counts={
            "import_customers": {"rows_read": 12345, "rows_rejected": 3, "profiles_updated": 870},
            "export_vip": {"profiles_exported": 42},
        },
        error="InputError: customers.csv line 17, column 'email': not an e-mail address",
        last_profiles=["p-7", "p-6", "p-5", "p-4", "p-3", "p-2", "p-1"],
        ui_url="http://localhost:3000/runs/8c1f2a4e-1111-2222-3333-444455556666",
    )
    values.update(overrides)
    return RunSummary(**values)


def _plain(server, **overrides) -> SmtpSettings:
    return SmtpSettings(host=server.host, port=server.port, sender=SENDER, security="none", timeout=5, **overrides)


# -------------------------------------------------------------------------------------- should_notify


@pytest.mark.parametrize(
    ("when", "status", "expected"),
    [
        ("always", "SUCCESS", True),
        ("always", "FAILURE", True),
        ("failure", "SUCCESS", False),
        ("failure", "FAILURE", True),
    ],
)
def test_should_notify(when, status, expected):
    assert should_notify(when, status) is expected


def test_should_notify_rejects_unknown_values():
    with pytest.raises(ValueError, match="always or failure"):
        should_notify("sometimes", "FAILURE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SUCCESS or FAILURE"):
        should_notify("always", "CANCELED")


# -------------------------------------------------------------------------------------- settings


def test_from_env_is_none_without_host():
    assert SmtpSettings.from_env({}) is None
    assert SmtpSettings.from_env({"CDP_SMTP_HOST": "  ", "CDP_SMTP_PASSWORD": "x"}) is None


def test_from_env_reads_every_variable():
    settings = SmtpSettings.from_env(
        {
            "CDP_SMTP_HOST": "smtp.example.org",
            "CDP_SMTP_PORT": "2525",
            "CDP_SMTP_USERNAME": "mailer",
            "CDP_SMTP_PASSWORD": "hunter2-very-secret",
            "CDP_SMTP_FROM": "CDP <cdp@example.org>",
            "CDP_SMTP_SECURITY": "SSL",
            "CDP_SMTP_TIMEOUT": "12.5",
        }
    )
    assert settings == SmtpSettings(
        host="smtp.example.org",
        port=2525,
        username="mailer",
        password="hunter2-very-secret",
        sender="CDP <cdp@example.org>",
        security="ssl",
        timeout=12.5,
    )
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


@pytest.mark.parametrize(("security", "port"), [("none", 25), ("starttls", 587), ("ssl", 465), (None, 587)])
def test_from_env_defaults_port_by_security(security, port):
    env = {"CDP_SMTP_HOST": "relay"}
    if security:
        env["CDP_SMTP_SECURITY"] = security
    settings = SmtpSettings.from_env(env)
    assert settings is not None
    assert settings.port == port
    assert settings.security == (security or "starttls")
    assert settings.username is None and settings.password is None
    assert settings.sender == "cdp_pipeline@localhost"


def test_from_env_sender_defaults_to_an_address_username():
    settings = SmtpSettings.from_env({"CDP_SMTP_HOST": "relay", "CDP_SMTP_USERNAME": "bot@example.org"})
    assert settings is not None and settings.sender == "bot@example.org"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CDP_SMTP_SECURITY": "tls"}, "CDP_SMTP_SECURITY"),
        ({"CDP_SMTP_PORT": "smtp"}, "CDP_SMTP_PORT"),
        ({"CDP_SMTP_PORT": "70000"}, "out of range"),
        ({"CDP_SMTP_TIMEOUT": "soon"}, "CDP_SMTP_TIMEOUT"),
    ],
)
def test_from_env_rejects_bad_values(env, message):
    with pytest.raises(ValueError, match=message):
        SmtpSettings.from_env({"CDP_SMTP_HOST": "relay", **env})


# -------------------------------------------------------------------------------------- message


def test_failure_message_content():
    message = compose_message(_summary(), RECIPIENTS, SENDER)
    assert message["Subject"] == "[cdp_pipeline] demo_local: run FAILED"
    assert message["From"] == SENDER
    assert message["To"] == "ops@example.org, crm-team@example.org"
    body = message.get_content()
    assert "Connection: demo_local" in body
    assert "Status:     FAILED" in body
    assert "8c1f2a4e-1111-2222-3333-444455556666" in body
    assert "Started:    2026-03-29 01:30:00 UTC" in body
    assert "Duration:   1m 05s" in body
    # The goals table: one row per goal, counters as columns, right-aligned, "-" where absent.
    lines = body.splitlines()
    header = next(line for line in lines if line.strip().startswith("goal "))
    row = next(line for line in lines if line.strip().startswith("import_customers"))
    other = next(line for line in lines if line.strip().startswith("export_vip"))
    assert header.split() == ["goal", "rows_read", "rows_rejected", "profiles_updated", "profiles_exported"]
    assert row.split() == ["import_customers", "12,345", "3", "870", "-"]
    assert other.split() == ["export_vip", "-", "-", "-", "42"]
    assert len({len(header), len(row), len(other)}) == 1  # aligned: every row ends in the same column
    assert header.index("rows_rejected") + len("rows_rejected") == row.index(" 3 ") + 2
    assert "not an e-mail address" in body
    assert "Last 5 created or updated profiles" in body
    assert all(f"  p-{n}\n" in body for n in (7, 6, 5, 4, 3))
    assert "p-2" not in body and "p-1" not in body
    assert "Open the run in Dagster: http://localhost:3000/runs/8c1f2a4e" in body


def test_success_message_without_optional_parts():
    summary = _summary(status="SUCCESS", error=None, last_profiles=[], ui_url=None, counts={}, ended_at=None)
    message = compose_message(summary, ["ops@example.org"], SENDER)
    assert message["Subject"] == "[cdp_pipeline] demo_local: run succeeded"
    body = message.get_content()
    assert "Status:     SUCCESS" in body
    assert "(no goal ran)" in body
    assert "Error" not in body and "profiles" not in body and "Dagster" not in body


def test_message_masks_credentials_in_errors():
    error = (
        "connect to sftp://loader:Pa55word!@sftp.example.org:22 failed\n"
        "settings: password=hunter2 api_key: 'abc123' token=xyz"
    )
    body = compose_message(_summary(error=error), RECIPIENTS, SENDER).get_content()
    for secret in ("Pa55word!", "hunter2", "abc123", "xyz"):
        assert secret not in body
    assert "sftp://loader:***@sftp.example.org:22" in body
    assert "password=***" in body


def test_message_needs_a_recipient():
    with pytest.raises(ValueError, match="recipient"):
        compose_message(_summary(), [], SENDER)


# -------------------------------------------------------------------------------------- sending


def test_send_delivers_to_every_recipient(smtp_server):
    settings = _plain(smtp_server, password="never-in-mail")
    send(settings, compose_message(_summary(), RECIPIENTS, settings.sender))
    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received.mail_from == SENDER
    assert received.recipients == RECIPIENTS
    assert received.message["Subject"] == "[cdp_pipeline] demo_local: run FAILED"
    body = received.message.get_content()
    assert "12,345" in body and "870" in body
    assert "customers.csv line 17" in body
    assert "p-7" in body and "p-3" in body and "p-2" not in body
    assert b"never-in-mail" not in received.data


def test_send_success_message(smtp_server):
    host, port, messages = smtp_server
    settings = SmtpSettings(host=host, port=port, sender=SENDER, security="none", timeout=5)
    send(settings, compose_message(_summary(status="SUCCESS", error=None), ["ops@example.org"], SENDER))
    assert [m.message["Subject"] for m in messages] == ["[cdp_pipeline] demo_local: run succeeded"]
    assert messages[0].recipients == ["ops@example.org"]


def test_send_reports_partly_refused_recipients(smtp_server):
    message = compose_message(_summary(), ["ops@example.org", "gone@refused.invalid"], SENDER)
    with pytest.raises(NotificationError, match="refused gone@refused.invalid; the other recipients"):
        send(_plain(smtp_server), message)
    assert smtp_server.messages[0].recipients == ["ops@example.org"]


def test_send_reports_all_recipients_refused(smtp_server):
    message = compose_message(_summary(), ["gone@refused.invalid"], SENDER)
    with pytest.raises(NotificationError, match="refused every recipient"):
        send(_plain(smtp_server), message)
    assert smtp_server.messages == []


def test_send_fails_clearly_when_nobody_listens():
    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=2)
    with pytest.raises(NotificationError, match=f"could not send e-mail via 127.0.0.1:{port}"):
        send(settings, compose_message(_summary(), RECIPIENTS, SENDER))


def test_send_logs_in(smtp_auth_server):
    settings = _plain(smtp_auth_server, username=smtp_auth_server.username, password=smtp_auth_server.password)
    send(settings, compose_message(_summary(), RECIPIENTS, SENDER))
    assert len(smtp_auth_server.messages) == 1
    assert smtp_auth_server.password.encode() not in smtp_auth_server.messages[0].data


def test_send_reports_a_rejected_login(smtp_auth_server):
    settings = _plain(smtp_auth_server, username=smtp_auth_server.username, password="wrong-password")
    with pytest.raises(NotificationError, match="login as 'cdp-mailer'.*rejected") as caught:
        send(settings, compose_message(_summary(), RECIPIENTS, SENDER))
    assert "wrong-password" not in str(caught.value)
    assert smtp_auth_server.messages == []


def test_send_without_login_is_refused_by_an_auth_server(smtp_auth_server):
    with pytest.raises(NotificationError, match="could not send"):
        send(_plain(smtp_auth_server), compose_message(_summary(), RECIPIENTS, SENDER))


def test_send_over_starttls_with_login(smtp_starttls_server):
    server = smtp_starttls_server
    settings = SmtpSettings(
        host=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        sender=SENDER,
        security="starttls",
        timeout=5,
        ca_file=server.ca_file,
    )
    send(settings, compose_message(_summary(), RECIPIENTS, SENDER))
    assert [m.recipients for m in server.messages] == [RECIPIENTS]


def test_starttls_rejects_an_untrusted_certificate(smtp_starttls_server):
    # No ca_file: the throw-away CA is not in the system store, so verification must fail.
    settings = SmtpSettings(host="127.0.0.1", port=smtp_starttls_server.port, security="starttls", timeout=5)
    with pytest.raises(NotificationError, match="TLS with SMTP server"):
        send(settings, compose_message(_summary(), RECIPIENTS, SENDER))
    assert smtp_starttls_server.messages == []


def test_starttls_is_never_skipped_silently(smtp_server):
    settings = SmtpSettings(host=smtp_server.host, port=smtp_server.port, security="starttls", timeout=5)
    with pytest.raises(NotificationError, match="does not offer STARTTLS"):
        send(settings, compose_message(_summary(), RECIPIENTS, SENDER))
    assert smtp_server.messages == []


def test_send_over_implicit_tls(smtp_ssl_server):
    settings = SmtpSettings(
        host=smtp_ssl_server.host,
        port=smtp_ssl_server.port,
        sender=SENDER,
        security="ssl",
        timeout=5,
        ca_file=smtp_ssl_server.ca_file,
    )
    send(settings, compose_message(_summary(status="SUCCESS"), RECIPIENTS, SENDER))
    assert smtp_ssl_server.messages[0].message["Subject"] == "[cdp_pipeline] demo_local: run succeeded"
