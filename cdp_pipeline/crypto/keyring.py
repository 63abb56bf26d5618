"""The PGP keyring of one connection: a throw-away GnuPG home holding exactly the configured keys.

This is engine code: it knows nothing about Dagster. The orchestration layer resolves the
environment variables named in a connection's ``pgp:`` settings and hands the key material to
:class:`PgpKeyring` as strings. The rules it keeps (docs/pgp.md has the operator's side):

* Every keyring is a fresh, private GNUPGHOME (mode 0700, short path under /tmp because gpg-agent
  socket paths are limited to ~107 characters). Only the configured keys are imported and their
  fingerprints are checked after the import; the operator's ``~/.gnupg`` is never read. On exit
  the agent is killed and the home removed, in ``finally`` (not ``__del__``, which is not
  guaranteed to run).
* gpg-agent caches no passphrase: the configured passphrase is sent with every operation, so a
  wrong passphrase fails every time, not only on the first call.
* Decryption and encryption stream file to file (``decryption``, ``encryption``); whether a
  decryption is acceptable is decided by ``verdict``.
* ``always_trust`` (``--trust-model always``) is used because the web of trust has no meaning in
  a throw-away keyring: every key in it came from configuration and was verified at import.

Not thread safe: use one keyring per thread (they are cheap: a temp dir and an agent).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cdp_pipeline.crypto import decryption, encryption
from cdp_pipeline.crypto.decryption import DecryptResult
from cdp_pipeline.crypto.gpg_process import (
    AGENT_CONF,
    DEFAULT_TIMEOUT_SECONDS,
    GPG_CONF,
    MIN_GPG_VERSION,
    TimedGPG,
    key_listing,
)
from cdp_pipeline.crypto.key_import import ConfiguredKey, import_configured_keys, normalize_fingerprint
from cdp_pipeline.crypto.key_validity import KeyInfo, as_utc, expiry_messages, key_info, recipient_problem
from cdp_pipeline.errors import CryptoError
from cdp_pipeline.orphans import mark_owner, remove_orphans

logger = logging.getLogger(__name__)

#: name prefix of every keyring's GnuPG home (the orphan sweep finds them by it).
HOME_PREFIX = "cdpg-"


def _check_passphrase(passphrase: str | None) -> str | None:
    """The configured passphrase as gpg may receive it: None for none, refused if it could smuggle input."""
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
        self._gpg: TimedGPG | None = None
        self._env: dict[str, str] = {}
        self._keys: list[ConfiguredKey] = []
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
            (self._home / "gpg.conf").write_text(GPG_CONF)
            (self._home / "gpg-agent.conf").write_text(AGENT_CONF)
            try:
                gpg = TimedGPG(
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
            imported = import_configured_keys(
                gpg,
                private_keys=self._private_keys,
                public_key=self._public_key,
                public_pin=self._public_pin,
                signer_key=self._signer_key,
                signer_pin=self._signer_pin,
            )
            self._keys, self._recipient, self._signer = imported.keys, imported.recipient, imported.signer
            self._signer_pin = imported.signer
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
            self._stop_agent(home, self._env or None)
        finally:
            self._remove_home(home)

    def _stop_agent(self, home: Path, env: dict[str, str] | None = None) -> None:
        try:
            gpgconf = str(Path(self._gpg_binary).with_name("gpgconf")) if os.sep in self._gpg_binary else "gpgconf"
            # An argument list without a shell; the binary is gpgconf beside the gpg this keyring runs.
            subprocess.run(  # noqa: S603
                [gpgconf, "--homedir", str(home), "--kill", "all"],
                env=env or {"PATH": os.environ.get("PATH", os.defpath), "GNUPGHOME": str(home), "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            logger.warning("could not stop gpg-agent of %s", home, exc_info=True)

    def _make_home(self) -> Path:
        base = self._base_dir
        if base is None:
            # /tmp on purpose: a short path keeps the agent's socket paths under their length limit;
            # mkdtemp makes the home unguessable and private, which is what the rule guards against.
            base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())  # noqa: S108
        # A run killed with SIGKILL left its home (private keys included) and maybe its agent:
        # the next keyring made here removes those whose process is gone.
        for orphan in remove_orphans(base, HOME_PREFIX, before_remove=self._stop_agent):
            logger.warning("removed the GnuPG home %s of a process that ended without cleaning up", orphan)
        home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=base))
        os.chmod(home, 0o700)  # mkdtemp already uses 0700; be explicit, gpg warns on anything wider
        mark_owner(home)
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

    def _require_open(self) -> TimedGPG:
        if self._gpg is None:
            raise CryptoError("the PGP keyring is not open; use `with PgpKeyring(...) as keyring:`")
        return self._gpg

    def _key_listing(self, fingerprint: str) -> dict[str, Any]:
        return key_listing(self._require_open(), fingerprint)

    # ------------------------------------------------------------ expiry

    def key_expiries(self, now: datetime | None = None) -> list[KeyInfo]:
        """Expiry of every configured key, in the order decrypt, encrypt, signer."""
        with self._lock:
            moment = as_utc(now)
            return [key_info(key, self._key_listing(key.fingerprint), moment) for key in self._keys]

    def expiry_warnings(self, warning_days: int, now: datetime | None = None) -> list[str]:
        """Messages for keys that are revoked, expired or expire within ``warning_days`` days."""
        return expiry_messages(self.key_expiries(now), warning_days, now)

    # ------------------------------------------------------------ decrypt

    def decrypt_file(self, src: Path, dst: Path, display_name: str, *, max_output_bytes: int | None = None) -> DecryptResult:
        """Decrypt ``src`` into ``dst`` (created with mode 0600), streaming file to file.

        ``display_name`` names the file in error messages (e.g. the remote path). On any failure
        ``dst`` is removed and :class:`CryptoError` says what happened and what to do. With
        ``max_output_bytes`` gpg stops writing past that size (``--max-output``): a compressed
        message is a compression bomb in the making.
        """
        with self._lock:
            return decryption.decrypt_file(
                self._require_open(),
                src,
                dst,
                display_name,
                passphrase=self._passphrase,
                our_fingerprints=self.decryption_fingerprints,
                our_key_ids=self._our_key_ids,
                signer_pin=self._signer,
                timeout=self._timeout,
                max_output_bytes=max_output_bytes,
            )

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


    # ------------------------------------------------------------ encrypt

    def encrypt_file(self, src: Path, dst: Path, armor: bool = False) -> int:
        """Encrypt ``src`` to the pinned public key into ``dst``; return the size of ``dst`` in bytes.

        The recipient is named by its full primary fingerprint. An expired or revoked key is
        refused before gpg runs. On any failure ``dst`` is removed: the caller must never upload
        the plaintext instead.
        """
        with self._lock:
            gpg = self._require_open()
            src, dst = Path(src), Path(dst)
            if self._recipient is None:
                raise CryptoError("cannot encrypt: no public key is configured (pgp.public_key_env)")
            if not src.is_file():
                raise CryptoError(f"cannot encrypt {src}: the file does not exist")
            problem = self._recipient_problem(as_utc(None))
            if problem:
                raise CryptoError(problem)
            return encryption.encrypt_file(gpg, src, dst, recipient=self._recipient, armor=armor, timeout=self._timeout)

    def _recipient_problem(self, now: datetime) -> str | None:
        if self._recipient is None:  # encrypt_file refuses this case before asking
            return "cannot encrypt: no public key is configured (pgp.public_key_env)"
        return recipient_problem(self._recipient, self._key_listing(self._recipient), now)
