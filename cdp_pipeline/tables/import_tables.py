"""From the plaintext files of one delivery to the tables the store merges, in Polars.

Order of work (the seeds' order): read each file with its file and field handling → run each
file's data processors → check the columns → link identifiers → map columns to properties →
join nested files to their parents → one row per key (duplicates resolved) → StagedImport.

Duplicate keys inside one delivery are resolved here so the store never sees two updates of one
key in one statement (an UPDATE that meets a key twice applies one of them at random): for set, set_if_empty and set_or_clear the LAST row
of the key in file order wins; add collects the distinct values of all rows in file order; sum
adds all rows. A mapping from a linked file (``mappings[].file``) resolves the same way over the
linked rows of the key.

Several identifiers (``identifiers: [customer_id → customer_number, email → email]``): each row
is keyed by its FIRST non-empty identifier in declared order (``_key`` + ``_key_index``). A row
keyed by a later identifier whose value also appears, for that identifier, on a row keyed by an
earlier one joins that row's key, so "C9 + a@x" and "(empty) + a@x" in one delivery become one
profile. Rows where every identifier is empty are rejected with their line. The store then
matches every key in declared order; the first identifier that finds a profile wins.

Rejects: a row without identifier, an orphan nested row (``orphans: reject``) or an event row
without id or time is left out as a whole. A cell that does not parse is rejected on its own:
the cell is not imported and the row's other values are (for ``on_error: skip_rows``), except
when the cell feeds a ``set_or_clear`` mapping, where an empty value would CLEAR the stored one,
so that row is left out.

Row identities for sums: a row of a timeline event's file is identified by its event id, a row of
a nested file by its event id and its key within the event, and a mapping with ``identity``
columns by those columns (``_keyed``: the store remembers what each key contributed, whatever the
file is called). Every other row keeps the per-file identity (issue D.1), a 128-bit hash: md5
over the raw text (as read, before processors) of the row's identifier columns (root file) or
link columns (linked file), the event-id columns of events read from that file, and the sum's
source column when the file has it; plus the occurrence number for identical rows, so a file
holding the same row twice counts it twice. Extra columns appearing in a new version of the file,
a new mapping or a processor change do not change the identity, so they never make the store
count a row again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from cdp_pipeline.config.catalog import (
    DEFAULT_DOMAIN_GROUP,
    RESERVED_EVENT_COLUMNS,
    RESERVED_GROUP_COLUMNS,
    RESERVED_PROFILE_COLUMNS,
    Catalog,
    PropertyDefinition,
    creatable_property,
)
from cdp_pipeline.config.connection import GroupImportGoal, ProfileImportGoal
from cdp_pipeline.config.csv_options import ColumnFormat
from cdp_pipeline.errors import InputError, InputProblem
from cdp_pipeline.tables.delivery_files import ImportGoal, _check_reject_share, _DeliveryFiles, _format_for, _n, _reject_rows, _RejectTally
from cdp_pipeline.tables.mapping_resolution import _check_mapping_targets, _mappings, _processors_for, detect_properties, detect_types
from cdp_pipeline.tables.nested_items import (
    _EVENT_ID,
    _ITEM_KEY,
    _PARENT_LINE,
    _item_keys,
    _typed_properties,
    _with_item_index,
)
from cdp_pipeline.tables.processors import apply_processors
from cdp_pipeline.tables.record_values import _aggregate, _drop_rows_clearing_on_failed_cells, _permission_levels, _retype, _unify_keys
from cdp_pipeline.tables.row_keys import (
    _CELL_SEPARATOR,
    _EMPTY_CELL,
    _ROW_KEY,
    _in_line_order,
    _key_text,
    _last_per,
    _link_keys,
    _link_values,
    ident_column,
    key_identities,
    row_identities,
)
from cdp_pipeline.tables.staged import (
    FILE_HASH_HI,
    FILE_HASH_LO,
    HASH_HI,
    HASH_LO,
    KEY,
    KEY_INDEX,
    LINE,
    NOT_IMPORTED,
    SUM_KEYED,
    ProductStoreSource,
    StagedImport,
)


def build_import_tables(
    goal: ImportGoal,
    catalog: Catalog,
    paths: dict[str, Path],
    display_names: dict[str, str],
    run_time: datetime,
    *,
    max_file_bytes: int | None = None,
) -> StagedImport:
    """Read, process, link and join one delivery. Raises InputError when the delivery cannot be
    imported (or has rejected rows and ``on_error`` is ``fail``); nothing is merged then.
    ``max_file_bytes`` bounds what a gzip-compressed file may expand to."""
    tally = _RejectTally()
    files = _DeliveryFiles(goal, paths, display_names, max_file_bytes, tally)
    warnings: list[str] = []
    root = goal.files.root.name
    is_profiles = isinstance(goal, ProfileImportGoal)
    if isinstance(goal, ProfileImportGoal):
        properties = catalog.profile_properties
        identifiers = [(_n(i.column), i.property) for i in goal.identifiers]
        timeline = goal.timeline
    else:
        properties = catalog.group_types[goal.group_type].properties
        identifiers = [(_n(goal.group_id), "group_id")]
        timeline = []
    identifier_columns = [column for column, _ in identifiers]
    _check_mapping_targets(goal, goal.mappings, identifiers)
    missing_files = sorted({root, *(f.name for f in goal.files.linked)} - set(paths))
    if missing_files:
        raise InputError(
            InputProblem(
                file=display_names.get(root, root), line=None, column=None,
                reason=f"the delivery lacks the goal's file(s) {missing_files}", fix="deliver every linked file with the root file",
            )
        )

    # Formats derived from the catalog: a column mapped to a decimal property is parsed as decimal.
    derived: dict[str, dict[str, ColumnFormat]] = {name: {} for name in paths}
    for mapping in goal.mappings:
        if mapping.property in properties:
            derived[mapping.file or root][_n(mapping.column)] = _format_for(properties[mapping.property])
    if goal.bulk_mapping is not None:
        for prop_name, prop in properties.items():
            if prop_name.startswith(goal.bulk_mapping.prefix):
                derived[root].setdefault(_n(prop_name[len(goal.bulk_mapping.prefix):]), _format_for(prop))
    for event in timeline:
        event_type = catalog.event_types[event.event_type]
        derived[event.file][_n(event.event_time)] = ColumnFormat(type="datetime", format=event.event_time_format)
        for event_property, column in event.properties.items():
            derived[event.file][_n(column)] = _format_for(event_type.properties[event_property])
        for nested in event.nested:
            for nested_property, column in nested.properties.items():
                derived[nested.file][_n(column)] = _format_for(event_type.nested[nested.type].properties[nested_property])
    # Keys stay text (see ``_key_text``): identifiers, both sides of every link, event ids, nested
    # keys and sum identities. A mapping, event or nested property fed by the same column is typed
    # where it is used (``_retype`` / ``_typed_properties``), so the column can be both.
    for column in identifier_columns:
        derived[root].pop(column, None)
    for linked in goal.files.linked:
        for column in linked.link:
            derived[linked.name].pop(_n(column), None)
        for column in linked.link.values():
            derived[linked.parent].pop(_n(column), None)
    for event in timeline:
        derived[event.file].pop(_n(event.event_id), None)
        for nested in event.nested:
            for column in nested.key:
                derived[nested.file].pop(_n(column), None)
    for mapping in goal.mappings:
        for column in mapping.identity:
            derived[mapping.file or root].pop(_n(column), None)

    for name in paths:
        files.read(name, derived[name], _identity_columns(goal, name, identifier_columns, timeline))

    # Processors run before linking and mapping, each file with the processors that name it
    # (the root file by default), in declared order.
    for name in paths:
        chain = _processors_for(goal, name)
        if chain:
            files.frames[name] = apply_processors(files.frames[name].lazy(), chain, display_name=display_names[name], run_time=run_time).collect()

    # Columns each file must have, and the ones the goal uses.
    used: dict[str, set[str]] = {name: set() for name in paths}
    used[root] |= set(identifier_columns)
    for linked in goal.files.linked:
        used[linked.name] |= {_n(c) for c in linked.link}
        used[linked.parent] |= {_n(c) for c in linked.link.values()}
    for event in timeline:
        used[event.file] |= {_n(event.event_id), _n(event.event_time), *(_n(c) for c in event.properties.values())}
        for nested in event.nested:
            used[nested.file] |= {_n(c) for c in nested.properties.values()} | {_n(c) for c in nested.key}
    detected: dict[str, str] = {}
    if goal.bulk_mapping is not None and goal.bulk_mapping.create_properties:
        detected = detect_properties(goal, files.frames[root], properties, used[root])
        reserved_columns = RESERVED_PROFILE_COLUMNS if is_profiles else RESERVED_GROUP_COLUMNS
        refused = [name for name in detected if not creatable_property(name, reserved_columns)]
        if refused:
            # A column named like a store column (domain_group, created_at ...) must never write it.
            warnings.append(f"bulk mapping skipped columns whose property name is reserved or not a valid name: {', '.join(refused)}")
            detected = {name: kind for name, kind in detected.items() if name not in refused}
        if detected:
            # BlueConic's "add all detected fields" creates the properties it does not find; they
            # are typed from this file and the merge adds them to the store and its catalog.
            properties = {**properties, **{name: PropertyDefinition(type=kind) for name, kind in detected.items()}}
            warnings.append(
                f"bulk mapping created {'' if isinstance(goal, ProfileImportGoal) else f'{goal.group_type} group '}properties not declared in store.yaml "
                "(recorded in catalog_properties): "
                + ", ".join(f"{name} ({kind})" for name, kind in detected.items())
            )
    mappings = [m for m in _mappings(goal, root, files.frames[root].columns, properties, used[root], warnings) if m.property in properties]
    for mapped in mappings:
        used[mapped.file].add(mapped.column)
    for declared in goal.mappings:
        used[declared.file or root] |= {_n(c) for c in declared.identity}
    # Every missing column of every file in one error, before anything is linked or merged.
    missing: list[InputProblem] = []
    for name in paths:
        try:
            files.require(name, used[name])
        except InputError as error:
            missing.extend(error.problems)
    if missing:
        raise InputError(missing)
    for name in paths:
        files.extra_columns(name, used[name], warnings)

    problems = files.problems
    rules = {m.property: m.rule for m in mappings}

    # --- root rows: identifiers → key
    frame = files.frames[root]
    rows_read = frame.height
    frame = frame.with_columns(_key_text(pl.col(column)).alias(ident_column(index)) for index, column in enumerate(identifier_columns))
    ident_values = [pl.col(ident_column(index)) for index in range(len(identifiers))]
    frame = frame.with_columns(
        pl.coalesce(ident_values).alias(KEY),
        pl.coalesce([pl.when(value.is_not_null()).then(pl.lit(index, dtype=pl.Int32)) for index, value in enumerate(ident_values)]).alias(KEY_INDEX),
    )
    columns_named = ", ".join(identifier_columns)
    frame = _reject_rows(
        frame,
        pl.col(KEY).is_null(),
        display_names[root],
        identifier_columns[0],
        "empty identifier" if len(identifiers) == 1 else f"every identifier is empty ({columns_named})",
        "every row needs a value in the identifier column" if len(identifiers) == 1 else f"every row needs a value in at least one of {columns_named}",
        problems,
        tally,
    )
    frame = _unify_keys(frame, len(identifiers))
    frame = _drop_rows_clearing_on_failed_cells(frame, root, mappings, files)
    keyed: dict[str, pl.DataFrame] = {root: frame}
    unique_parent_links: dict[str, bool] = {}

    def with_key(name: str) -> pl.DataFrame:
        """The file's rows carrying the root key, joined up the chain of links."""
        if name in keyed:
            return keyed[name]
        linked = next(f for f in goal.files.linked if f.name == name)
        parent = with_key(linked.parent)
        child = files.frames[name]
        left_on = [_n(c) for c in linked.link]
        right_on = [_n(c) for c in linked.link.values()]
        keys = _link_keys(len(left_on))
        parent_keys = parent.select(*_link_values(right_on, keys), pl.col(KEY), pl.col(KEY_INDEX), pl.col(LINE).alias(_PARENT_LINE)).unique(
            subset=keys, keep="last", maintain_order=True
        )
        child = child.with_columns([pl.col(c).cast(pl.String) for c in left_on])
        own_columns = {KEY, KEY_INDEX, _PARENT_LINE} & set(child.columns)
        # Each parent row has its own link value: a nested file can then find its event by the
        # parent's line number instead of joining the link texts a second time.
        unique_parent_links[name] = parent_keys.height == parent.height and not own_columns
        if own_columns:  # a file with a column named like ours: the join names the columns as before
            joined = child.with_columns(_link_values(left_on, keys)).join(parent_keys, on=keys, how="left", maintain_order="left").drop(keys)
        else:
            # Only the parent's key columns are looked up (each link value once in ``parent_keys``)
            # and set beside the child's columns: joining the whole frame would copy every column.
            found = child.select(_link_values(left_on, keys)).join(parent_keys, on=keys, how="left", maintain_order="left")
            joined = child.with_columns(found[KEY], found[KEY_INDEX], found[_PARENT_LINE])
            del found
        orphan = pl.col(KEY).is_null()
        orphans = joined.filter(orphan)
        if orphans.height:
            reason = f"no matching row in {linked.parent!r} for {', '.join(left_on)}"
            if linked.orphans == "error":
                raise InputError(
                    [
                        InputProblem(
                            file=display_names[name], line=line, column=left_on[0], reason=reason,
                            fix="deliver the parent rows in the same delivery, or set orphans: reject",
                        )
                        for line in orphans[LINE].to_list()
                    ]
                )
            joined = _reject_rows(joined, orphan, display_names[name], left_on[0], reason, "the row was left out (orphans: reject)", problems, tally)
        joined = _drop_rows_clearing_on_failed_cells(joined, name, mappings, files)
        keyed[name] = joined
        return joined

    # --- mapped values, one record per key
    root_mappings = [m for m in mappings if m.file == root]
    root_rows = frame.select(
        KEY, KEY_INDEX, LINE, *(ident_column(i) for i in range(len(identifiers))), *(pl.col(m.column).alias(m.property) for m in root_mappings)
    )
    root_rows = _retype(root_rows, root_mappings, properties, display_names[root], goal, problems, tally)
    if is_profiles:
        root_rows = _permission_levels(root_rows, root_mappings, display_names[root], problems, tally)
    records = _aggregate(root_rows, {m.property: m.rule for m in root_mappings}, len(identifiers), with_rows=True)
    value_rows: dict[str, pl.DataFrame] = {root: root_rows}
    for name in [f.name for f in goal.files.linked]:
        file_mappings = [m for m in mappings if m.file == name]
        if not file_mappings:
            continue
        rows = with_key(name).select(KEY, KEY_INDEX, LINE, *(pl.col(m.column).alias(m.property) for m in file_mappings))
        rows = _retype(rows, file_mappings, properties, display_names[name], goal, problems, tally)
        if is_profiles:
            rows = _permission_levels(rows, file_mappings, display_names[name], problems, tally)
        value_rows[name] = rows
        per_key = _aggregate(rows, {m.property: m.rule for m in file_mappings}, 0, with_rows=False).drop(LINE)
        records = records.join(per_key, on=[KEY, KEY_INDEX], how="left", maintain_order="left")

    # --- timeline events and their nested items
    events: dict[str, pl.DataFrame] = {}
    items: dict[str, pl.DataFrame] = {}
    product_store: list[ProductStoreSource] = []
    #: file → (_line, the key text of the row): an event row's event id, a nested row's event id
    #: and key within its event. Sums fed by these rows remember their contribution per key.
    row_keys: dict[str, pl.DataFrame] = {}
    #: only a file that feeds a sum needs its row keys (a text of every nested row otherwise).
    summed_files = {m.file for m in mappings if m.rule == "sum"}
    detected_events: dict[str, dict[str, str]] = {}
    nested_files = [nested.file for event in timeline for nested in event.nested]
    #: nested files read by nothing after their items are built: no sum, no file linked to them, not
    #: an event file, nested once.
    done_after_nesting = {
        name for name in nested_files
        if nested_files.count(name) == 1 and name not in summed_files
        and name not in {f.parent for f in goal.files.linked} and name not in {event.file for event in timeline}
    }

    for event in timeline:
        source = with_key(event.file)
        event_id = _n(event.event_id)
        event_time = _n(event.event_time)
        source = source.with_columns(_key_text(pl.col(event_id)).alias(_EVENT_ID))
        source = _reject_rows(
            source, pl.col(_EVENT_ID).is_null(), display_names[event.file], event_id, "empty event id", "every event row needs an id", problems, tally
        )
        event_key = pl.concat_str([pl.lit(f"event:{event.event_type}"), pl.col(_EVENT_ID)], separator=_CELL_SEPARATOR)
        if event.file in summed_files:
            row_keys.setdefault(event.file, source.select(LINE, event_key.alias(_ROW_KEY)))
        # An event without a time cannot be placed on the timeline; a time that did not parse is
        # already listed as a cell problem, so only the empty ones get their own entry here.
        unparsed_times = files.failed_cells(event.file, event_time)
        source = _reject_rows(
            source,
            pl.col(event_time).is_null() & ~pl.col(LINE).is_in(unparsed_times.implode()),
            display_names[event.file], event_time, "empty event time", "every event row needs a date/time", problems, tally,
        )
        if unparsed_times.len() and not source.filter(pl.col(event_time).is_not_null()).height:
            # Every event of the file lost its time: whatever max_reject_share says, a run that
            # drops all events must not pass (the times are written in a format nobody declared).
            raise InputError(
                InputProblem(
                    file=display_names[event.file], line=None, column=event_time,
                    reason=f"none of the {unparsed_times.len():,} event times parses, so every event would be dropped",
                    fix="set event_time_format on the goal's timeline entry to the way the file writes its times "
                    "(a strptime pattern such as '%d-%m-%Y %H:%M'; without it the times must be ISO 8601)",
                )
            )
        source = source.filter(pl.col(event_time).is_not_null())
        event_type = catalog.event_types[event.event_type]
        event_columns = dict(event.properties)
        event_definitions = dict(event_type.properties)
        if event.bulk_mapping is not None:
            # "Add all detected fields" for events: every column of the event's file that nothing
            # else uses; properties the catalog lacks are created, typed from this file.
            bulk = event.bulk_mapping
            taken = used[event.file] | {_n(c) for c in bulk.exclude} | set(event_columns.values())
            free = [c for c in files.frames[event.file].columns if c not in taken and c != LINE and bulk.prefix + c not in event_columns]
            for column in free:
                event_columns[bulk.prefix + column] = column
            refused_events = [bulk.prefix + c for c in free if not creatable_property(bulk.prefix + c, RESERVED_EVENT_COLUMNS)]
            if refused_events:
                warnings.append(f"bulk mapping skipped {event.event_type} columns whose property name is reserved or not valid: {', '.join(refused_events)}")
                free = [c for c in free if bulk.prefix + c not in refused_events]
                event_columns = {p: c for p, c in event_columns.items() if p not in refused_events}
            new = [c for c in free if bulk.prefix + c not in event_definitions]
            kinds = detect_types(files.frames[event.file], new)
            if kinds:
                created = {bulk.prefix + column: kind for column, kind in kinds.items()}
                detected_events[event.event_type] = created
                event_definitions.update({name: PropertyDefinition(type=kind) for name, kind in created.items()})
                warnings.append(
                    f"bulk mapping created {event.event_type} event properties not declared in store.yaml (recorded in catalog_properties): "
                    + ", ".join(f"{name} ({kind})" for name, kind in created.items())
                )
        event_frame = _in_line_order(
            source.select(
                pl.col(_EVENT_ID).alias("event_id"),
                pl.col(KEY),
                pl.col(KEY_INDEX),
                pl.col(event_time).alias("event_time"),
                *(pl.col(_n(column)).alias(prop) for prop, column in event_columns.items()),
                pl.col(LINE),
            )
        )
        event_frame = _last_per(event_frame, ["event_id"])
        event_frame = _typed_properties(
            event_frame, {p: event_definitions[p] for p in event_columns}, event_columns, display_names[event.file], goal, problems, tally,
            files, event.file,
        )
        events[event.event_type] = event_frame.drop(LINE)
        parent_ids = source.select(*[pl.col(c) for c in source.columns if c not in (KEY, KEY_INDEX)])
        for nested in event.nested:
            linked = next(f for f in goal.files.linked if f.name == nested.file)
            if linked.parent != event.file:
                raise InputError(
                    InputProblem(
                        file=display_names[nested.file], line=None, column=None,
                        reason=f"nested file {nested.file!r} must link directly to the event file {event.file!r}",
                        fix="set its parent to the event file",
                    )
                )
            left_on = [_n(c) for c in linked.link]
            right_on = [_n(c) for c in linked.link.values()]
            keys = _link_keys(len(left_on))
            child = with_key(nested.file)
            if nested.file in done_after_nesting:
                # Nothing after this reads the file's rows: the columns its items do not use (the
                # link text, the customer key) go with ``child`` below instead of at the end.
                for held in (keyed, files.frames, files.raw, value_rows):
                    held.pop(nested.file, None)
            if unique_parent_links[nested.file]:
                # The event of a nested row is the event row it was linked to, if that row is still
                # an event (it may have been left out for an empty id or time).
                lookup = parent_ids.select(pl.col(LINE).alias(_PARENT_LINE), pl.col(_EVENT_ID).alias("event_id"))
                # Only the event id column is looked up: joining the whole frame would copy every column.
                nested_events = child.select(_PARENT_LINE).join(lookup, on=_PARENT_LINE, how="left", maintain_order="left")["event_id"]
            else:
                lookup = parent_ids.select(*_link_values(right_on, keys), pl.col(_EVENT_ID).alias("event_id")).unique(subset=keys, keep="last")
                nested_events = child.select(_link_values(left_on, keys)).join(lookup, on=keys, how="left", maintain_order="left")["event_id"]
            # A row whose event was left out (empty id or time) has no event, and no row either. A
            # nested file's own "event_id" column keeps its name, as a join would leave it.
            nested_events = nested_events.alias("event_id_right" if "event_id" in child.columns else "event_id")
            item_columns = {LINE, "event_id", *(_n(c) for c in nested.properties.values()), *(_n(c) for c in nested.key)}
            joined = child.select(c for c in child.columns if c in item_columns).with_columns(nested_events)
            if nested_events.null_count():
                joined = joined.filter(pl.col(nested_events.name).is_not_null())
            del child
            joined = _in_line_order(joined)
            joined = _item_keys(joined, nested, display_names[nested.file], problems, tally)
            nested_type = event_type.nested[nested.type]
            item_frame = (
                joined.select(
                    pl.col("event_id"),
                    pl.col(_ITEM_KEY).alias("item_key"),
                    *(pl.col(_n(column)).alias(prop) for prop, column in nested.properties.items()),
                    pl.col(LINE),
                )
            )
            if nested.key:
                # One row per key within its event: the last in file order, as for events. Content
                # keys are unique within their event already (numbered among identical rows).
                item_frame = _last_per(item_frame, ["event_id", "item_key"])
            item_frame = _with_item_index(item_frame)
            item_frame = _typed_properties(
                item_frame, {p: nested_type.properties[p] for p in nested.properties}, nested.properties, display_names[nested.file], goal, problems, tally,
                files, nested.file,
            )
            items[f"{event.event_type}/{nested.type}"] = item_frame.select("event_id", "item_index", "item_key", *nested.properties, NOT_IMPORTED)
            tag = pl.lit(f"item:{event.event_type}/{nested.type}")
            item_key = pl.concat_str([tag, pl.col("event_id"), pl.col(_ITEM_KEY)], separator=_CELL_SEPARATOR)
            if nested.file in summed_files:
                row_keys.setdefault(nested.file, joined.select(LINE, item_key.alias(_ROW_KEY)))
            del joined
            if event.add_to_product_store:
                nested_props = nested_type.properties
                if event.product_id_property in nested_props:
                    product_store.append(
                        ProductStoreSource(
                            event_type=event.event_type,
                            nested_type=nested.type,
                            product_id_property=event.product_id_property,
                            quantity_property="quantity" if "quantity" in nested_props else None,
                        )
                    )

    # A linked file no sum reads is done with: its rows (the largest frames of an orders delivery,
    # the order lines) are let go before the sums build their identities, instead of at the end.
    for linked_file in goal.files.linked:
        if linked_file.name not in summed_files:
            for held in (keyed, files.frames, files.raw, value_rows):
                held.pop(linked_file.name, None)

    # --- the sums' source rows with their identities
    sum_rows: dict[str, pl.DataFrame] = {}
    identity_cache: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
    key_identity_cache: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
    declared_identity = {(m.file or root, _n(m.column), m.property): [_n(c) for c in m.identity] for m in goal.mappings if m.identity}
    for summed in mappings:
        if summed.rule != "sum":
            continue
        rows = value_rows[summed.file].select(KEY, KEY_INDEX, LINE, pl.col(summed.property).alias("value")).filter(pl.col("value").is_not_null())
        # Per-file identity (rows without a key): the raw cells of the row's identifier or link
        # columns, event ids and the sum's column, numbered among identical rows.
        raw = files.raw[summed.file]
        base = identifier_columns if summed.file == root else [_n(c) for c in next(f for f in goal.files.linked if f.name == summed.file).link]
        event_ids = [_n(event.event_id) for event in timeline if event.file == summed.file]
        identity = [c for c in dict.fromkeys([*base, *event_ids, summed.column]) if c in raw.columns]
        cache_key = (summed.file, tuple(identity))
        if cache_key not in identity_cache:
            identity_cache[cache_key] = row_identities(raw, identity)
        per_file = rows.join(identity_cache[cache_key], on=LINE, how="left").with_columns(
            pl.lit(False).alias(SUM_KEYED), pl.col(HASH_HI).alias(FILE_HASH_HI), pl.col(HASH_LO).alias(FILE_HASH_LO)
        )
        # Keyed identity: the mapping's own identity columns, else the row's event or nested key.
        columns = declared_identity.get((summed.file, summed.column, summed.property))
        if columns:
            source = with_key(summed.file)
            cells = [pl.lit("identity"), *(pl.lit(c) for c in columns), *(_key_text(pl.col(c)).fill_null(_EMPTY_CELL) for c in columns)]
            text = pl.concat_str(cells, separator=_CELL_SEPARATOR)
            present = pl.any_horizontal(*(_key_text(pl.col(c)).is_not_null() for c in columns))
            keyed_text: pl.DataFrame | None = source.filter(present).select(LINE, text.alias(_ROW_KEY))
        else:
            keyed_text = row_keys.get(summed.file)
        if keyed_text is None:
            sum_rows[summed.property] = per_file.drop(LINE)
            continue
        # Sums fed by the same file's event or nested keys share one hashing pass.
        key_cache_key = (summed.file, tuple(columns or ()))
        if key_cache_key not in key_identity_cache:
            key_identity_cache[key_cache_key] = key_identities(keyed_text)
        hashes = key_identity_cache[key_cache_key]
        keyed_rows = _in_line_order(
            rows.join(hashes, on=LINE, how="inner")
            # The row's per-file identity too: a store counted before keys existed finds the rows
            # it already added under that identity, so an upgrade never adds them again.
            .join(identity_cache[cache_key].rename({HASH_HI: FILE_HASH_HI, HASH_LO: FILE_HASH_LO}), on=LINE, how="left")
        )
        # The same real-world row twice in one delivery counts once: the last one, as for events.
        keyed_rows = _last_per(keyed_rows, [HASH_HI, HASH_LO]).with_columns(pl.lit(True).alias(SUM_KEYED))
        unkeyed = per_file.join(hashes.select(LINE), on=LINE, how="anti")
        sum_rows[summed.property] = pl.concat([keyed_rows.select(per_file.columns), unkeyed], how="vertical").drop(LINE)

    # The guard first: its summary names the most common reason and the setting, also for on_error: fail.
    # A row the reader left out (a cut last row) counts among the file's rows, as it does among its rejects.
    rows_by_file = {display_names[name]: files.heights[name] + files.left_out.get(name, 0) for name in paths}
    _check_reject_share(goal, tally, rows_by_file, timeline, display_names, problems)
    if problems and goal.on_error == "fail":
        raise InputError(problems)
    return StagedImport(
        target="profiles" if is_profiles else "groups",
        identifier_property=identifiers[0][1],
        identifiers=[prop for _, prop in identifiers],
        allow_create=goal.allow_new_profiles if isinstance(goal, ProfileImportGoal) else goal.allow_new_groups,
        rules=rules,
        records=records,
        group_type=goal.group_type if isinstance(goal, GroupImportGoal) else None,
        events=events,
        items=items,
        product_store=product_store,
        rejects=problems,
        rows_read=rows_read,
        warnings=warnings,
        sum_rows=sum_rows,
        rows_rejected=tally.rows,
        values_not_imported=tally.values,
        replace_nested=isinstance(goal, ProfileImportGoal) and goal.nested == "replace",
        domain_group=goal.domain_group if isinstance(goal, ProfileImportGoal) else DEFAULT_DOMAIN_GROUP,
        detected_properties=detected,
        detected_event_properties=detected_events,
    )


def _identity_columns(goal: ImportGoal, name: str, identifier_columns: list[str], timeline: list) -> set[str] | None:
    """The columns of file ``name`` whose text as read a sum's per-file row identity may hash (see
    the sums' source rows below), or None when any column may (a bulk mapping that sums)."""
    root = goal.files.root.name
    if name == root and goal.bulk_mapping is not None and goal.bulk_mapping.rule == "sum":
        return None
    summed = {_n(m.column) for m in goal.mappings if m.rule == "sum" and (m.file or root) == name}
    if not summed:
        return set()
    base = identifier_columns if name == root else [_n(c) for c in next(f for f in goal.files.linked if f.name == name).link]
    return {*base, *(_n(event.event_id) for event in timeline if event.file == name), *summed}
