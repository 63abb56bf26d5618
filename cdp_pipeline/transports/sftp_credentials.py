"""The secret half of an SFTP login: password, private key and its passphrase, and key loading.

Secrets come from environment variables (or a key file) at run time, never from YAML, and never
appear in a message, a ``repr`` or a traceback's locals.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.ssh_exception import SSHException

from cdp_pipeline.config.connection import SftpAuth
from cdp_pipeline.errors import ConfigError, TransportError

__all__ = ["SftpSecrets", "load_private_key"]

# The label of a PEM-style armour header; OpenSSH's own key format has the label "OPENSSH ...",
# everything else (PKCS#1, PKCS#8, SEC1) is PEM.
_ARMOUR_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


@dataclass(frozen=True)
class SftpSecrets:
    """The secret half of an SFTP location, resolved from the environment at run time.

    ``repr`` shows only which secrets are set: a secret in a log line, a Dagster event or a
    traceback's locals is a leak that cannot be taken back.
    """

    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # key text (OpenSSH or PEM)
    passphrase: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'<set>' if getattr(self, name) else '<unset>'}"
            for name in ("password", "private_key", "passphrase")
        )
        return f"SftpSecrets({shown})"

    __str__ = __repr__

    @classmethod
    def from_environment(cls, auth: SftpAuth, environ: Mapping[str, str] | None = None) -> SftpSecrets:
        """Read the secrets ``auth`` names from ``environ`` (default ``os.environ``).

        ``private_key_file`` is read from disk. Missing variables raise ConfigError naming the
        variable, never its value.
        """
        environ = os.environ if environ is None else environ

        def variable(name: str | None, purpose: str) -> str | None:
            if name is None:
                return None
            value = environ.get(name)
            if not value:
                raise ConfigError(f"environment variable {name} ({purpose} of the SFTP location) is not set or empty")
            return value

        private_key = variable(auth.private_key_env, "private key")
        if private_key is None and auth.private_key_file:
            key_path = Path(auth.private_key_file).expanduser()
            try:
                private_key = key_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read private_key_file {key_path}: {exc.strerror or exc}") from None
        return cls(
            password=variable(auth.password_env, "password"),
            private_key=private_key,
            passphrase=variable(auth.passphrase_env, "key passphrase"),
        )


def load_private_key(key_text: str, passphrase: str | None = None) -> paramiko.PKey:
    """A paramiko key from OpenSSH or PEM text; ed25519, ecdsa (256/384/521) or RSA, detected.

    Error messages describe the failure only: the key text and passphrase never appear.
    """
    data = key_text.strip().encode("utf-8") + b"\n"
    password = passphrase.encode("utf-8") if passphrase else None
    armour = _ARMOUR_LABEL.search(data)
    is_openssh = armour is not None and armour.group(1).startswith(b"OPENSSH ")

    def parse(with_password: bytes | None):
        if is_openssh:
            return serialization.load_ssh_private_key(data, password=with_password)
        return serialization.load_pem_private_key(data, password=with_password)

    try:
        try:
            parsed = parse(password)
        except TypeError:
            if password is None:
                raise TransportError(
                    "the SFTP private key is passphrase-protected but no passphrase is configured (set passphrase_env)"
                ) from None
            # A passphrase configured for an unprotected key is harmless; load the key without it.
            parsed = parse(None)
            password = None
    except TransportError:
        raise
    except (ValueError, TypeError) as exc:
        reason = "wrong passphrase, or not an OpenSSH/PEM private key" if password else "not an OpenSSH/PEM private key"
        raise TransportError(f"the SFTP private key cannot be loaded ({reason}; {type(exc).__name__})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd key types
        raise TransportError(f"the SFTP private key cannot be loaded ({type(exc).__name__})") from None

    key_class: type[paramiko.PKey]
    if isinstance(parsed, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(parsed, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    elif isinstance(parsed, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    else:
        raise TransportError(f"unsupported SFTP private key type {type(parsed).__name__}; use ed25519, ecdsa or rsa")
    # paramiko reads only OpenSSH and traditional PEM headers; handing it the already decrypted key
    # in OpenSSH form also accepts PKCS#8 files and spares a second (deliberately slow) bcrypt KDF.
    openssh_text = parsed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")
    try:
        return key_class.from_private_key(io.StringIO(openssh_text))
    except (SSHException, ValueError) as exc:
        raise TransportError(f"the SFTP private key cannot be loaded by paramiko ({type(exc).__name__})") from None

