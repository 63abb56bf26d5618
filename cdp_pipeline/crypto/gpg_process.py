"""Running the gpg binary: a watchdog on every call, the configuration of every fresh home, gpg's
status lines, and the output files gpg writes into.

python-gnupg drives the binary; this module adds what it lacks (a timeout, a log filter that keeps
key material out of DEBUG logs) and the small rules every gpg run here follows: output files are
created private before gpg writes to them, removed on failure, and a full disk is named as such.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gnupg

from cdp_pipeline.disk_space import DiskSpaceError, says_disk_full
from cdp_pipeline.errors import CryptoError

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

#: gpg older than this lacks status lines we rely on (DECRYPTION_KEY, VALIDSIG primary fingerprint).
MIN_GPG_VERSION: tuple[int, int] = (2, 2)

_STATUS_PREFIX = "[GNUPG:] "

#: a floor for each gpg call, plus time proportional to the file size (see scaled_timeout).
DEFAULT_TIMEOUT_SECONDS = 120.0
#: assumed worst-case throughput when scaling the timeout; gpg measured 130-480 MB/s on the
#: benchmark machine, so a call slower than this is stuck rather than busy.
_MIN_BYTES_PER_SECOND = 5 * 1024 * 1024

# gpg.conf / gpg-agent.conf of every fresh home.
GPG_CONF = "\n".join(
    [
        # never reach out to key servers or WKD while verifying signatures or encrypting
        "no-auto-key-retrieve",
        "no-auto-key-locate",
        # do not cache passphrases of symmetric messages in the agent
        "no-symkey-cache",
        "",
    ]
)
AGENT_CONF = "\n".join(
    [
        # No passphrase caching: a wrong passphrase must fail on every call, not only on the first
        # one; a cached passphrase would let a broken setting pass until the agent restarts.
        "default-cache-ttl 0",
        "max-cache-ttl 0",
        "allow-loopback-pinentry",
        "",
    ]
)


class _NoKeyMaterialFilter(logging.Filter):
    """python-gnupg logs the first 256 characters of imported key data at DEBUG level; drop that."""

    _SENSITIVE = ("import_keys: %r", "import_keys result: %r", "chunk: %r")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg in self._SENSITIVE)


def _install_log_filter() -> None:
    gnupg_logger = logging.getLogger("gnupg")
    if not any(isinstance(f, _NoKeyMaterialFilter) for f in gnupg_logger.filters):
        gnupg_logger.addFilter(_NoKeyMaterialFilter())


_install_log_filter()


def scaled_timeout(floor_seconds: float, size: int) -> float:
    """The time a gpg call over ``size`` bytes may take: the floor plus the size at the slowest expected speed."""
    return floor_seconds + size / _MIN_BYTES_PER_SECOND


def status_lines(stderr: str) -> list[tuple[str, str]]:
    """gpg's machine-readable ``[GNUPG:] KEYWORD value`` lines, in order, as (keyword, value)."""
    out: list[tuple[str, str]] = []
    for line in stderr.splitlines():
        if line.startswith(_STATUS_PREFIX):
            keyword, _, value = line[len(_STATUS_PREFIX) :].partition(" ")
            out.append((keyword, value.strip()))
    return out


def gpg_says(stderr: str, limit: int = 3) -> str:
    """gpg's own human-readable complaint lines (not status lines), for the end of an error message."""
    lines = [
        line.strip()[len("gpg: ") :]
        for line in stderr.splitlines()
        if line.startswith("gpg: ") and ("error" in line or "fail" in line or "WARNING" in line or "invalid" in line)
    ]
    return "; ".join(lines[-limit:])


def raise_if_disk_full(stderr: str | None, action: str, dst: Path) -> None:
    """gpg's write error on a full disk would otherwise read like a key or file problem."""
    # gpg runs with LC_ALL=C, so strerror's English text is what it prints.
    if says_disk_full(stderr):
        raise DiskSpaceError(
            f"the local disk is full: gpg could not {action} into {dst.parent} (No space left on device); "
            "free space there, or point CDP_HOME to a larger disk"
        )


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("could not remove partial output %s", path, exc_info=True)


def create_private_file(path: Path) -> None:
    """(Re)create ``path`` empty with mode 0600 so gpg writes into it without ever widening the mode.

    gpg opens an existing output with O_TRUNC and keeps its mode; O_EXCL|O_NOFOLLOW makes sure the
    file we hand over is a new regular file, not a symlink planted in its place.
    """
    unlink_quietly(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, 0o600))


@contextlib.contextmanager
def private_output(dst: Path) -> Iterator[None]:
    """``dst`` is created private before gpg writes into it, and removed when the block fails.

    Whatever stops a gpg run half-way (a wrong key, a timeout, a full disk, an exception of
    ours) must not leave a partial file: a caller would upload or stage it as if it were whole.
    """
    try:
        create_private_file(dst)
        yield
    except BaseException:
        unlink_quietly(dst)
        raise


def run_watched(gpg: TimedGPG, call: Callable[[], _R], *, floor_seconds: float, size: int, cannot_run: str) -> _R:
    """One python-gnupg call under a watchdog scaled to the file size.

    ``cannot_run`` starts the message when gpg cannot even be started (missing binary, bad
    arguments). Whether the watchdog fired is left in ``gpg.timed_out`` for the caller's message.
    """
    gpg.timeout = scaled_timeout(floor_seconds, size)
    gpg.timed_out = False
    try:
        return call()
    except (OSError, ValueError) as exc:
        raise CryptoError(f"{cannot_run}: gpg could not be run: {exc}") from None
    finally:
        gpg.timeout = floor_seconds


# ---------------------------------------------------------------- gpg with a watchdog


class TimedGPG(gnupg.GPG):
    """python-gnupg has no timeout; this kills a gpg call that runs past ``self.timeout``.

    python-gnupg (pinned <0.6) exposes neither the Popen object nor a timeout, so this overrides
    its two internal hooks: ``_open_subprocess`` starts a timer per process and ``_collect_output``
    (which blocks until gpg exits) cancels it. A killed gpg closes its pipes, python-gnupg's reader
    threads finish and the call returns with a negative return code; ``timed_out`` tells us why.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.timeout: float = DEFAULT_TIMEOUT_SECONDS
        self.timed_out = False
        self._timers: dict[int, threading.Timer] = {}
        super().__init__(**kwargs)

    def _open_subprocess(self, args: list[str], passphrase: bool = False) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = super()._open_subprocess(args, passphrase)
        timer = threading.Timer(self.timeout, self._expire, args=(process,))
        timer.daemon = True
        self._timers[process.pid] = timer
        timer.start()
        return process

    def _expire(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            self.timed_out = True
            process.kill()

    def _collect_output(self, process: subprocess.Popen[bytes], result: Any, writer: Any = None, stdin: Any = None) -> int:
        try:
            returncode: int = super()._collect_output(process, result, writer, stdin)
            return returncode
        finally:
            timer = self._timers.pop(process.pid, None)
            if timer is not None:
                timer.cancel()


def key_listing(gpg: TimedGPG, fingerprint: str) -> dict[str, Any]:
    """gpg's listing of one key in the home (capabilities, expiry, subkeys), by primary fingerprint."""
    gpg.timed_out = False
    key: dict[str, Any]
    for key in gpg.list_keys(keys=[fingerprint]):
        if key["fingerprint"].upper() == fingerprint:
            return key
    raise CryptoError(f"key {fingerprint} is not in the keyring")
