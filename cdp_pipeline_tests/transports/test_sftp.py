"""SftpTransport against a real OpenSSH sshd (fixture ``sshd_server``): no mocks of paramiko or sshd."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from cdp_pipeline.errors import ConfigError, FileVanishedError, TransientTransportError, TransportError
from cdp_pipeline.transports import sftp_streams
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.sftp import SftpTransport
from cdp_pipeline.transports.sftp_credentials import SftpSecrets, load_private_key
from cdp_pipeline_tests.fixtures.sshd import SshdServer, fingerprint_of_public_line, sshd_variant


def transport_for(server: SshdServer, role: str, method: str | None = None, key: str = "ed25519", **overrides) -> SftpTransport:
    settings = server.settings(role, method, key, **overrides)
    return SftpTransport(settings.location, settings.secrets, backoff_seconds=0.05)


def leftovers(directory: Path) -> list[str]:
    """Temporary files a transfer may have left in ``directory``."""
    return sorted(name for name in os.listdir(directory) if name.endswith((".download", ".part")))


# ---------------------------------------------------------------- authentication


def test_password_login(sshd_server: SshdServer) -> None:
    directory = sshd_server.fresh_directory("password")
    sshd_server.drop_file("password", f"{directory}/a.csv", b"id\n1\n")
    with transport_for(sshd_server, "password") as transport:
        assert [f.name for f in transport.list_files(directory)] == ["a.csv"]
        assert transport.connection_attempts == 1


@pytest.mark.parametrize("key", ["ed25519", "rsa", "ecdsa", "ecdsa384", "ecdsa521"])
def test_private_key_login_detects_the_key_type(sshd_server: SshdServer, key: str) -> None:
    # rsa: OpenSSH format with a passphrase; ecdsa384: traditional PEM with a passphrase.
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/a.csv", b"x")
    with transport_for(sshd_server, "key", "private_key", key) as transport:
        assert transport.exists(f"{directory}/a.csv")


def test_private_key_read_from_key_file(sshd_server: SshdServer) -> None:
    settings = sshd_server.settings("key", "private_key", "ed25519")
    auth = settings.location.auth.model_copy(update={"private_key_env": None, "private_key_file": str(sshd_server.keys["ed25519"].path)})
    location = settings.location.model_copy(update={"auth": auth})
    with SftpTransport(location, SftpSecrets()) as transport:
        assert transport.list_files(".") is not None


def test_secrets_from_environment(sshd_server: SshdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sshd_server.settings("mfa", env_prefix="CDP_TEST_SFTP_ENV")
    for name, value in settings.environment.items():
        monkeypatch.setenv(name, value)
    with SftpTransport(settings.location) as transport:
        transport.list_files(".")
    monkeypatch.delenv("CDP_TEST_SFTP_ENV_PASSWORD")
    with pytest.raises(ConfigError, match="CDP_TEST_SFTP_ENV_PASSWORD"):
        SftpSecrets.from_environment(settings.location.auth)


def test_multi_factor_publickey_then_password(sshd_server: SshdServer) -> None:
    with transport_for(sshd_server, "mfa", "multi_factor") as transport:
        transport.list_files(".")


def test_multi_factor_server_refuses_key_alone(sshd_server: SshdServer) -> None:
    with pytest.raises(TransportError, match="further authentication: password") as raised:
        transport_for(sshd_server, "mfa", "private_key").list_files(".")
    assert not isinstance(raised.value, TransientTransportError)


def test_multi_factor_server_refuses_password_alone(sshd_server: SshdServer) -> None:
    with pytest.raises(TransportError, match="accepts only publickey"):
        transport_for(sshd_server, "mfa", "password").list_files(".")


def test_wrong_password_fails_fast_and_names_everything_but_the_secret(sshd_server: SshdServer) -> None:
    settings = sshd_server.settings("password", retries=3)
    wrong = "not-the-password-" + "x" * 8
    transport = SftpTransport(settings.location, dataclasses.replace(settings.secrets, password=wrong), backoff_seconds=5)
    started = time.monotonic()
    with pytest.raises(TransportError) as raised:
        transport.list_files(".")
    assert time.monotonic() - started < 4, "an authentication failure must not be retried with backoff"
    assert transport.connection_attempts == 1
    assert not isinstance(raised.value, TransientTransportError)
    message = str(raised.value)
    user = sshd_server.user("password")
    assert user.name in message and f"127.0.0.1:{sshd_server.port}" in message and "with password" in message
    assert wrong not in message and user.password not in message


def test_key_the_server_does_not_know_is_refused(sshd_server: SshdServer) -> None:
    with pytest.raises(TransportError, match="rejected the publickey"):
        transport_for(sshd_server, "key", "private_key", "stranger").list_files(".")


def test_wrong_or_missing_key_passphrase(sshd_server: SshdServer) -> None:
    rsa = sshd_server.keys["rsa"]
    settings = sshd_server.settings("key", "private_key", "rsa")
    wrong = dataclasses.replace(settings.secrets, passphrase="wrong-passphrase-123")
    with pytest.raises(TransportError, match="wrong passphrase") as raised:
        SftpTransport(settings.location, wrong).list_files(".")
    assert "wrong-passphrase-123" not in str(raised.value) and rsa.private_text[40:80] not in str(raised.value)
    with pytest.raises(TransportError, match="passphrase-protected"):
        load_private_key(rsa.private_text, None)


def test_password_through_keyboard_interactive(sshd_server: SshdServer) -> None:
    # Servers that take passwords only through PAM's keyboard-interactive, not the "password" method.
    with sshd_variant(sshd_server, UsePAM="yes", PasswordAuthentication="no", KbdInteractiveAuthentication="yes") as port:
        with transport_for(sshd_server, "password", port=port) as transport:
            transport.list_files(".")


def test_pkcs8_keys_load(sshd_server: SshdServer) -> None:
    from cryptography.hazmat.primitives import serialization

    ed25519 = sshd_server.keys["ed25519"]
    parsed = serialization.load_ssh_private_key(ed25519.private_text.encode(), password=None)
    pkcs8 = parsed.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pkcs8-passphrase"),
    ).decode()
    assert "BEGIN ENCRYPTED PRIVATE KEY" in pkcs8
    key = load_private_key(pkcs8, "pkcs8-passphrase")
    assert f"{key.get_name()} {key.get_base64()}" == " ".join(ed25519.public_line.split()[:2])


def test_secrets_repr_hides_values() -> None:
    secrets = SftpSecrets(password="hunter2-pw", private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nabc", passphrase="pp-secret")
    for text in (repr(secrets), str(secrets), f"{secrets}", repr([secrets])):
        assert "hunter2-pw" not in text and "BEGIN" not in text and "pp-secret" not in text
    assert repr(secrets) == "SftpSecrets(password=<set>, private_key=<set>, passphrase=<set>)"
    assert repr(SftpSecrets()) == "SftpSecrets(password=<unset>, private_key=<unset>, passphrase=<unset>)"


def test_uri_has_no_secret(sshd_server: SshdServer) -> None:
    transport = transport_for(sshd_server, "password")
    user = sshd_server.user("password")
    assert transport.uri == f"sftp://{user.name}@127.0.0.1:{sshd_server.port}"
    assert user.password not in repr(transport.__dict__.get("uri"))


# ---------------------------------------------------------------- host keys


def test_wrong_host_key_fingerprint_is_refused_with_both_fingerprints(sshd_server: SshdServer) -> None:
    expected = fingerprint_of_public_line(sshd_server.keys["stranger"].public_line)
    transport = transport_for(sshd_server, "password", host_key_fingerprint=expected, retries=3)
    with pytest.raises(TransportError) as raised:
        transport.list_files(".")
    message = str(raised.value)
    assert not isinstance(raised.value, TransientTransportError)
    assert sshd_server.host_key_fingerprint in message  # what the server presented
    assert sshd_server.ecdsa_host_key_fingerprint in message  # its other key, asked for too
    assert expected in message
    assert transport.connection_attempts == 1


def test_wrong_known_hosts_line_is_refused(sshd_server: SshdServer) -> None:
    stranger = sshd_server.keys["stranger"].public_line.split()
    line = f"[127.0.0.1]:{sshd_server.port} {stranger[0]} {stranger[1]}"
    with pytest.raises(TransportError, match="does not match the pinned key") as raised:
        transport_for(sshd_server, "password", known_hosts_line=line).list_files(".")
    assert sshd_server.host_key_fingerprint in str(raised.value)


@pytest.mark.parametrize("pin", ["ed25519_line", "ecdsa_line", "ecdsa_fingerprint", "keygen_output"])
def test_host_key_pins_that_match(sshd_server: SshdServer, pin: str) -> None:
    overrides = {
        "ed25519_line": {"known_hosts_line": sshd_server.host_key_line},
        # the server prefers ed25519: pinning its ecdsa key must still work (line and bare fingerprint)
        "ecdsa_line": {"known_hosts_line": sshd_server.ecdsa_host_key_line},
        "ecdsa_fingerprint": {"host_key_fingerprint": sshd_server.ecdsa_host_key_fingerprint},
        # a whole `ssh-keygen -lf` line pasted as is
        "keygen_output": {"host_key_fingerprint": f"256 {sshd_server.host_key_fingerprint} [127.0.0.1]:22 (ED25519)"},
    }[pin]
    with transport_for(sshd_server, "password", **overrides) as transport:
        transport.list_files(".")


def test_malformed_host_key_pin_is_a_config_error(sshd_server: SshdServer) -> None:
    with pytest.raises(ConfigError):
        transport_for(sshd_server, "password", host_key_fingerprint="MD5:aa:bb")
    with pytest.raises(ConfigError):
        transport_for(sshd_server, "password", known_hosts_line="host ssh-ed25519 not-base64!!")


def test_server_with_only_legacy_ciphers_is_refused_clearly(sshd_server: SshdServer) -> None:
    with sshd_variant(sshd_server, Ciphers="aes128-cbc") as port:
        transport = transport_for(sshd_server, "password", port=port, retries=3)
        with pytest.raises(TransportError, match="no algorithm this client accepts") as raised:
            transport.list_files(".")
    assert not isinstance(raised.value, TransientTransportError)
    assert transport.connection_attempts == 1


# ---------------------------------------------------------------- paths


def test_home_directory_resolves_relative_paths_only(sshd_server: SshdServer) -> None:
    # The jail user is chrooted; its sessions start in /files.
    sshd_server.drop_file("jail", "/files/inbox/a.csv", b"a")
    sshd_server.drop_file("jail", "/files/other/b.csv", b"bb")
    with transport_for(sshd_server, "jail", home_directory="/files/inbox") as transport:
        assert transport.resolve("sub") == "/files/inbox/sub"
        assert transport.resolve("/files/other") == "/files/other"
        assert [f.path for f in transport.list_files(".")] == ["/files/inbox/a.csv"]
        assert [f.path for f in transport.list_files("/files/other")] == ["/files/other/b.csv"]
    with transport_for(sshd_server, "jail") as transport:
        # without home_directory, relative paths are the server's business: its login directory
        assert [f.path for f in transport.list_files("inbox")] == ["inbox/a.csv"]


# ---------------------------------------------------------------- operations


def test_list_files_returns_regular_files_only(sshd_server: SshdServer) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/b.csv", b"12345", mtime=1_700_000_000)
    sshd_server.drop_file("key", f"{directory}/a.csv", b"1")
    sshd_server.make_directory("key", f"{directory}/subdir")
    os.symlink(sshd_server.server_path("key", f"{directory}/b.csv"), sshd_server.server_path("key", f"{directory}/link.csv"))
    with transport_for(sshd_server, "key") as transport:
        files = transport.list_files(directory)
    assert [(f.path, f.size) for f in files] == [(f"{directory}/a.csv", 1), (f"{directory}/b.csv", 5)]
    assert files[1].mtime == 1_700_000_000


def test_list_missing_directory_names_the_path(sshd_server: SshdServer) -> None:
    with transport_for(sshd_server, "key", retries=3) as transport:
        with pytest.raises(TransportError, match="no_such_dir_9") as raised:
            transport.list_files("no_such_dir_9")
        assert not isinstance(raised.value, TransientTransportError)
        assert transport.connection_attempts == 1


def test_download_is_complete_private_and_atomic(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    sshd_server.drop_file("key", f"{directory}/big.csv", payload)
    target = tmp_path / "staging" / "big.csv"
    with transport_for(sshd_server, "key") as transport:
        [remote] = transport.list_files(directory)
        assert transport.download(remote, target) == len(payload)
    assert target.read_bytes() == payload
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(target.parent) == []


def test_download_of_vanished_file(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    server_file = sshd_server.drop_file("key", f"{directory}/a.csv", b"abc")
    with transport_for(sshd_server, "key", retries=3) as transport:
        [remote] = transport.list_files(directory)
        server_file.unlink()
        with pytest.raises(FileVanishedError, match="gone"):
            transport.download(remote, tmp_path / "a.csv")
        assert transport.connection_attempts == 1
    assert list(tmp_path.iterdir()) == []


def test_download_of_file_that_changed_size_since_listing(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    server_file = sshd_server.drop_file("key", f"{directory}/a.csv", b"abc")
    (tmp_path / "a.csv").write_bytes(b"previous")
    with transport_for(sshd_server, "key") as transport:
        [remote] = transport.list_files(directory)
        server_file.write_bytes(b"abcdef")  # the uploader is still appending
        with pytest.raises(FileVanishedError, match="6 bytes now, 3 listed"):
            transport.download(remote, tmp_path / "a.csv")
        with pytest.raises(FileVanishedError):
            transport.download(RemoteFile(path=remote.path, size=2, mtime=remote.mtime), tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_download_many_over_parallel_connections(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    payloads = {f"f{i}.csv": os.urandom(200_000 + i) for i in range(4)}
    for name, data in payloads.items():
        sshd_server.drop_file("key", f"{directory}/{name}", data)
    with transport_for(sshd_server, "key") as transport:
        remotes = transport.list_files(directory)
        counts = transport.download_many([(r, tmp_path / r.name) for r in remotes], parallel=2)
        assert counts == [len(payloads[r.name]) for r in remotes]
        assert transport.connection_attempts == 2  # its own plus one extra connection
    for name, data in payloads.items():
        assert (tmp_path / name).read_bytes() == data


def test_upload_goes_through_part_then_rename(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/out/export.csv", b"old export")
    final = sshd_server.server_path("key", f"{directory}/out/export.csv")
    part = final.with_name("export.csv.part")
    payload = os.urandom(24 * 1024 * 1024)
    local = tmp_path / "export.csv"
    local.write_bytes(payload)

    seen_part_while_old_target: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        # Poll the server's disk: while the .part exists, the target must still be the old, whole file.
        while not done.is_set():
            if part.exists():
                try:
                    old_target = final.read_bytes() == b"old export"
                except FileNotFoundError:
                    old_target = False
                # Only a read made while the .part still existed says anything: the rename may
                # land between the two looks, and then the new target is right.
                if part.exists():
                    seen_part_while_old_target.append(old_target)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with transport_for(sshd_server, "key") as transport:
            assert transport.upload(local, f"{directory}/out/export.csv") == len(payload)
    finally:
        done.set()
        watcher.join()
    assert seen_part_while_old_target and all(seen_part_while_old_target)
    assert final.read_bytes() == payload
    assert leftovers(final.parent) == []


def test_upload_creates_missing_directories(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("jail")
    local = tmp_path / "e.csv"
    local.write_bytes(b"a,b\n")
    with transport_for(sshd_server, "jail", home_directory="/files") as transport:
        assert transport.upload(local, f"{directory}/x/y/e.csv") == 4
        assert transport.exists(f"{directory}/x/y/e.csv")
    assert sshd_server.server_path("jail", f"/files/{directory}/x/y/e.csv").read_bytes() == b"a,b\n"


def test_failed_upload_leaves_no_part(sshd_server: SshdServer, tmp_path: Path) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.make_directory("key", f"{directory}/taken.csv/inner")  # the target name is a non-empty directory
    local = tmp_path / "taken.csv"
    local.write_bytes(b"data")
    with transport_for(sshd_server, "key") as transport:
        with pytest.raises(TransportError, match="taken.csv"):
            transport.upload(local, f"{directory}/taken.csv")
    assert leftovers(sshd_server.server_path("key", directory)) == []


def test_rename_is_idempotent_and_replaces_nothing(sshd_server: SshdServer) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/a.csv", b"a")
    sshd_server.drop_file("key", f"{directory}/b.csv", b"b")
    sshd_server.drop_file("key", f"{directory}/done/b.csv", b"older b")
    with transport_for(sshd_server, "key") as transport:
        transport.rename(f"{directory}/a.csv", f"{directory}/done/a.csv")
        transport.rename(f"{directory}/a.csv", f"{directory}/done/a.csv")  # again, as a retry would: quietly done
        assert transport.exists(f"{directory}/done/a.csv") and not transport.exists(f"{directory}/a.csv")
        transport.rename(f"{directory}/done/a.csv", f"{directory}/archive/2024/a.csv")  # target directory is created
        assert transport.exists(f"{directory}/archive/2024/a.csv")
        with pytest.raises(TransportError, match="already exists"):
            transport.rename(f"{directory}/b.csv", f"{directory}/done/b.csv")
        assert transport.exists(f"{directory}/b.csv")
        with pytest.raises(FileVanishedError):
            transport.rename(f"{directory}/nothing.csv", f"{directory}/done/nothing.csv")
    assert sshd_server.server_path("key", f"{directory}/done/b.csv").read_bytes() == b"older b"


def test_delete_and_exists(sshd_server: SshdServer) -> None:
    directory = sshd_server.fresh_directory("key")
    sshd_server.drop_file("key", f"{directory}/a.csv", b"a")
    sshd_server.make_directory("key", f"{directory}/sub")
    with transport_for(sshd_server, "key") as transport:
        assert transport.exists(f"{directory}/a.csv")
        assert not transport.exists(f"{directory}/sub")  # a directory is not a file
        assert not transport.exists(f"{directory}/missing.csv")
        transport.delete(f"{directory}/a.csv")
        transport.delete(f"{directory}/a.csv")  # missing is fine
        assert not transport.exists(f"{directory}/a.csv")
        assert transport.connection_attempts == 1  # one connection for everything


# ---------------------------------------------------------------- network failures


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nobody listens once the socket is closed


def test_connection_refused_is_retried_then_transient(sshd_server: SshdServer) -> None:
    settings = sshd_server.settings("password", port=closed_port(), retries=2, timeout_seconds=2)
    sleeps: list[float] = []
    transport = SftpTransport(settings.location, settings.secrets, backoff_seconds=0.01, sleep=sleeps.append)
    with pytest.raises(TransientTransportError, match="after 3 attempt") as raised:
        transport.list_files(".")
    assert transport.connection_attempts == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9  # exponential, with jitter in [0.5, 1]
    assert settings.secrets.password not in str(raised.value)


def test_silent_server_times_out_and_is_transient(sshd_server: SshdServer) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never sends an SSH banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = sshd_server.settings("password", port=silent.getsockname()[1], retries=1, timeout_seconds=0.5)
        transport = SftpTransport(settings.location, settings.secrets, backoff_seconds=0.01)
        started = time.monotonic()
        with pytest.raises(TransientTransportError):
            transport.list_files(".")
        assert transport.connection_attempts == 2
        assert time.monotonic() - started < 5


def session_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            if int(uid_line.split()[1]) == uid:
                pids.append(int(entry))
    return pids


def test_dropped_connection_is_reopened(sshd_server: SshdServer) -> None:
    directory = sshd_server.fresh_directory("password")
    sshd_server.drop_file("password", f"{directory}/a.csv", b"a")
    user = sshd_server.user("password")
    with transport_for(sshd_server, "password") as transport:
        assert len(transport.list_files(directory)) == 1
        # Kill the server side of the session (its sftp process runs as the user): a real drop.
        for pid in session_processes(user.uid):
            os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while session_processes(user.uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(transport.list_files(directory)) == 1
        assert transport.connection_attempts == 2


# ---------------------------------------------------------------- faults in the middle of a transfer


class _FaultOnceDataFlows:
    """``os`` as ``sftp_streams`` sees it, with one real fault injected after the first block.

    The fault itself is real (the server's session processes are killed or stopped); this only
    picks the moment, so that it lands in the middle of the transfer instead of before or after it.
    """

    def __init__(self, fault) -> None:
        self._fault = fault
        self.fired = False

    def __getattr__(self, name: str):
        return getattr(os, name)

    def _once(self) -> None:
        if not self.fired:
            self.fired = True
            self._fault()

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        written = os.pwrite(fd, data, offset)
        self._once()
        return written

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        data = os.pread(fd, length, offset)
        self._once()
        return data


def kill_session(uid: int) -> None:
    for pid in session_processes(uid):
        os.kill(pid, 9)


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_connection_killed_mid_transfer_is_retried_to_a_whole_file(
    sshd_server: SshdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    directory = sshd_server.fresh_directory("key")
    payload = os.urandom(40 * 1024 * 1024)
    user = sshd_server.user("key")
    fault = _FaultOnceDataFlows(lambda: kill_session(user.uid))
    monkeypatch.setattr(sftp_streams, "os", fault)
    with transport_for(sshd_server, "key", retries=2) as transport:
        if direction == "download":
            sshd_server.drop_file("key", f"{directory}/big.bin", payload)
            [remote] = transport.list_files(directory)
            assert transport.download(remote, tmp_path / "big.bin") == len(payload)
            assert (tmp_path / "big.bin").read_bytes() == payload
            assert leftovers(tmp_path) == []
        else:
            (tmp_path / "big.bin").write_bytes(payload)
            assert transport.upload(tmp_path / "big.bin", f"{directory}/big.bin") == len(payload)
            assert sshd_server.server_path("key", f"{directory}/big.bin").read_bytes() == payload
            assert leftovers(sshd_server.server_path("key", directory)) == []
        assert fault.fired
        assert transport.connection_attempts == 2


def test_server_stalled_mid_download_times_out_once_then_retries(
    sshd_server: SshdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = sshd_server.fresh_directory("key")
    payload = os.urandom(40 * 1024 * 1024)
    sshd_server.drop_file("key", f"{directory}/big.bin", payload)
    user = sshd_server.user("key")
    stopped: list[int] = []

    def stop_session() -> None:
        stopped.extend(session_processes(user.uid))
        for pid in stopped:
            os.kill(pid, 19)  # SIGSTOP: the connection stays up, the server just stops answering

    monkeypatch.setattr(sftp_streams, "os", _FaultOnceDataFlows(stop_session))
    timeout = 2.0
    try:
        with transport_for(sshd_server, "key", retries=2, timeout_seconds=timeout) as transport:
            [remote] = transport.list_files(directory)
            started = time.monotonic()
            assert transport.download(remote, tmp_path / "big.bin") == len(payload)
            elapsed = time.monotonic() - started
        assert (tmp_path / "big.bin").read_bytes() == payload
        assert transport.connection_attempts == 2
        # One timeout, not two: the failed download does not wait for the reply to its close.
        assert timeout <= elapsed < 2 * timeout, elapsed
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 18)  # SIGCONT, so the kill is delivered
                os.kill(pid, 9)


def test_no_code_path_accepts_unknown_host_keys() -> None:
    """S1: host keys are verified against the configured pin only; paramiko's accept-anything
    policies (and SSHClient, which invites them) are not used anywhere in the package."""
    package = Path(__file__).resolve().parents[2] / "cdp_pipeline"
    forbidden = ("AutoAddPolicy", "WarningPolicy", "set_missing_host_key_policy", "SSHClient")
    offenders = [
        f"{path.relative_to(package)}: {word}"
        for path in package.rglob("*.py")
        for word in forbidden
        if word in path.read_text()
    ]
    assert offenders == []
