"""BlueConic's "Add all detected fields", through the asset graph into a real DuckDB store: one
merge rule and a prefix for every column, and properties that store.yaml does not declare are
created, typed from the file (text unless every value is a number or a date), recorded in the
store's catalog_properties table and named in the import's warnings."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config

STORE = {
    "store": {"path": "store.duckdb", "published_path": "store_published.duckdb"},
    "catalog": {"profile_properties": {"email": {"type": "text", "unique": True}, "crm_city": {"type": "text"}}},
}


@pytest.fixture
def crm(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(yaml.safe_dump(STORE))
    goal = {
        "name": "crm_people",
        "type": "import_profiles",
        "files": {"directory": "inbox", "root": {"name": "people", "pattern": "people_*.csv"}, "readiness": {"mode": "stable", "stable_seconds": 0}},
        "identifiers": [{"column": "email", "property": "email"}],
        "allow_new_profiles": True,
        "bulk_mapping": {"rule": "set_if_empty", "prefix": "crm_", "exclude": ["internal_note"]},
    }
    (config / "connections" / "crm.yaml").write_text(yaml.safe_dump({"name": "crm", "source": {"type": "local", "path": "remote"}, "goals": [goal]}))
    home = tmp_path / "home"
    (home / "remote" / "inbox").mkdir(parents=True)
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    yield home
    project_config.cache_clear()


def _run(home: Path, name: str, text: str) -> tuple[dict, list[str]]:
    (home / "remote" / "inbox" / name).write_text(text, encoding="utf-8")
    messages: list[str] = []
    summary = run_now("crm", echo=messages.append)
    return summary, messages


# Columns of which only city has a property in store.yaml (crm_city). Expected types, by hand:
# age every value an integer; score decimals and integers; joined ISO dates; zip has a leading
# zero (a code, text); nickname text; empty_col no value at all (text); internal_note excluded.
FILE = (
    "email,city,age,score,joined,zip,nickname,empty_col,internal_note\n"
    "a@example.com,Oslo,41,3.5,2024-02-29,01234,Al,,secret\n"
    "b@example.com,Bergen,7,10,2025-12-01,99999,,,secret\n"
)


def test_all_detected_fields_creates_the_properties_store_yaml_lacks(crm):
    summary, messages = _run(crm, "people_1.csv", FILE)
    assert [item["success"] for item in summary["imports"]] == [True], (summary, messages)
    expected_types = {
        "crm_age": ("integer", "BIGINT"), "crm_score": ("decimal", "DECIMAL(18,4)"), "crm_joined": ("date", "DATE"),
        "crm_zip": ("text", "VARCHAR"), "crm_nickname": ("text", "VARCHAR"), "crm_empty_col": ("text", "VARCHAR"),
    }
    with duckdb.connect(str(crm / "store.duckdb"), read_only=True) as conn:
        catalog = {row[0]: row[1:] for row in conn.execute("SELECT property, type, entity, connection, goal FROM catalog_properties").fetchall()}
        columns = dict(conn.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'profiles'").fetchall())
        rows = conn.execute(
            "SELECT email, crm_city, crm_age, crm_score, CAST(crm_joined AS VARCHAR), crm_zip, crm_nickname, crm_empty_col "
            "FROM profiles ORDER BY email"
        ).fetchall()
    assert catalog == {name: (kind, "profile", "crm", "crm_people") for name, (kind, _) in expected_types.items()}
    assert {name: columns[name] for name in expected_types} == {name: sql for name, (_, sql) in expected_types.items()}
    assert "crm_internal_note" not in columns and "crm_email" not in columns
    from decimal import Decimal
    assert rows == [
        ("a@example.com", "Oslo", 41, Decimal("3.5"), "2024-02-29", "01234", "Al", None),
        ("b@example.com", "Bergen", 7, Decimal("10"), "2025-12-01", "99999", None, None),
    ]
    # The import's metadata in the Dagster UI names them with their types.
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey(["crm", "profile_store"]))
    assert event is not None and event.asset_materialization is not None
    shown = event.asset_materialization.metadata["created_properties"].value
    assert shown == {name: kind for name, (kind, _) in expected_types.items()}

    # The same rule applies to the created properties as to the declared one: set_if_empty keeps
    # the first value; a new column in a later file creates one more property.
    summary, messages = _run(crm, "people_2.csv", "email,age,tier\na@example.com,42,gold\n")
    assert {item["delivery"]: item["success"] for item in summary["imports"]}["crm_people:people_2.csv"] is True, (summary, messages)
    with duckdb.connect(str(crm / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT crm_age, crm_tier FROM profiles WHERE email = 'a@example.com'").fetchone() == (41, "gold")
        assert conn.execute("SELECT type FROM catalog_properties WHERE property = 'crm_tier'").fetchall() == [("text",)]


def test_a_created_property_whose_type_a_later_file_contradicts_fails_by_name(crm):
    assert [i["success"] for i in _run(crm, "people_1.csv", "email,age\na@example.com,41\n")[0]["imports"]] == [True]
    summary, messages = _run(crm, "people_2.csv", "email,age\nb@example.com,unknown\n")
    assert {item["delivery"]: item["success"] for item in summary["imports"]}["crm_people:people_2.csv"] is False, summary
    assert any("property 'crm_age' exists as BIGINT, but this file's values make it text" in m for m in messages), messages
    with duckdb.connect(str(crm / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT email FROM profiles").fetchall() == [("a@example.com",)]


def test_the_existing_property_warning_fires_when_values_come_from_another_goal(crm, tmp_path):
    """"Data will be mapped to an existing profile property": a bulk mapping into a property that
    already holds values another goal delivered is reported by name, although no explicit mapping
    of that goal names it."""
    config = tmp_path / "config" / "connections"
    other = {
        "name": "shop",
        "source": {"type": "local", "path": "remote"},
        "goals": [{
            "name": "shop_people",
            "type": "import_profiles",
            "files": {"directory": "shop", "root": {"name": "people", "pattern": "shop_*.csv"}, "readiness": {"mode": "stable", "stable_seconds": 0}},
            "identifiers": [{"column": "email", "property": "email"}],
            "allow_new_profiles": True,
            "bulk_mapping": {"rule": "set", "prefix": "crm_"},
        }],
    }
    (config / "shop.yaml").write_text(yaml.safe_dump(other))
    (crm / "remote" / "shop").mkdir()
    (crm / "remote" / "shop" / "shop_1.csv").write_text("email,age\nz@example.com,30\n", encoding="utf-8")
    project_config.cache_clear()
    summary = run_now("shop", echo=lambda *_: None)
    assert [item["success"] for item in summary["imports"]] == [True]
    summary, messages = _run(crm, "people_1.csv", "email,age,city\na@example.com,41,Oslo\n")
    assert [item["success"] for item in summary["imports"]] == [True]
    import dagster as dg

    instance = dg.DagsterInstance.get()
    (run,) = instance.get_runs(dg.RunsFilter(job_name="crm_run_now"), limit=1)
    logs = instance.all_logs(run.run_id)
    warnings = [entry.user_message for entry in logs if "is also filled by" in entry.user_message]
    assert warnings == [
        "profiles.crm_age is also filled by shop/shop_people: the merge rules of both decide the value; "
        "map into another property if the two sources must not overwrite each other"
    ], warnings


def test_all_detected_fields_of_an_event_file_create_event_properties(tmp_path, monkeypatch):
    """The same for events: every column of the event file that nothing else uses becomes an
    event property (prefix + column), created and typed from the file when the catalog lacks it."""
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    store = {
        "store": {"path": "store.duckdb", "published_path": None},
        "catalog": {
            "profile_properties": {"email": {"type": "text", "unique": True}},
            "event_types": {"visit": {"properties": {"web_page": {"type": "text"}}}},
        },
    }
    (config / "store.yaml").write_text(yaml.safe_dump(store))
    goal = {
        "name": "visits",
        "type": "import_profiles",
        "files": {"directory": "inbox", "root": {"name": "visits", "pattern": "visits_*.csv"}, "readiness": {"mode": "stable", "stable_seconds": 0}},
        "identifiers": [{"column": "email", "property": "email"}],
        "allow_new_profiles": True,
        "timeline": [{
            "event_type": "visit", "file": "visits", "event_id": "visit_id", "event_time": "visited_at",
            "bulk_mapping": {"prefix": "web_", "exclude": ["debug"]},
        }],
    }
    (config / "connections" / "web.yaml").write_text(yaml.safe_dump({"name": "web", "source": {"type": "local", "path": "remote"}, "goals": [goal]}))
    home = tmp_path / "home"
    (home / "remote" / "inbox").mkdir(parents=True)
    (home / "remote" / "inbox" / "visits_1.csv").write_text(
        "email,visit_id,visited_at,page,seconds,debug\n"
        "a@example.com,v1,2026-03-02T10:00:00,/home,12,x\n"
        "a@example.com,v2,2026-03-02T10:05:00,/cart,7,y\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    summary = run_now("web", echo=lambda *_: None)
    project_config.cache_clear()
    assert [item["success"] for item in summary["imports"]] == [True], summary
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT event_id, web_page, web_seconds FROM timeline_visit ORDER BY event_id").fetchall() == [
            ("v1", "/home", 12), ("v2", "/cart", 7)
        ]
        assert conn.execute("SELECT property, entity, type FROM catalog_properties").fetchall() == [("web_seconds", "event:visit", "integer")]
        columns = {row[0] for row in conn.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'timeline_visit'").fetchall()}
    assert "web_debug" not in columns and "web_email" not in columns and "web_visit_id" not in columns


def test_a_column_named_like_a_store_column_never_becomes_a_property(tmp_path):
    """Without a prefix, a file column called domain_group or created_at would name a column the
    store keeps itself: it is skipped with a warning naming it, never written."""
    from datetime import datetime

    from cdp_pipeline.config.catalog import Catalog
    from cdp_pipeline.config.connection import ProfileImportGoal
    from cdp_pipeline.tables.import_tables import build_import_tables

    catalog = Catalog.model_validate({"profile_properties": {"email": {"type": "text", "unique": True}}})
    goal = ProfileImportGoal.model_validate({
        "name": "people", "type": "import_profiles", "files": {"root": {"name": "people", "pattern": "people_*.csv"}},
        "identifiers": [{"column": "email", "property": "email"}], "allow_new_profiles": True, "bulk_mapping": {"rule": "set"},
    })
    path = tmp_path / "people_1.csv"
    path.write_text("email,domain_group,created_at,colour\na@example.com,shop_x,2020-01-01,red\n", encoding="utf-8")
    staged = build_import_tables(goal, catalog, {"people": path}, {"people": path.name}, datetime(2026, 3, 2))
    assert staged.detected_properties == {"colour": "text"}
    assert set(staged.rules) == {"colour"}
    assert any("reserved or not a valid name: domain_group, created_at" in w for w in staged.warnings), staged.warnings


def test_all_detected_fields_of_a_group_file_create_group_properties(tmp_path, monkeypatch):
    """"Bulk mapping" in an Import groups goal: every unused column of the group file becomes the
    group property prefix + column, created in groups_<type> and recorded in catalog_properties
    as group:<type> when the group type lacks it; a declared one is filled, the group id and the
    excluded column are not properties. Expected from the file's rows, by hand."""
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    store = {
        "store": {"path": "store.duckdb", "published_path": None},
        "catalog": {
            "profile_properties": {"email": {"type": "text", "unique": True}, "household_id": {"type": "text"}},
            "group_types": {"household": {"profile_property": "household_id", "properties": {"hh_city": {"type": "text"}}}},
        },
    }
    (config / "store.yaml").write_text(yaml.safe_dump(store))
    goal = {
        "name": "households",
        "type": "import_groups",
        "group_type": "household",
        "group_id": "household",
        "files": {"directory": "inbox", "root": {"name": "households", "pattern": "households_*.csv"}, "readiness": {"mode": "stable", "stable_seconds": 0}},
        "bulk_mapping": {"prefix": "hh_", "rule": "set", "exclude": ["note"]},
    }
    (config / "connections" / "groups.yaml").write_text(yaml.safe_dump({"name": "groups", "source": {"type": "local", "path": "remote"}, "goals": [goal]}))
    home = tmp_path / "home"
    (home / "remote" / "inbox").mkdir(parents=True)
    (home / "remote" / "inbox" / "households_1.csv").write_text(
        "household,city,members,income,since,note\n"
        "H1,Oslo,3,5200.50,2020-05-01,x\n"
        "H2,Bergen,1,4100,2021-01-31,y\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    messages: list[str] = []
    summary = run_now("groups", echo=messages.append)
    assert [item["success"] for item in summary["imports"]] == [True], (summary, messages)
    # A second file: the created properties are found again (same types), and a new column adds one.
    (home / "remote" / "inbox" / "households_2.csv").write_text("household,members,pets\nH1,4,cat\n", encoding="utf-8")
    summary = run_now("groups", echo=messages.append)
    project_config.cache_clear()
    assert all(item["success"] for item in summary["imports"]), (summary, messages)
    from decimal import Decimal

    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT group_id, hh_city, hh_members, hh_income, CAST(hh_since AS VARCHAR), hh_pets FROM groups_household ORDER BY group_id"
        ).fetchall()
        catalog = conn.execute("SELECT property, entity, type, goal FROM catalog_properties ORDER BY created_at, property").fetchall()
        columns = {row[0] for row in conn.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'groups_household'").fetchall()}
    assert rows == [("H1", "Oslo", 4, Decimal("5200.5"), "2020-05-01", "cat"), ("H2", "Bergen", 1, Decimal("4100"), "2021-01-31", None)]
    assert catalog == [
        ("hh_income", "group:household", "decimal", "households"),
        ("hh_members", "group:household", "integer", "households"),
        ("hh_since", "group:household", "date", "households"),
        ("hh_pets", "group:household", "text", "households"),
    ]
    assert "hh_note" not in columns and "hh_household" not in columns
    # The import's metadata in the Dagster UI names what the last file created.
    import dagster as dg

    # (cdp-pipeline run is one run of the Run now job: its delivery's materialisation is profile_store's.)
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey(["groups", "profile_store"]))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["created_properties"].value == {"hh_members": "integer", "hh_pets": "text"}
