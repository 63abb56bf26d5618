"""FtpTransport against a real pyftpdlib server on 127.0.0.1 (fixture ``ftp_account``): FTPS with
a certificate from a CA made for the session, plain FTP only on request, faults injected inside
the server. Expectations come from the server's own disk (os.stat, bytes), not from the client."""

from __future__ import annotations

import ftplib
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp_pipeline.config.connection import Connection, FtpLocation
from cdp_pipeline.config.loading import load_project
from cdp_pipeline.errors import ConfigError, FileVanishedError, TransientError, TransientTransportError, TransportError
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.ftp import FtpSecrets, FtpTransport
from cdp_pipeline.transports.ftp_session import ListedEntry, UnreadableListing, mlsx_entry, parse_list_line, parse_mlsx_facts
from cdp_pipeline_tests.fixtures.ftpd import PASSWORD_ENV, FtpAccount


def transport_for(account: FtpAccount, **overrides) -> FtpTransport:
    return FtpTransport(account.location(**overrides), account.secrets, backoff_seconds=0.01)


def put(account: FtpAccount, path: str, data: bytes) -> Path:
    target = account.root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def server_files(account: FtpAccount) -> list[str]:
    return sorted(p.relative_to(account.root).as_posix() for p in account.root.rglob("*") if p.is_file())


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith((".download", ".part")) or name.startswith("."))


def payload(size: int) -> bytes:
    return bytes((index * 7 + index // 251) % 256 for index in range(size))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("listener", ["explicit", "implicit", "no_mlsd"])
def test_list_download_upload_rename_delete_round_trip_over_ftps(ftp_account: FtpAccount, tmp_path: Path, listener: str) -> None:
    server = ftp_account.server
    port = {"explicit": server.explicit_port, "implicit": server.implicit_port, "no_mlsd": server.no_mlsd_port}[listener]
    tls = "implicit" if listener == "implicit" else "explicit"
    first = put(ftp_account, "push/a file.csv", payload(300_000))
    second = put(ftp_account, "push/b.csv", b"ExternalID;Text;Deeplink\n1;hi;https://x\n")
    os.utime(second, (1_767_225_600, 1_767_225_600))  # 2026-01-01T00:00:00Z
    (ftp_account.root / "push" / "sub").mkdir()
    transport = transport_for(ftp_account, port=port, tls=tls)
    with transport:
        listed = transport.list_files("push")
        # Regular files only (no directory), with the server's own size and mtime.
        expected = [
            RemoteFile(path=f"push/{path.name}", size=path.stat().st_size, mtime=float(int(path.stat().st_mtime)))
            for path in (first, second)
        ]
        assert listed == expected
        assert listed[1].mtime == 1_767_225_600.0
        assert transport.uri.startswith("ftps://")

        assert transport.download(listed[0], tmp_path / "local" / "a.csv") == 300_000
        assert (tmp_path / "local" / "a.csv").read_bytes() == first.read_bytes()
        assert oct((tmp_path / "local" / "a.csv").stat().st_mode & 0o777) == "0o600"
        assert leftovers(tmp_path / "local") == []

        report = tmp_path / "report.csv"
        report.write_bytes(payload(70_000))
        assert transport.upload(report, "reports/2026/APPKEY_PUSH_REPORTS_20260302.csv") == 70_000
        assert (ftp_account.root / "reports/2026/APPKEY_PUSH_REPORTS_20260302.csv").read_bytes() == report.read_bytes()
        assert transport.exists("reports/2026/APPKEY_PUSH_REPORTS_20260302.csv")
        assert not transport.exists("reports/2026")  # a directory is not a file
        assert not transport.exists("reports/missing.csv")

        transport.rename("push/b.csv", "push/done/b.csv")
        transport.rename("push/b.csv", "push/done/b.csv")  # repeated after a lost reply: quiet
        transport.delete("push/a file.csv")
        transport.delete("push/a file.csv")  # already gone: not an error
        assert transport.connection_attempts == 1
    assert server_files(ftp_account) == ["push/done/b.csv", "reports/2026/APPKEY_PUSH_REPORTS_20260302.csv"]


def test_data_connections_resume_the_control_session_as_vsftpd_requires(ftp_account: FtpAccount, tmp_path: Path) -> None:
    port = ftp_account.server.reuse_required_port
    source = put(ftp_account, "in/a.csv", payload(50_000))
    # The server really refuses a fresh TLS session on the data connection: ftplib's own FTP_TLS fails.
    context = ssl.create_default_context(cafile=str(ftp_account.server.ca_file))
    plain_ftplib = ftplib.FTP_TLS(context=context, timeout=10)  # noqa: S321 - TLS, the point of the test
    plain_ftplib.connect("127.0.0.1", port)
    plain_ftplib.login(ftp_account.username, ftp_account.password)
    plain_ftplib.prot_p()
    with pytest.raises(ftplib.error_perm) as refused:
        plain_ftplib.retrbinary("RETR in/a.csv", lambda _: None)
    assert "session reuse required" in str(refused.value)
    plain_ftplib.close()
    transport = transport_for(ftp_account, port=port)
    with transport:
        remote = transport.list_files("in")[0]
        assert transport.download(remote, tmp_path / "a.csv") == 50_000
        transport.upload(tmp_path / "a.csv", "out/a.csv")
        assert transport.connection_attempts == 1
    assert (ftp_account.root / "out/a.csv").read_bytes() == source.read_bytes()


def test_active_mode_transfers_over_ftps(ftp_account: FtpAccount, tmp_path: Path) -> None:
    source = put(ftp_account, "in/a.csv", payload(120_000))
    transport = transport_for(ftp_account, passive=False)
    with transport:
        remote = transport.list_files("in")[0]
        assert transport.download(remote, tmp_path / "a.csv") == 120_000
        transport.upload(tmp_path / "a.csv", "out/a.csv")
    assert (ftp_account.root / "out/a.csv").read_bytes() == source.read_bytes()


def test_rename_refuses_to_replace_and_names_a_vanished_source(ftp_account: FtpAccount) -> None:
    put(ftp_account, "in/a.csv", b"new")
    put(ftp_account, "in/done/a.csv", b"old")
    transport = transport_for(ftp_account)
    with transport:
        with pytest.raises(TransportError, match="target already exists"):
            transport.rename("in/a.csv", "in/done/a.csv")
        with pytest.raises(FileVanishedError, match="gone"):
            transport.rename("in/nothing.csv", "in/done/nothing.csv")
    assert (ftp_account.root / "in/done/a.csv").read_bytes() == b"old"


def test_home_directory_resolves_relative_paths(ftp_account: FtpAccount) -> None:
    put(ftp_account, "netmera/Profile/p.txt", b"extID~email\n1~a@b.c\n")
    transport = transport_for(ftp_account, home_directory="/netmera")
    with transport:
        assert [f.path for f in transport.list_files("Profile")] == ["/netmera/Profile/p.txt"]


def test_a_name_with_a_line_break_is_refused_before_it_reaches_the_server(ftp_account: FtpAccount) -> None:
    transport = transport_for(ftp_account)
    with transport, pytest.raises(TransportError, match="line break"):
        transport.delete("in/a.csv\r\nDELE important.csv")
    assert transport.connection_attempts == 0


def test_listing_a_missing_directory_names_it(ftp_account: FtpAccount) -> None:
    transport = transport_for(ftp_account)
    with transport, pytest.raises(TransportError) as caught:
        transport.list_files("nowhere")
    assert "nowhere" in str(caught.value) and "127.0.0.1" in str(caught.value)


# ---------------------------------------------------------------- TLS and authentication


def test_untrusted_certificate_is_refused_by_default(ftp_account: FtpAccount) -> None:
    transport = transport_for(ftp_account, ca_file=None)
    with pytest.raises(TransportError) as caught:
        transport.list_files(".")
    message = str(caught.value)
    assert "not trusted" in message and "ca_file" in message and "127.0.0.1" in message
    assert not isinstance(caught.value, TransientError)
    assert transport.connection_attempts == 1  # not retried


def test_implicit_tls_checks_the_certificate_too(ftp_account: FtpAccount) -> None:
    transport = transport_for(ftp_account, port=ftp_account.server.implicit_port, tls="implicit", ca_file=None)
    with pytest.raises(TransportError, match="not trusted"):
        transport.list_files(".")


def test_implicit_tls_against_a_plain_text_port_names_the_mode(ftp_account: FtpAccount) -> None:
    transport = transport_for(ftp_account, tls="implicit")  # the explicit listener greets in plain text
    with pytest.raises(TransportError) as caught:
        transport.list_files(".")
    assert "TLS handshake failed" in str(caught.value) and "tls: implicit" in str(caught.value)
    assert not isinstance(caught.value, TransientError) and transport.connection_attempts == 1


def test_plain_ftp_server_is_refused_unless_the_yaml_says_tls_none(ftp_account: FtpAccount, caplog: pytest.LogCaptureFixture) -> None:
    put(ftp_account, "in/a.csv", b"1")
    plain_port = ftp_account.server.plain_port
    with pytest.raises(TransportError) as caught:
        transport_for(ftp_account, port=plain_port).list_files("in")
    assert "refuses TLS" in str(caught.value) and "tls: none" in str(caught.value)

    with caplog.at_level(logging.WARNING):
        transport = transport_for(ftp_account, port=plain_port, tls="none")
        with transport:
            assert [f.name for f in transport.list_files("in")] == ["a.csv"]
    assert transport.uri.startswith("ftp://")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # once when the location is loaded, once when the connection is made
    assert sum("plain FTP (tls: none)" in w for w in warnings) == 2


def test_an_ftps_server_is_not_spoken_to_in_plain_text_by_accident(ftp_account: FtpAccount) -> None:
    """The server demands TLS; a tls: none client is turned away before it sends the password."""
    with pytest.raises(TransportError) as caught:
        transport_for(ftp_account, tls="none").list_files(".")
    assert "authentication failed" in str(caught.value) and "SSL/TLS required" in str(caught.value)


def test_wrong_password_is_a_clear_terminal_error(ftp_account: FtpAccount, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-password-" + ftp_account.password[:4]
    transport = FtpTransport(ftp_account.location(), FtpSecrets(password=wrong), backoff_seconds=0.01)
    with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as caught:
        transport.list_files(".")
    message = str(caught.value)
    assert f"user {ftp_account.username!r}" in message and "127.0.0.1" in message and PASSWORD_ENV in message
    assert "not retried" in message and not isinstance(caught.value, TransientError)
    assert transport.connection_attempts == 1
    assert wrong not in message and wrong not in caplog.text


def test_password_never_reaches_logs_or_reprs(ftp_account: FtpAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put(ftp_account, "in/a.csv", b"x" * 10)
    transport = transport_for(ftp_account)
    with caplog.at_level(logging.DEBUG), transport:
        transport.download(transport.list_files("in")[0], tmp_path / "a.csv")
        assert ftp_account.password not in repr(transport.secrets) + str(transport.secrets) + transport.uri
    assert "<set>" in repr(transport.secrets)
    assert ftp_account.password not in caplog.text


def test_missing_password_variable_names_the_variable(ftp_account: FtpAccount, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        FtpTransport(ftp_account.location())


def test_permission_denied_names_host_path_and_fix(ftp_account: FtpAccount, tmp_path: Path) -> None:
    server = ftp_account.server
    server.authorizer.add_user("cdp_readonly", "readonly-pass-1", str(ftp_account.root), perm="elr")
    try:
        local = tmp_path / "r.csv"
        local.write_bytes(b"1\n")
        location = ftp_account.location(username="cdp_readonly")
        transport = FtpTransport(location, FtpSecrets(password="readonly-pass-1"), backoff_seconds=0.01)
        with transport:
            with pytest.raises(TransportError) as caught:
                transport.upload(local, "out/r.csv")
            assert transport.connection_attempts == 1
    finally:
        server.authorizer.remove_user("cdp_readonly")
    message = str(caught.value)
    assert "127.0.0.1" in message and "out" in message and "may write" in message
    assert server_files(ftp_account) == []


# ---------------------------------------------------------------- transient failures


def test_a_download_cut_off_mid_transfer_is_retried_to_the_whole_file(ftp_account: FtpAccount, tmp_path: Path) -> None:
    source = put(ftp_account, "in/big.csv", payload(2_000_000))
    ftp_account.faults.drop_downloads(after_bytes=600_000, times=1)
    transport = transport_for(ftp_account)
    with transport:
        remote = transport.list_files("in")[0]
        assert transport.download(remote, tmp_path / "big.csv") == 2_000_000
        assert transport.connection_attempts == 2  # the drop happened and a new connection finished it
    assert ftp_account.faults.download_drops_left == 0
    assert (tmp_path / "big.csv").read_bytes() == source.read_bytes()
    assert leftovers(tmp_path) == []


def test_a_download_that_keeps_failing_leaves_no_partial_file(ftp_account: FtpAccount, tmp_path: Path) -> None:
    put(ftp_account, "in/big.csv", payload(1_000_000))
    ftp_account.faults.drop_downloads(after_bytes=300_000, times=10)
    landing = tmp_path / "landing"
    landing.mkdir()
    transport = transport_for(ftp_account, retries=2)
    with transport:
        remote = transport.list_files("in")[0]
        with pytest.raises(TransientTransportError) as caught:
            transport.download(remote, landing / "big.csv")
        assert transport.connection_attempts == 3
    assert isinstance(caught.value, TransientError) and "after 3 attempt(s)" in str(caught.value)
    assert os.listdir(landing) == []  # neither the final name nor a temporary file


def test_a_server_that_stalls_mid_download_times_out_and_is_retried(ftp_account: FtpAccount, tmp_path: Path) -> None:
    source = put(ftp_account, "in/big.csv", payload(1_000_000))
    # Stalls longer than the timeout; the retry's connection is answered once the server wakes.
    ftp_account.faults.stall_downloads(after_bytes=200_000, seconds=1.6, times=1)
    transport = transport_for(ftp_account, timeout_seconds=1, retries=3)
    with transport:
        remote = transport.list_files("in")[0]
        assert transport.download(remote, tmp_path / "big.csv") == 1_000_000
        assert transport.connection_attempts >= 2
    assert ftp_account.faults.download_stalls_left == 0
    assert (tmp_path / "big.csv").read_bytes() == source.read_bytes() and leftovers(tmp_path) == []


@pytest.mark.parametrize("reply", ["421 Service not available, closing control connection.", "450 File busy, try later."])
def test_4xx_replies_are_retried(ftp_account: FtpAccount, tmp_path: Path, reply: str) -> None:
    put(ftp_account, "in/a.csv", b"abc")
    transport = transport_for(ftp_account)
    with transport:
        remote = transport.list_files("in")[0]
        ftp_account.faults.answer("RETR", reply, times=1)
        assert transport.download(remote, tmp_path / "a.csv") == 3
        assert transport.connection_attempts == 2
    assert (tmp_path / "a.csv").read_bytes() == b"abc"


def test_5xx_replies_are_not_retried(ftp_account: FtpAccount, tmp_path: Path) -> None:
    put(ftp_account, "in/a.csv", b"abc")
    transport = transport_for(ftp_account)
    with transport:
        remote = transport.list_files("in")[0]
        ftp_account.faults.answer("RETR", "550 Permission denied.", times=5)
        with pytest.raises(TransportError) as caught:
            transport.download(remote, tmp_path / "a.csv")
        assert transport.connection_attempts == 1
    assert "in/a.csv" in str(caught.value) and "Permission denied" in str(caught.value)
    assert not isinstance(caught.value, TransientError) and leftovers(tmp_path) == []


def test_a_file_that_changed_since_the_listing_is_not_downloaded(ftp_account: FtpAccount, tmp_path: Path) -> None:
    path = put(ftp_account, "in/a.csv", b"12345")
    transport = transport_for(ftp_account)
    with transport:
        remote = transport.list_files("in")[0]
        path.write_bytes(b"1234567890")
        with pytest.raises(FileVanishedError, match="changed since it was listed"):
            transport.download(remote, tmp_path / "a.csv")
        path.unlink()
        with pytest.raises(FileVanishedError, match="gone"):
            transport.download(remote, tmp_path / "a.csv")
    assert leftovers(tmp_path) == [] and not (tmp_path / "a.csv").exists()


def test_an_upload_is_never_visible_under_its_final_name_before_it_is_complete(ftp_account: FtpAccount, tmp_path: Path) -> None:
    local = tmp_path / "export.csv"
    local.write_bytes(payload(3_000_000))
    transport = transport_for(ftp_account)
    with transport:
        transport.upload(local, "reports/export.csv")
    observations = [o for o in ftp_account.faults.upload_observations if o[0] == "export.csv"]
    assert len(observations) > 5  # the server received the file in many writes ...
    assert not any(existed for _, existed, _ in observations)  # ... none while the final name existed
    assert (ftp_account.root / "reports/export.csv").read_bytes() == local.read_bytes()

    # Replacing yesterday's file: during the upload the final name holds the old, complete file.
    ftp_account.faults.upload_observations.clear()
    old_size = (ftp_account.root / "reports/export.csv").stat().st_size
    local.write_bytes(payload(2_500_000)[::-1])
    transport = transport_for(ftp_account)
    with transport:
        transport.upload(local, "reports/export.csv")
    observations = [o for o in ftp_account.faults.upload_observations if o[0] == "export.csv"]
    assert observations and all(existed and size == old_size for _, existed, size in observations)
    assert (ftp_account.root / "reports/export.csv").read_bytes() == local.read_bytes()
    assert server_files(ftp_account) == ["reports/export.csv"]


def test_an_upload_cut_off_mid_transfer_is_retried_and_leaves_no_part_file(ftp_account: FtpAccount, tmp_path: Path) -> None:
    local = tmp_path / "export.csv"
    local.write_bytes(payload(2_000_000))
    ftp_account.faults.drop_uploads(after_bytes=500_000, times=1)
    transport = transport_for(ftp_account)
    with transport:
        assert transport.upload(local, "reports/export.csv") == 2_000_000
        assert transport.connection_attempts == 2
    assert (ftp_account.root / "reports/export.csv").read_bytes() == local.read_bytes()
    assert server_files(ftp_account) == ["reports/export.csv"]


# ---------------------------------------------------------------- configuration


def test_location_defaults_are_the_safe_ones() -> None:
    location = FtpLocation.model_validate({"type": "ftp", "host": "ftp.example.com", "username": "u", "password_env": "P"})
    assert (location.tls, location.verify_certificate, location.passive, location.effective_port) == ("explicit", True, True, 21)
    implicit = location.model_copy(update={"tls": "implicit"})
    assert implicit.effective_port == 990
    with pytest.raises(ValueError, match="environment variable name"):
        FtpLocation.model_validate({"type": "ftp", "host": "h", "username": "u", "password_env": "s3cr3t pass"})


def test_plain_ftp_in_a_connection_file_warns_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    connection: dict[str, Any] = {
        "name": "legacy_ftp",
        "source": {"type": "ftp", "host": "ftp.example.com", "username": "u", "password_env": "LEGACY_FTP_PASSWORD", "tls": "none"},
        "goals": [{"name": "all", "type": "export_profiles", "segment": "everyone", "columns": [{"header": "id", "profile_id": True}]}],
    }
    (config / "connections" / "legacy.yaml").write_text(yaml.safe_dump(connection))
    (config / "store.yaml").write_text(yaml.safe_dump({"catalog": {"segments": {"everyone": {}}}}))
    with caplog.at_level(logging.WARNING):
        project = load_project(config, tmp_path / "home")
    assert isinstance(project.connections["legacy_ftp"].source, FtpLocation)
    assert any("plain FTP (tls: none)" in r.getMessage() and "ftp.example.com" in r.getMessage() for r in caplog.records)

    connection["source"] = {**connection["source"], "tls": "explicit", "password": "literal"}
    (config / "connections" / "legacy.yaml").write_text(yaml.safe_dump(connection))
    with pytest.raises(ConfigError, match="secrets are not written in YAML"):
        load_project(config, tmp_path / "home")


def test_connection_model_accepts_ftp_as_export_target() -> None:
    raw: dict[str, Any] = {
        "name": "c",
        "source": {"type": "local", "path": "in"},
        "goals": [{
            "name": "out", "type": "export_profiles", "segment": "s", "columns": [{"header": "id", "profile_id": True}],
            "target": {"location": {"type": "ftp", "host": "h", "username": "u", "password_env": "P", "ca_file": "/etc/ca.pem"}},
        }],
    }
    connection = Connection.model_validate(raw)
    assert isinstance(connection.export_goals[0].target.location, FtpLocation)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("-rw-r--r--   1 owner group      1234 Mar  2 09:30 push 1.csv", ListedEntry("push 1.csv", "file", 1234, None)),
        ("drwxr-xr-x   2 owner group      4096 Jan 01  2026 done", ListedEntry("done", "dir", 4096, None)),
        ("lrwxrwxrwx   1 owner group        10 Mar  2 09:30 l.csv -> a.csv", ListedEntry("l.csv", "other", 10, None)),
        ("03-02-26  09:30AM                 1234 push.csv", ListedEntry("push.csv", "file", 1234, None)),
        ("03-02-26  09:30AM       <DIR>          done", ListedEntry("done", "dir", None, None)),
        ("total 12", None),
    ],
)
def test_list_line_formats(line: str, expected: ListedEntry | None) -> None:
    assert parse_list_line(line) == expected


def test_a_list_line_in_an_unknown_format_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(UnreadableListing):
        parse_list_line("+i8388621.29609,m824255902,/,\tdev")


def test_mlsd_facts_and_utc_times() -> None:
    facts_text, _, name = "type=file;size=12;modify=20260302093000.5;perm=r; a b.csv".partition(" ")
    assert mlsx_entry(name, parse_mlsx_facts(facts_text)) == ListedEntry("a b.csv", "file", 12, 1_772_443_800.5)
    assert mlsx_entry("l", parse_mlsx_facts("type=OS.unix=slink:/x;size=1;")).kind == "other"
    assert mlsx_entry("d", parse_mlsx_facts("Type=dir;Modify=20260101000000;")).kind == "dir"
