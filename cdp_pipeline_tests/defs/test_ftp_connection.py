"""FTP/FTPS through the Dagster wiring: the delivery sensor lists an FTPS folder, a wrong password
fails the tick visibly and a server that is down skips it; a plain-FTP location says so in the
run's own log."""

from __future__ import annotations

import dagster as dg
import pytest

from cdp_pipeline.defs.project import project_config
from cdp_pipeline.defs.resources import transport_resource
from cdp_pipeline.demo.generate import generate_delivery
from cdp_pipeline_tests.defs.test_sensor_transports import EXPECTED, _aged, _configure, _definitions, _tick
from cdp_pipeline_tests.fixtures.ftpd import PASSWORD_ENV, FtpAccount


@pytest.fixture(autouse=True)
def _fresh_config_cache():
    yield
    project_config.cache_clear()


def test_sensor_over_ftps(tmp_path, monkeypatch, ftp_account: FtpAccount):
    inbox = ftp_account.root / "inbox"
    inbox.mkdir()
    for path in generate_delivery(tmp_path / "plain", profiles=20, date="20260115").values():
        (inbox / path.name).write_bytes(path.read_bytes())
    (inbox / "profiles_20260116.csv.filepart").write_bytes(b"customer_id\n")  # still being uploaded
    _configure(tmp_path, monkeypatch, ftp_account.location().model_dump(mode="json", exclude_none=True), "inbox")
    definitions = _definitions()
    with dg.instance_for_test() as instance:
        first = _tick(definitions, None, instance, EXPECTED)
        assert not first.run_requests  # seen once: not yet known to be complete
        second = _tick(definitions, _aged(first.cursor, 60), instance, EXPECTED)
        assert sorted(r.partition_key for r in second.run_requests) == sorted(EXPECTED)


def test_sensor_fails_visibly_on_a_wrong_password_and_skips_when_the_server_is_down(tmp_path, monkeypatch, ftp_account: FtpAccount):
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    _configure(tmp_path, monkeypatch, ftp_account.location().model_dump(mode="json", exclude_none=True), ".")
    with dg.instance_for_test() as instance, pytest.raises(Exception, match="authentication failed"):
        _tick(_definitions(), None, instance)
    project_config.cache_clear()
    down = {**ftp_account.location().model_dump(mode="json", exclude_none=True), "port": 1, "retries": 0, "timeout_seconds": 2}
    _configure(tmp_path / "down", monkeypatch, down, ".")
    with dg.instance_for_test() as instance:
        result = _tick(_definitions(), None, instance)
        skip = result.skip_reason if isinstance(result, dg.SensorResult) else result
        assert "retried next tick" in str(getattr(skip, "skip_message", skip))


def test_plain_ftp_is_warned_in_the_runs_log(tmp_path, ftp_account: FtpAccount):
    (ftp_account.root / "a.csv").write_bytes(b"id\n1\n")
    location = ftp_account.location(port=ftp_account.server.plain_port, tls="none")

    @dg.asset(required_resource_keys={"partner_transport"})
    def listing(context) -> None:
        with context.resources.partner_transport.open() as transport:
            assert [f.name for f in transport.list_files(".")] == ["a.csv"]

    with dg.instance_for_test() as instance:
        result = dg.materialize([listing], resources={"partner_transport": transport_resource(location, tmp_path)}, instance=instance)
        assert result.success
        warnings = [
            entry.user_message
            for entry in instance.all_logs(result.run_id)
            if entry.level == 30 and "plain FTP (tls: none)" in entry.user_message
        ]
        assert ftp_account.password not in "".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]
