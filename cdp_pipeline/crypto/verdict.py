"""The decryption verdict: from gpg's status lines, is a decrypted file acceptable?

A decryption is accepted only when gpg says ``DECRYPTION_OKAY``, the message was integrity
protected (MDC or AEAD), the key that decrypted it is one of ours, the return code is 0 (or the only
complaint is about a signature nobody asked us to check) and, when a signer is pinned, a valid
signature from exactly that fingerprint is present. Every refusal names the file and what to do.

A pure function of the status output, so that each rule can be checked on its own, also for cases
today's gpg refuses before we get to see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cdp_pipeline.errors import CryptoError

_BAD_PASSPHRASE_CODE = 11  # GPG_ERR_BAD_PASSPHRASE, the low 16 bits of an ERROR status code
_NO_SECKEY_CODE = 17  # GPG_ERR_NO_SECKEY

#: how a delivery was signed: "verified" by the pinned signer; "unverified": signed, but no signer
#: is configured; "none": not signed (only possible when no signer is pinned)
SignatureState = Literal["verified", "unverified", "none"]


@dataclass(frozen=True)
class DecryptionVerdict:
    """What an accepted decryption used: our key, the message's recipients and its signer."""

    decryption_key: str | None
    recipients: tuple[str, ...]
    signer: str | None
    signature: SignatureState


# Status keywords that are only about signatures: tolerated (with a non-zero return code) when no
# signer is pinned, because then nobody asked us to check signatures.
_SIGNATURE_ONLY = {"ERRSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "NEWSIG", "SIG_ID", "GOODSIG", "VALIDSIG"}


def _error_code(value: str) -> int | None:
    """The gpg error code (low 16 bits) of an ``ERROR``/``FAILURE`` status value, if any."""
    last = value.rsplit(" ", 1)[-1]
    return int(last) & 0xFFFF if last.isdigit() else None



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
) -> DecryptionVerdict:
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
    signature: SignatureState
    signature = "verified" if verified else ("unverified" if signed else "none")
    return DecryptionVerdict(
        decryption_key=decryption_key,
        recipients=recipients,
        signer=verified,
        signature=signature,
    )
