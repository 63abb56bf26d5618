"""FTP and FTPS transport on ftplib: explicit or implicit TLS with a verified certificate, or
plain FTP when the connection YAML explicitly says ``tls: none``.

The guarantees are the SFTP transport's: every call runs on one reused control connection and
is retried on a fresh one (exponential backoff, up to ``location.retries``) when the network
fails or the server answers 4xx; every operation is idempotent, so a retry after a lost reply
does no harm. 5xx answers (wrong password, permission denied, no such file) are terminal and
name host, path and the fix: retrying a wrong password only locks the account.

Downloads land under a temporary local name and are renamed after the byte count matches the
listing; uploads go to ``<name>.part`` on the server and are renamed (RNFR/RNTO) when complete,
so a consumer never sees a half-written export under its final name.
"""

from __future__ import annotations

import ftplib
import logging
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cdp_pipeline.config.connection import PLAIN_FTP_WARNING, FtpLocation
from cdp_pipeline.errors import ConfigError, FileVanishedError, TransientTransportError, TransportError
from cdp_pipeline.transports.base import RemoteFile, Transport
from cdp_pipeline.transports.ftp_session import (
    FtpSecrets,
    ListedEntry,
    UnreadableListing,
    log_in,
    mlsx_entry,
    parse_ftp_time,
    parse_list_line,
    parse_mlst_reply,
    parse_mlsx_facts,
)
from cdp_pipeline.transports.transfer_checks import (
    LocalWriteError,
    RemoteFileGrew,
    check_before_download,
    check_upload_size,
    download_size_matches,
    failed_download_size,
    local_write_failure,
    open_private_download,
    upload_size,
)

__all__ = ["FtpSecrets", "FtpTransport"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Back off at most this long between two attempts, so retries=10 cannot stall a run for hours.
_MAX_BACKOFF_SECONDS = 60.0
# Bytes per read/write call of a transfer: large enough that a TLS record per call stays cheap.
_BLOCK_BYTES = 256 * 1024
# Failures of the connection itself, as opposed to an answer about a file. After one of these the
# control connection's replies are out of step or gone: it is closed and the call retried.
_CONNECTION_FAILURES = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


class FtpTransport(Transport):
    """One FTP account. Opens its control connection on first use and reuses it for every call."""

    def __init__(
        self,
        location: FtpLocation,
        secrets: FtpSecrets | None = None,
        *,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """``secrets`` default to the environment variable ``location.password_env`` names."""
        self.location = location
        self.secrets = secrets if secrets is not None else FtpSecrets.from_environment(location)
        if not self.secrets.password:
            raise ConfigError(f"FTP {self._who()}: no password (set the environment variable {location.password_env})")
        self._backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._ftp: ftplib.FTP | None = None
        self._features: frozenset[str] = frozenset()
        self._login_directory = "/"
        self._lock = threading.RLock()
        #: TCP connections attempted so far (a retry opens a new one); lets callers see retries happen.
        self.connection_attempts = 0
        host = f"[{location.host}]" if ":" in location.host else location.host
        scheme = "ftp" if location.tls == "none" else "ftps"
        self.uri = f"{scheme}://{location.username}@{host}:{location.effective_port}"

    # -------------------------------------------------------------- public API

    def close(self) -> None:
        with self._lock:
            ftp, self._ftp = self._ftp, None
            if ftp is None:
                return
            try:
                ftp.quit()
            except Exception:  # noqa: BLE001, S110 - a dead connection may fail to say goodbye; it is gone either way
                pass
            ftp.close()

    def resolve(self, remote_path: str) -> str:
        """The path sent to the server: relative paths are joined to ``home_directory``."""
        path = remote_path or "."
        if "\r" in path or "\n" in path:
            # FTP commands are lines: a line break in a name would end the command and start another.
            raise TransportError(f"{self.uri}: {path!r} contains a line break; FTP cannot address such a name")
        home = self.location.home_directory
        if home and not path.startswith("/"):
            path = posixpath.join(home, path)
        return posixpath.normpath(path)

    def list_files(self, directory: str) -> list[RemoteFile]:
        remote_directory = self.resolve(directory)

        def list_directory(ftp: ftplib.FTP) -> list[RemoteFile]:
            entries = self._list(ftp, remote_directory)
            files = [
                RemoteFile(path=posixpath.join(remote_directory, entry.name), size=entry.size or 0, mtime=entry.mtime or 0.0)
                for entry in entries
                if entry.kind == "file"  # links and directories are never part of a delivery
            ]
            return sorted(files, key=lambda remote: remote.path)

        return self._with_retries(f"list {remote_directory}", list_directory)

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        local_path = Path(local_path)
        remote_path = self.resolve(remote.path)
        return self._with_retries(f"download {remote_path}", lambda ftp: self._download_once(ftp, remote, remote_path, local_path))

    def upload(self, local_path: Path, remote_path: str) -> int:
        local_path = Path(local_path)
        target = self.resolve(remote_path)
        return self._with_retries(f"upload {target}", lambda ftp: self._upload_once(ftp, local_path, target))

    def rename(self, remote_path: str, new_path: str) -> None:
        source = self.resolve(remote_path)
        target = self.resolve(new_path)

        def move(ftp: ftplib.FTP) -> None:
            if not self._is_file(ftp, source):
                if self._is_file(ftp, target):
                    return  # done by an earlier attempt whose reply was lost
                raise FileVanishedError(f"{self._where(source)}: cannot rename, the file is gone (and {target} does not exist)")
            self._make_directories(ftp, posixpath.dirname(target))
            # RNTO replaces an existing file on most servers; the interface promises to replace nothing.
            if self._stat(ftp, target) is not None:
                raise TransportError(f"{self.uri}: cannot rename {source} to {target}: the target already exists")
            try:
                ftp.rename(source, target)
            except ftplib.error_perm as exc:
                if not self._is_file(ftp, source) and self._is_file(ftp, target):
                    return
                raise self._path_error(f"cannot rename {source} to", target, exc) from None

        self._with_retries(f"rename {source}", move)

    def delete(self, remote_path: str) -> None:
        target = self.resolve(remote_path)

        def remove(ftp: ftplib.FTP) -> None:
            try:
                ftp.delete(target)
            except ftplib.error_perm as exc:
                if self._stat(ftp, target) is None:
                    return
                raise self._path_error("cannot delete", target, exc) from None

        self._with_retries(f"delete {target}", remove)

    def exists(self, remote_path: str) -> bool:
        target = self.resolve(remote_path)
        return self._with_retries(f"stat {target}", lambda ftp: self._is_file(ftp, target))

    # -------------------------------------------------------------- transfers

    def _download_once(self, ftp: ftplib.FTP, remote: RemoteFile, remote_path: str, local_path: Path) -> int:
        where = self._where(remote_path)
        current = self._stat(ftp, remote_path)
        check_before_download(
            where,
            exists=current is not None,
            is_regular_file=current is not None and current.kind == "file",
            size_now=None if current is None else current.size,
            listed_size=remote.size,
        )
        descriptor, temp_name = open_private_download(local_path)
        received = 0

        def write(chunk: bytes) -> None:
            nonlocal received
            if received + len(chunk) > remote.size:
                raise RemoteFileGrew()
            try:
                os.write(descriptor, chunk)
            except OSError as exc:
                raise LocalWriteError(exc) from None
            received += len(chunk)

        try:
            try:
                ftp.retrbinary(f"RETR {remote_path}", write, blocksize=_BLOCK_BYTES)
            except RemoteFileGrew:
                self._drop_connection()  # the transfer was abandoned; its reply would be out of step
                raise FileVanishedError(f"{where} grew during the download beyond the {remote.size} bytes listed") from None
            except LocalWriteError as failure:
                self._drop_connection()
                raise local_write_failure(failure.error, where=where, temp_name=temp_name, local_path=local_path) from None
            except ftplib.error_perm as exc:
                if self._stat(ftp, remote_path) is None:
                    raise FileVanishedError(f"{where} is gone since it was listed") from None
                raise self._path_error("cannot read", remote_path, exc) from None
            written = os.fstat(descriptor).st_size
            os.close(descriptor)
            descriptor = -1
            if not download_size_matches(listed_size=remote.size, received=received, written=written):
                after = self._stat(ftp, remote_path)
                raise failed_download_size(
                    where, listed_size=remote.size, received=received, size_now=None if after is None else after.size, still_exists=after is not None
                )
            os.replace(temp_name, local_path)
            temp_name = ""
            return written
        finally:
            if descriptor >= 0:
                os.close(descriptor)
            if temp_name:
                Path(temp_name).unlink(missing_ok=True)

    def _upload_once(self, ftp: ftplib.FTP, local_path: Path, target: str) -> int:
        part = target + ".part"
        local_size = upload_size(local_path)
        self._make_directories(ftp, posixpath.dirname(target))
        try:
            with local_path.open("rb") as local_file:
                try:
                    ftp.storbinary(f"STOR {part}", local_file, blocksize=_BLOCK_BYTES)
                except ftplib.error_perm as exc:
                    raise self._path_error("cannot write", part, exc) from None
            stored = self._stat(ftp, part)
            check_upload_size(self._where(part), local_size=local_size, stored_size=None if stored is None else stored.size, stored=stored is not None)
            self._replace(ftp, part, target)
        except BaseException as exc:
            # No half-written export may stay behind. With the connection gone it cannot be removed
            # now; the retry overwrites it, and readers skip "*.part".
            if not isinstance(exc, _CONNECTION_FAILURES) and self._ftp is ftp:
                try:
                    ftp.delete(part)
                except Exception:  # noqa: BLE001, S110 - the .part may not exist; the original error matters
                    pass
            raise
        return local_size

    def _replace(self, ftp: ftplib.FTP, part: str, target: str) -> None:
        try:
            ftp.rename(part, target)
            return
        except ftplib.error_perm as exc:
            # Windows servers (IIS, FileZilla Server) refuse RNTO onto an existing file; POSIX ones
            # replace it atomically. Only then is the old file removed first.
            if self._stat(ftp, target) is None:
                raise self._path_error(f"cannot rename {part} to", target, exc) from None
        try:
            ftp.delete(target)
            ftp.rename(part, target)
        except ftplib.error_perm as exc:
            raise self._path_error(f"cannot replace {target} with", part, exc) from None

    # -------------------------------------------------------------- remote facts

    def _list(self, ftp: ftplib.FTP, directory: str) -> list[ListedEntry]:
        lines: list[str] = []
        if "MLST" in self._features:  # RFC 3659: MLSD comes with MLST; exact sizes and UTC times
            try:
                ftp.retrlines(f"MLSD {directory}", lines.append)
            except ftplib.error_perm as exc:
                raise self._path_error("cannot list directory", directory, exc) from None
            entries = []
            for line in lines:
                facts_text, _, name = line.partition(" ")
                entries.append(mlsx_entry(name, parse_mlsx_facts(facts_text)))
            return entries
        try:
            ftp.retrlines(f"LIST {directory}", lines.append)
        except ftplib.error_perm as exc:
            raise self._path_error("cannot list directory", directory, exc) from None
        if not lines and not self._is_directory(ftp, directory):
            # vsftpd answers LIST of a missing directory with an empty listing and 226.
            raise TransportError(f"{self._where(directory)}: directory does not exist; create it or fix files.directory")
        listed: list[ListedEntry] = []
        for line in lines:
            try:
                entry = parse_list_line(line)
            except UnreadableListing:
                raise TransportError(
                    f"{self._where(directory)}: the server's LIST line {line[:120]!r} is in a format this client does "
                    f"not read, and the server offers no MLSD; ask its operator to enable MLSD"
                ) from None
            if entry is None:
                continue
            if entry.kind == "file":
                exact = self._stat(ftp, posixpath.join(directory, entry.name))
                if exact is None:
                    continue  # removed between LIST and SIZE
                entry = ListedEntry(entry.name, "file", exact.size if exact.size is not None else entry.size, exact.mtime)
            listed.append(entry)
        return listed

    def _stat(self, ftp: ftplib.FTP, path: str) -> ListedEntry | None:
        """What is at ``path``: MLST when offered, else SIZE + MDTM (files only); None when absent."""
        if "MLST" in self._features:
            try:
                return parse_mlst_reply(ftp.sendcmd(f"MLST {path}"))
            except ftplib.error_perm:
                return None
        ftp.voidcmd("TYPE I")  # SIZE is refused (or counts line ends) in ASCII mode
        try:
            size = ftp.size(path)
        except ftplib.error_perm:
            if self._is_directory(ftp, path):
                return ListedEntry(posixpath.basename(path), "dir", None, None)
            return None
        mtime = None
        if "MDTM" in self._features:
            try:
                mtime = parse_ftp_time(ftp.sendcmd(f"MDTM {path}")[4:])
            except (ftplib.error_perm, ValueError):
                mtime = None
        return ListedEntry(posixpath.basename(path), "file", size, mtime)

    def _is_file(self, ftp: ftplib.FTP, path: str) -> bool:
        entry = self._stat(ftp, path)
        return entry is not None and entry.kind == "file"

    def _is_directory(self, ftp: ftplib.FTP, path: str) -> bool:
        if "MLST" in self._features:
            entry = self._stat(ftp, path)
            return entry is not None and entry.kind == "dir"
        try:
            ftp.cwd(path)
        except ftplib.error_perm:
            return False
        ftp.cwd(self._login_directory)  # relative paths are relative to the login directory
        return True

    def _make_directories(self, ftp: ftplib.FTP, directory: str) -> None:
        if directory in ("", ".", "/"):
            return
        entry = self._stat(ftp, directory)
        if entry is not None:
            if entry.kind != "dir":
                raise TransportError(f"{self._where(directory)} exists and is not a directory")
            return
        self._make_directories(ftp, posixpath.dirname(directory))
        try:
            ftp.mkd(directory)
        except ftplib.error_perm as exc:
            if not self._is_directory(ftp, directory):  # another client may have created it meanwhile
                raise self._path_error("cannot create directory", directory, exc) from None

    # -------------------------------------------------------------- messages

    def _path_error(self, action: str, path: str, exc: ftplib.Error) -> TransportError:
        reply = str(exc).strip()
        fix = "check that it exists and that the FTP user may access it"
        if reply.startswith(("550", "553")) and action.startswith(("cannot write", "cannot create", "cannot rename", "cannot replace", "cannot delete")):
            fix = "check that the FTP user may write there (the server refused it)"
        return TransportError(f"{self.uri}: {action} {path}: the server answered {reply!r}; {fix}")

    def _where(self, path: str) -> str:
        """A path as a URI for messages; ``/~/`` marks a path relative to the login directory."""
        return f"{self.uri}{path}" if path.startswith("/") else f"{self.uri}/~/{path}"

    def _who(self) -> str:
        location = self.location
        return f"{location.username}@{location.host}:{location.effective_port}"

    # -------------------------------------------------------------- retries

    def _with_retries(self, action: str, operation: Callable[[ftplib.FTP], _T]) -> _T:
        attempts = self.location.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with self._lock:
                    return operation(self._connection())
            except TransientTransportError as exc:
                failure: BaseException = exc
            except TransportError:
                raise
            except ftplib.error_perm as exc:
                raise TransportError(f"FTP {self._who()}: {action} failed: the server answered {str(exc).strip()!r}") from None
            except _CONNECTION_FAILURES as exc:
                failure = exc
            with self._lock:
                # No QUIT: on a stalled connection it would wait another timeout_seconds for a reply.
                self._drop_connection()
            if attempt == attempts:
                raise TransientTransportError(
                    f"FTP {self._who()}: {action} failed after {attempts} attempt(s): {_describe(failure)}"
                ) from failure
            delay = min(self._backoff_seconds * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS)
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, so many runs retrying at once do not stampede the server
            logger.warning(
                "FTP %s: %s failed (%s); retry %d of %d in %.1f s", self._who(), action, _describe(failure), attempt, attempts - 1, delay
            )
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    # -------------------------------------------------------------- connecting

    def _connection(self) -> ftplib.FTP:
        if self._ftp is None:
            self._ftp = self._connect()
        return self._ftp

    def _connect(self) -> ftplib.FTP:
        self.connection_attempts += 1
        if self.location.tls == "none":
            logger.warning(PLAIN_FTP_WARNING, self.location.host, self.location.effective_port)
        session = log_in(self.location, self.secrets)
        self._features, self._login_directory = session.features, session.login_directory
        logger.info("FTP connected to %s", self.uri)
        return session.ftp


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
