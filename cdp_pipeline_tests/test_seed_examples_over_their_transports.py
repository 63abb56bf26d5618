"""The product documents' own examples, verbatim, through the asset graph (``run_connection``:
the same jobs a schedule or "Run now" launches) over the transport their system uses: SARE's
``.import`` example over SFTP (a real OpenSSH server) and BlueConic's CSV sample over S3 (a real
S3 API server), out again as the file the document shows. Netmera's push and profile-attribute
samples run over FTPS in ``dialects/test_netmera_ftps.py``. Expectations come from the examples'
text with plain Python and from the store with plain DuckDB SQL."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import duckdb
import pytest
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.defs.project import project_config
from cdp_pipeline_tests.dialects.test_sare import SEED_CSV, SEED_SIDECAR

EXAMPLES = Path(__file__).resolve().parents[1] / "cdp_pipeline" / "demo" / "examples"

# BlueConic's "CSV file format" sample (seed 001), verbatim: "This would be exported as the
# following CSV text file".
BLUECONIC_SAMPLE = """id,ib_avg,ib_ddg,ib_z1,ib_z2
aghvww32,4123551,GK,open,3
agkkemw3,4233215,GK,open,0
alfk3oor,4135111,GR,open,
bezz5las,4009852,GR,closed,0
c9uuz5g0,4823507,K,closed,1
cc2rkes6,4222941,G,open,1
"""


def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: dict | Path, name: str, connection: dict) -> Path:
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    if isinstance(store, Path):
        shutil.copy(store, config / "store.yaml")
    else:
        (config / "store.yaml").write_text(yaml.safe_dump(store))
    (config / "connections" / f"{name}.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    project_config.cache_clear()
    return home


def test_the_sare_manuals_import_example_over_sftp(tmp_path, monkeypatch, sshd_server):
    """"Poprzez serwer SFTP należy wysyłać do ścieżki /in/import dwa pliki: exemple.csv,
    exemple.import": the manual's sidecar, byte for byte, next to a csv with its map's headers,
    on a real SFTP server; the pair is imported and moved to done/ ("Zaimportowane pliki zostają
    przeniesione do podkatalogu: done")."""
    sftp = sshd_server.settings("password")
    for variable, value in sftp.environment.items():
        monkeypatch.setenv(variable, value)
    inbox = sshd_server.fresh_directory("password", "in_import")
    sshd_server.drop_file("password", f"{inbox}/exemple.csv", SEED_CSV.encode())
    sshd_server.drop_file("password", f"{inbox}/exemple.import", SEED_SIDECAR.encode())
    connection = yaml.safe_load((EXAMPLES / "sare_connection.yaml").read_text())
    connection["source"] = sftp.location.model_dump(mode="json", exclude_none=True)
    connection["dialect"].update(directory=inbox, stable_seconds=0)
    connection["dialect"].pop("spamtrap_list", None)
    connection.pop("pgp", None)
    outbox = sshd_server.fresh_directory("password", "out_export")
    for goal in connection["goals"]:
        goal.setdefault("target", {}).update(directory=outbox, encrypt=False)
    home = _environment(tmp_path, monkeypatch, EXAMPLES / "store_sare_netmera.yaml", connection["name"], connection)
    try:
        summary = run_now(connection["name"], echo=lambda *_: None)
    finally:
        project_config.cache_clear()
    assert [(item["delivery"], item["success"]) for item in summary["imports"]] == [("sare_import:exemple.csv", True)], summary

    # The expectation from the two files' text: every csv row is one address; fields.map sends
    # cechaNaglowek to cecha7 and foreignKey to cecha6 (the foreign key); group 45, status 8 and
    # the default mail type "text,HTML" from the sidecar. SARE compares addresses without case.
    sidecar = json.loads(SEED_SIDECAR)
    rows = list(csv.DictReader(io.StringIO(SEED_CSV), delimiter=sidecar["csv"]["delimiter"]))
    expected = sorted(
        (row["email"].lower(), row["cechaNaglowek"], row["foreignKey"], sidecar["status"], "text,HTML", [str(sidecar["group"])]) for row in rows
    )
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        stored = conn.execute("SELECT email, cecha7, cecha6, sare_status, sare_mail_type, sare_groups FROM profiles ORDER BY email").fetchall()
        ledger = conn.execute("SELECT goal, status, rows_read, rows_rejected FROM deliveries").fetchall()
    assert stored == expected
    assert ledger == [("sare_import", "merged", len(rows), 0)]
    assert sshd_server.server_path("password", f"{inbox}/done/exemple.csv").read_bytes() == SEED_CSV.encode()
    assert sshd_server.server_path("password", f"{inbox}/done/exemple.import").read_bytes() == SEED_SIDECAR.encode()
    assert not sshd_server.server_path("password", f"{inbox}/exemple.csv").exists()


def test_blueconics_csv_sample_over_s3_in_and_out_again(tmp_path, monkeypatch, s3_bucket):
    """BlueConic's sample, uploaded to S3 as a partner would, imported with "Add all detected
    fields", then exported to S3 with the same columns: the file that leaves is the document's
    text (rows in identifier order, as the sample lists them)."""
    s3_bucket.put("imports/blueconic_sample.csv", BLUECONIC_SAMPLE)
    header = BLUECONIC_SAMPLE.splitlines()[0].split(",")
    store = {
        "store": {"path": "store.duckdb", "published_path": None},
        "catalog": {
            "profile_properties": {
                "customer_id": {"type": "text", "unique": True},
                "ib_avg": {"type": "integer"}, "ib_ddg": {"type": "text"}, "ib_z1": {"type": "text"}, "ib_z2": {"type": "integer"},
            },
            "segments": {"everyone": {"condition": "TRUE"}},
        },
    }
    location = s3_bucket.location.model_dump(mode="json", exclude_none=True)
    connection = {
        "name": "blueconic_s3",
        "source": location,
        "goals": [
            {
                "name": "sample_in",
                "type": "import_profiles",
                "files": {
                    "directory": "imports", "root": {"name": "sample", "pattern": "*.csv"},
                    "readiness": {"mode": "stable", "stable_seconds": 0},
                },
                "identifiers": [{"column": "id", "property": "customer_id"}],
                "allow_new_profiles": True,
                "bulk_mapping": {"rule": "set"},
            },
            {
                "name": "sample_out",
                "type": "export_profiles",
                "segment": "everyone",
                "target": {"directory": "exports", "file_name": "sample_{date}.csv"},
                "columns": [{"header": "id", "property": "customer_id"}, *({"header": name, "property": name} for name in header[1:])],
            },
        ],
    }
    home = _environment(tmp_path, monkeypatch, store, "blueconic_s3", connection)
    try:
        summary = run_now("blueconic_s3", echo=lambda *_: None)
    finally:
        project_config.cache_clear()
    assert summary["success"], summary

    rows = list(csv.reader(io.StringIO(BLUECONIC_SAMPLE)))[1:]
    expected = sorted((row[0], int(row[1]), row[2], row[3], int(row[4]) if row[4] else None) for row in rows)
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as conn:
        stored = conn.execute("SELECT customer_id, ib_avg, ib_ddg, ib_z1, ib_z2 FROM profiles ORDER BY customer_id").fetchall()
    assert stored == expected
    (key,) = [k for k in s3_bucket.keys("exports/") if k.endswith(".csv")]
    lines = s3_bucket.get(key).decode("utf-8").splitlines()
    assert [lines[0], *sorted(lines[1:])] == BLUECONIC_SAMPLE.splitlines()
