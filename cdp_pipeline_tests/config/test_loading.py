"""Loading the configuration directory: errors name the file, the key path and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, ProjectConfig, load_project
from cdp_pipeline.errors import ConfigError

STORE = "catalog:\n  profile_properties:\n    email: {type: text, unique: true}\n    spend: {type: decimal}\n"
GOOD = """
name: acme
source: {type: local, path: drop}
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
    mappings: [{column: spend, property: spend, rule: sum}]
"""


def _config(tmp_path: Path, connection: str, store: str = STORE) -> Path:
    (tmp_path / "connections").mkdir(parents=True)
    (tmp_path / "store.yaml").write_text(store)
    (tmp_path / "connections" / "acme.yaml").write_text(connection)
    return tmp_path


def test_bundled_demo_configuration_loads(tmp_path):
    project = load_project(BUNDLED_CONFIG_DIR, tmp_path)
    assert list(project.connections) == ["demo_local"]
    assert [g.name for g in project.connections["demo_local"].import_goals] == ["households", "customers", "orders"]
    assert project.store_path == tmp_path / "store.duckdb"


def test_good_configuration_loads(tmp_path):
    project = load_project(_config(tmp_path, GOOD), tmp_path)
    assert project.connections["acme"].goals[0].mappings[0].rule == "sum"


@pytest.mark.parametrize(
    "change,expected",
    [
        (("allow_new_profiles: true", "allow_new_profile: true"), "goals.0.import_profiles.allow_new_profile: unknown key (misspelt?)"),
        (("rule: sum", "rule: total"), "goals.0.import_profiles.mappings.0.rule: Input should be 'set', 'set_if_empty', 'set_or_clear', 'add' or 'sum'"),
        (("    identifiers: [{column: email, property: email}]\n", ""), "goals.0.import_profiles.identifiers: required key is missing"),
        (("property: spend", "property: spent"), "property 'spent' is not declared in store.yaml"),
        (("rule: sum", "rule: add"), "rule add needs a list property"),
        (
            ("{type: local, path: drop}", "{type: sftp, host: h, username: u, auth: {method: password, password_env: P}}"),
            "known_hosts_line or host_key_fingerprint",
        ),
    ],
)
def test_errors_name_file_key_path_and_what_is_allowed(tmp_path, change, expected):
    old, new = change
    with pytest.raises(ConfigError) as error:
        load_project(_config(tmp_path, GOOD.replace(old, new)), tmp_path)
    assert "connections/acme.yaml (connection 'acme')" in str(error.value)
    assert expected in str(error.value)


def test_literal_secrets_are_refused(tmp_path):
    sftp = GOOD.replace(
        "{type: local, path: drop}", "{type: sftp, host: h, username: u, host_key_fingerprint: 'SHA256:x', auth: {method: password, password: hunter2}}"
    )
    with pytest.raises(ConfigError) as error:
        load_project(_config(tmp_path, sftp), tmp_path)
    assert "source.auth.password: secrets are not written in YAML" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_private_key_blocks_are_refused_anywhere(tmp_path):
    text = GOOD.replace('name: acme', 'name: acme\ndescription: "-----BEGIN OPENSSH PRIVATE KEY-----"')
    with pytest.raises(ConfigError, match="private key block is not allowed"):
        load_project(_config(tmp_path, text), tmp_path)


def test_root_and_linked_file_patterns_must_differ(tmp_path):
    text = GOOD.replace(
        'files: {root: {name: people, pattern: "people_*.csv"}}',
        'files: {root: {name: people, pattern: "people_*.csv"}, linked: [{name: more, pattern: "people_*.csv", parent: people, link: {id: id}}]}',
    )
    with pytest.raises(ConfigError, match="root file's name must differ"):
        load_project(_config(tmp_path, text), tmp_path)


@pytest.mark.parametrize(
    "change,expected",
    [
        (("name: acme\n", "name: acme\nowners: [crm-team]\n"), "owner 'crm-team' must be an e-mail address or team:<name>"),
        (("name: acme\n", "name: acme\nlabels: ['has space']\n"), "label 'has space' may hold letters"),
        (("name: acme\n", "name: acme\nobjectives: [marketing]\n"), "objectives: 'marketing' is not declared"),
    ],
)
def test_connection_metadata_is_checked_at_load(tmp_path, change, expected):
    old, new = change
    with pytest.raises(ConfigError) as error:
        load_project(_config(tmp_path, GOOD.replace(old, new, 1)), tmp_path)
    assert expected in str(error.value)


def test_objectives_need_a_list_consent_property(tmp_path):
    store = STORE + "  objectives:\n    marketing: {}\n"
    with pytest.raises(ConfigError, match="consent property 'consents'"):
        load_project(_config(tmp_path, GOOD.replace("name: acme\n", "name: acme\nobjectives: [marketing]\n", 1), store=store), tmp_path)


# ---------------------------------------------------------------- hostile and surprising YAML

BILLION_LAUGHS = "\n".join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    + [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, 9)]
) + "\n"


def test_an_alias_bomb_is_refused_by_validate_within_seconds(tmp_path):
    config = _config(tmp_path, GOOD)
    (config / "connections" / "bomb.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 2500  # the probe's 2.3 KB file: 9**9 values once expanded
    env = {**os.environ, "CDP_CONFIG_DIR": str(config)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(tmp_path / "home"), "validate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stdout + result.stderr
    assert "connections/bomb.yaml: refused before reading it: its aliases expand to more than 100,000 values" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_recursive_anchor_and_absurd_nesting_are_named(tmp_path):
    config = _config(tmp_path, GOOD)
    (config / "store.yaml").write_text(STORE + "store: &s {history: *s}\n")
    with pytest.raises(ConfigError, match="store.yaml: refused before reading it: an alias refers to a node that contains it"):
        load_project(config, tmp_path)
    (config / "store.yaml").write_text("catalog: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="store.yaml: nested too deeply"):
        load_project(config, tmp_path)


def test_a_few_shared_blocks_still_load(tmp_path):
    shared = GOOD.replace(
        "    mappings: [{column: spend, property: spend, rule: sum}]\n",
        "    mappings: &m [{column: spend, property: spend, rule: sum}]\n"
        "  - name: people_again\n    type: import_profiles\n    files: {root: {name: people, pattern: \"again_*.csv\"}}\n"
        "    identifiers: [{column: email, property: email}]\n    mappings: *m\n",
    )
    project = load_project(_config(tmp_path, shared), tmp_path)
    assert [goal.mappings[0].property for goal in project.connections["acme"].goals] == ["spend", "spend"]


def test_yaml_1_1_words_stay_strings(tmp_path):
    """`off`, `no`, `yes`, `on` are names, not booleans; boolean keys still read yes/no."""
    text = GOOD.replace("name: acme", "name: off").replace("name: people\n", "name: no\n").replace("allow_new_profiles: true", "allow_new_profiles: yes")
    project = load_project(_config(tmp_path, text), tmp_path)
    assert list(project.connections) == ["off"]
    goal = project.connections["off"].goals[0]
    assert goal.name == "no"
    assert goal.allow_new_profiles is True
    assert project.connection_files["off"].name == "acme.yaml"


@pytest.mark.parametrize(
    "source,secret,expected",
    [
        (
            "{type: s3, bucket: b, access_key_id_env: AKIAIOSFODNN7EXAMPLE, secret_access_key_env: S3_SECRET}",
            "AKIAIOSFODNN7EXAMPLE",
            "source.s3.access_key_id_env: Value error, this looks like an AWS access key id, not the name of an environment variable",
        ),
        (
            "{type: s3, bucket: b, access_key_id_env: S3_KEY, session_token_env: ASIAY34FZKBOKMUTVV7A}",
            "ASIAY34FZKBOKMUTVV7A",
            "source.s3.session_token_env: Value error, this looks like an AWS access key id",
        ),
        (
            "{type: s3, bucket: b, endpoint_url: 'https://minio:s3cr3tpass@127.0.0.1:9000'}",
            "s3cr3tpass",
            "source.s3.endpoint_url: Value error, endpoint_url must not carry credentials (user:password@)",
        ),
    ],
)
def test_secrets_pasted_into_names_and_urls_are_refused_without_repeating_them(tmp_path, source, secret, expected):
    with pytest.raises(ConfigError) as error:
        load_project(_config(tmp_path, GOOD.replace("{type: local, path: drop}", source)), tmp_path)
    assert expected in str(error.value)
    assert secret not in str(error.value)


def test_a_plain_endpoint_url_and_variable_names_load(tmp_path):
    source = "{type: s3, bucket: b, endpoint_url: 'http://127.0.0.1:9000', access_key_id_env: AKIA_KEY_FOR_ACME, secret_access_key_env: S3_SECRET}"
    project = load_project(_config(tmp_path, GOOD.replace("{type: local, path: drop}", source)), tmp_path)
    assert project.connections["acme"].source.endpoint_url == "http://127.0.0.1:9000"


def test_goal_hash_covers_what_the_goal_uses_not_a_new_segment(tmp_path):
    """Adding a segment (or a property no goal maps) must not re-import every file still in the
    folders; changing a property the goal fills must."""
    base = load_project(_config(tmp_path / "a", GOOD), tmp_path).goal_config_hash("acme", "people")
    segment = STORE + "  segments:\n    big: {condition: 'spend > 100'}\n"
    unused = STORE + "    city: {type: text}\n"
    used = STORE.replace("spend: {type: decimal}", "spend: {type: integer}")
    assert load_project(_config(tmp_path / "b", GOOD, segment), tmp_path).goal_config_hash("acme", "people") == base
    assert load_project(_config(tmp_path / "c", GOOD, unused), tmp_path).goal_config_hash("acme", "people") == base
    assert load_project(_config(tmp_path / "d", GOOD, used), tmp_path).goal_config_hash("acme", "people") != base
    assert load_project(_config(tmp_path / "e", GOOD.replace("rule: sum", "rule: sum, identity: [email]")), tmp_path).goal_config_hash("acme", "people") != base


def test_a_property_named_like_an_internal_column_is_refused(tmp_path):
    store = STORE + "    _key: {type: text}\n"
    with pytest.raises(ConfigError, match=r"catalog.profile_properties._key: names starting with '_' are reserved"):
        load_project(_config(tmp_path, GOOD, store), tmp_path)


def test_the_built_in_permission_level_leaves_goal_hashes_alone(tmp_path):
    """Every store has permission_level now; a goal whose bulk mapping covers every property keeps
    the hash it had without it, so no file still in a folder is imported again for the upgrade.
    Declaring it with another description (the user's own choice) does count."""
    bulk = GOOD.replace("    mappings: [{column: spend, property: spend, rule: sum}]\n", "    bulk_mapping: {rule: set}\n")
    project = load_project(_config(tmp_path / "a", bulk), tmp_path)
    assert "permission_level" in project.catalog.profile_properties
    without = {k: v for k, v in project.catalog.profile_properties.items() if k != "permission_level"}
    before = ProjectConfig(
        config_dir=project.config_dir, home=project.home, store=project.store,
        catalog=project.catalog.model_copy(update={"profile_properties": without}), connections=project.connections,
    )
    assert project.goal_config_hash("acme", "people") == before.goal_config_hash("acme", "people")
    declared = STORE + "    permission_level: {type: text, description: 'from the CRM'}\n"
    assert load_project(_config(tmp_path / "b", bulk, declared), tmp_path).goal_config_hash("acme", "people") != before.goal_config_hash("acme", "people")


def test_netmera_reports_without_the_netmera_dialect_are_refused_at_load(tmp_path):
    reports = GOOD + (
        "  - name: reports\n    type: export_profiles\n    segment: s\n    netmera_reports: [campaign]\n"
        "    columns: [{header: id, profile_id: true}]\n"
    )
    store = STORE + "  segments:\n    s: {condition: 'TRUE'}\n"
    with pytest.raises(ConfigError, match=r"goals\.1\.netmera_reports: needs dialect: \{type: netmera, appkey: <your appkey>\}"):
        load_project(_config(tmp_path, reports, store), tmp_path)
