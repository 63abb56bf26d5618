"""Which goals write which property: the seed's warning "Data will be mapped to an existing
profile property", made useful across connections. Pure functions over the loaded configuration.

From the configuration only explicit mappings count: a bulk mapping's targets depend on the
columns of the file that arrives. The import adds what the store knows (who delivered values of
each property, from its value history), so a bulk-mapped property is reported too. Identifiers
are not counted (a profile carries its identifier values with set_if_empty, which never
overwrites another connection's value).
"""

from __future__ import annotations

from cdp_pipeline.config.connection import GroupImportGoal, ProfileImportGoal
from cdp_pipeline.config.loading import ProjectConfig

#: ("profiles", property) or ("groups_<type>", property)
PropertyTarget = tuple[str, str]


def _target_table(goal: GroupImportGoal | ProfileImportGoal) -> str:
    return "profiles" if isinstance(goal, ProfileImportGoal) else f"groups_{goal.group_type}"


def property_writers(project: ProjectConfig) -> dict[PropertyTarget, list[tuple[str, str]]]:
    """Every property some enabled import goal maps into → the (connection, goal) pairs writing it,
    in connection and goal order."""
    writers: dict[PropertyTarget, list[tuple[str, str]]] = {}
    for connection in project.connections.values():
        for goal in connection.import_goals:
            for mapping in goal.mappings:
                pair = (connection.name, goal.name)
                listed = writers.setdefault((_target_table(goal), mapping.property), [])
                if pair not in listed:
                    listed.append(pair)
    return writers


def shared_property_warnings(
    project: ProjectConfig,
    connection: str,
    goal: str,
    *,
    written: list[str] | None = None,
    stored: dict[str, set[tuple[str, str]]] | None = None,
) -> list[str]:
    """BlueConic's "Data will be mapped to an existing profile property": one warning per property
    the goal writes that another goal (of this connection or another) maps into, or that already
    holds values another goal or connection delivered (``stored``: property → (connection, goal)
    pairs from the store's value history). ``written`` is every property the delivery writes
    (bulk-mapped ones included); without it, the goal's explicit mappings."""
    writers = property_writers(project)
    this = project.connections[connection].goal(goal)
    if not isinstance(this, (GroupImportGoal, ProfileImportGoal)):
        return []
    table = _target_table(this)
    warnings = []
    for prop in dict.fromkeys(written if written is not None else [m.property for m in this.mappings]):
        others = [pair for pair in writers.get((table, prop), []) if pair != (connection, goal)]
        others += sorted(pair for pair in (stored or {}).get(prop, set()) if pair != (connection, goal) and pair not in others)
        if others:
            listed = ", ".join(f"{c}/{g}" for c, g in others)
            warnings.append(
                f"{table}.{prop} is also filled by {listed}: the merge rules of both decide the value; "
                "map into another property if the two sources must not overwrite each other"
            )
    return warnings
