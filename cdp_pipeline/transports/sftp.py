"""SFTP as a transport: list, stat, download, upload, rename and delete over one SFTP account.

The connection (host key pin, login, retries on a fresh connection) lives in
:mod:`cdp_pipeline.transports.sftp_connection`; this module turns transport calls into SFTP
requests that are safe to repeat, so a retry after a lost reply does no harm.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from cdp_pipeline.config.connection import SftpLocation
from cdp_pipeline.errors import FileVanishedError, TransportError
from cdp_pipeline.transports.base import RemoteFile, Transport
from cdp_pipeline.transports.sftp_connection import SftpConnection
from cdp_pipeline.transports.sftp_credentials import SftpSecrets
from cdp_pipeline.transports.sftp_streams import RemoteFileShrank, read_remote_file, write_remote_file
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

__all__ = ["SftpTransport"]


class SftpTransport(Transport):
    """One SFTP account. Opens its connection on first use and reuses it for every call.

    Besides the Transport interface it offers the ``ParallelDownloads`` capability.
    """

    def __init__(
        self,
        location: SftpLocation,
        secrets: SftpSecrets | None = None,
        *,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        connection: SftpConnection | None = None,
    ):
        """``secrets`` default to the environment variables ``location.auth`` names; ``connection``
        (built from the other arguments when not given) is the SSH connection the calls run on."""
        self.location = location
        self.connection = connection or SftpConnection(location, secrets, backoff_seconds=backoff_seconds, sleep=sleep)
        self.uri = self.connection.uri

    # -------------------------------------------------------------- public API

    @property
    def connection_attempts(self) -> int:
        """TCP connections attempted so far (a retry opens a new one); lets callers see retries happen."""
        return self.connection.attempts

    def close(self) -> None:
        self.connection.close()

    @property
    def parallel_downloads(self) -> int:
        """How many connections ``download_many`` may use for one delivery (``parallel_downloads``)."""
        return self.location.parallel_downloads

    def resolve(self, remote_path: str) -> str:
        """The path sent to the server: relative paths are joined to ``home_directory``."""
        path = remote_path or "."
        home = self.location.home_directory
        if home and not path.startswith("/"):
            path = posixpath.join(home, path)
        return posixpath.normpath(path)

    def list_files(self, directory: str) -> list[RemoteFile]:
        remote_directory = self.resolve(directory)

        def list_directory(sftp: paramiko.SFTPClient) -> list[RemoteFile]:
            try:
                entries = sftp.listdir_attr(remote_directory)
            except OSError as exc:
                self.connection.raise_if_lost(exc)
                raise self._path_error("cannot list directory", remote_directory, exc) from None
            files = [
                RemoteFile(
                    path=posixpath.join(remote_directory, entry.filename),
                    size=int(entry.st_size or 0),
                    mtime=float(entry.st_mtime or 0),
                )
                # READDIR attributes are lstat()'s: symlinks show as links and are left out here.
                for entry in entries
                if entry.st_mode is not None and stat.S_ISREG(entry.st_mode)
            ]
            return sorted(files, key=lambda remote: remote.path)

        return self.connection.with_retries(f"list {remote_directory}", list_directory)

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        local_path = Path(local_path)
        remote_path = self.resolve(remote.path)
        return self.connection.with_retries(
            f"download {remote_path}", lambda sftp: self._download_once(sftp, remote, remote_path, local_path)
        )

    def download_many(self, files: Sequence[tuple[RemoteFile, Path]], parallel: int = 1) -> list[int]:
        """Download several files, over up to ``parallel`` SSH connections at once.

        One connection moves ~500 MB/s on loopback (docs/benchmarks-sftp.md), but over a long link
        it is bound by its SSH window: at most 2 MiB in flight per round trip (about 70 MB/s at 30 ms).
        Separate connections multiply that. Returns the byte counts in input order. The first
        failure stops the remaining work and is raised.
        """
        if parallel <= 1 or len(files) <= 1:
            return [self.download(remote, local) for remote, local in files]
        workers = min(parallel, len(files))
        results: list[int | None] = [None] * len(files)
        pending = list(enumerate(files))
        pending_lock = threading.Lock()
        stop = threading.Event()

        def take() -> tuple[int, tuple[RemoteFile, Path]] | None:
            with pending_lock:
                return pending.pop(0) if pending and not stop.is_set() else None

        def work(worker_index: int) -> None:
            # The first worker uses this connection; the others get their own, closed at the end.
            transport = self if worker_index == 0 else self._sibling()
            try:
                while (item := take()) is not None:
                    index, (remote, local) = item
                    try:
                        results[index] = transport.download(remote, local)
                    except BaseException:
                        stop.set()
                        raise
            finally:
                if transport is not self:
                    transport.close()
                    self.connection.add_attempts(transport.connection_attempts)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sftp-download") as pool:
            futures = [pool.submit(work, index) for index in range(workers)]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [count for count in results if count is not None]

    def _sibling(self) -> SftpTransport:
        return SftpTransport(self.location, connection=self.connection.sibling())

    def upload(self, local_path: Path, remote_path: str) -> int:
        local_path = Path(local_path)
        target = self.resolve(remote_path)
        return self.connection.with_retries(f"upload {target}", lambda sftp: self._upload_once(sftp, local_path, target))

    def rename(self, remote_path: str, new_path: str) -> None:
        source = self.resolve(remote_path)
        target = self.resolve(new_path)

        def move(sftp: paramiko.SFTPClient) -> None:
            if self._lstat(sftp, source) is None:
                if self._lstat(sftp, target) is not None:
                    return  # done by an earlier attempt whose reply was lost
                raise FileVanishedError(f"{self._where(source)}: cannot rename, the file is gone (and {target} does not exist)")
            self._make_directories(sftp, posixpath.dirname(target))
            try:
                # SSH_FXP_RENAME refuses to replace an existing target, which is what we want here.
                sftp.rename(source, target)
            except OSError as exc:
                self.connection.raise_if_lost(exc)
                if self._lstat(sftp, source) is None and self._lstat(sftp, target) is not None:
                    return
                if self._lstat(sftp, target) is not None:
                    raise TransportError(f"{self.uri}: cannot rename {source} to {target}: the target already exists") from None
                raise self._path_error(f"cannot rename {source} to", target, exc) from None

        self.connection.with_retries(f"rename {source}", move)

    def delete(self, remote_path: str) -> None:
        target = self.resolve(remote_path)

        def remove(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(target)
            except OSError as exc:
                self.connection.raise_if_lost(exc)
                if self._lstat(sftp, target) is None:
                    return
                raise self._path_error("cannot delete", target, exc) from None

        self.connection.with_retries(f"delete {target}", remove)

    def exists(self, remote_path: str) -> bool:
        target = self.resolve(remote_path)

        def check(sftp: paramiko.SFTPClient) -> bool:
            attributes = self._lstat(sftp, target)
            return attributes is not None and attributes.st_mode is not None and stat.S_ISREG(attributes.st_mode)

        return self.connection.with_retries(f"stat {target}", check)

    # -------------------------------------------------------------- transfers

    def _download_once(self, sftp: paramiko.SFTPClient, remote: RemoteFile, remote_path: str, local_path: Path) -> int:
        where = self._where(remote_path)
        current = self._lstat(sftp, remote_path)
        check_before_download(
            where,
            exists=current is not None,
            is_regular_file=current is not None and current.st_mode is not None and stat.S_ISREG(current.st_mode),
            size_now=None if current is None else current.st_size,
            listed_size=remote.size,
        )
        descriptor, temp_name = open_private_download(local_path)
        try:
            grew = False
            try:
                try:
                    received = read_remote_file(sftp, remote_path, remote.size, descriptor)
                except RemoteFileShrank as shrank:
                    received = shrank.received
                except RemoteFileGrew:
                    received, grew = remote.size, True
                except LocalWriteError as failure:
                    raise local_write_failure(failure.error, where=where, temp_name=temp_name, local_path=local_path) from None
                except FileNotFoundError:
                    raise FileVanishedError(f"{where} is gone since it was listed") from None
                except OSError as exc:
                    self.connection.raise_if_lost(exc)
                    raise self._path_error("cannot read", remote_path, exc) from None
                written = os.fstat(descriptor).st_size
            finally:
                os.close(descriptor)
            if grew or not download_size_matches(listed_size=remote.size, received=received, written=written):
                after = self._lstat(sftp, remote_path)
                raise failed_download_size(
                    where,
                    listed_size=remote.size,
                    received=received,
                    size_now=None if after is None else after.st_size,
                    still_exists=after is not None,
                    grew=grew,
                )
            os.replace(temp_name, local_path)
            temp_name = ""
            return written
        finally:
            if temp_name:
                Path(temp_name).unlink(missing_ok=True)

    def _upload_once(self, sftp: paramiko.SFTPClient, local_path: Path, target: str) -> int:
        part = target + ".part"
        local_size = upload_size(local_path)
        self._make_directories(sftp, posixpath.dirname(target))
        try:
            with local_path.open("rb") as local_file:
                try:
                    write_remote_file(sftp, local_file.fileno(), local_size, part, request_bytes=self.connection.write_request_bytes())
                    stored = sftp.stat(part).st_size
                except OSError as exc:
                    self.connection.raise_if_lost(exc)
                    raise self._path_error("cannot write", part, exc) from None
            check_upload_size(self._where(part), local_size=local_size, stored_size=stored)
            try:
                sftp.posix_rename(part, target)
            except OSError as exc:
                self.connection.raise_if_lost(exc)
                # Servers without the posix-rename extension: plain RENAME refuses an existing target.
                try:
                    if self._lstat(sftp, target) is not None:
                        sftp.remove(target)
                    sftp.rename(part, target)
                except OSError as rename_exc:
                    self.connection.raise_if_lost(rename_exc)
                    raise self._path_error(f"cannot rename {part} to", target, rename_exc) from None
        except BaseException:
            # No half-written export may stay behind for a consumer to pick up. With the connection
            # gone it cannot be removed now; the retry overwrites it, and readers skip "*.part".
            if self.connection.alive():
                with contextlib.suppress(Exception):  # the .part may not exist; the original error matters
                    sftp.remove(part)
            raise
        return local_size

    # -------------------------------------------------------------- helpers

    def _lstat(self, sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return sftp.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.connection.raise_if_lost(exc)
            raise self._path_error("cannot stat", path, exc) from None

    def _make_directories(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if directory in ("", ".", "/"):
            return
        attributes = self._lstat(sftp, directory)
        if attributes is not None:
            if attributes.st_mode is not None and not stat.S_ISDIR(attributes.st_mode):
                raise TransportError(f"{self._where(directory)} exists and is not a directory")
            return
        self._make_directories(sftp, posixpath.dirname(directory))
        try:
            sftp.mkdir(directory)
        except OSError as exc:
            self.connection.raise_if_lost(exc)
            if self._lstat(sftp, directory) is None:  # another client may have created it meanwhile
                raise self._path_error("cannot create directory", directory, exc) from None

    def _path_error(self, action: str, path: str, exc: OSError) -> TransportError:
        reason = exc.strerror or (exc.args[0] if exc.args else type(exc).__name__)
        if exc.errno == errno.ENOENT:
            reason = "no such file or directory"
        elif exc.errno == errno.EACCES:
            reason = "permission denied"
        return TransportError(f"{self.uri}: {action} {path}: {reason}")

    def _where(self, path: str) -> str:
        """A path as a URI for messages; ``/~/`` marks a path relative to the login directory."""
        return f"{self.uri}{path}" if path.startswith("/") else f"{self.uri}/~/{path}"
