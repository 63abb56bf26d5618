"""A person's mistakes on the command line end in one line naming the close matches, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STORE = "catalog:\n  profile_properties:\n    email: {type: text, unique: true}\n"
CONNECTION = """
name: acme_crm
source: {type: local, path: drop}
goals:
  - name: customers
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    config, home = tmp_path / "config", tmp_path / "home"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(STORE)
    (config / "connections" / "acme.yaml").write_text(CONNECTION)
    (home / "drop").mkdir(parents=True)
    (home / "drop" / "people_20260115.csv").write_text("email\na@example.com\n")
    return config, home


def _cli(setup: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess:
    config, home = setup
    env = {k: v for k, v in os.environ.items() if k != "CDP_CONFIG_DIR"}
    env["DAGSTER_HOME"] = str(home / "dagster_home")
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "--config-dir", str(config), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["run", "acme_crn"], "cdp-pipeline run: no connection named 'acme_crn'; did you mean acme_crm?"),
        (["check", "acme-crm"], "cdp-pipeline check: no connection named 'acme-crm'; did you mean acme_crm?"),
        (["preview", "acme_crm", "custmers"], "cdp-pipeline preview: no import goal named 'custmers'; did you mean customers?"),
        (
            ["preview", "acme_crm", "--delivery", "customers:people_2026115.csv"],
            "cdp-pipeline preview: no complete delivery named 'customers:people_2026115.csv'; did you mean customers:people_20260115.csv?",
        ),
        (["reprocess", "acme", "customers:people_20260115.csv"], "cdp-pipeline reprocess: no connection named 'acme'; did you mean acme_crm?"),
        (["reprocess", "acme_crm", "customer:people_20260115.csv"], "cdp-pipeline reprocess: no import goal named 'customer'; did you mean customers?"),
        (["reprocess", "acme_crm", "customers:people_20260115.csv"], "no delivery of acme_crm that Dagster has run named 'customers:people_20260115.csv'"),
        (["prevue", "acme_crm"], "invalid choice: 'prevue'"),
        (["run"], "the following arguments are required: connection"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(setup, args, expected):
    result = _cli(setup, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert expected in result.stderr
    if args[0] != "prevue" and args != ["run"]:  # argparse adds its usage line before the error
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_reprocess_of_an_unknown_delivery_adds_no_partition(setup):
    import dagster as dg

    from cdp_pipeline.deliveries import partition_set_name

    assert _cli(setup, "reprocess", "acme_crm", "customers:nothing.csv").returncode == 2
    _, home = setup
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert list(instance.get_dynamic_partitions(partition_set_name("acme_crm"))) == []


def test_run_on_an_invalid_configuration_is_the_clean_validate_message(setup):
    config, _ = setup
    (config / "connections" / "acme.yaml").write_text(CONNECTION.replace("allow_new_profiles", "allow_new_profile"))
    result = _cli(setup, "run", "acme_crm")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "connections/acme.yaml (connection 'acme_crm'): goals.0.import_profiles.allow_new_profile: unknown key (misspelt?); "
        "see docs/configuration.md for the allowed keys"
    )


def test_a_missing_source_folder_is_one_line_and_exit_1(setup):
    _, home = setup
    (home / "drop" / "people_20260115.csv").unlink()
    (home / "drop").rmdir()
    result = _cli(setup, "preview", "acme_crm")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("directory does not exist; create it or fix files.directory")


def test_version_and_help_of_every_subcommand(setup):
    version = _cli(setup, "--version")
    assert version.returncode == 0 and version.stdout.startswith("cdp-pipeline ")
    top = _cli(setup, "--help")
    assert top.returncode == 0 and "Exit codes: 0 ok" in top.stdout
    for command in ("demo", "run", "reprocess", "validate", "check", "preview"):
        result = _cli(setup, command, "--help")
        assert result.returncode == 0, command
        assert f"usage: cdp-pipeline {command}" in result.stdout
        assert "--config-dir" in result.stdout and "--home" in result.stdout


def test_runs_are_quiet_unless_verbose(setup):
    quiet = _cli(setup, "run", "acme_crm")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "imported customers:people_20260115.csv: merged rows=1" in quiet.stdout
    assert "STEP_START" not in quiet.stdout + quiet.stderr and "DEBUG" not in quiet.stdout + quiet.stderr
    # A known delivery may be reprocessed; quiet too (it used to print every event at DEBUG).
    again = _cli(setup, "reprocess", "acme_crm", "customers:people_20260115.csv")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reprocessed customers:people_20260115.csv: SUCCESS" in again.stdout
    assert "DEBUG" not in again.stdout + again.stderr
    verbose = _cli(setup, "reprocess", "acme_crm", "customers:people_20260115.csv", "--verbose")
    assert verbose.returncode == 0
    assert "STEP_START" in verbose.stdout + verbose.stderr
