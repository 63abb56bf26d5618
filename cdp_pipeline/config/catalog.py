"""The catalog of the store: profile properties, group types, timeline event types, segments,
lifecycles and objectives. It plays the part of the BlueConic tenant's definitions: connections
map into it, the store creates one typed column per property from it.

Declared in ``store.yaml`` next to the connections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import Field, field_validator, model_validator

from cdp_pipeline.config.csv_options import ColumnType, StrictModel

# Identifiers become DuckDB column and table names: keep them plain so they never need quoting
# tricks and cannot collide case-insensitively (DuckDB matches names without regard to case).

#: BlueConic's domain groups: profiles live in one domain group each; an import goal matches,
#: creates and updates only the profiles of its own ("Select a domain group for the import to
#: ensure that the correct profiles are updated or added"). Profiles of every goal that names none
#: live here, as do the profiles of stores made before domain groups existed.
DEFAULT_DOMAIN_GROUP = "default"

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_PROFILE_COLUMNS = {"profile_id", "created_at", "updated_at", "last_delivery_id", "last_run_id", "domain_group", "created_delivery_id"}
#: the fixed columns of every groups_<group type> table; no group property may take these names.
RESERVED_GROUP_COLUMNS = {"group_id", "created_at", "updated_at", "last_delivery_id", "created_delivery_id"}
#: the fixed columns of every timeline_<event type> table; no event property may take these names.
RESERVED_EVENT_COLUMNS = {"event_id", "profile_id", "event_time", "delivery_id", "imported_at"}


#: BlueConic's "permission level set in the profile": a property every store has (a text column of
#: profiles), importable with a mapping like any property and exported by ``permission_level: true``.
#: store.yaml may declare it (type text) to give it a description; it is added when it does not.
PERMISSION_LEVEL = "permission_level"
#: the values it holds, lowest first; an import writes them in this spelling ("Do not track",
#: "do-not-track" and "DO_NOT_TRACK" are read as do_not_track), any other value is not imported.
PERMISSION_LEVELS = ("do_not_track", "anonymous", "personal")


def creatable_property(name: str, reserved: set[str]) -> bool:
    """Whether a bulk mapping may create a property of this name: a valid identifier that is not
    one of the table's own columns nor the pipeline's internal ``_`` names."""
    return bool(IDENTIFIER.match(name)) and not name.startswith("_") and name not in reserved


def check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(f"{what} {value!r} must be lower case letters, digits and '_' and start with a letter or '_'")
    return value


class PropertyDefinition(StrictModel):
    type: ColumnType = "text"
    description: str = ""
    #: a unique property can link identifiers (e-mail, customer number ...).
    unique: bool = False


#: the ``permission_level`` property a store has when store.yaml does not declare it.
BUILT_IN_PERMISSION_LEVEL = PropertyDefinition(
    type="text", description=f"BlueConic's permission level of the profile: {', '.join(PERMISSION_LEVELS)} (empty: not set)"
)


class NestedItemType(StrictModel):
    """Nested details of an event (order lines / products)."""

    properties: dict[str, PropertyDefinition] = Field(default_factory=dict)
    description: str = ""


class EventType(StrictModel):
    """A timeline event type; ``order`` is the default one, others are custom."""

    description: str = ""
    properties: dict[str, PropertyDefinition] = Field(default_factory=dict)
    nested: dict[str, NestedItemType] = Field(default_factory=dict)
    #: marks the type as interactions a profile viewed (a dialogue, a banner, a push it opened):
    #: the property naming the interaction. An export's ``viewed_interactions`` column lists the
    #: distinct names of every such event of the profile, all time.
    interaction_property: str | None = None


class GroupType(StrictModel):
    """A group type (household, company, account ...). Profiles join a group through ``profile_property``."""

    description: str = ""
    properties: dict[str, PropertyDefinition] = Field(default_factory=dict)
    #: profile property that holds the id of the profile's group of this type.
    profile_property: str | None = None


class Segment(StrictModel):
    """A set of profiles: a condition (one SQL expression) over the columns of ``profiles``, optionally inside other segments."""

    description: str = ""
    condition: str = "TRUE"
    based_on: list[str] = Field(default_factory=list)


class LifecycleStage(StrictModel):
    name: str
    condition: str


class Lifecycle(StrictModel):
    """Ordered stages; a profile is in the first stage whose condition it meets."""

    description: str = ""
    stages: list[LifecycleStage] = Field(min_length=1)


class Objective(StrictModel):
    """A privacy objective; a profile consented when its consent property holds the objective's name."""

    description: str = ""


class Catalog(StrictModel):
    profile_properties: dict[str, PropertyDefinition] = Field(default_factory=dict)
    group_types: dict[str, GroupType] = Field(default_factory=dict)
    event_types: dict[str, EventType] = Field(default_factory=dict)
    segments: dict[str, Segment] = Field(default_factory=dict)
    lifecycles: dict[str, Lifecycle] = Field(default_factory=dict)
    objectives: dict[str, Objective] = Field(default_factory=dict)

    @field_validator("profile_properties")
    @classmethod
    def _property_names(cls, value: dict[str, PropertyDefinition]) -> dict[str, PropertyDefinition]:
        for name in value:
            check_identifier(name, "profile property")
            if name in RESERVED_PROFILE_COLUMNS:
                raise ValueError(f"profile property {name!r} is reserved by the store; choose another name")
        return value

    @field_validator("group_types", "event_types", "segments", "lifecycles", "objectives")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name, item in value.items():
            check_identifier(name, "name")
            for prop in getattr(item, "properties", {}) or {}:
                check_identifier(prop, f"property of {name}")
            for nested_name in getattr(item, "nested", {}) or {}:
                check_identifier(nested_name, f"nested type of {name}")
        return value

    @model_validator(mode="after")
    def _permission_level(self) -> Catalog:
        declared = self.profile_properties.get(PERMISSION_LEVEL)
        if declared is None:
            self.profile_properties[PERMISSION_LEVEL] = BUILT_IN_PERMISSION_LEVEL
        elif declared.type != "text" or declared.unique:
            raise ValueError(
                f"profile property {PERMISSION_LEVEL!r} holds the permission level ({', '.join(PERMISSION_LEVELS)}): "
                "declare it as type text (not unique), or leave it out of store.yaml"
            )
        return self

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        for name, group in self.group_types.items():
            if group.profile_property and group.profile_property not in self.profile_properties:
                raise ValueError(
                    f"group_types.{name}.profile_property: {group.profile_property!r} is not a declared profile property"
                )
        for name, event in self.event_types.items():
            if event.interaction_property is not None and event.interaction_property not in event.properties:
                raise ValueError(
                    f"event_types.{name}.interaction_property: {event.interaction_property!r} is not a property of {name!r}; "
                    f"declare it under event_types.{name}.properties"
                )
        for name, segment in self.segments.items():
            for base in segment.based_on:
                if base not in self.segments:
                    raise ValueError(f"segments.{name}.based_on: unknown segment {base!r}")
        self.segment_order()  # raises on cycles
        # Conditions become SQL: each must be one allowed expression over known columns. The store
        # package renders and checks them, and imports this module, hence the late import.
        from cdp_pipeline.store.conditions import ConditionError, compile_conditions

        try:
            compile_conditions(self)
        except ConditionError as exc:
            raise ValueError(str(exc)) from None
        return self

    def segment_order(self) -> list[str]:
        """Segments sorted so that every segment comes after the ones it is based on."""
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in ordered:
                return
            if name in visiting:
                raise ValueError(f"segments: {name!r} is based on itself through a cycle")
            visiting.add(name)
            for base in self.segments[name].based_on:
                visit(base)
            visiting.discard(name)
            ordered.append(name)

        for name in self.segments:
            visit(name)
        return ordered

    @property
    def unique_properties(self) -> list[str]:
        return [name for name, prop in self.profile_properties.items() if prop.unique]


def consent_property_problem(profile_properties: Mapping[str, PropertyDefinition], consent_property: str) -> str | None:
    """Why ``store.consent_property`` cannot hold consent, or None when it can.

    A connection with objectives imports and exports only profiles whose consent property (a
    list of objective names) names one of them; any other property type cannot be tested for
    that. Loading checks it for every connection with objectives, so the engine trusts it; this
    is the one place the rule and its message are written.
    """
    prop = profile_properties.get(consent_property)
    if prop is not None and prop.type == "list":
        return None
    found = "not declared" if prop is None else f"declared as {prop.type}"
    return (
        f"store.consent_property {consent_property!r} must be a list profile property for a connection with objectives, "
        f"but the consent property {consent_property!r} is not a list property in store.yaml ({found}); declare it in "
        "store.yaml catalog.profile_properties (type: list) or set store.consent_property"
    )
