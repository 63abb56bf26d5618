"""One FTP or FTPS control connection: TLS set-up, login, and reading what the server lists.

Kept apart from ``ftp.py`` (the Transport with its retries and atomic transfers) so that the
protocol details (TLS session reuse, MLSD facts, LIST formats) can be read on their own.
"""

from __future__ import annotations

import ftplib
import os
import posixpath
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cdp_pipeline.config.connection import FtpLocation
from cdp_pipeline.errors import ConfigError, TransportError


@dataclass(frozen=True)
class FtpSecrets:
    """The password of an FTP location, resolved from the environment at run time.

    ``repr`` says only whether it is set: a password in a log line or a traceback's locals is a
    leak that cannot be taken back.
    """

    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"FtpSecrets(password={'<set>' if self.password else '<unset>'})"

    __str__ = __repr__

    @classmethod
    def from_environment(cls, location: FtpLocation, environ: Mapping[str, str] | None = None) -> FtpSecrets:
        """The password from the variable ``password_env`` names; its absence names the variable only."""
        environ = os.environ if environ is None else environ
        password = environ.get(location.password_env)
        if not password:
            raise ConfigError(
                f"environment variable {location.password_env} (password of the FTP location "
                f"{location.username}@{location.host}) is not set or empty"
            )
        return cls(password=password)


def tls_context(location: FtpLocation) -> ssl.SSLContext:
    """Certificate and host name checked (unless the YAML turns that off); TLS 1.2 at least."""
    if location.verify_certificate:
        try:
            context = ssl.create_default_context(cafile=location.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"FTP {location.host}: cannot read ca_file {location.ca_file}: {exc}") from None
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ReusingFtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session.

    vsftpd (``require_ssl_reuse``), FileZilla Server and ProFTPD (``TLSOptions
    NoSessionReuseRequired`` off) refuse a data connection that starts a new TLS session: that is
    how they know the data connection comes from the client that logged in, not from someone who
    raced to the passive port. ftplib starts a fresh session for each transfer, so without this
    every listing and download fails on those servers with "522 SSL connection failed".
    """

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321 - wrapped in TLS just below
        if self._prot_p:  # type: ignore[attr-defined]  # set by prot_p(), not declared in typeshed
            session = getattr(self.sock, "session", None)
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class ImplicitFtpTls(ReusingFtpTls):
    """FTPS with TLS from the first byte (port 990), as older servers and some appliances want."""

    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None) -> str:
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        raw = socket.create_connection((self.host, self.port), self.timeout, source_address=self.source_address)
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def open_control_connection(location: FtpLocation) -> ftplib.FTP:
    """TCP connect (+ TLS for implicit mode); the caller logs in and secures the data channel."""
    timeout = location.timeout_seconds
    ftp: ftplib.FTP
    if location.tls == "none":
        ftp = ftplib.FTP(timeout=timeout)  # noqa: S321 - only when the YAML says tls: none, warned
    elif location.tls == "implicit":
        ftp = ImplicitFtpTls(context=tls_context(location), timeout=timeout)
    else:
        ftp = ReusingFtpTls(context=tls_context(location), timeout=timeout)
    ftp.connect(location.host, location.effective_port, timeout=timeout)
    return ftp


@dataclass
class LoggedInSession:
    """A control connection after login, with what the server said it can do."""

    ftp: ftplib.FTP
    #: FEAT keywords (MLST, SIZE, MDTM ...); empty when the server does not answer FEAT.
    features: frozenset[str]
    #: where the server started the session; relative paths are relative to it.
    login_directory: str


def log_in(location: FtpLocation, secrets: FtpSecrets) -> LoggedInSession:
    """Connect, secure the control connection (unless ``tls: none``), log in, secure the data
    channel. Certificate, TLS and login failures are terminal TransportErrors that name the fix;
    network failures propagate as they are, for the caller's retries."""
    who = f"{location.username}@{location.host}:{location.effective_port}"
    try:
        ftp = open_control_connection(location)
    except ssl.SSLCertVerificationError as exc:
        raise _certificate_error(who, exc) from None
    except ssl.SSLError as exc:
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            raise  # the server dropped the handshake: network trouble, retried
        raise TransportError(
            f"FTPS {who}: the TLS handshake failed ({exc.reason or exc}); with tls: implicit the server "
            f"must speak TLS from the first byte (usually port 990), with tls: explicit it starts in plain text (port 21)"
        ) from None
    try:
        if isinstance(ftp, ftplib.FTP_TLS) and location.tls == "explicit":
            try:
                ftp.auth()
            except ftplib.error_perm as exc:
                raise TransportError(
                    f"FTPS {who}: the server refuses TLS (AUTH TLS answered {str(exc).strip()!r}), so nothing "
                    f"was sent: plain FTP would send the password in clear text. Ask the operator to enable FTPS "
                    f"(explicit TLS), or set tls: none only on a private link"
                ) from None
        try:
            ftp.login(location.username, secrets.password or "")
        except ftplib.error_perm as exc:
            raise TransportError(
                f"FTP authentication failed for user {location.username!r} on {location.host}:{location.effective_port}: "
                f"the server answered {str(exc).strip()!r}. Check the user name and the password in the environment "
                f"variable {location.password_env}; not retried, so the account is not locked out"
            ) from None
        if isinstance(ftp, ftplib.FTP_TLS):
            try:
                ftp.prot_p()  # the files are customer data: the data connections are encrypted too
            except ftplib.error_perm as exc:
                raise TransportError(
                    f"FTPS {who}: the server refuses an encrypted data channel (PROT P answered "
                    f"{str(exc).strip()!r}); ask the operator to allow it"
                ) from None
        ftp.set_pasv(location.passive)
        features = _features(ftp)
        if "MLST" in features:
            try:
                ftp.sendcmd("OPTS MLST type;size;modify;UNIX.mode;")
            except ftplib.error_perm:
                pass  # the server's default facts include type, size and modify on every server seen
        login_directory = ftp.pwd() or "/"
    except ssl.SSLCertVerificationError as exc:
        ftp.close()
        raise _certificate_error(who, exc) from None
    except BaseException:
        ftp.close()
        raise
    return LoggedInSession(ftp=ftp, features=features, login_directory=login_directory)


def _certificate_error(who: str, exc: ssl.SSLCertVerificationError) -> TransportError:
    return TransportError(
        f"FTPS {who}: the server's certificate is not trusted ({exc.verify_message or exc.reason}); nothing "
        f"was sent, not even the user name. If the server uses a private CA or a self-signed certificate, set ca_file "
        f"to that CA's PEM file (verify_certificate: false would let anyone on the path read the password)"
    )


def _features(ftp: ftplib.FTP) -> frozenset[str]:
    try:
        reply = ftp.sendcmd("FEAT")
    except ftplib.error_perm:
        return frozenset()
    return frozenset(line.split()[0].upper() for line in reply.splitlines()[1:] if line.startswith(" ") and line.strip())


# ---------------------------------------------------------------- listings


@dataclass(frozen=True)
class ListedEntry:
    """One directory entry as the server describes it; ``size``/``mtime`` None when not given."""

    name: str
    kind: str  # "file", "dir" or "other" (links, devices: never part of a delivery)
    size: int | None
    mtime: float | None


def parse_ftp_time(value: str) -> float:
    """``YYYYMMDDHHMMSS[.fff]`` (MDTM, MLSD ``modify``), always UTC (RFC 3659), as epoch seconds."""
    text = value.strip()
    whole, _, fraction = text.partition(".")
    stamp = datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
    return stamp + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


def parse_mlsx_facts(facts_text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for fact in facts_text.split(";"):
        key, separator, value = fact.partition("=")
        if separator:
            facts[key.strip().lower()] = value
    return facts


def mlsx_entry(name: str, facts: dict[str, str]) -> ListedEntry:
    raw_type = facts.get("type", "").lower()
    # ProFTPD reports links as "type=OS.unix=slink:<target>"; servers that follow links (vsftpd,
    # pyftpdlib) report the file linked to, which is then what a download reads.
    if raw_type == "file":
        kind = "file"
    elif raw_type in ("dir", "cdir", "pdir"):
        kind = "dir"
    else:
        kind = "other"
    size = int(facts["size"]) if facts.get("size", "").isdigit() else None
    try:
        mtime = parse_ftp_time(facts["modify"]) if facts.get("modify") else None
    except ValueError:
        mtime = None  # an unreadable time: the file is then judged complete by its size alone
    return ListedEntry(name=posixpath.basename(name.rstrip("/")) or name, kind=kind, size=size, mtime=mtime)


def parse_mlst_reply(reply: str) -> ListedEntry | None:
    """The entry of an ``MLST path`` reply (``250-...`` / `` facts; name`` / ``250 End``)."""
    for line in reply.splitlines()[1:]:
        if line.startswith(" "):
            facts_text, _, name = line[1:].partition(" ")
            return mlsx_entry(name, parse_mlsx_facts(facts_text))
    return None


_UNIX_LINE = re.compile(
    r"^(?P<mode>[-dlbcps][-rwxsStT]{9})[+@.]?\s+\d+\s+\S+\s+\S+\s+(?P<size>\d+)\s+"
    r"(?P<date>\w{3}\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4}))\s(?P<name>.+)$"
)
_DOS_LINE = re.compile(
    r"^\d{2}-\d{2}-\d{2,4}\s+\d{1,2}:\d{2}(?:[AaPp][Mm])?\s+(?P<size><DIR>|\d+)\s+(?P<name>.+)$"
)


class UnreadableListing(ValueError):
    """A LIST line in a format we do not know: guessing would drop or invent files silently."""


def parse_list_line(line: str) -> ListedEntry | None:
    """One line of a LIST reply (Unix ``ls -l`` or Windows/IIS format); None for ``total N``.

    LIST dates have minute precision at best and no year for recent files, so sizes and times
    from here are replaced by SIZE and MDTM answers where the server gives them.
    """
    if not line.strip() or re.match(r"^total\s+\d+$", line.strip()):
        return None
    unix = _UNIX_LINE.match(line)
    if unix:
        mode = unix.group("mode")[0]
        name = unix.group("name")
        if mode == "l":
            name = name.split(" -> ", 1)[0]
        kind = {"-": "file", "d": "dir"}.get(mode, "other")
        return ListedEntry(name=name, kind=kind, size=int(unix.group("size")), mtime=None)
    dos = _DOS_LINE.match(line)
    if dos:
        is_dir = dos.group("size") == "<DIR>"
        return ListedEntry(
            name=dos.group("name"),
            kind="dir" if is_dir else "file",
            size=None if is_dir else int(dos.group("size")),
            mtime=None,
        )
    raise UnreadableListing(line)
