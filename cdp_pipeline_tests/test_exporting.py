"""Export goals (issue E): every setting of an export goal on a small hand-made store, through
``exporting.run_export`` with the real transports (local folder, OpenSSH sshd, moto S3) and the
real ``gpg`` binary.

Golden files live in ``golden_exports/``; a changed export fails the test with the first
differing line. After a deliberate change, regenerate with ``CDP_UPDATE_GOLDEN=1`` and review
the diff of the golden files like code.

The store: six profiles (``PROFILES``) chosen so that every rule has a case on each side:

=====  ======================  ===========  ==================  ==========================
id     segments                journey      consents            notes
=====  ======================  ===========  ==================  ==========================
p01    known buyers reachable  loyal        marketing           every property set
p02    known buyers            active       [] (empty)          decimal beyond double precision
p03    known buyers            active       analytics           quote, comma, line break
p04    known                   prospect     marketing           e-mail only
p05    (none)                  loyal        -                   no e-mail, no name: not known
p06    known                   prospect     -                   first name only, empty list
=====  ======================  ===========  ==================  ==========================
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import posixpath
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from cdp_pipeline import exporting
from cdp_pipeline.config.catalog import Catalog, Segment
from cdp_pipeline.config.connection import Connection, ExportGoal
from cdp_pipeline.config.loading import ProjectConfig, StoreSettings
from cdp_pipeline.config.processors import Pseudonymize
from cdp_pipeline.crypto.keyring import PgpKeyring
from cdp_pipeline.errors import CdpError, ConfigError, CryptoError, ExportCollisionError, TransportError
from cdp_pipeline.store import exports as store_exports
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.exports import rows as export_rows
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.store.segments import refresh_memberships, refresh_memberships_if_changed
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.staged import StagedImport
from cdp_pipeline.transports.local import LocalTransport

GOLDEN = Path(__file__).parent / "golden_exports"
T0 = datetime(2026, 1, 15, 6, 0, 0)

CATALOG = Catalog.model_validate(
    {
        "profile_properties": {
            "email": {"type": "text", "unique": True},
            "first_name": {"type": "text"},
            "city": {"type": "text"},
            "interests": {"type": "list"},
            "consents": {"type": "list"},
            "lifetime_value": {"type": "decimal"},
            "order_count": {"type": "integer"},
            "birth_date": {"type": "date"},
            "last_order_at": {"type": "datetime"},
            "vip": {"type": "boolean"},
        },
        "event_types": {
            "order": {
                "properties": {"total": {"type": "decimal"}, "currency": {"type": "text"}, "channel": {"type": "text"}},
                "nested": {
                    "order_line": {
                        "properties": {
                            "product_id": {"type": "text"},
                            "product_name": {"type": "text"},
                            "quantity": {"type": "integer"},
                            "unit_price": {"type": "decimal"},
                        }
                    }
                },
            },
            "visit": {"properties": {"page": {"type": "text"}}},
        },
        "segments": {
            "known": {"condition": "email IS NOT NULL OR first_name IS NOT NULL"},
            "buyers": {"condition": "order_count >= 1", "based_on": ["known"]},
            "reachable": {"condition": "list_contains(consents, 'marketing')", "based_on": ["buyers"]},
        },
        "lifecycles": {
            "journey": {
                "stages": [
                    {"name": "loyal", "condition": "order_count >= 3"},
                    {"name": "active", "condition": "order_count >= 1"},
                    {"name": "prospect", "condition": "TRUE"},
                ]
            },
            "value": {"stages": [{"name": "high", "condition": "lifetime_value >= 1000"}]},
        },
        "objectives": {"marketing": {}, "analytics": {}},
    }
)

PROFILE_COLUMNS = (
    "profile_id", "email", "first_name", "city", "interests", "consents", "lifetime_value", "order_count", "birth_date", "last_order_at", "vip",
)
PROFILES: list[tuple[Any, ...]] = [
    ("p01", "anna@example.com", "Anna", "Amsterdam", ["cooking", "travel"], ["marketing"], "1250.5", 4, "1980-02-29", "2026-01-10 09:30:00", True),
    ("p02", "jan@example.com", "Jan", "Kraków", [], [], "12345678901234.5678", 1, "1975-12-31", "2025-12-24 18:00:00", False),
    ("p03", None, 'Zoë, "Z"', "Line\nbreak", None, ["analytics"], "0", 2, None, None, None),
    ("p04", "nobuy@example.com", None, None, None, ["marketing"], None, None, None, None, None),
    ("p05", None, None, "Nowhere", None, None, None, 5, None, None, None),
    ("p06", None, "Ed", None, [], None, None, None, None, None, None),
]
ORDERS = [
    ("O1", "p01", "2026-01-05 10:00:00", "99.5", "EUR", "web"),
    ("O2", "p01", "2026-01-10 09:30:00", "1151", "EUR", "store"),
    ("O3", "p02", "2025-12-24 18:00:00", "-5", "EUR", "web"),
    ("O4", "p05", "2026-01-01 12:00:00", "10", "EUR", "app"),
]
ORDER_LINES = [
    ("O1", 1, "P1", "Knife, chef's", 1, "89"),
    ("O1", 2, "P2", "=HYPERLINK(\"http://x\")", 2, "5.25"),
    ("O2", 1, "P3", "TV", 1, "1151"),
    ("O4", 1, "P4", "Pen", 10, "1"),
]
VISITS = [("V1", "p01", "2026-01-02 08:00:00", "/home"), ("V2", "p03", "2026-01-03 08:00:00", "@home")]

ALL_KINDS = [
    {"header": "id", "profile_id": True},
    {"header": "email", "property": "email"},
    {"header": "first_name", "property": "first_name"},
    {"header": "city", "property": "city"},
    {"header": "interests", "property": "interests"},
    {"header": "lifetime_value", "property": "lifetime_value"},
    {"header": "order_count", "property": "order_count"},
    {"header": "birth_date", "property": "birth_date"},
    {"header": "last_order_at", "property": "last_order_at"},
    {"header": "vip", "property": "vip"},
    {"header": "segments", "segments": "all"},
    {"header": "buyer_segments", "segments": ["reachable", "buyers"]},
    {"header": "lifecycles", "lifecycles": True},
    {"header": "interactions", "viewed_interactions": True},
    {"header": "permission", "permission_level": True},
    {"header": "source", "text": "crm export"},
]


# ---------------------------------------------------------------- helpers


def assert_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("CDP_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"no golden file {path}; run with CDP_UPDATE_GOLDEN=1 and review it"
    expected = path.read_bytes()
    if data != expected:
        got, want = data.splitlines(), expected.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        line_got = got[first] if first < len(got) else b"<end>"
        line_want = want[first] if first < len(want) else b"<end>"
        pytest.fail(f"{name} differs from its golden file at line {first + 1}:\n  got:  {line_got!r}\n  want: {line_want!r}")


@pytest.fixture
def project(tmp_path: Path) -> ProjectConfig:
    """A store holding PROFILES and their events, memberships refreshed at T0 - 1 day."""
    home = tmp_path / "home"
    project = ProjectConfig(config_dir=tmp_path, home=home, store=StoreSettings(path="store.duckdb", published_path=None, threads=1), catalog=CATALOG)
    with open_writer(project.store_path, CATALOG) as conn:
        conn.executemany(
            f"INSERT INTO profiles ({', '.join(PROFILE_COLUMNS)}, created_at, updated_at) VALUES ({', '.join('?' * len(PROFILE_COLUMNS))}, ?, ?)",
            [[*row, T0 - timedelta(days=1), T0 - timedelta(days=1)] for row in PROFILES],
        )
        conn.executemany(
            "INSERT INTO timeline_order (event_id, profile_id, event_time, total, currency, channel, delivery_id, imported_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'd1', ?)",
            [[*row, T0] for row in ORDERS],
        )
        conn.executemany(
            "INSERT INTO timeline_order__order_line (event_id, item_index, product_id, product_name, quantity, unit_price) VALUES (?, ?, ?, ?, ?, ?)",
            ORDER_LINES,
        )
        conn.executemany(
            "INSERT INTO timeline_visit (event_id, profile_id, event_time, page, delivery_id, imported_at) VALUES (?, ?, ?, ?, 'd1', ?)",
            [[*row, T0] for row in VISITS],
        )
        refresh_memberships(conn, CATALOG, T0 - timedelta(days=1))
    return project


def make_goal(**overrides: Any) -> ExportGoal:
    data: dict[str, Any] = {
        "name": "crm",
        "type": "export_profiles",
        "segment": "known",
        "target": {"directory": "out", "file_name": "{goal}_{date}.csv"},
        "columns": [{"header": "id", "profile_id": True}, {"header": "email", "property": "email"}, {"header": "first_name", "property": "first_name"}],
    }
    for key, value in overrides.items():
        if key == "target":
            data["target"] = {**data["target"], **value}
        else:
            data[key] = value
    return ExportGoal.model_validate(data)


def make_connection(goal: ExportGoal, objectives: list[str] | None = None) -> Connection:
    return Connection.model_validate(
        {"name": "shop", "source": {"type": "local", "path": "remote"}, "goals": [goal.model_dump(mode="json")], "objectives": objectives or []}
    )


class Runner:
    """run_export with numbered run ids against a local folder (or another transport)."""

    def __init__(self, project: ProjectConfig, root: Path):
        self.project = project
        self.root = root
        self.transport = LocalTransport(root)
        self.count = 0

    def __call__(self, goal: ExportGoal, now: datetime = T0, *, transport=None, objectives=None, **kwargs: Any) -> exporting.ExportOutcome:
        self.count += 1
        return exporting.run_export(
            self.project, make_connection(goal, objectives), goal, transport or self.transport, f"run{self.count:05d}abcdef", now, **kwargs
        )

    def read(self, remote_path: str) -> bytes:
        return (self.root / remote_path).read_bytes()


@pytest.fixture
def run(project: ProjectConfig, tmp_path: Path) -> Runner:
    return Runner(project, tmp_path / "remote")


def rows_of(data: bytes, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode()), delimiter=delimiter))


def store(project: ProjectConfig, sql: str, params: Any = None) -> list[tuple]:
    with duckdb.connect(str(project.store_path)) as conn:
        return conn.execute(sql, params or []).fetchall()


def touch(project: ProjectConfig, profile_id: str, at: datetime, **values: Any) -> None:
    """Change property values the way a merge does: values and updated_at together."""
    assignments = ", ".join([f"{k} = ?" for k in values] + ["updated_at = ?"])
    store(project, f"UPDATE profiles SET {assignments} WHERE profile_id = ?", [*values.values(), at, profile_id])


# ---------------------------------------------------------------- segments and lifecycles


def test_segments_build_on_segments_and_keep_member_since(project: ProjectConfig):
    members = lambda: dict(  # noqa: E731
        ((s, p), since) for s, p, since in store(project, "SELECT segment, profile_id, member_since FROM segment_members")
    )
    before = members()
    day0 = T0 - timedelta(days=1)
    assert {p for (s, p) in before if s == "known"} == {"p01", "p02", "p03", "p04", "p06"}
    assert {p for (s, p) in before if s == "buyers"} == {"p01", "p02", "p03"}  # p05 buys but is not known
    assert {p for (s, p) in before if s == "reachable"} == {"p01"}

    # p04 starts buying and consents; p01 loses its e-mail and name: out of known, so out of
    # buyers and reachable too (segments built on it follow their base in the same refresh).
    touch(project, "p04", T0, order_count=1)
    touch(project, "p01", T0, email=None, first_name=None)
    with open_writer(project.store_path, CATALOG) as conn:
        sizes = refresh_memberships(conn, CATALOG, T0)
    after = members()
    assert sizes == {"known": 4, "buyers": 3, "reachable": 1}
    assert {p for (s, p) in after if s == "reachable"} == {"p04"}
    assert after[("reachable", "p04")] == T0 and after[("buyers", "p04")] == T0
    # Members who stayed keep the time they entered.
    assert after[("known", "p02")] == day0 and after[("buyers", "p03")] == day0
    assert ("known", "p01") not in after and ("buyers", "p01") not in after
    assert store(project, "SELECT count(*) FROM segment_sizes WHERE segment = 'known'") == [(2,)]


def test_lifecycle_stage_moves_and_stays(project: ProjectConfig):
    stages = lambda: {  # noqa: E731
        (lc, p): (stage, since) for lc, stage, p, since in store(project, "SELECT lifecycle, stage, profile_id, stage_since FROM lifecycle_members")
    }
    day0 = T0 - timedelta(days=1)
    before = stages()
    # The first stage whose condition holds: p05 (5 orders) is loyal although "active" also holds.
    assert before[("journey", "p05")] == ("loyal", day0)
    assert before[("journey", "p04")] == ("prospect", day0)
    assert ("value", "p03") not in before  # no stage matches: not in the lifecycle at all

    touch(project, "p02", T0, order_count=3)  # active → loyal
    touch(project, "p01", T0, lifetime_value=10)  # leaves the only stage of "value"
    with open_writer(project.store_path, CATALOG) as conn:
        refresh_memberships(conn, CATALOG, T0)
    after = stages()
    assert after[("journey", "p02")] == ("loyal", T0)
    assert after[("journey", "p03")] == ("active", day0)  # stayed: stage_since kept
    assert ("value", "p01") not in after
    assert store(project, "SELECT count(*) FROM lifecycle_members WHERE profile_id = 'p02' AND lifecycle = 'journey'") == [(1,)]


def test_undeclared_segments_are_dropped_and_bad_conditions_named(project: ProjectConfig):
    renamed = CATALOG.model_copy(
        update={
            "segments": {"known_people": CATALOG.segments["known"]},
            "lifecycles": {},
        }
    )
    with open_writer(project.store_path, renamed) as conn:
        refresh_memberships(conn, renamed, T0)
    assert store(project, "SELECT DISTINCT segment FROM segment_members") == [("known_people",)]
    assert store(project, "SELECT count(*) FROM lifecycle_members") == [(0,)]

    broken = CATALOG.model_copy(update={"segments": {"bad": CATALOG.segments["known"].model_copy(update={"condition": "no_such_column > 1"})}})
    with open_writer(project.store_path, broken) as conn, pytest.raises(ConfigError, match="segments.bad.condition"):
        refresh_memberships(conn, broken, T0)


def _refreshes(project: ProjectConfig) -> int:
    """Refreshes so far: each one measures every segment once."""
    return store(project, "SELECT count(*) FROM segment_sizes WHERE segment = 'known'")[0][0]


def _known(project: ProjectConfig) -> set[str]:
    return {p for (p,) in store(project, "SELECT profile_id FROM segment_members WHERE segment = 'known'")}


def _plain_known(project: ProjectConfig, condition: str = "email IS NOT NULL OR first_name IS NOT NULL") -> set[str]:
    """The segment's condition in plain SQL over the profiles, not through the refresh."""
    return {p for (p,) in store(project, f"SELECT profile_id FROM profiles WHERE {condition}")}


def test_export_skips_the_membership_refresh_only_when_nothing_changed(run: Runner, project: ProjectConfig):
    """The refresh at export start is skipped when the conditions, the data they read and the
    memberships are what the last refresh left; any change to one of them refreshes again."""
    goal = make_goal()
    assert _refreshes(project) == 1  # the fixture's
    run(goal, full=True)
    run(goal, full=True)
    assert _refreshes(project) == 1  # nothing changed: both exports used the fixture's members

    # A changed value (stamped, as every writer of profiles stamps it): refreshed, the file follows.
    touch(project, "p05", T0, first_name="Eve")
    outcome = run(goal, full=True)
    assert _refreshes(project) == 2 and _known(project) == _plain_known(project) and "p05" in _known(project)
    assert outcome.profiles_exported == len(_plain_known(project)) == 6

    # A merge that changes only a timeline (conditions may read timelines): refreshed.
    _timeline_only_delivery(project, "p04", T0 + timedelta(hours=1))
    run(goal, full=True)
    assert _refreshes(project) == 3

    # A profile removed without any stamp (an erasure): refreshed, and it leaves the segment.
    store(project, "DELETE FROM profiles WHERE profile_id = 'p06'")
    run(goal, full=True)
    assert _refreshes(project) == 4 and _known(project) == _plain_known(project) and "p06" not in _known(project)

    # Members changed by hand: refreshed, so the file never trusts them.
    store(project, "DELETE FROM segment_members WHERE segment = 'known' AND profile_id = 'p02'")
    outcome = run(goal, full=True)
    assert _refreshes(project) == 5 and "p02" in _known(project) and outcome.profiles_exported == 5

    # A changed condition in store.yaml, data unchanged: refreshed with the new condition.
    narrower = CATALOG.model_copy(
        update={"segments": {**CATALOG.segments, "known": CATALOG.segments["known"].model_copy(update={"condition": "email IS NOT NULL"})}}
    )
    runner = Runner(dataclasses.replace(project, catalog=narrower), run.root)
    outcome = runner(goal, full=True)
    assert _refreshes(project) == 6 and _known(project) == _plain_known(project, "email IS NOT NULL") == {"p01", "p02", "p04"}
    assert outcome.profiles_exported == 3
    runner(goal, full=True)
    assert _refreshes(project) == 6
    # And back: the old condition's fingerprint is not mistaken for the current members.
    run(goal, full=True)
    assert _refreshes(project) == 7 and _known(project) == _plain_known(project)


def test_a_condition_on_the_clock_is_refreshed_at_every_export(project: ProjectConfig):
    """now(), current_date or age(x) move members without any change in the store: never skipped,
    and no mark is left that a later clock-free catalog could match."""
    clocked = CATALOG.model_copy(
        update={"segments": {**CATALOG.segments, "recent": Segment(condition="last_order_at >= now() - INTERVAL 30 DAY")}}
    )
    for at in (T0, T0 + timedelta(minutes=1)):
        with open_writer(project.store_path, clocked) as conn:
            assert refresh_memberships_if_changed(conn, clocked, at) is not None
    assert store(project, "SELECT count(*) FROM segment_sizes WHERE segment = 'recent'") == [(2,)]
    assert store(project, "SELECT count(*) FROM setup_fingerprints WHERE step = 'memberships'") == [(0,)]
    # Members as of the store's clock (plain SQL), not as of the refresh's "now" argument.
    assert {p for (p,) in store(project, "SELECT profile_id FROM segment_members WHERE segment = 'recent'")} == {
        p for (p,) in store(project, "SELECT profile_id FROM profiles WHERE last_order_at >= now() - INTERVAL 30 DAY")
    }
    with open_writer(project.store_path, CATALOG) as conn:
        assert refresh_memberships_if_changed(conn, CATALOG, T0) is not None  # "recent" must go: no mark matched
        assert refresh_memberships_if_changed(conn, CATALOG, T0) is None
    assert store(project, "SELECT count(*) FROM segment_members WHERE segment = 'recent'") == [(0,)]


# ---------------------------------------------------------------- columns and selection


def test_every_column_kind(run: Runner):
    goal = make_goal(columns=ALL_KINDS, formula_guard=False)
    outcome = run(goal)
    assert outcome.profile_file is not None
    data = run.read(outcome.profile_file.remote_path)
    assert_golden("all_kinds.csv", data)
    header, *rows = rows_of(data)
    assert header == [c["header"] for c in ALL_KINDS]
    by_id = {row[0]: dict(zip(header, row, strict=False)) for row in rows}
    # Declared order, profile id order; p05 is in no segment "known".
    assert list(by_id) == ["p01", "p02", "p03", "p04", "p06"]
    assert by_id["p01"]["segments"] == "buyers|known|reachable" and by_id["p01"]["buyer_segments"] == "buyers|reachable"
    assert by_id["p02"]["buyer_segments"] == "buyers" and by_id["p04"]["buyer_segments"] == ""
    assert by_id["p01"]["lifecycles"] == "journey:loyal|value:high"
    # Exact decimals (no detour through DOUBLE), integers, dates, datetimes, booleans, lists.
    assert by_id["p02"]["lifetime_value"] == "12345678901234.5678" and by_id["p01"]["lifetime_value"] == "1250.5"
    assert by_id["p03"]["lifetime_value"] == "0.0"
    assert by_id["p01"]["interests"] == "cooking|travel" and by_id["p01"]["vip"] == "true"
    assert by_id["p01"]["last_order_at"] == "2026-01-10 09:30:00" and by_id["p01"]["birth_date"] == "1980-02-29"
    # Permission level derived from consent; viewed interactions have no source: empty.
    assert [by_id[p]["permission"] for p in by_id] == ["personal", "anonymous", "personal", "personal", "anonymous"]
    assert {row["interactions"] for row in by_id.values()} == {""}
    assert by_id["p03"]["first_name"] == 'Zoë, "Z"' and by_id["p03"]["city"] == "Line\nbreak"

    # Metadata the UI plots.
    assert outcome.profiles_available == outcome.profiles_exported == outcome.profile_rows == 5
    assert outcome.profile_file.rows == 5 and outcome.profile_file.bytes == len(data) == outcome.bytes
    assert outcome.profile_file.remote_path == "out/crm_20260115.csv" and outcome.target_uri == run.transport.uri
    assert outcome.profile_files == [outcome.profile_file] and outcome.timeline_files == [] and outcome.diff_file is None
    assert not [p for p in run.project.work_dir.rglob("*") if p.is_file()]  # personal data does not stay behind


def test_permission_level_is_the_stored_level_else_derived_from_consent(project: ProjectConfig, tmp_path: Path):
    store(project, "UPDATE profiles SET permission_level = 'do_not_track' WHERE profile_id = 'p01'")
    store(project, "UPDATE profiles SET permission_level = 'anonymous' WHERE profile_id = 'p03'")
    outcome = Runner(project, tmp_path / "remote")(make_goal(columns=[{"header": "id", "profile_id": True}, {"header": "level", "permission_level": True}]))
    written = dict(map(tuple, rows_of((tmp_path / "remote" / outcome.profile_file.remote_path).read_bytes())[1:]))
    # Expected in plain SQL: the stored level, else personal when a consent names an objective.
    expected = dict(
        store(
            project,
            "SELECT profile_id, coalesce(permission_level, CASE WHEN list_has_any(coalesce(consents, []), ['marketing', 'analytics']) "
            "THEN 'personal' ELSE 'anonymous' END) FROM profiles",
        )
    )
    assert written == {p: expected[p] for p in written} and written["p01"] == "do_not_track" and written["p03"] == "anonymous"
    assert set(written) >= {"p01", "p02", "p03"}


def test_viewed_interactions_are_the_interaction_events_of_the_profile(project: ProjectConfig, tmp_path: Path):
    """"All viewed interactions (all time)": with visit marked as an interaction type (its page
    names the interaction), the column lists each profile's distinct pages, all time; a profile
    without one has an empty cell. Expected with plain SQL over timeline_visit."""
    dump = CATALOG.model_dump(mode="json")
    dump["event_types"]["visit"]["interaction_property"] = "page"
    project.catalog = Catalog.model_validate(dump)
    store(
        project,
        "INSERT INTO timeline_visit (event_id, profile_id, event_time, page, delivery_id, imported_at) VALUES "
        "('V3', 'p01', '2020-01-01', '/cart', 'd2', now()), ('V4', 'p01', '2026-01-14', '/home', 'd2', now()), "
        "('V5', 'p02', '2026-01-14', NULL, 'd2', now())",
    )
    goal = make_goal(formula_guard=False, columns=[{"header": "id", "profile_id": True}, {"header": "seen", "viewed_interactions": True}])
    outcome = Runner(project, tmp_path / "remote")(goal)
    written = dict(map(tuple, rows_of((tmp_path / "remote" / outcome.profile_file.remote_path).read_bytes())[1:]))
    expected = dict(store(project, "SELECT profile_id, string_agg(DISTINCT page, '|' ORDER BY page) FROM timeline_visit WHERE page IS NOT NULL GROUP BY 1"))
    assert written == {p: expected.get(p) or "" for p in written}
    assert written["p01"] == "/cart|/home" and written["p03"] == "@home" and written["p02"] == ""


def test_an_interaction_property_must_be_a_property_of_its_event_type():
    dump = CATALOG.model_dump(mode="json")
    dump["event_types"]["visit"]["interaction_property"] = "dialogue"
    with pytest.raises(ValueError, match="interaction_property: 'dialogue' is not a property of 'visit'"):
        Catalog.model_validate(dump)


def test_only_profiles_with_a_value_for_a_selected_property(run: Runner):
    # p04 has neither city nor interests, p06 only an empty list: neither leaves, and neither is
    # counted as available (BlueConic's number counts profiles that can be exported).
    goal = make_goal(columns=[{"header": "id", "profile_id": True}, {"header": "city", "property": "city"}, {"header": "interests", "property": "interests"}])
    outcome = run(goal)
    data = run.read(outcome.profile_file.remote_path)
    assert_golden("at_least_one_value.csv", data)
    assert [row[0] for row in rows_of(data)[1:]] == ["p01", "p02", "p03"]
    assert outcome.profiles_available == 3 and outcome.profiles_exported == 3

    # Columns without a property (id, text): every member of the segment is exported.
    outcome = run(make_goal(name="ids", columns=[{"header": "id", "profile_id": True}, {"header": "x", "text": "1"}]))
    assert outcome.profiles_exported == 5


def test_consent_objectives_are_respected(run: Runner):
    # marketing: p01 and p04; p02 consented to nothing ([]), p06 has no consent list (NULL).
    outcome = run(make_goal(), objectives=["marketing"])
    assert [row[0] for row in rows_of(run.read(outcome.profile_file.remote_path))[1:]] == ["p01", "p04"]
    assert outcome.profiles_available == 2
    # Any of the objectives counts: p03 consented to analytics only.
    outcome = run(make_goal(name="any_objective"), objectives=["marketing", "analytics"])
    assert [row[0] for row in rows_of(run.read(outcome.profile_file.remote_path))[1:]] == ["p01", "p03", "p04"]
    # Without objectives the connection exports regardless of consent.
    assert run(make_goal(name="no_objectives")).profiles_exported == 5

    with pytest.raises(ConfigError, match="consent property 'consent_list' is not a list property"):
        run(make_goal(name="bad"), objectives=["marketing"], consent_property="consent_list")


def test_unknown_segment_or_property_is_a_config_error(run: Runner):
    with pytest.raises(ConfigError, match="segment 'vips' is not declared"):
        run(make_goal(segment="vips"))
    with pytest.raises(ConfigError, match="property 'phone' is not declared"):
        run(make_goal(columns=[{"header": "phone", "property": "phone"}]))
    with pytest.raises(ConfigError, match=r"unknown segments \['vips'\]"):
        run(make_goal(columns=[{"header": "s", "segments": ["vips"]}]))
    with pytest.raises(ConfigError, match=r"\{weekday\}"):
        run(make_goal(target={"file_name": "x_{weekday}.csv"}))
    assert not (run.root / "out").exists()


# ---------------------------------------------------------------- changed since the last export


def _timeline_only_delivery(project: ProjectConfig, profile_id: str, at: datetime) -> None:
    """A merge that adds an order to ``profile_id`` and sets no property: a timeline change alone."""
    events = pl.DataFrame(
        {"event_id": ["O9"], "_key": [profile_id], "event_time": [datetime(2026, 1, 15, 12)], "total": ["20"], "currency": ["EUR"], "channel": ["web"]}
    )
    staged = StagedImport(
        target="profiles", identifier_property="profile_id", allow_create=False, rules={},
        records=pl.DataFrame({"_key": [profile_id], "_line": [2]}), events={"order": events},
    )
    record = DeliveryRecord("d9", "shop", "orders", "orders:x", "in/orders_x.csv", [], "sha", "cfg")
    with open_writer(project.store_path, CATALOG) as conn:
        counts = merge_delivery(conn, CATALOG, staged, record, "import-run", at)
    assert counts.events_created == 1 and counts.profiles_updated == 0


def test_changed_since_last_export_over_three_runs(run: Runner, project: ProjectConfig):
    goal = make_goal(target={"file_name": "{goal}_{datetime}.csv"})
    first = run(goal, T0)
    assert_golden("changed_run1.csv", run.read(first.profile_file.remote_path))
    assert first.profiles_exported == 5

    # Between runs: p02's e-mail changes; p01 gets a new order but no property changes.
    touch(project, "p02", T0 + timedelta(hours=1), email="jan.new@example.com")
    _timeline_only_delivery(project, "p01", T0 + timedelta(hours=1))
    assert store(project, "SELECT updated_at FROM profiles WHERE profile_id = 'p01'") == [(T0 - timedelta(days=1),)]
    second = run(goal, T0 + timedelta(hours=2))
    assert_golden("changed_run2.csv", run.read(second.profile_file.remote_path))
    assert second.profiles_exported == 1 and second.profiles_available == 5

    third = run(goal, T0 + timedelta(hours=3))
    assert third.profiles_exported == 0 and third.profile_file is None  # nothing changed: no file
    assert sorted(p.name for p in (run.root / "out").iterdir()) == sorted(
        posixpath.basename(o.profile_file.remote_path) for o in (first, second)
    )
    asked = run(make_goal(target={"file_name": "{goal}_{datetime}.csv", "write_empty_files": True}), T0 + timedelta(hours=3, minutes=1))
    assert_golden("changed_run3.csv", run.read(asked.profile_file.remote_path))  # header only, on request
    assert asked.profiles_exported == 0

    full = run(goal, T0 + timedelta(hours=4), full=True)
    assert full.profiles_exported == 5
    assert store(project, "SELECT last_export_at, last_run_id FROM export_state WHERE goal = 'crm'") == [(T0 + timedelta(hours=4), "run00005abcdef")]
    exchanged = "SELECT profile_id, first_at, last_at FROM exchanged_profiles WHERE direction = 'exported' AND profile_id IN ('p01', 'p02') ORDER BY 1"
    assert store(project, exchanged) == [
        ("p01", T0, T0 + timedelta(hours=4)),
        ("p02", T0, T0 + timedelta(hours=4)),
    ]
    # changed_only: false sends every available profile each time.
    assert run(make_goal(changed_only=False), T0 + timedelta(hours=5)).profiles_exported == 5
    assert run(make_goal(changed_only=False), T0 + timedelta(hours=6)).profiles_exported == 5


# ---------------------------------------------------------------- timeline events


def test_timeline_export_one_file_per_event_and_nested_type(run: Runner):
    goal = make_goal(segment="buyers", timeline={"directory": "out/{goal}_timeline_{date}"})
    outcome = run(goal)
    paths = [f.remote_path for f in outcome.timeline_files]
    assert paths == ["out/crm_timeline_20260115/order.csv", "out/crm_timeline_20260115/order_line.csv", "out/crm_timeline_20260115/visit.csv"]
    for name in ("order.csv", "order_line.csv", "visit.csv"):
        assert_golden(f"timeline_{name}", run.read(f"out/crm_timeline_20260115/{name}"))
    # Events of exported profiles only: O4 belongs to p05, who is not a buyer.
    assert [f.rows for f in outcome.timeline_files] == [3, 3, 2]
    assert [f.kind for f in outcome.timeline_files] == ["events", "items", "events"]
    assert outcome.events_exported == 5 and outcome.bytes == outcome.profile_file.bytes + sum(f.bytes for f in outcome.timeline_files)
    # A second run the same day with nothing changed: no profile file and no header-only timeline
    # files beside the morning's; the files the partner has not fetched yet keep their rows.
    before = {name: run.read(f"out/crm_timeline_20260115/{name}") for name in ("order.csv", "order_line.csv", "visit.csv")}
    again = run(goal, T0 + timedelta(hours=2))
    assert again.profiles_exported == 0 and again.profile_file is None and again.timeline_files == []
    assert {name: run.read(f"out/crm_timeline_20260115/{name}") for name in before} == before
    assert sorted(p.name for p in (run.root / "out" / "crm_timeline_20260115").iterdir()) == sorted(before)


def test_timeline_properties_named_like_the_exports_own_columns(tmp_path: Path):
    """Event and item properties may be named like the columns the export works with internally
    (``_event_id``, ``_rank``, ``_profile_id``): the files carry the stored values under those
    headers, in event time order, and the items in their events' order."""
    catalog = Catalog.model_validate(
        {
            "profile_properties": {"email": {"type": "text"}},
            "event_types": {
                "visit": {
                    "properties": {"_event_id": {"type": "text"}, "_profile_id": {"type": "text"}},
                    "nested": {"hit": {"properties": {"_rank": {"type": "integer"}, "_event_id": {"type": "text"}}}},
                }
            },
            "segments": {"all": {"condition": "TRUE"}},
        }
    )
    project = ProjectConfig(
        config_dir=tmp_path, home=tmp_path / "home", store=StoreSettings(path="store.duckdb", published_path=None, threads=1), catalog=catalog
    )
    visits = [("V2", "p1", datetime(2026, 1, 2), "x2", "y2"), ("V1", "p1", datetime(2026, 1, 1), "x1", "y1"), ("V3", "p2", datetime(2026, 1, 3), "x3", "y3")]
    hits = [("V1", 2, 20, "h12"), ("V1", 1, 10, "h11"), ("V2", 1, 30, "h21"), ("V3", 1, 40, "h31")]
    with open_writer(project.store_path, catalog) as conn:
        conn.executemany("INSERT INTO profiles (profile_id, email, created_at, updated_at) VALUES (?, ?, ?, ?)", [["p1", "a@x", T0, T0], ["p2", "b@x", T0, T0]])
        conn.executemany('INSERT INTO timeline_visit (event_id, profile_id, event_time, "_event_id", "_profile_id") VALUES (?, ?, ?, ?, ?)', visits)
        conn.executemany('INSERT INTO timeline_visit__hit (event_id, item_index, "_rank", "_event_id") VALUES (?, ?, ?, ?)', hits)
        refresh_memberships(conn, catalog, T0)
    goal = make_goal(segment="all", columns=[{"header": "id", "profile_id": True}], timeline={"directory": "tl"})
    outcome = Runner(project, tmp_path / "remote")(goal)
    assert [f.remote_path for f in outcome.timeline_files] == ["tl/visit.csv", "tl/hit.csv"]
    by_time = sorted(visits, key=lambda v: (v[2], v[0]))
    assert rows_of((tmp_path / "remote" / "tl" / "visit.csv").read_bytes()) == [
        ["event_id", "profile_id", "event_time", "_event_id", "_profile_id"],
        *[[v[0], v[1], v[2].strftime("%Y-%m-%d %H:%M:%S"), v[3], v[4]] for v in by_time],
    ]
    rank = {v[0]: index for index, v in enumerate(by_time)}
    assert rows_of((tmp_path / "remote" / "tl" / "hit.csv").read_bytes()) == [
        ["event_id", "item_index", "_rank", "_event_id"],
        *[[h[0], str(h[1]), str(h[2]), h[3]] for h in sorted(hits, key=lambda h: (rank[h[0]], h[1]))],
    ]


def test_timeline_files_keep_their_order_over_many_vectors_and_threads(tmp_path: Path):
    """The event file is a scan of the events sorted once, and the item file sorts on the events'
    rank: over many of DuckDB's vectors (2,048 rows) and two threads the files are still in
    (event_time, event_id[, item_index]) order, as plain Python sorts the same rows."""
    catalog = Catalog.model_validate(
        {
            "profile_properties": {"email": {"type": "text"}},
            "event_types": {"order": {"properties": {"channel": {"type": "text"}}, "nested": {"line": {"properties": {"sku": {"type": "text"}}}}}},
            "segments": {"all": {"condition": "TRUE"}},
        }
    )
    project = ProjectConfig(
        config_dir=tmp_path, home=tmp_path / "home", store=StoreSettings(path="store.duckdb", published_path=None, threads=2), catalog=catalog
    )
    generator = random.Random(7)
    events = [
        (f"E{n:06d}", f"p{n % 500}", T0 - timedelta(minutes=generator.randrange(20_000)), generator.choice(["=web", "app", "-store"]))
        for n in range(30_000)
    ]
    lines = [(event[0], index, f"S{generator.randrange(1000)}") for event in events for index in range(1, generator.randrange(1, 4) + 1)]
    with open_writer(project.store_path, catalog) as conn:
        conn.execute("INSERT INTO profiles (profile_id, created_at, updated_at) SELECT 'p' || i, $t, $t FROM range(500) r(i)", {"t": T0})
        event_frame = pl.DataFrame(events, schema=["event_id", "profile_id", "event_time", "channel"], orient="row")  # noqa: F841
        line_frame = pl.DataFrame(lines, schema=["event_id", "item_index", "sku"], orient="row")  # noqa: F841
        conn.execute("INSERT INTO timeline_order (event_id, profile_id, event_time, channel) SELECT * FROM event_frame")
        conn.execute("INSERT INTO timeline_order__line (event_id, item_index, sku) SELECT * FROM line_frame")
        refresh_memberships(conn, catalog, T0)
    goal = make_goal(segment="all", columns=[{"header": "id", "profile_id": True}], timeline={"directory": "tl"})
    Runner(project, tmp_path / "remote")(goal)
    guard = lambda text: "'" + text if text[0] in "=+-@" else text  # noqa: E731
    by_time = sorted(events, key=lambda e: (e[2], e[0]))
    assert rows_of((tmp_path / "remote" / "tl" / "order.csv").read_bytes())[1:] == [
        [e[0], e[1], e[2].strftime("%Y-%m-%d %H:%M:%S"), guard(e[3])] for e in by_time
    ]
    rank = {e[0]: index for index, e in enumerate(by_time)}
    assert rows_of((tmp_path / "remote" / "tl" / "line.csv").read_bytes())[1:] == [
        [line[0], str(line[1]), line[2]] for line in sorted(lines, key=lambda line: (rank[line[0]], line[1]))
    ]


def test_timeline_export_one_type_and_a_period(run: Runner):
    since = run(make_goal(name="since", segment="buyers", changed_only=False, timeline={"event_types": ["order"], "since": "2026-01-06"}))
    assert [f.remote_path.rsplit("/", 1)[1] for f in since.timeline_files] == ["order.csv", "order_line.csv"]
    assert [f.rows for f in since.timeline_files] == [1, 1]  # O2 and its line
    assert since.timeline_files[0].remote_path.startswith("out/since_timeline_20260115/")  # the default directory

    window = run(make_goal(name="window", segment="buyers", timeline={"since": "2025-12-01", "until": "2026-01-05T10:00:00"}))
    assert [(f.remote_path.rsplit("/", 1)[1], f.rows) for f in window.timeline_files] == [
        ("order.csv", 1), ("order_line.csv", 0), ("visit.csv", 2),  # until is exclusive: O1 at 10:00 is out
    ]
    # No event in the period: no header-only files, unless the goal asks for empty files.
    nothing = run(make_goal(name="nothing", segment="buyers", changed_only=False, timeline={"since": "2030-01-01"}))
    assert nothing.timeline_files == [] and not (run.root / "out" / "nothing_timeline_20260115").exists()
    asked = run(make_goal(name="asked", segment="buyers", changed_only=False, timeline={"since": "2030-01-01"}, target={"write_empty_files": True}))
    assert [(f.remote_path.rsplit("/", 1)[1], f.rows) for f in asked.timeline_files] == [("order.csv", 0), ("order_line.csv", 0), ("visit.csv", 0)]
    assert run.read(asked.timeline_files[0].remote_path).splitlines()[0].startswith(b"event_id,profile_id,event_time")
    recent = run(make_goal(name="recent", segment="buyers", timeline={"event_types": ["order"], "last_days": 10}), T0)
    assert [f.rows for f in recent.timeline_files] == [2, 3]  # since 2026-01-05 06:00: O1 and O2

    with pytest.raises(ConfigError, match=r"timeline.event_types \['click'\]"):
        run(make_goal(name="bad", timeline={"event_types": ["click"]}))
    with pytest.raises(ConfigError, match="timeline.since 'yesterday'"):
        run(make_goal(name="bad", timeline={"since": "yesterday"}))


def test_timeline_files_match_plain_python_order_and_text(run: Runner, project: ProjectConfig):
    """Many events with equal times, items stored out of order, formula-like and non-ASCII text,
    and decimals of every shape: the files are the rows plain Python sorts by (event_time,
    event_id[, item_index]) and formats (trailing zeros trimmed, '-prefix on text that starts
    like a formula, never on numbers)."""
    texts = ["web", "=1+1", "+31", "-x", "@a", "\tt", "\rr", "é=", "😀", "", "a,b", 'q"q', None]
    prices = ["0", "100", "-0.5", "12345678901234.5678", "0.0001", "-100", "19.99", None]
    shuffle = random.Random(15)
    times = [datetime(2026, 1, d, h, 0, 0) for d in (3, 4) for h in (8, 9)]
    orders = [(f"E{n:03d}", times[n % len(times)], prices[n % len(prices)], texts[n % len(texts)]) for n in range(60)]
    lines = [(event_id, index, texts[(n + index) % len(texts)], (n % 5) - 2, prices[(n + index) % len(prices)])
             for n, (event_id, *_) in enumerate(orders) for index in range(1, 1 + n % 4)]
    shuffle.shuffle(orders)
    shuffle.shuffle(lines)
    store(project, "DELETE FROM timeline_order")
    store(project, "DELETE FROM timeline_order__order_line")
    with duckdb.connect(str(project.store_path)) as conn:
        conn.executemany(
            "INSERT INTO timeline_order (event_id, profile_id, event_time, total, currency, channel, delivery_id, imported_at) "
            "VALUES (?, 'p01', ?, ?, 'EUR', ?, 'd1', ?)",
            [[*row, T0] for row in orders],
        )
        conn.executemany(
            "INSERT INTO timeline_order__order_line (event_id, item_index, product_name, quantity, unit_price) VALUES (?, ?, ?, ?, ?)", lines
        )

    def text(value: str | None) -> str:
        return "" if value is None else ("'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value)

    def number(value: str | None) -> str:
        if value is None:
            return ""
        trimmed = str(Decimal(value).quantize(Decimal("0.0001"))).rstrip("0")
        return trimmed + "0" if trimmed.endswith(".") else trimmed

    outcome = run(make_goal(segment="buyers", timeline={"event_types": ["order"], "directory": "out/t"}))
    assert [f.rows for f in outcome.timeline_files] == [len(orders), len(lines)]
    by_event = {event_id: time for event_id, time, *_ in orders}
    expected_orders = [
        [event_id, "p01", time.strftime("%Y-%m-%d %H:%M:%S"), number(total), "EUR", text(channel)]
        for event_id, time, total, channel in sorted(orders, key=lambda o: (o[1], o[0]))
    ]
    assert rows_of(run.read("out/t/order.csv"))[1:] == expected_orders
    expected_lines = [
        [event_id, str(index), "", text(name), str(quantity), number(price)]
        for event_id, index, name, quantity, price in sorted(lines, key=lambda line: (by_event[line[0]], line[0], line[1]))
    ]
    assert rows_of(run.read("out/t/order_line.csv"))[1:] == expected_lines


# ---------------------------------------------------------------- spreadsheet safety


ATTACKS = [
    ("a1", "=HYPERLINK(\"http://evil\",\"x\")", ["=cmd|' /C calc'!A0", "ok"], "-5", -5),
    ("a2", "+31 6 1234", ["ok", "=not_first"], "-5.5", -7),
    ("a3", "-2+3", None, "1e3", 12),
    ("a4", "@SUM(A1:A9)", ["@x"], "0", 0),
    ("a5", "\tTabbed", ["\tt"], "3", 1),
    ("a6", "\rReturn", None, "-0.0001", -1),
    ("a7", "plain, \"quoted\"", ["plain"], "10", 10),
    ("a8", "-5", None, None, None),
]


@pytest.mark.parametrize("guard", [True, False], ids=["guard_on", "guard_off"])
def test_formula_guard(project: ProjectConfig, tmp_path: Path, guard: bool):
    store(project, "DELETE FROM profiles")
    with duckdb.connect(str(project.store_path)) as conn:
        conn.executemany(
            "INSERT INTO profiles (profile_id, first_name, interests, lifetime_value, order_count, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[*row, T0, T0] for row in ATTACKS],
        )
        conn.execute("UPDATE timeline_visit SET profile_id = 'a1', page = '=1+1'")
        conn.execute("UPDATE timeline_order SET profile_id = 'a2', currency = '+EUR', total = -5")
    goal = make_goal(
        formula_guard=guard,
        columns=[
            {"header": "id", "profile_id": True},
            {"header": "first_name", "property": "first_name"},
            {"header": "interests", "property": "interests"},
            {"header": "lifetime_value", "property": "lifetime_value"},
            {"header": "order_count", "property": "order_count"},
            {"header": "constant", "text": "=1+1"},
        ],
        timeline={"directory": "out/t"},
    )
    run = Runner(project, tmp_path / "remote")
    outcome = run(goal)
    data = run.read(outcome.profile_file.remote_path)
    assert_golden(f"formula_{'on' if guard else 'off'}.csv", data)
    rows = {row[0]: row for row in rows_of(data)[1:]}
    if guard:
        for profile_id, name, *_ in ATTACKS:
            assert rows[profile_id][1].startswith("'") == (name[0] in "=+-@\t\r"), profile_id
        assert rows["a8"][1] == "'-5"  # text that looks like a number is still text
        assert rows["a1"][2] == "'=cmd|' /C calc'!A0|ok" and rows["a2"][2] == "ok|=not_first"  # the cell's first character counts
        assert rows["a1"][5] == "'=1+1"
    # Numbers in typed columns are data, never touched: -5, -5.5, -0.0001, -7.
    assert (rows["a1"][3], rows["a1"][4], rows["a2"][3], rows["a6"][3]) == ("-5.0", "-5", "-5.5", "-0.0001")
    assert_golden(f"formula_{'on' if guard else 'off'}_visit.csv", run.read("out/t/visit.csv"))
    order = rows_of(run.read("out/t/order.csv"))
    assert {(r[4], r[3]) for r in order[1:]} == {("'+EUR" if guard else "+EUR", "-5.0")}


# ---------------------------------------------------------------- file and field handling


def test_split_into_parts_and_gzip(run: Runner):
    whole = run(make_goal(name="whole", columns=ALL_KINDS))
    expected = rows_of(run.read(whole.profile_file.remote_path))

    outcome = run(make_goal(name="split", columns=ALL_KINDS, target={"split_rows": 2, "gzip": True, "manifest": True}))
    names = [f.remote_path for f in outcome.profile_files]
    assert names == ["out/split_20260115_part001.csv.gz", "out/split_20260115_part002.csv.gz", "out/split_20260115_part003.csv.gz"]
    assert outcome.profile_file == outcome.profile_files[0] and [f.rows for f in outcome.profile_files] == [2, 2, 1]
    parts = [rows_of(gzip.decompress(run.read(name))) for name in names]
    assert all(part[0] == expected[0] for part in parts)  # every part has the header
    assert [row for part in parts for row in part[1:]] == expected[1:]  # same rows, same order
    assert_golden("split_part002.csv", gzip.decompress(run.read(names[1])))
    manifest = json.loads(run.read(names[2] + ".manifest.json"))
    assert manifest == {
        "file": "split_20260115_part003.csv.gz", "rows": 1, "bytes": outcome.profile_files[2].bytes,
        "sha256": outcome.profile_files[2].sha256, "goal": "split", "run_id": "run00002abcdef",
    }
    assert outcome.manifests == [n + ".manifest.json" for n in names]
    assert not [p for p in run.root.rglob("*.part")]

    # Nothing changed: no file unless the goal asks for one; then one header-only part, so a
    # consumer still sees the run.
    quiet = run(make_goal(name="split", columns=ALL_KINDS, target={"split_rows": 2, "gzip": True}), T0 + timedelta(days=1))
    assert quiet.profile_files == [] and not list((run.root / "out").glob("split_20260116*"))
    again = run(
        make_goal(name="split", columns=ALL_KINDS, target={"split_rows": 2, "gzip": True, "write_empty_files": True}), T0 + timedelta(days=1)
    )
    assert [(f.remote_path, f.rows) for f in again.profile_files] == [("out/split_20260116_part001.csv.gz", 0)]


def test_part_names():
    assert exporting.part_names("x.csv", 2) == ["x_part001.csv", "x_part002.csv"]
    assert exporting.part_names("x.tsv.gz", 1) == ["x_part001.tsv.gz"]
    assert exporting.part_names("noext", 1) == ["noext_part001"]
    assert exporting.part_names("x.csv", 1000)[-1] == "x_part1000.csv"
    assert exporting.part_names("x.csv", 1000)[0] == "x_part0001.csv"  # names sort in part order
    assert exporting.diff_name("x.csv.gz") == "x.diff.csv.gz"


def test_file_and_field_handling(run: Runner):
    goal = make_goal(
        name="legacy",
        segment="buyers",
        csv={"delimiter": ";", "quote_char": "'", "has_header": False, "line_ending": "crlf", "encoding": "cp1252"},
        target={"file_name": "{segment}-{goal}-{date}-{time}-{datetime}-{run_id}.txt"},
    )
    outcome = run(goal, datetime(2026, 1, 15, 7, 8, 9))
    assert outcome.profile_file.remote_path == "out/buyers-legacy-20260115-070809-20260115T070809-run00001.txt"
    data = run.read(outcome.profile_file.remote_path)
    assert_golden("legacy_cp1252.txt", data)
    assert data.count(b"\r\n") == 3 and "Zoë".encode("cp1252") in data  # no header; the quoted line break is one LF

    # gzip after re-encoding: the Python path, deterministic bytes (no name, no time in the header).
    zipped = run(make_goal(name="legacy_gz", segment="buyers", csv={"encoding": "utf-8-sig"}, target={"gzip": True}))
    plain = gzip.decompress(run.read(zipped.profile_file.remote_path))
    assert plain.startswith(b"\xef\xbb\xbfid,email,first_name\n")
    assert run.read(zipped.profile_file.remote_path)[4:8] == b"\0\0\0\0"  # mtime 0


def test_unquoted_or_unencodable_values_fail_without_leaking_them(run: Runner):
    with pytest.raises(ConfigError, match=r"quote_char is off, but cells of 'first_name' \(1 rows\)") as caught:
        run(make_goal(csv={"quote_char": None}))
    assert "Zoë" not in str(caught.value)
    with pytest.raises(CdpError, match=r"U\+00EB .* encoding 'ascii'") as caught:
        run(make_goal(name="ascii", csv={"encoding": "ascii"}))
    assert "Zoë" not in str(caught.value)
    assert not (run.root / "out").exists()


# ---------------------------------------------------------------- data processors


PROCESSOR_PROFILES = [
    ("q1", " Anna@GMIAL.con ", "  Ann  ", "kraków", "a"),
    ("q2", "x@hotmial.com", "\u00a0Bob\u3000", "null", "q"),
    ("q3", "bad-no-at ", "N/A", "-", None),
    ("q4", "   ", "Cy", "Unknown", "a"),
    ("q5", None, "Di", None, "b"),
    ("q6", "ok@Example.COM", "", " Gdańsk ", "a"),
]
PROCESSOR_COLUMNS = [
    {"header": "id", "profile_id": True},
    {"header": "email", "property": "email"},
    {"header": "email_hash", "property": "email"},
    {"header": "first_name", "property": "first_name"},
    {"header": "city", "property": "city"},
    {"header": "tier", "property": "interests"},
    {"header": "tier_default", "property": "interests"},
    {"header": "tier_empty", "property": "interests"},
    {"header": "full", "text": ""},
    {"header": "source", "text": ""},
    {"header": "tag", "text": "MiXeD"},
    {"header": "day", "text": ""},
    {"header": "moment", "text": ""},
]
PROCESSORS = [
    {"type": "pseudonymize", "columns": ["email_hash"], "salt_env": "CDP_TEST_EXPORT_SALT"},
    {"type": "normalize_email", "columns": ["email"]},
    {"type": "trim", "columns": ["first_name"]},
    {"type": "remove_null_strings", "columns": ["first_name", "city"], "tokens": ["unknown"]},
    {"type": "trim", "columns": ["city"]},
    {"type": "uppercase", "columns": ["city"]},
    {"type": "lowercase", "columns": ["tag"]},
    {"type": "map_values", "column": "city", "mapping": {"KRAKÓW": "KRK"}},
    {"type": "map_values", "column": "tier", "mapping": {"a": "gold"}, "unmapped": "keep"},
    {"type": "map_values", "column": "tier_default", "mapping": {"a": "gold"}, "unmapped": "default", "default": "other"},
    {"type": "map_values", "column": "tier_empty", "mapping": {"a": "gold"}, "unmapped": "empty"},
    {"type": "concatenate", "columns": ["first_name", "city"], "target": "full", "separator": " / "},
    {"type": "fixed_value", "column": "source", "value": "crm"},
    {"type": "current_date", "column": "day"},
    {"type": "current_date", "column": "moment", "with_time": True},
    {"type": "filter_rows", "column": "email", "pattern": "@", "keep_matching": True},
    {"type": "drop_empty", "columns": ["first_name"]},
]


def _processor_store(project: ProjectConfig) -> None:
    store(project, "DELETE FROM profiles")
    with duckdb.connect(str(project.store_path)) as conn:
        conn.executemany(
            "INSERT INTO profiles (profile_id, email, first_name, city, interests, created_at, updated_at) VALUES (?, ?, ?, ?, [?], ?, ?)",
            [[*row, T0, T0] for row in PROCESSOR_PROFILES],
        )


def test_processors_in_sql_give_the_import_processors_results(project: ProjectConfig, tmp_path: Path, monkeypatch):
    """The SQL chain and the import's Polars chain (tables/processors.py), run over the same rows,
    write byte-identical files; pseudonymize gives the import's digest."""
    monkeypatch.setenv("CDP_TEST_EXPORT_SALT", "pepper")
    monkeypatch.setattr(export_rows, "POLARS_BATCH_ROWS", 2)  # several batches on the Polars path
    _processor_store(project)
    goal = make_goal(columns=PROCESSOR_COLUMNS, processors=PROCESSORS, formula_guard=False)
    files = {}
    with open_writer(project.store_path, CATALOG) as conn:
        refresh_memberships(conn, CATALOG, T0)
        store_exports.select_profiles(conn, CATALOG, "shop", goal, full=True, consent_property="consents", objectives=[])
        for engine in ("sql", "polars"):
            rows = store_exports.build_export_rows(
                conn, CATALOG, goal, run_time=T0, consent_property="consents", include_unchanged=False, use_polars=engine == "polars"
            )
            files[engine] = tmp_path / f"{engine}.csv"
            store_exports.write_profile_parts(conn, goal, files[engine])
            assert rows == 2
    assert files["sql"].read_bytes() == files["polars"].read_bytes()
    assert_golden("processors.csv", files["sql"].read_bytes())
    out = {row[0]: dict(zip(rows_of(files["sql"].read_bytes())[0], row, strict=False)) for row in rows_of(files["sql"].read_bytes())[1:]}
    assert out["q1"]["email"] == "anna@gmail.com" and out["q2"]["email"] == "x@hotmail.com"
    assert out["q1"]["city"] == "KRK" and out["q2"]["city"] == "" and out["q2"]["full"] == "Bob"
    assert out["q1"]["day"] == "2026-01-15" and out["q1"]["moment"] == "2026-01-15 06:00:00"
    # filter_rows drops q3 (no '@'), q4 (blank e-mail, normalised to empty) and q5 (none);
    # drop_empty drops q6, whose first name is empty.
    assert set(out) == {"q1", "q2"}
    imported = apply_processors(
        pl.DataFrame({"email_hash": [row[1] for row in PROCESSOR_PROFILES]}).lazy(),
        [Pseudonymize(type="pseudonymize", columns=["email_hash"], salt_env="CDP_TEST_EXPORT_SALT")],
        display_name="import.csv", run_time=T0,
    ).collect()["email_hash"].to_list()
    assert (out["q1"]["email_hash"], out["q2"]["email_hash"]) == (imported[0], imported[1])


def test_custom_processor_runs_over_batches(project: ProjectConfig, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(export_rows, "POLARS_BATCH_ROWS", 2)
    goal = make_goal(
        columns=[{"header": "id", "profile_id": True}, {"header": "first_name", "property": "first_name"}, {"header": "score", "text": ""}],
        processors=[
            {"type": "custom", "function": "cdp_pipeline_tests.tables.custom_processor_example:add_score", "options": {"points": 7}},
            {"type": "uppercase", "columns": ["first_name"]},
        ],
    )
    run = Runner(project, tmp_path / "remote")
    rows = rows_of(run.read(run(goal).profile_file.remote_path))
    assert rows == [["id", "first_name", "score"], ["p01", "ANNA", "7"], ["p02", "JAN", "7"], ["p03", 'ZOË, "Z"', "7"], ["p06", "ED", "7"]]


def test_processor_naming_an_unknown_column(run: Runner):
    with pytest.raises(ConfigError, match=r"processors.0 \(trim\) names column 'name'"):
        run(make_goal(processors=[{"type": "trim", "columns": ["name"]}]))


# ---------------------------------------------------------------- diff mode


def test_diff_mode(run: Runner, project: ProjectConfig):
    goal = make_goal(
        diff=True,
        columns=[
            {"header": "id", "profile_id": True},
            {"header": "email", "property": "email"},
            {"header": "first_name", "property": "first_name"},
            {"header": "segments", "segments": "all"},
        ],
    )
    first = run(goal, T0)
    assert first.diff_file is not None and first.diff_file.remote_path == "out/crm_20260115.diff.csv"
    assert first.diff_counts == {"added": 5, "changed": 0, "removed": 0}
    assert store(project, "SELECT count(*) FROM export_snapshots WHERE goal = 'crm'") == [(5,)]

    # p02 changes its e-mail, p03 its segments (content changes without updated_at moving),
    # p06 loses its only value (removed), p05 becomes known (added), p01 and p04 stay as they were.
    at = T0 + timedelta(hours=1)
    touch(project, "p02", at, email="jan.new@example.com")
    touch(project, "p06", at, first_name=None)
    touch(project, "p05", at, first_name="Eve")
    store(project, "UPDATE profiles SET order_count = 0 WHERE profile_id = 'p03'")
    second = run(goal, T0 + timedelta(hours=2))
    data = run.read(second.diff_file.remote_path)
    assert_golden("diff_run2.diff.csv", data)
    assert rows_of(data) == [
        ["change", "id", "email", "first_name", "segments"],
        ["changed", "p02", "jan.new@example.com", "Jan", "buyers|known"],
        ["changed", "p03", "", 'Zoë, "Z"', "known"],
        ["added", "p05", "", "Eve", "buyers|known"],
        ["removed", "p06", "", "", ""],
    ]
    assert second.diff_counts == {"added": 1, "changed": 2, "removed": 1}
    assert second.profiles_exported == 2  # the profile file still follows "changed since": p02, p05
    assert store(project, "SELECT count(*) FROM export_snapshots WHERE goal = 'crm'") == [(5,)]

    third = run(goal, T0 + timedelta(hours=3))
    assert third.diff_file is None and third.profile_file is None  # nothing changed: nothing sent
    asked = run(goal.model_copy(update={"target": goal.target.model_copy(update={"write_empty_files": True})}), T0 + timedelta(hours=3))
    assert rows_of(run.read(asked.diff_file.remote_path)) == [["change", "id", "email", "first_name", "segments"]]

    with pytest.raises(ConfigError, match="diff mode needs a profile identifier column"):
        run(make_goal(name="nodiffkey", diff=True, columns=[{"header": "email", "property": "email"}]))


# ---------------------------------------------------------------- encryption


@pytest.fixture
def partner_keyring(pgp_keys) -> Callable[[], PgpKeyring]:
    return lambda: PgpKeyring(public_key=pgp_keys.partner.public_key, public_key_fingerprint=pgp_keys.partner.fingerprint)


def test_encrypted_round_trip(run: Runner, tmp_path: Path, gpg_cli, partner_keyring):
    goal = make_goal(segment="buyers", columns=ALL_KINDS, timeline={"directory": "out/t"})
    plain = run(goal, full=True)
    plain_files = {f.remote_path: run.read(f.remote_path) for f in plain.files}
    encrypted_goal = make_goal(segment="buyers", columns=ALL_KINDS, timeline={"directory": "out/t"}, target={"encrypt": True, "manifest": True})
    sealed = run(encrypted_goal, full=True, keyring_factory=partner_keyring)
    assert [f.remote_path for f in sealed.files] == [path + ".pgp" for path in plain_files]
    for exported in sealed.files:
        ciphertext = run.read(exported.remote_path)
        assert b"Anna" not in ciphertext and exported.bytes == len(ciphertext)
        decrypted = gpg_cli.decrypt(run.root / exported.remote_path, tmp_path / "clear.csv", passphrase=None).read_bytes()
        assert decrypted == plain_files[exported.remote_path.removesuffix(".pgp")]
        manifest = json.loads(run.read(exported.remote_path + ".manifest.json"))
        assert manifest["file"] == exported.remote_path.rsplit("/", 1)[1] and manifest["sha256"] == exported.sha256
    on_remote = sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*") if p.is_file())
    assert on_remote == sorted([*plain_files, *(f.remote_path for f in sealed.files), *sealed.manifests])  # no plaintext, no .part


@pytest.mark.parametrize("key", ["expired", "revoked", "wrong_fingerprint", "none"])
def test_bad_key_uploads_nothing(run: Runner, project: ProjectConfig, pgp_keys, key: str):
    goal = make_goal(segment="buyers", timeline={"directory": "out/t"}, target={"encrypt": True, "manifest": True})
    factory = {
        "expired": lambda: PgpKeyring(public_key=pgp_keys.expired.public_key, public_key_fingerprint=pgp_keys.expired.fingerprint),
        "revoked": lambda: PgpKeyring(public_key=pgp_keys.revoked.public_key, public_key_fingerprint=pgp_keys.revoked.fingerprint),
        "wrong_fingerprint": lambda: PgpKeyring(public_key=pgp_keys.stranger.public_key, public_key_fingerprint=pgp_keys.partner.fingerprint),
        "none": None,
    }[key]
    with pytest.raises(CryptoError, match="Nothing was uploaded") as caught:
        run(goal, keyring_factory=factory)
    assert "out/crm_20260115.csv.pgp" in str(caught.value)
    assert not run.root.exists() or not [p for p in run.root.rglob("*") if p.is_file()]  # no file, no .part, no plaintext
    assert not [p for p in run.project.work_dir.rglob("*") if p.is_file()]
    assert store(project, "SELECT count(*) FROM export_state") == [(0,)]
    # The state did not move: the next (plain) run still sends every profile.
    assert run(make_goal(segment="buyers")).profiles_exported == 3


def test_failed_upload_leaves_no_part_and_keeps_the_state(run: Runner, project: ProjectConfig):
    run.root.mkdir()
    (run.root / "out").write_text("a file where the directory should be")
    with pytest.raises(TransportError, match=r"upload of file://.*/out/crm_20260115.csv failed.*next run sends every file again"):
        run(make_goal())
    assert sorted(p.name for p in run.root.iterdir()) == ["out"]
    assert store(project, "SELECT count(*) FROM export_state") == [(0,)]


# ---------------------------------------------------------------- real SFTP and S3 servers


def test_export_to_sftp(run: Runner, sshd_server, tmp_path: Path):
    from cdp_pipeline.transports.sftp import SftpTransport

    settings = sshd_server.settings("password")
    directory = sshd_server.fresh_directory("password", "exports")
    local = run(make_goal(name="local", columns=ALL_KINDS, segment="buyers", timeline={"directory": "out/t"}), full=True)
    goal = make_goal(
        columns=ALL_KINDS, segment="buyers", target={"directory": directory, "split_rows": 2, "manifest": True}, timeline={"directory": f"{directory}/t"}
    )
    with SftpTransport(settings.location, settings.secrets) as transport:
        outcome = run(goal, transport=transport, full=True)
        assert outcome.target_uri == transport.uri
    served = [sshd_server.server_path("password", f.remote_path) for f in outcome.files]
    assert [p.name for p in served] == ["crm_20260115_part001.csv", "crm_20260115_part002.csv", "order.csv", "order_line.csv", "visit.csv"]
    assert served[2].read_bytes() == run.read("out/t/order.csv")
    parts = [rows_of(p.read_bytes()) for p in served[:2]]
    assert parts[0][1:] + parts[1][1:] == rows_of(run.read(local.profile_file.remote_path))[1:]
    assert sorted(p.name for p in served[0].parent.iterdir()) == sorted(
        [p.name for p in served[:2]] + [p.name + ".manifest.json" for p in served[:2]] + ["t"]
    )  # no .part left behind

    # A directory the account may not write to: a named error, nothing left behind.
    locked = sshd_server.server_path("password", f"{directory}/locked")
    locked.mkdir(mode=0o755)  # owned by root, not by the test user
    with SftpTransport(settings.location, settings.secrets) as transport, pytest.raises(TransportError, match=f"{directory}/locked/crm_20260115.csv") as caught:
        run(make_goal(target={"directory": f"{directory}/locked"}), transport=transport, full=True)
    assert "permission denied" in str(caught.value) and list(locked.iterdir()) == []


def test_export_to_s3(run: Runner, s3_bucket):
    from cdp_pipeline.transports.s3 import S3Transport

    local = run(make_goal(name="local", segment="buyers", columns=ALL_KINDS, target={"gzip": True}), full=True)
    goal = make_goal(segment="buyers", columns=ALL_KINDS, diff=True, target={"directory": "exports", "gzip": True, "manifest": True})
    with S3Transport.from_environment(s3_bucket.location) as transport:
        outcome = run(goal, transport=transport, full=True)
    assert sorted(s3_bucket.keys()) == sorted(
        [
            "exports/crm_20260115.csv.gz",
            "exports/crm_20260115.csv.gz.manifest.json",
            "exports/crm_20260115.diff.csv.gz",
            "exports/crm_20260115.diff.csv.gz.manifest.json",
        ]
    )
    assert gzip.decompress(s3_bucket.get("exports/crm_20260115.csv.gz")) == gzip.decompress(run.read(local.profile_file.remote_path))
    assert outcome.diff_counts == {"added": 3, "changed": 0, "removed": 0}
    assert outcome.target_uri.startswith("s3://")


# ---------------------------------------------------------------- a delivered file is never replaced


def test_second_export_of_the_day_never_replaces_the_first(run: Runner, project: ProjectConfig):
    goal = make_goal(target={"manifest": True})
    first = run(goal, T0, full=True)
    delivered = run.read(first.profile_file.remote_path)
    assert first.profile_file.remote_path == "out/crm_20260115.csv" and first.profiles_exported == 5

    touch(project, "p02", T0 + timedelta(hours=1), email="jan.new@example.com")
    second = run(goal, T0 + timedelta(hours=2))
    # The morning's file is byte for byte what was delivered; the new run went to the next number.
    assert run.read("out/crm_20260115.csv") == delivered
    assert second.profile_file.remote_path == "out/crm_20260115_2.csv" and second.manifests == ["out/crm_20260115_2.csv.manifest.json"]
    assert rows_of(run.read(second.profile_file.remote_path))[1:] == [["p02", "jan.new@example.com", "Jan"]]
    assert json.loads(run.read("out/crm_20260115_2.csv.manifest.json"))["file"] == "crm_20260115_2.csv"

    # Nothing changed since: no third file, nothing touched.
    third = run(goal, T0 + timedelta(hours=3))
    assert third.profile_file is None
    assert sorted(p.name for p in (run.root / "out").iterdir()) == [
        "crm_20260115.csv", "crm_20260115.csv.manifest.json", "crm_20260115_2.csv", "crm_20260115_2.csv.manifest.json",
    ]


def test_existing_file_refused_when_the_goal_says_fail(run: Runner, project: ProjectConfig):
    goal = make_goal(target={"on_existing_file": "fail"})
    first = run(goal, T0, full=True)
    delivered = run.read(first.profile_file.remote_path)
    with pytest.raises(ExportCollisionError, match=r"crm_20260115.csv already exists .*on_existing_file"):
        run(goal, T0 + timedelta(hours=1), full=True)
    assert run.read("out/crm_20260115.csv") == delivered
    assert [p.name for p in (run.root / "out").iterdir()] == ["crm_20260115.csv"]
    # The failed run did not advance the export state: the next run (with a free name) sends the profiles.
    renamed = run(make_goal(target={"on_existing_file": "fail", "file_name": "{goal}_{datetime}.csv"}), T0 + timedelta(hours=2))
    assert renamed.profiles_exported == 0  # changed-only after the full first run: nothing changed


def test_numbered_names_keep_every_extension():
    assert exporting.numbered_name("out/x.csv", 2) == "out/x_2.csv"
    assert exporting.numbered_name("out/x.csv.gz.pgp", 3) == "out/x_3.csv.gz.pgp"
    assert exporting.numbered_name("x_part001.tsv.gz", 2) == "x_part001_2.tsv.gz"
    assert exporting.numbered_name("dir.d/noext", 2) == "dir.d/noext_2"
