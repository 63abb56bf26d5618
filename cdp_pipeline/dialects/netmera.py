"""Netmera's FTP conventions (seed ``003_*.txt``), translated into the same goals, merge rules,
ledger and store as every other delivery. Engine code: no Dagster import.

Three conventions:

* **Push files** (``*.csv`` in the push folder): ``ExternalID;Text;Deeplink``, no header, ``\\n``
  in the text meaning a line break. Each row becomes a ``push_request`` timeline event on the
  profile with that external id: event id ``<file name>:<line>`` (deterministic: re-importing
  the file replaces its events instead of doubling them), event time = the file's delivery time
  (its mtime on the server), properties ``text``, ``deeplink``, ``source_file``, ``source_line``.
  The events are exported like any timeline event (``timeline.event_types: [push_request]``).
* **Profile attribute files** (``*.txt`` in ``Profile/``): the first line is the pattern,
  ``extID~email~device token~attribute1~attribute2`` or ``~~~attribute1~attribute2`` (three
  ``~`` standing for the three fixed fields); then ``~``-separated rows, strings in double
  quotes, values typed by the attribute's declared type in the catalog. Each file name is
  imported once; the file is deleted after the import ("it will disappear from the folder").
* **Report names**: ``report_file_names(appkey, date, msg_id)`` → ``appkey_PUSH_REPORTS_date`` /
  ``appkey_msgID_PUSH_REPORTS_date``, for export goals scheduled in the 03:00–06:00 window
  (``nightly_report_schedule``).

The contract with the delivery flow
-----------------------------------

* Listing: ``scan_deliveries(connection, netmera_listing_goal(settings, kind), listing, is_ready)``
  for ``kind`` in ``"push"`` and ``"profile"``: plain single-file deliveries, no pairing.
* Staging: ``stage_netmera_file(kind, local_path, ...)`` instead of ``build_import_tables`` with
  the connection's goal; it builds the goal for this file (``netmera_push_goal`` /
  ``netmera_profile_goal``) and runs the ordinary ``build_import_tables``.
* Merging: ``check_file_name_unused(conn, ...)`` in the writer connection before
  ``merge_delivery``: a file name already merged with other content is refused.
* Finishing: ``finish_remote_files`` with the generated goal: ``after_import`` is ``delete``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final, Literal

import polars as pl
from pydantic import Field, field_validator

from cdp_pipeline.config.catalog import Catalog, check_identifier
from cdp_pipeline.config.connection import (
    AfterImport,
    EventMapping,
    Files,
    FileSelection,
    Identifier,
    Mapping,
    ProfileImportGoal,
    Readiness,
)
from cdp_pipeline.config.csv_options import ColumnFormat, CsvOptions, StrictModel
from cdp_pipeline.config.processors import CustomProcessor
from cdp_pipeline.config.schedules import Schedule
from cdp_pipeline.deliveries.grouping import DeliveryScan, goal_claims, scan_deliveries
from cdp_pipeline.deliveries.sources import MergeContext, MergeSteps, StagedDelivery, StagingInput
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.tables.column_names import normalise_column_name
from cdp_pipeline.tables.import_tables import build_import_tables
from cdp_pipeline.tables.staged import LINE, StagedImport
from cdp_pipeline.transports.base import RemoteFile

PUSH: Final = "push"
PROFILE: Final = "profile"
#: the columns of a push file, in the seed's order ``ExternalID;Text;Deeplink``.
PUSH_COLUMNS = ("external_id", "text", "deeplink")
#: the fixed leading fields of a profile attribute file, as column names.
FIXED_PROFILE_COLUMNS = ("ext_id", "email", "device_token")
#: spellings of the fixed fields in a pattern line, compared without case, spaces and '_'.
_FIXED_SPELLINGS = (("extid", "externalid"), ("email", "emailaddress"), ("devicetoken", "token"))
PUSH_COLUMNS_FUNCTION = "cdp_pipeline.dialects.netmera:push_columns"
_MAX_PATTERN_BYTES = 1024 * 1024


class NetmeraSettings(StrictModel):
    """The connection's side of the Netmera conventions: the ``dialect:`` key of a Connection (``type: netmera``)."""

    type: Literal["netmera"]
    #: the application key in report names (``<appkey>_PUSH_REPORTS_<date>``).
    appkey: str | None = None
    push_goal_name: str = "netmera_push"
    profile_goal_name: str = "netmera_profiles"
    push_directory: str = "."
    push_pattern: str = "*.csv"
    #: "Create a 'Profile' Folder in FTP".
    profile_directory: str = "Profile"
    profile_pattern: str = "*.txt"
    stable_seconds: float = Field(default=30, ge=0)
    quarantine_directory: str | None = None
    #: the unique profile property Netmera's external id (``ExternalID`` / ``extID``) links to.
    external_id_property: str = "external_id"
    email_property: str = "email"
    #: a list property collects every device token (add); a text property keeps the last (set); null ignores the field.
    device_token_property: str | None = "netmera_device_tokens"  # noqa: S105 - a property name, not a token
    #: Netmera attribute name → catalog property; unlisted names map to their normalised form.
    attribute_properties: dict[str, str] = Field(default_factory=dict)
    #: strptime formats of date / datetime attributes; ISO 8601 when omitted.
    date_format: str | None = None
    datetime_format: str | None = None
    push_event_type: str = "push_request"
    #: a push for an unknown external id is counted (events_ignored), not turned into a profile.
    push_creates_profiles: bool = False
    profile_creates_profiles: bool = True

    @field_validator("push_goal_name", "profile_goal_name")
    @classmethod
    def _goal_names(cls, value: str) -> str:
        return check_identifier(value, "goal name")

    @field_validator("appkey")
    @classmethod
    def _appkey(cls, value: str | None) -> str | None:
        if value is not None:
            _check_name_part(value, "appkey")
        return value

    @property
    def goal_names(self) -> tuple[str, ...]:
        """The goals generated per file: partitions and ledger rows carry these names."""
        return (self.profile_goal_name, self.push_goal_name)

    @property
    def default_poll_seconds(self) -> int | None:
        """Netmera's documents name no polling interval: the connection's ordinary sensor default applies."""
        return None

    def property_for(self, attribute: str) -> str:
        if attribute in self.attribute_properties:
            return self.attribute_properties[attribute]
        return normalise_column_name(attribute)


def _fail(display_name: str, reason: str, fix: str, line: int | None = None, column: str | None = None) -> InputError:
    return InputError(InputProblem(file=display_name, line=line, column=column, reason=reason, fix=fix))


def _files(directory: str, name: str, pattern: str, regex: bool, csv: CsvOptions, settings: NetmeraSettings) -> Files:
    return Files(
        directory=directory,
        root=FileSelection(name=name, pattern=pattern, regex=regex, csv=csv),
        readiness=Readiness(mode="stable", stable_seconds=settings.stable_seconds),
        # "When the file is processed successfully, it will disappear from the folder."
        after_import=AfterImport(action="delete", quarantine_directory=settings.quarantine_directory),
    )


def _exact(file_name: str) -> str:
    return re.escape(posixpath.basename(file_name))


def _check_identifier_property(catalog: Catalog, prop: str, display_name: str) -> None:
    definition = catalog.profile_properties.get(prop)
    if definition is None or not definition.unique:
        state = "not declared" if definition is None else "not unique"
        raise _fail(
            display_name,
            f"the external id property {prop!r} (dialect.external_id_property) is {state} in store.yaml",
            "Declare it with unique: true: identifiers link profiles",
        )


# --------------------------------------------------------------------------- push files


PUSH_CSV = CsvOptions(
    delimiter=";",
    # Netmera defines no quoting: a '"' in a push text is an ordinary character.
    quote_char=None,
    has_header=False,
    column_names=list(PUSH_COLUMNS),
    encoding="utf-8",
)


def netmera_listing_goal(settings: NetmeraSettings, kind: Literal["push", "profile"]) -> ProfileImportGoal:
    """A goal that only says where the files of ``kind`` are, for ``scan_deliveries``; the goal
    that imports a file is built per file (``netmera_push_goal`` / ``netmera_profile_goal``)."""
    if kind == PUSH:
        files = _files(settings.push_directory, PUSH, settings.push_pattern, False, PUSH_CSV, settings)
        name, column = settings.push_goal_name, PUSH_COLUMNS[0]
    else:
        files = _files(settings.profile_directory, PROFILE, settings.profile_pattern, False, CsvOptions(delimiter="~", has_header=False), settings)
        name, column = settings.profile_goal_name, FIXED_PROFILE_COLUMNS[0]
    return ProfileImportGoal(
        type="import_profiles", name=name, files=files, identifiers=[Identifier(column=column, property=settings.external_id_property)]
    )


def netmera_push_goal(settings: NetmeraSettings, catalog: Catalog, *, file_name: str, delivered_at: datetime) -> ProfileImportGoal:
    """The goal importing one push file: no profile values, one ``push_event_type`` event per row.

    ``file_name`` (the remote name) and ``delivered_at`` (the file's mtime on the server) make the
    event ids and times, so importing the same file again yields the same events."""
    event_type = catalog.event_types.get(settings.push_event_type)
    if event_type is None:
        raise _fail(
            file_name,
            f"event type {settings.push_event_type!r} (dialect.push_event_type) is not declared in store.yaml",
            "Declare it under catalog.event_types with properties text, deeplink, source_file, source_line",
        )
    if "text" not in event_type.properties:
        raise _fail(file_name, f"event type {settings.push_event_type!r} has no property 'text'", "Add text: {type: text} to its properties")
    _check_identifier_property(catalog, settings.external_id_property, file_name)
    if delivered_at.tzinfo is not None:
        delivered_at = delivered_at.astimezone(UTC).replace(tzinfo=None)
    wanted = {"text": "text", "deeplink": "deeplink", "source_file": "source_file", "source_line": "source_line"}
    return ProfileImportGoal(
        type="import_profiles",
        name=settings.push_goal_name,
        description=f"Netmera push file {posixpath.basename(file_name)}",
        files=_files(settings.push_directory, PUSH, _exact(file_name), True, PUSH_CSV, settings),
        processors=[
            CustomProcessor(
                type="custom",
                function=PUSH_COLUMNS_FUNCTION,
                options={"file_name": posixpath.basename(file_name), "delivered_at": delivered_at.isoformat()},
            )
        ],
        identifiers=[Identifier(column=PUSH_COLUMNS[0], property=settings.external_id_property)],
        allow_new_profiles=settings.push_creates_profiles,
        timeline=[
            EventMapping(
                event_type=settings.push_event_type,
                file=PUSH,
                event_id="event_id",
                event_time="event_time",
                properties={prop: column for prop, column in wanted.items() if prop in event_type.properties},
            )
        ],
    )


def push_columns(lf: pl.LazyFrame, file_name: str, delivered_at: str) -> pl.LazyFrame:
    """Custom processor of the push goal, all Polars expressions: drops a header row
    (``ExternalID;Text;Deeplink`` on line 1, which the seed's files do not have but a spreadsheet
    export adds), turns the two characters ``\\n`` into a line break, and adds the event id
    (``<file>:<line>``), event time and source columns."""
    moment = datetime.fromisoformat(delivered_at)
    header_row = (
        (pl.col(LINE) == 1)
        & (pl.col("external_id").str.strip_chars().str.to_lowercase() == "externalid")
        & (pl.col("text").str.strip_chars().str.to_lowercase() == "text")
    ).fill_null(False)
    return lf.filter(~header_row).with_columns(
        pl.col("text").str.replace_all("\\n", "\n", literal=True),
        pl.concat_str(pl.lit(f"{file_name}:"), pl.col(LINE).cast(pl.String)).alias("event_id"),
        pl.lit(moment, dtype=pl.Datetime("us")).alias("event_time"),
        pl.lit(file_name, dtype=pl.String).alias("source_file"),
        pl.col(LINE).alias("source_line"),
    )


# --------------------------------------------------------------------------- profile attribute files


def _spelling(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text).lower()


def parse_pattern_line(pattern_line: str, display_name: str) -> list[str]:
    """The attribute names of a pattern line, after the three fixed fields.

    Accepted: ``extID~email~device token~a1~a2`` (the fixed fields named), ``~~~a1~a2`` (three
    ``~`` standing for them) and ``~~~extID~email~device token~a1`` (both). Raises
    ``InputError`` (line 1) for anything else: a first field that is not extID, an empty or
    repeated attribute name."""
    line = pattern_line.removeprefix("\ufeff").rstrip("\r\n")
    fields = line.split("~")

    def named_fixed(values: list[str]) -> bool:
        return len(values) >= 3 and all(_spelling(v) in spellings for v, spellings in zip(values[:3], _FIXED_SPELLINGS, strict=True))

    if len(fields) >= 3 and fields[:3] == ["", "", ""]:
        attributes = fields[3:]
        if named_fixed(attributes):
            attributes = attributes[3:]
    elif named_fixed(fields):
        attributes = fields[3:]
    else:
        raise _fail(
            display_name,
            f"the pattern line must start with extID~email~device token (or ~~~), got {line[:60]!r}",
            "Write the pattern on the first line: extID~email~device token~attribute1~attribute2 (or ~~~attribute1~attribute2)",
            line=1,
        )
    problems = []
    seen: set[str] = set()
    for position, attribute in enumerate(attributes, start=4):
        name = attribute.strip()
        if not name:
            problems.append(
                InputProblem(
                    file=display_name, line=1, column=None, reason=f"field {position} of the pattern line is empty",
                    fix="Separate the attribute names by a single ~",
                )
            )
        elif name in seen:
            problems.append(
                InputProblem(
                    file=display_name, line=1, column=name, reason=f"attribute {name!r} appears twice in the pattern line", fix="Name each attribute once"
                )
            )
        seen.add(name)
    if problems:
        raise InputError(problems)
    return [a.strip() for a in attributes]


def read_pattern_line(path: Path, display_name: str) -> str:
    """The first line of a profile attribute file (decoded as UTF-8)."""
    with path.open("rb") as handle:
        head = handle.read(_MAX_PATTERN_BYTES)
    if not head.strip():
        raise _fail(display_name, "the file is empty; its first line must be the pattern", "Write the pattern line, then the rows", line=1)
    line = head.split(b"\n", 1)[0]
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(display_name, f"the pattern line is not valid UTF-8 (byte offset {exc.start})", "Save the file as UTF-8", line=1) from None


def netmera_profile_goal(
    pattern_line: str,
    catalog: Catalog,
    settings: NetmeraSettings,
    *,
    file_name: str = "Profile/profile.txt",
) -> tuple[ProfileImportGoal, CsvOptions]:
    """The goal importing one profile attribute file, and its csv options (``~``, ``"`` quotes,
    no header, ``column_names`` from the pattern, ``skip_rows=1`` for the pattern line).

    extID → ``external_id_property`` (the identifier: a row without it is rejected), email →
    ``email_property`` (set), device token → ``device_token_property`` (add to a list, or set),
    attributes → their catalog property (set: an empty value keeps the stored one), parsed by
    the property's declared type. An attribute without a declared property is a named error."""
    attributes = parse_pattern_line(pattern_line, file_name)
    _check_identifier_property(catalog, settings.external_id_property, file_name)
    problems: list[InputProblem] = []
    properties = catalog.profile_properties
    targets: list[str] = []
    fixed_targets = (settings.external_id_property, settings.email_property, settings.device_token_property)
    for position, attribute in enumerate(attributes, start=4):
        try:
            prop = settings.property_for(attribute)
        except ValueError:
            prop = ""
        if prop not in properties:
            problems.append(
                InputProblem(
                    file=file_name, line=1, column=attribute,
                    reason=f"unknown attribute {attribute!r} (field {position} of the pattern line): no profile property {prop!r} in store.yaml",
                    fix=f"Declare {prop!r} under catalog.profile_properties, map the attribute in dialect.attribute_properties, or remove it from the file",
                )
            )
        elif prop in FIXED_PROFILE_COLUMNS or prop in targets or prop in fixed_targets:
            problems.append(
                InputProblem(file=file_name, line=1, column=attribute, reason=f"attribute {attribute!r} maps to {prop!r}, which another field already writes",
                             fix="Remove the attribute or map it to another property in dialect.attribute_properties")
            )
        targets.append(prop)
    if settings.email_property not in properties:
        problems.append(
            InputProblem(
                file=file_name, line=1, column="email", reason=f"email property {settings.email_property!r} is not declared in store.yaml",
                fix="Declare it, or set dialect.email_property",
            )
        )
    token = settings.device_token_property
    if token is not None and token not in properties:
        problems.append(
            InputProblem(
                file=file_name, line=1, column="device token", reason=f"device token property {token!r} is not declared in store.yaml",
                fix="Declare it (type list), or set dialect.device_token_property: null",
            )
        )
    if problems:
        raise InputError(problems)

    formats: dict[str, ColumnFormat] = {}
    for prop in targets:
        kind = properties[prop].type
        if kind == "date" and settings.date_format:
            formats[prop] = ColumnFormat(type="date", format=settings.date_format)
        elif kind == "datetime" and settings.datetime_format:
            formats[prop] = ColumnFormat(type="datetime", format=settings.datetime_format)
    options = CsvOptions(
        delimiter="~",
        quote_char='"',
        has_header=False,
        column_names=[*FIXED_PROFILE_COLUMNS, *targets],
        # The pattern line is skipped, not parsed as a header: its names are not the column names.
        skip_rows=1,
        encoding="utf-8",
        columns=formats,
    )
    mappings = [Mapping(column="email", property=settings.email_property, rule="set")]
    if token is not None:
        mappings.append(Mapping(column="device_token", property=token, rule="add" if properties[token].type == "list" else "set"))
    mappings += [Mapping(column=prop, property=prop, rule="set") for prop in targets]
    goal = ProfileImportGoal(
        type="import_profiles",
        name=settings.profile_goal_name,
        description=f"Netmera profile attributes from {posixpath.basename(file_name)}",
        files=_files(settings.profile_directory, PROFILE, _exact(file_name), True, options, settings),
        identifiers=[Identifier(column="ext_id", property=settings.external_id_property)],
        allow_new_profiles=settings.profile_creates_profiles,
        mappings=mappings,
    )
    return goal, options


# --------------------------------------------------------------------------- staging and the ledger


def stage_netmera_file(
    kind: Literal["push", "profile"],
    local_path: Path,
    *,
    display_name: str,
    delivered_at: datetime,
    catalog: Catalog,
    settings: NetmeraSettings,
    run_time: datetime,
) -> tuple[ProfileImportGoal, StagedImport]:
    """Build the file's goal and read it with the ordinary engine (``build_import_tables``)."""
    if kind == PUSH:
        goal = netmera_push_goal(settings, catalog, file_name=display_name, delivered_at=delivered_at)
    else:
        goal, _ = netmera_profile_goal(read_pattern_line(local_path, display_name), catalog, settings, file_name=display_name)
    name = goal.files.root.name
    return goal, build_import_tables(goal, catalog, {name: local_path}, {name: display_name}, run_time)


def check_file_name_unused(conn, *, connection: str, goal: str, root_file: str, content_sha256: str) -> None:
    """"Each file name is processed once": a file name merged before with OTHER content is refused
    (the same content is the ordinary retry, which the ledger already skips). Netmera asks for a
    date and time in every name for exactly this reason."""
    row = conn.execute(
        """
        SELECT delivery_id, merged_at FROM deliveries
        WHERE connection = $c AND goal = $g AND root_file = $f AND status = 'merged' AND content_sha256 <> $sha
        ORDER BY merged_at LIMIT 1
        """,
        {"c": connection, "g": goal, "f": root_file, "sha": content_sha256},
    ).fetchone()
    if row is not None:
        raise _fail(
            root_file,
            f"a file with this name was already imported on {row[1]:%Y-%m-%d %H:%M} UTC (delivery {row[0]}) with other content",
            "Give every file a unique name, e.g. with the current date and time (profile_20260101_1530.txt)",
        )


# --------------------------------------------------------------------------- the delivery source


@dataclass(frozen=True)
class NetmeraSource:
    """One kind of Netmera file (push files or profile attribute files) as a ``DeliverySource``:
    listed with its listing goal, each file staged with a goal built for that file, and a file
    name merged before with other content refused inside the merge's writer connection."""

    settings: NetmeraSettings
    kind: Literal["push", "profile"]

    @property
    def goal_name(self) -> str:
        return self.settings.push_goal_name if self.kind == PUSH else self.settings.profile_goal_name

    @property
    def listing_goal(self) -> ProfileImportGoal:
        return netmera_listing_goal(self.settings, self.kind)

    @property
    def generates_goal(self) -> bool:
        return True

    def claims(self, name: str) -> bool:
        return goal_claims(self.listing_goal, name)

    def scan(self, connection: str, listing: list[RemoteFile], is_ready: Callable[[RemoteFile], bool], now: float | None) -> DeliveryScan:
        return scan_deliveries(connection, self.listing_goal, listing, is_ready)

    def stage(self, inputs: StagingInput) -> StagedDelivery:
        local = inputs.files[PUSH if self.kind == PUSH else PROFILE]
        delivered_at = datetime.fromtimestamp(local.remote_mtime, tz=UTC).replace(tzinfo=None)
        goal, staged = stage_netmera_file(
            self.kind, local.path, display_name=local.remote_path, delivered_at=delivered_at,
            catalog=inputs.catalog, settings=self.settings, run_time=inputs.run_time,
        )
        return StagedDelivery(goal=goal, staged=staged)

    def around_merge(self, context: MergeContext) -> MergeSteps:
        def refuse_reused_name(conn, staged: StagedImport) -> StagedImport:
            check_file_name_unused(
                conn, connection=context.connection, goal=context.goal, root_file=context.root_file, content_sha256=context.content_sha256
            )
            return staged

        return MergeSteps(prepare=refuse_reused_name)


def netmera_sources(settings: NetmeraSettings) -> list[NetmeraSource]:
    """Profile attribute files first: a push for an external id finds the profile a same-run file created."""
    return [NetmeraSource(settings, PROFILE), NetmeraSource(settings, PUSH)]


# --------------------------------------------------------------------------- nightly reports


def _check_name_part(value: str, what: str) -> str:
    if not value or re.search(r"[\x00-\x1f\x7f/\\]", value):
        raise ValueError(f"{what} {value!r} must be non-empty, without '/', '\\' or control characters")
    return value


def report_file_names(appkey: str, day: date | str, msg_id: str | None = None, *, date_format: str = "%Y%m%d") -> str:
    """Netmera's report name: ``appkey_PUSH_REPORTS_date``, or ``appkey_msgID_PUSH_REPORTS_date``
    for a report of one message (the one with external ids). ``day`` is a date (formatted with
    ``date_format``, the same ``%Y%m%d`` as an export goal's ``{date}``) or an already formatted string."""
    _check_name_part(appkey, "appkey")
    stamp = day.strftime(date_format) if isinstance(day, date) else _check_name_part(day, "date")
    if msg_id is None:
        return f"{appkey}_PUSH_REPORTS_{stamp}"
    return f"{appkey}_{_check_name_part(msg_id, 'msg_id')}_PUSH_REPORTS_{stamp}"


def report_file_name_template(appkey: str, msg_id: str | None = None, extension: str = ".csv") -> str:
    """The same name as an export goal's ``target.file_name`` (``{date}`` filled in at run time)."""
    name = report_file_names(appkey.replace("{", "{{").replace("}", "}}"), "{date}", msg_id.replace("{", "{{").replace("}", "}}") if msg_id else None)
    return name + extension


def nightly_report_schedule(timezone_name: str = "UTC", goals: list[str] | None = None) -> Schedule:
    """Netmera sends reports "nightly between 3:00 AM and 6:00 AM": one run at the start of that
    window. The step (240 min) is longer than the window, so ``between`` yields 03:00 only; a
    smaller step (60) would run at 03:00, 04:00, 05:00 and 06:00, each rewriting the day's file."""
    return Schedule(every_minutes=240, between=("03:00", "06:00"), timezone=timezone_name, goals=goals)
