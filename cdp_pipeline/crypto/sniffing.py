"""Is this file an OpenPGP message? Decided by its first bytes, never by its name.

A ``.csv`` may arrive encrypted and a ``.pgp`` may arrive as plain text, so the decision to decrypt
is taken from the content: an ASCII armour header, or a first binary packet that can start an
encrypted message.
"""

from __future__ import annotations

import os
from pathlib import Path

_ARMOR_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_SNIFF_BYTES = 4096

# OpenPGP packet tags that can start an encrypted (or at least OpenPGP-packaged) message.
_PKESK, _SKESK, _COMPRESSED, _LITERAL, _SEIPD, _AEAD = 1, 3, 8, 11, 18, 20
# Tag 9 (symmetrically encrypted data without MDC) is left out on purpose: as the first packet it
# means PGP 2 "conventional" encryption we would refuse anyway, and its header byte (0xC9 = "É" in
# Latin-1) would misclassify plain French CSV files.
_DATA_TAGS = {_COMPRESSED, _LITERAL, _SEIPD, _AEAD}  # the only packets that may use partial lengths
_PUBKEY_ALGOS = {1, 2, 3, 16, 18, 20, 25, 26}  # RSA, ElGamal, ECDH, X25519, X448


def _packet_body(data: bytes) -> tuple[int, bytes] | None:
    """Parse the first OpenPGP packet header: (tag, first bytes of the body), or None if not one."""
    if len(data) < 2 or not data[0] & 0x80:
        return None
    ctb = data[0]
    if ctb & 0x40:  # new format: tag in the low 6 bits, then a variable-length length
        tag = ctb & 0x3F
        first = data[1]
        if first < 192:
            offset = 2
        elif first < 224:
            offset = 3
        elif first < 255:  # partial body length, allowed only for data packets
            if tag not in _DATA_TAGS:
                return None
            offset = 2
        else:
            offset = 6
    else:  # old format: tag in bits 5-2, length type in bits 1-0
        tag = (ctb >> 2) & 0x0F
        offset = 1 + {0: 1, 1: 2, 2: 4, 3: 0}[ctb & 0x03]
    return tag, data[offset : offset + 16]


def _plausible_first_packet(data: bytes) -> bool:
    parsed = _packet_body(data)
    if parsed is None:
        return False
    tag, body = parsed
    if not body:
        return False
    version = body[0]
    if tag == _PKESK:
        if version == 3:  # version, 8-byte key id, public-key algorithm
            return len(body) >= 10 and body[9] in _PUBKEY_ALGOS
        return version == 6
    if tag == _SKESK:
        return version in (4, 5, 6)
    if tag == _COMPRESSED:
        return version in (0, 1, 2, 3)  # compression algorithm: none, ZIP, ZLIB, BZip2
    if tag == _LITERAL:
        return version in b"btu1lm"  # data format octet
    if tag == _SEIPD:
        return version in (1, 2)
    if tag == _AEAD:
        return version == 1
    return False


def looks_encrypted(path: str | os.PathLike[str]) -> bool:
    """True when the file's content is an OpenPGP message (ASCII armour or binary packets).

    Decided by content, never by the extension: a ``.csv`` may be encrypted and a ``.pgp`` may be
    plain text. Leading whitespace and a UTF-8 BOM before the armour header are tolerated.
    """
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not head:
        return False
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if text.lstrip(b" \t\r\n").startswith(_ARMOR_MESSAGE):
        return True
    return _plausible_first_packet(head)


def is_armored(path: Path) -> bool:
    """True when the message is ASCII-armoured (after an optional UTF-8 BOM and whitespace)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_ARMOR_MESSAGE)

