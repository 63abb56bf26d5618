"""The PGP keyring against the real gpg binary, no mocks: decryption, signatures, key import, encryption,
expiry, and the home it lives in."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdp_pipeline.crypto.key_import import normalize_fingerprint
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.crypto.sniffing import looks_encrypted
from cdp_pipeline.errors import CryptoError
from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE, PgpTestKeys

CSV = "customer_id;email;city\n00123;anna@example.com;Kraków\n00124;jan@example.com;Łódź\n".encode()

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    path.write_bytes(CSV)
    return path


def keyring(keys: PgpTestKeys, **kwargs: object) -> PgpKeyring:
    kwargs.setdefault("private_keys", [keys.recipient.private_key])
    kwargs.setdefault("passphrase", PASSPHRASE)
    return PgpKeyring(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ours(pgp_keys: PgpTestKeys) -> Iterator[PgpKeyring]:
    """Our connection's keyring (both rotation keys, the partner's key for exports), shared by the
    tests that only decrypt or encrypt: every fresh gpg-agent spends ~1.5 s calibrating S2K on first use."""
    with PgpKeyring(
        [pgp_keys.recipient.private_key, pgp_keys.rotated.private_key],
        PASSPHRASE,
        public_key=pgp_keys.partner.public_key,
        public_key_fingerprint=pgp_keys.partner.fingerprint,
    ) as kr:
        yield kr


@pytest.fixture(scope="module")
def ours_signed(pgp_keys: PgpTestKeys) -> Iterator[PgpKeyring]:
    """Like ``ours`` but every import must be signed by the partner."""
    with keyring(pgp_keys, signer_public_key=pgp_keys.partner.public_key, signer_fingerprint=pgp_keys.partner.fingerprint) as kr:
        yield kr


def agent_running(home: Path) -> bool:
    """Any process whose command line mentions this home (gpg-agent is started with --homedir)."""
    needle = str(home).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


# ---------------------------------------------------------------- decrypt


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_decrypts_binary_and_armored_messages(pgp_keys, gpg_cli, ours, plain, tmp_path, armor):
    src = gpg_cli.encrypt(plain, tmp_path / "customers.csv.pgp", pgp_keys.recipient, armor=armor)
    dst = tmp_path / "out" / "customers.csv"
    dst.parent.mkdir()
    result = ours.decrypt_file(src, dst, display_name="in/customers.csv.pgp")
    assert dst.read_bytes() == CSV
    assert result.bytes_written == len(CSV)
    assert result.armored is armor
    assert result.decryption_key == pgp_keys.recipient.fingerprint
    assert pgp_keys.recipient.encryption_key_id in result.recipient_key_ids
    assert result.signature == "none"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600


def test_output_is_0600_whatever_the_umask_and_replaces_an_old_file(pgp_keys, gpg_cli, ours, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient)
    dst = tmp_path / "plain.csv"
    dst.write_text("stale")
    dst.chmod(0o644)
    old = os.umask(0)
    try:
        ours.decrypt_file(src, dst, "m.gpg")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert dst.read_bytes() == CSV


def test_a_plain_file_named_pgp_is_refused_with_a_clear_error(ours, tmp_path):
    fake = tmp_path / "orders.pgp"
    fake.write_bytes(CSV)
    dst = tmp_path / "out.csv"
    with pytest.raises(CryptoError, match=r"in/orders\.pgp is not an OpenPGP-encrypted file"):
        ours.decrypt_file(fake, dst, "in/orders.pgp")
    assert not dst.exists()


def test_two_private_keys_during_rotation_either_decrypts(pgp_keys, gpg_cli, ours, plain, tmp_path):
    old = gpg_cli.encrypt(plain, tmp_path / "old.gpg", pgp_keys.recipient)
    new = gpg_cli.encrypt(plain, tmp_path / "new.gpg", pgp_keys.rotated, armor=True)
    assert ours.decryption_fingerprints == [pgp_keys.recipient.fingerprint, pgp_keys.rotated.fingerprint]
    first = ours.decrypt_file(old, tmp_path / "old.csv", "old.gpg")
    second = ours.decrypt_file(new, tmp_path / "new.csv", "new.gpg")
    assert first.decryption_key == pgp_keys.recipient.fingerprint
    assert second.decryption_key == pgp_keys.rotated.fingerprint
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes() == CSV


def test_wrong_key_names_the_recipient_key_id(pgp_keys, gpg_cli, ours, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "for_someone_else.gpg", pgp_keys.stranger)
    dst = tmp_path / "out.csv"
    with pytest.raises(CryptoError) as caught:
        ours.decrypt_file(src, dst, "in/for_someone_else.gpg")
    message = str(caught.value)
    assert "in/for_someone_else.gpg" in message
    assert pgp_keys.stranger.encryption_key_id in message
    assert pgp_keys.recipient.encryption_key_id in message  # what we hold, for comparison
    assert "pgp.private_keys_env" in message
    assert not dst.exists()


def test_wrong_passphrase_fails_in_a_fresh_keyring_and_after_a_success(pgp_keys, gpg_cli, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient)
    dst = tmp_path / "out.csv"
    # fresh keyring: nothing cached anywhere
    with keyring(pgp_keys, passphrase="wrong passphrase") as kr, pytest.raises(CryptoError, match="bad passphrase"):
        kr.decrypt_file(src, dst, "m.gpg")
    assert not dst.exists()
    # the agent of a keyring caches nothing either (TTL 0), so a later wrong passphrase still fails
    with keyring(pgp_keys) as kr:
        kr.decrypt_file(src, dst, "m.gpg")
        kr._passphrase = "wrong passphrase"  # same agent, a different passphrase on the next call
        with pytest.raises(CryptoError, match="bad passphrase"):
            kr.decrypt_file(src, tmp_path / "again.csv", "m.gpg")
    assert not (tmp_path / "again.csv").exists()


def test_missing_passphrase_for_a_protected_key(pgp_keys, gpg_cli, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient)
    with keyring(pgp_keys, passphrase=None) as kr, pytest.raises(CryptoError, match="pgp.passphrase_env"):
        kr.decrypt_file(src, tmp_path / "out.csv", "m.gpg")


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\x1b"])
def test_passphrase_with_newline_or_control_char_is_refused_before_gpg_runs(pgp_keys, bad):
    with pytest.raises(CryptoError, match="CVE-2019-6690"):
        PgpKeyring([pgp_keys.recipient.private_key], passphrase=f"{PASSPHRASE}{bad}")


@pytest.mark.parametrize("damage", ["truncated", "flipped", "armor_truncated"])
def test_corrupt_or_truncated_ciphertext_fails_and_leaves_no_output(pgp_keys, gpg_cli, ours, tmp_path, damage):
    big = tmp_path / "big.csv"
    big.write_bytes(CSV * 2000)  # long enough that damage hits the encrypted data, not only headers
    armor = damage == "armor_truncated"
    src = gpg_cli.encrypt(big, tmp_path / "m.gpg", pgp_keys.recipient, armor=armor, compress=False)
    data = bytearray(src.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    src.write_bytes(bytes(data))
    dst = tmp_path / "out.csv"
    with pytest.raises(CryptoError) as caught:
        ours.decrypt_file(src, dst, "in/m.gpg")
    assert "in/m.gpg" in str(caught.value)
    assert "upload it again" in str(caught.value)
    assert not dst.exists()


def test_message_without_mdc_is_refused(pgp_keys, gpg_cli, ours, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "legacy.gpg", pgp_keys.recipient, mdc=False)
    packets = gpg_cli.list_packets(src, passphrase=PASSPHRASE)
    assert ":encrypted data packet:" in packets and "mdc_method" not in packets  # a real tag-9 packet
    dst = tmp_path / "out.csv"
    with pytest.raises(CryptoError, match="integrity protection"):
        ours.decrypt_file(src, dst, "legacy.gpg")
    assert not dst.exists()


def test_symmetric_and_signed_only_messages_are_refused(pgp_keys, gpg_cli, ours, plain, tmp_path):
    symmetric = gpg_cli.encrypt_symmetric(plain, tmp_path / "sym.gpg", PASSPHRASE)  # even with our passphrase
    signed_only = gpg_cli.sign_only(plain, tmp_path / "signed.gpg", pgp_keys.partner)
    with pytest.raises(CryptoError, match="symmetric"):
        ours.decrypt_file(symmetric, tmp_path / "a.csv", "sym.gpg")
    with pytest.raises(CryptoError, match="not encrypted"):
        ours.decrypt_file(signed_only, tmp_path / "b.csv", "signed.gpg")
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


# ---------------------------------------------------------------- signatures


def test_signed_by_the_pinned_signer_is_accepted(pgp_keys, gpg_cli, ours_signed, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient, sign_with=pgp_keys.partner, armor=True)
    result = ours_signed.decrypt_file(src, tmp_path / "out.csv", "m.gpg")
    assert result.signature == "verified"
    assert result.signer_fingerprint == pgp_keys.partner.fingerprint
    assert (tmp_path / "out.csv").read_bytes() == CSV


def test_unsigned_or_wrongly_signed_is_refused_when_a_signer_is_pinned(pgp_keys, gpg_cli, ours_signed, plain, tmp_path):
    unsigned = gpg_cli.encrypt(plain, tmp_path / "unsigned.gpg", pgp_keys.recipient)
    wrong = gpg_cli.encrypt(plain, tmp_path / "wrong.gpg", pgp_keys.recipient, sign_with=pgp_keys.stranger)
    with pytest.raises(CryptoError, match="not signed"):
        ours_signed.decrypt_file(unsigned, tmp_path / "a.csv", "unsigned.gpg")
    with pytest.raises(CryptoError) as caught:
        ours_signed.decrypt_file(wrong, tmp_path / "b.csv", "wrong.gpg")
    assert f"not by the expected signer {pgp_keys.partner.fingerprint}" in str(caught.value)
    assert pgp_keys.stranger.fingerprint[-16:] in str(caught.value)
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


def test_without_a_pinned_signer_an_unknown_signature_is_reported_not_fatal(pgp_keys, gpg_cli, ours, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient, sign_with=pgp_keys.stranger)
    result = ours.decrypt_file(src, tmp_path / "out.csv", "m.gpg")
    assert result.signature == "unverified" and result.signer_fingerprint is None


def test_signer_pin_must_match_the_signer_key(pgp_keys):
    with pytest.raises(CryptoError, match="pins"):
        with keyring(pgp_keys, signer_public_key=pgp_keys.partner.public_key, signer_fingerprint=pgp_keys.stranger.fingerprint):
            pass
    with pytest.raises(CryptoError, match="signer_public_key_env"):
        with keyring(pgp_keys, signer_fingerprint=pgp_keys.partner.fingerprint):
            pass


# ---------------------------------------------------------------- the keyring itself


def test_home_is_private_short_and_removed_with_its_agent(pgp_keys, gpg_cli, plain, tmp_path):
    src = gpg_cli.encrypt(plain, tmp_path / "m.gpg", pgp_keys.recipient)
    with keyring(pgp_keys) as kr:
        home = kr.home
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert len(str(home)) < 60  # room for the agent's socket names
        assert Path.home() / ".gnupg" != home
        kr.decrypt_file(src, tmp_path / "out.csv", "m.gpg")  # starts gpg-agent
        assert agent_running(home)
    assert not home.exists()
    assert not agent_running(home)


def test_home_is_removed_when_the_block_raises(pgp_keys):
    with pytest.raises(RuntimeError):
        with keyring(pgp_keys) as kr:
            home = kr.home
            raise RuntimeError("boom")
    assert not home.exists()
    with pytest.raises(CryptoError, match="not open"):
        kr.decrypt_file(Path("x"), Path("y"), "x")


def test_gpg_calls_are_killed_after_the_timeout(pgp_keys, tmp_path):
    kr = keyring(pgp_keys, timeout_seconds=0.001, base_dir=tmp_path.parent)
    with pytest.raises(CryptoError, match="did not finish"):
        kr.open()
    assert not list(tmp_path.parent.glob("cdpg-*"))  # cleaned up after the failed open


def test_key_material_is_checked_at_import(pgp_keys):
    with pytest.raises(CryptoError, match="public key, not a private key"):
        PgpKeyring([pgp_keys.recipient.public_key]).open()
    with pytest.raises(CryptoError, match="PRIVATE key"):
        PgpKeyring(public_key=pgp_keys.partner.private_key).open()
    with pytest.raises(CryptoError, match="not an ASCII-armoured"):
        PgpKeyring(["/etc/keys/ours.asc"]).open()
    with pytest.raises(CryptoError, match="contains 2 keys"):
        PgpKeyring(public_key=pgp_keys.partner.public_key + pgp_keys.stranger.public_key).open()
    with pytest.raises(CryptoError, match="short key ids are refused"):
        PgpKeyring(public_key=pgp_keys.partner.public_key, public_key_fingerprint=pgp_keys.partner.fingerprint[-16:])
    assert normalize_fingerprint(" 0x" + " ".join(pgp_keys.partner.fingerprint.lower()[i : i + 4] for i in range(0, 40, 4))) == (
        pgp_keys.partner.fingerprint
    )


# ---------------------------------------------------------------- encrypt


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_encrypt_file_round_trips_through_the_gpg_command_line(pgp_keys, gpg_cli, ours, plain, tmp_path, armor):
    dst = tmp_path / "export.csv.pgp"
    assert ours.recipient_fingerprint == pgp_keys.partner.fingerprint
    size = ours.encrypt_file(plain, dst, armor=armor)
    assert size == dst.stat().st_size > 0
    assert dst.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----") is armor
    assert looks_encrypted(dst)
    packets = gpg_cli.list_packets(dst)
    assert f"keyid {pgp_keys.partner.encryption_key_id}" in packets
    assert "compressed packet" not in packets  # --compress-algo none, see encrypt_file
    back = gpg_cli.decrypt(dst, tmp_path / "back.csv", passphrase=None)
    assert back.read_bytes() == plain.read_bytes()


def test_pinned_recipient_fingerprint_mismatch_is_refused(pgp_keys, tmp_path):
    with pytest.raises(CryptoError, match="pins") as caught:
        with keyring(pgp_keys, public_key=pgp_keys.stranger.public_key, public_key_fingerprint=pgp_keys.partner.fingerprint):
            pass
    assert pgp_keys.stranger.fingerprint in str(caught.value)


@pytest.mark.parametrize("which,reason", [("expired", "expired on"), ("revoked", "revoked")])
def test_encrypt_refuses_expired_or_revoked_keys_and_writes_nothing(pgp_keys, plain, tmp_path, which, reason):
    key = getattr(pgp_keys, which)
    dst = tmp_path / "export.csv.pgp"
    with PgpKeyring(public_key=key.public_key, public_key_fingerprint=key.fingerprint) as kr:
        with pytest.raises(CryptoError, match=reason):
            kr.encrypt_file(plain, dst)
    assert not dst.exists()


def test_encrypt_failures_leave_no_output(pgp_keys, plain, tmp_path):
    dst = tmp_path / "export.csv.pgp"
    with PgpKeyring() as kr, pytest.raises(CryptoError, match="no public key"):
        kr.encrypt_file(plain, dst)
    with PgpKeyring(public_key=pgp_keys.partner.public_key) as kr:
        with pytest.raises(CryptoError, match="does not exist"):
            kr.encrypt_file(tmp_path / "missing.csv", dst)
        # Make gpg itself fail after the output file was created: point the recipient at a key that
        # is not in this keyring (bypassing our own pre-check), so gpg answers INV_RECP.
        dst.write_text("stale content from an earlier attempt")
        kr._recipient = pgp_keys.stranger.fingerprint
        kr._recipient_problem = lambda now: None  # type: ignore[method-assign]
        with pytest.raises(CryptoError, match="failed"):
            kr.encrypt_file(plain, dst)
    assert not dst.exists()


# ---------------------------------------------------------------- expiry


def test_expiry_warnings_for_the_expiring_key(pgp_keys):
    with PgpKeyring(
        [pgp_keys.recipient.private_key],
        PASSPHRASE,
        public_key=pgp_keys.expiring.public_key,
        public_key_fingerprint=pgp_keys.expiring.fingerprint,
        signer_public_key=pgp_keys.partner.public_key,
    ) as kr:
        infos = {info.purpose: info for info in kr.key_expiries()}
        assert infos["encrypt"].fingerprint == pgp_keys.expiring.fingerprint
        assert infos["encrypt"].days_left in (9, 10)
        assert infos["encrypt"].expires_at == pgp_keys.expiring.expires_at
        assert infos["decrypt"].days_left is not None and infos["decrypt"].days_left > 300
        assert infos["signer"].user_id == pgp_keys.partner.user_id

        warnings = kr.expiry_warnings(21)  # SARE announces rotation three weeks ahead
        assert len(warnings) == 1
        assert pgp_keys.expiring.fingerprint in warnings[0] and "expires on" in warnings[0]
        assert "pgp.public_key_env" in warnings[0]
        assert kr.expiry_warnings(5) == []

        in_a_year = datetime.now(UTC) + timedelta(days=370)
        late = kr.expiry_warnings(21, now=in_a_year)
        assert len(late) == 3 and all("EXPIRED" in w for w in late)
        assert any("pgp.private_keys_env" in w for w in late)


def test_expired_and_revoked_keys_are_reported(pgp_keys):
    with PgpKeyring(public_key=pgp_keys.revoked.public_key) as kr:
        assert kr.key_expiries()[0].revoked
        assert "REVOKED" in kr.expiry_warnings(21)[0]
    with PgpKeyring(public_key=pgp_keys.expired.public_key) as kr:
        info = kr.key_expiries()[0]
        assert info.days_left is not None and info.days_left < 0
        assert "EXPIRED on 2020-01-02" in kr.expiry_warnings(0)[0]


def test_an_expired_decryption_key_still_decrypts_late_deliveries(pgp_keys, gpg_cli, plain, tmp_path):
    # gpg refuses to encrypt to an expired key today, so the sender's clock is set back to 2020
    src = gpg_cli.encrypt(plain, tmp_path / "late.gpg", pgp_keys.expired, extra_args=["--faked-system-time", "20200101T120000"])
    with PgpKeyring([pgp_keys.expired.private_key]) as kr:
        result = kr.decrypt_file(src, tmp_path / "late.csv", "late.gpg")
        warnings = kr.expiry_warnings(21)
    assert result.decryption_key == pgp_keys.expired.fingerprint
    assert (tmp_path / "late.csv").read_bytes() == CSV
    assert len(warnings) == 1 and "EXPIRED" in warnings[0] and "to decrypt incoming files" in warnings[0]


# ---------------------------------------------------------------- streaming and isolation


def test_decrypt_streams_a_50_mb_file_with_flat_memory_and_no_dagster(pgp_keys, gpg_cli, tmp_path):
    """Run the decrypt in a child process and compare its peak RSS (VmHWM) before and after."""
    big = tmp_path / "big.csv"
    block = os.urandom(1 << 20)
    with big.open("wb") as handle:
        for _ in range(50):
            handle.write(block)
    src = gpg_cli.encrypt(big, tmp_path / "big.csv.pgp", pgp_keys.recipient, compress=False)
    dst = tmp_path / "big.out"
    script = textwrap.dedent(
        """
        import json, os, sys
        from pathlib import Path

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        from cdp_pipeline.crypto.keyring import PgpKeyring
        with PgpKeyring([os.environ["KEY"]], os.environ["PASS"]) as kr:
            before = hwm()
            result = kr.decrypt_file(Path(sys.argv[1]), Path(sys.argv[2]), "big.csv.pgp")
            after = hwm()
        print(json.dumps({"before": before, "after": after, "bytes": result.bytes_written,
                          "dagster": any(m == "dagster" or m.startswith("dagster.") for m in sys.modules)}))
        """
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "KEY": pgp_keys.recipient.private_key,
        "PASS": PASSPHRASE,
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, str(src), str(dst)], capture_output=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    size = big.stat().st_size
    assert report["bytes"] == size
    assert report["after"] - report["before"] < size // 5, report  # far below the 50 MB file
    assert report["dagster"] is False  # the engine never imports dagster
    assert dst.stat().st_size == size


KILLED_KEYRING = """
import os, signal, sys
from cdp_pipeline.crypto.keyring import PgpKeyring
keyring = PgpKeyring([os.environ["KILLED_PRIVATE_KEY"]], passphrase=os.environ["KILLED_PASSPHRASE"], base_dir=sys.argv[1])
keyring.open()
print(keyring.home, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _agents_of(home: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "gpg-agent" in line and str(home) in line]


def test_the_home_of_a_killed_keyring_is_removed_by_the_next_one(pgp_keys, plain, tmp_path):
    base = Path(os.path.realpath("/tmp")) / f"kr{os.getpid()}"
    base.mkdir(mode=0o700)
    try:
        env = {**os.environ, "KILLED_PRIVATE_KEY": pgp_keys.recipient.private_key, "KILLED_PASSPHRASE": PASSPHRASE}
        killed = subprocess.run([sys.executable, "-c", KILLED_KEYRING, str(base)], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert killed.returncode == -9, killed.stderr
        orphan = Path(killed.stdout.strip())
        # kill -9 ran no finally: the home with the imported secret key is still there
        assert orphan.parent == base and any((orphan / "private-keys-v1.d").iterdir())
        assert _agents_of(orphan), "the killed keyring's gpg-agent outlives it (it runs detached)"

        with keyring(pgp_keys, base_dir=base) as fresh:
            assert fresh.home.exists()
            assert not orphan.exists()
            assert _agents_of(orphan) == []
            assert [path for path in base.iterdir()] == [fresh.home]
        assert list(base.iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
