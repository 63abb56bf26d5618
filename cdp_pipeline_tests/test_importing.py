"""What a delivery leaves in the work directory: nothing of the customers' data after a merge, and
nothing older than a day after a failed run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from cdp_pipeline import importing


def delivery_dir(root: Path, name: str, age_hours: float) -> Path:
    work_dir = root / "acme" / name
    for folder in ("fetched", "decrypted", "tables"):
        (work_dir / folder).mkdir(parents=True)
        (work_dir / folder / "customers.bin").write_text("id,email\n1,a@example.com\n")
        stamp = time.time() - age_hours * 3600
        os.utime(work_dir / folder, (stamp, stamp))
    (work_dir / "fetched.json").write_text("{}")
    (work_dir / "rejects.csv").write_text("file,line,column,reason\n")
    return work_dir


def test_clean_plaintext_keeps_only_manifests_and_the_reject_report(tmp_path: Path) -> None:
    work_dir = delivery_dir(tmp_path, "customers-1", age_hours=0)
    importing.clean_plaintext(work_dir)
    assert sorted(path.name for path in work_dir.iterdir()) == ["fetched.json", "rejects.csv"]


def test_sweep_removes_the_data_of_runs_older_than_a_day(tmp_path: Path) -> None:
    stale = delivery_dir(tmp_path, "customers-old", age_hours=30)
    recent = delivery_dir(tmp_path, "customers-new", age_hours=2)
    project = SimpleNamespace(work_dir=tmp_path)
    assert importing.sweep_stale_work(project, "acme") == [stale]  # type: ignore[arg-type]
    assert sorted(path.name for path in stale.iterdir()) == ["fetched.json", "rejects.csv"]
    assert (recent / "decrypted" / "customers.bin").exists()
    assert importing.sweep_stale_work(project, "acme", older_than_hours=1) == [recent]  # type: ignore[arg-type]
    assert importing.sweep_stale_work(project, "other") == []  # type: ignore[arg-type]


def test_the_decryption_records_which_files_arrived_encrypted(tmp_path: Path, pgp_keys, gpg_cli) -> None:
    # Staging asks whether the root arrived encrypted (a SARE sidecar must agree); on S3 work
    # storage it no longer downloads the ciphertext again to find out, so the record must be right.
    import json

    from cdp_pipeline.crypto.keyring import PgpKeyring
    from cdp_pipeline.deliveries import Delivery
    from cdp_pipeline.transports.base import RemoteFile
    from cdp_pipeline.transports.local import LocalTransport
    from cdp_pipeline_tests.fixtures.gpg_keys import PASSPHRASE

    source = tmp_path / "remote"
    source.mkdir()
    (tmp_path / "orders.csv").write_text("order_id,email\n1,a@example.com\n")
    gpg_cli.encrypt(tmp_path / "orders.csv", source / "orders.csv.gpg", pgp_keys.recipient)
    (source / "lines.csv").write_text("order_id,sku\n1,X\n")
    files = {
        "orders": RemoteFile("orders.csv.gpg", (source / "orders.csv.gpg").stat().st_size, 0.0),
        "lines": RemoteFile("lines.csv", (source / "lines.csv").stat().st_size, 0.0),
    }
    work = tmp_path / "work"
    importing.fetch_delivery(LocalTransport(source), Delivery(connection="c", goal="orders", files=files, root_name="orders"), work)
    importing.decrypt_delivery(work, lambda: PgpKeyring([pgp_keys.recipient.private_key], PASSPHRASE))

    recorded = json.loads((work / "decrypted.json").read_text())
    assert recorded["encrypted_names"] == ["orders"] and recorded["encrypted_files"] == 1
