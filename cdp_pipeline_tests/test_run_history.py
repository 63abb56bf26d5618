"""``cdp-pipeline history``: one line per run, successes and failures with their cause, counts
matching the delivered files (counted here with plain Python)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from cdp_pipeline.demo.generate import generate_delivery


def _cli(home, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_history_lists_failed_and_successful_runs_with_counts_and_cause(tmp_path):
    home = tmp_path / "home"
    inbox = home / "demo" / "inbox"
    inbox.mkdir(parents=True)
    (home / "demo" / "outbox").mkdir(parents=True)
    files = generate_delivery(inbox, profiles=25, seed=11, date="20260115")
    # A second customers delivery without the required email column: its import must fail.
    (inbox / "profiles_20260116.csv").write_text("customer_id,first_name\nC0000001,Ann\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("CDP_CONFIG_DIR", None)
    run = _cli(home, env, "run", "demo_local")
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]

    shown = _cli(home, env, "history", "demo_local")
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert header.split()[:4] == ["started", "kind", "goal", "status"]
    by_delivery = {line.split()[-1]: line.split() for line in lines if line.split()[3] != "high_value_export"}
    with files["profiles"].open(newline="") as handle:
        profile_rows = list(csv.DictReader(handle))
    with files["households"].open(newline="") as handle:
        household_rows = list(csv.DictReader(handle))
    # started (2 cells), kind, goal, status, files, rows read, rejected, created, updated, unchanged, events, groups, exported, delivery
    customers = by_delivery["customers:profiles_20260115.csv"]
    assert customers[2:6] == ["import", "customers", "SUCCESS", "1"]
    assert int(customers[6]) == len(profile_rows)
    assert int(customers[8]) == len({row["customer_id"] for row in profile_rows})
    households = by_delivery["households:households_20260115.csv"]
    assert households[4] == "SUCCESS" and int(households[12]) == len({row["household_id"] for row in household_rows})
    orders = by_delivery["orders:orders_20260115.csv"]
    assert orders[4] == "SUCCESS" and orders[5] == "2"  # orders and their order lines
    failed = [line for line in lines if " FAILURE " in line]
    assert len(failed) == 1, shown.stdout
    assert "customers" in failed[0] and "email" in failed[0], failed[0]
    assert "Ann" not in shown.stdout  # the cause names the file and column, never a customer's value
    exports = [line.split() for line in lines if line.split()[3] == "high_value_export"]
    assert len(exports) == 1 and exports[0][2:5] == ["export", "high_value_export", "SUCCESS"]
    exported, available = (int(n) for n in exports[0][13].split("/"))
    assert 0 < exported <= available


def test_history_of_an_unknown_connection_names_the_known_ones(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    env.pop("CDP_CONFIG_DIR", None)
    shown = _cli(tmp_path / "home", env, "history", "no_such")
    assert shown.returncode == 2
    assert "demo_local" in shown.stderr
