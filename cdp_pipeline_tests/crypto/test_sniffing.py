"""Whether a file is an OpenPGP message is decided by its content, against messages the real gpg wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp_pipeline.crypto.sniffing import looks_encrypted

CSV = "customer_id;email;city\n00123;anna@example.com;Kraków\n00124;jan@example.com;Łódź\n".encode()


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    path.write_bytes(CSV)
    return path


def test_looks_encrypted_decides_by_content_not_by_name(pgp_keys, gpg_cli, plain, tmp_path):
    disguised = gpg_cli.encrypt(plain, tmp_path / "export.csv", pgp_keys.recipient)
    armored = gpg_cli.encrypt(plain, tmp_path / "export2.csv", pgp_keys.recipient, armor=True)
    symmetric = gpg_cli.encrypt_symmetric(plain, tmp_path / "sym.csv", "pw")
    fake = tmp_path / "orders.pgp"
    fake.write_bytes(CSV)
    assert looks_encrypted(disguised) and looks_encrypted(armored) and looks_encrypted(symmetric)
    assert not looks_encrypted(fake)

    # Plain files whose first byte has the high bit set must not pass for OpenPGP packets:
    # 'É' (0xC9) is the new-format header of tag 9, 'Á' (0xC1) of tag 1 (PKESK), 'Ò' (0xD2) of tag 18.
    for i, text in enumerate(["État;ville\n1;Paris\n", "Ábaco;x\n1;2\n", "Òscar;y\n1;2\n"]):
        latin1 = tmp_path / f"latin1_{i}.csv"
        latin1.write_bytes(text.encode("latin-1"))
        assert not looks_encrypted(latin1), text
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + CSV)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert not looks_encrypted(bom) and not looks_encrypted(empty)
    # an armoured message after a BOM and blank lines still counts
    padded = tmp_path / "padded.asc"
    padded.write_bytes(b"\xef\xbb\xbf\r\n\n" + armored.read_bytes())
    assert looks_encrypted(padded)
