"""The parts of a download and an upload that do not depend on the protocol.

Every network transport lands a download under a private temporary name, compares what arrived
with the size seen at listing, and only then renames it; every upload goes to ``<name>.part``
and is checked against the server's size before the rename. The protocol calls differ (SFTP
reads in flight, FTP's RETR/STOR); the verdicts, their wording and the clean-up rules do not,
so they live here once and each transport passes in what it saw.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cdp_pipeline.disk_space import DiskSpaceError, is_disk_full
from cdp_pipeline.errors import FileVanishedError, TransientTransportError, TransportError

__all__ = [
    "LocalWriteError",
    "RemoteFileGrew",
    "check_before_download",
    "check_upload_size",
    "download_size_matches",
    "failed_download_size",
    "local_write_failure",
    "open_private_download",
    "upload_size",
]


class RemoteFileGrew(Exception):
    """The remote file has bytes beyond the size seen at listing: it is still being written."""


class LocalWriteError(Exception):
    """Writing the local copy failed (a full disk, most likely): not the server's fault."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def check_before_download(where: str, *, exists: bool, is_regular_file: bool, size_now: int | None, listed_size: int) -> None:
    """Refuse a file that changed between the listing and the transfer.

    ``size_now`` is None when the server cannot tell a size (some FTP servers); the byte count
    after the transfer still guards that case.
    """
    if not exists:
        raise FileVanishedError(f"{where} is gone since it was listed")
    if not is_regular_file:
        raise FileVanishedError(f"{where} is no longer a regular file")
    if size_now is not None and size_now != listed_size:
        raise FileVanishedError(f"{where} changed since it was listed: {size_now} bytes now, {listed_size} listed")


def open_private_download(local_path: Path) -> tuple[int, str]:
    """A new temporary file beside ``local_path``: (descriptor, name).

    mkstemp opens with O_EXCL and mode 0600, so no other local user can read the (maybe
    plaintext) data, and a leftover is recognisable by its leading dot and ``.download`` suffix.
    """
    local_path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=local_path.parent, prefix=f".{local_path.name}.", suffix=".download")


def local_write_failure(error: OSError, *, where: str, temp_name: str, local_path: Path) -> DiskSpaceError | TransportError:
    """The error for a download that could not be written locally; a full disk names the fix."""
    if is_disk_full(error):
        return DiskSpaceError(
            f"the local disk is full: cannot write the download of {where} to "
            f"{local_path.parent} ({error.strerror}); free space there or point CDP_HOME to a larger disk"
        )
    return TransportError(f"cannot write {temp_name} (download of {where}): {error}")


def download_size_matches(*, listed_size: int, received: int, written: int) -> bool:
    return received == listed_size and written == listed_size


def failed_download_size(where: str, *, listed_size: int, received: int, size_now: int | None, still_exists: bool, grew: bool = False) -> TransportError:
    """The error for a download whose byte count did not match the listing.

    A file that is gone or whose size moved is a changed delivery (readiness looks at it again
    before it is fetched); the same file with fewer bytes received is a cut transfer, worth a
    retry on a fresh connection.
    """
    if not still_exists:
        return FileVanishedError(f"{where} vanished during the download")
    if grew or (size_now is not None and size_now != listed_size):
        return FileVanishedError(f"{where} changed during the download: {size_now} bytes now, {listed_size} listed")
    return TransientTransportError(f"{where}: received {received} bytes of {listed_size}; the transfer was cut short")


def upload_size(local_path: Path) -> int:
    """The size an upload must reach on the server; a missing local file is our error, not the server's."""
    try:
        return local_path.stat().st_size
    except OSError as exc:
        raise TransportError(f"cannot upload {local_path}: {exc.strerror or exc}") from None


def check_upload_size(where: str, *, local_size: int, stored_size: int | None, stored: bool = True) -> None:
    """A ``.part`` upload is renamed only when the server holds every byte sent."""
    if not stored:
        raise TransientTransportError(f"{where}: the server holds nothing after an upload of {local_size}")
    if stored_size is not None and stored_size != local_size:
        raise TransientTransportError(f"{where}: the server holds {stored_size} bytes after an upload of {local_size}")
