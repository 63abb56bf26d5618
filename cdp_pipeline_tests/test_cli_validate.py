"""``cdp-pipeline validate`` reports every mistake it can find without the network in one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STORE = """
store:
  histroy: true
catalog:
  profile_properties:
    email: {type: text, unique: true}
    spend: {type: decimal}
  segments:
    big: {condition: "spend >= 500"}
    broken: {condition: "spendd > 1"}
  lifecycles:
    journey:
      stages:
        - {name: counted, condition: "spend + 1"}
"""

# Schema mistakes: an unknown key, a rule that does not exist, a source without its folder.
ACME = """
name: acme
source: {type: local}
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profile: true
    mappings: [{column: spend, property: spend, rule: total}]
"""

# Valid schema, wrong references: an undeclared property, an undeclared segment, an undeclared
# objective, and a password variable that is not set.
BETA = """
name: beta
source: {type: sftp, host: 127.0.0.1, username: u, host_key_fingerprint: "SHA256:abc", auth: {method: password, password_env: CDP_TEST_UNSET_PASSWORD}}
objectives: [newsletter]
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
    mappings: [{column: city, property: city, rule: set}, {column: amount, property: spnd, rule: sum}]
  - name: out
    type: export_profiles
    segment: bigg
    target: {directory: outbox, file_name: "out_{date}.csv"}
    columns: [{header: email, property: email}]
"""

EXPECTED = [
    "store.yaml: store.histroy: unknown key",
    "segments.broken.condition 'spendd > 1'",
    "lifecycles.journey.stages.0.condition (stage counted) 'spend + 1'",
    "connections/acme.yaml (connection 'acme'): source.local.path: required key is missing",
    "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.allow_new_profile: unknown key",
    "connections/acme.yaml (connection 'acme'): goals.0.import_profiles.mappings.0.rule: Input should be",
    "connections/beta.yaml (connection 'beta'): goals.0 (people).mappings: property 'city' is not declared",
    "connections/beta.yaml (connection 'beta'): goals.0 (people).mappings: property 'spnd' is not declared in store.yaml "
    "catalog.profile_properties (did you mean 'spend'?)",
    "connections/beta.yaml (connection 'beta'): goals.1 (out).segment: 'bigg' is not declared",
    "connections/beta.yaml (connection 'beta'): objectives: 'newsletter' is not declared",
    "connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD is not set",
]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(STORE)
    (config / "connections" / "acme.yaml").write_text(ACME)
    (config / "connections" / "beta.yaml").write_text(BETA)
    return config


def _validate(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG_DIR", "CDP_TEST_UNSET_PASSWORD")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "validate", "--home", str(tmp_path / "home"), *options],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_ten_mistakes_in_three_files_are_reported_in_one_run(tmp_path):
    config = _config(tmp_path)
    result = _validate(tmp_path, "--config-dir", str(config), "--strict")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    missing = [finding for finding in EXPECTED if finding not in result.stderr]
    assert not missing, f"not reported: {missing}\n{result.stderr}"
    # each finding is its own line naming its file
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) >= len(EXPECTED)
    assert all("store.yaml" in line or "connections/" in line for line in errors)
    assert "ok  " not in result.stdout  # no connection is clean


def test_an_unset_variable_is_a_warning_unless_strict(tmp_path):
    config = _config(tmp_path)
    (config / "store.yaml").write_text(STORE.replace("  histroy: true\n", "  history: true\n").replace(
        '    broken: {condition: "spendd > 1"}\n', "").replace('"spend + 1"', '"spend > 1"').replace("big:", "bigg:"))
    (config / "store.yaml").write_text((config / "store.yaml").read_text() + "  objectives:\n    newsletter: {}\n")
    (config / "connections" / "beta.yaml").write_text(BETA.replace("property: spnd", "property: spend"))
    (config / "store.yaml").write_text((config / "store.yaml").read_text().replace(
        "    spend: {type: decimal}\n", "    spend: {type: decimal}\n    city: {type: text}\n    consents: {type: list}\n"))
    (config / "connections" / "acme.yaml").unlink()
    relaxed = _validate(tmp_path, "--config-dir", str(config))
    assert relaxed.returncode == 0, relaxed.stderr
    assert "warning: connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD is not set" in relaxed.stderr
    assert "ok  beta" in relaxed.stdout
    strict = _validate(tmp_path, "--config-dir", str(config), "--strict")
    assert strict.returncode == 2
    assert "error: connections/beta.yaml (connection 'beta'): environment variable CDP_TEST_UNSET_PASSWORD" in strict.stderr
