"""The kill -9 fault-injection suite's parts, shared by the CI test and ``bench/kill_anywhere.py``.

A real ``cdp-pipeline run`` (its own process, in its own session) imports a PGP-encrypted delivery
(profiles, orders with order lines) from a local drop folder and exports a PGP-encrypted segment
file and its timeline to a folder. ``CDP_PIPELINE_FAULT_AT`` (``cdp_pipeline/fault_injection.py``)
makes it SIGKILL its process group at one named point. Then the same command runs again, and its
store, exports and folders are held against a run that was never killed.

Everything here is computed without the pipeline's code: the store comparison is plain DuckDB SQL,
the exports are decrypted with the gpg command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import yaml

from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.demo.generate import generate_delivery

CONNECTION = "kill_drop"
#: each kill point and the pass at which it fires: the second import (orders with their lines) for
#: the import points, so the customers delivery is already in the store when the run dies.
KILL_POINTS = {
    "fetch": "fetch#2",
    "decrypt": "decrypt#2",
    "tables": "tables#2",
    "merge_early": "merge_early#2",
    "merge_late": "merge_late#2",
    "after_commit": "after_commit#2",
    "export": "export",
    "upload": "upload",
    "publish": "publish",  # once, at the end of the run: after the export's upload and record
}
#: columns that differ between two runs of the same input by design: times, run ids (and the
#: delivery ids and file lists that contain them), mtimes, and the set-up fingerprints (a segment
#: refresh's fingerprint covers the store's newest merge and update times).
VOLATILE_PARTS = ("_at", "_since", "run_id", "delivery_id", "measured", "started", "ended", "timestamp", "seconds", "files", "fingerprint")
#: logs of what happened, not compared row by row: a killed run is part of the run history on
#: purpose, and a killed export had measured the segment sizes before it died (the rerun measures
#: again). Of segment_sizes the latest size of each segment is compared instead.
HISTORY_TABLES = {"runs", "segment_sizes"}
LATEST_SEGMENT_SIZES = "SELECT segment, arg_max(size, measured_at) AS size FROM {db}.segment_sizes GROUP BY segment"


@dataclass(frozen=True)
class KillSetup:
    config_dir: Path
    inbox: Path  # the encrypted delivery, copied into each home's drop folder
    env: dict[str, str]



def _sql_text(value: str) -> str:
    """A SQL string literal: ATTACH takes no parameters on DuckDB 1.5."""
    return "'" + str(value).replace("'", "''") + "'"

def write_setup(root: Path, *, profiles: int, gpg_cli, keys) -> KillSetup:
    """The encrypted delivery and a configuration directory with the connection ``kill_drop``."""
    plain = generate_delivery(root / "plain", profiles=profiles, seed=11, date="20260301")
    inbox = root / "encrypted"
    inbox.mkdir()
    for name in ("profiles", "orders", "order_lines"):
        gpg_cli.encrypt(plain[name], inbox / plain[name].name, keys.recipient)
    shutil.rmtree(root / "plain")

    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    goals = [goal for goal in demo["goals"] if goal["name"] in ("customers", "orders", "high_value_export")]
    for goal in goals:
        if goal["type"] == "export_profiles":
            goal["target"]["encrypt"] = True
    connection = {
        **{k: v for k, v in demo.items() if k not in ("goals", "schedules", "sensor")},
        "name": CONNECTION,
        "source": {"type": "local", "path": "drop"},
        "pgp": {
            "private_keys_env": ["KILL_PGP_PRIVATE_KEY"],
            "passphrase_env": "KILL_PGP_PASSPHRASE",
            "public_key_env": "KILL_PGP_PUBLIC_KEY",
            "public_key_fingerprint": keys.partner.fingerprint,
        },
        "goals": goals,
    }
    config = root / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    (config / "connections" / f"{CONNECTION}.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    env = {
        "CDP_CONFIG_DIR": str(config),
        "KILL_PGP_PRIVATE_KEY": keys.recipient.private_key,
        "KILL_PGP_PASSPHRASE": keys.recipient.passphrase or "",
        "KILL_PGP_PUBLIC_KEY": keys.partner.public_key,
    }
    return KillSetup(config_dir=config, inbox=inbox, env=env)


def new_home(setup: KillSetup, home: Path) -> Path:
    (home / "drop" / "inbox").mkdir(parents=True)
    (home / "drop" / "outbox").mkdir()
    (home / "dagster_home").mkdir()
    for path in setup.inbox.iterdir():
        shutil.copy(path, home / "drop" / "inbox" / path.name)
    return home


def _env(setup: KillSetup, home: Path, fault_at: str | None) -> dict[str, str]:
    env = {**os.environ, **setup.env, "CDP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env.pop("CDP_PIPELINE_FAULT_AT", None)
    if fault_at is not None:
        env["CDP_PIPELINE_FAULT_AT"] = fault_at
    return env


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    pid: int
    seconds: float


def cli_run(setup: KillSetup, home: Path, fault_at: str | None = None, timeout: float = 600) -> RunResult:
    """``cdp-pipeline run kill_drop`` in a new session (so the fault hook kills its whole tree)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "cdp_pipeline.cli", "--home", str(home), "run", CONNECTION],
        env=_env(setup, home, fault_at), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return RunResult(process.returncode, output, process.pid, time.monotonic() - started)


def table_differences(clean: Path, rerun: Path) -> dict[str, str]:
    """Tables whose rows differ (volatile columns left out), by table, as plain DuckDB SQL."""
    conn = duckdb.connect()
    conn.execute("ATTACH " + _sql_text(str(clean)) + " AS clean (READ_ONLY)")
    conn.execute("ATTACH " + _sql_text(str(rerun)) + " AS rerun (READ_ONLY)")

    def tables(database: str) -> set[str]:
        return {row[0] for row in conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [database]).fetchall()}

    differences: dict[str, str] = {}
    left, right = tables("clean"), tables("rerun")
    for missing in sorted(left ^ right):
        differences[missing] = "only in " + ("the clean store" if missing in left else "the rerun's store")
    for table in sorted((left & right) - HISTORY_TABLES):
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'clean' AND table_name = ? ORDER BY column_index", [table]
            ).fetchall()
            if not any(part in row[0] for part in VOLATILE_PARTS)
        ]
        if not columns:
            continue
        select = ", ".join(f'"{column}"' for column in columns)
        counts = []
        for a, b in (("clean", "rerun"), ("rerun", "clean")):
            row = conn.execute(f'SELECT count(*) FROM (SELECT {select} FROM {a}."{table}" EXCEPT ALL SELECT {select} FROM {b}."{table}")').fetchone()
            counts.append(row[0] if row else -1)
        if counts != [0, 0]:
            differences[table] = f"{counts[0]} rows only in the clean store, {counts[1]} only in the rerun's"
    if "segment_sizes" in left & right:
        latest = [sorted(conn.execute(LATEST_SEGMENT_SIZES.format(db=db)).fetchall()) for db in ("clean", "rerun")]
        if latest[0] != latest[1]:
            differences["segment_sizes"] = f"latest sizes {latest[0]} in the clean store, {latest[1]} in the rerun's"
    conn.close()
    return differences


def decrypted_exports(home: Path, gpg_cli, into: Path) -> dict[str, bytes]:
    """Every exported file of the outbox, decrypted, by its path under the outbox."""
    outbox = home / "drop" / "outbox"
    into.mkdir(parents=True, exist_ok=True)
    found: dict[str, bytes] = {}
    for path in sorted(p for p in outbox.rglob("*") if p.is_file()):
        relative = str(path.relative_to(outbox))
        if path.name.endswith(".pgp"):
            plain = gpg_cli.decrypt(path, into / relative.replace("/", "__"), passphrase=None)
            found[relative] = plain.read_bytes()
        else:
            found[relative] = path.read_bytes()
    return found


#: what may stay in CDP_HOME after a run: the store, its analysts' copy, the drop folder (the
#: "remote"), Dagster's home, and per delivery its reject report and manifests (names and hashes).
KEPT_NAMES = {"rejects.csv", "fetched.json", "decrypted.json", "goal.json", "skip.json", ".owner"}


def gnupg_homes_of(pid: int) -> list[Path]:
    """The GnuPG homes the keyring made for process ``pid`` (found by the owner mark it writes)."""
    homes = []
    for gnupg_home in Path("/tmp").glob("cdpg-*"):  # noqa: S108 - where the keyring makes its homes
        try:
            owner = (gnupg_home / ".owner").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if owner == str(pid):
            homes.append(gnupg_home)
    return homes


def leftovers(home: Path, killed_homes: list[Path]) -> list[str]:
    """Customer data a run left behind: any file in the work folders beyond the reports, a
    temporary copy of the store, a GnuPG home of the killed process or an agent still serving it."""
    found = []
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home)
        if relative.parts[0] in ("drop", "dagster_home") or not path.is_file():
            continue
        if relative.parts in (("store.duckdb",), ("store_published.duckdb",)) or path.name in KEPT_NAMES:
            continue
        found.append(str(relative))
    found += [f"GnuPG home {path} of the killed run" for path in killed_homes if path.exists()]
    agents = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout  # noqa: S607
    found += [
        f"gpg-agent still running: {line.strip()}"
        for line in agents.splitlines()
        if "gpg-agent" in line and any(str(path) in line for path in killed_homes)
    ]
    return found


def pool_claims(dagster_home: Path) -> tuple[set[str], set[str]]:
    """(runs holding a duckdb_write slot, runs waiting for one), read from the instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        info = instance.event_log_storage.get_concurrency_info("duckdb_write")
        return {slot.run_id for slot in info.claimed_slots}, {step.run_id for step in info.pending_steps if not step.assigned_timestamp}


@dataclass
class KillCase:
    """What one kill point did: the killed run, the rerun, and how the rerun's result compares."""

    point: str
    killed: RunResult
    killed_homes: list[Path]
    rerun: RunResult
    claims: tuple[set[str], set[str]]
    differences: dict[str, str]
    exports: dict[str, bytes]
    leftovers: list[str]


def run_case(setup: KillSetup, root: Path, point: str, clean_home: Path, gpg_cli, rerun_timeout: float = 400) -> KillCase:
    """Kill a run at ``point`` in a fresh home, run again, and gather what the checks look at."""
    home = new_home(setup, root / point)
    killed = cli_run(setup, home, fault_at=KILL_POINTS[point])
    killed_homes = gnupg_homes_of(killed.pid)
    rerun = cli_run(setup, home, timeout=rerun_timeout)
    return KillCase(
        point=point,
        killed=killed,
        killed_homes=killed_homes,
        rerun=rerun,
        claims=pool_claims(home / "dagster_home"),
        differences=table_differences(clean_home / "store.duckdb", home / "store.duckdb") if rerun.returncode == 0 else {},
        exports=decrypted_exports(home, gpg_cli, root / f"{point}_exports") if rerun.returncode == 0 else {},
        leftovers=leftovers(home, killed_homes),
    )
