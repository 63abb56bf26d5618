"""Capabilities only some transports have are Protocols in ``transports.base``: a caller asks
``isinstance(transport, SlicedListing)``, and a transport that loses the method stops matching
(instead of a ``hasattr`` check quietly switching the feature off)."""

from __future__ import annotations

import base64
from pathlib import Path

from cdp_pipeline.config.connection import S3Location, SftpAuth, SftpLocation
from cdp_pipeline.transports.base import ParallelDownloads, SlicedListing, Transport
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline.transports.s3 import S3Transport
from cdp_pipeline.transports.sftp import SftpTransport
from cdp_pipeline.transports.sftp_credentials import SftpSecrets

# A well-formed pin; nothing connects in these tests.
PIN = "SHA256:" + base64.b64encode(bytes(32)).decode("ascii").rstrip("=")


def _sftp(parallel_downloads: int = 1) -> SftpTransport:
    location = SftpLocation(
        type="sftp",
        host="127.0.0.1",
        username="u",
        auth=SftpAuth(method="password", password_env="UNUSED_PASSWORD"),
        host_key_fingerprint=PIN,
        parallel_downloads=parallel_downloads,
    )
    return SftpTransport(location, SftpSecrets(password="unused"))


def test_only_s3_lists_in_slices(tmp_path: Path) -> None:
    s3: Transport = S3Transport(None, S3Location(type="s3", bucket="b"))
    assert isinstance(s3, SlicedListing)
    assert not isinstance(LocalTransport(tmp_path), SlicedListing)
    assert not isinstance(_sftp(), SlicedListing)


def test_only_sftp_downloads_in_parallel_with_its_configured_connections(tmp_path: Path) -> None:
    sftp: Transport = _sftp(parallel_downloads=3)
    assert isinstance(sftp, ParallelDownloads)
    assert sftp.parallel_downloads == 3
    assert not isinstance(LocalTransport(tmp_path), ParallelDownloads)
    assert not isinstance(S3Transport(None, S3Location(type="s3", bucket="b")), ParallelDownloads)
