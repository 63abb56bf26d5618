"""The SARE manual's rules (seed 004), each run through the asset graph (``run_now``: fetch,
decrypt, stage, merge, finish) over the example connection with a local folder as its remote and a
real DuckDB store. Every expectation is written out from the rows of the files, never computed by
the project's own code; each overwrite test quotes the mode's line of the manual's table."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import load_project
from cdp_pipeline.defs.connections import connection_definitions
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.dialects.test_dialect_pipeline import _project

#: the first delivery of every test: two addresses with a SARE property and a Netmera attribute
#: (attribute1: a property no SARE file imports), status 5, group 1.
BASE_SIDECAR = {"import": True, "group": 1, "status": 5}
BASE_CSV = "email;cecha7;attribute1\na@example.com;old A;attr A\nb@example.com;old B;attr B\n"
COLUMNS = "email, cecha7, attribute1, sare_status, sare_mail_type, sare_groups"


@pytest.fixture(autouse=True)
def _clear_cache():
    yield
    project_config.cache_clear()


@pytest.fixture
def sare(tmp_path, monkeypatch):
    home, name = _project(tmp_path, monkeypatch, "sare_connection.yaml", {"directory": "in/import"})
    inbox = home / "remote" / "in" / "import"
    inbox.mkdir(parents=True)
    return home, name, inbox


def _deliver(sare, stem: str, sidecar: dict, csv_text: str, *, success: bool = True, messages: list[str] | None = None) -> dict:
    home, name, inbox = sare
    (inbox / f"{stem}.csv").write_text(csv_text, encoding="utf-8")
    (inbox / f"{stem}.import").write_text(json.dumps(sidecar), encoding="utf-8")
    summary = run_now(name, echo=(messages.append if messages is not None else lambda *_: None))
    assert [item["success"] for item in summary["imports"]] == [success], summary
    return summary


def _profiles(home: Path) -> dict[str, tuple]:
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        return {row[0]: row[1:] for row in conn.execute(f"SELECT {COLUMNS} FROM profiles ORDER BY email").fetchall()}


def _base(sare) -> dict[str, tuple]:
    _deliver(sare, "base", BASE_SIDECAR, BASE_CSV)
    before = _profiles(sare[0])
    assert before == {
        "a@example.com": ("old A", "attr A", 5, "text,HTML", ["1"]),
        "b@example.com": ("old B", "attr B", 5, "text,HTML", ["1"]),
    }
    return before


# --------------------------------------------------------------------------- polling


def _sensor_interval(home: Path, name: str) -> int:
    project_config.cache_clear()
    project = load_project()
    definitions = connection_definitions(project, project.connections[name])
    (sensor,) = [sensor for sensor in definitions.sensors or [] if sensor.name == f"{name}_deliveries"]
    return sensor.minimum_interval_seconds


def test_a_sare_connection_polls_every_five_minutes_unless_its_yaml_says_otherwise(tmp_path, monkeypatch):
    """"Import jest uruchamiany co 5 minut": without sensor.minimum_interval_seconds a SARE
    connection's sensor lists the drop every 300 s; a value in the YAML wins."""
    home, name = _project(tmp_path, monkeypatch, "sare_connection.yaml", {})
    path = tmp_path / "config" / "connections" / "example.yaml"
    connection = yaml.safe_load(path.read_text())
    connection.pop("sensor", None)
    path.write_text(yaml.safe_dump(connection, sort_keys=False))
    assert _sensor_interval(home, name) == 300
    connection["sensor"] = {"minimum_interval_seconds": 60}
    path.write_text(yaml.safe_dump(connection, sort_keys=False))
    assert _sensor_interval(home, name) == 60
    # A connection without the SARE dialect keeps the sensor's own default.
    connection.pop("sensor")
    connection.pop("dialect")
    connection["goals"] = [goal for goal in connection["goals"] if goal["type"] == "export_profiles"]
    path.write_text(yaml.safe_dump(connection, sort_keys=False))
    assert _sensor_interval(home, name) == 60


# --------------------------------------------------------------------------- overwrite 0–5


def test_overwrite_0(sare):
    """0: Nie importuj — nothing is written: a known address keeps its values and an unknown one
    does not become a profile."""
    before = _base(sare)
    _deliver(sare, "second", {"import": True, "overwrite": 0, "status": 8, "group": 2}, "email;cecha7\na@example.com;new A\nc@example.com;new C\n")
    assert _profiles(sare[0]) == before


def test_overwrite_1(sare):
    """1: Nadpisz tylko status — an existing address gets the file's status; its data stays."""
    _base(sare)
    _deliver(sare, "second", {"import": True, "overwrite": 1, "status": 8, "mail_type": "text"}, "email;cecha7\na@example.com;new A\n")
    profiles = _profiles(sare[0])
    assert profiles["a@example.com"] == ("old A", "attr A", 8, "text,HTML", ["1"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["1"])


def test_overwrite_2(sare):
    """2: Nadpisz tylko importowane dane — the imported columns are overwritten; the status and
    every property the file does not carry stay."""
    _base(sare)
    _deliver(sare, "second", {"import": True, "overwrite": 2, "status": 8, "mail_type": "text"}, "email;cecha7\na@example.com;new A\n")
    profiles = _profiles(sare[0])
    assert profiles["a@example.com"] == ("new A", "attr A", 5, "text,HTML", ["1"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["1"])


def test_overwrite_3(sare):
    """3: Nadpisz wszystkie dane (kasuj historię) — all the file's data, the status and the mail
    type are overwritten (an empty cell clears), and the history of the imported addresses is
    deleted: their earlier rows of the value history are gone, other addresses keep theirs. The
    history is read from property_history: property_changes holds only changes of existing values,
    the view adds the values a profile still has from its creation."""
    home = sare[0]
    _base(sare)
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        history_before = conn.execute(
            "SELECT p.email, count(*) FROM property_history AS c JOIN profiles AS p ON p.profile_id = c.entity_id GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert [email for email, count in history_before if count > 0] == ["a@example.com", "b@example.com"]
    _deliver(sare, "second", {"import": True, "overwrite": 3, "status": 8, "mail_type": "text"}, "email;cecha7\na@example.com;\n")
    profiles = _profiles(home)
    assert profiles["a@example.com"] == (None, "attr A", 8, "text", ["1"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["1"])
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT p.email, d.root_file FROM property_history AS c JOIN profiles AS p ON p.profile_id = c.entity_id "
            "JOIN deliveries AS d ON d.delivery_id = c.delivery_id GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert rows == [("a@example.com", "in/import/second.csv"), ("b@example.com", "in/import/base.csv")]


def test_overwrite_4(sare):
    """4: Nadpisz tylko importowane dane ze zmianą typu — the imported columns and the mail type
    ("typ") are overwritten; the status stays."""
    _base(sare)
    _deliver(sare, "second", {"import": True, "overwrite": 4, "status": 8, "mail_type": "text"}, "email;cecha7\na@example.com;new A\n")
    profiles = _profiles(sare[0])
    assert profiles["a@example.com"] == ("new A", "attr A", 5, "text", ["1"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["1"])


def test_overwrite_5(sare):
    """5: Nadpisz importowane dane, wyczyść cechy nieimportowane — the imported columns are
    overwritten and every property the file does not import is cleared, whether or not the
    connection lists it (attribute1 comes from another system and is listed nowhere). The
    identifier and what the sidecar itself writes (status, mail type, groups) are kept."""
    _base(sare)
    _deliver(sare, "second", {"import": True, "overwrite": 5, "status": 8}, "email;cecha7\na@example.com;new A\n")
    profiles = _profiles(sare[0])
    assert profiles["a@example.com"] == ("new A", None, 5, "text,HTML", ["1"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["1"])


# --------------------------------------------------------------------------- SAREscript and spam traps


def test_sarescript_group_and_field_operations(sare):
    """sarescript.before "wyczyszczenie cech, przeniesienie adresów do innej grupy, czyszczenie
    grup" and sarescript.after "uzupełnienie cech, przypisanie do grupy": group 1 moves to group 2
    and attribute1 is cleared for the file's addresses before the merge; after it cecha7 is set
    and the file's addresses join group 3."""
    _base(sare)
    sidecar = {
        "import": True, "overwrite": 2,
        "sarescript": {
            "before": "<!--sare sare_group_move(1, 2); sare_field_clear('attribute1'); sare-->",
            "after": "<!--sare sare_field_set('cecha7', 'filled'); sare_group_add(3); sare-->",
        },
    }
    _deliver(sare, "second", sidecar, "email\na@example.com\nc@example.com\n")
    profiles = _profiles(sare[0])
    assert profiles["a@example.com"] == ("filled", None, 5, "text,HTML", ["2", "3"])
    assert profiles["b@example.com"] == ("old B", "attr B", 5, "text,HTML", ["2"])
    assert profiles["c@example.com"] == ("filled", None, 8, "text,HTML", ["3"])


def test_an_operation_we_cannot_perform_fails_the_pair_naming_it(sare):
    home, _, inbox = sare
    messages: list[str] = []
    _deliver(sare, "second", {"import": True, "sarescript": {"after": "<!--sare sare_newsletter_send(12); sare-->"}},
             "email\na@example.com\n", success=False, messages=messages)
    assert any("`sare_newsletter_send(12)` is a SAREscript operation cdp_pipeline cannot perform" in m for m in messages), messages
    assert not (home / "store.duckdb").exists() or _profiles(home) == {}
    # The pair is not finished as if imported: it goes to the quarantine folder, not to done/.
    assert (inbox / "failed" / "second.csv").exists() and not (inbox / "done" / "second.csv").exists()


def test_spam_traps_are_the_stores_spamtraps_table(sare):
    """checkSpamtrap: "Czy przy imporcie pomijać spamtrapy": addresses in the store's spamtraps
    table (filled with plain SQL) are left out, each counted as a reject with its line."""
    home = sare[0]
    _base(sare)
    with duckdb.connect(str(home / "store.duckdb")) as conn:
        conn.execute("INSERT INTO spamtraps (address, source, added_at) VALUES (' Trap@Example.com ', 'test list', now())")
    _deliver(sare, "second", {"import": True, "checkSpamtrap": True}, "email\nc@example.com\ntrap@example.com\n")
    assert sorted(_profiles(home)) == ["a@example.com", "b@example.com", "c@example.com"]
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT file, line, reason FROM rejects").fetchall() == [
            ("in/import/second.csv", 3, "the address is on the spam-trap list (checkSpamtrap). The row was left out")
        ]
        assert conn.execute("SELECT rows_read, rows_rejected FROM deliveries WHERE root_file = 'in/import/second.csv'").fetchone() == (2, 1)


# --------------------------------------------------------------------------- domain groups


def test_a_sare_connection_imports_into_its_domain_group(sare):
    """dialect.domain_group: the pairs land in the named domain group. An address already known in
    the default group is a new profile there (identifiers match within a domain group only), and
    sare_group_clear empties SARE group 1 of this domain group only, not the default group's."""
    home, name, _ = sare
    _base(sare)
    path = home.parent / "config" / "connections" / "example.yaml"
    connection = yaml.safe_load(path.read_text())
    connection["dialect"]["domain_group"] = "shop_pl"
    path.write_text(yaml.safe_dump(connection, sort_keys=False))
    project_config.cache_clear()
    sidecar = {"import": True, "group": 1, "status": 6, "sarescript": {"before": "<!--sare sare_group_clear(1); sare-->"}}
    _deliver(sare, "second", sidecar, "email;cecha7\na@example.com;pl A\nc@example.com;pl C\n")
    _deliver(sare, "third", {"import": True, "group": 2, "sarescript": {"before": "<!--sare sare_group_clear(1); sare-->"}},
             "email\nd@example.com\n")
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT domain_group, email, cecha7, attribute1, sare_status, sare_groups FROM profiles ORDER BY domain_group, email"
        ).fetchall()
    assert rows == [
        ("default", "a@example.com", "old A", "attr A", 5, ["1"]),
        ("default", "b@example.com", "old B", "attr B", 5, ["1"]),
        ("shop_pl", "a@example.com", "pl A", None, 6, []),
        ("shop_pl", "c@example.com", "pl C", None, 6, []),
        ("shop_pl", "d@example.com", None, None, 8, ["2"]),
    ]
