"""Pipelined SFTP reads and writes (``sftp_streams``) against the real OpenSSH sftp-server."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from cdp_pipeline.transports.sftp import SftpTransport
from cdp_pipeline.transports.sftp_streams import (
    OPENSSH_WRITE_BYTES,
    PORTABLE_WRITE_BYTES,
    RemoteFileGrew,
    RemoteFileShrank,
    read_remote_file,
    write_remote_file,
)
from cdp_pipeline_tests.fixtures.sshd import SshdServer


@pytest.fixture
def sftp(sshd_server: SshdServer) -> Iterator[paramiko.SFTPClient]:
    settings = sshd_server.settings("key", "private_key", "ed25519")
    transport = SftpTransport(settings.location, settings.secrets)
    try:
        yield transport.connection.client()  # these tests drive the client the transport uses
    finally:
        transport.close()


def read_to(path: Path, sftp: paramiko.SFTPClient, remote: str, size: int, **options: int) -> int:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return read_remote_file(sftp, remote, size, descriptor, **options)
    finally:
        os.close(descriptor)


def remote_path(server: SshdServer, relative: str) -> str:
    return f"{server.user('key').login_directory.rstrip('/')}/{relative}"


@pytest.mark.parametrize(
    ("size", "request_bytes", "in_flight"),
    [
        (0, 261_120, 32),
        (1, 261_120, 32),
        (5 * 1024 * 1024 + 333, 261_120, 32),  # many requests in flight, a short last one
        (5 * 1024 * 1024 + 333, 32_768, 1),  # one request at a time
        # sshd answers at most 255 KiB per read: every 1 MiB request comes back short and the
        # rest is asked for again, which is the path a server with a small read cap takes.
        (3 * 1024 * 1024 + 5, 1024 * 1024, 4),
    ],
)
def test_read_copies_every_byte(
    sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path, size: int, request_bytes: int, in_flight: int
) -> None:
    directory = sshd_server.fresh_directory("key")
    payload = os.urandom(size)
    sshd_server.drop_file("key", f"{directory}/f.bin", payload)
    target = tmp_path / "f.bin"
    written = read_to(target, sftp, remote_path(sshd_server, f"{directory}/f.bin"), size, request_bytes=request_bytes, in_flight=in_flight)
    assert written == size
    assert target.read_bytes() == payload
    # The client is still usable: no reply of ours is left to confuse the next request.
    assert sftp.stat(remote_path(sshd_server, f"{directory}/f.bin")).st_size == size


def test_read_of_a_file_shorter_than_listed(sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/f.bin", os.urandom(700_000))
    with pytest.raises(RemoteFileShrank) as raised:
        read_to(tmp_path / "f.bin", sftp, remote_path(sshd_server, f"{directory}/f.bin"), 2_000_000)
    assert raised.value.received == 700_000  # where the server said end of file
    assert sftp.listdir(remote_path(sshd_server, directory)) == ["f.bin"]  # client still in step


def test_read_of_a_file_longer_than_listed(sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/f.bin", os.urandom(600_001))
    with pytest.raises(RemoteFileGrew):
        read_to(tmp_path / "f.bin", sftp, remote_path(sshd_server, f"{directory}/f.bin"), 600_000)


def test_read_of_a_missing_file_is_enoent(sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    with pytest.raises(FileNotFoundError):
        read_to(tmp_path / "f.bin", sftp, remote_path(sshd_server, f"{directory}/none.bin"), 10)


@pytest.mark.parametrize("request_bytes", [PORTABLE_WRITE_BYTES, OPENSSH_WRITE_BYTES])
@pytest.mark.parametrize("size", [0, 1, 4 * 1024 * 1024 + 7])
def test_write_stores_every_byte(
    sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path, size: int, request_bytes: int
) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/out.bin", b"an older, longer file that must be truncated" * 10)
    payload = os.urandom(size)
    local = tmp_path / "out.bin"
    local.write_bytes(payload)
    with local.open("rb") as handle:
        sent = write_remote_file(sftp, handle.fileno(), size, remote_path(sshd_server, f"{directory}/out.bin"), request_bytes=request_bytes)
    assert sent == size
    assert sshd_server.server_path("key", f"{directory}/out.bin").read_bytes() == payload


def test_write_refused_by_the_server_is_eacces(sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.make_directory("key", f"{directory}/locked")
    sshd_server.server_path("key", f"{directory}/locked").chmod(0o500)
    local = tmp_path / "out.bin"
    local.write_bytes(b"x" * 100)
    with local.open("rb") as handle, pytest.raises(PermissionError) as raised:
        write_remote_file(sftp, handle.fileno(), 100, remote_path(sshd_server, f"{directory}/locked/out.bin"))
    assert raised.value.errno == errno.EACCES


def test_write_of_a_local_file_shorter_than_promised(sshd_server: SshdServer, sftp: paramiko.SFTPClient, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    local = tmp_path / "out.bin"
    local.write_bytes(b"x" * 100)
    with local.open("rb") as handle, pytest.raises(OSError, match="ended after 100 of 200 bytes"):
        write_remote_file(sftp, handle.fileno(), 200, remote_path(sshd_server, f"{directory}/out.bin"))
    assert sftp.listdir(remote_path(sshd_server, directory)) == ["out.bin"]  # client still in step
