"""Pairing a listing of the import folder into ``name.csv`` + ``name.import`` deliveries."""

from __future__ import annotations

import re
from collections.abc import Callable

from cdp_pipeline.deliveries.grouping import Delivery, DeliveryScan
from cdp_pipeline.dialects.sare.settings import DATA, ENCRYPTED_SUFFIXES, PLAIN_SUFFIX, SIDECAR, SIDECAR_SUFFIX, SareSettings
from cdp_pipeline.transports.base import RemoteFile, is_temporary_upload

# --------------------------------------------------------------------------- pairing


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

def split_pair_name(name: str) -> tuple[str, str] | None:
    """(stem, kind) for a name of a pair: kind is "sidecar", "plain" or "encrypted"; the suffix
    is compared case-insensitively, the stem is kept as written."""
    lower = name.lower()
    if lower.endswith(SIDECAR_SUFFIX):
        return name[: -len(SIDECAR_SUFFIX)], "sidecar"
    for suffix in ENCRYPTED_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], "encrypted"
    if lower.endswith(PLAIN_SUFFIX):
        return name[: -len(PLAIN_SUFFIX)], "plain"
    return None


def pair_files(
    listing: list[RemoteFile],
    *,
    connection: str = "",
    goal: str = "sare_import",
    is_ready: Callable[[RemoteFile], bool] = lambda _file: True,
    now: float | None = None,
    partner_wait_seconds: float = 1800,
) -> tuple[list[Delivery], list[str], list[str]]:
    """Group one listing of the import folder into ``name.csv`` + ``name.import`` pairs.

    Returns ``(pairs, waiting, problems)``: ``pairs`` are ``Delivery`` objects (files ``"data"`` and
    ``"sidecar"``, root ``"data"``), oldest first; ``waiting`` names a file whose partner is not
    there (yet) or that is still being written; ``problems`` names what cannot become a pair:
    base names that differ only in case, two data files for one sidecar (``name.csv`` and
    ``name.csv.gpg``), a lone file older than ``partner_wait_seconds`` (it keeps waiting too),
    control characters in a name, and files that belong to no pair. ``now`` is seconds since the
    epoch (the lone-file age uses the server's mtime)."""
    waiting: list[str] = []
    problems: list[str] = []
    groups: dict[str, dict[str, list[RemoteFile]]] = {}
    for remote in sorted(listing, key=lambda r: r.path):
        name = remote.name
        if is_temporary_upload(name):
            continue
        if _CONTROL.search(name):
            problems.append(f"{remote.path!r}: the file name contains control characters; rename it")
            continue
        split = split_pair_name(name)
        if split is None:
            problems.append(
                f"{remote.path}: not part of a SARE pair; upload <name>.csv (or <name>.csv.gpg) with <name>.import"
            )
            continue
        stem, kind = split
        groups.setdefault(stem.lower(), {}).setdefault(kind, []).append(remote)

    pairs: list[Delivery] = []
    for members in groups.values():
        sidecars = members.get("sidecar", [])
        data = members.get("plain", []) + members.get("encrypted", [])
        everything = data + sidecars
        names = ", ".join(r.name for r in everything)
        stems = {split_pair_name(r.name)[0] for r in everything}  # type: ignore[index]
        if len(stems) > 1:
            problems.append(
                f"{names}: the base names differ only in upper/lower case; [name].csv and [name].import must match "
                "exactly: rename one of them"
            )
            continue
        if len(data) > 1:
            problems.append(
                f"{names}: two data files for one .import; keep either the plain .csv or the encrypted .csv.gpg/.csv.pgp"
            )
            continue
        if len(sidecars) > 1:  # only possible with suffixes differing in case (x.import, x.IMPORT)
            problems.append(f"{names}: two .import files for one data file; keep one")
            continue
        if not sidecars or not data:
            lone = everything[0]
            stem = next(iter(stems))
            missing = f"{stem}.import" if not sidecars else f"{stem}.csv (or {stem}.csv.gpg)"
            message = f"{lone.path}: waiting for {missing}; the pair is imported when both files are there"
            waiting.append(message)
            if now is not None and now - lone.mtime > partner_wait_seconds:
                minutes = int((now - lone.mtime) // 60)
                problems.append(f"{lone.path}: has waited {minutes} minutes for {missing}; upload it, or remove the lone file")
            continue
        pending = [r.name for r in everything if not is_ready(r)]
        if pending:
            waiting.append(f"{data[0].path}: not complete yet ({', '.join(pending)} still changing)")
            continue
        pairs.append(Delivery(connection=connection, goal=goal, files={DATA: data[0], SIDECAR: sidecars[0]}, root_name=DATA))
    pairs.sort(key=lambda d: (d.newest_mtime, d.root.path))
    return pairs, waiting, problems


def scan_sare_deliveries(
    connection: str,
    listing: list[RemoteFile],
    settings: SareSettings,
    is_ready: Callable[[RemoteFile], bool] = lambda _file: True,
    now: float | None = None,
) -> DeliveryScan:
    """``pair_files`` as the ``DeliveryScan`` the sensor and ``find_delivery`` already consume."""
    pairs, waiting, problems = pair_files(
        listing, connection=connection, goal=settings.goal_name, is_ready=is_ready, now=now,
        partner_wait_seconds=settings.partner_wait_minutes * 60,
    )
    return DeliveryScan(deliveries=pairs, waiting=waiting, problems=problems)
