"""A full local disk during download or decryption: refused up front when the sizes say so, and
otherwise a named error with the partial files deleted. Real ENOSPC from a small tmpfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdp_pipeline import importing
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.deliveries import Delivery
from cdp_pipeline.disk_space import DiskSpaceError
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline.transports.sftp import SftpTransport
from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE, GpgCli, PgpTestKeys
from cdp_pipeline_tests.fixtures.sshd import SshdServer

MB = 1024 * 1024


def local_delivery(source: Path, files: dict[str, int], *, understate: int = 0) -> tuple[LocalTransport, Delivery]:
    """Files of the given sizes in ``source``; ``understate`` makes the listing claim fewer bytes
    than the files hold, as when a file grows between listing and download."""
    remotes = {}
    for name, size in files.items():
        (source / name).write_bytes(os.urandom(size))
        remotes[name] = RemoteFile(path=name, size=size - understate, mtime=0.0)
    return LocalTransport(source), Delivery(connection="c", goal="customers", files=remotes, root_name=next(iter(files)))


def files_under(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def test_delivery_larger_than_the_free_space_is_refused_before_downloading(tmp_path: Path, small_disk) -> None:
    work = small_disk(2)
    source = tmp_path / "remote"
    source.mkdir()
    transport, delivery = local_delivery(source, {"customers.csv": 1 * MB, "orders.csv": MB})
    with pytest.raises(DiskSpaceError) as raised:
        importing.fetch_delivery(transport, delivery, work)
    message = str(raised.value)
    assert str(work / "fetched") in message
    assert "2.5 MB needed (the files plus 20%)" in message  # 2 MiB x 1.2
    assert "customers:customers.csv" in message
    assert files_under(work) == []


def test_disk_that_fills_during_the_download_leaves_no_files(tmp_path: Path, small_disk) -> None:
    work = small_disk(2)
    source = tmp_path / "remote"
    source.mkdir()
    # The listing says 0.5 MiB (fits with the margin); the file holds 3 MiB.
    transport, delivery = local_delivery(source, {"customers.csv": 3 * MB}, understate=5 * MB // 2)
    with pytest.raises(DiskSpaceError, match="filled up while trying to download delivery customers:customers.csv"):
        importing.fetch_delivery(transport, delivery, work)
    assert files_under(work) == []


def test_sftp_download_onto_a_full_disk_blames_the_local_disk(sshd_server: SshdServer, small_disk) -> None:
    target_dir = small_disk(1)
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/big.csv", os.urandom(3 * MB))
    settings = sshd_server.settings("key", "private_key", "ed25519", retries=3)
    with SftpTransport(settings.location, settings.secrets, backoff_seconds=0.01) as transport:
        [remote] = transport.list_files(directory)
        with pytest.raises(DiskSpaceError, match=f"local disk is full: cannot write the download of .*big.csv to {target_dir}"):
            transport.download(remote, target_dir / "big.csv")
        assert transport.connection_attempts == 1  # a full disk is not retried against the server
        assert transport.list_files(directory) == [remote]  # the connection is still in step
    assert files_under(target_dir) == []


def test_plaintext_that_outgrows_the_disk_is_deleted(
    tmp_path: Path, small_disk, pgp_keys: PgpTestKeys, gpg_cli: GpgCli
) -> None:
    work = small_disk(3)
    source = tmp_path / "remote"
    source.mkdir()
    plain = tmp_path / "customers.csv"
    plain.write_text("customer_id,email\n" + "".join(f"{i},customer{i}@example.com\n" for i in range(200_000)))
    assert plain.stat().st_size > 5 * MB
    gpg_cli.encrypt(plain, source / "customers.csv.gpg", pgp_keys.recipient)  # zlib: the ciphertext is small
    size = (source / "customers.csv.gpg").stat().st_size
    assert size < MB
    transport = LocalTransport(source)
    delivery = Delivery(
        connection="c", goal="customers", files={"customers": RemoteFile(path="customers.csv.gpg", size=size, mtime=0.0)}, root_name="customers"
    )
    importing.fetch_delivery(transport, delivery, work)
    with pytest.raises(DiskSpaceError, match="filled up while trying to decrypt customers.csv.gpg"):
        importing.decrypt_delivery(work, lambda: PgpKeyring([pgp_keys.recipient.private_key], PASSPHRASE))
    assert not (work / "decrypted").exists()
    assert [name for name in files_under(work) if not name.startswith("fetched/")] == ["fetched.json"]
