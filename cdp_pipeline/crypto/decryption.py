"""Decrypting one delivery file: gpg streams the ciphertext file into a private plaintext file.

gpg reads the ciphertext file itself and writes the plaintext to a file created beforehand with mode
0600, so memory does not grow with the file size. The run is accepted only on the verdict of
:func:`~cdp_pipeline.crypto.verdict.judge_decryption`; anything else deletes the output and raises
:class:`~cdp_pipeline.errors.CryptoError` with the file name and what to do.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cdp_pipeline.crypto.gpg_process import (
    TimedGPG,
    gpg_says,
    private_output,
    raise_if_disk_full,
    run_watched,
    scaled_timeout,
    status_lines,
)
from cdp_pipeline.crypto.sniffing import is_armored, looks_encrypted
from cdp_pipeline.crypto.verdict import SignatureState, judge_decryption
from cdp_pipeline.errors import CryptoError


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
    signature: SignatureState
    armored: bool


def decrypt_file(
    gpg: TimedGPG,
    src: Path,
    dst: Path,
    display_name: str,
    *,
    passphrase: str | None,
    our_fingerprints: Sequence[str],
    our_key_ids: Callable[[], Sequence[str]],
    signer_pin: str | None,
    timeout: float,
    max_output_bytes: int | None = None,
) -> DecryptResult:
    """Decrypt ``src`` into ``dst`` (created with mode 0600) with the keys in the home of ``gpg``.

    ``our_fingerprints`` are the primary fingerprints of our private keys; ``our_key_ids`` describes
    them for the error message about a file encrypted to someone else (asked only after gpg ran).
    ``timeout`` is the floor of the watchdog, which grows with the file size.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CryptoError(f"{display_name}: the file to decrypt does not exist ({src})")
    if not looks_encrypted(src):
        raise CryptoError(
            f"{display_name} is not an OpenPGP-encrypted file (no 'BEGIN PGP MESSAGE' armour or OpenPGP packet at "
            "its start; decided by content, not by the name). If the sender stopped encrypting, turn off decryption "
            "for this source; otherwise ask them to encrypt it to our public key."
        )
    if not our_fingerprints:
        raise CryptoError(f"{display_name} is encrypted but no private key is configured (pgp.private_keys_env)")
    armored = is_armored(src)
    size = src.stat().st_size
    with private_output(dst):
        # gpg reads the ciphertext file itself (after "--"): python-gnupg would otherwise pipe it
        # through a thread that raises BrokenPipeError, losing gpg's status, when gpg stops
        # reading early (wrong key). stdin then carries only the passphrase.
        result = run_watched(
            gpg,
            lambda: gpg.decrypt_file(
                io.BytesIO(b""),
                always_trust=True,
                passphrase=_wire_passphrase(passphrase),
                output=str(dst),
                extra_args=[*(["--max-output", str(max_output_bytes)] if max_output_bytes else []), "--", str(src)],
            ),
            floor_seconds=timeout,
            size=size,
            cannot_run=f"cannot decrypt {display_name}",
        )
        if gpg.timed_out:
            raise CryptoError(
                f"{display_name}: decryption did not finish within {scaled_timeout(timeout, size):.0f} s and was stopped; "
                "the file may be unusually large or gpg-agent is stuck"
            )
        raise_if_disk_full(result.stderr, f"decrypt {display_name}", dst)
        if max_output_bytes and "exceeded --max-output limit" in (result.stderr or ""):
            raise CryptoError(
                f"{display_name}: decrypts to more than {max_output_bytes:,} bytes, the connection's max_file_gb; "
                "nothing of it was kept. If the file is genuine, raise max_file_gb; otherwise it is a compression bomb"
            )
        verdict = judge_decryption(
            display_name,
            status_lines(result.stderr),
            returncode=result.returncode,
            ok=bool(result.ok),
            our_fingerprints=our_fingerprints,
            our_key_ids=our_key_ids(),
            signer_pin=signer_pin,
            passphrase_given=passphrase is not None,
            gpg_text=gpg_says(result.stderr),
        )
        os.chmod(dst, 0o600)
        return DecryptResult(
            path=dst,
            bytes_written=dst.stat().st_size,
            decryption_key=verdict.decryption_key,
            recipient_key_ids=verdict.recipients,
            signer_fingerprint=verdict.signer,
            signature=verdict.signature,
            armored=armored,
        )


def _wire_passphrase(passphrase: str | None) -> str | None:
    # python-gnupg encodes the passphrase with its stream encoding (Latin-1, which we keep so
    # that gpg's stderr can always be decoded). gpg compares bytes, and keys are protected with
    # UTF-8 passphrases, so hand over a string whose Latin-1 encoding is the UTF-8 bytes.
    if passphrase is None:
        return None
    return passphrase.encode("utf-8").decode("latin-1")
