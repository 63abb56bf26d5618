"""The one interface every transport (local folder, SFTP, S3) implements.

Transports move bytes and nothing else: they never parse, decrypt or touch the store.
Every write is complete-or-absent: downloads land under a temporary name and are renamed
after the byte count matches the listing; uploads go to ``<name>.part`` and are renamed.

What only some transports can do is a capability Protocol below (``SlicedListing``,
``ParallelDownloads``): callers ask ``isinstance(transport, SlicedListing)``, never ``hasattr``,
so a renamed method fails type checking instead of silently switching a feature off.
"""

from __future__ import annotations

import abc
import fnmatch
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

# Names an uploader uses while a file is still being written (WinSCP, FileZilla, rsync, our own
# uploads). A file with such a name is never part of a delivery.
TEMPORARY_UPLOAD_PATTERNS: tuple[str, ...] = ("*.part", "*.filepart", "*.tmp", ".~*", "*.crdownload")


@dataclass(frozen=True)
class RemoteFile:
    """A file as seen in a listing. ``etag`` is set by S3; SFTP and local leave it None."""

    path: str  # posix path as the transport addresses it (directory + name)
    size: int
    mtime: float  # seconds since the epoch, from the server
    etag: str | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def identity(self) -> str:
        """What changes when the content may have changed: size + mtime (+ ETag)."""
        return f"{self.size}:{self.mtime:.3f}:{self.etag or ''}"


def is_temporary_upload(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMPORARY_UPLOAD_PATTERNS)


class Transport(abc.ABC):
    """A remote folder tree. Implementations are context managers holding one connection."""

    #: scheme://host/base, shown in metadata and messages; never contains secrets.
    uri: str

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional for transports without a connection
        """Release the connection."""

    @abc.abstractmethod
    def list_files(self, directory: str) -> list[RemoteFile]:
        """Regular files directly in ``directory`` (not recursive, symlinks not followed)."""

    @abc.abstractmethod
    def download(self, remote: RemoteFile, local_path: Path) -> int:
        """Copy ``remote`` to ``local_path`` atomically; return the byte count.

        Raises FileVanishedError when the file is gone or no longer matches the listing
        (size or ETag), TransientTransportError for network trouble.
        """

    @abc.abstractmethod
    def upload(self, local_path: Path, remote_path: str) -> int:
        """Write ``local_path`` to ``remote_path`` via ``<remote_path>.part`` + rename."""

    @abc.abstractmethod
    def rename(self, remote_path: str, new_path: str) -> None:
        """Move a file, replacing nothing; creates the target directory when missing.

        Idempotent: when ``remote_path`` is gone and ``new_path`` exists, it returns quietly.
        """

    @abc.abstractmethod
    def delete(self, remote_path: str) -> None:
        """Remove a file; a missing file is not an error."""

    @abc.abstractmethod
    def exists(self, remote_path: str) -> bool:
        """Whether a regular file exists at ``remote_path``."""


@runtime_checkable
class SlicedListing(Protocol):
    """A transport that can list a large folder a bounded slice at a time (S3).

    Listing a large S3 prefix costs one request per 1,000 keys; a sensor that looks every few
    seconds walks it ``max_keys`` at a time instead, and starts over when the walk reaches the end.
    """

    def list_files_after(self, directory: str, after: str | None, max_keys: int) -> tuple[list[RemoteFile], str | None]:
        """The files of ``directory`` whose paths sort after ``after`` (None: from the start), at most
        ``max_keys`` entries, and the continuation to pass next time (None: the listing reached the end)."""
        ...


@runtime_checkable
class ParallelDownloads(Protocol):
    """A transport that can download several files over several connections at once (SFTP).

    Over a long link one SSH connection is bound by its window; separate connections multiply that.
    """

    @property
    def parallel_downloads(self) -> int:
        """How many connections ``download_many`` may use, as the connection is configured."""
        ...

    def download_many(self, files: Sequence[tuple[RemoteFile, Path]], parallel: int = 1) -> list[int]:
        """Download ``(remote, local_path)`` pairs over up to ``parallel`` connections; the byte
        counts in input order. The first failure stops the remaining work and is raised."""
        ...


@runtime_checkable
class EtagPinnedFinishing(Protocol):
    """A transport that can refuse to move or delete an object whose ETag is no longer the one
    that was fetched (S3): the check and the change are one request, so a new version uploaded in
    between is never finished unimported."""

    def rename_if_unchanged(self, remote_path: str, new_path: str, etag: str) -> None: ...

    def delete_if_unchanged(self, remote_path: str, etag: str) -> None: ...


@runtime_checkable
class RefusedEntries(Protocol):
    """A transport whose listings leave out entries that cannot be addressed exactly (S3 keys with
    an empty, "." or ".." segment), and says which, so they show up as problems instead of vanishing."""

    def refused_entries(self) -> list[str]:
        """One problem line per entry the listings left out since the last call: where, why, what to do."""
        ...
