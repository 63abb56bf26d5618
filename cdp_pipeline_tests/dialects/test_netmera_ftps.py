"""A Netmera connection over FTPS, end to end: the example connection (its source pointed at the
test FTPS server, everything else as shipped) runs through the same engine and asset graph as
every connection (``run_now``). Push and ``Profile/`` files go in over FTPS, disappear
once processed, and the nightly report goes out over FTPS. Expectations are computed from the
seed's rows with plain Python and read back with plain DuckDB SQL and the server's own disk."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.dialects.test_netmera import SEED_PROFILE, SEED_PUSH
from cdp_pipeline_tests.fixtures.ftpd import HOST, PASSWORD_ENV, FtpAccount

EXAMPLES = Path(__file__).resolve().parents[2] / "cdp_pipeline" / "demo" / "examples"


@pytest.fixture
def netmera_over_ftps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ftp_account: FtpAccount) -> Iterator[tuple[Path, str]]:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(EXAMPLES / "store_sare_netmera.yaml", config / "store.yaml")
    connection = yaml.safe_load((EXAMPLES / "netmera_connection.yaml").read_text())
    assert connection["source"]["type"] == "ftp" and connection["source"]["tls"] == "explicit"
    connection["source"].update(
        host=HOST,
        port=ftp_account.server.explicit_port,
        username=ftp_account.username,
        password_env=PASSWORD_ENV,
        ca_file=str(ftp_account.server.ca_file),
        timeout_seconds=10,
    )
    (config / "connections" / "netmera.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    project_config.cache_clear()
    yield home, connection["name"]
    project_config.cache_clear()


def test_netmera_push_profile_and_report_over_ftps(netmera_over_ftps: tuple[Path, str], ftp_account: FtpAccount) -> None:
    home, name = netmera_over_ftps
    remote = ftp_account.root
    (remote / "push").mkdir()
    (remote / "Profile").mkdir()
    (remote / "Profile" / "attributes_20260302.txt").write_text(SEED_PROFILE, encoding="utf-8")
    (remote / "push" / "push_20260302.csv").write_text(SEED_PUSH, encoding="utf-8")

    summary = run_now(name, echo=lambda *_: None)

    assert summary["success"], summary
    # Attribute files before push files (import goals in their declared order), so the pushes find
    # the profiles the attribute file created.
    assert [item["delivery"] for item in summary["imports"]] == [
        "netmera_profiles:attributes_20260302.txt",
        "netmera_push:push_20260302.csv",
    ]
    # The independent expectation, from the seed's text: the profile file names two external ids
    # (the second with an e-mail address); push rows for those ids become events, the other rows
    # are counted as unknown ids.
    profile_rows = [line.split("~") for line in SEED_PROFILE.splitlines()[1:]]
    expected_profiles = {(row[0], row[1] or None) for row in profile_rows}
    known = {external_id for external_id, _ in expected_profiles}
    push_ids = [line.split(";")[0] for line in SEED_PUSH.splitlines()]
    expected_pushes = [external_id for external_id in push_ids if external_id in known]
    assert len(expected_pushes) == 2
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert set(conn.execute("SELECT external_id, email FROM profiles").fetchall()) == expected_profiles
        pushed = conn.execute(
            "SELECT p.external_id FROM timeline_push_request t JOIN profiles p USING (profile_id) ORDER BY t.source_line"
        ).fetchall()
        assert [row[0] for row in pushed] == expected_pushes
        assert conn.execute("SELECT goal, status, events_created, profiles_ignored FROM deliveries ORDER BY goal").fetchall() == [
            ("netmera_profiles", "merged", 0, 0),
            ("netmera_push", "merged", 2, len(push_ids) - 2),
        ]
    # "When the file is processed successfully, it will disappear from the folder."
    assert list((remote / "Profile").iterdir()) == []
    assert list((remote / "push").iterdir()) == []

    # The nightly report went out over FTPS under Netmera's name, complete (no .part left).
    today = datetime.now(UTC).strftime("%Y%m%d")
    segment_export = next(e for e in summary["exports"] if e["asset"].endswith("push_reports_segment_export"))
    assert segment_export["dagster/uri"].startswith(f"ftps://{ftp_account.username}@{HOST}:")
    report = remote / "reports" / f"APPKEY_PUSH_REPORTS_{today}.csv"
    emails = dict(expected_profiles)
    expected_report = ["ExternalID;email", *sorted(f"{i};{emails[i] or ''}" for i in expected_pushes)]
    lines = report.read_text(encoding="utf-8").splitlines()
    assert [lines[0], *sorted(lines[1:])] == expected_report
    timeline = (remote / "reports" / f"APPKEY_PUSH_REPORTS_{today}_timeline" / "push_request.csv").read_text(encoding="utf-8")
    assert len(timeline.splitlines()) == 1 + len(expected_pushes)
    assert "https://example.com/welcome" in timeline and "https://example.com/offers" in timeline
    assert not list(remote.rglob("*.part"))

    # The campaign and transactional reports (netmera_reports), expected from the seed's push rows
    # of the known ids: the push file is one campaign; plain Python over the rows.
    pushes = [line.split(";") for line in SEED_PUSH.splitlines() if line.split(";")[0] in known]
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        [(requested_at,)] = conn.execute("SELECT DISTINCT strftime(event_time, '%Y-%m-%d %H:%M:%S') FROM timeline_push_request").fetchall()
    campaign = (remote / "reports" / f"APPKEY_CAMPAIGN_REPORTS_{today}.csv").read_text(encoding="utf-8").splitlines()
    assert campaign == [
        "Campaign;First Request;Last Request;Push Requests;Recipients;Distinct Texts;Deeplinks",
        f"push_20260302.csv;{requested_at};{requested_at};{len(pushes)};{len({p[0] for p in pushes})};{len({p[1] for p in pushes})};"
        + "|".join(sorted(p[2] for p in pushes)),
    ]
    # "appkey_msgID_PUSH_REPORTS_date (with external ID)": one file per campaign, msgID = the push file's name.
    with_ids = (remote / "reports" / f"APPKEY_push_20260302_PUSH_REPORTS_{today}.csv").read_text(encoding="utf-8").splitlines()
    lines = {p[0]: SEED_PUSH.splitlines().index(";".join(p)) + 1 for p in pushes}
    assert with_ids == ["ExternalID;Text;Deeplink;Requested At;Line", *(f"{i};{t};{d};{requested_at};{lines[i]}" for i, t, d in pushes)]
    transactional = (remote / "reports" / f"APPKEY_TRANSACTIONAL_REPORTS_{today}.csv").read_text(encoding="utf-8").splitlines()
    assert transactional == [
        "ExternalID;Text;Deeplink;Requested At;Campaign;Line",
        *(f"{i};{t};{d};{requested_at};push_20260302.csv;{lines[i]}" for i, t, d in pushes),
    ]
    assert sorted(path.name for path in (remote / "reports").iterdir() if path.is_file()) == sorted(
        [f"APPKEY_PUSH_REPORTS_{today}.csv", f"APPKEY_CAMPAIGN_REPORTS_{today}.csv", f"APPKEY_push_20260302_PUSH_REPORTS_{today}.csv",
         f"APPKEY_TRANSACTIONAL_REPORTS_{today}.csv"]
    )
