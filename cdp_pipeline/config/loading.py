"""Load and validate the configuration directory::

    <config dir>/
      store.yaml                 # store settings and the catalog (properties, event types, segments ...)
      connections/*.yaml         # one YAML document per connection (a file may hold several, split by ---)

Every failure names the YAML file, the key path and what is allowed, e.g.::

    connections/acme.yaml (connection 'acme'): goals.0.mappings.2.rule: Input should be 'set', 'set_if_empty', ...
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from cdp_pipeline.config.catalog import BUILT_IN_PERMISSION_LEVEL, DEFAULT_DOMAIN_GROUP, PERMISSION_LEVEL, Catalog, consent_property_problem
from cdp_pipeline.config.connection import Connection, ExportGoal, GroupImportGoal, ProfileImportGoal
from cdp_pipeline.config.csv_options import StrictModel
from cdp_pipeline.config.ducklake import DuckLakeLocation, DuckLakeSettings
from cdp_pipeline.config.work_storage import WorkStorageSettings
from cdp_pipeline.errors import ConfigError
from cdp_pipeline.filesystems import store_filesystem_problem

if TYPE_CHECKING:  # the dialects import the configuration models; only their types are needed here
    from cdp_pipeline.dialects.netmera import NetmeraSettings
    from cdp_pipeline.dialects.sare import SareSettings

logger = logging.getLogger(__name__)

BUNDLED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "demo" / "config"

# Keys that would hold a secret if written literally; the model has `<key>_env` instead.
_SECRET_KEYS = {"password", "passphrase", "private_key", "secret_access_key", "access_key_id", "session_token", "secret"}
_SECRET_TEXT = re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|PGP PRIVATE KEY BLOCK)-----")


class StoreSettings(StrictModel):
    #: ``duckdb``: one DuckDB file on this host (``path``). ``ducklake``: a shared lake (``ducklake``).
    backend: Literal["duckdb", "ducklake"] = "duckdb"
    #: the lake's catalog and data files; required with ``backend: ducklake``.
    ducklake: DuckLakeSettings | None = None
    #: DuckDB file of the store; relative to CDP_HOME.
    path: str = "store.duckdb"
    #: read-only copy for analysts, replaced atomically after each merge; relative to CDP_HOME.
    published_path: str | None = "store_published.duckdb"
    #: DuckDB threads for the writer (None = all cores).
    threads: int | None = None
    #: DuckDB's memory in the connections that merge and export, as DuckDB writes sizes ("1GB",
    #: "512MB"); beyond it DuckDB spills to a private folder in the work directory. ``auto``: the
    #: smaller of 512 MB and a quarter of the host's memory; None: DuckDB's own (80 % of the host's).
    memory_limit: str | None = Field(default="auto", pattern=r"(?i)^\s*(auto|\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB))\s*$")
    #: list profile property holding the objectives a profile consented to. A connection with
    #: ``objectives`` imports only profiles whose value (incoming, else stored) names at least one.
    consent_property: str = "consents"
    #: keep property_changes (value history and provenance); costs one row per changed value.
    history: bool = True
    #: rows of customer data shown as a preview on each import in the Dagster UI. 0 (the default)
    #: shows none: Dagster's event log keeps run metadata as long as run history, in files the
    #: store's permissions do not cover, so customer values go there only when asked for.
    ui_preview_rows: int = Field(default=0, ge=0, le=100)
    #: use a store on NFS, SMB, sshfs ... anyway (refused by default: DuckDB's lock is not reliable there).
    allow_network_filesystem: bool = False

    @model_validator(mode="after")
    def _lake_settings_given(self) -> StoreSettings:
        if self.backend == "ducklake" and self.ducklake is None:
            raise ValueError("backend ducklake needs the ducklake settings (catalog_dsn_env and data_path or s3)")
        return self


class StoreFile(StrictModel):
    store: StoreSettings = StoreSettings()
    catalog: Catalog = Field(default_factory=Catalog)
    #: where a delivery's intermediate files live between the steps of an import (this host or S3).
    work_storage: WorkStorageSettings = WorkStorageSettings()


@dataclass
class ProjectConfig:
    """Everything the pipeline knows: where it lives, the catalog and the connections."""

    config_dir: Path
    home: Path
    store: StoreSettings
    catalog: Catalog
    connections: dict[str, Connection] = field(default_factory=dict)
    connection_files: dict[str, Path] = field(default_factory=dict)
    #: connection name → its ``dialect:`` settings (SARE sidecars, Netmera files), when it has one.
    dialects: dict[str, SareSettings | NetmeraSettings] = field(default_factory=dict)
    work_storage: WorkStorageSettings = field(default_factory=WorkStorageSettings)

    @property
    def store_path(self) -> Path:
        return self.resolve_local(self.store.path)

    @property
    def store_location(self) -> Path | DuckLakeLocation:
        """What ``open_writer`` opens: the DuckDB file, or the lake named by ``store.ducklake``."""
        if self.store.backend == "ducklake" and self.store.ducklake is not None:
            settings = self.store.ducklake
            data_path = self.resolve_local(settings.data_path) if settings.data_path is not None else None
            return DuckLakeLocation(settings=settings, data_folder=data_path)
        return self.store_path

    @property
    def published_store_path(self) -> Path | None:
        # Analysts attach the lake itself (read-only, at a snapshot): no copy to publish.
        if self.store.backend == "ducklake":
            return None
        return self.resolve_local(self.store.published_path) if self.store.published_path else None

    @property
    def ledger_location(self) -> Path | DuckLakeLocation | None:
        """Where the ledger is read before a merge without waiting for the writer: the analysts'
        copy of a DuckDB file (a session on the live file would block the writer; None when no
        copy is configured), or the lake itself, whose readers see a snapshot and block nobody."""
        if self.store.backend == "ducklake":
            return self.store_location
        return self.published_store_path

    @property
    def read_location(self) -> Path | DuckLakeLocation:
        """What a reader (run history, checks by hand) opens: the analysts' copy when there is one,
        since reading the live file would wait for, or block, a run that is writing; otherwise the
        store itself, which for a lake is its latest snapshot."""
        published = self.published_store_path
        if published is not None and published.exists():
            return published
        return self.store_location

    @property
    def work_dir(self) -> Path:
        """Private landing area for downloads, decrypted files and staged tables (mode 0700)."""
        return self.home / "work"

    def resolve_local(self, path: str) -> Path:
        candidate = Path(os.path.expandvars(path)).expanduser()
        return candidate if candidate.is_absolute() else self.home / candidate

    def goal_config_hash(self, connection: str, goal: str) -> str:
        """Changes whenever anything that shapes the goal's result changes: the goal (with its
        processors), the source location, the objectives and the catalog entries the goal uses.
        A delivery is imported again when this hash changes (seed: "BlueConic reimports a file
        if ... the connection configuration has changed"), so entries the goal's result does not
        depend on (a new segment, a lifecycle, another goal's properties) stay out: adding a
        segment must not re-import every file still in the folders."""
        conn = self.connections[connection]
        dialect = self.dialects.get(connection)
        # A dialect's goal is generated per delivery from its settings (and, for SARE, the sidecar,
        # whose bytes are part of the content identity already): hash the settings.
        is_dialect = dialect is not None and goal in dialect.goal_names
        shaped_by: BaseModel = dialect if dialect is not None and is_dialect else conn.goal(goal)
        goal_dump = shaped_by.model_dump(mode="json")
        # Domain groups came later: the default group is left out so every existing goal keeps its
        # hash (a new hash would import again every file still in the folders).
        if goal_dump.get("domain_group") in (DEFAULT_DOMAIN_GROUP, None):
            goal_dump.pop("domain_group", None)
        payload = {
            "goal": goal_dump,
            "source": conn.source.model_dump(mode="json"),
            "objectives": conn.objectives,
            "consent_property": self.store.consent_property if conn.objectives else None,
            "catalog": self._catalog_used_by(None if is_dialect else shaped_by),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _catalog_used_by(self, goal: Any) -> dict:
        """The catalog entries an import goal's result depends on. A dialect's goal is generated
        per delivery, so it gets every property, group and event type (never segments, lifecycles
        or objectives' descriptions, which do not shape an import)."""
        catalog = self.catalog.model_dump(mode="json")
        if self.catalog.profile_properties.get(PERMISSION_LEVEL) == BUILT_IN_PERMISSION_LEVEL:
            # The built-in permission level came with a release, not with the user's store.yaml:
            # it leaves the hash alone, so no file still in a folder is imported again for it.
            catalog["profile_properties"].pop(PERMISSION_LEVEL)
        if not isinstance(goal, (ProfileImportGoal, GroupImportGoal)):
            return {key: catalog[key] for key in ("profile_properties", "group_types", "event_types")}
        if isinstance(goal, GroupImportGoal):
            return {"group_type": catalog["group_types"].get(goal.group_type)}
        used = {m.property for m in goal.mappings} | {i.property for i in goal.identifiers}
        if goal.bulk_mapping is not None:
            used |= {name for name in catalog["profile_properties"] if name.startswith(goal.bulk_mapping.prefix)}
        return {
            "profile_properties": {name: catalog["profile_properties"][name] for name in sorted(used) if name in catalog["profile_properties"]},
            "event_types": {e.event_type: catalog["event_types"].get(e.event_type) for e in goal.timeline},
        }


def default_home() -> Path:
    return Path(os.environ.get("CDP_HOME", ".cdp_home")).expanduser().resolve()


def default_config_dir() -> Path:
    return Path(os.environ.get("CDP_CONFIG_DIR", str(BUNDLED_CONFIG_DIR))).expanduser().resolve()


def _format_validation(error: ValidationError, where: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (misspelt?); see docs/configuration.md for the allowed keys"
        elif item["type"] == "missing":
            message = "required key is missing"
        # A model check may report several findings in one message (every bad condition of the
        # catalog): each gets its own line with the file, so none reads as part of another.
        lines += [f"{where}: {path}: {part}" for part in str(message).splitlines() if part.strip()]
    return "\n".join(lines)


def _refuse_literal_secrets(node: Any, where: str, path: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if str(key).lower() in _SECRET_KEYS and value not in (None, ""):
                raise ConfigError(
                    f"{where}: {child}: secrets are not written in YAML; put the secret in an environment "
                    f"variable and name it with {key}_env"
                )
            _refuse_literal_secrets(value, where, child)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _refuse_literal_secrets(value, where, f"{path}.{index}")
    elif isinstance(node, str) and _SECRET_TEXT.search(node):
        raise ConfigError(f"{where}: {path}: a private key block is not allowed in YAML; put it in an environment variable")


def _parse(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where)) from None


#: Nodes a YAML document may hold once its aliases are expanded. A hand-written store.yaml with
#: hundreds of properties has a few thousand; a 2 KB "billion laughs" file (aliases of aliases)
#: expands to billions and hangs every walk of the tree, so the bound is checked on the composed
#: node graph, before anything walks or constructs it.
MAX_YAML_NODES = 100_000
#: Bytes a configuration file may have; the largest real ones are tens of kilobytes.
MAX_YAML_BYTES = 5_000_000

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's plain scalars.

    Under YAML 1.1 (PyYAML's default) a connection named ``off`` or ``no`` loads as the boolean
    False, ``10:30`` as the number 630 and ``2026-01-15`` as a date, each far from what was
    written. Here only true/false are booleans, numbers are decimal (or 0o/0x), and everything
    else stays the string it is; boolean keys still accept yes/no, as pydantic reads those."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        return sign * int(digits, 10)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_ConfigLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|[-+]?0o[0-7]+|[-+]?0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)
_ConfigLoader.add_constructor(_INT, _ConfigLoader.construct_yaml_int)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes the document would have with every alias expanded, without expanding it:
    an alias shares its anchor's node object, so each distinct node is sized once (memoised)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                raise _TooLarge(f"its aliases expand to more than {MAX_YAML_NODES:,} values")
            continue
        if key in open_nodes:
            raise _TooLarge("an alias refers to a node that contains it (a recursive anchor)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


class _TooLarge(Exception):
    """A YAML document refused before construction; the message says why."""


def _load_yaml_documents(path: Path) -> list[Any]:
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a configuration file may have at most {MAX_YAML_BYTES:,}")
    documents: list[Any] = []
    try:
        with path.open(encoding="utf-8") as handle:
            loader = _ConfigLoader(handle)
            try:
                while loader.check_data():
                    documents.append(loader.get_data())
            finally:
                loader.dispose()
    except _TooLarge as exc:
        raise ConfigError(
            f"{path}: refused before reading it: {exc}. Anchors and aliases (&name, *name, <<: *name) are allowed for "
            "sharing a few blocks; write the values out instead"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration (hundreds of levels of lists or mappings)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None
    return [doc for doc in documents if doc is not None]


def _rule_problem(at: str, mapping, properties: dict) -> str | None:
    prop = properties[mapping.property]
    if mapping.rule == "add" and prop.type != "list":
        return f"{at}.mappings: rule add needs a list property, {mapping.property!r} is {prop.type}"
    if mapping.rule == "sum" and prop.type not in ("integer", "decimal"):
        return f"{at}.mappings: rule sum needs an integer or decimal property, {mapping.property!r} is {prop.type}"
    return None


def _close(name: str, known: Iterable[str]) -> str:
    """The declared names a misspelt one is closest to, as a hint for the message."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _check_references(connection: Connection, catalog: Catalog, where: str, store: StoreSettings | None = None) -> None:
    """Cross-checks that need both the connection and the catalog."""
    problems: list[str] = []
    props = catalog.profile_properties
    if connection.objectives and store is not None and (problem := consent_property_problem(props, store.consent_property)):
        problems.append(f"objectives: {problem}")
    for index, goal in enumerate(connection.goals):
        at = f"goals.{index} ({goal.name})"
        if isinstance(goal, ProfileImportGoal):
            for ident in goal.identifiers:
                if ident.property != "profile_id" and ident.property not in catalog.unique_properties:
                    problems.append(
                        f"{at}.identifiers: {ident.property!r} is neither profile_id nor a unique property "
                        f"(unique: {catalog.unique_properties})"
                    )
            for mapping in goal.mappings:
                if mapping.property not in props:
                    problems.append(
                        f"{at}.mappings: property {mapping.property!r} is not declared in store.yaml catalog.profile_properties"
                        + _close(mapping.property, props)
                    )
                elif problem := _rule_problem(at, mapping, props):
                    problems.append(problem)
            file_names = {goal.files.root.name, *(f.name for f in goal.files.linked)}
            for event in goal.timeline:
                event_type = catalog.event_types.get(event.event_type)
                if event_type is None:
                    problems.append(
                        f"{at}.timeline: event type {event.event_type!r} is not declared in catalog.event_types" + _close(event.event_type, catalog.event_types)
                    )
                    continue
                if event.file not in file_names:
                    problems.append(f"{at}.timeline: file {event.file!r} is not one of the goal's files {sorted(file_names)}")
                for prop in event.properties:
                    if prop not in event_type.properties:
                        problems.append(f"{at}.timeline: {prop!r} is not a property of event type {event.event_type!r}")
                for nested in event.nested:
                    if nested.type not in event_type.nested:
                        problems.append(f"{at}.timeline: {nested.type!r} is not a nested type of {event.event_type!r}")
                    elif nested.file not in file_names:
                        problems.append(f"{at}.timeline: nested file {nested.file!r} is not one of the goal's files")
                    elif next((f.parent for f in goal.files.linked if f.name == nested.file), None) != event.file:
                        problems.append(f"{at}.timeline: nested file {nested.file!r} must be linked directly to the event file {event.file!r} (set its parent)")
                    else:
                        for prop in nested.properties:
                            if prop not in event_type.nested[nested.type].properties:
                                problems.append(f"{at}.timeline: {prop!r} is not a property of nested type {nested.type!r}")
        elif isinstance(goal, GroupImportGoal):
            group_type = catalog.group_types.get(goal.group_type)
            if group_type is None:
                problems.append(f"{at}.group_type: {goal.group_type!r} is not declared in catalog.group_types")
            else:
                for mapping in goal.mappings:
                    if mapping.property not in group_type.properties:
                        problems.append(f"{at}.mappings: {mapping.property!r} is not a property of group type {goal.group_type!r}")
                    elif problem := _rule_problem(at, mapping, group_type.properties):
                        problems.append(problem)
        elif isinstance(goal, ExportGoal):
            if goal.segment not in catalog.segments:
                problems.append(f"{at}.segment: {goal.segment!r} is not declared in catalog.segments ({sorted(catalog.segments)})")
            for column in goal.columns:
                if column.property is not None and column.property not in props:
                    problems.append(f"{at}.columns: property {column.property!r} is not declared{_close(column.property, props)}")
                if isinstance(column.segments, list):
                    for name in column.segments:
                        if name not in catalog.segments:
                            problems.append(f"{at}.columns: segment {name!r} is not declared")
            if goal.timeline and goal.timeline.event_types:
                for name in goal.timeline.event_types:
                    if name not in catalog.event_types:
                        problems.append(f"{at}.timeline.event_types: {name!r} is not declared")
            if any(getattr(processor, "files", None) for processor in goal.processors):
                problems.append(f"{at}.processors: files applies to import goals; an export's processors run on its columns")
            if goal.target.encrypt and not (connection.pgp and connection.pgp.public_key_env):
                problems.append(f"{at}.target.encrypt: needs pgp.public_key_env on the connection")
    for objective in connection.objectives:
        if objective not in catalog.objectives:
            problems.append(f"objectives: {objective!r} is not declared in catalog.objectives{_close(objective, catalog.objectives)}")
    if problems:
        raise ConfigError("\n".join(f"{where}: {p}" for p in problems))


def _refuse_internal_names(catalog: Catalog, where: str) -> None:
    """Property names starting with "_" are the pipeline's own: the import tables carry ``_key``,
    ``_key_index``, ``_line``, ``_rows``, ``_ident_<n>`` ... beside the properties, and a property
    of the same name would be silently overwritten by (or overwrite) one of them."""
    names = [f"profile_properties.{name}" for name in catalog.profile_properties]
    names += [f"group_types.{group}.properties.{name}" for group, definition in catalog.group_types.items() for name in definition.properties]
    for event, definition in catalog.event_types.items():
        names += [f"event_types.{event}.properties.{name}" for name in definition.properties]
        names += [f"event_types.{event}.nested.{nested}.properties.{name}" for nested, items in definition.nested.items() for name in items.properties]
    reserved = [path for path in names if path.rsplit(".", 1)[1].startswith("_")]
    if reserved:
        raise ConfigError(
            f"{where}: catalog.{reserved[0]}: names starting with '_' are reserved for the pipeline's internal columns "
            f"(_key, _line, _rows ...); rename the property ({len(reserved)} such name(s): {', '.join(reserved[:5])})"
        )


def load_project(config_dir: Path | None = None, home: Path | None = None) -> ProjectConfig:
    """The configuration, or a ConfigError listing every problem of every file (see inspect_project)."""
    project, problems = inspect_project(config_dir, home)
    if problems:
        raise ConfigError("\n".join(problems))
    return project


def _problem_lines(error: ConfigError) -> list[str]:
    return [line for line in str(error).splitlines() if line.strip()]


def _lenient_catalog(raw_store: Any) -> Catalog | None:
    """A stand-in catalog for the connections' cross-checks when store.yaml itself has problems.

    Without it, one bad segment condition in store.yaml would hide every unknown property and
    segment in the connection files until a second pass. Conditions are replaced by TRUE (their
    own errors are already reported), so names stay checkable; if the catalog is still invalid,
    there is nothing trustworthy to check against and the caller says so."""
    if not isinstance(raw_store, dict) or not isinstance(raw_store.get("catalog", {}), dict):
        return None
    catalog = dict(raw_store.get("catalog") or {})
    if isinstance(catalog.get("segments"), dict):
        catalog["segments"] = {
            name: {**segment, "condition": "TRUE"} if isinstance(segment, dict) else segment for name, segment in catalog["segments"].items()
        }
    if isinstance(catalog.get("lifecycles"), dict):
        catalog["lifecycles"] = {
            name: {**lifecycle, "stages": [{**stage, "condition": "TRUE"} if isinstance(stage, dict) else stage for stage in lifecycle.get("stages") or []]}
            if isinstance(lifecycle, dict) else lifecycle
            for name, lifecycle in catalog["lifecycles"].items()
        }
    try:
        return Catalog.model_validate(catalog)
    except (ValidationError, ValueError):
        return None


def inspect_project(config_dir: Path | None = None, home: Path | None = None) -> tuple[ProjectConfig, list[str]]:
    """Check every file of the configuration in one pass: (what loaded, every problem found).

    A person fixing a configuration should see all of its mistakes at once, not one per run, so
    each file and each connection document is checked on its own and a problem in one never hides
    the problems of another. The returned project holds the connections whose schema is valid
    (their cross-checks may have failed); load_project refuses the whole configuration when the
    list is not empty."""
    config_dir = (config_dir or default_config_dir()).resolve()
    home = (home or default_home()).resolve()
    problems: list[str] = []
    project = ProjectConfig(config_dir=config_dir, home=home, store=StoreSettings(), catalog=Catalog())
    store_yaml = config_dir / "store.yaml"
    catalog_usable = True
    if not store_yaml.exists():
        problems.append(f"{store_yaml}: missing; the config directory needs store.yaml and connections/*.yaml")
        catalog_usable = False
    else:
        try:
            documents = _load_yaml_documents(store_yaml)
            if len(documents) > 1:
                raise ConfigError(f"{store_yaml}: holds {len(documents)} documents, expected one")
            raw_store = documents[0] if documents else {}
            try:
                _refuse_literal_secrets(raw_store, str(store_yaml))
                store_file: StoreFile = _parse(StoreFile, raw_store, str(store_yaml))
            except ConfigError as error:
                problems += _problem_lines(error)
                lenient = _lenient_catalog(raw_store)
                if lenient is None:
                    catalog_usable = False
                else:
                    project.catalog = lenient
            else:
                project.store, project.catalog = store_file.store, store_file.catalog
                project.work_storage = store_file.work_storage
                _refuse_internal_names(store_file.catalog, str(store_yaml))
                allowed = store_file.store.allow_network_filesystem
                if (problem := store_filesystem_problem(project.store_path, allowed=allowed)) is not None:
                    if allowed:
                        logger.warning("%s: store.path: %s", store_yaml, problem)
                    else:
                        problems.append(f"{store_yaml}: store.path: {problem}")
        except ConfigError as error:
            problems += _problem_lines(error)
            catalog_usable = False
    if not catalog_usable:
        problems.append(
            f"{store_yaml}: the connections' properties, segments and event types are not checked until store.yaml loads; "
            "run validate again after fixing it"
        )
    for path in sorted((config_dir / "connections").glob("*.y*ml")):
        try:
            documents = _load_yaml_documents(path)
        except ConfigError as error:
            problems += _problem_lines(error)
            continue
        for index, raw in enumerate(documents):
            name = raw.get("name", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
            where = f"{path.relative_to(config_dir)} (connection {name!r})"
            try:
                _refuse_literal_secrets(raw, where)
            except ConfigError as error:
                problems += _problem_lines(error)
            dialect_raw = raw.pop("dialect", None) if isinstance(raw, dict) else None
            try:
                connection: Connection = _parse(Connection, raw, where)
            except ConfigError as error:
                problems += _problem_lines(error)
                continue
            if connection.name in project.connections:
                problems.append(
                    f"{where}: connection name {connection.name!r} is already used in {project.connection_files[connection.name]}"
                )
                continue
            if catalog_usable:
                try:
                    _check_references(connection, project.catalog, where, project.store)
                except ConfigError as error:
                    problems += _problem_lines(error)
            if dialect_raw is not None:
                from cdp_pipeline.dialects import Dialect

                try:
                    project.dialects[connection.name] = TypeAdapter(Dialect).validate_python(dialect_raw)
                except ValidationError as exc:
                    problems += _format_validation(exc, where).replace(f"{where}: ", f"{where}: dialect.").splitlines()
            dialect = project.dialects.get(connection.name)
            has_appkey = getattr(dialect, "type", None) == "netmera" and bool(getattr(dialect, "appkey", None))
            for index, goal in enumerate(connection.goals):
                # The reports are named by Netmera's appkey: without it a nightly run would fail at 03:00.
                if isinstance(goal, ExportGoal) and goal.netmera_reports and not has_appkey:
                    problems.append(
                        f"{where}: goals.{index}.netmera_reports: needs dialect: {{type: netmera, appkey: <your appkey>}} in this "
                        "connection (the appkey names the reports); add it, or remove netmera_reports"
                    )
            # Registered even with problems in its references, so validate can still report its unset
            # variables in the same pass; load_project refuses the whole project on any problem.
            project.connections[connection.name] = connection
            project.connection_files[connection.name] = path
    return project, problems
