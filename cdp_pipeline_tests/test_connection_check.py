"""``check_connection`` against the real servers the tests start: sshd, the moto S3 server and gpg.

Each check has a passing and a failing case; after every check no probe file is left on the
server (looked up on the server's own disk or through a separate S3 client, not through the
transport the check used).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, ProjectConfig, load_project
from cdp_pipeline.connection_check import PROBE_PREFIX, CheckResult, all_passed, check_connection, result_lines
from cdp_pipeline_tests.fixtures.sshd import fingerprint_of_public_line

DELIVERY = b"customer_id,email\nC1,a@example.com\n"


# ---------------------------------------------------------------- helpers


def _import_goal(directory: str, after_import: dict | None = None) -> dict:
    files: dict = {"directory": directory, "root": {"name": "customers", "pattern": "customers_*.csv"}}
    if after_import:
        files["after_import"] = after_import
    return {
        "name": "customers",
        "type": "import_profiles",
        "files": files,
        "identifiers": [{"column": "customer_id", "property": "customer_number"}],
        "allow_new_profiles": True,
        "mappings": [{"column": "email", "property": "email"}],
    }


def _export_goal(directory: str, *, encrypt: bool = False, location: dict | None = None) -> dict:
    target: dict = {"directory": directory, "file_name": "vip_{date}.csv", "encrypt": encrypt}
    if location:
        target["location"] = location
    return {
        "name": "vip",
        "type": "export_profiles",
        "segment": "high_value",
        "target": target,
        "columns": [{"header": "id", "property": "customer_number"}],
    }


def _write_config(tmp_path: Path, connection: dict) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    (config / "connections" / f"{connection['name']}.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    return config


def _project(tmp_path: Path, connection: dict) -> ProjectConfig:
    return load_project(_write_config(tmp_path, connection), tmp_path / "home")


def _run(tmp_path: Path, connection: dict) -> dict[str, CheckResult]:
    project = _project(tmp_path, connection)
    results = check_connection(project, project.connections[connection["name"]])
    by_name = {r.name: r for r in results}
    assert len(by_name) == len(results), [r.name for r in results]
    return by_name


def _failed(results: dict[str, CheckResult]) -> set[str]:
    return {name for name, r in results.items() if not r.passed}


def _probes_on_disk(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(PROBE_PREFIX)]


@pytest.fixture
def sftp_connection(sshd_server, monkeypatch, pgp_env):
    """A password SFTP connection: customers_*.csv in ``drop``, moved to done/ or quarantine/, an
    encrypted export into ``out``; the partner's PGP keys in the environment."""
    sftp = sshd_server.settings("password")
    for name, value in sftp.environment.items():
        monkeypatch.setenv(name, value)
    directory = sshd_server.fresh_directory("password", "drop")
    sshd_server.drop_file("password", f"{directory}/customers_20260101.csv", DELIVERY)
    sshd_server.drop_file("password", f"{directory}/readme.txt", b"not a delivery")
    sshd_server.make_directory("password", f"{directory}/out")
    connection = {
        "name": "partner_sftp",
        "source": sftp.location.model_dump(mode="json", exclude_none=True),
        "pgp": pgp_env,
        "goals": [
            _import_goal(directory, {"action": "move_to_done", "quarantine_directory": "quarantine"}),
            _export_goal(f"{directory}/out", encrypt=True),
        ],
    }
    return connection, directory, sftp


# ---------------------------------------------------------------- SFTP


def test_sftp_connection_passes_every_check_and_leaves_no_probe(tmp_path, sshd_server, sftp_connection):
    connection, directory, sftp = sftp_connection
    server_folder = sshd_server.server_path("password", directory)
    before = sorted(p.relative_to(server_folder) for p in server_folder.rglob("*") if p.is_file())

    results = _run(tmp_path, connection)

    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    assert set(results) == {
        "env CDP_TEST_SFTP_PASSWORD", "env CDP_TEST_PGP_PRIVATE_KEY", "env CDP_TEST_PGP_PRIVATE_KEY_NEXT",
        "env CDP_TEST_PGP_PASSPHRASE", "env CDP_TEST_PGP_PUBLIC_KEY", "env CDP_TEST_PGP_SIGNER_KEY",
        "connect source", "list customers", "read customers", f"write {directory} -> {directory}/done",
        f"write {directory} -> {directory}/quarantine", f"write {directory}/out",
        "pgp private key 1 (CDP_TEST_PGP_PRIVATE_KEY)", "pgp private key 2 (CDP_TEST_PGP_PRIVATE_KEY_NEXT)",
        "pgp public key (CDP_TEST_PGP_PUBLIC_KEY)", "pgp signer key (CDP_TEST_PGP_SIGNER_KEY)",
    }
    assert "2 files, 1 match" in results["list customers"].detail
    assert f"customers_20260101.csv ({len(DELIVERY)} bytes" in results["read customers"].detail
    assert "rename into" in results[f"write {directory} -> {directory}/done"].detail
    assert "move_to_done" in results[f"write {directory} -> {directory}/done"].detail
    assert "quarantine_directory" in results[f"write {directory} -> {directory}/quarantine"].detail
    # Nothing left behind; the partner's files are where they were (done/ and quarantine/ may now exist, empty).
    assert _probes_on_disk(server_folder) == []
    after = sorted(p.relative_to(server_folder) for p in server_folder.rglob("*") if p.is_file())
    assert after == before
    # The secret never reaches a result.
    assert not any(sftp.secrets.password in line for line in result_lines(list(results.values())))


def test_unset_variable_fails_its_check_and_the_login_but_not_the_pgp_checks(tmp_path, monkeypatch, sftp_connection):
    connection, directory, _ = sftp_connection
    monkeypatch.delenv("CDP_TEST_SFTP_PASSWORD")

    results = _run(tmp_path, connection)

    assert results["env CDP_TEST_SFTP_PASSWORD"].detail.startswith("not set")
    assert "CDP_TEST_SFTP_PASSWORD" in results["connect source"].detail
    assert results["list customers"].detail.startswith("not checked")
    assert _failed(results) == {
        "env CDP_TEST_SFTP_PASSWORD", "connect source", "list customers", "read customers",
        f"write {directory} -> {directory}/done", f"write {directory} -> {directory}/quarantine", f"write {directory}/out",
    }


def test_wrong_password_fails_the_login(tmp_path, monkeypatch, sftp_connection):
    connection, _, _ = sftp_connection
    monkeypatch.setenv("CDP_TEST_SFTP_PASSWORD", "not-the-password")

    results = _run(tmp_path, connection)

    assert results["env CDP_TEST_SFTP_PASSWORD"].passed
    connect = results["connect source"]
    assert not connect.passed and "authentication failed" in connect.detail
    assert "not-the-password" not in connect.detail
    assert results["pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"].passed


def test_wrong_host_key_pin_is_refused(tmp_path, sshd_server, sftp_connection):
    connection, directory, _ = sftp_connection
    connection["source"]["host_key_fingerprint"] = fingerprint_of_public_line(sshd_server.keys["stranger"].public_line)

    results = _run(tmp_path, connection)

    connect = results["connect source"]
    assert not connect.passed
    assert "does not match the pinned key" in connect.detail and sshd_server.host_key_fingerprint in connect.detail
    assert "host_key_fingerprint" in connect.fix
    assert _probes_on_disk(sshd_server.server_path("password", directory)) == []


def test_missing_folder_fails_list_and_read(tmp_path, sftp_connection):
    connection, directory, _ = sftp_connection
    connection["goals"][0]["files"]["directory"] = f"{directory}/no_such_folder"

    results = _run(tmp_path, connection)

    assert results["connect source"].passed
    assert not results["list customers"].passed and "no such file" in results["list customers"].detail
    assert not results["read customers"].passed
    assert results[f"write {directory}/out"].passed


def test_read_only_folder_fails_the_write_probe_and_leaves_nothing(tmp_path, sshd_server, sftp_connection):
    connection, directory, _ = sftp_connection
    server_folder = sshd_server.server_path("password", directory)
    connection["goals"][0]["files"]["after_import"] = {"action": "delete"}
    server_folder.chmod(0o555)  # the session runs as the test user, who owns the folder
    try:
        results = _run(tmp_path, connection)
    finally:
        server_folder.chmod(0o755)

    write = results[f"write {directory}"]
    assert not write.passed
    assert "permission denied" in write.detail and "nothing was left behind" in write.detail
    assert "after_import delete" in write.detail
    assert results["list customers"].passed and results["read customers"].passed
    assert _probes_on_disk(server_folder) == []


def test_unreadable_file_fails_the_read_check(tmp_path, sshd_server, sftp_connection):
    connection, directory, _ = sftp_connection
    sshd_server.server_path("password", f"{directory}/customers_20260101.csv").chmod(0o000)

    results = _run(tmp_path, connection)

    read = results["read customers"]
    assert not read.passed and "permission denied" in read.detail
    assert results["list customers"].passed


def test_empty_folder_reads_nothing_and_says_so(tmp_path, sshd_server, sftp_connection):
    connection, directory, _ = sftp_connection
    sshd_server.server_path("password", f"{directory}/customers_20260101.csv").unlink()

    results = _run(tmp_path, connection)

    assert results["read customers"].passed
    assert "no matching file present" in results["read customers"].detail
    assert "1 file, 0 match" in results["list customers"].detail


# ---------------------------------------------------------------- local


def test_local_folder_exists_or_the_connect_check_fails(tmp_path):
    (tmp_path / "home" / "drop" / "in").mkdir(parents=True)
    connection = {
        "name": "local_drop",
        "source": {"type": "local", "path": "drop"},
        "goals": [_import_goal("in", {"action": "done_suffix"}), _export_goal("out")],
    }
    results = _run(tmp_path, connection)
    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    assert "write in" in results and "write out" in results
    assert _probes_on_disk(tmp_path / "home") == []

    connection["source"]["path"] = "no_such_drop"
    results = _run(tmp_path / "second", connection)
    assert not results["connect source"].passed and "does not exist" in results["connect source"].detail
    assert _failed(results) == {"connect source", "list customers", "read customers", "write in", "write out"}


# ---------------------------------------------------------------- S3


def _s3_connection(s3_bucket, **location) -> dict:
    return {
        "name": "warehouse_s3",
        "source": {**s3_bucket.location.model_dump(mode="json", exclude_none=True), **location},
        "goals": [_import_goal("in", {"action": "done_suffix"}), _export_goal("out")],
    }


def test_s3_connection_passes_every_check_and_leaves_no_probe(tmp_path, s3_bucket):
    s3_bucket.put("in/customers_20260101.csv", DELIVERY)
    s3_bucket.put("in/other.txt", b"x")

    results = _run(tmp_path, _s3_connection(s3_bucket))

    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    assert "2 files, 1 match" in results["list customers"].detail
    assert "write + rename + delete" in results["write in"].detail
    assert sorted(s3_bucket.keys()) == ["in/customers_20260101.csv", "in/other.txt"]


def test_export_target_of_its_own_is_connected_and_probed(tmp_path, s3_bucket):
    (tmp_path / "home" / "drop").mkdir(parents=True)
    location = s3_bucket.location.model_dump(mode="json", exclude_none=True)
    connection = {
        "name": "local_to_s3",
        "source": {"type": "local", "path": "drop"},
        "goals": [_import_goal("."), _export_goal("exports", location=location)],
    }
    results = _run(tmp_path, connection)
    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    assert results["env CDP_TEST_S3_ACCESS_KEY_ID"].detail == "set (goal vip target: S3 access key id)"
    assert results["connect goal vip target"].detail.startswith(f"s3://{s3_bucket.name}: credentials")
    assert "write + rename + delete" in results["write exports (goal vip target)"].detail
    assert s3_bucket.keys() == []


def test_a_variable_named_twice_is_one_check(tmp_path, s3_bucket):
    location = s3_bucket.location.model_dump(mode="json", exclude_none=True)
    connection = _s3_connection(s3_bucket)
    connection["goals"][1]["target"]["location"] = location
    results = _run(tmp_path, connection)
    assert results["env CDP_TEST_S3_SECRET_ACCESS_KEY"].detail == (
        "set (source: S3 secret access key; goal vip target: S3 secret access key)"
    )


def test_s3_missing_bucket_fails_the_connect_check(tmp_path, s3_bucket):
    results = _run(tmp_path, _s3_connection(s3_bucket, bucket="cdp-test-no-such-bucket"))

    connect = results["connect source"]
    assert not connect.passed and "does not exist" in connect.detail
    assert not results["write in"].passed and not results["list customers"].passed


def test_s3_without_delete_permission_writes_no_probe_it_could_not_remove(tmp_path, monkeypatch, s3_bucket, s3_iam):
    key_id, secret = s3_iam.user(["s3:ListBucket", "s3:GetObject", "s3:PutObject"], s3_bucket.name)
    monkeypatch.setenv("CDP_TEST_S3_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("CDP_TEST_S3_SECRET_ACCESS_KEY", secret)
    project = _project(tmp_path, _s3_connection(s3_bucket))
    s3_iam.enforce()
    try:
        results = {r.name: r for r in check_connection(project, project.connections["warehouse_s3"])}
    finally:
        s3_bucket.server.set_auth(False)

    for name in ("write in", "write out"):
        assert not results[name].passed
        detail = results[name].detail
        assert "s3:DeleteObject" in detail and "no probe was written" in detail and "nothing was left behind" in detail
    assert s3_bucket.keys() == []


# ---------------------------------------------------------------- PGP


def _pgp_only(tmp_path: Path, pgp: dict, *, encrypt: bool) -> dict[str, CheckResult]:
    (tmp_path / "home" / "drop").mkdir(parents=True, exist_ok=True)
    connection = {
        "name": "pgp_partner",
        "source": {"type": "local", "path": "drop"},
        "pgp": pgp,
        "goals": [_import_goal("."), _export_goal("out", encrypt=encrypt)],
    }
    return _run(tmp_path, connection)


def test_pgp_keys_report_fingerprints_and_expiry(tmp_path, pgp_keys, pgp_env):
    results = _pgp_only(tmp_path, pgp_env, encrypt=True)

    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    first = results["pgp private key 1 (CDP_TEST_PGP_PRIVATE_KEY)"].detail
    assert pgp_keys.recipient.fingerprint in first and f"expires {pgp_keys.recipient.expires_at:%Y-%m-%d}" in first
    public = results["pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"].detail
    assert pgp_keys.partner.fingerprint in public and "matches pgp.public_key_fingerprint" in public
    assert "exports of vip are encrypted to it" in public


def test_expired_public_key_fails_when_an_export_encrypts_to_it(tmp_path, monkeypatch, pgp_keys, pgp_env):
    monkeypatch.setenv("CDP_TEST_PGP_PUBLIC_KEY", pgp_keys.expired.public_key)
    pgp = {**pgp_env, "public_key_fingerprint": pgp_keys.expired.fingerprint}

    results = _pgp_only(tmp_path, pgp, encrypt=True)
    public = results["pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"]
    assert not public.passed and "EXPIRED on 2020-01-02" in public.detail
    assert "pgp.public_key_fingerprint" in public.fix

    results = _pgp_only(tmp_path / "plain", pgp, encrypt=False)
    public = results["pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"]
    assert public.passed and "EXPIRED" in public.detail and "no goal uses it now" in public.detail


def test_public_key_with_another_fingerprint_than_the_pin_fails(tmp_path, monkeypatch, pgp_keys, pgp_env):
    monkeypatch.setenv("CDP_TEST_PGP_PUBLIC_KEY", pgp_keys.stranger.public_key)

    results = _pgp_only(tmp_path, pgp_env, encrypt=True)

    public = results["pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"]
    assert not public.passed
    assert pgp_keys.stranger.fingerprint in public.detail and pgp_keys.partner.fingerprint in public.detail
    assert _failed(results) == {"pgp public key (CDP_TEST_PGP_PUBLIC_KEY)"}


def test_expired_private_key_fails_unless_another_key_is_valid(tmp_path, monkeypatch, pgp_keys, pgp_env):
    monkeypatch.setenv("CDP_TEST_PGP_PRIVATE_KEY", pgp_keys.expired.private_key)
    only_expired = {**pgp_env, "private_keys_env": ["CDP_TEST_PGP_PRIVATE_KEY"]}

    results = _pgp_only(tmp_path, only_expired, encrypt=False)
    assert _failed(results) == {"pgp private key 1 (CDP_TEST_PGP_PRIVATE_KEY)"}
    assert "EXPIRED" in results["pgp private key 1 (CDP_TEST_PGP_PRIVATE_KEY)"].detail

    # During a rotation: the expired key still decrypts late files, the next key is valid.
    results = _pgp_only(tmp_path / "rotation", pgp_env, encrypt=False)
    assert _failed(results) == set()
    assert "only decrypts late files" in results["pgp private key 1 (CDP_TEST_PGP_PRIVATE_KEY)"].detail


def test_unset_private_key_variable_fails_its_key_check(tmp_path, monkeypatch, pgp_env):
    monkeypatch.delenv("CDP_TEST_PGP_PRIVATE_KEY_NEXT")

    results = _pgp_only(tmp_path, pgp_env, encrypt=False)

    assert _failed(results) == {"env CDP_TEST_PGP_PRIVATE_KEY_NEXT", "pgp private key 2 (CDP_TEST_PGP_PRIVATE_KEY_NEXT)"}


# ---------------------------------------------------------------- CLI


def _cli(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "CDP_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "check", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_prints_one_line_per_check_and_exits_with_the_outcome(tmp_path):
    inbox = tmp_path / "home" / "drop" / "in"
    inbox.mkdir(parents=True)
    connection = {"name": "local_drop", "source": {"type": "local", "path": "drop"}, "goals": [_import_goal("in"), _export_goal("out")]}
    config = _write_config(tmp_path, connection)

    passed = _cli(tmp_path, config, "local_drop")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    lines = passed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "connect"], ["ok", "list"], ["ok", "read"], ["ok", "write"]]

    inbox.rmdir()
    failed = _cli(tmp_path, config, "local_drop")
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[1].startswith("FAIL  list customers: ")
    assert "-> create the folder or fix files.directory" in failed.stdout

    typo = _cli(tmp_path, config, "local_drp")
    assert typo.returncode == 2
    assert typo.stderr.strip() == "cdp-pipeline check: no connection named 'local_drp'; did you mean local_drop?"
    assert typo.stdout == ""


# ---------------------------------------------------------------- Dagster job


def test_check_job_shows_the_table_and_fails_on_a_failed_check(tmp_path, monkeypatch):
    import dagster as dg

    from cdp_pipeline.defs.project import project_config

    inbox = tmp_path / "home" / "drop" / "in"
    inbox.mkdir(parents=True)
    connection = {"name": "local_drop", "source": {"type": "local", "path": "drop"}, "goals": [_import_goal("in"), _export_goal("out")]}
    monkeypatch.setenv("CDP_CONFIG_DIR", str(_write_config(tmp_path, connection)))
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    project_config.cache_clear()
    try:
        from cdp_pipeline.definitions import defs

        job = defs().resolve_job_def("local_drop_check")
        assert [node.name for node in job.nodes] == ["local_drop_check_connection"]
        with dg.DagsterInstance.ephemeral() as instance:
            passed = job.execute_in_process(instance=instance, raise_on_error=False)
            assert passed.success
            (output,) = [e for e in passed.all_events if e.event_type_value == "STEP_OUTPUT"]
            metadata = output.event_specific_data.metadata
            assert metadata["checks_failed"].value == 0 and metadata["checks_passed"].value == 4
            assert "| ok | list customers |" in metadata["checks"].value

            inbox.rmdir()
            failed = job.execute_in_process(instance=instance, raise_on_error=False)
            assert not failed.success
            (failure,) = failed.get_step_failure_events()
            user_failure = failure.step_failure_data.user_failure_data
            assert "2 of 4 checks of connection local_drop failed: list customers" in user_failure.description
            assert "| **FAIL** | list customers |" in user_failure.metadata["checks"].value
            assert user_failure.metadata["checks_failed"].value == 2
    finally:
        project_config.cache_clear()


def test_results_are_all_passed_only_when_there_are_results():
    assert not all_passed([])
    assert all_passed([CheckResult("x", True, "fine")])
    assert not all_passed([CheckResult("x", True, "fine"), CheckResult("y", False, "broken", "fix it")])


# ---------------------------------------------------------------- FTPS


def _ftp_connection(ftp_account, **location) -> dict:
    return {
        "name": "netmera_ftps",
        "source": {**ftp_account.location().model_dump(mode="json", exclude_none=True), **location},
        "goals": [_import_goal("in", {"action": "delete"}), _export_goal("out")],
    }


def test_ftps_connection_passes_every_check_and_leaves_no_probe(tmp_path, ftp_account):
    (ftp_account.root / "in").mkdir()
    (ftp_account.root / "out").mkdir()
    (ftp_account.root / "in" / "customers_20260101.csv").write_bytes(DELIVERY)

    results = _run(tmp_path, _ftp_connection(ftp_account))

    assert _failed(results) == set(), "\n".join(result_lines(list(results.values())))
    assert "certificate verified" in results["connect source"].detail
    assert "1 file, 1 match" in results["list customers"].detail
    assert "write + rename + delete" in results["write out"].detail
    assert _probes_on_disk(ftp_account.root) == []
    assert (ftp_account.root / "in" / "customers_20260101.csv").read_bytes() == DELIVERY


def test_ftps_untrusted_certificate_and_wrong_password_fail_the_connect_check(tmp_path, monkeypatch, ftp_account):
    (ftp_account.root / "in").mkdir()
    untrusted = _run(tmp_path / "a", _ftp_connection(ftp_account, ca_file=None))
    assert "connect source" in _failed(untrusted)
    assert "certificate" in untrusted["connect source"].fix
    assert untrusted["list customers"].detail.startswith("not checked")

    monkeypatch.setenv("CDP_TEST_FTP_PASSWORD", "not-the-password")
    wrong = _run(tmp_path / "b", _ftp_connection(ftp_account))
    assert "connect source" in _failed(wrong) and "not-the-password" not in "\n".join(result_lines(list(wrong.values())))
