"""Is this file an OpenPGP message? Decided by its first bytes, never by its name.

A ``.csv`` may arrive encrypted and a ``.pgp`` may arrive as plain text, so the decision to decrypt
is taken from the content: an ASCII armour header (``BEGIN PGP MESSAGE``), or binary packets that
parse as the start of an encrypted message (session keys, then encrypted data, every length within
the file). A first byte that merely looks like a packet header is not enough: Latin-1 text starting
"Ëll" reads as one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_ARMOR_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_SNIFF_BYTES = 4096
#: read this far when session-key packets (one per recipient) fill the first bytes.
_PACKET_SNIFF_BYTES = 64 * 1024

# OpenPGP packet tags (RFC 4880 / RFC 9580) of an encrypted message: session keys (public-key or
# passphrase), then the encrypted data. A compressed packet first is what gpg writes for a signed
# (or compressed) message: called OpenPGP so that decryption names it ("not encrypted").
_PKESK, _SKESK, _COMPRESSED, _SED, _SEIPD, _AEAD = 1, 3, 8, 9, 18, 20
_SESSION_TAGS = {_PKESK, _SKESK}
#: encrypted data after the session keys. Tag 9 (no integrity protection) only counts there: as a
#: first byte 0xC9 is "É" in Latin-1, and decryption refuses such messages with their own reason.
_ENCRYPTED_DATA_TAGS = {_SED, _SEIPD, _AEAD}
_PARTIAL_LENGTH_TAGS = {_COMPRESSED, _SED, _SEIPD, _AEAD}  # the only packets that may use partial lengths
_PUBKEY_ALGOS = {1, 2, 3, 16, 18, 20, 25, 26}  # RSA, ElGamal, ECDH, X25519, X448
#: a session-key packet holds a key id, an algorithm and an encrypted key: a few bytes at least, a
#: few kilobytes at most (RSA 16384 with a v6 header stays far below).
_SESSION_MIN, _SESSION_MAX = 4, 8192
#: RFC 4880 4.2.2.4: the first partial body length is at least 512 octets.
_MIN_FIRST_PARTIAL = 512


@dataclass(frozen=True)
class _PacketHeader:
    tag: int
    body_start: int
    #: None for a partial or indeterminate length (the body runs on in further chunks or to the end).
    body_length: int | None


def _packet_header(data: bytes, position: int) -> _PacketHeader | None:
    """The OpenPGP packet header at ``position`` (new or old format), or None when the bytes are not one."""
    if position >= len(data) or not data[position] & 0x80:
        return None
    ctb = data[position]
    if ctb & 0x40:  # new format: tag in the low 6 bits, then a variable-length length
        tag = ctb & 0x3F
        if position + 1 >= len(data):
            return None
        first = data[position + 1]
        if first < 192:
            return _PacketHeader(tag, position + 2, first)
        if first < 224:
            if position + 2 >= len(data):
                return None
            return _PacketHeader(tag, position + 3, ((first - 192) << 8) + data[position + 2] + 192)
        if first < 255:
            if tag not in _PARTIAL_LENGTH_TAGS or 1 << (first & 0x1F) < _MIN_FIRST_PARTIAL:
                return None
            return _PacketHeader(tag, position + 2, None)
        if position + 6 > len(data):
            return None
        return _PacketHeader(tag, position + 6, int.from_bytes(data[position + 2 : position + 6], "big"))
    tag = (ctb >> 2) & 0x0F  # old format: tag in bits 5-2, length type in bits 1-0
    length_type = ctb & 0x03
    if length_type == 3:
        return _PacketHeader(tag, position + 1, None) if tag in _PARTIAL_LENGTH_TAGS else None
    size = (1, 2, 4)[length_type]
    if position + 1 + size > len(data):
        return None
    return _PacketHeader(tag, position + 1 + size, int.from_bytes(data[position + 1 : position + 1 + size], "big"))


def _session_body_plausible(tag: int, body: bytes) -> bool:
    if not body:
        return False
    version = body[0]
    if tag == _PKESK:
        if version == 3:  # version, 8-byte key id, public-key algorithm
            return len(body) >= 10 and body[9] in _PUBKEY_ALGOS
        return version == 6
    return version in (4, 5, 6)  # SKESK


def _compressed_body_plausible(body: bytes) -> bool:
    """The algorithm octet and the start of the compressed stream agree (RFC 4880 5.6)."""
    if len(body) < 3:
        return False
    algorithm, stream = body[0], body[1:]
    if algorithm == 0:  # stored: the body is packets again
        return _packet_header(stream, 0) is not None
    if algorithm == 1:  # raw deflate: block type 3 is reserved
        return (stream[0] >> 1) & 0x03 != 3
    if algorithm == 2:  # zlib: deflate method, header checksum
        return stream[0] & 0x0F == 8 and (stream[0] << 8 | stream[1]) % 31 == 0
    if algorithm == 3:
        return stream.startswith(b"BZh")
    return False


def _encrypted_message_start(data: bytes, size: int) -> bool:
    """True when ``data`` (the first bytes of a file of ``size`` bytes) parses as the start of an
    encrypted OpenPGP message: session-key packets that fit the file, then encrypted data; or a
    compressed packet. Session-key packets must fit in the file: text that happens to begin with a
    high-bit byte ("Ëll" is a literal-data header) does not survive this. The encrypted data may be
    cut short: that is still an encrypted file, and decryption names it as damaged."""
    position = 0
    sessions = 0
    while True:
        header = _packet_header(data, position)
        if header is None:
            # Session keys that fill the bytes read (hundreds of recipients) are confirmation enough.
            return sessions > 0 and position >= len(data)
        length = header.body_length
        body = data[header.body_start : header.body_start + (length if length is not None else 64)]
        if header.tag in _SESSION_TAGS:
            if length is None or not _SESSION_MIN <= length <= _SESSION_MAX or header.body_start + length > size:
                return False
            if not _session_body_plausible(header.tag, body):
                return False
            sessions += 1
            position = header.body_start + length
            continue
        if header.tag in _ENCRYPTED_DATA_TAGS:
            if not sessions or not body:
                return False  # encrypted data without a session key: nothing could decrypt it
            if header.tag == _SEIPD:
                return body[0] in (1, 2)
            if header.tag == _AEAD:
                return body[0] == 1
            return True
        if header.tag == _COMPRESSED and not sessions:
            return _compressed_body_plausible(body)
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
    if not head[0] & 0x80:
        return False  # every OpenPGP packet header has the high bit set; text starts below it
    with open(path, "rb") as handle:
        return _encrypted_message_start(handle.read(_PACKET_SNIFF_BYTES), os.fstat(handle.fileno()).st_size)


def is_armored(path: Path) -> bool:
    """True when the message is ASCII-armoured (after an optional UTF-8 BOM and whitespace)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_ARMOR_MESSAGE)

