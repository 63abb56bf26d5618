"""Everything between "decrypted" and "merge" for one pair: the encryption check, the ordinary
``build_import_tables`` on the data file and the spam-trap filter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from cdp_pipeline.config.catalog import Catalog
from cdp_pipeline.config.connection import (
    ProfileImportGoal,
)
from cdp_pipeline.dialects.sare.goal import SareActions, sare_goal
from cdp_pipeline.dialects.sare.settings import DATA, SareSettings
from cdp_pipeline.dialects.sare.sidecar import SareSidecar, check_data_file, pair_error, parse_sidecar, read_header
from cdp_pipeline.errors import InputProblem
from cdp_pipeline.tables.import_tables import build_import_tables
from cdp_pipeline.tables.staged import KEY, LINE, StagedImport


def check_encryption(sidecar: SareSidecar, data_was_encrypted: bool, sidecar_name: str, data_name: str) -> list[str]:
    """``encrypted: true`` with a plain data file is refused: the sender meant the data to travel
    encrypted, so a plaintext file on the server is an incident, not a delivery. The reverse
    (``false`` but PGP content) is decrypted anyway (decided by content) and only warned about."""
    if sidecar.encrypted and not data_was_encrypted:
        raise pair_error(
            data_name,
            f"{sidecar_name} says \"encrypted\": true but the data file is not PGP-encrypted",
            "Encrypt the csv with the connection's public key (gpg --encrypt), or set \"encrypted\": false",
        )
    if data_was_encrypted and not sidecar.encrypted:
        return [f"{data_name}: PGP-encrypted although {sidecar_name} says \"encrypted\": false; decrypted anyway"]
    return []


# --------------------------------------------------------------------------- staging one pair


@dataclass
class SareStaging:
    sidecar: SareSidecar
    goal: ProfileImportGoal
    actions: SareActions
    #: None when the sidecar says "import": false.
    staged: StagedImport | None


def stage_sare_pair(
    sidecar_path: Path,
    data_path: Path,
    *,
    sidecar_display: str,
    data_display: str,
    catalog: Catalog,
    settings: SareSettings,
    run_time: datetime,
    data_was_encrypted: bool = False,
) -> SareStaging:
    """Everything between "decrypted" and "merge" for one pair: parse the sidecar, check the file
    rules, translate, read the data with the ordinary engine and drop spam traps. Raises
    ``InputError`` (file, line, key/column, fix) for any rule the pair breaks."""
    sidecar = parse_sidecar(sidecar_path, sidecar_display)
    encryption_warnings = check_encryption(sidecar, data_was_encrypted, sidecar_display, data_display)
    check_data_file(data_path, data_display)
    header = read_header(data_path, sidecar, data_display)
    goal, actions = sare_goal(sidecar, header, settings, catalog, data_name=data_display, sidecar_name=sidecar_display)
    actions.warnings[:0] = encryption_warnings
    if not actions.import_rows:
        return SareStaging(sidecar=sidecar, goal=goal, actions=actions, staged=None)
    staged = build_import_tables(goal, catalog, {DATA: data_path}, {DATA: data_display}, run_time)
    staged = drop_spamtraps(staged, actions, data_display)
    staged.warnings[:0] = actions.warnings
    return SareStaging(sidecar=sidecar, goal=goal, actions=actions, staged=staged)


def drop_spamtraps(staged: StagedImport, actions: SareActions, display_name: str) -> StagedImport:
    """checkSpamtrap: rows whose address is on the spam-trap list are left out, each as a reject
    (file, line, reason) so the ledger counts them. A vectorised anti-join; the list file is read
    with Polars, one address per line (trimmed, lower-cased; blank lines and ``#`` comments skipped)."""
    if not actions.spamtrap_list:
        return staged
    path = Path(actions.spamtrap_list)
    if not path.is_file():
        raise pair_error(
            str(path), "the spam-trap list (dialect.spamtrap_list) does not exist", "Point dialect.spamtrap_list at a file of addresses, one per line"
        )
    if path.stat().st_size == 0:
        return staged
    traps = (
        pl.read_csv(path, has_header=False, new_columns=["address"], separator="\x1f", quote_char=None, schema_overrides={"address": pl.String})
        .select(pl.col("address").str.strip_chars().str.to_lowercase())
        .filter(pl.col("address").is_not_null() & (pl.col("address") != "") & ~pl.col("address").str.starts_with("#"))
        .unique()
    )
    column = KEY if actions.spamtrap_property == actions.identifier_property else actions.spamtrap_property
    if column not in staged.records.columns:
        return staged
    hit = pl.col(column).cast(pl.String).str.to_lowercase().is_in(traps["address"].implode())
    trapped = staged.records.filter(hit.fill_null(False))
    if trapped.height == 0:
        return staged
    rejects = [
        InputProblem(file=display_name, line=line, column=None, reason="the address is on the spam-trap list (checkSpamtrap)", fix="The row was left out")
        for line in trapped[LINE].to_list()
    ]
    return StagedImport(
        **{
            **vars(staged),
            "records": staged.records.filter(~hit.fill_null(False)),
            "rejects": [*staged.rejects, *rejects],
        }
    )
