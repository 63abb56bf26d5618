"""SARE `.import` sidecars: the seed's own example (004_*.txt, copied below), its defaults, the
malformed variants (BOM, NUL byte, missing sidecar, invalid JSON, unknown overwrite ...), the
translation into our goal model, and whole pairs run through build_import_tables → merge_delivery
into a real DuckDB file."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.config.loading import StoreFile, _check_references
from cdp_pipeline.dialects import Dialect, SareSettings
from cdp_pipeline.dialects.sare import (
    OVERWRITE_RULES,
    SareConsent,
    SareCsv,
    SareFields,
    SareScripts,
    SareSidecar,
    apply_store_actions,
    check_data_file,
    pair_files,
    parse_sarescript,
    parse_sidecar,
    resolve_duplicates,
    sare_goal,
    scan_sare_deliveries,
    stage_sare_pair,
)
from cdp_pipeline.errors import InputError
from cdp_pipeline.store.database import open_writer
from cdp_pipeline.store.merge import DeliveryRecord, merge_delivery
from cdp_pipeline.transports.base import RemoteFile
from cdp_pipeline_tests.dialects import broken_anchors, key_table_problems

EXAMPLES = Path(__file__).resolve().parents[2] / "cdp_pipeline" / "demo" / "examples"
CATALOG = StoreFile.model_validate(yaml.safe_load((EXAMPLES / "store_sare_netmera.yaml").read_text())).catalog
SETTINGS: SareSettings = TypeAdapter(Dialect).validate_python(yaml.safe_load((EXAMPLES / "sare_connection.yaml").read_text())["dialect"])

# The seed's "Przykład pliku importu", verbatim.
SEED_SIDECAR = """{
  "import": true,
  "system": "sare",
  "group": 45,
  "overwrite": 2,
  "status": 8,
  "fields": {
    "map": {
      "email": "email",
      "cechaNaglowek": "cecha7",
      "foreignKey": "cecha6"
    },
    "foreign_key": "cecha6"
  },
  "csv": {
    "delimiter": ";"
  },
  "duplicates_handling": "skip",
  "checkSpamtrap": false,
  "add_blocked_addresses_to_group": false,
  "sarescript": {
    "before": "<!--sare sare_group_clear(45); sare-->"
  }
}
"""
# The seed describes the csv (header row first, the map's header names) without an example; this
# one uses exactly the header names of the seed's fields.map.
SEED_CSV = "email;cechaNaglowek;foreignKey\nJan.Kowalski@Example.com;wartość A;K-001\nanna@example.com;wartość B;K-002\nduplikat@example.com;wartość C;K-003\n"
NOW = datetime(2026, 3, 2, 10, 0)


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _sidecar(tmp_path: Path, data: dict | str | bytes, name: str = "exemple.import") -> SareSidecar:
    text = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return parse_sidecar(_write(tmp_path, name, text), f"/in/import/{name}")


def _stage(tmp_path: Path, sidecar: dict | str, csv_text: str | bytes, settings: SareSettings = SETTINGS, **kwargs):
    text = sidecar if isinstance(sidecar, (str, bytes)) else json.dumps(sidecar)
    return stage_sare_pair(
        _write(tmp_path, "exemple.import", text), _write(tmp_path, "exemple.csv", csv_text),
        sidecar_display="/in/import/exemple.import", data_display="/in/import/exemple.csv",
        catalog=CATALOG, settings=settings, run_time=NOW, **kwargs,
    )


def _merge(conn, staging, n: int) -> None:
    """What merge_staged does for a SARE pair (the lead's wiring), with the actions around the merge."""
    staged = resolve_duplicates(conn, staging.staged, staging.actions, "/in/import/exemple.csv")
    apply_store_actions(conn, CATALOG, staging.actions, staged, phase="before", now=NOW)
    record = DeliveryRecord(f"d{n}", "sare_sftp", "sare_import", "sare_import:exemple.csv", "/in/import/exemple.csv", [], f"sha{n}", "cfg")
    merge_delivery(conn, CATALOG, staged, record, "run", NOW)
    apply_store_actions(conn, CATALOG, staging.actions, staged, phase="after", now=NOW)


def _insert(conn, profile_id: str, **values) -> None:
    columns = ", ".join(["profile_id", "created_at", "updated_at", *values])
    marks = ", ".join(["?"] * (len(values) + 3))
    conn.execute(f"INSERT INTO profiles ({columns}) VALUES ({marks})", [profile_id, NOW, NOW, *values.values()])


def _profile(conn, where: str, *columns: str) -> tuple:
    return conn.execute(f"SELECT {', '.join(columns)} FROM profiles WHERE {where}").fetchone()


# --------------------------------------------------------------------------- the sidecar


def test_seed_example_parses_with_every_value(tmp_path):
    sidecar = _sidecar(tmp_path, SEED_SIDECAR)
    assert sidecar.import_enabled and sidecar.system == "sare" and sidecar.group == 45
    assert (sidecar.overwrite, sidecar.status) == (2, 8)
    assert sidecar.fields.map == {"email": "email", "cechaNaglowek": "cecha7", "foreignKey": "cecha6"}
    assert sidecar.fields.foreign_key == "cecha6"
    assert sidecar.csv.delimiter == ";" and sidecar.duplicates == "skip"
    assert not sidecar.check_spamtrap and not sidecar.add_blocked_addresses_to_group
    assert sidecar.sarescript.before == "<!--sare sare_group_clear(45); sare-->"


def test_defaults_are_the_seeds(tmp_path):
    sidecar = _sidecar(tmp_path, {"import": True})
    assert (sidecar.system, sidecar.group, sidecar.overwrite, sidecar.status, sidecar.mail_type) == ("sare", 0, 4, 8, "text,HTML")
    assert (sidecar.csv.delimiter, sidecar.csv.enclosure, sidecar.csv.escape) == (";", '"', "\\")
    assert (sidecar.autodelete, sidecar.encrypted, sidecar.check_spamtrap, sidecar.add_blocked_addresses_to_group) == (0, False, False, False)
    assert sidecar.duplicates_handling == "default" and sidecar.duplicates == "all"
    assert sidecar.consent is None and sidecar.fields.foreign_key is None


def test_invalid_json_names_file_line_and_column(tmp_path):
    broken = SEED_SIDECAR.replace('"group": 45,', '"group": 45')
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, broken)
    text = str(caught.value)
    assert "/in/import/exemple.import line 5" in text and "not valid JSON" in text and "column 3" in text


def test_unknown_overwrite_names_key_line_and_allowed_values(tmp_path):
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, SEED_SIDECAR.replace('"overwrite": 2', '"overwrite": 7'))
    problem = caught.value.problems[0]
    assert problem.line == 5 and "key overwrite: unknown overwrite 7" in problem.reason
    assert "0 (do not import)" in problem.reason and "5 (overwrite imported data, clear properties not imported)" in problem.reason


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"import": True, "overwrite": "4"}, "overwrite must be a whole number written without quotes"),
        ({"import": True, "status": 1}, "unknown status 1; allowed: 2 (unsubscribed manually)"),
        ({"import": True, "mail_type": "HTML"}, 'unknown mail_type "HTML"'),
        ({"import": True, "group": "45"}, "group must be a whole number"),
        ({"import": "true"}, "key import: Input should be a valid boolean"),
        ({"system": "sare"}, "key import: required key is missing"),
        ({"import": True, "overwite": 2}, "key overwite: unknown key (misspelt?)"),
        ({"import": True, "csv": {"delimiter": ";;"}}, "csv.delimiter must be one ASCII character"),
        ({"import": True, "autodelete": True}, "autodelete must be a whole number"),
        ({"import": True, "consent": {"import": True, "status": 2}}, "key consent.name: required key is missing"),
        (
            {"import": True, "consent": {"import": True, "name": "newsletter", "status": 4}},
            "unknown consent.status 4; allowed: 1 (no information), 2 (yes), 3 (no)",
        ),
    ],
)
def test_bad_values_are_named(tmp_path, data, expected):
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, data)
    assert expected in str(caught.value)


def test_unknown_key_lists_the_allowed_keys_of_its_block(tmp_path):
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, {"import": True, "fields": {"maps": {}}})
    assert "key fields.maps: unknown key" in str(caught.value) and "Use one of: map, ignore, foreign_key" in str(caught.value)


def test_duplicate_key_is_refused(tmp_path):
    with pytest.raises(InputError, match="key 'overwrite' appears twice"):
        _sidecar(tmp_path, '{"import": true, "overwrite": 2, "overwrite": 5}')


def test_sidecar_with_bom_is_refused(tmp_path):
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, b"\xef\xbb\xbf" + SEED_SIDECAR.encode())
    assert "byte-order mark" in str(caught.value) and "UTF-8 without BOM" in str(caught.value)


def test_sidecar_with_nul_byte_is_refused(tmp_path):
    with pytest.raises(InputError) as caught:
        _sidecar(tmp_path, SEED_SIDECAR.replace('"system"', '"sys\x00tem"').encode())
    assert caught.value.problems[0].line == 3 and "NUL byte" in str(caught.value)


# --------------------------------------------------------------------------- the data file rules


@pytest.mark.parametrize(
    "content,line,expected",
    [
        (b"\xef\xbb\xbf" + SEED_CSV.encode(), 1, "byte-order mark"),
        (SEED_CSV.replace("wartość B", "warto\x00B").encode(), 3, "NUL byte"),
        (SEED_CSV.replace("wartość B", "wartość B").encode("utf-8").replace("ść B".encode(), b"\x9c\xe6 B"), 3, "not valid UTF-8"),
    ],
    ids=["bom", "nul", "cp1250"],
)
def test_data_file_rules_are_named_errors(tmp_path, content, line, expected):
    path = _write(tmp_path, "exemple.csv", content)
    with pytest.raises(InputError) as caught:
        check_data_file(path, "/in/import/exemple.csv")
    assert caught.value.problems[0].line == line and expected in str(caught.value) and "/in/import/exemple.csv" in str(caught.value)


def test_pair_with_bom_in_data_fails_before_anything_is_read(tmp_path):
    with pytest.raises(InputError, match="data file starts with a UTF-8 byte-order mark"):
        _stage(tmp_path, SEED_SIDECAR, b"\xef\xbb\xbf" + SEED_CSV.encode())


# --------------------------------------------------------------------------- pairing


def _remote(name: str, mtime: float = 1000.0, size: int = 10) -> RemoteFile:
    return RemoteFile(path=f"/in/import/{name}", size=size, mtime=mtime)


def test_pairs_waiting_and_problems():
    listing = [
        _remote("exemple.csv"), _remote("exemple.import"),
        _remote("secret.csv.gpg", 900), _remote("secret.import", 900),
        _remote("alone.csv", 5000),  # recent: waits quietly
        _remote("old.import", 100),  # waited far too long: waits and is reported
        _remote("Case.csv"), _remote("case.import"),
        _remote("twice.csv"), _remote("twice.csv.pgp"), _remote("twice.import"),
        _remote("upload.csv.part"), _remote("notes.txt"),
    ]
    pairs, waiting, problems = pair_files(listing, connection="sare_sftp", goal="sare_import", now=5100.0, partner_wait_seconds=1800)
    assert [(p.files["data"].name, p.files["sidecar"].name) for p in pairs] == [("secret.csv.gpg", "secret.import"), ("exemple.csv", "exemple.import")]
    assert pairs[1].partition_key == "sare_import:exemple.csv" and pairs[1].root_name == "data"
    assert any(w.startswith("/in/import/alone.csv: waiting for alone.import") for w in waiting)
    assert any(w.startswith("/in/import/old.import: waiting for old.csv") for w in waiting)
    assert any("old.import: has waited 83 minutes for old.csv" in p for p in problems)
    assert not any("alone.csv" in p for p in problems)
    assert any("Case.csv, case.import: the base names differ only in upper/lower case" in p for p in problems)
    assert any("two data files for one .import" in p for p in problems)
    assert any("notes.txt: not part of a SARE pair" in p for p in problems)
    assert not any("upload.csv.part" in text for text in waiting + problems)


def test_pair_waits_while_a_file_is_still_changing():
    listing = [_remote("exemple.csv", size=10), _remote("exemple.import", size=0)]
    scan = scan_sare_deliveries("sare_sftp", listing, SETTINGS, is_ready=lambda remote: remote.size > 0)
    assert scan.deliveries == [] and "exemple.import still changing" in scan.waiting[0]


# --------------------------------------------------------------------------- translation


def test_seed_example_translates_into_our_goal(tmp_path):
    sidecar = _sidecar(tmp_path, SEED_SIDECAR)
    goal, actions = sare_goal(sidecar, ["email", "cechaNaglowek", "foreignKey"], SETTINGS, CATALOG, data_name="exemple.csv", sidecar_name="exemple.import")
    assert [(i.column, i.property) for i in goal.identifiers] == [("foreignkey", "cecha6")]
    rules = {m.property: (m.column, m.rule) for m in goal.mappings}
    assert rules == {
        "email": ("email", "set"),
        "cecha7": ("cechanaglowek", "set"),
        "sare_status": ("sidecar_status", "set_if_empty"),
        "sare_mail_type": ("sidecar_mail_type", "set_if_empty"),
        "sare_groups": ("sidecar_group", "add"),
    }
    assert goal.allow_new_profiles and goal.files.root.csv.delimiter == ";" and goal.files.root.csv.escape_char == "\\"
    assert goal.files.after_import.action == "move_to_done" and goal.files.after_import.done_directory == "done"
    assert [(c.group, c.phase) for c in actions.group_clears] == [(45, "before")]
    assert actions.duplicates == "skip" and actions.uses_foreign_key and actions.keep_blocked_out_of_group == 45
    assert any("sare_group_clear(45)` is performed" in w for w in actions.warnings)


@pytest.mark.parametrize("overwrite", [0, 1, 2, 3, 4, 5])
def test_overwrite_table(tmp_path, overwrite):
    sidecar = _sidecar(tmp_path, {"import": True, "overwrite": overwrite, "group": 3, "autodelete": 1})
    settings = SETTINGS.model_copy(update={"history_event_types": ["push_request"]})
    goal, actions = sare_goal(sidecar, ["email", "cecha7"], settings, CATALOG)
    rules = {m.property: m.rule for m in goal.mappings}
    assert goal.files.after_import.action == "delete"
    if overwrite == 0:
        assert rules == {} and not goal.allow_new_profiles
        return
    data, status, mail_type = OVERWRITE_RULES[overwrite]
    assert (rules["cecha7"], rules["sare_status"], rules["sare_mail_type"], rules["sare_groups"]) == (data, status, mail_type, "add")
    assert "email" not in rules  # the identifier: the merge writes it (set_if_empty) when it creates a profile
    assert actions.clear_history_event_types == (["push_request"] if overwrite == 3 else [])


def test_overwrite_5_clears_only_managed_properties_not_imported(tmp_path):
    sidecar = _sidecar(tmp_path, {"import": True, "overwrite": 5})
    goal, _ = sare_goal(sidecar, ["email"], SETTINGS.model_copy(update={"managed_properties": ["cecha7", "cecha6"]}), CATALOG)
    clearing = {m.property: m.rule for m in goal.mappings if m.column.startswith("sidecar_clear_")}
    assert clearing == {"cecha7": "set_or_clear", "cecha6": "set_or_clear"}
    goal, _ = sare_goal(sidecar, ["email", "cecha7"], SETTINGS.model_copy(update={"managed_properties": ["cecha7"]}), CATALOG)
    assert not [m for m in goal.mappings if m.column.startswith("sidecar_clear_")]


@pytest.mark.parametrize(
    "data,header,expected",
    [
        ({"import": True, "fields": {"foreign_key": "cecha9"}}, ["email", "cecha7"], "fields.foreign_key: 'cecha9' appears neither in fields.map"),
        ({"import": True}, ["mail", "cecha7"], "no profile property 'mail'"),
        ({"import": True, "fields": {"ignore": ["mail"]}}, ["mail", "cecha7"], "no e-mail column"),
        ({"import": True, "fields": {"map": {"E-mail": "email"}}}, ["email"], "fields.map: column 'E-mail' is not in the header"),
        ({"import": True, "fields": {"map": {"s": "sare_status"}}}, ["email", "s"], "maps to 'sare_status', which the sidecar itself writes"),
        ({"import": True, "fields": {"foreign_key": "cecha7"}}, ["email", "cecha7"], "identifier property 'cecha7' is not unique"),
        ({"import": True, "system": "mailer"}, ["email"], "key system: 'mailer' is not a system this connection imports"),
        # The spam-trap list is the store's spamtraps table now, so checkSpamtrap needs no file; an
        # operation SAREscript has and we cannot perform is the sidecar error instead.
        ({"import": True, "sarescript": {"after": "<!--sare sare_newsletter_send(12); sare-->"}}, ["email"],
         "key sarescript.after: `sare_newsletter_send(12)` is a SAREscript operation cdp_pipeline cannot perform"),
        ({"import": True, "sarescript": {"before": "<!--sare sare_field_set('cecha9', 'x'); sare-->"}}, ["email"],
         "names 'cecha9', which is no profile property"),
    ],
)
def test_sidecar_that_does_not_fit_the_header_or_catalog(tmp_path, data, header, expected):
    sidecar = _sidecar(tmp_path, data)
    settings = SETTINGS.model_copy(update={"spamtrap_list": None})
    with pytest.raises(InputError) as caught:
        sare_goal(sidecar, header, settings, CATALOG, sidecar_name="exemple.import")
    assert expected in str(caught.value) and "exemple.import" in str(caught.value)


def test_foreign_key_may_be_a_header_column_itself(tmp_path):
    sidecar = _sidecar(tmp_path, {"import": True, "fields": {"foreign_key": "cecha6"}})
    goal, _ = sare_goal(sidecar, ["cecha6", "email"], SETTINGS, CATALOG)
    assert goal.identifiers[0].property == "cecha6" and {m.property for m in goal.mappings} >= {"email"}


def test_account_id_must_be_one_of_the_connection(tmp_path):
    sidecar = _sidecar(tmp_path, {"import": True, "account_id": 7})
    with pytest.raises(InputError, match="key account_id: '7' is not an account of this connection"):
        sare_goal(sidecar, ["email"], SETTINGS.model_copy(update={"account_ids": ["3"]}), CATALOG)
    _, actions = sare_goal(sidecar, ["email"], SETTINGS.model_copy(update={"account_ids": ["7"]}), CATALOG)
    assert actions.account_id == "7"


def test_sarescript_operations_the_seed_lists_are_performed_and_the_rest_recorded():
    # The seed's before/after examples: clear properties, move addresses to another group, clear
    # groups, fill properties, assign to a group.
    record = parse_sarescript(
        "<!--sare sare_group_clear(45); sare_group_move(3, 4); sare_field_clear('cecha7'); sare_field_set('cecha7', \"a, b\");"
        " sare_group_add(9); sare_newsletter_send(12); sare_group_clear(x); sare-->",
        "after",
    )
    assert [(op.kind, op.phase, op.group, op.target_group, op.field, op.value) for op in record.performed] == [
        ("sare_group_clear", "after", 45, None, None, None),
        ("sare_group_move", "after", 3, 4, None, None),
        ("sare_field_clear", "after", None, None, "cecha7", None),
        ("sare_field_set", "after", None, None, "cecha7", "a, b"),
        ("sare_group_add", "after", 9, None, None, None),
    ]
    assert record.not_performed == ["sare_newsletter_send(12)", "sare_group_clear(x)"]


def test_unsupported_sarescript_operation_is_an_error_naming_it(tmp_path):
    # An error, not a warning: a pair whose script did not run must not look imported as the
    # sender meant.
    sidecar = _sidecar(tmp_path, {"import": True, "sarescript": {"after": "<!--sare sare_newsletter_send(12); sare-->"}})
    with pytest.raises(InputError) as caught:
        sare_goal(sidecar, ["email"], SETTINGS, CATALOG, sidecar_name="x.import")
    assert "sarescript.after: `sare_newsletter_send(12)` is a SAREscript operation cdp_pipeline cannot perform" in str(caught.value)
    assert "x.import" in str(caught.value)


def test_overwrite_0_performs_no_sarescript(tmp_path):
    sidecar = _sidecar(tmp_path, {"import": True, "overwrite": 0, "sarescript": {"before": "<!--sare sare_group_clear(45); sare-->"}})
    _, actions = sare_goal(sidecar, ["email"], SETTINGS, CATALOG)
    assert actions.group_clears == [] and actions.scripts[0].not_performed == ["sare_group_clear(45)"]


# --------------------------------------------------------------------------- whole pairs through the engine


def test_import_false_leaves_the_pair(tmp_path):
    staging = _stage(tmp_path, {"import": False}, "email\na@example.com\n")
    assert staging.staged is None and "\"import\": false" in staging.actions.skip_reason


def test_encrypted_true_with_plain_data_is_refused(tmp_path):
    with pytest.raises(InputError, match='says "encrypted": true but the data file is not PGP-encrypted'):
        _stage(tmp_path, {"import": True, "encrypted": True}, "email\na@example.com\n")
    staging = _stage(tmp_path, {"import": True, "encrypted": True}, "email\na@example.com\n", data_was_encrypted=True)
    assert staging.staged is not None and staging.staged.records.height == 1


def test_enclosure_and_backslash_escape(tmp_path):
    sidecar = {"import": True, "fields": {"map": {"note": "cecha7"}}, "csv": {"delimiter": ",", "enclosure": "'", "escape": "\\"}}
    staging = _stage(tmp_path, sidecar, "email,note\na@example.com,'it\\'s; fine'\n")
    assert staging.staged.records["cecha7"].to_list() == ["it's; fine"]


def test_seed_example_end_to_end(tmp_path):
    """The seed's sidecar on a store that already knows some of the addresses: overwrite 2 sets the
    imported data and keeps an existing status, sarescript.before empties group 45 before the file
    refills it, duplicates_handling "skip" leaves out the key two profiles share."""
    staging = _stage(tmp_path, SEED_SIDECAR, SEED_CSV)
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p_old", email="old@example.com", cecha6="K-001", cecha7="stare", sare_status=3, sare_mail_type="text", sare_groups=["12"])
        _insert(conn, "p_other", email="other@example.com", cecha6="K-900", sare_groups=["45", "12"])
        _insert(conn, "p_dup_a", cecha6="K-003", cecha7="a")
        _insert(conn, "p_dup_b", cecha6="K-003", cecha7="b")
        _merge(conn, staging, 1)
        assert _profile(conn, "profile_id = 'p_old'", "email", "cecha7", "sare_status", "sare_mail_type", "sare_groups") == (
            "jan.kowalski@example.com", "wartość A", 3, "text", ["12", "45"]
        )
        assert _profile(conn, "cecha6 = 'K-002'", "email", "cecha7", "sare_status", "sare_mail_type", "sare_groups") == (
            "anna@example.com", "wartość B", 8, "text,HTML", ["45"]
        )
        assert _profile(conn, "profile_id = 'p_other'", "sare_groups") == (["12"],)
        assert conn.execute("SELECT cecha7 FROM profiles WHERE cecha6 = 'K-003' ORDER BY 1").fetchall() == [("a",), ("b",)]
        assert conn.execute("SELECT line, column_name, reason FROM rejects").fetchall() == [
            (4, "cecha6", "the foreign key matches more than one profile (duplicates_handling: skip). The row was left out")
        ]
        assert conn.execute("SELECT rows_read, rows_rejected, profiles_created, profiles_updated FROM deliveries").fetchone() == (3, 1, 1, 1)


def test_overwrite_3_5_consent_blocked_and_spamtraps(tmp_path):
    traps = _write(tmp_path, "traps.txt", "# known traps\nTrap@Example.com\n\n")
    settings = SETTINGS.model_copy(update={"history_event_types": ["push_request"], "managed_properties": ["cecha7"], "spamtrap_list": str(traps)})
    store = tmp_path / "store.duckdb"
    with open_writer(store, CATALOG) as conn:
        _insert(conn, "p_a", email="a@example.com", cecha7="keep?", sare_status=3, sare_groups=["1"])
        _insert(conn, "p_blocked", email="blocked@example.com", sare_status=7)
        _insert(conn, "p_blocked_member", email="member@example.com", sare_status=7, sare_groups=["9"])
        conn.execute(
            "INSERT INTO timeline_push_request (event_id, profile_id, event_time, text) VALUES "
            "('e1', 'p_a', ?, 'old'), ('e2', 'p_blocked', ?, 'other')", [NOW, NOW]
        )
        # overwrite 3: an empty cell clears (set_or_clear), the status is overwritten, history goes.
        staging = _stage(tmp_path, {"import": True, "overwrite": 3, "fields": {"map": {"c7": "cecha7"}}}, "email;c7\nA@example.com;\n", settings)
        _merge(conn, staging, 1)
        assert _profile(conn, "profile_id = 'p_a'", "cecha7", "sare_status", "sare_mail_type") == (None, 8, "text,HTML")
        assert conn.execute("SELECT event_id FROM timeline_push_request").fetchall() == [("e2",)]
        conn.execute("UPDATE profiles SET cecha7 = 'again' WHERE profile_id = 'p_a'")

        # overwrite 5 with group 9, consent yes, spam traps checked: a blocked address does not join.
        sidecar = {"import": True, "overwrite": 5, "group": 9, "checkSpamtrap": True, "consent": {"import": True, "name": "newsletter", "status": 2}}
        csv_text = "email\na@example.com\nblocked@example.com\nmember@example.com\ntrap@example.com\nnew@example.com\n"
        _merge(conn, _stage(tmp_path, sidecar, csv_text, settings), 2)
        rows = dict(conn.execute("SELECT email, struct_pack(c := cecha7, s := sare_status, g := sare_groups, k := consents) FROM profiles").fetchall())
        assert rows["a@example.com"] == {"c": None, "s": 8, "g": ["1", "9"], "k": ["newsletter"]}
        assert rows["blocked@example.com"]["g"] == [] and rows["blocked@example.com"]["s"] == 7
        assert rows["member@example.com"]["g"] == ["9"]  # already a member before: stays
        assert rows["new@example.com"] == {"c": None, "s": 8, "g": ["9"], "k": ["newsletter"]}
        assert "trap@example.com" not in rows
        assert conn.execute("SELECT line, reason FROM rejects WHERE delivery_id = 'd2'").fetchall() == [
            (5, "the address is on the spam-trap list (checkSpamtrap). The row was left out")
        ]

        # consent status 3 ("no") withdraws it, only for the file's addresses.
        _merge(conn, _stage(tmp_path, {"import": True, "consent": {"import": True, "name": "newsletter", "status": 3}}, "email\na@example.com\n", settings), 3)
        consents = dict(conn.execute("SELECT email, consents FROM profiles WHERE email IN ('a@example.com', 'new@example.com')").fetchall())
        assert consents == {"a@example.com": [], "new@example.com": ["newsletter"]}


def test_overwrite_0_writes_nothing(tmp_path):
    staging = _stage(tmp_path, {"import": True, "overwrite": 0, "group": 4}, "email;cecha7\na@example.com;x\nnew@example.com;y\n")
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p_a", email="a@example.com", cecha7="kept")
        _merge(conn, staging, 1)
        assert conn.execute("SELECT profile_id, cecha7, sare_groups FROM profiles").fetchall() == [("p_a", "kept", None)]
        assert conn.execute("SELECT rows_read, profiles_unchanged, profiles_ignored FROM deliveries").fetchone() == (2, 1, 1)


# --------------------------------------------------------------------------- the example configuration


def test_example_connection_and_catalog_validate():
    raw = yaml.safe_load((EXAMPLES / "sare_connection.yaml").read_text())
    dialect = TypeAdapter(Dialect).validate_python(raw.pop("dialect"))
    connection = Connection.model_validate(raw)
    _check_references(connection, CATALOG, "sare_connection.yaml")
    assert isinstance(dialect, SareSettings) and dialect.directory == "/in/import" and connection.sensor.minimum_interval_seconds == 300


@pytest.mark.parametrize("model", [SareSidecar, SareFields, SareCsv, SareConsent, SareScripts, SareSettings], ids=lambda m: m.__name__)
def test_docs_document_every_key_with_its_default(model):
    assert key_table_problems(model) == []


def test_docs_links_resolve():
    assert broken_anchors() == []


def test_duplicates_handling_default_imports_into_every_matching_profile(tmp_path):
    """duplicates_handling "default" ("importuj wszystkie"): a foreign key two profiles share
    updates both of them."""
    sidecar = json.loads(SEED_SIDECAR)
    sidecar["duplicates_handling"] = "default"
    staging = _stage(tmp_path, sidecar, SEED_CSV)
    with open_writer(tmp_path / "store.duckdb", CATALOG) as conn:
        _insert(conn, "p_dup_a", cecha6="K-003", cecha7="a")
        _insert(conn, "p_dup_b", cecha6="K-003", cecha7="b")
        _merge(conn, staging, 1)
        assert conn.execute("SELECT profile_id, cecha7 FROM profiles WHERE cecha6 = 'K-003' ORDER BY 1").fetchall() == [
            ("p_dup_a", "wartość C"),
            ("p_dup_b", "wartość C"),
        ]
        assert conn.execute("SELECT count(*) FROM rejects").fetchone() == (0,)
