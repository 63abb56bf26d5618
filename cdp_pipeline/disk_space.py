"""Local disk space for a delivery: checked before it is written, and a full disk said plainly.

A delivery lands in the work directory three times over (downloaded, decrypted, staged), and a
disk that fills half-way used to surface as a transport error blaming the server or as a gpg
failure that reads like a wrong key. So before the download the
free space must cover the files plus 20% (Airbyte's margin); before decryption, the ciphertext
plus 20% (compressed PGP can still expand beyond that, which the disk-full error then catches).
On ENOSPC the partial files are deleted, the step fails with where and how much, and nothing of
the delivery is merged or quarantined; once space is freed, the failed run can be re-executed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from cdp_pipeline.errors import CdpError

__all__ = ["HEADROOM", "DiskSpaceError", "disk_full_error", "is_disk_full", "require_free_space", "says_disk_full"]

HEADROOM = 1.2
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_FIX = "free space there, or point CDP_HOME (which holds the work directory) to a larger disk"


class DiskSpaceError(CdpError):
    """The local disk cannot hold what a step has to write."""


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:,.1f} MB"


def require_free_space(directory: Path, needed: int, purpose: str) -> None:
    """Raise ``DiskSpaceError`` unless ``directory``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space in {directory} to {purpose}: {_megabytes(needed)} needed "
            f"(the files plus {HEADROOM - 1:.0%}), {_megabytes(free)} free; {_FIX}"
        )


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an error it was raised from, is ENOSPC or EDQUOT."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def says_disk_full(text: str | None) -> bool:
    """True when a tool's message reports ENOSPC in words (gpg's stderr under LC_ALL=C, DuckDB's
    errors), where no errno reaches us."""
    return text is not None and "No space left on device" in text


def disk_full_error(directory: Path, purpose: str) -> DiskSpaceError:
    free = shutil.disk_usage(directory).free if directory.exists() else 0
    return DiskSpaceError(
        f"the disk of {directory} filled up while trying to {purpose} ({_megabytes(free)} free now, after "
        f"the partial files were deleted); {_FIX}"
    )
