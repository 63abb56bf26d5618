"""OpenPGP decryption and encryption of delivery files with python-gnupg and the real ``gpg`` binary.

This is engine code: it knows nothing about Dagster. The orchestration layer resolves the
environment variables named in a connection's ``pgp:`` settings and hands the key material to
:class:`PgpKeyring` as strings.

Design (see docs/pgp.md and reliability anchors 23-29, security S3-S8):

* Every :class:`PgpKeyring` is a fresh, private GNUPGHOME (mode 0700, short path under /tmp
  because gpg-agent socket paths are limited to ~107 characters). Only the configured keys are
  imported and their fingerprints are checked after the import; the operator's ``~/.gnupg`` is
  never read. On exit the agent is killed and the home removed, in ``finally`` (not ``__del__``,
  which is not guaranteed to run).
* gpg-agent is configured with a passphrase cache TTL of 0: the configured passphrase is sent
  with every operation, so a wrong passphrase fails every time, not only on the first call.
* Decryption streams file to file: gpg reads the ciphertext file itself and writes the plaintext
  to a file created beforehand with mode 0600. Memory does not grow with the file size.
* A decryption is accepted only when gpg says ``DECRYPTION_OKAY``, the message was integrity
  protected (MDC or AEAD), the key that decrypted it is one of ours, the return code is 0 (or the
  only complaint is about a signature nobody asked us to check) and, when a signer is pinned, a
  valid signature from exactly that fingerprint is present. Anything else deletes the output and
  raises :class:`~cdp_pipeline.errors.CryptoError` with the file name and what to do.
* ``always_trust`` (``--trust-model always``) is used because the web of trust has no meaning
  in a throw-away keyring: every key in it came from configuration and was verified at import.

Not thread safe: use one keyring per thread (they are cheap: a temp dir and an agent).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import gnupg

from cdp_pipeline.disk_space import DiskSpaceError, says_disk_full
from cdp_pipeline.errors import CryptoError

logger = logging.getLogger(__name__)

# The armour header of a key block, by kind: what a key setting holds is decided from it.
_KEY_ARMOUR = re.compile(r"-----BEGIN PGP (PUBLIC|PRIVATE) KEY BLOCK-----")

__all__ = [
    "DecryptResult",
    "KeyInfo",
    "PgpKeyring",
    "judge_decryption",
    "looks_encrypted",
    "normalize_fingerprint",
    "MIN_GPG_VERSION",
]

#: gpg older than this lacks status lines we rely on (DECRYPTION_KEY, VALIDSIG primary fingerprint).
MIN_GPG_VERSION: tuple[int, int] = (2, 2)

Purpose = Literal["decrypt", "encrypt", "signer"]

_ARMOR_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_SNIFF_BYTES = 4096

# OpenPGP packet tags that can start an encrypted (or at least OpenPGP-packaged) message.
_PKESK, _SKESK, _COMPRESSED, _LITERAL, _SEIPD, _AEAD = 1, 3, 8, 11, 18, 20
# Tag 9 (symmetrically encrypted data without MDC) is left out on purpose: as the first packet it
# means PGP 2 "conventional" encryption we would refuse anyway, and its header byte (0xC9 = "É" in
# Latin-1) would misclassify plain French CSV files.
_DATA_TAGS = {_COMPRESSED, _LITERAL, _SEIPD, _AEAD}  # the only packets that may use partial lengths
_PUBKEY_ALGOS = {1, 2, 3, 16, 18, 20, 25, 26}  # RSA, ElGamal, ECDH, X25519, X448

_FPR = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_STATUS_PREFIX = "[GNUPG:] "
_BAD_PASSPHRASE_CODE = 11  # GPG_ERR_BAD_PASSPHRASE, the low 16 bits of an ERROR status code
_NO_SECKEY_CODE = 17  # GPG_ERR_NO_SECKEY

#: a floor for each gpg call, plus time proportional to the file size (see _timeout_for).
DEFAULT_TIMEOUT_SECONDS = 120.0
#: assumed worst-case throughput when scaling the timeout; gpg does 130-480 MB/s here (speed anchors).
_MIN_BYTES_PER_SECOND = 5 * 1024 * 1024

# gpg.conf / gpg-agent.conf of every fresh home.
_GPG_CONF = "\n".join(
    [
        # never reach out to key servers or WKD while verifying signatures or encrypting
        "no-auto-key-retrieve",
        "no-auto-key-locate",
        # do not cache passphrases of symmetric messages in the agent
        "no-symkey-cache",
        "",
    ]
)
_AGENT_CONF = "\n".join(
    [
        # no passphrase caching: a wrong passphrase must fail every time (dagster anchors §3.5)
        "default-cache-ttl 0",
        "max-cache-ttl 0",
        "allow-loopback-pinentry",
        "",
    ]
)


class _NoKeyMaterialFilter(logging.Filter):
    """python-gnupg logs the first 256 characters of imported key data at DEBUG level; drop that."""

    _SENSITIVE = ("import_keys: %r", "import_keys result: %r", "chunk: %r")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg in self._SENSITIVE)


def _install_log_filter() -> None:
    gnupg_logger = logging.getLogger("gnupg")
    if not any(isinstance(f, _NoKeyMaterialFilter) for f in gnupg_logger.filters):
        gnupg_logger.addFilter(_NoKeyMaterialFilter())


_install_log_filter()


# ---------------------------------------------------------------- sniffing


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


def _is_armored(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_ARMOR_MESSAGE)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class DecryptResult:
    """What a successful decryption produced and which keys were involved (never key material)."""

    path: Path
    bytes_written: int
    #: primary fingerprint of our key that decrypted the message
    decryption_key: str | None
    #: long key ids the message was encrypted to (``0000000000000000`` = hidden recipient)
    recipient_key_ids: tuple[str, ...]
    #: primary fingerprint of the verified signer, when a signer is pinned
    signer_fingerprint: str | None
    #: "verified": signed by the pinned signer; "unverified": signed, but no signer configured;
    #: "none": not signed (only possible when no signer is pinned)
    signature: Literal["verified", "unverified", "none"]
    armored: bool


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: str
    user_id: str
    purpose: Purpose
    #: the earliest of the primary key's expiry and the expiry of the subkey(s) doing the work
    expires_at: datetime | None
    #: whole days until expiry (negative once expired); None when the key does not expire
    days_left: int | None
    revoked: bool = False


# ---------------------------------------------------------------- helpers


def normalize_fingerprint(value: str, what: str = "fingerprint") -> str:
    """Upper-case hex without spaces or ``0x``; refuse short key ids (they can be forged)."""
    cleaned = re.sub(r"\s+", "", value).upper()
    if cleaned.startswith("0X"):
        cleaned = cleaned[2:]
    if not _FPR.match(cleaned):
        raise CryptoError(
            f"{what} {value!r} is not a full OpenPGP fingerprint (40 hex digits, or 64 for v5 keys); "
            "short key ids are refused because they can be forged. Get it with `gpg --fingerprint KEY`."
        )
    return cleaned


def _check_passphrase(passphrase: str | None) -> str | None:
    if passphrase is None or passphrase == "":
        # An empty string would make python-gnupg send no passphrase line while still telling gpg
        # to read one from stdin; treat it as "no passphrase".
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in passphrase):
        # CVE-2019-6690: the passphrase goes to gpg over stdin, one line; a newline would let the
        # rest of the value be read as input.
        raise CryptoError(
            "the PGP passphrase contains a newline or another control character; this is refused "
            "(CVE-2019-6690: it would be passed on to gpg as extra input). Store the passphrase without "
            "a trailing newline in the variable named by pgp.passphrase_env (e.g. `printf %s` rather than `echo`)."
        )
    return passphrase


def _statuses(stderr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in stderr.splitlines():
        if line.startswith(_STATUS_PREFIX):
            keyword, _, value = line[len(_STATUS_PREFIX) :].partition(" ")
            out.append((keyword, value.strip()))
    return out


def _error_code(value: str) -> int | None:
    """The gpg error code (low 16 bits) of an ``ERROR``/``FAILURE`` status value, if any."""
    last = value.rsplit(" ", 1)[-1]
    return int(last) & 0xFFFF if last.isdigit() else None


def _gpg_says(stderr: str, limit: int = 3) -> str:
    """gpg's own human-readable complaint lines (not status lines), for the end of an error message."""
    lines = [
        line.strip()[len("gpg: ") :]
        for line in stderr.splitlines()
        if line.startswith("gpg: ") and ("error" in line or "fail" in line or "WARNING" in line or "invalid" in line)
    ]
    return "; ".join(lines[-limit:])


def _raise_if_disk_full(stderr: str | None, action: str, dst: Path) -> None:
    """gpg's write error on a full disk would otherwise read like a key or file problem."""
    # gpg runs with LC_ALL=C, so strerror's English text is what it prints.
    if says_disk_full(stderr):
        raise DiskSpaceError(
            f"the local disk is full: gpg could not {action} into {dst.parent} (No space left on device); "
            "free space there, or point CDP_HOME to a larger disk"
        )


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("could not remove partial output %s", path, exc_info=True)


def _create_private_file(path: Path) -> None:
    """(Re)create ``path`` empty with mode 0600 so gpg writes into it without ever widening the mode.

    gpg opens an existing output with O_TRUNC and keeps its mode; O_EXCL|O_NOFOLLOW makes sure the
    file we hand over is a new regular file, not a symlink planted in its place.
    """
    _unlink_quietly(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, 0o600))


def _from_epoch(value: str | None) -> datetime | None:
    if not value or not value.isdigit() or int(value) == 0:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _fix_uid(uid: str) -> str:
    """python-gnupg decodes gpg output as Latin-1; gpg writes user ids in UTF-8."""
    try:
        return uid.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return uid


# ---------------------------------------------------------------- gpg with a watchdog


class _TimedGPG(gnupg.GPG):
    """python-gnupg has no timeout; this kills a gpg call that runs past ``self.timeout``.

    python-gnupg (pinned <0.6) exposes neither the Popen object nor a timeout, so this overrides
    its two internal hooks: ``_open_subprocess`` starts a timer per process and ``_collect_output``
    (which blocks until gpg exits) cancels it. A killed gpg closes its pipes, python-gnupg's reader
    threads finish and the call returns with a negative return code; ``timed_out`` tells us why.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.timeout: float = DEFAULT_TIMEOUT_SECONDS
        self.timed_out = False
        self._timers: dict[int, threading.Timer] = {}
        super().__init__(**kwargs)

    def _open_subprocess(self, args: list[str], passphrase: bool = False) -> subprocess.Popen[bytes]:
        process = super()._open_subprocess(args, passphrase)
        timer = threading.Timer(self.timeout, self._expire, args=(process,))
        timer.daemon = True
        self._timers[process.pid] = timer
        timer.start()
        return process

    def _expire(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            self.timed_out = True
            process.kill()

    def _collect_output(self, process: subprocess.Popen[bytes], result: Any, writer: Any = None, stdin: Any = None) -> int:
        try:
            return super()._collect_output(process, result, writer, stdin)
        finally:
            timer = self._timers.pop(process.pid, None)
            if timer is not None:
                timer.cancel()


# ---------------------------------------------------------------- keyring


@dataclass
class _Key:
    fingerprint: str
    purpose: Purpose


class PgpKeyring:
    """A throw-away GnuPG home holding exactly the configured keys. Use as a context manager::

        with PgpKeyring(private_keys=[key_text], passphrase=pw) as keyring:
            keyring.decrypt_file(src, dst, display_name="orders_2024.csv.pgp")

    Parameters are key *material* (armoured text), resolved from environment variables by the
    caller. ``public_key_fingerprint`` and ``signer_fingerprint`` pin the keys: a key whose
    fingerprint differs is refused. All private keys share one passphrase (or have none): gpg is
    given the same passphrase for each of them, as a connection's ``pgp.passphrase_env`` is one value.
    """

    def __init__(
        self,
        private_keys: Sequence[str] = (),
        passphrase: str | None = None,
        public_key: str | None = None,
        public_key_fingerprint: str | None = None,
        signer_public_key: str | None = None,
        signer_fingerprint: str | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        gpg_binary: str = "gpg",
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        if isinstance(private_keys, str):
            raise TypeError("private_keys is a list of armoured keys, not one string")
        self._private_keys = list(private_keys)
        self._passphrase = _check_passphrase(passphrase)
        self._public_key = public_key or None
        self._public_pin = normalize_fingerprint(public_key_fingerprint, "public_key_fingerprint") if public_key_fingerprint else None
        self._signer_key = signer_public_key or None
        self._signer_pin = normalize_fingerprint(signer_fingerprint, "signer_fingerprint") if signer_fingerprint else None
        if self._public_pin and not self._public_key:
            raise CryptoError("public_key_fingerprint is set but no public key was given (pgp.public_key_env)")
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._gpg_binary = gpg_binary
        self._timeout = float(timeout_seconds)
        self._home: Path | None = None
        self._gpg: _TimedGPG | None = None
        self._env: dict[str, str] = {}
        self._keys: list[_Key] = []
        self._recipient: str | None = None
        self._signer: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    @property
    def home(self) -> Path:
        """The GNUPGHOME of this keyring (exists only inside the ``with`` block)."""
        if self._home is None:
            raise CryptoError("the PGP keyring is not open; use `with PgpKeyring(...) as keyring:`")
        return self._home

    @property
    def recipient_fingerprint(self) -> str | None:
        """Primary fingerprint exports are encrypted to (None without a public key)."""
        return self._recipient

    @property
    def signer_fingerprint(self) -> str | None:
        return self._signer

    @property
    def decryption_fingerprints(self) -> list[str]:
        return [k.fingerprint for k in self._keys if k.purpose == "decrypt"]

    def __enter__(self) -> PgpKeyring:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        if self._home is not None:
            raise CryptoError("this PGP keyring is already open")
        self._home = self._make_home()
        try:
            self._env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "GNUPGHOME": str(self._home),
                "LC_ALL": "C",
            }
            (self._home / "gpg.conf").write_text(_GPG_CONF)
            (self._home / "gpg-agent.conf").write_text(_AGENT_CONF)
            try:
                gpg = _TimedGPG(
                    gpgbinary=self._gpg_binary,
                    gnupghome=str(self._home),
                    env=self._env,
                    # loopback for every call: gpg must never start a pinentry (a GUI pinentry would
                    # hang a run); without a passphrase, a protected key then fails at once.
                    options=["--pinentry-mode", "loopback"],
                )
            except (OSError, ValueError) as exc:
                raise CryptoError(
                    f"cannot run gpg ({self._gpg_binary!r}): {exc}. Install GnuPG 2.2 or newer (Debian: apt-get install gnupg)."
                ) from None
            version = tuple(gpg.version or (0,))
            if version < MIN_GPG_VERSION:
                raise CryptoError(
                    f"gpg {'.'.join(map(str, version))} is too old; GnuPG {'.'.join(map(str, MIN_GPG_VERSION))} or newer is required"
                )
            gpg.timeout = self._timeout
            # bigger chunks than the 16 KiB default when python-gnupg copies data (key imports)
            gpg.buffer_size = 256 * 1024
            self._gpg = gpg
            self._import_all()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill this home's gpg-agent and remove the home. Safe to call twice."""
        home, self._home = self._home, None
        self._gpg = None
        self._keys = []
        self._recipient = self._signer = None
        if home is None:
            return
        try:
            gpgconf = str(Path(self._gpg_binary).with_name("gpgconf")) if os.sep in self._gpg_binary else "gpgconf"
            subprocess.run(
                [gpgconf, "--homedir", str(home), "--kill", "all"],
                env=self._env or None,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            logger.warning("could not stop gpg-agent of %s", home, exc_info=True)
        finally:
            self._remove_home(home)

    def _make_home(self) -> Path:
        base = self._base_dir
        if base is None:
            base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
        home = Path(tempfile.mkdtemp(prefix="cdpg-", dir=base))
        os.chmod(home, 0o700)  # mkdtemp already uses 0700; be explicit, gpg warns on anything wider
        if len(str(home)) + len("/S.gpg-agent.browser") > 100:
            self._remove_home(home)
            raise CryptoError(
                f"GnuPG home {home} is too long for gpg-agent's socket paths (about 107 characters); "
                "use a shorter base directory such as /tmp"
            )
        return home

    @staticmethod
    def _remove_home(home: Path) -> None:
        # The agent removes its sockets while it shuts down; rmtree can race with that.
        for attempt in range(5):
            try:
                shutil.rmtree(home)
                return
            except FileNotFoundError:
                if not home.exists():
                    return
            except OSError:
                if attempt == 4:
                    logger.warning("could not remove GnuPG home %s", home, exc_info=True)
                    return
            time.sleep(0.05)

    def _require_open(self) -> _TimedGPG:
        if self._gpg is None:
            raise CryptoError("the PGP keyring is not open; use `with PgpKeyring(...) as keyring:`")
        return self._gpg

    # ------------------------------------------------------------ import

    def _import_block(self, text: str, what: str, expect_private: bool) -> list[str]:
        """Import one armoured block; return the primary fingerprints it brought in."""
        gpg = self._require_open()
        stripped = text.strip()
        kinds = set(_KEY_ARMOUR.findall(stripped))
        if "PRIVATE" in kinds and not expect_private:
            raise CryptoError(
                f"{what} holds a PRIVATE key; give only the public key (export it with `gpg --armor --export FINGERPRINT`)"
            )
        if expect_private and kinds == {"PUBLIC"}:
            raise CryptoError(
                f"{what} holds a public key, not a private key; export the private key with "
                "`gpg --armor --export-secret-keys FINGERPRINT`"
            )
        if "-----BEGIN PGP" not in stripped:
            raise CryptoError(
                f"{what} is not an ASCII-armoured OpenPGP key (it should start with '-----BEGIN PGP ... KEY BLOCK-----'); "
                "check that the environment variable holds the key text, not a file name"
            )
        gpg.timed_out = False
        result = gpg.import_keys(stripped)
        if gpg.timed_out:
            raise CryptoError(f"importing {what} did not finish within {self._timeout:.0f} s")
        fingerprints = list(dict.fromkeys(fp.upper() for fp in result.fingerprints if fp))
        if not fingerprints or result.not_imported:
            problems = "; ".join(r.get("text", "").strip() for r in result.results if "problem" in r) or "no key found"
            raise CryptoError(f"{what} could not be imported: {problems}. Check that the variable holds the whole armoured block.")
        if expect_private:
            if not result.sec_read:
                raise CryptoError(f"{what} contains no private key")
            secret = {k["fingerprint"].upper() for k in gpg.list_keys(secret=True)}
            missing = [fp for fp in fingerprints if fp not in secret]
            if missing:
                raise CryptoError(f"{what}: key(s) {', '.join(missing)} were imported without their private part")
        return fingerprints

    def _import_all(self) -> None:
        for index, text in enumerate(self._private_keys, start=1):
            what = f"private key {index} of {len(self._private_keys)}"
            for fpr in self._import_block(text, what, expect_private=True):
                self._keys.append(_Key(fpr, "decrypt"))
        for fpr in self.decryption_fingerprints:
            # Own capabilities (lower case), not the key's aggregate: an expired key loses "E" there
            # but still decrypts late deliveries, which rotation needs.
            listing = self._key_listing(fpr)
            own = [str(listing.get("cap", ""))] + [str(i.get("cap", "")) for i in (listing.get("subkey_info") or {}).values()]
            if not any("e" in cap for cap in own):
                raise CryptoError(f"private key {fpr} has no encryption subkey, so it cannot decrypt anything")

        if self._public_key:
            fprs = self._import_block(self._public_key, "the public key (pgp.public_key_env)", expect_private=False)
            if len(fprs) != 1:
                raise CryptoError(
                    f"the public key (pgp.public_key_env) contains {len(fprs)} keys ({', '.join(fprs)}); "
                    "give exactly the recipient's key"
                )
            if self._public_pin and fprs[0] != self._public_pin:
                raise CryptoError(
                    f"the public key's fingerprint is {fprs[0]}, but pgp.public_key_fingerprint pins {self._public_pin}; "
                    "exports are not encrypted to an unexpected key. If the recipient really changed keys, "
                    "update both settings together."
                )
            self._recipient = fprs[0]
            self._keys.append(_Key(fprs[0], "encrypt"))

        if self._signer_key:
            fprs = self._import_block(self._signer_key, "the signer's public key (pgp.signer_public_key_env)", expect_private=False)
            if self._signer_pin is None:
                if len(fprs) != 1:
                    raise CryptoError(
                        f"the signer's public key contains {len(fprs)} keys; set pgp.signer_fingerprint to say which one must sign"
                    )
                self._signer_pin = fprs[0]
            elif self._signer_pin not in fprs:
                raise CryptoError(
                    f"the signer's public key has fingerprint(s) {', '.join(fprs)}, but pgp.signer_fingerprint pins "
                    f"{self._signer_pin}; ask the sender for the key they sign with"
                )
            # other keys in the sender's block may stay: only the pinned one counts as a signer
            signer_block = set(fprs)
        else:
            signer_block = set()
        if self._signer_pin:
            present = {k["fingerprint"].upper() for k in self._require_open().list_keys()}
            if self._signer_pin not in present:
                raise CryptoError(
                    f"pgp.signer_fingerprint pins {self._signer_pin} but no key with that fingerprint was given; "
                    "set pgp.signer_public_key_env to the sender's public key"
                )
            self._signer = self._signer_pin
            self._keys.append(_Key(self._signer_pin, "signer"))

        # Nothing but the configured keys may be in this home (an armoured block can carry extra keys).
        expected = {k.fingerprint for k in self._keys} | signer_block
        present = {k["fingerprint"].upper() for k in self._require_open().list_keys()}
        extra = present - expected
        if extra:
            raise CryptoError(f"unexpected extra key(s) in the configured key material: {', '.join(sorted(extra))}")
        logger.info(
            "PGP keyring ready: decrypt=%s encrypt=%s signer=%s",
            self.decryption_fingerprints,
            self._recipient,
            self._signer,
        )

    def _key_listing(self, fingerprint: str) -> dict[str, Any]:
        gpg = self._require_open()
        gpg.timed_out = False
        for key in gpg.list_keys(keys=[fingerprint]):
            if key["fingerprint"].upper() == fingerprint:
                return key
        raise CryptoError(f"key {fingerprint} is not in the keyring")

    # ------------------------------------------------------------ expiry

    def _key_info(self, key: _Key, now: datetime) -> KeyInfo:
        listing = self._key_listing(key.fingerprint)
        uids = listing.get("uids") or [""]
        revoked = listing.get("trust") == "r"
        primary_expiry = _from_epoch(listing.get("expires"))
        need = "s" if key.purpose == "signer" else "e"
        # The key can do its job as long as one usable subkey (or the primary) with the needed
        # capability lives; the primary's expiry caps all of them.
        candidates: list[datetime | None] = []
        # In gpg's colon listing, lower-case letters are the primary key's own capabilities.
        if need in str(listing.get("cap", "")):
            candidates.append(primary_expiry)
        for info in (listing.get("subkey_info") or {}).values():
            if need in str(info.get("cap", "")) and info.get("trust") != "r":
                candidates.append(_from_epoch(info.get("expires")))
        if not candidates:
            work_expiry = primary_expiry
        elif any(c is None for c in candidates):
            work_expiry = None
        else:
            work_expiry = max(c for c in candidates if c is not None)
        ends = [d for d in (primary_expiry, work_expiry) if d is not None]
        expires_at = min(ends) if ends else None
        days_left = None if expires_at is None else _days_between(now, expires_at)
        return KeyInfo(
            fingerprint=key.fingerprint,
            user_id=_fix_uid(uids[0]),
            purpose=key.purpose,
            expires_at=expires_at,
            days_left=days_left,
            revoked=revoked,
        )

    def key_expiries(self, now: datetime | None = None) -> list[KeyInfo]:
        """Expiry of every configured key, in the order decrypt, encrypt, signer."""
        with self._lock:
            moment = _utc(now)
            return [self._key_info(key, moment) for key in self._keys]

    def expiry_warnings(self, warning_days: int, now: datetime | None = None) -> list[str]:
        """Messages for keys that are revoked, expired or expire within ``warning_days`` days."""
        messages: list[str] = []
        for info in self.key_expiries(now):
            label = f"PGP key {info.fingerprint} ({info.user_id or 'no user id'}), used {_PURPOSE_TEXT[info.purpose]},"
            if info.revoked:
                messages.append(f"{label} is REVOKED. {_RENEW_TEXT[info.purpose]}")
            elif info.expires_at is not None and info.days_left is not None:
                day = info.expires_at.strftime("%Y-%m-%d")
                if info.expires_at <= _utc(now):
                    messages.append(f"{label} EXPIRED on {day}. {_RENEW_TEXT[info.purpose]}")
                elif info.days_left <= warning_days:
                    messages.append(
                        f"{label} expires on {day} (in {info.days_left} day{'s' if info.days_left != 1 else ''}). "
                        f"{_RENEW_TEXT[info.purpose]}"
                    )
        return messages

    # ------------------------------------------------------------ decrypt

    def decrypt_file(self, src: Path, dst: Path, display_name: str, *, max_output_bytes: int | None = None) -> DecryptResult:
        """Decrypt ``src`` into ``dst`` (created with mode 0600), streaming file to file.

        ``display_name`` names the file in error messages (e.g. the remote path). On any failure
        ``dst`` is removed and :class:`CryptoError` says what happened and what to do. With
        ``max_output_bytes`` gpg stops writing past that size (``--max-output``): a compressed
        message is a compression bomb in the making.
        """
        with self._lock:
            gpg = self._require_open()
            src, dst = Path(src), Path(dst)
            if not src.is_file():
                raise CryptoError(f"{display_name}: the file to decrypt does not exist ({src})")
            if not looks_encrypted(src):
                raise CryptoError(
                    f"{display_name} is not an OpenPGP-encrypted file (no 'BEGIN PGP MESSAGE' armour or OpenPGP packet at "
                    "its start; decided by content, not by the name). If the sender stopped encrypting, turn off decryption "
                    "for this source; otherwise ask them to encrypt it to our public key."
                )
            if not self.decryption_fingerprints:
                raise CryptoError(f"{display_name} is encrypted but no private key is configured (pgp.private_keys_env)")
            armored = _is_armored(src)
            size = src.stat().st_size
            success = False
            try:
                _create_private_file(dst)
                gpg.timeout = self._timeout_for(size)
                gpg.timed_out = False
                try:
                    # gpg reads the ciphertext file itself (after "--"): python-gnupg would otherwise
                    # pipe it through a thread that raises BrokenPipeError, losing gpg's status, when
                    # gpg stops reading early (wrong key). stdin then carries only the passphrase.
                    result = gpg.decrypt_file(
                        io.BytesIO(b""),
                        always_trust=True,
                        passphrase=self._wire_passphrase(),
                        output=str(dst),
                        extra_args=[*(["--max-output", str(max_output_bytes)] if max_output_bytes else []), "--", str(src)],
                    )
                except (OSError, ValueError) as exc:
                    raise CryptoError(f"{display_name}: gpg could not be run to decrypt it: {exc}") from None
                finally:
                    gpg.timeout = self._timeout
                if gpg.timed_out:
                    raise CryptoError(
                        f"{display_name}: decryption did not finish within {self._timeout_for(size):.0f} s and was stopped; "
                        "the file may be unusually large or gpg-agent is stuck"
                    )
                _raise_if_disk_full(result.stderr, f"decrypt {display_name}", dst)
                if max_output_bytes and "exceeded --max-output limit" in (result.stderr or ""):
                    raise CryptoError(
                        f"{display_name}: decrypts to more than {max_output_bytes:,} bytes, the connection's max_file_gb; "
                        "nothing of it was kept. If the file is genuine, raise max_file_gb; otherwise it is a compression bomb"
                    )
                verdict = self._judge_decryption(display_name, _statuses(result.stderr), result)
                os.chmod(dst, 0o600)
                outcome = DecryptResult(
                    path=dst,
                    bytes_written=dst.stat().st_size,
                    decryption_key=verdict.decryption_key,
                    recipient_key_ids=verdict.recipients,
                    signer_fingerprint=verdict.signer,
                    signature=verdict.signature,
                    armored=armored,
                )
                success = True
                return outcome
            finally:
                if not success:
                    _unlink_quietly(dst)

    def _timeout_for(self, size: int) -> float:
        return self._timeout + size / _MIN_BYTES_PER_SECOND

    def _wire_passphrase(self) -> str | None:
        # python-gnupg encodes the passphrase with its stream encoding (Latin-1, which we keep so
        # that gpg's stderr can always be decoded). gpg compares bytes, and keys are protected with
        # UTF-8 passphrases, so hand over a string whose Latin-1 encoding is the UTF-8 bytes.
        if self._passphrase is None:
            return None
        return self._passphrase.encode("utf-8").decode("latin-1")

    def _our_key_ids(self) -> list[str]:
        """Our decryption keys as "FPR (encryption subkey id X)": ENC_TO lines show subkey ids."""
        described: list[str] = []
        for fpr in self.decryption_fingerprints:
            listing = self._key_listing(fpr)
            ids = [fpr[-16:]] if "e" in str(listing.get("cap", "")) else []
            ids += [
                str(info.get("keyid", "")).upper()
                for info in (listing.get("subkey_info") or {}).values()
                if "e" in str(info.get("cap", ""))
            ]
            described.append(f"{fpr} (encryption key id {', '.join(ids) or 'none'})")
        return described

    def _judge_decryption(self, name: str, statuses: list[tuple[str, str]], result: Any) -> _Verdict:
        return judge_decryption(
            name,
            statuses,
            returncode=result.returncode,
            ok=bool(result.ok),
            our_fingerprints=self.decryption_fingerprints,
            our_key_ids=self._our_key_ids(),
            signer_pin=self._signer,
            passphrase_given=self._passphrase is not None,
            gpg_text=_gpg_says(result.stderr),
        )

    # ------------------------------------------------------------ encrypt

    def encrypt_file(self, src: Path, dst: Path, armor: bool = False) -> int:
        """Encrypt ``src`` to the pinned public key into ``dst``; return the size of ``dst`` in bytes.

        The recipient is named by its full primary fingerprint. An expired or revoked key is
        refused before gpg runs. Compression is off (``--compress-algo none``): export CSVs are
        encrypted at ~255 MB/s instead of ~22 MB/s with zlib (speed anchors); callers that want
        smaller files gzip first. On any failure ``dst`` is removed: the caller must never upload
        the plaintext instead.
        """
        with self._lock:
            gpg = self._require_open()
            src, dst = Path(src), Path(dst)
            if self._recipient is None:
                raise CryptoError("cannot encrypt: no public key is configured (pgp.public_key_env)")
            if not src.is_file():
                raise CryptoError(f"cannot encrypt {src}: the file does not exist")
            problem = self._recipient_problem(_utc(None))
            if problem:
                raise CryptoError(problem)
            size = src.stat().st_size
            success = False
            try:
                _create_private_file(dst)
                gpg.timeout = self._timeout_for(size)
                gpg.timed_out = False
                try:
                    result = gpg.encrypt_file(
                        io.BytesIO(b""),
                        recipients=[self._recipient],
                        always_trust=True,
                        armor=armor,
                        output=str(dst),
                        extra_args=["--compress-algo", "none", "--", str(src)],
                    )
                except (OSError, ValueError) as exc:
                    raise CryptoError(f"cannot encrypt {src.name}: gpg could not be run: {exc}") from None
                finally:
                    gpg.timeout = self._timeout
                _raise_if_disk_full(result.stderr, f"encrypt {src.name}", dst)
                statuses = _statuses(result.stderr)
                keywords = {k for k, _ in statuses}
                if gpg.timed_out:
                    raise CryptoError(f"encrypting {src.name} did not finish within {self._timeout_for(size):.0f} s")
                bad = keywords & {"INV_RECP", "KEYEXPIRED", "FAILURE", "ERROR", "KEYREVOKED"}
                if not result.ok or result.returncode != 0 or "END_ENCRYPTION" not in keywords or bad:
                    raise CryptoError(
                        f"encrypting {src.name} to {self._recipient} failed ({result.status or 'no status'}"
                        f"{'; ' + _gpg_says(result.stderr) if _gpg_says(result.stderr) else ''}); nothing was written. "
                        "Check the recipient's public key (pgp.public_key_env)."
                    )
                written = dst.stat().st_size
                if written == 0:
                    raise CryptoError(f"encrypting {src.name} produced an empty file")
                success = True
                return written
            finally:
                if not success:
                    _unlink_quietly(dst)

    def _recipient_problem(self, now: datetime) -> str | None:
        assert self._recipient is not None
        info = self._key_info(_Key(self._recipient, "encrypt"), now)
        listing = self._key_listing(self._recipient)
        fix = _RENEW_TEXT["encrypt"]
        if info.revoked:
            return f"cannot encrypt: the recipient key {self._recipient} is revoked. {fix}"
        if info.expires_at is not None and info.expires_at <= now:
            return f"cannot encrypt: the recipient key {self._recipient} expired on {info.expires_at:%Y-%m-%d}. {fix}"
        usable = [
            sub
            for sub in (listing.get("subkey_info") or {}).values()
            if "e" in str(sub.get("cap", "")) and sub.get("trust") not in ("r", "e", "i", "d")
        ]
        primary_encrypts = "e" in str(listing.get("cap", ""))
        if not usable and not primary_encrypts:
            return f"cannot encrypt: the recipient key {self._recipient} has no valid encryption subkey. {fix}"
        return None


_PURPOSE_TEXT: dict[Purpose, str] = {
    "decrypt": "to decrypt incoming files",
    "encrypt": "to encrypt exports",
    "signer": "to verify the sender's signature",
}
_RENEW_TEXT: dict[Purpose, str] = {
    "decrypt": (
        "Generate a new key pair, send its public key to the sender (SARE asks for it at least two weeks before "
        "expiry) and add the new private key to pgp.private_keys_env next to the old one until files stop "
        "arriving for the old key."
    ),
    "encrypt": (
        "Ask the recipient for their new public key and update pgp.public_key_env and pgp.public_key_fingerprint together."
    ),
    "signer": (
        "Ask the sender for their new signing key and update pgp.signer_public_key_env and pgp.signer_fingerprint together."
    ),
}


def _days_between(now: datetime, then: datetime) -> int:
    delta: timedelta = then - now
    return delta.days  # floor: 9 days 23 hours left is "9 days"


# ---------------------------------------------------------------- the decryption verdict


@dataclass(frozen=True)
class _Verdict:
    decryption_key: str | None
    recipients: tuple[str, ...]
    signer: str | None
    signature: Literal["verified", "unverified", "none"]


# Status keywords that are only about signatures: tolerated (with a non-zero return code) when no
# signer is pinned, because then nobody asked us to check signatures.
_SIGNATURE_ONLY = {"ERRSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "NEWSIG", "SIG_ID", "GOODSIG", "VALIDSIG"}


def judge_decryption(
    name: str,
    statuses: list[tuple[str, str]],
    *,
    returncode: int | None,
    ok: bool,
    our_fingerprints: Sequence[str],
    our_key_ids: Sequence[str] = (),
    signer_pin: str | None = None,
    passphrase_given: bool = True,
    gpg_text: str = "",
) -> _Verdict:
    """Decide from gpg's status lines whether a decryption is acceptable; raise CryptoError if not.

    A pure function of the status output so that the rules (MDC required, pinned signer, ...) can be
    checked on their own, also for cases today's gpg refuses before we get to see them.
    """
    keywords = [k for k, _ in statuses]
    seen = set(keywords)
    values: dict[str, list[str]] = {}
    for k, v in statuses:
        values.setdefault(k, []).append(v)
    recipients = tuple(dict.fromkeys(v.split()[0].upper() for v in values.get("ENC_TO", []) if v))
    shown_recipients = ", ".join(("hidden recipient" if r == "0" * 16 else r) for r in recipients) or "none listed"
    ours = ", ".join(our_fingerprints)
    tail = f" (gpg: {gpg_text})" if gpg_text else ""

    error_codes = [_error_code(v) for v in values.get("ERROR", []) + values.get("FAILURE", [])]
    bad_passphrase = "BAD_PASSPHRASE" in seen or _BAD_PASSPHRASE_CODE in error_codes
    decryption_key = None
    if values.get("DECRYPTION_KEY"):
        parts = values["DECRYPTION_KEY"][-1].split()
        decryption_key = parts[1].upper() if len(parts) > 1 else parts[0].upper()

    # --- could not get at the session key
    # checked first: gpg reports the failed password as BAD_PASSPHRASE-like errors too. A message
    # that also has a public-key packet for us is fine when our key (DECRYPTION_KEY) opened it.
    if decryption_key is None and ("NEED_PASSPHRASE_SYM" in seen or ("BEGIN_DECRYPTION" in seen and not recipients)):
        raise CryptoError(
            f"cannot decrypt {name}: it is password-encrypted (symmetric), not encrypted to our public key. "
            "Ask the sender to encrypt it to our public key."
        )
    if bad_passphrase:
        key_hint = ""
        if values.get("NEED_PASSPHRASE"):
            key_hint = f" for key {values['NEED_PASSPHRASE'][-1].split()[0]}"
        elif recipients:
            key_hint = f" for the private key of {shown_recipients}"
        raise CryptoError(
            f"cannot decrypt {name}: bad passphrase{key_hint}. Check the variable named by pgp.passphrase_env "
            "(no trailing newline; all private keys of a connection share one passphrase)."
        )
    if ("NEED_PASSPHRASE" in seen or "MISSING_PASSPHRASE" in seen) and not passphrase_given and "DECRYPTION_OKAY" not in seen:
        raise CryptoError(
            f"cannot decrypt {name}: the private key is protected by a passphrase but none is configured; "
            "set pgp.passphrase_env."
        )
    if decryption_key is None and ("NO_SECKEY" in seen or _NO_SECKEY_CODE in error_codes):
        theirs = "; ".join(our_key_ids) if our_key_ids else ours
        raise CryptoError(
            f"cannot decrypt {name}: it was encrypted to key id(s) {shown_recipients}, but this connection holds "
            f"{theirs}. Ask the sender to encrypt to our current public key, or add the matching private key "
            f"to pgp.private_keys_env.{tail}"
        )
    if "BEGIN_DECRYPTION" not in seen and "DECRYPTION_OKAY" not in seen:
        if "PLAINTEXT" in seen:
            raise CryptoError(
                f"{name} is an OpenPGP message but it is not encrypted (only signed or compressed); "
                "ask the sender to encrypt it to our public key."
            )
        raise CryptoError(
            f"cannot decrypt {name}: not a valid OpenPGP message (corrupt, truncated or not PGP at all){tail}. "
            "Ask the sender to upload it again."
        )

    # --- integrity
    if "BADMDC" in seen:
        raise CryptoError(
            f"cannot decrypt {name}: the integrity check (MDC) failed, so the data was modified or damaged in transit. "
            "Ask the sender to upload it again."
        )
    # DECRYPTION_INFO <mdc_method> <sym_algo> [<aead_algo>]: an MDC or an AEAD mode protects integrity.
    infos = [v.split() for v in values.get("DECRYPTION_INFO", [])]
    aead = any(len(p) > 2 and p[2] != "0" for p in infos)
    unprotected = any(p and p[0] == "0" and not (len(p) > 2 and p[2] != "0") for p in infos)
    no_mdc = CryptoError(
        f"cannot decrypt {name}: the message has no integrity protection (MDC), so tampering could not be detected; "
        "it is refused. Ask the sender to encrypt with a current OpenPGP tool (not with --rfc2440 or --disable-mdc)."
    )
    if unprotected:
        raise no_mdc

    # --- the decryption itself
    if "DECRYPTION_FAILED" in seen or "DECRYPTION_OKAY" not in seen or "END_DECRYPTION" not in seen or not ok:
        raise CryptoError(
            f"cannot decrypt {name}: the data is corrupt or truncated{tail}. Ask the sender to upload it again."
        )
    # gpg said OKAY: still insist on a positive integrity signal rather than trusting its defaults
    if not ("GOODMDC" in seen or aead):
        raise no_mdc
    if decryption_key is not None and decryption_key not in our_fingerprints:
        raise CryptoError(f"cannot decrypt {name}: gpg used key {decryption_key}, which is not a configured private key")

    # --- signatures
    signed = bool(seen & {"GOODSIG", "BADSIG", "ERRSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "VALIDSIG", "NEWSIG"})
    if "BADSIG" in seen:
        raise CryptoError(
            f"cannot accept {name}: it carries a BAD signature (key id {values['BADSIG'][-1].split()[0]}): the content "
            "was changed after signing. Ask the sender to sign and upload it again."
        )
    verified: str | None = None
    if signer_pin is not None:
        if not signed:
            raise CryptoError(
                f"cannot accept {name}: it is not signed, but pgp.signer_fingerprint requires a signature by {signer_pin}. "
                "Ask the sender to sign the file (gpg --sign --encrypt)."
            )
        for v in values.get("VALIDSIG", []):
            parts = v.split()
            signing_fpr = parts[0].upper() if parts else ""
            primary_fpr = parts[9].upper() if len(parts) >= 10 else signing_fpr
            if signer_pin in (primary_fpr, signing_fpr):
                verified = primary_fpr
        for keyword, reason in (("EXPKEYSIG", "its signing key has expired"), ("REVKEYSIG", "its signing key was revoked")):
            if keyword in seen:
                raise CryptoError(
                    f"cannot accept {name}: {reason} (key id {values[keyword][-1].split()[0]}). "
                    "Ask the sender for their current signing key and update pgp.signer_public_key_env/signer_fingerprint."
                )
        if verified is None or "GOODSIG" not in seen:
            # ERRSIG carries the signer's fingerprint as 7th field since gnupg 2.2.7; else its key id
            who = [(v.split()[6] if len(v.split()) >= 7 else v.split()[0]) for v in values.get("ERRSIG", [])]
            who += [v.split()[-1] for v in values.get("VALIDSIG", [])]
            signed_by = ", ".join(dict.fromkeys(who)) or "an unknown key"
            raise CryptoError(
                f"cannot accept {name}: it is signed by {signed_by}, not by the expected signer {signer_pin}. "
                "If the sender changed signing keys, update pgp.signer_public_key_env and pgp.signer_fingerprint."
            )
        if returncode != 0:
            raise CryptoError(f"cannot accept {name}: gpg reported a problem (exit code {returncode}){tail}")
    elif returncode != 0:
        # Without a pinned signer only a signature we cannot check (signer's key not configured)
        # may make gpg exit non-zero; any other complaint fails the file.
        complaints = seen - _SIGNATURE_ONLY - {
            "ENC_TO", "KEY_CONSIDERED", "DECRYPTION_KEY", "BEGIN_DECRYPTION", "DECRYPTION_INFO", "PLAINTEXT",
            "PLAINTEXT_LENGTH", "DECRYPTION_OKAY", "GOODMDC", "END_DECRYPTION", "USERID_HINT", "NEED_PASSPHRASE",
            "INQUIRE_MAXLEN", "PINENTRY_LAUNCHED", "DECRYPTION_COMPLIANCE_MODE", "TRUST_UNDEFINED", "TRUST_NEVER",
            "TRUST_MARGINAL", "TRUST_FULLY", "TRUST_ULTIMATE", "KEYEXPIRED", "KEY_CREATED", "SIGEXPIRED",
        }
        failure_values = [v for v in values.get("FAILURE", []) if not v.startswith("gpg-exit")]
        if complaints - {"FAILURE"} or failure_values or not signed:
            raise CryptoError(f"cannot accept {name}: gpg reported a problem (exit code {returncode}){tail}")
    signature: Literal["verified", "unverified", "none"]
    signature = "verified" if verified else ("unverified" if signed else "none")
    return _Verdict(
        decryption_key=decryption_key,
        recipients=recipients,
        signer=verified,
        signature=signature,
    )
