"""Key validity: when a configured key expires, whether it is revoked, and the warnings and refusals
that follow from it.

Dates come from gpg's key listing. A key counts as usable as long as the primary key and one
subkey with the needed capability (encrypt, or sign for a signer) live; the warning texts say what
the operator does next (rotate, ask the partner for a new key) in terms of the ``pgp:`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cdp_pipeline.crypto.key_import import ConfiguredKey, Purpose


@dataclass(frozen=True)
class KeyInfo:
    """When one configured key stops doing its job (never key material)."""

    fingerprint: str
    user_id: str
    purpose: Purpose
    #: the earliest of the primary key's expiry and the expiry of the subkey(s) doing the work
    expires_at: datetime | None
    #: whole days until expiry (negative once expired); None when the key does not expire
    days_left: int | None
    revoked: bool = False


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


def _from_epoch(value: str | None) -> datetime | None:
    if not value or not value.isdigit() or int(value) == 0:
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def as_utc(now: datetime | None) -> datetime:
    """``now`` as an aware UTC time (a naive value is taken as UTC); the current time for None."""
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _fix_uid(uid: str) -> str:
    """python-gnupg decodes gpg output as Latin-1; gpg writes user ids in UTF-8."""
    try:
        return uid.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return uid


def key_info(key: ConfiguredKey, listing: dict[str, Any], now: datetime) -> KeyInfo:
    """Expiry and revocation of one configured key, from gpg's listing of it."""
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


def expiry_messages(infos: list[KeyInfo], warning_days: int, now: datetime | None) -> list[str]:
    """Messages for keys that are revoked, expired or expire within ``warning_days`` days."""
    messages: list[str] = []
    for info in infos:
        label = f"PGP key {info.fingerprint} ({info.user_id or 'no user id'}), used {_PURPOSE_TEXT[info.purpose]},"
        if info.revoked:
            messages.append(f"{label} is REVOKED. {_RENEW_TEXT[info.purpose]}")
        elif info.expires_at is not None and info.days_left is not None:
            day = info.expires_at.strftime("%Y-%m-%d")
            if info.expires_at <= as_utc(now):
                messages.append(f"{label} EXPIRED on {day}. {_RENEW_TEXT[info.purpose]}")
            elif info.days_left <= warning_days:
                messages.append(
                    f"{label} expires on {day} (in {info.days_left} day{'s' if info.days_left != 1 else ''}). "
                    f"{_RENEW_TEXT[info.purpose]}"
                )
    return messages


def recipient_problem(recipient: str, listing: dict[str, Any], now: datetime) -> str | None:
    """Why exports cannot be encrypted to ``recipient`` (revoked, expired, no encryption subkey), or None."""
    info = key_info(ConfiguredKey(recipient, "encrypt"), listing, now)
    fix = _RENEW_TEXT["encrypt"]
    if info.revoked:
        return f"cannot encrypt: the recipient key {recipient} is revoked. {fix}"
    if info.expires_at is not None and info.expires_at <= now:
        return f"cannot encrypt: the recipient key {recipient} expired on {info.expires_at:%Y-%m-%d}. {fix}"
    usable = [
        sub
        for sub in (listing.get("subkey_info") or {}).values()
        if "e" in str(sub.get("cap", "")) and sub.get("trust") not in ("r", "e", "i", "d")
    ]
    primary_encrypts = "e" in str(listing.get("cap", ""))
    if not usable and not primary_encrypts:
        return f"cannot encrypt: the recipient key {recipient} has no valid encryption subkey. {fix}"
    return None

