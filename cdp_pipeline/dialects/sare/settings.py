"""The connection's side of a SARE drop (``dialect:`` with ``type: sare``) and SARE's vocabulary:
the meanings of the sidecar's numbers and the merge rules each ``overwrite`` value stands for."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP, check_identifier
from cdp_pipeline.config.connection import MergeRule
from cdp_pipeline.config.csv_options import StrictModel
from cdp_pipeline.tables.column_names import normalise_column_name

#: logical names of the two files of a pair inside a Delivery (and the fetched/decrypted manifests).
DATA = "data"
SIDECAR = "sidecar"
SIDECAR_SUFFIX = ".import"
#: data file suffixes, plain first; "Szyfrowany plik może być tylko w formacie .csv": only the csv is encrypted.
PLAIN_SUFFIX = ".csv"
ENCRYPTED_SUFFIXES = (".csv.gpg", ".csv.pgp")
#: sidecars are a few hundred bytes; a bigger one is not a sidecar (and is not read into memory).
MAX_SIDECAR_BYTES = 1024 * 1024

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





# --------------------------------------------------------------------------- settings (connection side)


class SareSettings(StrictModel):
    """The connection's side of a SARE drop: where the pair lands and which catalog properties the
    sidecar's values go to. The ``dialect:`` key of a Connection (``type: sare``)."""

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
    #: overwrite 5 clears these when the file does not import them. Omitted: every profile property
    #: the file does not import ("wyczyść cechy nieimportowane"), except identifiers and the four
    #: properties the sidecar itself writes.
    managed_properties: list[str] | None = None
    #: overwrite 3 ("kasuj historię") always deletes the imported profiles' value history
    #: (property_changes); it also deletes their timeline events of these types. None by default.
    history_event_types: list[str] = Field(default_factory=list)
    #: optional local text file, one address per line, checked besides the store's ``spamtraps``
    #: table when a sidecar says ``checkSpamtrap: true``.
    spamtrap_list: str | None = None
    #: the domain group the pairs import into: addresses are matched, created and updated only among
    #: its profiles, and SAREscript group operations touch only its members (one SARE account per
    #: domain group; the same address in two accounts is two profiles).
    domain_group: str = DEFAULT_DOMAIN_GROUP

    @property
    def default_poll_seconds(self) -> int:
        """The sensor interval when the connection's YAML sets none: "Import jest uruchamiany co 5 minut"."""
        return DEFAULT_POLL_SECONDS

    @field_validator("goal_name")
    @classmethod
    def _goal_name(cls, value: str) -> str:
        return check_identifier(value, "goal name")

    @field_validator("domain_group")
    @classmethod
    def _domain_group(cls, value: str) -> str:
        return check_identifier(value, "domain group")

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
