"""BlueConic's "Permission level: the permission level set in the profile", as a property of its
own: an import goal maps a column to ``permission_level`` (read in any usual spelling, anything
else not imported and listed), and an export's ``permission_level: true`` column writes it,
falling back to consent only where a profile has none. Through the asset graph into a real DuckDB
store; the expected store and file are computed with plain Python and plain DuckDB SQL."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.defs.project import project_config

STORE = {
    "store": {"path": "store.duckdb", "published_path": "store_published.duckdb"},
    "catalog": {
        "profile_properties": {"email": {"type": "text", "unique": True}, "consents": {"type": "list"}},
        "segments": {"everyone": {"condition": "TRUE"}},
        "objectives": {"marketing": {}},
    },
}
CONNECTION = {
    "name": "crm",
    "source": {"type": "local", "path": "remote"},
    "goals": [
        {
            "name": "people",
            "type": "import_profiles",
            "files": {"directory": "inbox", "root": {"name": "people", "pattern": "people_*.csv"}, "readiness": {"mode": "stable", "stable_seconds": 0}},
            "identifiers": [{"column": "email", "property": "email"}],
            "allow_new_profiles": True,
            "max_reject_share": 0.5,
            "mappings": [{"column": "level", "property": "permission_level"}, {"column": "consent", "property": "consents", "rule": "add"}],
        },
        {
            "name": "levels_out",
            "type": "export_profiles",
            "segment": "everyone",
            "changed_only": False,
            "target": {"directory": "out", "file_name": "levels.csv"},
            "columns": [
                {"header": "email", "property": "email"},
                {"header": "level", "permission_level": True},
                {"header": "stored_level", "property": "permission_level"},
            ],
        },
    ],
}
# The same level in the spellings people write it; "gold" is not a level.
FILE = (
    "email,level,consent\n"
    "a@example.com,Do not track,marketing\n"
    "b@example.com,PERSONAL,\n"
    "c@example.com,,marketing\n"
    "d@example.com,gold,\n"
    "e@example.com, anonymous ,\n"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(yaml.safe_dump(STORE))
    (config / "connections" / "crm.yaml").write_text(yaml.safe_dump(CONNECTION))
    home = tmp_path / "home"
    (home / "remote" / "inbox").mkdir(parents=True)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    yield home
    project_config.cache_clear()


def test_every_store_has_a_permission_level_property_and_a_declared_one_must_be_text():
    assert Catalog().profile_properties["permission_level"].type == "text"
    with pytest.raises(ValueError, match="permission_level.*declare it as type text"):
        Catalog.model_validate({"profile_properties": {"permission_level": {"type": "integer"}}})


def test_permission_level_is_imported_and_exported_as_its_own_property(home: Path):
    (home / "remote" / "inbox" / "people_1.csv").write_text(FILE, encoding="utf-8")
    messages: list[str] = []
    summary = run_now("crm", echo=messages.append)
    assert summary["success"], (summary, messages)

    # Expected store, by hand from FILE: spellings folded, the empty cell and "gold" leave no level.
    expected = {"a@example.com": "do_not_track", "b@example.com": "personal", "c@example.com": None, "d@example.com": None, "e@example.com": "anonymous"}
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert dict(conn.execute("SELECT email, permission_level FROM profiles").fetchall()) == expected
        assert conn.execute("SELECT file, line, column_name, reason FROM rejects").fetchall() == [
            ("inbox/people_1.csv", 5, "level",
             "value is not a permission level (do_not_track, anonymous, personal). The value was not imported; write one of the levels")
        ]
        assert conn.execute("SELECT values_not_imported FROM deliveries").fetchall() == [(1,)]
        # The export's expectation in plain SQL: the stored level, else personal for a profile that
        # consented to the objective and anonymous for one that did not.
        expected_file = conn.execute(
            """
            SELECT email,
                   coalesce(permission_level, CASE WHEN list_contains(coalesce(consents, []), 'marketing') THEN 'personal' ELSE 'anonymous' END),
                   coalesce(permission_level, '')
            FROM profiles ORDER BY email
            """
        ).fetchall()
    written = list(csv.reader(io.StringIO((home / "remote" / "out" / "levels.csv").read_text(encoding="utf-8"))))
    assert written[0] == ["email", "level", "stored_level"]
    assert sorted(tuple(row) for row in written[1:]) == expected_file
    # The consent fallback applies only where no level is stored: a's do_not_track wins over its consent.
    assert ("a@example.com", "do_not_track", "do_not_track") in expected_file and ("c@example.com", "personal", "") in expected_file
