"""Host key pinning for SFTP: the pin from ``known_hosts_line`` or ``host_key_fingerprint``, and
OpenSSH-style SHA256 fingerprints.

An unknown or changed host key is refused, never learned: accepting it would hand the login and
the customer's files to whoever answers on that address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import paramiko

from cdp_pipeline.config.connection import SftpLocation
from cdp_pipeline.errors import ConfigError

__all__ = ["HOST_KEY_ALGORITHMS", "HostKeyRejected", "PinnedHostKey", "host_key_fingerprint", "pinned_host_key"]

# Host key algorithms by the key blob's type name. paramiko 5 never negotiates SHA-1 "ssh-rsa"
# for host keys, so an RSA pin is matched through the SHA-2 signature algorithms.
HOST_KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64, no padding>``, exactly as ``ssh-keygen -lf`` prints it."""
    return _fingerprint_of_blob(key.asbytes())


def _fingerprint_of_blob(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class PinnedHostKey:
    """The host keys a connection accepts; any other key ends the connection before login."""

    fingerprints: frozenset[str]
    #: host key algorithms to ask for first (from a known_hosts line); empty for a bare fingerprint.
    algorithms: tuple[str, ...]
    source: str  # "known_hosts_line" or "host_key_fingerprint", for messages

    def describe(self) -> str:
        return ", ".join(sorted(self.fingerprints))


def _blob_type(blob: bytes) -> str:
    try:
        return paramiko.Message(blob).get_text()
    except Exception:
        return ""


def _parse_known_hosts(text: str) -> PinnedHostKey:
    fingerprints: set[str] = set()
    algorithms: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0].startswith("@"):
            # @revoked / @cert-authority lines pin nothing we can match against a plain host key.
            continue
        # "host[,host] type base64 [comment]", or a bare "type base64" as in a .pub file.
        if fields[0] not in HOST_KEY_ALGORITHMS and len(fields) >= 3:
            fields = fields[1:]
        if len(fields) < 2:
            raise ConfigError(f"known_hosts_line is not 'host keytype base64': {line[:80]!r}")
        key_type, key_base64 = fields[0], fields[1]
        try:
            blob = base64.b64decode(key_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"known_hosts_line has an invalid base64 key for {key_type}") from None
        if _blob_type(blob) != key_type:
            raise ConfigError(f"known_hosts_line: the key data is not a {key_type} key")
        fingerprints.add(_fingerprint_of_blob(blob))
        for algorithm in HOST_KEY_ALGORITHMS.get(key_type, ()):
            if algorithm not in algorithms:
                algorithms.append(algorithm)
    if not fingerprints:
        raise ConfigError("known_hosts_line holds no host key")
    return PinnedHostKey(frozenset(fingerprints), tuple(algorithms), "known_hosts_line")


def _parse_fingerprint(text: str) -> PinnedHostKey:
    # Accept a whole `ssh-keygen -lf` line ("256 SHA256:xxx host (ED25519)") as well as the bare value.
    token = next((part for part in text.split() if part.startswith("SHA256:")), None)
    if token is None:
        raise ConfigError(
            "host_key_fingerprint must be an OpenSSH SHA256 fingerprint ('SHA256:...' as printed by ssh-keygen -lf)"
        )
    value = token.removeprefix("SHA256:").rstrip("=")
    try:
        digest = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise ConfigError(f"host_key_fingerprint {token!r} is not a SHA256 fingerprint (43 base64 characters)")
    return PinnedHostKey(frozenset({"SHA256:" + value}), (), "host_key_fingerprint")


def pinned_host_key(location: SftpLocation) -> PinnedHostKey:
    if location.known_hosts_line:
        return _parse_known_hosts(location.known_hosts_line)
    if location.host_key_fingerprint:
        return _parse_fingerprint(location.host_key_fingerprint)
    raise ConfigError("SFTP needs known_hosts_line or host_key_fingerprint")


class HostKeyRejected(Exception):
    """No host key the server presented matches the pin."""

    def __init__(self, presented: list[tuple[str, str]]):
        super().__init__("host key rejected")
        self.presented = presented  # (algorithm, fingerprint)
