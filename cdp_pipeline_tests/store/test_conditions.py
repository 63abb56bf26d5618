"""Segment and lifecycle conditions are one checked expression, never free SQL.

Through the CLI (``validate`` and ``run`` on a real config directory and DuckDB file) and through
the engine function that refreshes memberships; the store is read back with plain DuckDB SQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, load_project
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.segments import refresh_memberships

INJECTION = "TRUE); DROP TABLE deliveries; SELECT (1"
NOW = datetime(2026, 1, 15, 12, 0)


def _config_with(tmp_path: Path, condition: str) -> Path:
    """The demo configuration with the high_value segment's condition replaced."""
    config = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, config)
    store_yaml = config / "store.yaml"
    text = store_yaml.read_text()
    assert 'condition: "lifetime_value >= 500"' in text
    store_yaml.write_text(text.replace('condition: "lifetime_value >= 500"', f"condition: {condition!r}"))
    return config


def _store_with_ledger(home: Path) -> Path:
    """A store holding one ledger row, made with the demo catalog."""
    project = load_project(BUNDLED_CONFIG_DIR, home)
    with open_writer(project.store_path, project.catalog) as conn:
        conn.execute("INSERT INTO deliveries (delivery_id, connection, goal, status) VALUES ('d1', 'demo_local', 'customers', 'merged')")
    return project.store_path


def _cli(home: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CDP_CONFIG_DIR": str(config), "DAGSTER_HOME": str(home / "dagster_home")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_validate_refuses_statements_in_a_condition_and_the_ledger_survives_a_run(tmp_path):
    home = tmp_path / "home"
    store = _store_with_ledger(home)
    config = _config_with(tmp_path, INJECTION)

    validate = _cli(home, config, "validate")
    assert validate.returncode == 2, validate.stdout + validate.stderr
    assert "store.yaml" in validate.stderr
    assert f"segments.high_value.condition {INJECTION!r}: not one SQL expression" in validate.stderr
    assert "Traceback" not in validate.stderr

    run = _cli(home, config, "run", "demo_local")
    assert run.returncode != 0
    assert "segments.high_value.condition" in run.stderr
    assert "Traceback" not in run.stderr
    with duckdb.connect(str(store), read_only=True) as conn:
        assert conn.execute("SELECT delivery_id, status FROM deliveries").fetchall() == [("d1", "merged")]


def test_a_condition_that_skipped_validation_still_never_runs_as_sql(tmp_path):
    """A catalog built in code bypasses pydantic's validators; the refresh checks again."""
    store = _store_with_ledger(tmp_path)
    catalog = load_project(BUNDLED_CONFIG_DIR, tmp_path).catalog
    hostile = catalog.model_copy(
        update={"segments": {"evil": catalog.segments["high_value"].model_copy(update={"condition": INJECTION, "based_on": []})}}
    )
    with open_writer(store, catalog) as conn, pytest.raises(ConfigError, match="segments.evil.condition"):
        refresh_memberships(conn, hostile, NOW)
    with duckdb.connect(str(store), read_only=True) as conn:
        assert conn.execute("SELECT delivery_id FROM deliveries").fetchall() == [("d1",)]
        assert conn.execute("SELECT count(*) FROM segment_members").fetchone() == (0,)


@pytest.mark.parametrize(
    "condition,expected",
    [
        ("TRUE; SELECT 1", "not one SQL expression"),
        ("lifetime_value >= 500 ORDER BY 1", "not one SQL expression"),
        ("(SELECT count(*) FROM deliveries) > 0", "a subquery is not allowed"),
        ("profile_id IN (SELECT profile_id FROM deliveries)", "a subquery may read a timeline table (timeline_order), not 'deliveries'"),
        ("EXISTS (SELECT 1)", "a subquery is not allowed"),
        ("'marketing' = ANY(consents)", "use list_contains(property, 'value')"),
        ("lifetime_valu >= 500", "unknown column 'lifetime_valu'; the columns of profiles are: birth_date, channels, city"),
        ("profile_id IN (SELECT profile_id FROM timeline_order WHERE email = 'x')", "unknown column 'email'; the columns of timeline_order are"),
        ("read_text('/etc/passwd') IS NOT NULL", "function 'read_text' is not allowed"),
        ("getenv('HOME') = 'x'", "function 'getenv' is not allowed"),
        ("count(*) > 1", "function 'count_star' is not allowed"),
        ("order_count", "the expression is BIGINT, a condition must be true or false"),
        ("email > 5", "Cannot compare values of type VARCHAR"),
    ],
)
def test_validate_names_the_condition_and_what_is_allowed(tmp_path, condition, expected):
    with pytest.raises(ConfigError) as error:
        load_project(_config_with(tmp_path, condition), tmp_path)
    message = str(error.value)
    assert "store.yaml" in message
    assert f"segments.high_value.condition {condition!r}" in message
    assert expected in message


def test_lifecycle_stage_conditions_are_checked_with_their_key_path(tmp_path):
    config = _config_with(tmp_path, "lifetime_value >= 500")
    store_yaml = config / "store.yaml"
    store_yaml.write_text(store_yaml.read_text().replace('condition: "order_count >= 1"', f"condition: {INJECTION!r}"))
    with pytest.raises(ConfigError) as error:
        load_project(config, tmp_path)
    assert f"lifecycles.customer_journey.stages.1.condition (stage active) {INJECTION!r}: not one SQL expression" in str(error.value)


def test_valid_conditions_select_what_plain_sql_selects(tmp_path):
    catalog = Catalog.model_validate(
        {
            "profile_properties": {
                "email": {"type": "text"},
                "consents": {"type": "list"},
                "lifetime_value": {"type": "decimal"},
                "signup_date": {"type": "date"},
            },
            "event_types": {"push": {"properties": {"text": {"type": "text"}}}},
            "segments": {
                "reachable": {"condition": "email ILIKE '%@example.com' AND list_contains(consents, 'marketing') AND lifetime_value BETWEEN 10 AND 100"},
                "recent_push": {
                    "condition": "profile_id IN (SELECT profile_id FROM timeline_push WHERE event_time >= TIMESTAMP '2026-01-15 00:00' - INTERVAL 1 DAY)"
                },
                "new": {"condition": "date_diff('day', signup_date, DATE '2026-01-15') < 30 OR signup_date IS NULL"},
            },
            "lifecycles": {"value": {"stages": [{"name": "high", "condition": "lifetime_value >= 50"}, {"name": "rest", "condition": "TRUE"}]}},
        }
    )
    store = tmp_path / "store.duckdb"
    rows = [
        ("p1", "a@example.com", ["marketing"], 50, "2026-01-01"),
        ("p2", "b@EXAMPLE.com", ["marketing", "x"], 100, "2025-01-01"),
        ("p3", "c@other.org", ["marketing"], 50, None),
        ("p4", "d@example.com", [], 20, "2026-01-10"),
        ("p5", None, None, None, "2025-06-01"),
    ]
    with open_writer(store, catalog) as conn:
        conn.executemany("INSERT INTO profiles (profile_id, email, consents, lifetime_value, signup_date) VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO timeline_push (event_id, profile_id, event_time) VALUES "
            "('e1', 'p3', TIMESTAMP '2026-01-14 12:00'), ('e2', 'p4', TIMESTAMP '2026-01-01 12:00')"
        )
        refresh_memberships(conn, catalog, NOW)
    with duckdb.connect(str(store), read_only=True) as conn:
        members = conn.execute("SELECT segment, list(profile_id ORDER BY profile_id) FROM segment_members GROUP BY segment ORDER BY segment").fetchall()
        stages = conn.execute("SELECT stage, list(profile_id ORDER BY profile_id) FROM lifecycle_members GROUP BY stage ORDER BY stage").fetchall()
    # The expectation in plain Python over the rows above.
    reachable = [
        p for p, email, consents, value, _ in rows
        if email and email.lower().endswith("@example.com") and consents and "marketing" in consents and value is not None and 10 <= value <= 100
    ]
    new = [p for p, *_, signup in rows if signup is None or (datetime(2026, 1, 15) - datetime.fromisoformat(signup)).days < 30]
    assert members == [("new", new), ("reachable", reachable), ("recent_push", ["p3"])]
    assert reachable == ["p1", "p2"]
    assert stages == [("high", ["p1", "p2", "p3"]), ("rest", ["p4", "p5"])]


@pytest.mark.parametrize(
    "condition,reads_clock",
    [
        ("lifetime_value >= 500", False),
        ("list_contains(consents, 'now') AND city = 'today'", False),
        ("date_diff('day', signup_date, DATE '2026-01-01') < 30", False),
        ("age(signup_date, birth_date) > INTERVAL 18 YEAR", False),
        ("signup_date > current_date - INTERVAL 30 DAY", True),
        ("last_order_at > now() - INTERVAL 30 DAY", True),
        ("date_diff('day', signup_date, today()) < 30", True),
        ("age(birth_date) > INTERVAL 18 YEAR", True),
        ("CAST(current_timestamp AS DATE) > signup_date", True),
        ("profile_id IN (SELECT profile_id FROM timeline_order WHERE event_time > get_current_timestamp() - INTERVAL 7 DAY)", True),
    ],
)
def test_conditions_that_read_the_clock_are_named(tmp_path, condition, reads_clock):
    from cdp_pipeline.store.conditions import clock_conditions

    catalog = load_project(_config_with(tmp_path, condition), tmp_path).catalog
    assert clock_conditions(catalog) == (["segments.high_value.condition"] if reads_clock else [])
