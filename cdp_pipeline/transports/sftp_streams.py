"""Pipelined SFTP reads and writes over a paramiko ``SFTPClient``, with large requests in flight.

Why not ``SFTPClient.getfo``/``putfo``: they move 32 KiB per SFTP request, and paramiko's read
prefetch has a race (``_prefetch_done`` is set whenever the replies catch up with the requests
already sent, and the file then falls back to one synchronous round trip per 32 KiB for the rest
of the download). On the benchmark machine that made 5 x 100 MB arrive at 150-230 MB/s, half
OpenSSH's ``sftp``. Here a single thread keeps a bounded number of 255 KiB requests in flight
(the largest read OpenSSH's sftp-server answers) and writes every reply at its offset, so the
per-request Python work is an eighth and memory stays at ``in_flight x request size``:
430-490 MB/s on the same machine (docs/benchmarks-sftp.md).

SFTP lets a server answer a read with fewer bytes than asked (servers that cap reads at 32 or
64 KiB do); the rest is asked for again, and later requests use the size the server gave.

This uses two of ``SFTPClient``'s internal methods (``_async_request``, ``_read_response``), the
same ones paramiko's own prefetch uses; the SFTP tests against a real sshd cover them, and the
paramiko dependency is pinned to a major version.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass, field

import paramiko
from paramiko.message import Message
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, CMD_WRITE, SFTP_EOF, SFTP_OK, int64

from cdp_pipeline.transports.transfer_checks import LocalWriteError, RemoteFileGrew

__all__ = [
    "OPENSSH_WRITE_BYTES",
    "PORTABLE_WRITE_BYTES",
    "READ_REQUEST_BYTES",
    "READS_IN_FLIGHT",
    "LocalWriteError",
    "RemoteFileGrew",
    "RemoteFileShrank",
    "read_remote_file",
    "write_remote_file",
]

# OpenSSH's sftp-server answers reads of up to 256 KiB less 1 KiB of message header room
# (SFTP_MAX_MSG_LENGTH - 1024); its own ``sftp`` client asks for the same size.
READ_REQUEST_BYTES = 261_120
# 16-32 in flight measured alike (430-490 MB/s); more only adds memory.
READS_IN_FLIGHT = 32
# Every SFTP server must take 32 KiB writes (draft-ietf-secsh-filexfer: packets of at least
# 34000 bytes); larger writes are used only where the server is known to take them.
PORTABLE_WRITE_BYTES = 32_768
OPENSSH_WRITE_BYTES = 261_120
WRITES_IN_FLIGHT = 32
_SMALLEST_READ = 4_096


class RemoteFileShrank(Exception):
    """The server reported end of file before the size seen at listing."""

    def __init__(self, received: int):
        super().__init__(f"end of file after {received} bytes")
        self.received = received


@dataclass
class _Replies:
    """Receives the replies paramiko routes to this object by request number."""

    arrived: dict[int, tuple[int, Message]] = field(default_factory=dict)

    # paramiko calls this (from SFTPClient._read_response) for every reply to our requests.
    def _async_response(self, reply_type: int, message: Message, number: int) -> None:
        self.arrived[number] = (reply_type, message)


def _status(sftp: paramiko.SFTPClient, message: Message) -> int:
    """The status code of a CMD_STATUS reply; raises the mapped OSError for real errors."""
    code = message.get_int()
    if code in (SFTP_OK, SFTP_EOF):
        return code
    # Rewind and let paramiko map the code to the OSError (ENOENT, EACCES, ...) its callers expect.
    message.rewind()
    message.get_int()  # request number, already consumed by paramiko before
    sftp._convert_status(message)  # noqa: SLF001 - raises
    raise OSError(f"SFTP status {code}")


def _await(sftp: paramiko.SFTPClient, replies: _Replies, number: int) -> tuple[int, Message]:
    while number not in replies.arrived:
        sftp._read_response()  # noqa: SLF001 - dispatches one reply to its waiting object
    return replies.arrived.pop(number)


def read_remote_file(
    sftp: paramiko.SFTPClient,
    remote_path: str,
    expected_size: int,
    local_fd: int,
    *,
    request_bytes: int = READ_REQUEST_BYTES,
    in_flight: int = READS_IN_FLIGHT,
) -> int:
    """Copy ``expected_size`` bytes of ``remote_path`` into ``local_fd`` (written at their offsets).

    Raises ``RemoteFileShrank`` when the file ends early, ``RemoteFileGrew`` when it has more
    bytes than expected (checked by one more read past the end, sent with the last requests),
    ``LocalWriteError`` when the local file cannot be written, and the mapped ``OSError`` for an
    SFTP error status. Returns the bytes written.
    """
    replies = _Replies()
    remote = sftp.open(remote_path, "rb")
    handle = remote.handle
    # request number -> (offset, length); length 0 marks the read past the end.
    pending: dict[int, tuple[int, int]] = {}
    order: deque[int] = deque()
    next_offset = 0
    probe_sent = False
    written = 0
    failed = True
    try:
        while order or next_offset < expected_size or not probe_sent:
            while len(order) < in_flight and (next_offset < expected_size or not probe_sent):
                if next_offset < expected_size:
                    length = min(request_bytes, expected_size - next_offset)
                    number = sftp._async_request(replies, CMD_READ, handle, int64(next_offset), int(length))  # noqa: SLF001
                    pending[number] = (next_offset, length)
                    next_offset += length
                else:
                    number = sftp._async_request(replies, CMD_READ, handle, int64(expected_size), 1)  # noqa: SLF001
                    pending[number] = (expected_size, 0)
                    probe_sent = True
                order.append(number)
            number = order.popleft()
            offset, length = pending.pop(number)
            reply_type, message = _await(sftp, replies, number)
            if reply_type == CMD_STATUS:
                if _status(sftp, message) == SFTP_EOF:
                    if length:
                        raise RemoteFileShrank(offset)
                    continue  # the read past the end found the end: the file did not grow
                raise OSError(f"unexpected SFTP status reply to a read of {remote_path}")
            if reply_type != CMD_DATA:
                raise OSError(f"unexpected SFTP reply type {reply_type} to a read of {remote_path}")
            data = message.get_binary()
            if not length:
                if data:
                    raise RemoteFileGrew(f"{remote_path} has more than {expected_size} bytes")
                continue
            if not data:
                raise RemoteFileShrank(offset)
            if len(data) > length:
                raise OSError(f"the server sent {len(data)} bytes for a read of {length} in {remote_path}")
            try:
                os.pwrite(local_fd, data, offset)
            except OSError as exc:
                raise LocalWriteError(exc) from exc
            written += len(data)
            if len(data) < length:
                # A short read: ask for the rest first, and no longer ask for more than this server gives.
                rest_offset, rest_length = offset + len(data), length - len(data)
                number = sftp._async_request(replies, CMD_READ, handle, int64(rest_offset), int(rest_length))  # noqa: SLF001
                pending[number] = (rest_offset, rest_length)
                order.appendleft(number)
                request_bytes = max(_SMALLEST_READ, min(request_bytes, len(data)))
        failed = False
        return written
    finally:
        _close_quietly(remote, raise_errors=not failed)


def write_remote_file(
    sftp: paramiko.SFTPClient,
    local_fd: int,
    size: int,
    remote_path: str,
    *,
    request_bytes: int = PORTABLE_WRITE_BYTES,
    in_flight: int = WRITES_IN_FLIGHT,
) -> int:
    """Create or truncate ``remote_path`` and write ``size`` bytes of ``local_fd`` into it.

    Up to ``in_flight`` writes are outstanding; every acknowledgement is checked, and the file is
    closed (which flushes it on the server) before this returns the bytes sent.
    """
    replies = _Replies()
    remote = sftp.open(remote_path, "wb")
    handle = remote.handle
    order: deque[int] = deque()
    offset = 0
    failed = True
    try:
        while offset < size or order:
            while len(order) < in_flight and offset < size:
                data = os.pread(local_fd, min(request_bytes, size - offset), offset)
                if not data:
                    raise OSError(f"the local file ended after {offset} of {size} bytes")
                order.append(sftp._async_request(replies, CMD_WRITE, handle, int64(offset), data))  # noqa: SLF001
                offset += len(data)
            reply_type, message = _await(sftp, replies, order.popleft())
            if reply_type != CMD_STATUS or _status(sftp, message) != SFTP_OK:
                raise OSError(f"the server did not confirm a write to {remote_path}")
        failed = False
    finally:
        _close_quietly(remote, raise_errors=not failed)
    return offset


def _close_quietly(remote: paramiko.SFTPFile, *, raise_errors: bool) -> None:
    """Close the remote handle. After a failure, close without waiting for the reply.

    A failed transfer may have failed because the server stopped answering: a synchronous close
    would then wait out the channel timeout a second time before the retry could start. The
    fire-and-forget close is paramiko's own (what ``SFTPFile.__del__`` sends); its reply, if one
    comes, is dropped by the client like any reply nobody waits for.
    """
    if raise_errors:
        remote.close()
        return
    # The transfer's own error is the one to report; a failing close adds nothing to it.
    with contextlib.suppress(Exception):
        remote._close(async_=True)  # noqa: SLF001
