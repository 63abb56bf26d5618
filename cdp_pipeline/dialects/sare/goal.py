"""Translation of a sidecar into the pair's ``ProfileImportGoal`` and the ``SareActions`` no merge
rule expresses (sarescript group clears, history, blocked addresses, withdrawn consents)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import polars as pl

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, Catalog, PropertyDefinition
from cdp_pipeline.config.connection import (
    AfterImport,
    Files,
    FileSelection,
    Identifier,
    Mapping,
    ProfileImportGoal,
    Readiness,
)
from cdp_pipeline.config.csv_options import CsvOptions
from cdp_pipeline.config.processors import CustomProcessor, Lowercase, Processor, Trim
from cdp_pipeline.dialects.sare.settings import (
    BLOCKED_STATUS,
    DATA,
    OVERWRITE_MEANINGS,
    OVERWRITE_RULES,
    SareSettings,
)
from cdp_pipeline.dialects.sare.sidecar import SareSidecar
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.store.schema import SQL_TYPES, literal
from cdp_pipeline.tables.column_names import normalise_column_name

#: columns the goal adds to the data file (constant per file); chosen so normalise_column_name keeps them.
_STATUS_COLUMN = "sidecar_status"
_MAIL_TYPE_COLUMN = "sidecar_mail_type"
_GROUP_COLUMN = "sidecar_group"
_CONSENT_COLUMN = "sidecar_consent"
_CLEAR_PREFIX = "sidecar_clear_"
SIDECAR_COLUMNS_FUNCTION = "cdp_pipeline.dialects.sare:sidecar_columns"


# --------------------------------------------------------------------------- sarescript


#: what each SAREscript operation we perform is called in a sidecar, and what it does here.
#: The manual names these operations for ``before`` / ``after`` ("wyczyszczenie cech, przeniesienie
#: adresów do innej grupy, czyszczenie grup", "uzupełnienie cech, przypisanie do grupy"); the store
#: can express exactly these, so they are performed rather than silently skipped.
SCRIPT_OPERATIONS: dict[str, str] = {
    "sare_group_clear": "sare_group_clear(N): every profile leaves group N",
    "sare_group_move": "sare_group_move(FROM, TO): every member of group FROM moves to group TO",
    "sare_group_add": "sare_group_add(N): the profiles of this file join group N",
    "sare_field_clear": "sare_field_clear('cecha'): the property is cleared on the profiles of this file",
    "sare_field_set": "sare_field_set('cecha', 'value'): the property is set to the value on the profiles of this file",
}
ScriptKind = Literal["sare_group_clear", "sare_group_move", "sare_group_add", "sare_field_clear", "sare_field_set"]


@dataclass(frozen=True)
class ScriptOperation:
    """One SAREscript statement we perform, before or after the merge. Group operations name group
    numbers; field operations name a SARE property (``field``), resolved to its catalog property
    (``property``) when the sidecar is translated."""

    kind: ScriptKind
    phase: Literal["before", "after"]
    statement: str
    group: int | None = None
    target_group: int | None = None
    field: str | None = None
    property: str | None = None
    value: str | None = None


@dataclass
class SareScriptRecord:
    phase: Literal["before", "after"]
    text: str
    performed: list[ScriptOperation] = field(default_factory=list)
    not_performed: list[str] = field(default_factory=list)


_SCRIPT_BLOCK = re.compile(r"<!--\s*sare\b(.*?)\bsare\s*-->", re.S | re.I)
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_ARGUMENT = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^,'"]*?))\s*(?:,|$)""", re.S)


def _arguments(text: str) -> list[str] | None:
    """The comma-separated arguments of a call, quotes removed; None when they do not parse."""
    if not text.strip():
        return []
    found: list[str] = []
    position = 0
    while position < len(text):
        match = _ARGUMENT.match(text, position)
        if match is None or match.end() == position:
            return None
        single, double, bare = match.groups()
        found.append(next(v for v in (single, double, bare) if v is not None).replace("\\'", "'").replace('\\"', '"'))
        position = match.end()
    if text.rstrip().endswith(","):
        found.append("")
    return found


def _operation(statement: str, phase: Literal["before", "after"]) -> ScriptOperation | None:
    call = _CALL.match(statement)
    if call is None:
        return None
    name, arguments = call.group(1).lower(), _arguments(call.group(2))
    if arguments is None:
        return None
    numbers = [int(a) for a in arguments if a.strip().isdigit()]
    if name == "sare_group_clear" and len(arguments) == 1 and len(numbers) == 1:
        return ScriptOperation("sare_group_clear", phase, statement, group=numbers[0])
    if name == "sare_group_add" and len(arguments) == 1 and len(numbers) == 1:
        return ScriptOperation("sare_group_add", phase, statement, group=numbers[0])
    if name == "sare_group_move" and len(arguments) == 2 and len(numbers) == 2:
        return ScriptOperation("sare_group_move", phase, statement, group=numbers[0], target_group=numbers[1])
    if name == "sare_field_clear" and len(arguments) == 1 and arguments[0].strip():
        return ScriptOperation("sare_field_clear", phase, statement, field=arguments[0].strip())
    if name == "sare_field_set" and len(arguments) == 2 and arguments[0].strip():
        return ScriptOperation("sare_field_set", phase, statement, field=arguments[0].strip(), value=arguments[1])
    return None


def parse_sarescript(text: str, phase: Literal["before", "after"]) -> SareScriptRecord:
    """Statements of a SAREscript (``<!--sare stmt; stmt; sare-->``). The operations of
    ``SCRIPT_OPERATIONS`` are performed; any other statement is listed in ``not_performed`` (the
    translation refuses the pair, naming it: SAREscript is another product's language and a
    statement we cannot run must not look as if it ran)."""
    record = SareScriptRecord(phase=phase, text=text)
    blocks = _SCRIPT_BLOCK.findall(text) or [text]
    for block in blocks:
        for statement in (s.strip() for s in block.split(";")):
            if not statement:
                continue
            operation = _operation(statement, phase)
            if operation is not None:
                record.performed.append(operation)
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
    #: the domain group whose profiles the pair matches, creates and updates (``dialect.domain_group``).
    domain_group: str = DEFAULT_DOMAIN_GROUP
    #: sarescript operations performed before / after the merge (see SCRIPT_OPERATIONS).
    operations: list[ScriptOperation] = field(default_factory=list)
    scripts: list[SareScriptRecord] = field(default_factory=list)
    #: checkSpamtrap: addresses in the store's ``spamtraps`` table (and on this optional local
    #: list) are dropped, each as a reject, before the merge.
    check_spamtrap: bool = False
    spamtrap_list: str | None = None
    #: the property the spam-trap list is compared with (the e-mail).
    spamtrap_property: str | None = None
    #: duplicates_handling: "all" imports into every profile matching the foreign key, "skip" none of them.
    duplicates: Literal["all", "skip"] = "all"
    uses_foreign_key: bool = False
    #: autodelete 1 → delete, 0 → move both files to ``done_directory``.
    after_import: Literal["delete", "move_to_done"] = "move_to_done"
    done_directory: str = "done"
    #: overwrite 3: the imported profiles' rows of property_changes are deleted before the merge.
    clear_value_history: bool = False
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

    @property
    def group_clears(self) -> list[ScriptOperation]:
        """The ``sare_group_clear(N)`` operations among ``operations``."""
        return [op for op in self.operations if op.kind == "sare_group_clear"]


def _value_fits(value: str, definition: PropertyDefinition) -> bool:
    """Whether a sare_field_set value converts to the property's type the way the store will cast it."""
    if definition.type == "list":
        return False
    sql_type = SQL_TYPES[definition.type]
    with duckdb.connect() as conn:
        return conn.execute(f"SELECT TRY_CAST({literal(value)} AS {sql_type}) IS NOT NULL").fetchone() == (True,)


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
            key = "groups" if role == "group" else role
            _require_property(catalog, prop, f"dialect ({role})", f"declare it in store.yaml or set dialect.{key}_property", types)
        except ValueError as exc:
            problem(str(exc), "")
    if sidecar.overwrite == 3:
        for event_type in settings.history_event_types:
            if event_type not in catalog.event_types:
                problem(f"dialect.history_event_types: {event_type!r} is not declared in catalog.event_types", "Declare it or remove it")
    scripts: list[SareScriptRecord] = []
    for phase in ("before", "after"):
        text = getattr(sidecar.sarescript, phase)
        if not text:
            continue
        record = parse_sarescript(text, phase)
        scripts.append(record)
        for statement in record.not_performed:
            problem(
                f"key sarescript.{phase}: `{statement}` is a SAREscript operation cdp_pipeline cannot perform; "
                f"it performs {', '.join(SCRIPT_OPERATIONS)}",
                "Remove the statement from the .import file and do it in SARE or with a goal of its own",
            )
        resolved = []
        for op in record.performed:
            if op.field is None:
                resolved.append(op)
                continue
            prop = settings.property_for(op.field)
            definition = catalog.profile_properties.get(prop)
            if definition is None:
                problem(f"key sarescript.{phase}: `{op.statement}` names {op.field!r}, which is no profile property ({prop!r}) in store.yaml",
                        f"Declare {prop!r} in store.yaml or map {op.field!r} in dialect.property_names")
            elif definition.unique or prop in special:
                problem(f"key sarescript.{phase}: `{op.statement}` would change {prop!r}, an identifier or a property the sidecar itself writes",
                        "Change it with the file's columns or the sidecar's own keys (status, group, consent)")
            elif op.kind == "sare_field_set" and not _value_fits(op.value or "", definition):
                problem(f"key sarescript.{phase}: `{op.statement}`: {op.value!r} is not a {definition.type} value for {prop!r}",
                        f"Give a {definition.type} value")
            resolved.append(ScriptOperation(**{**vars(op), "property": prop}))
        record.performed = resolved

    if problems:
        raise InputError(
            [InputProblem(file=sidecar_name, line=None, column=None, reason=reason, fix=fix) for reason, fix in zip(problems, fixes, strict=True)]
        )

    actions = SareActions(
        import_rows=sidecar.import_enabled,
        skip_reason=None if sidecar.import_enabled else f"{sidecar_name} says \"import\": false; the pair is left in place, nothing is imported",
        overwrite=sidecar.overwrite,
        identifier_property=identifier_property,
        groups_property=settings.groups_property,
        status_property=settings.status_property,
        consent_property=settings.consent_property,
        domain_group=settings.domain_group,
        duplicates=sidecar.duplicates,
        uses_foreign_key=bool(sidecar.fields.foreign_key),
        after_import="delete" if sidecar.autodelete == 1 else "move_to_done",
        done_directory=settings.done_directory,
        encrypted=sidecar.encrypted,
        system=sidecar.system,
        account_id=account,
        warnings=warnings,
    )

    for record in scripts:
        actions.scripts.append(record)
        if sidecar.overwrite == 0:
            # "Do not import" writes nothing at all, so no sarescript action is performed either.
            record.not_performed[:0] = [op.statement for op in record.performed]
            record.performed = []
        actions.operations.extend(record.performed)
        for op in record.performed:
            warnings.append(f"{sidecar_name}: sarescript.{record.phase} `{op.statement}` is performed {record.phase} the merge: "
                            f"{SCRIPT_OPERATIONS[op.kind]}")

    email_column = next((raw for raw, _, prop in columns if prop == settings.email_property), None)
    processors: list[Processor] = []
    if email_column is not None:
        # SARE addresses are matched case-insensitively; the stored e-mail is kept trimmed and lower case.
        processors += [Trim(type="trim", columns=[normalised[email_column]]), Lowercase(type="lowercase", columns=[normalised[email_column]])]
    if sidecar.check_spamtrap:
        if email_column is None:
            warnings.append(f"{sidecar_name}: checkSpamtrap is true but {data_name} has no e-mail column; nothing to check")
        else:
            actions.check_spamtrap = True
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
            # "Nadpisz wszystkie dane (kasuj historię)": the profiles' value history goes (always),
            # and their timeline events of the types the connection calls history.
            actions.clear_value_history = True
            actions.clear_history_event_types = list(settings.history_event_types)
        if sidecar.overwrite == 5:
            # "Nadpisz importowane dane, wyczyść cechy nieimportowane": every property the file does
            # not import is cleared. Identifiers are kept (clearing one would unlink the profile
            # from everything else that names it) and so are the properties the sidecar writes.
            managed = (
                settings.managed_properties
                if settings.managed_properties is not None
                else [name for name, definition in catalog.profile_properties.items() if not definition.unique]
            )
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
            if not to_clear:
                warnings.append(f"{sidecar_name}: overwrite 5 clears the properties not imported, but the file imports every one: nothing is cleared")
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
        domain_group=settings.domain_group,
    )
    return goal, actions


def sidecar_columns(lf: pl.LazyFrame, constants: dict[str, str | None]) -> pl.LazyFrame:
    """Custom processor of the generated goal: the sidecar's per-file constants (status, mail type,
    group, consent; empty values for overwrite 5's clearing) as text columns, typed later by their
    target property like any other mapped column."""
    return lf.with_columns(pl.lit(value, dtype=pl.String).alias(column) for column, value in constants.items())
