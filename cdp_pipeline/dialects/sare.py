"""SARE / Digitree SFTP drops: ``name.csv`` plus a ``name.import`` JSON sidecar, translated into the
same ProfileImportGoal, merge rules, ledger and store as every other delivery (no second pipeline).

Engine code: no Dagster import. The source is the seed ``004_*.txt`` (Digitree's Polish manual).

The contract with the delivery flow (``deliveries.py`` / ``importing.py``)
--------------------------------------------------------------------------

1. **Listing** (sensor and ``find_delivery``): ``scan_sare_deliveries(connection, listing, settings,
   is_ready, now)`` replaces ``scan_deliveries`` for a connection whose ``dialect.type`` is ``sare``.
   It returns the usual ``DeliveryScan``; each ``Delivery`` has two logical files, ``"data"`` (the
   root: ``name.csv``, or ``name.csv.gpg`` / ``name.csv.pgp``) and ``"sidecar"`` (``name.import``),
   so fetch → decrypt → ledger (both files' sha256 form the content identity) work unchanged.
   ``pair_files`` is the same as a plain ``(pairs, waiting, problems)`` tuple.
2. **Staging** (``stage_delivery``): instead of ``build_import_tables(connection goal ...)`` call
   ``stage_sare_pair(...)`` with the decrypted local paths of ``"sidecar"`` and ``"data"``. It
   parses and validates the sidecar, checks the file rules (UTF-8 without BOM, no NUL byte),
   reads the header, builds the goal with ``sare_goal`` and runs the ordinary
   ``build_import_tables`` on the data file only. It returns ``SareStaging(sidecar, goal,
   actions, staged)``; ``staged`` is ``None`` when the sidecar says ``"import": false`` (leave
   the pair where it is and report ``actions.skip_reason``).
3. **Merging** (``merge_staged``): in the writer connection, ``staged = resolve_duplicates(conn,
   staged, actions)``, then inside the delivery's transaction
   ``apply_store_actions(conn, catalog, actions, staged, phase="before", now=now)``,
   ``merge_delivery(...)``, ``apply_store_actions(..., phase="after", ...)``. The actions are
   set-based SQL and run in the caller's transaction (they never BEGIN/COMMIT themselves), so
   ``merge_delivery`` needs a before/after hook to keep "one delivery = one transaction".
4. **Finishing**: ``finish_remote_files`` with the generated goal (``goal.files.after_import`` is
   ``delete`` for ``autodelete: 1``, ``move_to_done`` into ``done/`` otherwise); both files of
   the pair move together because both are in the fetched manifest.
5. **Configuration**: ``Connection.dialect: cdp_pipeline.dialects.Dialect | None``. The import
   goal (``settings.goal_name``) is generated per pair, so it is not in ``connection.goals``:
   ``import_goal``/``find_delivery`` route a partition ``<goal_name>:<name>.csv`` to this module,
   ``goal_config_hash`` hashes the dialect settings instead of ``conn.goal(name)`` (the sidecar's
   bytes are already part of the content identity), and the sensor interval defaults to
   ``DEFAULT_POLL_SECONDS`` ("Import jest uruchamiany co 5 minut").

The ``overwrite`` parameter (SARE: "Nadpisywanie adresów", overwriting existing addresses)
------------------------------------------------------------------------------------------

"Data" = the columns of the file (after ``fields.map`` / ``fields.ignore``); "status" =
``dialect.status_property`` (the sidecar's ``status``); "type" = ``dialect.mail_type_property``
(the sidecar's ``mail_type``: SARE's "typ e-maila"). A new profile gets every value in every mode
(``set_if_empty`` on an empty profile is a write), so the modes differ only for existing profiles.

=====  ======================================  ============  ============  ============  ==========================
value  SARE (seed, translated)                 data          status        mail type     besides the merge
=====  ======================================  ============  ============  ============  ==========================
0      do not import                           –             –             –             nothing is written: no
                                                                                         mappings, no new profiles;
                                                                                         the file is still checked
                                                                                         and the pair finished
1      overwrite the status only               set_if_empty  set           set_if_empty  –
2      overwrite imported data only            set           set_if_empty  set_if_empty  –
3      overwrite all data (clear history)      set_or_clear  set           set           delete the profiles'
                                                                                         timeline events of
                                                                                         ``dialect.history_event_
                                                                                         types`` ("history")
4      overwrite imported data, with type      set           set_if_empty  set           –
       change (default)
5      overwrite imported data, clear the      set           set_if_empty  set_if_empty  ``set_or_clear`` with an
       properties not imported                                                           empty value for every
                                                                                         ``dialect.managed_
                                                                                         properties`` entry the
                                                                                         file does not import
=====  ======================================  ============  ============  ============  ==========================

In every mode except 0 the group (when not 0) is ``add``-ed to ``dialect.groups_property`` and a
``consent`` with status 2 ("yes") is ``add``-ed to ``dialect.consent_property``; status 3 ("no")
removes it (an action after the merge: no merge rule removes a list item).
"""

from __future__ import annotations

import codecs
import csv
import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from cdp_pipeline.config.catalog import Catalog, PropertyDefinition, check_identifier
from cdp_pipeline.config.connection import (
    AfterImport,
    Files,
    FileSelection,
    Identifier,
    Mapping,
    MergeRule,
    ProfileImportGoal,
    Readiness,
)
from cdp_pipeline.config.csv_options import CsvOptions, StrictModel
from cdp_pipeline.config.processors import CustomProcessor, Lowercase, Processor, Trim
from cdp_pipeline.deliveries.grouping import Delivery, DeliveryScan
from cdp_pipeline.deliveries.sources import MergeContext, MergeSteps, StagedDelivery, StagingInput
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.store.schema import event_table, item_table, literal, quote
from cdp_pipeline.tables.csv_reading import normalise_column_name
from cdp_pipeline.tables.import_tables import build_import_tables
from cdp_pipeline.tables.staged import StagedImport
from cdp_pipeline.transports.base import RemoteFile, is_temporary_upload

#: logical names of the two files of a pair inside a Delivery (and the fetched/decrypted manifests).
DATA = "data"
SIDECAR = "sidecar"
SIDECAR_SUFFIX = ".import"
#: data file suffixes, plain first; "Szyfrowany plik może być tylko w formacie .csv": only the csv is encrypted.
PLAIN_SUFFIX = ".csv"
ENCRYPTED_SUFFIXES = (".csv.gpg", ".csv.pgp")
#: sidecars are a few hundred bytes; a bigger one is not a sidecar (and is not read into memory).
MAX_SIDECAR_BYTES = 1024 * 1024
_CHUNK = 8 * 1024 * 1024
_BOM = codecs.BOM_UTF8
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

OVERWRITE_MEANINGS: dict[int, str] = {
    0: "do not import",
    1: "overwrite the status only",
    2: "overwrite imported data only",
    3: "overwrite all data, clearing history",
    4: "overwrite imported data, with type change",
    5: "overwrite imported data, clear properties not imported",
}
STATUS_MEANINGS: dict[int, str] = {
    2: "unsubscribed manually",
    3: "unsubscribed",
    4: "wants to unsubscribe",
    5: "subscribed, not verified",
    6: "subscribed, unconfirmed",
    7: "address blocked",
    8: "subscribed and confirmed",
}
BLOCKED_STATUS = 7
#: "Import jest uruchamiany co 5 minut": the default sensor interval of a SARE connection.
DEFAULT_POLL_SECONDS = 300
CONSENT_MEANINGS: dict[int, str] = {1: "no information", 2: "yes", 3: "no"}
MAIL_TYPES = ("text,HTML", "text")

#: (data, status, mail type) merge rules per overwrite value; see the module docstring's table.
OVERWRITE_RULES: dict[int, tuple[MergeRule, MergeRule, MergeRule]] = {
    1: ("set_if_empty", "set", "set_if_empty"),
    2: ("set", "set_if_empty", "set_if_empty"),
    3: ("set_or_clear", "set", "set"),
    4: ("set", "set_if_empty", "set"),
    5: ("set", "set_if_empty", "set_if_empty"),
}

#: columns the goal adds to the data file (constant per file); chosen so normalise_column_name keeps them.
_STATUS_COLUMN = "sidecar_status"
_MAIL_TYPE_COLUMN = "sidecar_mail_type"
_GROUP_COLUMN = "sidecar_group"
_CONSENT_COLUMN = "sidecar_consent"
_CLEAR_PREFIX = "sidecar_clear_"
SIDECAR_COLUMNS_FUNCTION = "cdp_pipeline.dialects.sare:sidecar_columns"


def _choices(meanings: dict[int, str]) -> str:
    return ", ".join(f"{value} ({text})" for value, text in meanings.items())


# --------------------------------------------------------------------------- settings (connection side)


class SareSettings(StrictModel):
    """The connection's side of a SARE drop: where the pair lands and which catalog properties the
    sidecar's values go to. Proposed as ``dialect:`` on a Connection (``type: sare``)."""

    type: Literal["sare"]
    #: name of the generated import goal: partitions (``<goal>:<name>.csv``) and ledger rows carry it.
    goal_name: str = "sare_import"
    #: the seed's upload folder.
    directory: str = "/in/import"
    #: "Zaimportowane pliki zostają przeniesione do podkatalogu: done".
    done_directory: str = "done"
    quarantine_directory: str | None = None
    stable_seconds: float = Field(default=30, ge=0)
    #: a csv without its sidecar (or the reverse) waits; after this long it is also reported as a problem.
    partner_wait_minutes: float = Field(default=30, ge=0)
    #: accepted values of the sidecar's ``system``.
    systems: list[str] = Field(default_factory=lambda: ["sare"])
    #: accepted ``account_id`` values; empty accepts any (the seed: optional with one account).
    account_ids: list[str] = Field(default_factory=list)
    #: the profile property of SARE's ``email`` (the identifier when there is no foreign key).
    email_property: str = "email"
    #: SARE property (cecha) name → catalog property; unlisted names map to their normalised form.
    property_names: dict[str, str] = Field(default_factory=dict)
    status_property: str = "sare_status"
    mail_type_property: str = "sare_mail_type"
    groups_property: str = "sare_groups"
    consent_property: str = "consents"
    #: overwrite 5 clears these when the file does not import them; default: property_names' targets.
    managed_properties: list[str] | None = None
    #: overwrite 3 ("clear history") deletes the profiles' events of these types; none by default.
    history_event_types: list[str] = Field(default_factory=list)
    #: local text file, one address per line: what ``checkSpamtrap: true`` filters out.
    spamtrap_list: str | None = None

    @field_validator("goal_name")
    @classmethod
    def _goal_name(cls, value: str) -> str:
        return check_identifier(value, "goal name")

    @property
    def goal_names(self) -> tuple[str, ...]:
        """The goal generated per pair: partitions and ledger rows carry this name."""
        return (self.goal_name,)

    def property_for(self, sare_name: str) -> str:
        """The catalog property of a SARE property name (``cecha7`` → ``cecha7``, ``email`` → email_property)."""
        if sare_name in self.property_names:
            return self.property_names[sare_name]
        if sare_name.strip().lower() == "email":
            return self.email_property
        try:
            return normalise_column_name(sare_name)
        except ValueError:
            return sare_name


# --------------------------------------------------------------------------- the sidecar


class _SidecarModel(BaseModel):
    # Unknown keys are refused: a misspelt "overwite" must not silently fall back to the default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _strict_int(value: Any, key: str, allowed: dict[int, str] | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        shown = json.dumps(value) if not isinstance(value, (set, bytes)) else repr(value)
        hint = f"; allowed: {_choices(allowed)}" if allowed else ""
        raise ValueError(f"{key} must be a whole number written without quotes, got {shown}{hint}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"unknown {key} {value}; allowed: {_choices(allowed)}")
    return value


def _single_ascii(value: str, key: str, *, allow_empty: bool) -> str:
    if value == "" and allow_empty:
        return value
    if len(value) != 1 or not value.isascii():
        raise ValueError(f"csv.{key} must be one ASCII character, got {json.dumps(value)}")
    if value in "\r\n":
        raise ValueError(f"csv.{key} cannot be a line break")
    return value


class SareFields(_SidecarModel):
    #: CSV header → SARE property name.
    map: dict[str, str] = Field(default_factory=dict)
    #: header names left out of the import.
    ignore: list[str] = Field(default_factory=list)
    #: SARE property that identifies the address instead of the e-mail; must be in map or header.
    foreign_key: str | None = None


class SareCsv(_SidecarModel):
    delimiter: str = ";"
    enclosure: str = '"'
    escape: str = "\\"

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        return _single_ascii(value, "delimiter", allow_empty=False)

    @field_validator("enclosure", "escape")
    @classmethod
    def _optional_char(cls, value: str, info) -> str:
        return _single_ascii(value, info.field_name, allow_empty=True)


class SareConsent(_SidecarModel):
    """"Zgody": all three keys are required ("wymagane") when the block is present."""

    import_: StrictBool = Field(alias="import")
    name: str = Field(min_length=1)
    status: int

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> int:
        return _strict_int(value, "consent.status", CONSENT_MEANINGS)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The name becomes an item of a list property, whose items are separated by "|".
        if "|" in value or value != value.strip():
            raise ValueError(f"consent.name {json.dumps(value)} must not contain '|' or surrounding spaces")
        return value


class SareScripts(_SidecarModel):
    before: str | None = None
    after: str | None = None


class SareSidecar(_SidecarModel):
    """The ``.import`` file, key for key as the seed lists them, with the seed's defaults."""

    import_: StrictBool = Field(alias="import")
    system: str = "sare"
    group: int = 0
    overwrite: int = 4
    status: int = 8
    mail_type: str = "text,HTML"
    fields: SareFields = SareFields()
    csv: SareCsv = SareCsv()
    autodelete: int = 0
    encrypted: StrictBool = False
    account_id: int | str | None = None
    duplicates_handling: str = "default"
    check_spamtrap: StrictBool = Field(default=False, alias="checkSpamtrap")
    add_blocked_addresses_to_group: StrictBool = False
    consent: SareConsent | None = None
    sarescript: SareScripts = SareScripts()

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, value: Any) -> int:
        number = _strict_int(value, "group")
        if number < 0:
            raise ValueError(f"group must be 0 (no group) or a group number, got {number}")
        return number

    @field_validator("overwrite", mode="before")
    @classmethod
    def _overwrite(cls, value: Any) -> int:
        return _strict_int(value, "overwrite", OVERWRITE_MEANINGS)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> int:
        return _strict_int(value, "status", STATUS_MEANINGS)

    @field_validator("autodelete", mode="before")
    @classmethod
    def _autodelete(cls, value: Any) -> int:
        return _strict_int(value, "autodelete", {0: "keep the files (moved to done/)", 1: "delete the files after the import"})

    @field_validator("mail_type")
    @classmethod
    def _mail_type(cls, value: str) -> str:
        if value not in MAIL_TYPES:
            raise ValueError(f"unknown mail_type {json.dumps(value)}; allowed: \"text,HTML\" (default) or \"text\"")
        return value

    @field_validator("account_id", mode="before")
    @classmethod
    def _account(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("account_id must be the account's identifier (a number or a string), not true/false")
        return value

    @property
    def import_enabled(self) -> bool:
        return self.import_

    @property
    def duplicates(self) -> Literal["all", "skip"]:
        """"default: importuj wszystkie, inna wartość: pomiń"."""
        return "all" if self.duplicates_handling == "default" else "skip"


def _fail(display_name: str, reason: str, fix: str, line: int | None = None) -> InputError:
    return InputError(InputProblem(file=display_name, line=line, column=None, reason=reason, fix=fix))


def _check_bytes_head(head: bytes, display_name: str, what: str) -> None:
    if head.startswith(_BOM):
        raise _fail(
            display_name,
            f"the {what} starts with a UTF-8 byte-order mark (BOM); SARE requires UTF-8 without BOM",
            'Save the file as "UTF-8" (not "UTF-8 with BOM"), or remove the first three bytes EF BB BF',
            line=1,
        )


def _nul_error(display_name: str, line: int, what: str) -> InputError:
    return _fail(
        display_name,
        f"the {what} contains a NUL byte (0x00) on line {line}; SARE forbids the character x00",
        "Remove the NUL bytes; if every other byte is NUL the file is UTF-16: export it as UTF-8",
        line=line,
    )


def _utf8_error(display_name: str, exc: UnicodeDecodeError, offset: int, line: int, what: str) -> InputError:
    return _fail(
        display_name,
        f"the {what} is not valid UTF-8: byte 0x{exc.object[exc.start:exc.start + 1].hex().upper()} at byte offset {offset}",
        "Export the file as UTF-8 without BOM (SARE's required encoding), e.g. not cp1250",
        line=line,
    )


def _key_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a key path in the JSON text, for errors that name the line."""
    position = 0
    found = False
    for part in loc:
        if not isinstance(part, str):
            continue
        match = re.compile(r'"' + re.escape(part) + r'"\s*:').search(text, position)
        if match is None:
            break
        position, found = match.start(), True
    return text.count("\n", 0, position) + 1 if found else None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = SareSidecar
    for part in loc:
        if model is None:
            return None
        by_alias = {info.alias or name: info for name, info in model.model_fields.items()}
        info = by_alias.get(part)
        annotation = getattr(info, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _duplicate_keys(display_name: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                # json.loads would silently keep the last one; which one the sender meant is unknown.
                raise _fail(display_name, f"key {key!r} appears twice in the same object", "Keep one of the two")
            result[key] = value
        return result

    return hook


def parse_sidecar(path: Path, display_name: str) -> SareSidecar:
    """Read and validate a ``.import`` file. Raises ``InputError`` naming the file, the line, the
    key path and the allowed values: BOM, NUL byte, invalid UTF-8, invalid JSON (line/column),
    duplicate or unknown keys, values out of range (``overwrite``, ``status``, ``mail_type`` ...)."""
    size = path.stat().st_size
    if size == 0:
        raise _fail(display_name, "the .import file is empty", "Write the import settings as a JSON object")
    if size > MAX_SIDECAR_BYTES:
        raise _fail(display_name, f"the .import file has {size} bytes; a sidecar is a small JSON object", "Check that the data and .import files were not swapped")
    raw = path.read_bytes()
    _check_bytes_head(raw, display_name, ".import file")
    if b"\x00" in raw:
        raise _nul_error(display_name, raw.count(b"\n", 0, raw.index(b"\x00")) + 1, ".import file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _utf8_error(display_name, exc, exc.start, raw.count(b"\n", 0, exc.start) + 1, ".import file") from None
    try:
        data = json.loads(text, object_pairs_hook=_duplicate_keys(display_name))
    except json.JSONDecodeError as exc:
        raise _fail(
            display_name,
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            "Fix the JSON (a missing comma or quote, a trailing comma, single quotes); see docs/dialects.md for an example",
            line=exc.lineno,
        ) from None
    if not isinstance(data, dict):
        raise _fail(display_name, f"the .import file holds a JSON {type(data).__name__}, not an object", 'Write the settings as one object: {"import": true, ...}', line=1)
    try:
        return SareSidecar.model_validate(data)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            loc = tuple(item["loc"])
            key = ".".join(str(part) for part in loc) or "(top level)"
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                parent = _model_at(loc[:-1])
                allowed = ", ".join(_allowed_keys(parent)) if parent else "see docs/dialects.md"
                reason, fix = f"key {key}: unknown key (misspelt?)", f"Use one of: {allowed}"
            elif item["type"] == "missing":
                reason, fix = f"key {key}: required key is missing", "Add it (see docs/dialects.md for every key and its default)"
            else:
                reason, fix = f"key {key}: {message}", "Correct the value in the .import file"
            problems.append(InputProblem(file=display_name, line=_key_line(text, loc), column=None, reason=reason, fix=fix))
        raise InputError(problems) from None


# --------------------------------------------------------------------------- file rules


def check_data_file(path: Path, display_name: str) -> None:
    """The seed's file rules for the (decrypted) csv: UTF-8 without BOM, no NUL byte. Streams the
    file in 8 MiB chunks through C-level ``bytes.find`` / the UTF-8 decoder; no per-row Python."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    lines_before = 0
    offset = 0
    with path.open("rb") as handle:
        first = True
        while chunk := handle.read(_CHUNK):
            if first:
                _check_bytes_head(chunk, display_name, "data file")
                first = False
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise _nul_error(display_name, lines_before + chunk.count(b"\n", 0, nul) + 1, "data file")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # exc.start counts from the decoder's buffered tail (at most 3 bytes) plus this chunk.
                pending = len(exc.object) - len(chunk)
                at = max(exc.start - pending, 0)
                raise _utf8_error(display_name, exc, offset + at, lines_before + chunk.count(b"\n", 0, at) + 1, "data file") from None
            lines_before += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _utf8_error(display_name, exc, offset, lines_before + 1, "data file") from None


def read_header(path: Path, sidecar: SareSidecar, display_name: str) -> list[str]:
    """The raw column names of the data file's first line ("Pierwszy wiersz pliku musi zawierać
    nagłówki"), parsed with the sidecar's delimiter, enclosure and escape."""
    with path.open("rb") as handle:
        head = handle.read(MAX_SIDECAR_BYTES)
    line = head.split(b"\n", 1)[0]
    if b"\n" not in head and len(head) == MAX_SIDECAR_BYTES:
        raise _fail(display_name, "the first line is longer than 1 MiB; it must hold the column names", "Put the header on the first line", line=1)
    text = line.decode("utf-8", errors="strict").rstrip("\r")
    if not text.strip():
        raise _fail(display_name, "the first line is empty; SARE requires the column names on the first line", "Add the header row", line=1)
    options = sidecar.csv
    dialect: dict[str, Any] = {"delimiter": options.delimiter, "escapechar": options.escape or None}
    if options.enclosure:
        dialect["quotechar"] = options.enclosure
    else:
        dialect["quoting"] = csv.QUOTE_NONE
    return [cell.strip() for cell in next(csv.reader([text], **dialect))]


# --------------------------------------------------------------------------- pairing


def _split_name(name: str) -> tuple[str, str] | None:
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
        split = _split_name(name)
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
        stems = {_split_name(r.name)[0] for r in everything}  # type: ignore[index]
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


def check_encryption(sidecar: SareSidecar, data_was_encrypted: bool, sidecar_name: str, data_name: str) -> list[str]:
    """``encrypted: true`` with a plain data file is refused: the sender meant the data to travel
    encrypted, so a plaintext file on the server is an incident, not a delivery. The reverse
    (``false`` but PGP content) is decrypted anyway (decided by content) and only warned about."""
    if sidecar.encrypted and not data_was_encrypted:
        raise _fail(
            data_name,
            f"{sidecar_name} says \"encrypted\": true but the data file is not PGP-encrypted",
            "Encrypt the csv with the connection's public key (gpg --encrypt), or set \"encrypted\": false",
        )
    if data_was_encrypted and not sidecar.encrypted:
        return [f"{data_name}: PGP-encrypted although {sidecar_name} says \"encrypted\": false; decrypted anyway"]
    return []


# --------------------------------------------------------------------------- sarescript


@dataclass(frozen=True)
class GroupClear:
    """``sare_group_clear(N)``: group N loses all its members (before or after the merge)."""

    group: int
    phase: Literal["before", "after"]
    statement: str


@dataclass
class SareScriptRecord:
    phase: Literal["before", "after"]
    text: str
    performed: list[GroupClear] = field(default_factory=list)
    not_performed: list[str] = field(default_factory=list)


_SCRIPT_BLOCK = re.compile(r"<!--\s*sare\b(.*?)\bsare\s*-->", re.S | re.I)
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


def parse_sarescript(text: str, phase: Literal["before", "after"]) -> SareScriptRecord:
    """Statements of a SAREscript (``<!--sare stmt; stmt; sare-->``). SAREscript is another
    product's language: only ``sare_group_clear(N)`` is performed; everything else is recorded."""
    record = SareScriptRecord(phase=phase, text=text)
    blocks = _SCRIPT_BLOCK.findall(text) or [text]
    for block in blocks:
        for statement in (s.strip() for s in block.split(";")):
            if not statement:
                continue
            call = _CALL.match(statement)
            argument = call.group(2).strip().strip("'\"") if call else ""
            if call and call.group(1).lower() == "sare_group_clear" and argument.isdigit():
                record.performed.append(GroupClear(group=int(argument), phase=phase, statement=statement))
            else:
                record.not_performed.append(statement)
    return record


# --------------------------------------------------------------------------- translation


@dataclass
class SareActions:
    """What the store must do besides the merge, and what the pair's run must report."""

    #: False for ``"import": false``: leave the pair on the server, report ``skip_reason``, merge nothing.
    import_rows: bool
    skip_reason: str | None
    overwrite: int
    identifier_property: str
    groups_property: str
    status_property: str
    consent_property: str
    #: sarescript ``sare_group_clear(N)``: performed before / after the merge.
    group_clears: list[GroupClear] = field(default_factory=list)
    scripts: list[SareScriptRecord] = field(default_factory=list)
    #: checkSpamtrap: addresses on this local list are dropped (as rejects) before the merge.
    spamtrap_list: str | None = None
    #: the property the spam-trap list is compared with (the e-mail).
    spamtrap_property: str | None = None
    #: duplicates_handling: "all" imports into every profile matching the foreign key, "skip" none of them.
    duplicates: Literal["all", "skip"] = "all"
    uses_foreign_key: bool = False
    #: autodelete 1 → delete, 0 → move both files to ``done_directory``.
    after_import: Literal["delete", "move_to_done"] = "move_to_done"
    done_directory: str = "done"
    #: overwrite 3: events of these types of the imported profiles are deleted before the merge.
    clear_history_event_types: list[str] = field(default_factory=list)
    #: consent.status 3 ("no"): this name is removed from the consent list of the imported profiles.
    withdraw_consent: str | None = None
    #: add_blocked_addresses_to_group false: a profile whose status is blocked (7) after the merge
    #: does not join this group through this import.
    keep_blocked_out_of_group: int | None = None
    encrypted: bool = False
    system: str = "sare"
    account_id: str | None = None
    warnings: list[str] = field(default_factory=list)


def _require_property(catalog: Catalog, prop: str, where: str, fix: str, types: tuple[str, ...] | None = None) -> PropertyDefinition:
    definition = catalog.profile_properties.get(prop)
    if definition is None:
        raise ValueError(f"{where}: profile property {prop!r} is not declared in store.yaml; {fix}")
    if types and definition.type not in types:
        raise ValueError(f"{where}: profile property {prop!r} is {definition.type}, needs {' or '.join(types)}; {fix}")
    return definition


def sare_goal(
    sidecar: SareSidecar,
    header: list[str],
    settings: SareSettings,
    catalog: Catalog,
    *,
    data_name: str = "data.csv",
    sidecar_name: str = "data.import",
) -> tuple[ProfileImportGoal, SareActions]:
    """Translate a validated sidecar and the data file's header into our goal model.

    The goal reads the data file (logical name ``"data"``) with the sidecar's csv options,
    identifies profiles by ``fields.foreign_key``'s property or else the e-mail property, maps
    every header column (through ``fields.map``, minus ``fields.ignore``) to its catalog property
    with the rule ``overwrite`` chooses, and adds the sidecar's constants (status, mail type,
    group, consent) as columns written with their own rules. Raises ``InputError`` naming the
    file, the key and the fix when the sidecar does not fit the header or the catalog.
    """
    problems: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []

    def problem(reason: str, fix: str) -> None:
        problems.append(reason)
        fixes.append(fix)

    if sidecar.system not in settings.systems:
        problem(f"key system: {sidecar.system!r} is not a system this connection imports ({', '.join(settings.systems)})",
                "Set \"system\" to one of them, or add it to dialect.systems")
    account = None if sidecar.account_id is None else str(sidecar.account_id)
    if account is not None and settings.account_ids and account not in settings.account_ids:
        problem(f"key account_id: {account!r} is not an account of this connection ({', '.join(settings.account_ids)})",
                "Upload the pair to that account's connection, or add the id to dialect.account_ids")

    by_raw = {name: name for name in header}
    normalised: dict[str, str] = {}
    for name in header:
        try:
            normalised[name] = normalise_column_name(name)
        except ValueError:
            problem(f"header column {name!r} has no usable name", "Give every column a name with letters or digits")

    def header_column(name: str) -> str | None:
        if name in by_raw:
            return name
        try:
            wanted = normalise_column_name(name)
        except ValueError:
            return None
        return next((raw for raw, norm in normalised.items() if norm == wanted), None)

    for column in sidecar.fields.map:
        if header_column(column) is None:
            problem(f"key fields.map: column {column!r} is not in the header of {data_name} ({', '.join(header)})",
                    "Correct the name in fields.map (it is the CSV header name), or remove the entry")
    ignored = {raw for raw in (header_column(c) for c in sidecar.fields.ignore) if raw}
    for column in sidecar.fields.ignore:
        if header_column(column) is None:
            warnings.append(f"{sidecar_name}: fields.ignore names {column!r}, which {data_name} does not have")

    # Which SARE property each remaining column carries: fields.map, else the header name itself.
    mapped_raw = {header_column(c): p for c, p in sidecar.fields.map.items() if header_column(c)}
    columns: list[tuple[str, str, str]] = []  # (raw column, SARE property, catalog property)
    for raw in header:
        if raw in ignored or raw not in normalised:
            continue
        sare_property = mapped_raw.get(raw, raw)
        columns.append((raw, sare_property, settings.property_for(sare_property)))

    # The identifier: the foreign key's column, else the e-mail column.
    identifier_column: str | None = None
    identifier_property: str
    if sidecar.fields.foreign_key:
        fk = sidecar.fields.foreign_key
        identifier_property = settings.property_for(fk)
        identifier_column = next((raw for raw, sare_prop, _ in columns if sare_prop == fk), None)
        if identifier_column is None:
            identifier_column = header_column(fk) if header_column(fk) not in ignored else None
        if identifier_column is None:
            problem(f"key fields.foreign_key: {fk!r} appears neither in fields.map (as a property) nor in the header of {data_name}",
                    "Map the key column to it in fields.map, or name the header column after it")
    else:
        identifier_property = settings.email_property
        identifier_column = next((raw for raw, _, prop in columns if prop == settings.email_property), None)
        if identifier_column is None:
            problem(f"no e-mail column: no header column of {data_name} maps to 'email' and there is no fields.foreign_key",
                    "Map the e-mail column to \"email\" in fields.map, or set fields.foreign_key")
    identifier = catalog.profile_properties.get(identifier_property)
    if identifier is None or not identifier.unique:
        problem(f"identifier property {identifier_property!r} is {'not declared' if identifier is None else 'not unique'} in store.yaml",
                "Declare it with unique: true (identifiers link profiles), or map the key to such a property in dialect.property_names")

    special = {settings.status_property, settings.mail_type_property, settings.groups_property, settings.consent_property}
    seen: dict[str, str] = {}
    for raw, sare_property, prop in columns:
        if raw == identifier_column:
            continue
        if prop not in catalog.profile_properties:
            problem(f"column {raw!r} (SARE property {sare_property!r}) has no profile property {prop!r} in store.yaml",
                    f"Declare {prop!r} in store.yaml, map it in dialect.property_names, or add {raw!r} to fields.ignore")
        elif prop in special:
            problem(f"column {raw!r} maps to {prop!r}, which the sidecar itself writes (status, mail type, group, consent)",
                    "Remove the column from the file or add it to fields.ignore")
        elif prop in seen:
            problem(f"columns {seen[prop]!r} and {raw!r} both map to property {prop!r}", "Map each property from one column only")
        seen[prop] = raw
    for name in normalised.values():
        if name.startswith("sidecar_"):
            problem(f"header column {name!r} collides with the columns the import adds (sidecar_*)", "Rename the column")

    # Every check that only needs the catalog is collected, so one message lists them all.
    for prop, types, role in (
        (settings.status_property, ("integer", "text"), "status"),
        (settings.mail_type_property, ("text",), "mail_type"),
        (settings.groups_property, ("list",), "group"),
        (settings.consent_property, ("list",), "consent"),
    ):
        try:
            _require_property(catalog, prop, f"dialect ({role})", f"declare it in store.yaml or set dialect.{role if role != 'group' else 'groups'}_property", types)
        except ValueError as exc:
            problem(str(exc), "")
    if sidecar.overwrite == 3:
        for event_type in settings.history_event_types:
            if event_type not in catalog.event_types:
                problem(f"dialect.history_event_types: {event_type!r} is not declared in catalog.event_types", "Declare it or remove it")
    if sidecar.check_spamtrap and not settings.spamtrap_list:
        problem("key checkSpamtrap: true, but the connection has no spam-trap list", "Set dialect.spamtrap_list to a file of addresses, or set \"checkSpamtrap\": false")

    if problems:
        raise InputError(
            [InputProblem(file=sidecar_name, line=None, column=None, reason=reason, fix=fix) for reason, fix in zip(problems, fixes)]
        )

    actions = SareActions(
        import_rows=sidecar.import_enabled,
        skip_reason=None if sidecar.import_enabled else f"{sidecar_name} says \"import\": false; the pair is left in place, nothing is imported",
        overwrite=sidecar.overwrite,
        identifier_property=identifier_property,
        groups_property=settings.groups_property,
        status_property=settings.status_property,
        consent_property=settings.consent_property,
        duplicates=sidecar.duplicates,
        uses_foreign_key=bool(sidecar.fields.foreign_key),
        after_import="delete" if sidecar.autodelete == 1 else "move_to_done",
        done_directory=settings.done_directory,
        encrypted=sidecar.encrypted,
        system=sidecar.system,
        account_id=account,
        warnings=warnings,
    )

    for phase in ("before", "after"):
        text = getattr(sidecar.sarescript, phase)
        if not text:
            continue
        record = parse_sarescript(text, phase)  # type: ignore[arg-type]
        actions.scripts.append(record)
        if sidecar.overwrite == 0:
            # "Do not import" writes nothing at all, so no sarescript action is performed either.
            record.not_performed[:0] = [clear.statement for clear in record.performed]
            record.performed = []
        actions.group_clears.extend(record.performed)
        for clear in record.performed:
            warnings.append(
                f"{sidecar_name}: sarescript.{phase} `{clear.statement}` is performed as: every profile leaves group "
                f"{clear.group} ({settings.groups_property}) {phase} the merge"
            )
        for statement in record.not_performed:
            warnings.append(
                f"{sidecar_name}: sarescript.{phase} `{statement}` is SAREscript, which cdp_pipeline does not run; it was "
                "recorded, not executed (only sare_group_clear(N) is supported): do it in SARE or with a goal of its own"
            )

    email_column = next((raw for raw, _, prop in columns if prop == settings.email_property), None)
    processors: list[Processor] = []
    if email_column is not None:
        # SARE addresses are matched case-insensitively; the stored e-mail is kept trimmed and lower case.
        processors += [Trim(type="trim", columns=[normalised[email_column]]), Lowercase(type="lowercase", columns=[normalised[email_column]])]
    if sidecar.check_spamtrap:
        if email_column is None:
            warnings.append(f"{sidecar_name}: checkSpamtrap is true but {data_name} has no e-mail column; nothing to check")
        else:
            actions.spamtrap_list = settings.spamtrap_list
            actions.spamtrap_property = settings.email_property

    mappings: list[Mapping] = []
    constants: dict[str, str | None] = {}
    allow_new = True
    if sidecar.overwrite == 0:
        allow_new = False
        warnings.append(
            f"{sidecar_name}: overwrite 0 (do not import): the file is read and checked, nothing is written to profiles "
            "and no sarescript action is performed"
        )
    else:
        data_rule, status_rule, mail_type_rule = OVERWRITE_RULES[sidecar.overwrite]
        for raw, _, prop in columns:
            if raw == identifier_column:
                continue
            mappings.append(Mapping(column=normalised[raw], property=prop, rule=data_rule))
        constants[_STATUS_COLUMN] = str(sidecar.status)
        mappings.append(Mapping(column=_STATUS_COLUMN, property=settings.status_property, rule=status_rule))
        constants[_MAIL_TYPE_COLUMN] = sidecar.mail_type
        mappings.append(Mapping(column=_MAIL_TYPE_COLUMN, property=settings.mail_type_property, rule=mail_type_rule))
        if sidecar.group:
            if sidecar.status == BLOCKED_STATUS and not sidecar.add_blocked_addresses_to_group:
                warnings.append(
                    f"{sidecar_name}: status 7 (address blocked) with add_blocked_addresses_to_group false: the addresses "
                    f"do not join group {sidecar.group}"
                )
            else:
                constants[_GROUP_COLUMN] = str(sidecar.group)
                mappings.append(Mapping(column=_GROUP_COLUMN, property=settings.groups_property, rule="add"))
                if not sidecar.add_blocked_addresses_to_group:
                    actions.keep_blocked_out_of_group = sidecar.group
        if sidecar.consent is not None:
            consent = sidecar.consent
            if not consent.import_:
                warnings.append(f"{sidecar_name}: consent.import is false: {settings.consent_property} is not updated")
            elif consent.status == 2:
                constants[_CONSENT_COLUMN] = consent.name
                mappings.append(Mapping(column=_CONSENT_COLUMN, property=settings.consent_property, rule="add"))
            elif consent.status == 3:
                actions.withdraw_consent = consent.name
            if consent.import_ and consent.status != 1 and consent.name not in catalog.objectives:
                warnings.append(
                    f"{sidecar_name}: consent.name {consent.name!r} is not an objective in store.yaml; exports filtered by "
                    "objectives will not see it"
                )
        if sidecar.overwrite == 3:
            actions.clear_history_event_types = list(settings.history_event_types)
            if not settings.history_event_types:
                warnings.append(
                    f"{sidecar_name}: overwrite 3 clears history, but dialect.history_event_types is empty: no events are deleted"
                )
        if sidecar.overwrite == 5:
            managed = settings.managed_properties if settings.managed_properties is not None else sorted(set(settings.property_names.values()))
            imported = {m.property for m in mappings} | {identifier_property}
            to_clear = [p for p in managed if p not in imported and p not in special and p in catalog.profile_properties]
            unknown = [p for p in managed if p not in catalog.profile_properties]
            if unknown:
                raise InputError(
                    InputProblem(file=sidecar_name, line=None, column=None,
                                 reason=f"overwrite 5: dialect.managed_properties names undeclared properties {unknown}",
                                 fix="Declare them in store.yaml or remove them from dialect.managed_properties")
                )
            for prop in to_clear:
                column = f"{_CLEAR_PREFIX}{prop}"
                constants[column] = None
                mappings.append(Mapping(column=column, property=prop, rule="set_or_clear"))
            if not managed:
                warnings.append(
                    f"{sidecar_name}: overwrite 5 clears the properties not imported, but no SARE properties are configured "
                    "(dialect.managed_properties / property_names): nothing is cleared"
                )
    if constants:
        processors.insert(0, CustomProcessor(type="custom", function=SIDECAR_COLUMNS_FUNCTION, options={"constants": constants}))

    escape = sidecar.csv.escape or None
    quote_char = sidecar.csv.enclosure or None
    csv_options = CsvOptions(
        delimiter=sidecar.csv.delimiter,
        quote_char=quote_char,
        # read_delimited only honours an escape that differs from the quote; with "\"" as escape the
        # file uses doubled quotes, which is RFC 4180 and needs no escape character.
        escape_char=escape if (escape and quote_char and escape != quote_char) else None,
        encoding="utf-8",
        has_header=True,
    )
    goal = ProfileImportGoal(
        type="import_profiles",
        name=settings.goal_name,
        description=f"SARE import of {data_name} with {sidecar_name} (overwrite {sidecar.overwrite}: {OVERWRITE_MEANINGS[sidecar.overwrite]})",
        files=Files(
            directory=settings.directory,
            root=FileSelection(name=DATA, pattern=re.escape(posixpath.basename(data_name)), regex=True, csv=csv_options),
            readiness=Readiness(mode="stable", stable_seconds=settings.stable_seconds),
            after_import=AfterImport(
                action=actions.after_import, done_directory=settings.done_directory, quarantine_directory=settings.quarantine_directory
            ),
        ),
        processors=processors,
        identifiers=[Identifier(column=normalised[identifier_column], property=identifier_property)],  # type: ignore[index]
        allow_new_profiles=allow_new,
        mappings=mappings,
    )
    return goal, actions


def sidecar_columns(lf: pl.LazyFrame, constants: dict[str, str | None]) -> pl.LazyFrame:
    """Custom processor of the generated goal: the sidecar's per-file constants (status, mail type,
    group, consent; empty values for overwrite 5's clearing) as text columns, typed later by their
    target property like any other mapped column."""
    return lf.with_columns(pl.lit(value, dtype=pl.String).alias(column) for column, value in constants.items())


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
        raise _fail(str(path), "the spam-trap list (dialect.spamtrap_list) does not exist", "Point dialect.spamtrap_list at a file of addresses, one per line")
    if path.stat().st_size == 0:
        return staged
    traps = (
        pl.read_csv(path, has_header=False, new_columns=["address"], separator="\x1f", quote_char=None, schema_overrides={"address": pl.String})
        .select(pl.col("address").str.strip_chars().str.to_lowercase())
        .filter(pl.col("address").is_not_null() & (pl.col("address") != "") & ~pl.col("address").str.starts_with("#"))
        .unique()
    )
    column = "_key" if actions.spamtrap_property == actions.identifier_property else actions.spamtrap_property
    if column not in staged.records.columns:
        return staged
    hit = pl.col(column).cast(pl.String).str.to_lowercase().is_in(traps["address"].implode())
    trapped = staged.records.filter(hit.fill_null(False))
    if trapped.height == 0:
        return staged
    rejects = [
        InputProblem(file=display_name, line=line, column=None, reason="the address is on the spam-trap list (checkSpamtrap)", fix="The row was left out")
        for line in trapped["_line"].to_list()
    ]
    return StagedImport(
        **{
            **vars(staged),
            "records": staged.records.filter(~hit.fill_null(False)),
            "rejects": [*staged.rejects, *rejects],
        }
    )


# --------------------------------------------------------------------------- store actions


def _register_keys(conn, staged: StagedImport) -> None:
    conn.register("sare_delivery_keys", staged.records.select(pl.col("_key").cast(pl.String)))


def resolve_duplicates(conn, staged: StagedImport, actions: SareActions, display_name: str = "") -> StagedImport:
    """duplicates_handling with a foreign key. "skip" (any value but "default"): keys that match
    more than one stored profile are left out, each as a reject. "all" ("default"): every profile
    sharing the key is updated (``staged.match_all``), with a warning naming how many keys were ambiguous."""
    if not actions.uses_foreign_key or staged.records.height == 0:
        return staged
    ident = quote(actions.identifier_property)
    _register_keys(conn, staged)
    try:
        ambiguous = [
            str(row[0])
            for row in conn.execute(
                f"SELECT {ident} FROM profiles WHERE {ident} IN (SELECT _key FROM sare_delivery_keys) GROUP BY 1 HAVING count(*) > 1"
            ).fetchall()
        ]
    finally:
        conn.unregister("sare_delivery_keys")
    if not ambiguous:
        return staged
    keys = pl.Series(ambiguous, dtype=pl.String).implode()
    if actions.duplicates == "all":
        message = (
            f"{display_name}: {len(ambiguous)} foreign key value(s) match several profiles; duplicates_handling "
            "\"default\": imported into every one of them"
        )
        return StagedImport(**{**vars(staged), "warnings": [*staged.warnings, message], "match_all": True})
    skipped = staged.records.filter(pl.col("_key").is_in(keys))
    rejects = [
        InputProblem(file=display_name, line=line, column=actions.identifier_property,
                     reason="the foreign key matches more than one profile (duplicates_handling: skip)", fix="The row was left out")
        for line in skipped["_line"].to_list()
    ]
    events = {name: frame.filter(~pl.col("_key").is_in(keys)) for name, frame in staged.events.items()}
    return StagedImport(**{**vars(staged), "records": staged.records.filter(~pl.col("_key").is_in(keys)), "events": events, "rejects": [*staged.rejects, *rejects]})


def _delivery_profiles(actions: SareActions) -> str:
    return f"SELECT profile_id FROM profiles WHERE {quote(actions.identifier_property)} IN (SELECT _key FROM sare_delivery_keys)"


def _leave_group(conn, actions: SareActions, group: int, where: str, now: datetime) -> None:
    groups = quote(actions.groups_property)
    item = literal(str(group))
    conn.execute(
        f"UPDATE profiles SET {groups} = list_filter({groups}, lambda x: x <> {item}), updated_at = $now "
        f"WHERE list_contains({groups}, {item}) AND ({where})",
        {"now": now},
    )


def apply_store_actions(
    conn, catalog: Catalog, actions: SareActions, staged: StagedImport, *, phase: Literal["before", "after"], now: datetime
) -> None:
    """The sidecar's effects that no merge rule expresses, as set-based SQL in the caller's
    transaction (this function never begins or commits one). ``phase="before"`` runs before
    ``merge_delivery``, ``"after"`` after it, with the same ``staged``:

    before: sarescript.before group clears; overwrite 3's history (events of
    ``clear_history_event_types`` of the profiles this file names, with their nested items);
    a snapshot of the group's members for ``keep_blocked_out_of_group``.
    after: profiles of this file whose status is 7 (blocked) leave the group they did not belong
    to before; consent status 3 removes the consent name; sarescript.after group clears.
    Every profile changed here gets ``updated_at = now`` so changed-only exports see it."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    _register_keys(conn, staged)
    try:
        if phase == "before":
            for clear in (c for c in actions.group_clears if c.phase == "before"):
                _leave_group(conn, actions, clear.group, "TRUE", now)
            for event_type in actions.clear_history_event_types:
                definition = catalog.event_types[event_type]
                doomed = f"SELECT event_id FROM {quote(event_table(event_type))} WHERE profile_id IN ({_delivery_profiles(actions)})"
                for nested_type in definition.nested:
                    conn.execute(f"DELETE FROM {quote(item_table(event_type, nested_type))} WHERE event_id IN ({doomed})")
                conn.execute(f"DELETE FROM {quote(event_table(event_type))} WHERE profile_id IN ({_delivery_profiles(actions)})")
            if actions.keep_blocked_out_of_group is not None:
                conn.execute(
                    f"CREATE OR REPLACE TEMP TABLE sare_group_members_before AS SELECT profile_id FROM profiles "
                    f"WHERE list_contains({quote(actions.groups_property)}, {literal(str(actions.keep_blocked_out_of_group))})"
                )
            return
        if actions.keep_blocked_out_of_group is not None:
            status = quote(actions.status_property)
            blocked = literal(str(BLOCKED_STATUS))
            _leave_group(
                conn, actions, actions.keep_blocked_out_of_group,
                f"CAST({status} AS VARCHAR) = {blocked} AND profile_id IN ({_delivery_profiles(actions)}) "
                "AND profile_id NOT IN (SELECT profile_id FROM sare_group_members_before)",
                now,
            )
            conn.execute("DROP TABLE IF EXISTS sare_group_members_before")
        if actions.withdraw_consent is not None:
            consents = quote(actions.consent_property)
            name = literal(actions.withdraw_consent)
            conn.execute(
                f"UPDATE profiles SET {consents} = list_filter({consents}, lambda x: x <> {name}), updated_at = $now "
                f"WHERE list_contains({consents}, {name}) AND profile_id IN ({_delivery_profiles(actions)})",
                {"now": now},
            )
        for clear in (c for c in actions.group_clears if c.phase == "after"):
            _leave_group(conn, actions, clear.group, "TRUE", now)
    finally:
        conn.unregister("sare_delivery_keys")


# --------------------------------------------------------------------------- the delivery source


def sare_listing_goal(settings: SareSettings) -> ProfileImportGoal:
    """A goal that says where the pairs are and what happens to them after the import (or on
    failure), before the pair's own goal is generated from its sidecar."""
    return ProfileImportGoal(
        type="import_profiles",
        name=settings.goal_name,
        files=Files(
            directory=settings.directory,
            root=FileSelection(name=DATA, pattern="*.csv"),
            readiness=Readiness(mode="stable", stable_seconds=settings.stable_seconds),
            after_import=AfterImport(action="move_to_done", done_directory=settings.done_directory, quarantine_directory=settings.quarantine_directory),
        ),
        identifiers=[Identifier(column="email", property=settings.email_property)],
    )


def _not_imported(actions: SareActions) -> StagedImport:
    """The staged tables of a pair whose sidecar says "import": false: no rows, the reason as a warning."""
    return StagedImport(
        target="profiles",
        identifier_property=actions.identifier_property,
        allow_create=False,
        rules={},
        records=pl.DataFrame(schema={"_key": pl.String, "_line": pl.Int64}),
        warnings=[actions.skip_reason or "the sidecar says import: false"],
    )


@dataclass(frozen=True)
class SareSource:
    """SARE pairs as a ``DeliverySource``: ``name.csv`` + ``name.import`` listed as one delivery,
    staged with the goal the sidecar describes, and the sidecar's store actions (group clears,
    history, blocked addresses, withdrawn consents) run inside the merge's transaction."""

    settings: SareSettings

    @property
    def goal_name(self) -> str:
        return self.settings.goal_name

    @property
    def listing_goal(self) -> ProfileImportGoal:
        return sare_listing_goal(self.settings)

    @property
    def generates_goal(self) -> bool:
        return True

    def claims(self, name: str) -> bool:
        return not is_temporary_upload(name) and _split_name(name) is not None

    def scan(self, connection: str, listing: list[RemoteFile], is_ready: Callable[[RemoteFile], bool], now: float | None) -> DeliveryScan:
        return scan_sare_deliveries(connection, listing, self.settings, is_ready, now)

    def stage(self, inputs: StagingInput) -> StagedDelivery:
        data, sidecar = inputs.files[DATA], inputs.files[SIDECAR]
        staging = stage_sare_pair(
            sidecar.path, data.path, sidecar_display=sidecar.remote_path, data_display=data.remote_path,
            catalog=inputs.catalog, settings=self.settings, run_time=inputs.run_time, data_was_encrypted=inputs.root_was_encrypted,
        )
        if staging.staged is None:
            return StagedDelivery(goal=staging.goal, staged=_not_imported(staging.actions), skip_reason=staging.actions.skip_reason)
        return StagedDelivery(goal=staging.goal, staged=staging.staged)

    def around_merge(self, context: MergeContext) -> MergeSteps:
        data, sidecar_file = context.files[DATA], context.files[SIDECAR]
        sidecar = parse_sidecar(sidecar_file.path, sidecar_file.remote_path)
        header = read_header(data.path, sidecar, data.remote_path)
        _, actions = sare_goal(sidecar, header, self.settings, context.catalog, data_name=data.remote_path, sidecar_name=sidecar_file.remote_path)
        if not actions.import_rows:
            return MergeSteps()
        catalog, now = context.catalog, context.now

        def resolve(conn, staged: StagedImport) -> StagedImport:
            return resolve_duplicates(conn, staged, actions, data.remote_path)

        def before(conn, staged: StagedImport) -> None:
            apply_store_actions(conn, catalog, actions, staged, phase="before", now=now)

        def after(conn, staged: StagedImport) -> None:
            apply_store_actions(conn, catalog, actions, staged, phase="after", now=now)

        return MergeSteps(prepare=resolve, before=before, after=after)
