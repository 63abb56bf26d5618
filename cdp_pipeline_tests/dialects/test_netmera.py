"""Netmera's FTP conventions: the seed's own push entries and profile attribute example (003_*.txt,
copied below), malformed variants (NUL byte, BOM, a `;` too many, a pattern line with an unknown
attribute), the goals run through build_import_tables → merge_delivery into a real DuckDB file,
the push events exported like any timeline event, and the nightly report names and schedule."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
import yaml
from pydantic import TypeAdapter

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import ProjectConfig, StoreFile, StoreSettings, _check_references
from cdp_pipeline.deliveries import scan_deliveries
from cdp_pipeline.dialects import Dialect, NetmeraSettings
from cdp_pipeline.dialects.netmera import (
    check_file_name_unused,
    netmera_listing_goal,
    netmera_profile_goal,
    nightly_report_schedule,
    parse_pattern_line,
    report_file_name_template,
    report_file_names,
    stage_netmera_file,
)
from cdp_pipeline.errors import InputError
from cdp_pipeline.exporting import render_name, run_export
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline.transports.local import LocalTransport
from cdp_pipeline_tests.dialects import key_table_problems
from cdp_pipeline_tests.fixtures.schedule_fire_times import next_fire_times

EXAMPLES = Path(__file__).resolve().parents[2] / "cdp_pipeline" / "demo" / "examples"
CATALOG = StoreFile.model_validate(yaml.safe_load((EXAMPLES / "store_sare_netmera.yaml").read_text())).catalog
SETTINGS: NetmeraSettings = TypeAdapter(Dialect).validate_python(yaml.safe_load((EXAMPLES / "netmera_connection.yaml").read_text())["dialect"])

# "Example Push Entries", verbatim from the seed.
SEED_PUSH = """12345;Welcome to our platform! Enjoy exploring our latest features.;https://example.com/welcome
67890;Check out exclusive offers available just for you!;https://example.com/offers
54321;Get started by updating your profile to enhance your experience.;https://example.com/update-profile
98765;New articles are available in your feed. Click to read more.;https://example.com/articles
13579;Your account setup is complete! Discover what's next.;https://example.com/next-steps
"""
# "Using Line Breaks in Push Notifications", the seed's text.
SEED_LINE_BREAK = "Welcome to our platform!\\nEnjoy exploring our latest features."
# The seed's profile attribute example. Its second row reached us mangled by the web page's e-mail
# protection ("[email protected] ~~"more data"~30"); restored with an external id and an address.
SEED_PATTERN = "extID~email~device token~attribute1~attribute2"
SEED_PROFILE = f'{SEED_PATTERN}\n12345~~token123~"example data"~25\n67890~user@example.com~~"more data"~30\n'
DELIVERED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 10, 0)


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _stage(tmp_path: Path, kind: str, name: str, content: str | bytes, settings: NetmeraSettings = SETTINGS):
    folder = "push" if kind == "push" else "Profile"
    return stage_netmera_file(
        kind, _write(tmp_path, name, content), display_name=f"{folder}/{name}", delivered_at=DELIVERED,
        catalog=CATALOG, settings=settings, run_time=NOW,
    )


def _merge(conn, goal, staged, n: int, root_file: str) -> None:
    record = DeliveryRecord(f"d{n}", "netmera_ftp", goal.name, f"{goal.name}:{root_file}", root_file, [], f"sha{n}", "cfg")
    merge_delivery(conn, CATALOG, staged, record, "run", NOW)


def _insert(conn, profile_id: str, **values) -> None:
    columns = ", ".join(["profile_id", "created_at", "updated_at", *values])
    conn.execute(f"INSERT INTO profiles ({columns}) VALUES ({', '.join(['?'] * (len(values) + 3))})", [profile_id, NOW, NOW, *values.values()])


# --------------------------------------------------------------------------- push files


def test_seed_push_entries_become_push_request_events(tmp_path):
    push = SEED_PUSH.replace("Welcome to our platform! Enjoy exploring our latest features.", SEED_LINE_BREAK)
    goal, staged = _stage(tmp_path, "push", "push_20260302.csv", push)
    events = staged.events["push_request"]
    assert events["event_id"].to_list()[:2] == ["push_20260302.csv:1", "push_20260302.csv:2"]
    assert events["text"][0] == "Welcome to our platform!\nEnjoy exploring our latest features."
    assert staged.rules == {} and not goal.allow_new_profiles and goal.files.after_import.action == "delete"
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p1", external_id="12345", email="one@example.com")
        _insert(conn, "p2", external_id="67890")
        _merge(conn, goal, staged, 1, "push/push_20260302.csv")
        rows = conn.execute(
            "SELECT profile_id, event_id, event_time, text, deeplink, source_file, source_line FROM timeline_push_request ORDER BY event_id"
        ).fetchall()
        assert rows == [
            ("p1", "push_20260302.csv:1", datetime(2026, 3, 2, 9, 30), "Welcome to our platform!\nEnjoy exploring our latest features.",
             "https://example.com/welcome", "push_20260302.csv", 1),
            ("p2", "push_20260302.csv:2", datetime(2026, 3, 2, 9, 30), "Check out exclusive offers available just for you!",
             "https://example.com/offers", "push_20260302.csv", 2),
        ]
        # Three external ids are unknown: counted, not turned into profiles.
        assert conn.execute("SELECT events_created, profiles_ignored, profiles_created FROM deliveries").fetchone() == (2, 3, 0)
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (2,)
        # The same file again replaces its events instead of doubling them.
        _merge(conn, goal, staged, 2, "push/push_20260302.csv")
        assert conn.execute("SELECT count(*) FROM timeline_push_request").fetchone() == (2,)
        # Identical events re-imported are counted as unchanged since issue H (created / updated /
        # unchanged); this asserted (0, 2) "updated" for events whose values did not change.
        assert conn.execute("SELECT events_created, events_updated, events_unchanged FROM deliveries WHERE delivery_id = 'd2'").fetchone() == (0, 0, 2)


def test_push_requests_leave_through_the_example_report_export(tmp_path):
    """The example connection's nightly export goal, run by the ordinary run_export: the day's
    push requests leave as a timeline file, named like Netmera's reports."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    goal, staged = stage_netmera_file(
        "push", _write(tmp_path, "push.csv", SEED_PUSH), display_name="push/push.csv", delivered_at=now,
        catalog=CATALOG, settings=SETTINGS, run_time=now,
    )
    store = tmp_path / "store.duckdb"
    with open_writer(store, CATALOG) as conn:
        _insert(conn, "p1", external_id="12345", email="one@example.com")
        _merge(conn, goal, staged, 1, "push/push.csv")
    raw = yaml.safe_load((EXAMPLES / "netmera_connection.yaml").read_text())
    raw.pop("dialect")
    connection = Connection.model_validate(raw)
    project = ProjectConfig(config_dir=tmp_path, home=tmp_path, store=StoreSettings(path=str(store), published_path=None), catalog=CATALOG,
                            connections={connection.name: connection}, dialects={connection.name: SETTINGS})
    outcome = run_export(project, connection, connection.goal("push_reports"), LocalTransport(tmp_path / "remote"), "run-1", now)
    name = report_file_names("APPKEY", now.date())
    profiles = (tmp_path / "remote" / "reports" / f"{name}.csv").read_text().splitlines()
    assert profiles == ["ExternalID;email", "12345;one@example.com"]
    timeline = (tmp_path / "remote" / "reports" / f"{name}_timeline" / "push_request.csv").read_text()
    assert "push.csv:1;p1;" in timeline and "Welcome to our platform! Enjoy exploring our latest features.;https://example.com/welcome;push.csv;1" in timeline
    # The reports the example goal asks for (netmera_reports): the one known id's push, by hand.
    stamp = now.strftime("%Y%m%d")
    assert [f.remote_path for f in outcome.report_files] == [
        f"reports/APPKEY_CAMPAIGN_REPORTS_{stamp}.csv", f"reports/APPKEY_push_PUSH_REPORTS_{stamp}.csv", f"reports/APPKEY_TRANSACTIONAL_REPORTS_{stamp}.csv",
    ]
    assert [f.rows for f in outcome.report_files] == [1, 1, 1]
    at = now.strftime("%Y-%m-%d %H:%M:%S")
    assert (tmp_path / "remote" / "reports" / f"APPKEY_TRANSACTIONAL_REPORTS_{stamp}.csv").read_text().splitlines() == [
        "ExternalID;Text;Deeplink;Requested At;Campaign;Line",
        f"12345;Welcome to our platform! Enjoy exploring our latest features.;https://example.com/welcome;{at};push.csv;1",
    ]


def test_push_events_for_unknown_external_ids_are_counted(tmp_path):
    goal, staged = _stage(tmp_path, "push", "push.csv", SEED_PUSH)
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p1", external_id="12345")
        _merge(conn, goal, staged, 1, "push/push.csv")
        assert conn.execute("SELECT rows_read, events_created, profiles_ignored, profiles_created FROM deliveries").fetchone() == (5, 1, 4, 0)


def test_push_header_row_is_dropped_and_quotes_are_text(tmp_path):
    _, staged = _stage(tmp_path, "push", "push.csv", 'ExternalID;Text;Deeplink\n12345;Say "hi";https://example.com/\n')
    events = staged.events["push_request"]
    assert events["text"].to_list() == ['Say "hi"'] and events["event_id"].to_list() == ["push.csv:2"]


@pytest.mark.parametrize(
    "content,expected",
    [
        ("12345;Hello; world;https://example.com/\n", "line 1: the row has 4 fields, expected 3"),
        ("12345;Hel\x00lo;https://example.com/\n", "line 1: the line contains a NUL byte"),
        (";Hello;https://example.com/\n", "line 1, column 'external_id': empty identifier"),
    ],
    ids=["semicolon-in-text", "nul", "no-external-id"],
)
def test_malformed_push_files(tmp_path, content, expected):
    with pytest.raises(InputError) as caught:
        _stage(tmp_path, "push", "push.csv", content)
    assert f"push/push.csv {expected}" in str(caught.value)


def test_push_with_bom_is_read(tmp_path):
    _, staged = _stage(tmp_path, "push", "push.csv", b"\xef\xbb\xbf" + SEED_PUSH.encode())
    assert staged.events["push_request"]["event_id"].len() == 5


def test_listing_goals_find_the_files(tmp_path):
    listing = [
        RemoteFile("push/push_1.csv", 10, 1.0), RemoteFile("push/readme.md", 10, 1.0),
        RemoteFile("Profile/profile_1.txt", 10, 1.0), RemoteFile("Profile/profile_2.txt.part", 10, 1.0),
    ]
    push = scan_deliveries("netmera_ftp", netmera_listing_goal(SETTINGS, "push"), listing)
    profile = scan_deliveries("netmera_ftp", netmera_listing_goal(SETTINGS, "profile"), listing)
    assert [d.partition_key for d in push.deliveries] == ["netmera_push:push_1.csv"]
    assert [d.partition_key for d in profile.deliveries] == ["netmera_profiles:profile_1.txt"]


# --------------------------------------------------------------------------- profile attribute files


@pytest.mark.parametrize(
    "pattern",
    [SEED_PATTERN, "~~~attribute1~attribute2", "~~~extID~email~device token~attribute1~attribute2", "\ufeffExtId~E-mail~device_token~attribute1~attribute2\r"],
)
def test_pattern_line_spellings(pattern):
    assert parse_pattern_line(pattern, "Profile/p.txt") == ["attribute1", "attribute2"]


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("email~extID~device token~attribute1", "line 1: the pattern line must start with extID~email~device token (or ~~~)"),
        ("~~~attribute1~~attribute2", "line 1: field 5 of the pattern line is empty"),
        ("~~~attribute1~attribute1", "attribute 'attribute1' appears twice"),
    ],
)
def test_bad_pattern_lines(pattern, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        parse_pattern_line(pattern, "Profile/p.txt")


def test_unknown_attribute_is_a_named_error():
    with pytest.raises(InputError) as caught:
        netmera_profile_goal("~~~attribute1~loyalty_points", CATALOG, SETTINGS, file_name="Profile/p.txt")
    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.column) == ("Profile/p.txt", 1, "loyalty_points")
    assert "unknown attribute 'loyalty_points' (field 5 of the pattern line)" in problem.reason and "dialect.attribute_properties" in problem.fix


def test_profile_goal_and_csv_options():
    goal, options = netmera_profile_goal(SEED_PATTERN, CATALOG, SETTINGS, file_name="Profile/p.txt")
    assert options.column_names == ["ext_id", "email", "device_token", "attribute1", "attribute2"]
    assert (options.delimiter, options.quote_char, options.has_header, options.skip_rows) == ("~", '"', False, 1)
    assert {m.property: m.rule for m in goal.mappings} == {"email": "set", "netmera_device_tokens": "add", "attribute1": "set", "attribute2": "set"}
    assert goal.identifiers[0].property == "external_id" and goal.files.after_import.action == "delete"


def test_seed_profile_example_into_the_store(tmp_path):
    goal, staged = _stage(tmp_path, "profile", "profile_20260302_0930.txt", SEED_PROFILE)
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p1", external_id="12345", email="kept@example.com", netmera_device_tokens=["old"], attribute1="old")
        _merge(conn, goal, staged, 1, "Profile/profile_20260302_0930.txt")
        rows = conn.execute("SELECT external_id, email, netmera_device_tokens, attribute1, attribute2 FROM profiles ORDER BY 1").fetchall()
    assert rows == [
        ("12345", "kept@example.com", ["old", "token123"], "example data", 25),
        ("67890", "user@example.com", None, "more data", 30),
    ]


def test_tilde_pattern_and_quoted_tilde(tmp_path):
    _, staged = _stage(tmp_path, "profile", "p.txt", '~~~attribute1~attribute2\n12345~~~"a ~ b"~7\n')
    assert staged.records.select("_key", "attribute1", "attribute2").rows() == [("12345", "a ~ b", 7)]


@pytest.mark.parametrize(
    "content,expected",
    [
        (f'{SEED_PATTERN}\n12345~~t~"x"~twenty\n', "Profile/p.txt line 2, column 'attribute2': cannot parse 'twenty' as INTEGER"),
        (f'{SEED_PATTERN}\n12345~~t~"x"\n', "Profile/p.txt line 2: the row has 4 fields, expected 5"),
        (f'{SEED_PATTERN}\n12345~~t~"x\x00"~1\n', "Profile/p.txt line 2: the line contains a NUL byte"),
        ("~~~attribute1~nickname\n1~~~x~y\n", "unknown attribute 'nickname'"),
        ("", "the file is empty; its first line must be the pattern"),
    ],
    ids=["type", "ragged", "nul", "unknown-attribute", "empty"],
)
def test_malformed_profile_files(tmp_path, content, expected):
    with pytest.raises(InputError) as caught:
        _stage(tmp_path, "profile", "p.txt", content)
    assert expected in str(caught.value)


def test_profile_file_with_bom_is_read(tmp_path):
    _, staged = _stage(tmp_path, "profile", "p.txt", b"\xef\xbb\xbf" + SEED_PROFILE.encode())
    assert staged.records["_key"].to_list() == ["12345", "67890"]


def test_a_file_name_is_imported_once(tmp_path):
    goal, staged = _stage(tmp_path, "profile", "p.txt", SEED_PROFILE)
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _merge(conn, goal, staged, 1, "Profile/p.txt")
        # The same content again is the ordinary retry (the ledger skips it): allowed here.
        check_file_name_unused(conn, connection="netmera_ftp", goal=goal.name, root_file="Profile/p.txt", content_sha256="sha1")
        with pytest.raises(InputError, match="Profile/p.txt: a file with this name was already imported on 2026-03-02 10:00 UTC"):
            check_file_name_unused(conn, connection="netmera_ftp", goal=goal.name, root_file="Profile/p.txt", content_sha256="other")


# --------------------------------------------------------------------------- reports


def test_report_file_names():
    assert report_file_names("APPKEY", date(2026, 3, 2)) == "APPKEY_PUSH_REPORTS_20260302"
    assert report_file_names("APPKEY", date(2026, 3, 2), msg_id="MSG42") == "APPKEY_MSG42_PUSH_REPORTS_20260302"
    template = report_file_name_template("APPKEY")
    assert template == "APPKEY_PUSH_REPORTS_{date}.csv"
    assert render_name(template, goal="g", segment="s", run_id="r", now=datetime(2026, 3, 2, 3, 0)) == "APPKEY_PUSH_REPORTS_20260302.csv"
    with pytest.raises(ValueError, match="without '/'"):
        report_file_names("app/key", date(2026, 3, 2))


def test_nightly_schedule_runs_once_in_the_window():
    schedule = nightly_report_schedule("Europe/Istanbul", goals=["push_reports"])
    fires = next_fire_times(schedule, datetime(2026, 3, 2, 0, 0, tzinfo=ZoneInfo("Europe/Istanbul")), 3)
    assert [f.astimezone(ZoneInfo("Europe/Istanbul")).strftime("%d %H:%M") for f in fires] == ["02 03:00", "03 03:00", "04 03:00"]


def test_example_connection_and_catalog_validate():
    raw = yaml.safe_load((EXAMPLES / "netmera_connection.yaml").read_text())
    dialect = TypeAdapter(Dialect).validate_python(raw.pop("dialect"))
    connection = Connection.model_validate(raw)
    _check_references(connection, CATALOG, "netmera_connection.yaml")
    assert isinstance(dialect, NetmeraSettings) and dialect.appkey == "APPKEY"
    assert connection.schedules[0] == nightly_report_schedule("Europe/Istanbul", goals=["push_reports"])
    assert connection.goal("push_reports").target.file_name == report_file_name_template("APPKEY")


def test_docs_document_every_key_with_its_default():
    assert key_table_problems(NetmeraSettings) == []


def test_campaign_message_ids_are_the_push_file_names():
    from cdp_pipeline.dialects.netmera_reports import campaign_message_id

    assert campaign_message_id("push_20260302.csv") == "push_20260302"
    assert campaign_message_id("push/weekly offers.v2.csv") == "weekly_offers_v2"
    assert campaign_message_id(".csv") == "_csv"


def test_netmera_reports_need_the_netmera_dialect_with_an_appkey(tmp_path):
    from cdp_pipeline.config.connection import ExportGoal
    from cdp_pipeline.dialects.netmera_reports import write_netmera_reports
    from cdp_pipeline.errors import ConfigError

    goal = ExportGoal.model_validate(
        {"name": "reports", "type": "export_profiles", "segment": "s", "columns": [{"header": "id", "profile_id": True}], "netmera_reports": ["campaign"]}
    )
    with duckdb.connect() as conn, pytest.raises(ConfigError, match="netmera_reports needs the connection's dialect"):
        write_netmera_reports(conn, None, Catalog(), goal, tmp_path, since=NOW, until=NOW, now=NOW)
    settings = NetmeraSettings(type="netmera", appkey="APPKEY")
    with duckdb.connect() as conn, pytest.raises(ConfigError, match="event type 'push_request'"):
        write_netmera_reports(conn, settings, Catalog(), goal, tmp_path, since=NOW, until=NOW, now=NOW)
