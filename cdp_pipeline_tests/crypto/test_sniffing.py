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


@pytest.mark.parametrize(
    "text",
    [
        "Ëllen;Paris\n1;2\n",  # 0xCB: a literal-data header, 'l' a one-octet length, 'l' a format octet
        "Çà;ville\n1;2\n",  # 0xC7 0xE0: an AEAD/compressed-looking header with a partial length
        "Ånsgar;x\n1;2\n",  # 0xC5: tag 5 (secret key)
        "Äpfel;Birnen\n1;2\n",  # 0xC4: tag 4 (one-pass signature)
        "Ãr;y\n" + "1;2\n" * 300,  # 0xC3: SKESK whose one-octet length 'r' (114) fits the file
        "Ñu;z\n1;2\n",  # 0xD1: tag 17
        "\x85\x02" + "x" * 600,  # old-format PKESK header with a length far past the end
    ],
)
def test_latin1_text_whose_first_byte_looks_like_a_packet_header_is_plain(tmp_path, text):
    path = tmp_path / "partner.csv"
    path.write_bytes(text.encode("latin-1"))
    assert not looks_encrypted(path)


def test_every_kind_of_message_gpg_writes_is_recognised(pgp_keys, gpg_cli, plain, tmp_path):
    big = tmp_path / "big.csv"
    big.write_bytes(CSV * 20_000)  # long enough for partial body lengths
    messages = {
        "public key": gpg_cli.encrypt(plain, tmp_path / "a.gpg", pgp_keys.recipient),
        "two recipients": gpg_cli.encrypt(plain, tmp_path / "b.gpg", [pgp_keys.recipient, pgp_keys.partner]),
        "uncompressed": gpg_cli.encrypt(big, tmp_path / "c.gpg", pgp_keys.recipient, compress=False),
        "signed and encrypted": gpg_cli.encrypt(big, tmp_path / "d.gpg", pgp_keys.recipient, sign_with=pgp_keys.partner),
        "no integrity protection": gpg_cli.encrypt(plain, tmp_path / "e.gpg", pgp_keys.recipient, mdc=False),
        "passphrase": gpg_cli.encrypt_symmetric(big, tmp_path / "f.gpg", "pw"),
        "armoured": gpg_cli.encrypt(plain, tmp_path / "g.asc", pgp_keys.recipient, armor=True),
        # Not encrypted, but OpenPGP: decryption names it ("not encrypted") instead of reading it as CSV.
        "signed only": gpg_cli.sign_only(big, tmp_path / "h.gpg", pgp_keys.partner),
    }
    assert [kind for kind, path in messages.items() if not looks_encrypted(path)] == []
    # A message cut before its encrypted data is not one.
    whole = messages["public key"].read_bytes()
    cut = tmp_path / "cut.gpg"
    cut.write_bytes(whole[:20])
    assert not looks_encrypted(cut)
