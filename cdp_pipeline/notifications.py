"""E-mail notifications for connection runs: settings from the environment, the message, and sending.

Plain Python (no dagster import): a run-status sensor in the definitions layer builds a
:class:`RunSummary` from the run, asks :func:`should_notify` with the connection's
``notifications.when``, and calls :func:`compose_message` and :func:`send`.

Secrets: the SMTP password lives only in :class:`SmtpSettings`, is hidden from its ``repr`` and never
goes into a message; error texts copied into a message have URL credentials and ``password=...``
style values masked, since exception messages sometimes echo a connection string.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from cdp_pipeline.errors import CdpError

__all__ = [
    "NotificationError",
    "SmtpNotConfigured",
    "SmtpSettings",
    "RunSummary",
    "should_notify",
    "compose_message",
    "send",
]

Security = Literal["none", "starttls", "ssl"]
RunStatus = Literal["SUCCESS", "FAILURE"]

_DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "ssl": 465}
#: how many created/updated profile ids a message lists, as the run history shows them.
LAST_PROFILES_SHOWN = 5
#: long tracebacks are cut so the message stays readable; the full text is in the Dagster run.
MAX_ERROR_CHARS = 4000


class NotificationError(CdpError):
    """A notification could not be sent (connection, TLS, login or a refused recipient)."""


class SmtpNotConfigured(NotificationError):
    """A connection asks for notifications but CDP_SMTP_HOST is not set."""


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the mail relay. ``password`` is excluded from ``repr`` so logs never show it."""

    host: str
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "cdp_pipeline@localhost"
    security: Security = "starttls"
    timeout: float = 30.0
    #: a PEM bundle to trust instead of the system store (a relay with an internal CA).
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.security not in _DEFAULT_PORTS:
            raise ValueError(f"SMTP security must be one of none, starttls, ssl (got {self.security!r})")
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP port {self.port} is out of range")
        if self.timeout <= 0:
            raise ValueError("SMTP timeout must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SmtpSettings | None:
        """Read ``CDP_SMTP_*``; None when ``CDP_SMTP_HOST`` is unset or empty (mail is off).

        ``CDP_SMTP_SECURITY`` defaults to ``starttls`` and ``CDP_SMTP_PORT`` to the usual port of
        the chosen security (25, 587, 465). ``CDP_SMTP_FROM`` defaults to the user name when that
        is an address. ``CDP_SMTP_TIMEOUT`` (seconds, default 30) and ``CDP_SMTP_CA_FILE`` are
        optional.
        """
        host = environ.get("CDP_SMTP_HOST", "").strip()
        if not host:
            return None
        security = environ.get("CDP_SMTP_SECURITY", "").strip().lower() or "starttls"
        if security not in _DEFAULT_PORTS:
            raise ValueError(f"CDP_SMTP_SECURITY must be none, starttls or ssl (got {security!r})")
        port_text = environ.get("CDP_SMTP_PORT", "").strip()
        try:
            port = int(port_text) if port_text else _DEFAULT_PORTS[security]
        except ValueError:
            raise ValueError(f"CDP_SMTP_PORT must be a number (got {port_text!r})") from None
        timeout_text = environ.get("CDP_SMTP_TIMEOUT", "").strip()
        try:
            timeout = float(timeout_text) if timeout_text else 30.0
        except ValueError:
            raise ValueError(f"CDP_SMTP_TIMEOUT must be a number of seconds (got {timeout_text!r})") from None
        username = environ.get("CDP_SMTP_USERNAME", "").strip() or None
        # A password may legitimately start or end with spaces; take it as given.
        password = environ.get("CDP_SMTP_PASSWORD") or None
        sender = environ.get("CDP_SMTP_FROM", "").strip()
        if not sender:
            sender = username if username and "@" in username else "cdp_pipeline@localhost"
        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            sender=sender,
            security=security,  # type: ignore[arg-type]  # checked above
            timeout=timeout,
            ca_file=environ.get("CDP_SMTP_CA_FILE", "").strip() or None,
        )


@dataclass
class RunSummary:
    """What a message says about one run."""

    connection: str
    run_id: str
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None = None
    #: per goal, its counters, e.g. ``{"import_customers": {"rows_read": 120, "profiles_updated": 7}}``.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    #: created or updated profile ids, most recent first; the message lists the first five.
    last_profiles: list[str] = field(default_factory=list)
    #: link to the run in the Dagster UI.
    ui_url: str | None = None


def should_notify(when: Literal["always", "failure"], status: str) -> bool:
    """Whether a run with this status sends mail under ``notifications.when``."""
    if status not in ("SUCCESS", "FAILURE"):
        raise ValueError(f"run status must be SUCCESS or FAILURE (got {status!r})")
    if when == "always":
        return True
    if when == "failure":
        return status == "FAILURE"
    raise ValueError(f"notifications.when must be always or failure (got {when!r})")


# user:password@ in URLs, and key=value / key: value pairs whose key names a secret.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/\s:@]*):[^/\s@]*@", re.I)
_SECRET_PAIR = re.compile(
    r"(?P<key>\b[\w-]*(?:password|passwd|passphrase|secret|token|api[_-]?key)[\w-]*\b\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|\S+)",
    re.I,
)


def _redact(text: str) -> str:
    text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
    return _SECRET_PAIR.sub(r"\g<key>***", text)


def _format_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is None:  # treat naive times as UTC rather than guessing the host's zone
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_duration(started: datetime, ended: datetime | None) -> str | None:
    if ended is None:
        return None
    seconds = int(round((ended - started).total_seconds()))
    if seconds < 0:
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def _counts_table(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Goals as rows, counters as columns (first-seen order); numbers right-aligned."""
    columns: list[str] = []
    for goal_counts in counts.values():
        for name in goal_counts:
            if name not in columns:
                columns.append(name)
    header = ["goal", *columns]
    rows = [
        [goal, *(f"{goal_counts[c]:,}" if c in goal_counts else "-" for c in columns)]
        for goal, goal_counts in counts.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def compose_message(summary: RunSummary, recipients: Sequence[str], sender: str) -> EmailMessage:
    """A plain-text message about the run; it carries no settings and no secrets."""
    if not recipients:
        raise ValueError("a notification needs at least one recipient")
    failed = summary.status == "FAILURE"
    outcome = "FAILED" if failed else "succeeded"

    message = EmailMessage()
    message["Subject"] = f"[cdp_pipeline] {summary.connection}: run {outcome}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="cdp-pipeline.local")
    # Lets mail rules group the notifications of one connection.
    message["X-CDP-Connection"] = summary.connection

    facts = [
        ("Connection", summary.connection),
        ("Status", "FAILED" if failed else "SUCCESS"),
        ("Run", summary.run_id),
        ("Started", _format_time(summary.started_at)),
        ("Ended", _format_time(summary.ended_at)),
    ]
    duration = _format_duration(summary.started_at, summary.ended_at)
    if duration:
        facts.append(("Duration", duration))
    label_width = max(len(label) for label, _ in facts) + 1
    lines = [f"{(label + ':').ljust(label_width)} {value}" for label, value in facts]

    lines += ["", "Goals"]
    lines += ["  " + row for row in _counts_table(summary.counts)] if summary.counts else ["  (no goal ran)"]

    if summary.error:
        error = _redact(summary.error.strip())
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + "\n... (cut; the full error is in the Dagster run)"
        lines += ["", "Error"]
        lines += ["  " + row for row in error.splitlines()]

    if summary.last_profiles:
        shown = summary.last_profiles[:LAST_PROFILES_SHOWN]
        lines += ["", f"Last {len(shown)} created or updated profiles"]
        lines += [f"  {profile_id}" for profile_id in shown]

    if summary.ui_url:
        lines += ["", f"Open the run in Dagster: {summary.ui_url}"]

    message.set_content("\n".join(lines) + "\n")
    return message


def send(settings: SmtpSettings, message: EmailMessage) -> None:
    """Deliver the message through the relay; raise :class:`NotificationError` on any failure.

    All recipients in To/Cc get it; if the relay refuses some of them the others still receive it
    and the error names the refused ones.
    """
    where = f"{settings.host}:{settings.port}"
    try:
        # Verifies the relay's certificate and name; a missing CA file fails here, as an OSError.
        context = ssl.create_default_context(cafile=settings.ca_file) if settings.security != "none" else None
        client: smtplib.SMTP
        if settings.security == "ssl":
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.security == "starttls":
                client.ehlo()
                if not client.has_extn("starttls"):
                    # Never fall back to plain text silently: the login would travel unencrypted.
                    raise NotificationError(
                        f"SMTP server {where} does not offer STARTTLS; set CDP_SMTP_SECURITY=ssl or none"
                    )
                client.starttls(context=context)
                client.ehlo()
            if settings.username:
                client.login(settings.username, settings.password or "")
            refused = client.send_message(message, from_addr=settings.sender)
    except NotificationError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise NotificationError(
            f"SMTP login as {settings.username!r} at {where} was rejected ({exc.smtp_code}); "
            "check CDP_SMTP_USERNAME and CDP_SMTP_PASSWORD"
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotificationError(
            f"SMTP server {where} refused every recipient: {', '.join(sorted(exc.recipients))}"
        ) from exc
    except ssl.SSLError as exc:
        raise NotificationError(
            f"TLS with SMTP server {where} failed: {exc}; check CDP_SMTP_SECURITY (and CDP_SMTP_CA_FILE)"
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise NotificationError(f"could not send e-mail via {where}: {exc}") from exc
    if refused:
        raise NotificationError(
            f"SMTP server {where} refused {', '.join(sorted(refused))}; the other recipients got the message"
        )
