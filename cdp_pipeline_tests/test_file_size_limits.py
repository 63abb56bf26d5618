"""``max_file_gb``: a file larger than the connection allows is refused as listed, as decrypted
(gpg ``--max-output``) and as un-gzipped, so a compression bomb cannot fill the store's disk."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from cdp_pipeline import importing
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.csv_options import CsvOptions
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.deliveries import Delivery
from cdp_pipeline.errors import CryptoError, InputError
from cdp_pipeline.tables.csv_reading import read_delimited
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE, GpgCli, PgpTestKeys

# 8 MB of CSV that zlib/gzip shrink about a thousandfold: the shape of a compression bomb.
REPETITIVE_CSV = "customer_id,email\n" + "1,a@example.com\n" * 500_000


def test_default_and_validation() -> None:
    export = {"name": "out", "type": "export_profiles", "segment": "all", "target": {"file_name": "x.csv"}, "columns": [{"header": "id", "property": "email"}]}
    base = {"name": "acme", "source": {"type": "local", "path": "in"}, "goals": [export]}
    assert Connection.model_validate(base).max_file_bytes == 20_000_000_000
    assert Connection.model_validate({**base, "max_file_gb": 0.5}).max_file_bytes == 500_000_000
    with pytest.raises(ValueError, match="max_file_gb"):
        Connection.model_validate({**base, "max_file_gb": 0})


def test_listed_file_over_the_limit_is_refused_before_download(tmp_path: Path) -> None:
    source = tmp_path / "remote"
    source.mkdir()
    (source / "customers.csv").write_text(REPETITIVE_CSV)
    size = (source / "customers.csv").stat().st_size
    delivery = Delivery(connection="c", goal="customers", files={"customers": RemoteFile("customers.csv", size, 0.0)}, root_name="customers")
    work = tmp_path / "work"
    with pytest.raises(InputError) as raised:
        importing.fetch_delivery(LocalTransport(source), delivery, work, max_file_bytes=size - 1)
    [problem] = raised.value.problems
    assert problem.file == "customers.csv"
    assert f"{size:,} bytes, more than the connection's max_file_gb ({size - 1:,} bytes)" in problem.reason
    assert not (work / "fetched").exists()
    assert len(importing.fetch_delivery(LocalTransport(source), delivery, work, max_file_bytes=size)) == 1


def test_pgp_message_that_decrypts_past_the_limit_is_stopped(tmp_path: Path, pgp_keys: PgpTestKeys, gpg_cli: GpgCli) -> None:
    plain = tmp_path / "customers.csv"
    plain.write_text(REPETITIVE_CSV)
    source = tmp_path / "remote"
    source.mkdir()
    gpg_cli.encrypt(plain, source / "customers.csv.gpg", pgp_keys.recipient)
    size = (source / "customers.csv.gpg").stat().st_size
    assert size * 100 < plain.stat().st_size
    delivery = Delivery(connection="c", goal="customers", files={"customers": RemoteFile("customers.csv.gpg", size, 0.0)}, root_name="customers")
    work = tmp_path / "work"
    importing.fetch_delivery(LocalTransport(source), delivery, work, max_file_bytes=1_000_000)  # the ciphertext fits
    keyring = lambda: PgpKeyring([pgp_keys.recipient.private_key], PASSPHRASE)  # noqa: E731
    with pytest.raises(CryptoError, match=r"customers.csv.gpg: decrypts to more than 1,000,000 bytes, the connection's max_file_gb"):
        importing.decrypt_delivery(work, keyring, max_file_bytes=1_000_000)
    assert not any((work / "decrypted").iterdir())  # not even the first megabyte stays
    files, encrypted = importing.decrypt_delivery(work, keyring, max_file_bytes=plain.stat().st_size)
    assert encrypted == 1 and Path(files[0].local_path).read_text() == REPETITIVE_CSV


def test_gzip_file_that_expands_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv.gz"
    path.write_bytes(gzip.compress(REPETITIVE_CSV.encode()))
    with pytest.raises(InputError) as raised:
        read_delimited(path, CsvOptions(), "in/customers.csv.gz", max_bytes=1_000_000)
    [problem] = raised.value.problems
    assert problem.file == "in/customers.csv.gz"
    assert "expands to more than 1,000,000 bytes" in problem.reason and "max_file_gb" in problem.fix
    frame = read_delimited(path, CsvOptions(), "in/customers.csv.gz", max_bytes=len(REPETITIVE_CSV))
    assert frame.height == 500_000


def test_plain_file_is_not_counted_again_while_reading(tmp_path: Path) -> None:
    # An uncompressed file was already checked as listed; reading it applies no second limit.
    path = tmp_path / "customers.csv"
    path.write_text(REPETITIVE_CSV)
    assert read_delimited(path, CsvOptions(), "customers.csv", max_bytes=10).height == 500_000
