"""A connection: where files come from, how they are decrypted, and its goals (import groups,
import profiles, export profiles), as a BlueConic SFTP/S3 connection is configured.

Secrets never appear here: every secret field is the *name* of an environment variable
(``password_env``, ``private_key_env`` ...). A literal secret is refused at load.
"""

from __future__ import annotations

import builtins
import logging
import re
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, check_identifier
from cdp_pipeline.config.csv_options import CsvOptions, StrictModel
from cdp_pipeline.config.processors import Processor
from cdp_pipeline.config.schedules import Schedule

MergeRule = Literal["set", "set_if_empty", "set_or_clear", "add", "sum"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# AWS access key ids (long-term AKIA..., temporary ASIA...) are upper case letters and digits, so
# one pasted into a *_env key would pass as a variable name, sit in the YAML and the run config
# in clear, and fail later as "variable not set". The value is never repeated in the message.
_AWS_ACCESS_KEY_ID = re.compile(r"^(?:AKIA|ASIA)[A-Z0-9]{16}$")


def _env_name(value: str | None) -> str | None:
    if value is not None and _AWS_ACCESS_KEY_ID.match(value):
        raise ValueError(
            "this looks like an AWS access key id, not the name of an environment variable: put the key in an "
            "environment variable and write the variable's name here (and rotate the key, it was in a file)"
        )
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name; the YAML names the variable, not the secret")
    return value


# ---------------------------------------------------------------- locations (transports)


def endpoint_parts(value: str) -> SplitResult:
    """An S3 ``endpoint_url`` split, once it is known to name a server and to carry no secret."""
    parts = urlsplit(value)
    # A bare ``host:port`` reads as a scheme and no host: the server would silently not be reached.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be logged and shown with the connection; the value is not repeated here.
        raise ValueError(
            "endpoint_url must not carry credentials (user:password@); name them with access_key_id_env and "
            "secret_access_key_env, and rotate the ones that were in the file"
        )
    return parts


class LocalLocation(StrictModel):
    """A folder on this machine; relative paths are resolved against CDP_HOME."""

    type: Literal["local"]
    path: str


class SftpAuth(StrictModel):
    method: Literal["password", "private_key", "multi_factor"]
    password_env: str | None = None
    #: environment variable holding the private key text (ed25519, ecdsa, rsa; OpenSSH or PEM format).
    private_key_env: str | None = None
    #: or a key file on this machine (the file is the secret; the path is not).
    private_key_file: str | None = None
    passphrase_env: str | None = None

    _names = field_validator("password_env", "private_key_env", "passphrase_env")(_env_name)

    @model_validator(mode="after")
    def _complete(self) -> SftpAuth:
        needs_password = self.method in ("password", "multi_factor")
        needs_key = self.method in ("private_key", "multi_factor")
        if needs_password and not self.password_env:
            raise ValueError(f"method {self.method} needs password_env")
        if needs_key and not (self.private_key_env or self.private_key_file):
            raise ValueError(f"method {self.method} needs private_key_env or private_key_file")
        return self


class SftpLocation(StrictModel):
    type: Literal["sftp"]
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    auth: SftpAuth
    #: the user's home directory on the server; relative directories of goals are resolved against it.
    home_directory: str | None = None
    #: the server's host key as a known_hosts line ("host ssh-ed25519 AAAA...") ...
    known_hosts_line: str | None = None
    #: ... or its fingerprint as OpenSSH prints it ("SHA256:..."). One of the two is required.
    host_key_fingerprint: str | None = None
    timeout_seconds: float = Field(default=45, gt=0)
    retries: int = Field(default=4, ge=0, le=10)
    #: SSH connections that download a delivery's files side by side. One is the default: on the
    #: 2-core benchmark machine two paramiko streams were slower than one (88 vs 138 MB/s), because
    #: each is CPU-bound; more cores (or a remote server) are where a higher value pays.
    parallel_downloads: int = Field(default=1, ge=1, le=8)

    @model_validator(mode="after")
    def _host_key(self) -> SftpLocation:
        if not (self.known_hosts_line or self.host_key_fingerprint):
            raise ValueError(
                "SFTP needs known_hosts_line or host_key_fingerprint: unknown host keys are refused, never added "
                "(get it with `ssh-keyscan -p PORT HOST`)"
            )
        return self


class S3Location(StrictModel):
    type: Literal["s3"]
    bucket: str
    prefix: str = ""
    region: str | None = None
    #: for S3-compatible stores (MinIO, Ceph, a test server).
    endpoint_url: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None

    _names = field_validator("access_key_id_env", "secret_access_key_env", "session_token_env")(_env_name)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            endpoint_parts(value)
        return value


_logger = logging.getLogger(__name__)


class FtpLocation(StrictModel):
    """An FTP account, with TLS (FTPS) unless the YAML explicitly says ``tls: none``.

    Netmera's file integration is FTP ("secure FTP"); FTPS is what keeps its password and the
    customer data off the wire in clear text.
    """

    type: Literal["ftp"]
    host: str
    #: 21 for explicit TLS and plain FTP, 990 for implicit TLS when omitted.
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str
    password_env: str
    #: explicit: AUTH TLS on the plain port (RFC 4217); implicit: TLS from the first byte (port 990);
    #: none: plain FTP, password and data readable by anyone on the path (warned at load and per run).
    tls: Literal["explicit", "implicit", "none"] = "explicit"
    #: the server's certificate must chain to a trusted CA and name ``host``.
    verify_certificate: bool = True
    #: PEM file of the CA (or the self-signed certificate) that signed a private server's certificate.
    ca_file: str | None = None
    #: passive mode: the client opens the data connections (works through NAT and firewalls).
    passive: bool = True
    #: the user's home directory on the server; relative directories of goals are resolved against it.
    home_directory: str | None = None
    timeout_seconds: float = Field(default=45, gt=0)
    retries: int = Field(default=4, ge=0, le=10)

    _names = field_validator("password_env")(_env_name)

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 990 if self.tls == "implicit" else 21

    @model_validator(mode="after")
    def _plain_ftp_warning(self) -> FtpLocation:
        if self.tls == "none":
            _logger.warning(PLAIN_FTP_WARNING, self.host, self.effective_port)
        elif not self.verify_certificate:
            _logger.warning(UNVERIFIED_FTPS_WARNING, self.host, self.effective_port)
        return self


PLAIN_FTP_WARNING = (
    "FTP %s:%s uses plain FTP (tls: none): the password and every file cross the network unencrypted; "
    "use tls: explicit or implicit unless the link itself is private"
)
UNVERIFIED_FTPS_WARNING = (
    "FTPS %s:%s has verify_certificate: false: the connection is encrypted but anyone on the path can "
    "impersonate the server and read the password; set ca_file to the server's CA instead"
)


Location = Annotated[LocalLocation | SftpLocation | S3Location | FtpLocation, Field(discriminator="type")]


# ---------------------------------------------------------------- PGP


class PgpSettings(StrictModel):
    """Keys of the connection: private keys decrypt imports, the public key encrypts exports."""

    #: one to three environment variables holding armoured private keys (several during key rotation).
    private_keys_env: list[str] = Field(default_factory=list, max_length=3)
    passphrase_env: str | None = None
    public_key_env: str | None = None
    #: pin the export recipient; the public key's fingerprint must match.
    public_key_fingerprint: str | None = None
    #: when set, imports must carry a valid signature by this key.
    signer_fingerprint: str | None = None
    signer_public_key_env: str | None = None
    #: warn this many days before a key expires (SARE rotates yearly with three weeks' notice).
    expiry_warning_days: int = Field(default=21, ge=0)

    _names = field_validator("passphrase_env", "public_key_env", "signer_public_key_env")(_env_name)

    @field_validator("private_keys_env")
    @classmethod
    def _key_names(cls, value: list[str]) -> list[str]:
        for name in value:
            _env_name(name)
        return value


# ---------------------------------------------------------------- file selection


class Readiness(StrictModel):
    """When is an uploaded file complete? SFTP has no signal of its own."""

    #: stable: same size and mtime in two listings at least ``stable_seconds`` apart;
    #: marker: a file ``<name><marker_suffix>`` exists next to it.
    mode: Literal["stable", "marker"] = "stable"
    stable_seconds: float = Field(default=30, ge=0)
    marker_suffix: str = ".ready"


class AfterImport(StrictModel):
    """What happens to the remote files of a delivery once it is merged."""

    action: Literal["leave", "done_suffix", "move_to_done", "delete"] = "leave"
    done_suffix: str = ".done"
    done_directory: str = "done"
    #: failed deliveries are moved here when set.
    quarantine_directory: str | None = None


class FileSelection(StrictModel):
    """The root file of a goal: a logical name and a wildcard (or regular expression)."""

    name: str
    pattern: str
    regex: bool = False
    csv: CsvOptions = CsvOptions()
    #: columns that must be present; a file without them is rejected before any merge.
    required_columns: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "file name")

    @model_validator(mode="after")
    def _pattern(self) -> FileSelection:
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from exc
        return self


class LinkedFile(FileSelection):
    """A nested file, linked to the root or another linked file by one or more column pairs."""

    parent: str
    #: column of this file -> column of the parent file.
    link: dict[str, str] = Field(min_length=1)
    #: rows whose link finds no parent row: fail the delivery (default) or drop them with a reject entry.
    orphans: Literal["error", "reject"] = "error"


class Files(StrictModel):
    directory: str = "."
    root: FileSelection
    linked: list[LinkedFile] = Field(default_factory=list)
    readiness: Readiness = Readiness()
    after_import: AfterImport = AfterImport()

    @model_validator(mode="after")
    def _tree(self) -> Files:
        names = [self.root.name] + [f.name for f in self.linked]
        if len(set(names)) != len(names):
            raise ValueError(f"file names must be unique within a goal, got {names}")
        known = {self.root.name}
        for linked in self.linked:
            if linked.parent not in known:
                raise ValueError(
                    f"linked file {linked.name!r}: parent {linked.parent!r} must be the root or a linked file declared before it"
                )
            if linked.pattern == self.root.pattern:
                raise ValueError(
                    f"linked file {linked.name!r} has the root file's pattern; the root file's name must differ from its linked files'"
                )
            known.add(linked.name)
        return self

    def file(self, name: str) -> FileSelection:
        for selection in [self.root, *self.linked]:
            if selection.name == name:
                return selection
        raise KeyError(name)


# ---------------------------------------------------------------- mappings


class Identifier(StrictModel):
    """Links a column to ``profile_id`` or to a unique profile property."""

    column: str
    property: str


class Mapping(StrictModel):
    column: str
    property: str
    rule: MergeRule = "set"
    #: import goals: logical name of the file holding ``column``; the root file when omitted. A
    #: linked file's rows are joined up to the root key first, so several rows of one key resolve
    #: like duplicate root rows (set rules: last row wins, add collects, sum adds). Added for
    #: issue B (mappings from nested files, "several files" in group goals).
    file: str | None = None
    #: *sum* only: columns of the mapping's file that identify the real-world row (an order number,
    #: a transaction id). With them the sum remembers what each row contributed, per (goal,
    #: property, identity): the same row in any later file adds nothing, a changed value adds the
    #: difference. Without them a row of a timeline event file is identified by its event id and a
    #: nested row by its event id and its key; other rows fall back to the per-file rule.
    identity: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _identity_for_sums(self) -> Mapping:
        if self.identity and self.rule != "sum":
            raise ValueError(f"mapping {self.column!r}: identity only applies to rule sum (got rule {self.rule})")
        return self


class BulkMapping(StrictModel):
    """"Add all detected fields": every column not otherwise used maps to ``prefix + column``."""

    rule: MergeRule = "set"
    prefix: str = ""
    exclude: list[str] = Field(default_factory=list)
    #: a column whose property (prefix + column; a group property in a group goal) is not declared creates it, typed
    #: from the file (text unless every value is a number or an ISO date), recorded in the store's
    #: catalog_properties table. false: such columns are skipped with a warning.
    create_properties: bool = True


class NestedEventMapping(StrictModel):
    type: str
    file: str
    #: nested property -> column
    properties: dict[str, str] = Field(default_factory=dict)
    #: columns that identify a nested row within its event (an order line number, a product id).
    #: A re-delivered row with the same key updates the stored row instead of adding one. Without
    #: it a nested row is identified by its content within its event, so a corrected value adds a
    #: row (declare the key, or set the goal's ``nested: replace``).
    key: list[str] = Field(default_factory=list)


class EventBulkMapping(StrictModel):
    """"Add all detected fields" for an event: every column of the event's file that nothing else
    uses becomes the event property ``prefix + column``, created when the catalog lacks it."""

    prefix: str = ""
    exclude: list[str] = Field(default_factory=list)


class EventMapping(StrictModel):
    """A timeline event type filled from one of the goal's files (one event per row)."""

    event_type: str = "order"
    file: str
    event_id: str
    event_time: str
    #: strptime format of event_time; ISO 8601 when omitted.
    event_time_format: str | None = None
    #: event property -> column
    properties: dict[str, str] = Field(default_factory=dict)
    nested: list[NestedEventMapping] = Field(default_factory=list)
    bulk_mapping: EventBulkMapping | None = None
    #: keep per product how often and how recently it was bought (needs a nested type with a product id).
    add_to_product_store: bool = False
    product_id_property: str = "product_id"


class _GoalBase(StrictModel):
    name: str
    enabled: bool = True
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "goal name")


class _ImportGoal(_GoalBase):
    files: Files
    processors: list[Processor] = Field(default_factory=list)
    #: skip_rows (the default, as the product documents it: a value that is not a number is not
    #: imported, a row without a usable identifier is excluded): the delivery is merged without
    #: them, each recorded in ``rejects``. fail: any rejected row or value fails the delivery.
    on_error: Literal["fail", "skip_rows"] = "skip_rows"
    #: the largest share of a file's rows that may be rejected (rows left out, values not
    #: imported, events dropped) before the delivery fails as a whole with nothing merged. Keeps a
    #: broken file (wrong date format, shifted columns) from passing as a partial success.
    max_reject_share: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _file_names(self) -> _ImportGoal:
        """Processors (``files``) and mappings (``file``) may only name files of this goal."""
        names = [self.files.root.name, *(f.name for f in self.files.linked)]
        for index, processor in enumerate(self.processors):
            unknown = sorted(set(processor.files or []) - set(names))
            if unknown:
                raise ValueError(f"processors.{index}.files: {unknown} are not files of this goal {names}")
        for index, mapping in enumerate(getattr(self, "mappings", [])):
            if mapping.file is not None and mapping.file not in names:
                raise ValueError(f"mappings.{index}.file: {mapping.file!r} is not a file of this goal {names}")
        return self


class ProfileImportGoal(_ImportGoal):
    type: Literal["import_profiles"]
    #: the domain group whose profiles this goal matches, creates and updates (identifiers are
    #: unique per domain group: the same e-mail in two groups is two profiles).
    domain_group: str = DEFAULT_DOMAIN_GROUP

    @field_validator("domain_group")
    @classmethod
    def _domain_group(cls, value: str) -> str:
        return check_identifier(value, "domain group")
    identifiers: list[Identifier] = Field(min_length=1)
    allow_new_profiles: bool = False
    mappings: list[Mapping] = Field(default_factory=list)
    bulk_mapping: BulkMapping | None = None
    timeline: list[EventMapping] = Field(default_factory=list)
    #: how a re-delivered event's nested rows are merged: ``merge`` (new keys added, known keys
    #: updated, rows not in the file kept) or ``replace`` (the event's rows become the file's).
    nested: Literal["merge", "replace"] = "merge"


class GroupImportGoal(_ImportGoal):
    type: Literal["import_groups"]
    group_type: str
    #: column holding the group id.
    group_id: str
    allow_new_groups: bool = True
    #: column -> group property with a merge rule
    mappings: list[Mapping] = Field(default_factory=list)
    bulk_mapping: BulkMapping | None = None


class ExportColumn(StrictModel):
    """One column of an export file; exactly one source key besides ``header``."""

    header: str
    property: str | None = None
    profile_id: bool = False
    #: "all" or a list of segment names
    segments: Literal["all"] | list[str] | None = None
    lifecycles: bool = False
    viewed_interactions: bool = False
    permission_level: bool = False
    text: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExportColumn:
        chosen = [
            key
            for key, on in (
                ("property", self.property is not None),
                ("profile_id", self.profile_id),
                ("segments", self.segments is not None),
                ("lifecycles", self.lifecycles),
                ("viewed_interactions", self.viewed_interactions),
                ("permission_level", self.permission_level),
                ("text", self.text is not None),
            )
            if on
        ]
        if len(chosen) != 1:
            raise ValueError(
                f"export column {self.header!r} needs exactly one of property, profile_id, segments, lifecycles, "
                f"viewed_interactions, permission_level, text (got {chosen or 'none'})"
            )
        return self

    @builtins.property
    def kind(self) -> str:
        for key in ("property", "segments", "text"):
            if getattr(self, key) is not None:
                return key
        for key in ("profile_id", "lifecycles", "viewed_interactions", "permission_level"):
            if getattr(self, key):
                return key
        raise AssertionError("validated export column without a source")


class ExportTarget(StrictModel):
    #: where the files go; the connection's source location when omitted.
    location: Location | None = None
    directory: str = "."
    #: placeholders: {date} {time} {datetime} {run_id} {goal} {segment}
    file_name: str = "{goal}_{date}.csv"
    gzip: bool = False
    #: split into files of at most this many rows (part numbers are appended).
    split_rows: int | None = Field(default=None, ge=1)
    #: write <file>.manifest.json with rows, bytes and sha256 next to each file.
    manifest: bool = False
    #: encrypt with the connection's public key; never uploaded in plain text when this fails.
    encrypt: bool = False
    #: a run that selects no profiles (nothing changed since the last export) sends no profile
    #: file, so a partner never imports an empty file; true sends a header-only file every run.
    write_empty_files: bool = False
    #: a file of the same name already on the target is never overwritten (a partner may not
    #: have fetched it yet): "suffix" sends this run's files as name_2.csv, name_3.csv …;
    #: "fail" refuses the run before anything is sent.
    on_existing_file: Literal["suffix", "fail"] = "suffix"


class TimelineExport(StrictModel):
    #: event types to export; all declared types when omitted.
    event_types: list[str] | None = None
    #: ISO dates; events outside [since, until) are left out.
    since: str | None = None
    until: str | None = None
    #: or a rolling window: the last N days.
    last_days: int | None = Field(default=None, ge=1)
    directory: str | None = None
    #: the rows' order in the files: "event_time" (events by event time and id, items by their
    #: event's place and item_index) or "none" (the store's order: no sort, for a consumer that
    #: loads the files into a database and never reads their order; same rows and cells).
    order: Literal["event_time", "none"] = "event_time"


class ExportGoal(_GoalBase):
    type: Literal["export_profiles"]
    segment: str
    #: only profiles of this domain group leave; none: the segment's members of every group.
    domain_group: str | None = None

    @field_validator("domain_group")
    @classmethod
    def _domain_group(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, "domain group")
    target: ExportTarget = ExportTarget()
    csv: CsvOptions = CsvOptions()
    processors: list[Processor] = Field(default_factory=list)
    columns: list[ExportColumn] = Field(min_length=1)
    #: only profiles changed since the goal's last successful export (BlueConic's default).
    changed_only: bool = True
    #: prefix cells starting with = + - @ tab CR with ' so spreadsheets do not run them.
    formula_guard: bool = True
    #: also write <name>.diff.csv: profiles added, changed and removed since the previous export.
    diff: bool = False
    timeline: TimelineExport | None = None
    #: Netmera connections: the reports written next to the profile file from the push requests
    #: of the exported profiles (``cdp_pipeline.dialects.netmera_reports``).
    netmera_reports: list[Literal["campaign", "campaign_external_ids", "transactional"]] = Field(default_factory=list)


Goal = Annotated[GroupImportGoal | ProfileImportGoal | ExportGoal, Field(discriminator="type")]


# ---------------------------------------------------------------- connection


class Notifications(StrictModel):
    emails: list[str] = Field(min_length=1)
    when: Literal["always", "failure"] = "failure"


class SensorSettings(StrictModel):
    enabled: bool = True
    minimum_interval_seconds: int = Field(default=60, ge=5)
    #: at most this many deliveries are requested per tick; the backlog drains over ticks.
    max_deliveries_per_tick: int = Field(default=50, ge=1)
    #: S3 only: keys listed per folder per tick; a larger prefix is walked in slices over several ticks.
    max_keys_per_tick: int = Field(default=10_000, ge=1)


class Connection(StrictModel):
    name: str
    description: str = ""
    labels: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)
    #: false keeps the connection loaded, with its sensor and schedules stopped.
    enabled: bool = True
    source: Location
    pgp: PgpSettings | None = None
    goals: list[Goal] = Field(min_length=1)
    schedules: list[Schedule] = Field(default_factory=list)
    sensor: SensorSettings = SensorSettings()
    notifications: Notifications | None = None
    #: only profiles that consented to at least one of these objectives are imported or exported.
    objectives: list[str] = Field(default_factory=list)
    #: the store is "stale" for this connection when nothing was merged for this many hours (UI freshness).
    freshness_hours: float | None = Field(default=26, gt=0)
    #: the largest file a delivery may hold, in GB (10^9 bytes): as listed, as decrypted and as
    #: un-gzipped. Bounds what anyone who can write to the drop folder can make us store (a
    #: compression bomb expands a few KB into the disk that also holds the store).
    max_file_gb: float = Field(default=20, gt=0)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_gb * 1_000_000_000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "connection name")

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        # Dagster accepts an e-mail address or "team:<name>"; anything else fails the code location.
        for owner in value:
            if not (re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", owner) or re.fullmatch(r"team:[A-Za-z0-9_.-]+", owner)):
                raise ValueError(f"owner {owner!r} must be an e-mail address or team:<name>")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", label):
                raise ValueError(f"label {label!r} may hold letters, digits, '_', '.', '-' (it becomes a Dagster tag)")
        return value

    @model_validator(mode="after")
    def _goals(self) -> Connection:
        names = [goal.name for goal in self.goals]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"goal names must be unique, repeated: {duplicates}")
        for schedule in self.schedules:
            for goal in schedule.goals or []:
                if goal not in names:
                    raise ValueError(f"schedule names unknown goal {goal!r}; goals are {names}")
        return self

    @property
    def import_goals(self) -> list[GroupImportGoal | ProfileImportGoal]:
        """Import goals in BlueConic's order: groups first, then profiles, each in declared order."""
        groups = [g for g in self.goals if isinstance(g, GroupImportGoal) and g.enabled]
        profiles = [g for g in self.goals if isinstance(g, ProfileImportGoal) and g.enabled]
        return [*groups, *profiles]

    @property
    def export_goals(self) -> list[ExportGoal]:
        return [g for g in self.goals if isinstance(g, ExportGoal) and g.enabled]

    def goal(self, name: str) -> GroupImportGoal | ProfileImportGoal | ExportGoal:
        for goal in self.goals:
            if goal.name == name:
                return goal
        raise KeyError(f"connection {self.name!r} has no goal {name!r}")
