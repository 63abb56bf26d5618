"""Key import: what a keyring accepts as key material, and the checks after gpg imported it.

A keyring holds exactly the configured keys. Every armoured block is imported into the fresh home,
its primary fingerprints are compared with the pinned ones, and anything unexpected (a private key
where a public one belongs, a key without an encryption subkey, an extra key riding along in a
block) is refused with what to change in the connection's ``pgp:`` settings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cdp_pipeline.crypto.gpg_process import TimedGPG, key_listing
from cdp_pipeline.errors import CryptoError

logger = logging.getLogger(__name__)

# The armour header of a key block, by kind: what a key setting holds is decided from it.
_KEY_ARMOUR = re.compile(r"-----BEGIN PGP (PUBLIC|PRIVATE) KEY BLOCK-----")
_FPR = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")

#: what a configured key is used for.
Purpose = Literal["decrypt", "encrypt", "signer"]


@dataclass
class ConfiguredKey:
    fingerprint: str
    purpose: Purpose


@dataclass
class ImportedKeys:
    """The keys a home holds after a successful import, in the order decrypt, encrypt, signer."""

    keys: list[ConfiguredKey] = field(default_factory=list)
    #: primary fingerprint exports are encrypted to (None without a public key)
    recipient: str | None = None
    #: primary fingerprint a delivery must be signed by (None when no signer is pinned)
    signer: str | None = None

    @property
    def decryption_fingerprints(self) -> list[str]:
        return [k.fingerprint for k in self.keys if k.purpose == "decrypt"]


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


def _import_block(gpg: TimedGPG, text: str, what: str, expect_private: bool) -> list[str]:
    """Import one armoured block; return the primary fingerprints it brought in."""
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
        raise CryptoError(f"importing {what} did not finish within {gpg.timeout:.0f} s")
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


def import_configured_keys(
    gpg: TimedGPG,
    *,
    private_keys: Sequence[str],
    public_key: str | None,
    public_pin: str | None,
    signer_key: str | None,
    signer_pin: str | None,
) -> ImportedKeys:
    """Import the configured key material into the (empty) home of ``gpg`` and check it.

    ``public_pin`` and ``signer_pin`` are normalised fingerprints; without a signer pin, a signer
    block holding exactly one key pins that key. Raises CryptoError naming the setting to fix.
    """
    imported = ImportedKeys()
    for index, text in enumerate(private_keys, start=1):
        what = f"private key {index} of {len(private_keys)}"
        for fpr in _import_block(gpg, text, what, expect_private=True):
            imported.keys.append(ConfiguredKey(fpr, "decrypt"))
    for fpr in imported.decryption_fingerprints:
        # Own capabilities (lower case), not the key's aggregate: an expired key loses "E" there
        # but still decrypts late deliveries, which rotation needs.
        listing = key_listing(gpg, fpr)
        own = [str(listing.get("cap", ""))] + [str(i.get("cap", "")) for i in (listing.get("subkey_info") or {}).values()]
        if not any("e" in cap for cap in own):
            raise CryptoError(f"private key {fpr} has no encryption subkey, so it cannot decrypt anything")

    if public_key:
        fprs = _import_block(gpg, public_key, "the public key (pgp.public_key_env)", expect_private=False)
        if len(fprs) != 1:
            raise CryptoError(
                f"the public key (pgp.public_key_env) contains {len(fprs)} keys ({', '.join(fprs)}); "
                "give exactly the recipient's key"
            )
        if public_pin and fprs[0] != public_pin:
            raise CryptoError(
                f"the public key's fingerprint is {fprs[0]}, but pgp.public_key_fingerprint pins {public_pin}; "
                "exports are not encrypted to an unexpected key. If the recipient really changed keys, "
                "update both settings together."
            )
        imported.recipient = fprs[0]
        imported.keys.append(ConfiguredKey(fprs[0], "encrypt"))

    if signer_key:
        fprs = _import_block(gpg, signer_key, "the signer's public key (pgp.signer_public_key_env)", expect_private=False)
        if signer_pin is None:
            if len(fprs) != 1:
                raise CryptoError(
                    f"the signer's public key contains {len(fprs)} keys; set pgp.signer_fingerprint to say which one must sign"
                )
            signer_pin = fprs[0]
        elif signer_pin not in fprs:
            raise CryptoError(
                f"the signer's public key has fingerprint(s) {', '.join(fprs)}, but pgp.signer_fingerprint pins "
                f"{signer_pin}; ask the sender for the key they sign with"
            )
        # other keys in the sender's block may stay: only the pinned one counts as a signer
        signer_block = set(fprs)
    else:
        signer_block = set()
    if signer_pin:
        present = {k["fingerprint"].upper() for k in gpg.list_keys()}
        if signer_pin not in present:
            raise CryptoError(
                f"pgp.signer_fingerprint pins {signer_pin} but no key with that fingerprint was given; "
                "set pgp.signer_public_key_env to the sender's public key"
            )
        imported.signer = signer_pin
        imported.keys.append(ConfiguredKey(signer_pin, "signer"))

    # Nothing but the configured keys may be in this home (an armoured block can carry extra keys).
    expected = {k.fingerprint for k in imported.keys} | signer_block
    present = {k["fingerprint"].upper() for k in gpg.list_keys()}
    extra = present - expected
    if extra:
        raise CryptoError(f"unexpected extra key(s) in the configured key material: {', '.join(sorted(extra))}")
    logger.info(
        "PGP keyring ready: decrypt=%s encrypt=%s signer=%s",
        imported.decryption_fingerprints,
        imported.recipient,
        imported.signer,
    )
    return imported

