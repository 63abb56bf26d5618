"""Progress of long stages: the engine reports counts and rates, the command line prints them."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from cdp_pipeline import progress

STORE = """
catalog:
  profile_properties:
    email: {type: text, unique: true}
    city: {type: text}
"""
CONNECTION = """
name: acme
source: {type: local, path: drop}
goals:
  - name: people
    type: import_profiles
    files: {root: {name: people, pattern: "people_*.csv"}}
    identifiers: [{column: email, property: email}]
    allow_new_profiles: true
    mappings: [{column: city, property: city, rule: set}]
"""


def _setup(tmp_path: Path, rows: int) -> tuple[Path, Path, list[tuple[str, str]]]:
    config, home = tmp_path / "config", tmp_path / "home"
    (config / "connections").mkdir(parents=True)
    (config / "store.yaml").write_text(STORE)
    (config / "connections" / "acme.yaml").write_text(CONNECTION)
    (home / "drop").mkdir(parents=True)
    written = [(f"person{i}@example.com", f"City{i % 97}") for i in range(rows)]
    with (home / "drop" / "people_20260115.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "city"])
        writer.writerows(written)
    return config, home, written


def _run(home: Path, config: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_CONFIG_DIR", "DAGSTER_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "cdp_pipeline.cli", "run", "acme", "--home", str(home), "--config-dir", str(config), *options],
        env=env, capture_output=True, text=True, timeout=600,
    )


def test_run_prints_each_stage_with_its_rate_and_never_a_value(tmp_path):
    config, home, written = _setup(tmp_path, rows=30_000)
    size = (home / "drop" / "people_20260115.csv").stat().st_size

    result = _run(home, config, "--progress-seconds", "0")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    key = "people:people_20260115.csv"
    download = [line for line in lines if line.startswith(f"download {key}: ") and " done in " in line]
    assert len(download) == 1, result.stderr
    assert re.fullmatch(rf"download {re.escape(key)}: {size / 1e6:,.1f} MB done in [0-9.]+ s \([0-9,.]+ MB/s\)", download[0])
    for stage in ("read", "merge"):
        (line,) = [line for line in lines if line.startswith(f"{stage} {key}: ") and " done in " in line]
        assert re.fullmatch(rf"{stage} {re.escape(key)}: {len(written):,} rows done in [0-9.]+ s \([0-9,]+ rows/s\)", line), line
    output = result.stdout + result.stderr
    assert not any(email in output or f"{city}," in output for email, city in written[:50])


def test_run_is_quiet_about_short_stages_by_default(tmp_path):
    config, home, _ = _setup(tmp_path, rows=10)
    result = _run(home, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported people:people_20260115.csv" in result.stdout
    assert not re.search(r"rows/s|MB/s", result.stdout + result.stderr), result.stderr


def test_a_long_stage_reports_bytes_so_far_while_it_runs(tmp_path):
    """A download into a folder, written in steps: the ticker reports what is on disk before the
    stage ends, and the end reports the total with a rate."""
    seen: list[progress.Progress] = []
    folder = tmp_path / "fetched"
    folder.mkdir()
    with progress.reporting(seen.append, tick_seconds=0.1):
        with progress.stage("download", "people:x.csv", "bytes", measure=lambda: progress.folder_bytes(folder)):
            with (folder / "x.csv.part").open("wb") as handle:
                for _ in range(8):
                    handle.write(b"x" * 100_000)
                    handle.flush()
                    time.sleep(0.1)
    running = [p for p in seen if not p.finished]
    assert running and all(p.unit == "bytes" for p in running)
    assert any(0 < (p.done or 0) < 800_000 for p in running)
    (finished,) = [p for p in seen if p.finished]
    assert finished.done == 800_000 and finished.per_second is not None and finished.per_second > 0
    assert progress.describe(finished).startswith("download people:x.csv: 0.8 MB done in ")
    assert progress.describe(finished).endswith(" MB/s)")


def test_without_a_sink_a_stage_reports_nothing_and_starts_no_thread():
    before = threading.active_count()
    with progress.stage("read", "people:x.csv", "rows") as meter:
        meter.done = 5
        assert threading.active_count() == before


def test_download_and_decryption_of_an_encrypted_delivery_report_their_bytes(tmp_path, pgp_keys, gpg_cli):
    from cdp_pipeline import importing
    from cdp_pipeline.crypto.keyring import PgpKeyring
    from cdp_pipeline.deliveries import Delivery
    from cdp_pipeline.transports.base import RemoteFile
    from cdp_pipeline.transports.local import LocalTransport
    from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE

    plain = tmp_path / "customers.csv"
    plain.write_text("customer_id,email\n" + "".join(f"{i},p{i}@example.com\n" for i in range(20_000)))
    source = tmp_path / "remote"
    source.mkdir()
    gpg_cli.encrypt(plain, source / "customers.csv.gpg", pgp_keys.recipient)
    size = (source / "customers.csv.gpg").stat().st_size
    delivery = Delivery(connection="c", goal="customers", files={"customers": RemoteFile("customers.csv.gpg", size, 0.0)}, root_name="customers")
    work = tmp_path / "work"
    seen: list[progress.Progress] = []
    with progress.reporting(seen.append, tick_seconds=0.1):
        importing.fetch_delivery(LocalTransport(source), delivery, work)
        importing.decrypt_delivery(work, lambda: PgpKeyring([pgp_keys.recipient.private_key], PASSPHRASE))
    finished = {p.stage: p for p in seen if p.finished}
    assert set(finished) == {"download", "decrypt"}
    assert finished["download"].done == size and finished["download"].subject == delivery.partition_key
    assert finished["decrypt"].done == plain.stat().st_size and finished["decrypt"].subject == delivery.partition_key
