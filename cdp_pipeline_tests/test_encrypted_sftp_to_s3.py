"""One delivery the way a production connection meets it: PGP-encrypted files on a real OpenSSH
server → the store → a PGP-encrypted export on an S3 API server; then the source files carry
`.done`. Real sshd, real moto server, real gpg, all on 127.0.0.1."""

from __future__ import annotations

import shutil

import duckdb
import yaml

from cdp_pipeline.cli import run_now
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR
from cdp_pipeline.defs.project import project_config
from cdp_pipeline.demo.generate import generate_delivery


def test_encrypted_sftp_delivery_to_encrypted_s3_export(tmp_path, monkeypatch, sshd_server, s3_bucket, pgp_keys, gpg_cli, pgp_env):
    sftp = sshd_server.settings("password")
    for name, value in sftp.environment.items():
        monkeypatch.setenv(name, value)
    directory = sshd_server.fresh_directory("password", "drop")
    plain = generate_delivery(tmp_path / "plain", profiles=120, seed=7, date="20260201")
    for path in plain.values():
        # Encrypted but still named .csv: recognised by content, not by extension.
        encrypted = gpg_cli.encrypt(path, tmp_path / f"{path.name}.gpg", pgp_keys.recipient)
        sshd_server.drop_file("password", f"{directory}/{path.name}", encrypted.read_bytes())

    demo = yaml.safe_load((BUNDLED_CONFIG_DIR / "connections" / "demo_local.yaml").read_text())
    pgp = {k: v for k, v in pgp_env.items() if not k.startswith("signer")}
    connection = {
        **demo,
        "name": "partner_sftp",
        "source": sftp.location.model_dump(mode="json", exclude_none=True),
        "pgp": pgp,
        "schedules": [],
    }
    for goal in connection["goals"]:
        if "files" in goal:
            goal["files"]["directory"] = directory
            goal["files"]["after_import"] = {"action": "done_suffix"}
        else:
            goal["target"] = {
                "location": s3_bucket.location.model_dump(mode="json", exclude_none=True),
                "directory": "exports",
                "file_name": "high_value_{date}.csv",
                "encrypt": True,
                "manifest": True,
            }
            goal["timeline"]["directory"] = "exports/timeline"
    config = tmp_path / "config"
    (config / "connections").mkdir(parents=True)
    shutil.copy(BUNDLED_CONFIG_DIR / "store.yaml", config / "store.yaml")
    (config / "connections" / "partner.yaml").write_text(yaml.safe_dump(connection, sort_keys=False))
    monkeypatch.setenv("CDP_CONFIG_DIR", str(config))
    monkeypatch.setenv("CDP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    project_config.cache_clear()
    try:
        summary = run_now("partner_sftp", echo=lambda *_: None)
    finally:
        project_config.cache_clear()

    assert summary["success"], summary
    with duckdb.connect(str(tmp_path / "home" / "store.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (120,)
        assert conn.execute("SELECT count(*) FROM timeline_order").fetchone() == (180,)

    keys = s3_bucket.keys()
    exported = [k for k in keys if k.endswith(".csv.pgp") and "/timeline/" not in k]
    assert len(exported) == 1, keys
    assert any(k.endswith("timeline/order.csv.pgp") for k in keys)
    assert any(k.endswith(".csv.pgp.manifest.json") for k in keys)
    ciphertext = tmp_path / "export.pgp"
    ciphertext.write_bytes(s3_bucket.get(exported[0]))
    decrypted = gpg_cli.decrypt(ciphertext, tmp_path / "export.csv", passphrase=None)
    lines = decrypted.read_text().splitlines()
    assert lines[0].startswith("profile_id,customer_number,email")
    segment = next(e for e in summary["exports"] if e["asset"].endswith("segment_export"))
    assert len(lines) - 1 == segment["profiles_exported"] > 0

    # After the merge every source file carries .done, and nothing is left under its old name.
    for path in plain.values():
        assert sshd_server.server_path("password", f"{directory}/{path.name}.done").exists()
        assert not sshd_server.server_path("password", f"{directory}/{path.name}").exists()
