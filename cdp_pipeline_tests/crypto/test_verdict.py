"""The decryption verdict as a pure function of gpg's status lines."""

from __future__ import annotations

import pytest

from cdp_pipeline.crypto.verdict import judge_decryption
from cdp_pipeline.errors import CryptoError


def test_mdc_rule_holds_even_if_gpg_reported_success():
    """gpg >= 2.2.8 already fails such messages; our own check must not rely on that."""
    ours = ["A" * 40]
    base = [("ENC_TO", "1122334455667788 18 0"), ("DECRYPTION_KEY", f"{'B' * 40} {'A' * 40} -"), ("BEGIN_DECRYPTION", "")]
    tail = [("PLAINTEXT", "62 0 x"), ("DECRYPTION_OKAY", ""), ("END_DECRYPTION", "")]
    with pytest.raises(CryptoError, match="integrity protection"):
        judge_decryption("x.gpg", base + [("DECRYPTION_INFO", "0 9 0")] + tail, returncode=0, ok=True, our_fingerprints=ours)
    with pytest.raises(CryptoError, match="integrity protection"):  # no MDC status at all
        judge_decryption("x.gpg", base + tail, returncode=0, ok=True, our_fingerprints=ours)
    good = judge_decryption(
        "x.gpg", base + [("DECRYPTION_INFO", "2 9 0")] + tail + [("GOODMDC", "")], returncode=0, ok=True, our_fingerprints=ours
    )
    assert good.decryption_key == "A" * 40
    aead = judge_decryption(  # AEAD (gpg 2.3+ OCB) protects integrity without an MDC
        "x.gpg", base + [("DECRYPTION_INFO", "0 9 2")] + tail, returncode=0, ok=True, our_fingerprints=ours
    )
    assert aead.signature == "none"
