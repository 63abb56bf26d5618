"""BlueConic's domain groups ("Select a domain group for the import to ensure that the correct
profiles are updated or added"), through the asset graph into a real DuckDB store: identifiers
are unique per domain group, an import into one group never touches another, an export scoped to
a group sends only its profiles, and a segment condition may use the column."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config

STORE = {
    "store": {"path": "store.duckdb", "published_path": "store_published.duckdb"},
    "catalog": {
        "profile_properties": {
            "email": {"type": "text", "unique": True},
            "name": {"type": "text"},
        },
        "segments": {
            "everyone": {"condition": "email IS NOT NULL"},
            "group_b_only": {"condition": "domain_group = 'shop_b'"},
        },
    },
}


def _import_goal(name: str, group: str | None, pattern: str) -> dict:
    goal = {
        "name": name,
        "type": "import_profiles",
        "files": {"directory": "inbox", "root": {"name": "people", "pattern": pattern}, "readiness": {"mode": "stable", "stable_seconds": 0}},
        "identifiers": [{"column": "email", "property": "email"}],
        "allow_new_profiles": True,
        "mappings": [{"column": "name", "property": "name", "rule": "set"}],
    }
    if group is not None:
        goal["domain_group"] = group
    return goal


def _export_goal(name: str, segment: str, group: str | None) -> dict:
    goal = {
        "name": name,
        "type": "export_profiles",
        "segment": segment,
        "changed_only": False,
        "target": {"directory": "outbox", "file_name": f"{name}.csv"},
        "columns": [{"header": "email", "property": "email"}, {"header": "name", "property": "name"}],
    }
    if group is not None:
        goal["domain_group"] = group
    return goal


@pytest.fixture
def shop(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(yaml.safe_dump(STORE))
    connection = {
        "name": "shops",
        "source": {"type": "local", "path": "remote"},
        "goals": [
            _import_goal("shop_a_people", "shop_a", "a_*.csv"),
            _import_goal("shop_b_people", "shop_b", "b_*.csv"),
            _import_goal("default_people", None, "d_*.csv"),
            _export_goal("shop_a_export", "everyone", "shop_a"),
            _export_goal("all_export", "everyone", None),
            _export_goal("segment_b_export", "group_b_only", None),
        ],
    }
    (config / "connections" / "shops.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    home = tmp_path / "home"
    (home / "remote" / "inbox").mkdir(parents=True)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    yield home
    project_config.cache_clear()


def _run(home: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (home / "remote" / "inbox" / name).write_text(text, encoding="utf-8")
    summary = run_now("shops", echo=lambda *_: None)
    assert summary["imports"] and all(item["success"] for item in summary["imports"]), summary
    assert summary["export_success"], summary


def _exported(home: Path, name: str) -> set[tuple[str, str]]:
    # Every run exports (changed_only: false) and never overwrites: the newest file is this run's.
    path = max((home / "remote" / "outbox").glob(f"{name}*.csv"), key=lambda p: p.stat().st_mtime_ns)
    with path.open(encoding="utf-8", newline="") as handle:
        return {(row["email"], row["name"]) for row in csv.DictReader(handle)}


def test_the_same_email_in_two_domain_groups_is_two_profiles_and_groups_never_touch(shop):
    _run(shop, {
        "a_1.csv": "email,name\nsame@example.com,Anna (shop A)\nonly-a@example.com,Adam\n",
        "b_1.csv": "email,name\nsame@example.com,Berta (shop B)\n",
        "d_1.csv": "email,name\nsame@example.com,Dora (no group named)\n",
    })
    with duckdb.connect(str(shop / "store.duckdb"), read_only=True) as conn:
        rows = set(conn.execute("SELECT domain_group, email, name FROM profiles").fetchall())
        ids = conn.execute("SELECT count(DISTINCT profile_id) FROM profiles").fetchone()
    assert rows == {
        ("shop_a", "same@example.com", "Anna (shop A)"),
        ("shop_a", "only-a@example.com", "Adam"),
        ("shop_b", "same@example.com", "Berta (shop B)"),
        ("default", "same@example.com", "Dora (no group named)"),
    }
    assert ids == (4,)

    # A second import into shop_a updates shop_a's profile and creates only-b in shop_a; shop_b
    # and default keep exactly what they had.
    _run(shop, {"a_2.csv": "email,name\nsame@example.com,Anna again\nonly-b@example.com,Bob in A\n"})
    with duckdb.connect(str(shop / "store.duckdb"), read_only=True) as conn:
        rows = set(conn.execute("SELECT domain_group, email, name FROM profiles").fetchall())
    assert rows == {
        ("shop_a", "same@example.com", "Anna again"),
        ("shop_a", "only-a@example.com", "Adam"),
        ("shop_a", "only-b@example.com", "Bob in A"),
        ("shop_b", "same@example.com", "Berta (shop B)"),
        ("default", "same@example.com", "Dora (no group named)"),
    }

    # The export scoped to shop_a holds shop_a's profiles only; the unscoped one holds every
    # group; a segment condition on domain_group selects by group.
    assert _exported(shop, "shop_a_export") == {("same@example.com", "Anna again"), ("only-a@example.com", "Adam"), ("only-b@example.com", "Bob in A")}
    assert _exported(shop, "all_export") == {(email, name) for _, email, name in rows}
    assert _exported(shop, "segment_b_export") == {("same@example.com", "Berta (shop B)")}
