"""Test a connection before any data moves (Airbyte's "check connection", Fivetran's setup tests).

``check_connection`` runs every check a connection's configuration implies and returns one
:class:`CheckResult` per check: the environment variables it names are set, its servers accept the
configured credentials (and, for SFTP, present the pinned host key), each import goal's folder can
be listed and a matching file read, each folder that file handling or an export writes to takes a
tiny probe file (written, renamed and deleted again), and the PGP keys import, match their pins and
have not expired.

Every check runs on its own, so one failure never hides the others; only checks that would repeat
the same failure (every SFTP call after the login failed) are reported as "not checked", which
counts as failed: a permission that was not proven is never reported as fine.

Plain Python, no Dagster: the CLI (``cdp-pipeline check``) and the per-connection Dagster job both
call this. Secrets are read from the environment variables the configuration names and never
appear in a result.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cdp_pipeline.check_results import CheckResult, variable_checks
from cdp_pipeline.config.connection import (
    Connection,
    ExportGoal,
    FtpLocation,
    GroupImportGoal,
    LocalLocation,
    Location,
    PgpSettings,
    ProfileImportGoal,
    S3Location,
    SftpLocation,
)
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.crypto.key_validity import KeyInfo
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.deliveries import goal_claims
from cdp_pipeline.errors import CdpError
from cdp_pipeline.store_access_check import store_checks
from cdp_pipeline.transports.base import RemoteFile, Transport, is_temporary_upload

ImportGoal = GroupImportGoal | ProfileImportGoal

#: The probe file's name: hidden, and ending in ``.tmp`` so the sensor takes it for an upload in
#: progress and never offers it as a delivery, even if a failed clean-up leaves it behind.
PROBE_PREFIX = ".cdp_check_"
PROBE_SUFFIX = ".tmp"
_PROBE_BYTES = b"cdp_pipeline connection check: this file is removed again at once\n"


@dataclass
class _Target:
    """One remote (the source or an export goal's own location) and what is checked on it."""

    label: str
    location: Location
    list_goals: list[ImportGoal] = field(default_factory=list)
    writes: dict[tuple[str, str], list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------- entry point


def check_connection(project: ProjectConfig, connection: Connection) -> list[CheckResult]:
    """Run every check of ``connection``; never raises for a failing check (it becomes a result).

    Secrets come from ``os.environ``, as the transports and the Dagster resources read them.
    """
    env = os.environ
    results = _environment_checks(connection, env)
    for target in _targets(connection):
        results += _remote_checks(project, connection, target)
    if connection.pgp is not None:
        results += _pgp_checks(connection, connection.pgp, env)
    # Every import of the connection goes through the store's own buckets too: a missing key or
    # permission there would fail the first step of the first delivery instead.
    results += store_checks(project, env)
    return results


def all_passed(results: list[CheckResult]) -> bool:
    return bool(results) and all(result.passed for result in results)


def result_lines(results: list[CheckResult]) -> list[str]:
    """One line per check, as the CLI prints them: ``ok``/``FAIL``, the check, the detail, the fix."""
    lines = []
    for result in results:
        line = f"{'ok  ' if result.passed else 'FAIL'}  {result.name}: {result.detail}"
        if result.fix and not result.passed:
            line += f" -> {result.fix}"
        lines.append(line)
    return lines


def markdown_table(results: list[CheckResult]) -> str:
    """The results as a Markdown table (the Dagster job's metadata)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| result | check | detail | what to fix |", "|---|---|---|---|"]
    rows += [
        f"| {'ok' if r.passed else '**FAIL**'} | {cell(r.name)} | {cell(r.detail)} | {cell(r.fix if not r.passed else '')} |"
        for r in results
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------- environment variables


def _named_variables(connection: Connection) -> list[tuple[str, str]]:
    """(variable, what it holds) for every ``*_env`` setting of the connection, in config order."""
    named: list[tuple[str, str]] = []
    locations: list[tuple[str, Location]] = [("source", connection.source)]
    locations += [(f"goal {g.name} target", g.target.location) for g in connection.export_goals if g.target.location is not None]
    for where, location in locations:
        if isinstance(location, SftpLocation):
            auth = location.auth
            named += [(n, f"{where}: SFTP {what}") for n, what in (
                (auth.password_env, "password"), (auth.private_key_env, "private key"), (auth.passphrase_env, "key passphrase")
            ) if n]
        elif isinstance(location, S3Location):
            named += [(n, f"{where}: S3 {what}") for n, what in (
                (location.access_key_id_env, "access key id"),
                (location.secret_access_key_env, "secret access key"),
                (location.session_token_env, "session token"),
            ) if n]
    pgp = connection.pgp
    if pgp is not None:
        named += [(n, f"PGP private key {i}") for i, n in enumerate(pgp.private_keys_env, start=1)]
        named += [(n, f"PGP {what}") for n, what in (
            (pgp.passphrase_env, "passphrase"), (pgp.public_key_env, "recipient's public key"), (pgp.signer_public_key_env, "signer's public key")
        ) if n]
    # One check per variable, however many settings name it (an export target often shares the source's keys).
    purposes: dict[str, list[str]] = {}
    for name, purpose in named:
        purposes.setdefault(name, []).append(purpose)
    return [(name, "; ".join(dict.fromkeys(found))) for name, found in purposes.items()]


def unset_variables(connection: Connection, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, what it holds) for each ``*_env`` the connection names that is unset or empty;
    ``validate`` reports them without the network, never showing a value."""
    return [(name, purpose) for name, purpose in _named_variables(connection) if not env.get(name)]


def _environment_checks(connection: Connection, env: Mapping[str, str]) -> list[CheckResult]:
    return variable_checks(_named_variables(connection), env)


# ---------------------------------------------------------------- what each remote must allow


def _import_writes(goal: ImportGoal) -> list[tuple[str, str, str]]:
    """(folder, rename target folder, reason) for the file handling of an import goal."""
    directory = posixpath.normpath(goal.files.directory)
    after = goal.files.after_import
    needs = []
    if after.action in ("done_suffix", "delete"):
        needs.append((directory, directory, f"goal {goal.name}: after_import {after.action}"))
    elif after.action == "move_to_done":
        needs.append((directory, posixpath.join(directory, after.done_directory), f"goal {goal.name}: after_import move_to_done"))
    if after.quarantine_directory:
        needs.append((directory, posixpath.join(directory, after.quarantine_directory), f"goal {goal.name}: quarantine_directory"))
    return needs


def _export_folders(goal: ExportGoal) -> list[str]:
    folders = [posixpath.normpath(goal.target.directory)]
    if goal.timeline is not None and goal.timeline.directory:
        # The timeline folder is named per run ({date}, {run_id} ...) and created by the upload:
        # the permission is needed in the last folder of its path without a placeholder.
        parts = goal.timeline.directory.split("/")
        fixed = parts[: next((i for i, part in enumerate(parts) if "{" in part), len(parts))]
        folders.append(posixpath.normpath("/".join(fixed) or "."))
    return list(dict.fromkeys(folders))


def _targets(connection: Connection) -> list[_Target]:
    source = _Target(label="source", location=connection.source, list_goals=list(connection.import_goals))
    targets = [source]
    for goal in connection.import_goals:
        for directory, rename_to, reason in _import_writes(goal):
            source.writes.setdefault((directory, rename_to), []).append(reason)
    for export in connection.export_goals:
        target = source
        if export.target.location is not None:
            target = _Target(label=f"goal {export.name} target", location=export.target.location)
            targets.append(target)
        for directory in _export_folders(export):
            target.writes.setdefault((directory, directory), []).append(f"goal {export.name}: export")
    return targets


# ---------------------------------------------------------------- transports


def open_transport(project: ProjectConfig, location: Location) -> Transport:
    """The transport the pipeline would use, built from the same settings and secrets.

    The one place this module names transport classes. An SFTP check does not retry: it reports
    what the server does now, and a retry loop with backoff would only make a failure slow.
    """
    if isinstance(location, LocalLocation):
        from cdp_pipeline.transports.local import LocalTransport

        root = Path(location.path).expanduser()
        return LocalTransport(root if root.is_absolute() else project.home / root)
    if isinstance(location, SftpLocation):
        from cdp_pipeline.transports.sftp import SftpTransport

        return SftpTransport(location.model_copy(update={"retries": 0}))
    if isinstance(location, S3Location):
        from cdp_pipeline.transports.s3 import S3Transport

        return S3Transport.from_environment(location)
    if isinstance(location, FtpLocation):
        from cdp_pipeline.transports.ftp import FtpTransport

        return FtpTransport(location.model_copy(update={"retries": 0}))
    raise TypeError(f"unsupported location {location!r}")


def _describe_location(location: Location) -> str:
    if isinstance(location, SftpLocation):
        pin = location.host_key_fingerprint or "the known_hosts_line"
        return f"sftp://{location.username}@{location.host}:{location.port} (host key pinned to {pin}, auth {location.auth.method})"
    if isinstance(location, FtpLocation):
        tls = {"explicit": "FTPS, explicit TLS", "implicit": "FTPS, implicit TLS", "none": "plain FTP, no TLS"}[location.tls]
        return f"ftp://{location.username}@{location.host}:{location.effective_port} ({tls})"
    if isinstance(location, S3Location):
        where = location.endpoint_url or f"AWS region {location.region or '(default)'}"
        return f"s3://{location.bucket}/{location.prefix} at {where}"
    return f"local folder {location.path}"


_CONNECT_FIX = {
    "sftp": "check host, port, username and the credentials the env variables hold; if the host key changed, confirm the "
    "new one with the server's operator and update host_key_fingerprint (ssh-keyscan -p PORT HOST | ssh-keygen -lf -)",
    "s3": "check bucket, region, endpoint_url and the access key the env variables hold; the detail names the S3 error",
    "local": "create the folder or fix source.path (relative paths are under CDP_HOME)",
    "ftp": "check host, port, tls, username and the password the env variable holds; a certificate error means the "
    "server's certificate does not chain to a trusted CA or does not name the host (set ca_file for a private CA)",
}


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, CdpError) else f"{type(exc).__name__}: {text}"


def _attempt(action: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, action()
    except Exception as exc:  # noqa: BLE001 - every failure of a check is a result, never a traceback
        return False, _error_text(exc)


def _remote_checks(project: ProjectConfig, connection: Connection, target: _Target) -> list[CheckResult]:
    kind = target.location.type
    connect_name = f"connect {target.label}"
    try:
        transport = open_transport(project, target.location)
    except Exception as exc:  # noqa: BLE001 - a missing secret or bad key text is a failed check
        results = [CheckResult(connect_name, False, f"{_describe_location(target.location)}: {_error_text(exc)}", _CONNECT_FIX[kind])]
        return results + _not_checked(target, "the transport could not be set up (see the connect check)")
    with transport:
        ok, detail = _attempt(lambda: _connect(transport, target.location))
        results = [CheckResult(connect_name, ok, detail if ok else f"{_describe_location(target.location)}: {detail}",
                               "" if ok else _CONNECT_FIX[kind])]
        if not ok and kind != "s3":
            # SFTP: every further call would log in again and fail the same way; a local root that
            # does not exist holds no folders. S3 requests are independent, so they still run.
            return results + _not_checked(target, "the connection failed (see the connect check)")
        for goal in target.list_goals:
            results += _folder_checks(transport, connection, goal)
        for (directory, rename_to), reasons in target.writes.items():
            results.append(_write_probe(transport, target.label, directory, rename_to, reasons))
    return results


def _connect(transport: Transport, location: Location) -> str:
    if isinstance(location, SftpLocation):
        # A stat of a name that does not exist: needs the TCP connection, the pinned host key and
        # the login, but no permission on any folder.
        transport.exists(_probe_name())
        return f"{transport.uri}: host key matches the pin, logged in with {location.auth.method}"
    files = transport.list_files("")
    if isinstance(location, FtpLocation):
        return f"{transport.uri}: logged in ({'certificate verified' if location.tls != 'none' and location.verify_certificate else 'no certificate check'})"
    if isinstance(location, S3Location):
        return f"{transport.uri}: credentials, region and endpoint accepted (the prefix lists {_count(len(files), 'object')})"
    return f"{transport.uri}: the folder exists ({_count(len(files), 'file')})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _not_checked(target: _Target, why: str) -> list[CheckResult]:
    results = []
    for goal in target.list_goals:
        results.append(CheckResult(f"list {goal.name}", False, f"not checked: {why}", "fix the connect check first"))
        results.append(CheckResult(f"read {goal.name}", False, f"not checked: {why}", "fix the connect check first"))
    for (directory, rename_to) in target.writes:
        results.append(CheckResult(_write_name(target.label, directory, rename_to), False, f"not checked: {why}", "fix the connect check first"))
    return results


# ---------------------------------------------------------------- folders: list and read


def _claimed(goal: ImportGoal, listing: list[RemoteFile]) -> list[RemoteFile]:
    """Files the goal would take part in a delivery (root, linked or marker files), uploads in progress left out."""
    return [f for f in listing if not is_temporary_upload(f.name) and goal_claims(goal, f.name)]


def _is_marker(goal: ImportGoal, remote: RemoteFile) -> bool:
    readiness = goal.files.readiness
    return readiness.mode == "marker" and remote.name.endswith(readiness.marker_suffix)


def _folder_checks(transport: Transport, connection: Connection, goal: ImportGoal) -> list[CheckResult]:
    directory = goal.files.directory
    where = f"{transport.uri}/{directory}"
    try:
        listing = transport.list_files(directory)
    except Exception as exc:  # noqa: BLE001
        fix = "create the folder or fix files.directory, and give the account permission to list it"
        return [
            # The transports' messages name the folder already.
            CheckResult(f"list {goal.name}", False, _error_text(exc), fix),
            CheckResult(f"read {goal.name}", False, "not checked: the folder cannot be listed", "fix the list check first"),
        ]
    claimed = _claimed(goal, listing)
    patterns = ", ".join(repr(s.pattern) for s in (goal.files.root, *goal.files.linked))
    results = [CheckResult(
        f"list {goal.name}", True,
        f"{where}: {_count(len(listing), 'file')}, {len(claimed)} match the goal's patterns ({patterns})",
    )]
    data_files = sorted((f for f in claimed if not _is_marker(goal, f)), key=lambda f: (f.size, f.path))
    if not data_files:
        results.append(CheckResult(
            f"read {goal.name}", True,
            f"{where}: no matching file present, so reading is proven by the first delivery",
        ))
        return results
    smallest = data_files[0]
    if smallest.size > connection.max_file_bytes:
        results.append(CheckResult(
            f"read {goal.name}", False,
            f"{where}: the smallest matching file {smallest.name} has {smallest.size:,} bytes, over max_file_gb",
            "raise max_file_gb or ask the partner for smaller files",
        ))
        return results
    ok, detail = _attempt(lambda: _read(transport, smallest))
    results.append(CheckResult(
        f"read {goal.name}", ok, f"{where}: {detail}" if ok else detail,
        "" if ok else "give the account permission to read (download) the files in the folder",
    ))
    return results


def _read(transport: Transport, remote: RemoteFile) -> str:
    # The Transport interface has no ranged read, so the smallest matching file is downloaded
    # whole into a private temporary folder and removed at once; only its size is reported,
    # never its content (customer data).
    with tempfile.TemporaryDirectory(prefix="cdp-check-") as folder:
        local = Path(folder) / "probe"
        received = transport.download(remote, local)
        with local.open("rb") as handle:
            first = handle.read(64)
    return f"read {remote.name} ({received:,} bytes, the smallest matching file; first {len(first)} bytes received)"


# ---------------------------------------------------------------- folders: write probe


def _probe_name() -> str:
    return f"{PROBE_PREFIX}{secrets.token_hex(8)}{PROBE_SUFFIX}"


def _write_name(label: str, directory: str, rename_to: str) -> str:
    moved = "" if rename_to == directory else f" -> {rename_to}"
    where = "" if label == "source" else f" ({label})"
    return f"write {directory}{moved}{where}"


@contextmanager
def _probe_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cdp-check-") as folder:
        path = Path(folder) / "probe.tmp"
        path.write_bytes(_PROBE_BYTES)
        yield path


def _write_probe(transport: Transport, label: str, directory: str, rename_to: str, reasons: list[str]) -> CheckResult:
    """Write a probe file, rename it (into ``rename_to`` when file handling moves files there),
    delete it, and make sure nothing is left behind whatever step fails."""
    name = _write_name(label, directory, rename_to)
    why = "; ".join(reasons)
    token = secrets.token_hex(8)
    first = posixpath.join(directory, f"{PROBE_PREFIX}{token}{PROBE_SUFFIX}")
    second = posixpath.join(rename_to, f"{PROBE_PREFIX}{token}_renamed{PROBE_SUFFIX}")
    never_written = posixpath.join(directory, f"{PROBE_PREFIX}{token}_absent{PROBE_SUFFIX}")
    steps: list[str] = []
    failure: str | None = None
    try:
        # Delete first a name that was never written: S3 answers it with 403 when s3:DeleteObject
        # is missing, and then the probe is not written at all, since nothing could remove it again.
        try:
            transport.delete(never_written)
        except Exception as exc:  # noqa: BLE001
            raise _DeleteRefused(_error_text(exc)) from exc
        with _probe_file() as local:
            transport.upload(local, first)
        steps.append("write")
        transport.rename(first, second)
        steps.append("rename" if rename_to == directory else f"rename into {rename_to}")
        transport.delete(second)
        steps.append("delete")
    except _DeleteRefused as refused:
        failure = f"{refused}; so no probe was written (it could not have been removed again)"
    except Exception as exc:  # noqa: BLE001
        failure = _error_text(exc)
    leftovers = _clean_up(transport, [first, second])
    where = f"{transport.uri}/{directory}"
    if failure is None and not leftovers:
        return CheckResult(name, True, f"{where}: {' + '.join(steps)} of a probe file ({why})")
    done = f"; succeeded: {', '.join(steps)}" if steps else ""
    left = f"; LEFT BEHIND: {', '.join(leftovers)} (remove by hand)" if leftovers else "; nothing was left behind"
    fix = "give the account permission to create, rename and delete files in this folder"
    if all(reason.endswith(": export") for reason in reasons):
        fix = ("give the account permission to create files in this folder; the check also deletes its probe, so an "
               "account that may write but not delete fails here although exports would work")
    return CheckResult(name, False, f"{where}: {failure or 'the probe file could not be removed'}{done}{left} ({why})", fix)


class _DeleteRefused(Exception):
    """The delete before the probe was refused: the probe is not written."""


def _clean_up(transport: Transport, paths: list[str]) -> list[str]:
    """Remove what a probe may have left; return what is still there (or cannot be confirmed gone)."""
    left = []
    for path in paths:
        try:
            if transport.exists(path):
                transport.delete(path)
                if transport.exists(path):
                    left.append(path)
        except Exception:  # noqa: BLE001 - reported as "left behind", the safe reading
            left.append(path)
    return left


# ---------------------------------------------------------------- PGP


def _describe_key(info: KeyInfo, now: datetime) -> str:
    user = f" ({info.user_id})" if info.user_id else ""
    if info.revoked:
        state = "REVOKED"
    elif info.expires_at is None:
        state = "does not expire"
    elif info.expires_at <= now:
        state = f"EXPIRED on {info.expires_at:%Y-%m-%d}"
    else:
        state = f"expires {info.expires_at:%Y-%m-%d} (in {info.days_left} days)"
    return f"{info.fingerprint}{user}, {state}"


def _unusable(info: KeyInfo, now: datetime) -> bool:
    return info.revoked or (info.expires_at is not None and info.expires_at <= now)


def _soon(info: KeyInfo, pgp: PgpSettings) -> str:
    if info.days_left is not None and 0 <= info.days_left <= pgp.expiry_warning_days:
        return f"; expires within pgp.expiry_warning_days ({pgp.expiry_warning_days}): plan the rotation now"
    return ""


def _key_expiries(keyring: PgpKeyring) -> list[KeyInfo]:
    """Import the keys into a throw-away GNUPGHOME (the keyring checks the pins) and read their dates."""
    with keyring:
        return keyring.key_expiries()


def _pgp_checks(connection: Connection, pgp: PgpSettings, env: Mapping[str, str]) -> list[CheckResult]:
    now = datetime.now(UTC)
    passphrase = env.get(pgp.passphrase_env) if pgp.passphrase_env else None
    results: list[CheckResult] = []
    decrypt_infos: list[tuple[str, KeyInfo | None, str]] = []
    for variable in pgp.private_keys_env:
        text = env.get(variable)
        if not text:
            decrypt_infos.append((variable, None, f"not checked: {variable} is not set"))
            continue
        try:
            infos = _key_expiries(PgpKeyring(private_keys=[text], passphrase=passphrase))
            decrypt_infos.append((variable, infos[0], ""))
        except Exception as exc:  # noqa: BLE001
            decrypt_infos.append((variable, None, _error_text(exc)))
    # During a rotation the old key may have expired while late files for it still arrive: one
    # usable private key is what imports need.
    usable = any(info is not None and not _unusable(info, now) for _, info, _ in decrypt_infos)
    for index, (variable, info, problem) in enumerate(decrypt_infos, start=1):
        name = f"pgp private key {index} ({variable})"
        if info is None:
            results.append(CheckResult(name, False, problem, f"put the armoured private key in {variable}"))
            continue
        passed = usable
        detail = f"imported {_describe_key(info, now)}{_soon(info, pgp)}"
        if _unusable(info, now) and usable:
            detail += "; another configured key is valid, so this one only decrypts late files"
        results.append(CheckResult(
            name, passed, detail,
            "" if passed else "generate a new key pair, send the public key to the partner and add it to pgp.private_keys_env",
        ))
    exports_encrypt = [g.name for g in connection.export_goals if g.target.encrypt]
    if pgp.public_key_env:
        results.append(_public_key_check(
            f"pgp public key ({pgp.public_key_env})", pgp.public_key_env, env, now, pgp,
            lambda text: PgpKeyring(public_key=text, public_key_fingerprint=pgp.public_key_fingerprint),
            pin=pgp.public_key_fingerprint, pin_name="pgp.public_key_fingerprint",
            required_for=f"exports of {', '.join(exports_encrypt)} are encrypted to it" if exports_encrypt else "",
        ))
    if pgp.signer_public_key_env:
        results.append(_public_key_check(
            f"pgp signer key ({pgp.signer_public_key_env})", pgp.signer_public_key_env, env, now, pgp,
            lambda text: PgpKeyring(signer_public_key=text, signer_fingerprint=pgp.signer_fingerprint),
            pin=pgp.signer_fingerprint, pin_name="pgp.signer_fingerprint",
            required_for="every import must be signed by it",
        ))
    return results


def _public_key_check(
    name: str,
    variable: str,
    env: Mapping[str, str],
    now: datetime,
    pgp: PgpSettings,
    keyring: Callable[[str], PgpKeyring],
    *,
    pin: str | None,
    pin_name: str,
    required_for: str,
) -> CheckResult:
    text = env.get(variable)
    if not text:
        return CheckResult(name, False, f"not checked: {variable} is not set", f"put the partner's armoured public key in {variable}")
    try:
        info = _key_expiries(keyring(text))[-1]
    except Exception as exc:  # noqa: BLE001
        return CheckResult(name, False, _error_text(exc), f"put the partner's public key in {variable} and its fingerprint in {pin_name}")
    pinned = f"matches {pin_name}" if pin else f"not pinned ({pin_name} is not set)"
    detail = f"imported {_describe_key(info, now)}, {pinned}{_soon(info, pgp)}"
    if _unusable(info, now):
        if required_for:
            return CheckResult(
                name, False, f"{detail}; {required_for}",
                f"ask the partner for their new public key and update {variable} and {pin_name} together",
            )
        detail += "; no goal uses it now"
    elif required_for:
        detail += f"; valid: {required_for}"
    return CheckResult(name, True, detail)
