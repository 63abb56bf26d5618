"""The ``name.import`` JSON sidecar, parsed strictly (every error with file, line and key), and the
rules every data file of a pair keeps (UTF-8 without BOM, no NUL byte, a header line)."""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from cdp_pipeline.dialects.sare.settings import CONSENT_MEANINGS, MAIL_TYPES, MAX_SIDECAR_BYTES, OVERWRITE_MEANINGS, STATUS_MEANINGS
from cdp_pipeline.errors import InputError, InputProblem

_CHUNK = 8 * 1024 * 1024
_BOM = codecs.BOM_UTF8


def _choices(meanings: dict[int, str]) -> str:
    return ", ".join(f"{value} ({text})" for value, text in meanings.items())


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


def pair_error(display_name: str, reason: str, fix: str, line: int | None = None) -> InputError:
    return InputError(InputProblem(file=display_name, line=line, column=None, reason=reason, fix=fix))


def _check_bytes_head(head: bytes, display_name: str, what: str) -> None:
    if head.startswith(_BOM):
        raise pair_error(
            display_name,
            f"the {what} starts with a UTF-8 byte-order mark (BOM); SARE requires UTF-8 without BOM",
            'Save the file as "UTF-8" (not "UTF-8 with BOM"), or remove the first three bytes EF BB BF',
            line=1,
        )


def _nul_error(display_name: str, line: int, what: str) -> InputError:
    return pair_error(
        display_name,
        f"the {what} contains a NUL byte (0x00) on line {line}; SARE forbids the character x00",
        "Remove the NUL bytes; if every other byte is NUL the file is UTF-16: export it as UTF-8",
        line=line,
    )


def _utf8_error(display_name: str, exc: UnicodeDecodeError, offset: int, line: int, what: str) -> InputError:
    return pair_error(
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
                raise pair_error(display_name, f"key {key!r} appears twice in the same object", "Keep one of the two")
            result[key] = value
        return result

    return hook


def parse_sidecar(path: Path, display_name: str) -> SareSidecar:
    """Read and validate a ``.import`` file. Raises ``InputError`` naming the file, the line, the
    key path and the allowed values: BOM, NUL byte, invalid UTF-8, invalid JSON (line/column),
    duplicate or unknown keys, values out of range (``overwrite``, ``status``, ``mail_type`` ...)."""
    size = path.stat().st_size
    if size == 0:
        raise pair_error(display_name, "the .import file is empty", "Write the import settings as a JSON object")
    if size > MAX_SIDECAR_BYTES:
        raise pair_error(
            display_name, f"the .import file has {size} bytes; a sidecar is a small JSON object", "Check that the data and .import files were not swapped"
        )
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
        raise pair_error(
            display_name,
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            "Fix the JSON (a missing comma or quote, a trailing comma, single quotes); see docs/dialects.md for an example",
            line=exc.lineno,
        ) from None
    if not isinstance(data, dict):
        raise pair_error(
            display_name, f"the .import file holds a JSON {type(data).__name__}, not an object", 'Write the settings as one object: {"import": true, ...}',
            line=1,
        )
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
        raise pair_error(display_name, "the first line is longer than 1 MiB; it must hold the column names", "Put the header on the first line", line=1)
    text = line.decode("utf-8", errors="strict").rstrip("\r")
    if not text.strip():
        raise pair_error(display_name, "the first line is empty; SARE requires the column names on the first line", "Add the header row", line=1)
    options = sidecar.csv
    dialect: dict[str, Any] = {"delimiter": options.delimiter, "escapechar": options.escape or None}
    if options.enclosure:
        dialect["quotechar"] = options.enclosure
    else:
        dialect["quoting"] = csv.QUOTE_NONE
    return [cell.strip() for cell in next(csv.reader([text], **dialect))]
