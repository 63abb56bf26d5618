"""SFTP transport on paramiko: pinned host keys, password / key / publickey+password auth.

Every call runs on one reused SSH connection. When the connection dies (reset, timeout, EOF)
the call is retried on a fresh connection with exponential backoff, up to ``location.retries``;
all operations are idempotent so a retry after a lost reply does no harm. Authentication and
host-key failures are terminal: retrying them only locks accounts and hides an attack.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import hashlib
import io
import logging
import os
import posixpath
import random
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.ssh_exception import (
    AuthenticationException,
    BadAuthenticationType,
    BadHostKeyException,
    IncompatiblePeer,
    PasswordRequiredException,
    SSHException,
)

from cdp_pipeline.config.connection import SftpAuth, SftpLocation
from cdp_pipeline.disk_space import DiskSpaceError, is_disk_full
from cdp_pipeline.errors import ConfigError, FileVanishedError, TransientTransportError, TransportError
from cdp_pipeline.transports.base import RemoteFile, Transport
from cdp_pipeline.transports.sftp_streams import (
    OPENSSH_WRITE_BYTES,
    PORTABLE_WRITE_BYTES,
    LocalWriteError,
    RemoteFileGrew,
    RemoteFileShrank,
    read_remote_file,
    write_remote_file,
)

__all__ = ["SftpSecrets", "SftpTransport", "host_key_fingerprint", "load_private_key"]

logger = logging.getLogger(__name__)
# Handshakes that only ask whether the server has a host key of some type end in "no acceptable
# host key" by design; paramiko would log each as an ERROR with a traceback.
_PROBE_LOG_CHANNEL = f"{__name__}.host_key_probe"
logging.getLogger(_PROBE_LOG_CHANNEL).setLevel(logging.CRITICAL)

_T = TypeVar("_T")

# The label of a PEM-style armour header; OpenSSH's own key format has the label "OPENSSH ...",
# everything else (PKCS#1, PKCS#8, SEC1) is PEM.
_ARMOUR_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

# Host key algorithms by the key blob's type name. paramiko 5 never negotiates SHA-1 "ssh-rsa"
# for host keys, so an RSA pin is matched through the SHA-2 signature algorithms.
_HOST_KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}

# Ciphers and MACs, most preferred first. AES-GCM first: one AEAD pass instead of AES-CTR plus a
# separate HMAC measured ~1.4x faster per connection in paramiko. CBC, 3DES, SHA-1 and MD5 are left
# out on purpose (S2: no legacy algorithms by default; CBC is what the Terrapin attack abuses).
_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")
_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")

_AUTH_METHOD_LABELS = {
    "password": "password",
    "private_key": "private key",
    "multi_factor": "private key + password",
}

# Back off at most this long between two attempts, so retries=10 cannot stall a run for hours.
_MAX_BACKOFF_SECONDS = 60.0


# ---------------------------------------------------------------- secrets


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


# ---------------------------------------------------------------- host keys


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64, no padding>``, exactly as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class _PinnedHostKey:
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


def _parse_known_hosts(text: str) -> _PinnedHostKey:
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
        if fields[0] not in _HOST_KEY_ALGORITHMS and len(fields) >= 3:
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
        fingerprints.add("SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("="))
        for algorithm in _HOST_KEY_ALGORITHMS.get(key_type, ()):
            if algorithm not in algorithms:
                algorithms.append(algorithm)
    if not fingerprints:
        raise ConfigError("known_hosts_line holds no host key")
    return _PinnedHostKey(frozenset(fingerprints), tuple(algorithms), "known_hosts_line")


def _parse_fingerprint(text: str) -> _PinnedHostKey:
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
    return _PinnedHostKey(frozenset({"SHA256:" + value}), (), "host_key_fingerprint")


def _pinned_host_key(location: SftpLocation) -> _PinnedHostKey:
    if location.known_hosts_line:
        return _parse_known_hosts(location.known_hosts_line)
    if location.host_key_fingerprint:
        return _parse_fingerprint(location.host_key_fingerprint)
    raise ConfigError("SFTP needs known_hosts_line or host_key_fingerprint")


# ---------------------------------------------------------------- transport


@dataclass
class _Connection:
    ssh: paramiko.Transport
    sftp: paramiko.SFTPClient

    def close(self) -> None:
        for closer in (self.sftp.close, self.ssh.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
                pass


class _HostKeyRejected(Exception):
    def __init__(self, presented: list[tuple[str, str]]):
        super().__init__("host key rejected")
        self.presented = presented  # (algorithm, fingerprint)


class SftpTransport(Transport):
    """One SFTP account. Opens its connection on first use and reuses it for every call."""

    def __init__(
        self,
        location: SftpLocation,
        secrets: SftpSecrets | None = None,
        *,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """``secrets`` default to the environment variables ``location.auth`` names."""
        self.location = location
        self.secrets = secrets if secrets is not None else SftpSecrets.from_environment(location.auth)
        if self.secrets.private_key is None and location.auth.private_key_file:
            key_file_only = SftpAuth(method="private_key", private_key_file=location.auth.private_key_file)
            key_text = SftpSecrets.from_environment(key_file_only, environ={}).private_key
            self.secrets = dataclasses.replace(self.secrets, private_key=key_text)
        self._check_secrets()
        self._pin = _pinned_host_key(location)
        self._backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._connection: _Connection | None = None
        self._private_key: paramiko.PKey | None = None
        self._lock = threading.RLock()
        #: TCP connections attempted so far (a retry opens a new one); lets callers see retries happen.
        self.connection_attempts = 0
        host = f"[{location.host}]" if ":" in location.host else location.host
        self.uri = f"sftp://{location.username}@{host}:{location.port}"

    # -------------------------------------------------------------- public API

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def resolve(self, remote_path: str) -> str:
        """The path sent to the server: relative paths are joined to ``home_directory``."""
        path = remote_path or "."
        home = self.location.home_directory
        if home and not path.startswith("/"):
            path = posixpath.join(home, path)
        return posixpath.normpath(path)

    def list_files(self, directory: str) -> list[RemoteFile]:
        remote_directory = self.resolve(directory)

        def list_directory(sftp: paramiko.SFTPClient) -> list[RemoteFile]:
            try:
                entries = sftp.listdir_attr(remote_directory)
            except OSError as exc:
                self._raise_if_connection_lost(exc)
                raise self._path_error("cannot list directory", remote_directory, exc) from None
            files = [
                RemoteFile(
                    path=posixpath.join(remote_directory, entry.filename),
                    size=int(entry.st_size or 0),
                    mtime=float(entry.st_mtime or 0),
                )
                # READDIR attributes are lstat()'s: symlinks show as links and are left out here.
                for entry in entries
                if entry.st_mode is not None and stat.S_ISREG(entry.st_mode)
            ]
            return sorted(files, key=lambda remote: remote.path)

        return self._with_retries(f"list {remote_directory}", list_directory)

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        local_path = Path(local_path)
        remote_path = self.resolve(remote.path)
        return self._with_retries(
            f"download {remote_path}", lambda sftp: self._download_once(sftp, remote, remote_path, local_path)
        )

    def download_many(self, files: Sequence[tuple[RemoteFile, Path]], parallel: int = 1) -> list[int]:
        """Download several files, over up to ``parallel`` SSH connections at once.

        One connection moves ~500 MB/s on loopback (docs/benchmarks-sftp.md), but over a long link
        it is bound by its SSH window: at most 2 MiB in flight per round trip (about 70 MB/s at 30 ms).
        Separate connections multiply that. Returns the byte counts in input order. The first
        failure stops the remaining work and is raised.
        """
        if parallel <= 1 or len(files) <= 1:
            return [self.download(remote, local) for remote, local in files]
        workers = min(parallel, len(files))
        results: list[int | None] = [None] * len(files)
        pending = list(enumerate(files))
        pending_lock = threading.Lock()
        stop = threading.Event()

        def take() -> tuple[int, tuple[RemoteFile, Path]] | None:
            with pending_lock:
                return pending.pop(0) if pending and not stop.is_set() else None

        def work(worker_index: int) -> None:
            # The first worker uses this connection; the others get their own, closed at the end.
            transport = self if worker_index == 0 else self._sibling()
            try:
                while (item := take()) is not None:
                    index, (remote, local) = item
                    try:
                        results[index] = transport.download(remote, local)
                    except BaseException:
                        stop.set()
                        raise
            finally:
                if transport is not self:
                    transport.close()
                    with self._lock:
                        self.connection_attempts += transport.connection_attempts

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sftp-download") as pool:
            futures = [pool.submit(work, index) for index in range(workers)]
        errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:
            raise errors[0]
        return [count for count in results if count is not None]

    def _sibling(self) -> SftpTransport:
        sibling = SftpTransport(self.location, self.secrets, backoff_seconds=self._backoff_seconds, sleep=self._sleep)
        sibling._private_key = self._private_key  # spare a second passphrase KDF run
        return sibling

    def upload(self, local_path: Path, remote_path: str) -> int:
        local_path = Path(local_path)
        target = self.resolve(remote_path)
        return self._with_retries(f"upload {target}", lambda sftp: self._upload_once(sftp, local_path, target))

    def rename(self, remote_path: str, new_path: str) -> None:
        source = self.resolve(remote_path)
        target = self.resolve(new_path)

        def move(sftp: paramiko.SFTPClient) -> None:
            if self._lstat(sftp, source) is None:
                if self._lstat(sftp, target) is not None:
                    return  # done by an earlier attempt whose reply was lost
                raise FileVanishedError(f"{self._where(source)}: cannot rename, the file is gone (and {target} does not exist)")
            self._make_directories(sftp, posixpath.dirname(target))
            try:
                # SSH_FXP_RENAME refuses to replace an existing target, which is what we want here.
                sftp.rename(source, target)
            except OSError as exc:
                self._raise_if_connection_lost(exc)
                if self._lstat(sftp, source) is None and self._lstat(sftp, target) is not None:
                    return
                if self._lstat(sftp, target) is not None:
                    raise TransportError(f"{self.uri}: cannot rename {source} to {target}: the target already exists") from None
                raise self._path_error(f"cannot rename {source} to", target, exc) from None

        self._with_retries(f"rename {source}", move)

    def delete(self, remote_path: str) -> None:
        target = self.resolve(remote_path)

        def remove(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(target)
            except OSError as exc:
                self._raise_if_connection_lost(exc)
                if self._lstat(sftp, target) is None:
                    return
                raise self._path_error("cannot delete", target, exc) from None

        self._with_retries(f"delete {target}", remove)

    def exists(self, remote_path: str) -> bool:
        target = self.resolve(remote_path)

        def check(sftp: paramiko.SFTPClient) -> bool:
            attributes = self._lstat(sftp, target)
            return attributes is not None and attributes.st_mode is not None and stat.S_ISREG(attributes.st_mode)

        return self._with_retries(f"stat {target}", check)

    # -------------------------------------------------------------- transfers

    def _download_once(self, sftp: paramiko.SFTPClient, remote: RemoteFile, remote_path: str, local_path: Path) -> int:
        current = self._lstat(sftp, remote_path)
        if current is None:
            raise FileVanishedError(f"{self._where(remote_path)} is gone since it was listed")
        if current.st_mode is None or not stat.S_ISREG(current.st_mode):
            raise FileVanishedError(f"{self._where(remote_path)} is no longer a regular file")
        if current.st_size != remote.size:
            raise FileVanishedError(
                f"{self._where(remote_path)} changed since it was listed: {current.st_size} bytes now, {remote.size} listed"
            )
        local_path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp: O_EXCL and mode 0600, so no other local user can read the (maybe plaintext) data.
        descriptor, temp_name = tempfile.mkstemp(dir=local_path.parent, prefix=f".{local_path.name}.", suffix=".download")
        try:
            changed = ""
            try:
                try:
                    received = read_remote_file(sftp, remote_path, remote.size, descriptor)
                except RemoteFileShrank as shrank:
                    received, changed = shrank.received, "ended early"
                except RemoteFileGrew:
                    received, changed = remote.size, "grew"
                except LocalWriteError as failure:
                    if is_disk_full(failure.error):
                        raise DiskSpaceError(
                            f"the local disk is full: cannot write the download of {self._where(remote_path)} to "
                            f"{local_path.parent} ({failure.error.strerror}); free space there or point CDP_HOME to a larger disk"
                        ) from None
                    raise TransportError(f"cannot write {temp_name} (download of {self._where(remote_path)}): {failure.error}") from None
                except FileNotFoundError:
                    raise FileVanishedError(f"{self._where(remote_path)} is gone since it was listed") from None
                except OSError as exc:
                    self._raise_if_connection_lost(exc)
                    raise self._path_error("cannot read", remote_path, exc) from None
                written = os.fstat(descriptor).st_size
            finally:
                os.close(descriptor)
            if changed or received != remote.size or written != remote.size:
                after = self._lstat(sftp, remote_path)
                if after is None:
                    raise FileVanishedError(f"{self._where(remote_path)} vanished during the download")
                if after.st_size != remote.size or changed == "grew":
                    raise FileVanishedError(
                        f"{self._where(remote_path)} changed during the download: {after.st_size} bytes now, {remote.size} listed"
                    )
                raise TransientTransportError(
                    f"{self._where(remote_path)}: received {received} bytes of {remote.size}; the transfer was cut short"
                )
            os.replace(temp_name, local_path)
            temp_name = ""
            return written
        finally:
            if temp_name:
                _remove_quietly(Path(temp_name))

    def _upload_once(self, sftp: paramiko.SFTPClient, local_path: Path, target: str) -> int:
        part = target + ".part"
        try:
            local_size = local_path.stat().st_size
        except OSError as exc:
            raise TransportError(f"cannot upload {local_path}: {exc.strerror or exc}") from None
        self._make_directories(sftp, posixpath.dirname(target))
        try:
            with local_path.open("rb") as local_file:
                try:
                    write_remote_file(sftp, local_file.fileno(), local_size, part, request_bytes=self._write_request_bytes())
                    stored = sftp.stat(part).st_size
                except OSError as exc:
                    self._raise_if_connection_lost(exc)
                    raise self._path_error("cannot write", part, exc) from None
            if stored != local_size:
                raise TransientTransportError(
                    f"{self._where(part)}: the server holds {stored} bytes after an upload of {local_size}"
                )
            try:
                sftp.posix_rename(part, target)
            except OSError as exc:
                self._raise_if_connection_lost(exc)
                # Servers without the posix-rename extension: plain RENAME refuses an existing target.
                try:
                    if self._lstat(sftp, target) is not None:
                        sftp.remove(target)
                    sftp.rename(part, target)
                except OSError as rename_exc:
                    self._raise_if_connection_lost(rename_exc)
                    raise self._path_error(f"cannot rename {part} to", target, rename_exc) from None
        except BaseException:
            # No half-written export may stay behind for a consumer to pick up. With the connection
            # gone it cannot be removed now; the retry overwrites it, and readers skip "*.part".
            connection = self._connection
            if connection is not None and connection.ssh.is_active():
                try:
                    sftp.remove(part)
                except Exception:  # noqa: BLE001 - the .part may not exist; the original error matters
                    pass
            raise
        return local_size

    def _write_request_bytes(self) -> int:
        """OpenSSH's sftp-server takes writes of up to 255 KiB; other servers get the portable 32 KiB."""
        connection = self._connection
        if connection is not None and connection.ssh.remote_version.startswith("SSH-2.0-OpenSSH_"):
            return OPENSSH_WRITE_BYTES
        return PORTABLE_WRITE_BYTES

    # -------------------------------------------------------------- helpers

    def _lstat(self, sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return sftp.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._raise_if_connection_lost(exc)
            raise self._path_error("cannot stat", path, exc) from None

    def _make_directories(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if directory in ("", ".", "/"):
            return
        attributes = self._lstat(sftp, directory)
        if attributes is not None:
            if attributes.st_mode is not None and not stat.S_ISDIR(attributes.st_mode):
                raise TransportError(f"{self._where(directory)} exists and is not a directory")
            return
        self._make_directories(sftp, posixpath.dirname(directory))
        try:
            sftp.mkdir(directory)
        except OSError as exc:
            self._raise_if_connection_lost(exc)
            if self._lstat(sftp, directory) is None:  # another client may have created it meanwhile
                raise self._path_error("cannot create directory", directory, exc) from None

    def _path_error(self, action: str, path: str, exc: OSError) -> TransportError:
        reason = exc.strerror or (exc.args[0] if exc.args else type(exc).__name__)
        if exc.errno == errno.ENOENT:
            reason = "no such file or directory"
        elif exc.errno == errno.EACCES:
            reason = "permission denied"
        return TransportError(f"{self.uri}: {action} {path}: {reason}")

    def _connection_alive(self) -> bool:
        return self._connection is not None and self._connection.ssh.is_active()

    def _raise_if_connection_lost(self, exc: BaseException) -> None:
        """Re-raise ``exc`` as is when the connection died, so the retry loop reconnects."""
        if not self._connection_alive() or isinstance(exc, (socket.timeout, EOFError)):
            raise exc

    def _check_secrets(self) -> None:
        method = self.location.auth.method
        if method in ("password", "multi_factor") and not self.secrets.password:
            raise ConfigError(f"SFTP {self._who()}: method {method} needs a password")
        if method in ("private_key", "multi_factor") and not self.secrets.private_key:
            raise ConfigError(f"SFTP {self._who()}: method {method} needs a private key")

    def _where(self, path: str) -> str:
        """A path as a URI for messages; ``/~/`` marks a path relative to the login directory."""
        return f"{self.uri}{path}" if path.startswith("/") else f"{self.uri}/~/{path}"

    def _who(self) -> str:
        location = self.location
        return f"{location.username}@{location.host}:{location.port}"

    # -------------------------------------------------------------- retries

    def _with_retries(self, action: str, operation: Callable[[paramiko.SFTPClient], _T]) -> _T:
        attempts = self.location.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with self._lock:
                    return operation(self._sftp())
            except TransientTransportError as exc:
                failure: BaseException = exc
            except TransportError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; unknown errors propagate
                if not _is_transient(exc, connection_alive=self._connection_alive()):
                    if isinstance(exc, OSError):
                        raise TransportError(f"SFTP {self._who()}: {action} failed: {_describe(exc)}") from None
                    raise
                failure = exc
            self.close()
            if attempt == attempts:
                raise TransientTransportError(
                    f"SFTP {self._who()}: {action} failed after {attempts} attempt(s): {_describe(failure)}"
                ) from failure
            delay = min(self._backoff_seconds * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS)
            delay *= random.uniform(0.5, 1.0)  # jitter: many runs retrying at once should not stampede the server
            logger.warning(
                "SFTP %s: %s failed (%s); retry %d of %d in %.1f s",
                self._who(),
                action,
                _describe(failure),
                attempt,
                attempts - 1,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- connecting

    def _sftp(self) -> paramiko.SFTPClient:
        if self._connection is not None and self._connection.ssh.is_active():
            return self._connection.sftp
        self.close()
        self._connection = self._connect()
        return self._connection.sftp

    def _open_ssh(self, host_key_algorithms: Sequence[str], *, only_these: bool = False) -> paramiko.Transport:
        """TCP connect + SSH handshake; ``host_key_algorithms`` are asked for first (or exclusively)."""
        location = self.location
        sock = socket.create_connection((location.host, location.port), timeout=location.timeout_seconds)
        try:
            # Without TCP_NODELAY, Nagle holds back our small WINDOW_ADJUST packets until the server's
            # delayed ACK (40 ms); a download could fall into that lock-step and run at ~6 MB/s for a
            # whole file (measured: 80-90 s instead of 4 s for 500 MB, about one run in eight).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ssh = paramiko.Transport(sock)
            if only_these:
                ssh.set_log_channel(_PROBE_LOG_CHANNEL)
            ssh.banner_timeout = location.timeout_seconds
            ssh.handshake_timeout = location.timeout_seconds
            ssh.auth_timeout = location.timeout_seconds
            ssh.channel_timeout = location.timeout_seconds
            options = ssh.get_security_options()
            options.ciphers = [cipher for cipher in _CIPHERS if cipher in options.ciphers]
            options.digests = [mac for mac in _MACS if mac in options.digests]
            if host_key_algorithms:
                others = [] if only_these else [k for k in options.key_types if k not in host_key_algorithms]
                options.key_types = [*host_key_algorithms, *others]
            ssh.start_client(timeout=location.timeout_seconds)
            return ssh
        except BaseException:
            sock.close()
            raise

    def _connect(self) -> _Connection:
        try:
            ssh = self._open_verified_ssh()
        except _HostKeyRejected as rejected:
            raise self._host_key_error(rejected) from None
        except IncompatiblePeer as exc:
            raise TransportError(
                f"SFTP {self._who()}: the server offers no algorithm this client accepts ({exc}). Legacy "
                f"algorithms (CBC, 3DES, SHA-1 MACs, ssh-rsa signatures) are disabled; ask the operator to "
                f"enable AES-GCM/CTR with SHA-2 and ed25519/ecdsa/rsa-sha2 host keys"
            ) from None
        try:
            self._authenticate(ssh)
            sftp = paramiko.SFTPClient.from_transport(ssh)
            if sftp is None:
                raise SSHException("the server refused the sftp subsystem")
            # A stalled server must not hang a run forever: every read waits at most timeout_seconds.
            sftp.get_channel().settimeout(self.location.timeout_seconds)
        except BaseException:
            ssh.close()
            raise
        logger.info("SFTP connected to %s", self.uri)
        return _Connection(ssh=ssh, sftp=sftp)

    def _open_verified_ssh(self) -> paramiko.Transport:
        pin = self._pin
        self.connection_attempts += 1
        ssh = self._open_ssh(pin.algorithms)
        presented = self._presented(ssh)
        if presented[1] in pin.fingerprints:
            return ssh
        ssh.close()
        seen = [presented]
        if not pin.algorithms:
            # A bare fingerprint does not say which of the server's host keys it is. Ask for each
            # other key type in turn, so pinning the server's RSA or ECDSA key works too.
            tried = {presented[0]}
            for algorithms in _HOST_KEY_ALGORITHMS.values():
                if any(algorithm in tried for algorithm in algorithms):
                    continue
                tried.update(algorithms)
                try:
                    ssh = self._open_ssh(algorithms, only_these=True)
                except IncompatiblePeer:
                    continue  # the server has no key of this type
                candidate = self._presented(ssh)
                if candidate[1] in pin.fingerprints:
                    return ssh
                ssh.close()
                seen.append(candidate)
        raise _HostKeyRejected(seen)

    @staticmethod
    def _presented(ssh: paramiko.Transport) -> tuple[str, str]:
        key = ssh.get_remote_server_key()
        return ssh.host_key_type or key.get_name(), host_key_fingerprint(key)

    def _authenticate(self, ssh: paramiko.Transport) -> None:
        method = self.location.auth.method
        factors = {
            "password": ["password"],
            "private_key": ["publickey"],
            "multi_factor": ["publickey", "password"],
        }[method]
        allowed: list[str] | None = None  # None until the server has said what it accepts
        for _ in range(len(factors) + 2):
            if ssh.is_authenticated() or not factors:
                break
            factor = next((f for f in factors if allowed is None or _offers(allowed, f)), None)
            if factor is None:
                break
            try:
                if factor == "publickey":
                    allowed = ssh.auth_publickey(self.location.username, self._key())
                else:
                    allowed = ssh.auth_password(self.location.username, self.secrets.password)
                factors.remove(factor)
            except BadAuthenticationType as exc:
                # e.g. "password,publickey": the server wants the other factor first.
                allowed = list(exc.allowed_types)
                if not any(_offers(allowed, f) for f in factors):
                    raise self._auth_error(f"the server accepts only {', '.join(allowed) or 'nothing'}") from None
            except AuthenticationException:
                raise self._auth_error(f"the server rejected the {factor}") from None
        if not ssh.is_authenticated():
            needed = ", ".join(allowed or []) or "unknown"
            hint = " (set auth method multi_factor)" if method != "multi_factor" else ""
            raise self._auth_error(f"the server requires further authentication: {needed}{hint}")

    def _key(self) -> paramiko.PKey:
        if self._private_key is None:
            assert self.secrets.private_key is not None
            self._private_key = load_private_key(self.secrets.private_key, self.secrets.passphrase)
        return self._private_key

    def _auth_error(self, reason: str) -> TransportError:
        method = _AUTH_METHOD_LABELS[self.location.auth.method]
        return TransportError(
            f"SFTP authentication failed for user {self.location.username!r} on {self.location.host}:"
            f"{self.location.port} with {method}: {reason}. Check the credentials; not retried, "
            f"so the account is not locked out"
        )

    def _host_key_error(self, rejected: _HostKeyRejected) -> TransportError:
        shown = "; ".join(f"{algorithm} {fingerprint}" for algorithm, fingerprint in rejected.presented)
        return TransportError(
            f"SFTP host key of {self.location.host}:{self.location.port} does not match the pinned key: "
            f"the server presented {shown}, the {self._pin.source} expects {self._pin.describe()}. "
            f"Nothing was transferred. If the server's key really changed, confirm the new fingerprint "
            f"with its operator and update the connection"
        )


def _offers(allowed: Sequence[str], factor: str) -> bool:
    if factor == "password":
        # paramiko's auth_password falls back to keyboard-interactive (PAM) when password is not offered.
        return "password" in allowed or "keyboard-interactive" in allowed
    return factor in allowed


def _is_transient(exc: BaseException, *, connection_alive: bool) -> bool:
    if isinstance(exc, (AuthenticationException, BadHostKeyException, IncompatiblePeer, PasswordRequiredException)):
        return False
    if isinstance(exc, (TimeoutError, socket.timeout, ConnectionError, EOFError, socket.gaierror)):
        return True
    if isinstance(exc, SSHException):
        return True  # banner/kex failures and dropped connections
    if isinstance(exc, OSError):
        # An SFTP status error (no such file, permission denied, failure) arrives on a live
        # connection and will be the same next time; an OSError with the link down is the network.
        return not connection_alive
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
