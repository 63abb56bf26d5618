"""The import tables of one delivery, ready to merge: what ``import_tables`` produces and the
store consumes. Persisted as Parquet files plus a small JSON manifest so the Dagster steps hand
them over through the delivery's private work directory, not through pickled frames."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import polars as pl

from cdp_pipeline.config.catalog import DEFAULT_DOMAIN_GROUP
from cdp_pipeline.errors import InputProblem

# The hand-over columns: Polars (import_tables, csv_reading, the dialects) writes them into the
# frames of a StagedImport and the store's merge reads them back by these names, so both sides
# take the names from here.
#: the identifier value a record is keyed on.
KEY = "_key"
#: the physical line (1-based) a row starts on; for a record, the last line of its key.
LINE = "_line"
#: which identifier (0-based, declared order) ``KEY`` is a value of.
KEY_INDEX = "_key_index"
#: number of root rows a record was built from (consent and ignore counts are in rows).
ROWS = "_rows"
#: the row identity of a sum row, as two 64-bit halves of its hash (a file's row counted once).
HASH_HI = "_row_hash_hi"
HASH_LO = "_row_hash_lo"
#: sum rows: the identity is a key (event id, nested key, ``identity`` columns) whose
#: contribution is remembered across files, not the per-file identity.
SUM_KEYED = "_keyed"
#: sum rows: the per-file identity of a keyed row, so a store counted before sums had keys
#: recognises rows it already added.
FILE_HASH_HI = "_file_hash_hi"
FILE_HASH_LO = "_file_hash_lo"
#: event and nested frames: the properties of the row whose cell did not parse.
NOT_IMPORTED = "_not_imported"
#: every hand-over column: the pipeline's own, never a column a person configured or sees.
HANDOVER_COLUMNS = frozenset({KEY, LINE, KEY_INDEX, ROWS, HASH_HI, HASH_LO, SUM_KEYED, FILE_HASH_HI, FILE_HASH_LO, NOT_IMPORTED})


#: the hand-over files live for one run in the delivery's work directory: written and read once,
#: so the cheaper codec (~20 % less CPU to write a 1M-row frame than zstd, files ~1.7x larger).
_HANDOVER_COMPRESSION: Final = "lz4"


@dataclass
class ProductStoreSource:
    """Which nested items feed the product store, and their product id / quantity properties."""

    event_type: str
    nested_type: str
    product_id_property: str
    quantity_property: str | None


@dataclass
class StagedImport:
    #: "profiles" or "groups"
    target: str
    #: the property the first identifier links to ("profile_id", a unique property, or "group_id").
    identifier_property: str
    allow_create: bool
    #: property → merge rule, for the properties this delivery carries (absent ones stay untouched).
    rules: dict[str, str]
    #: one row per key: ``_key`` (identifier value), ``_line`` (last line of the key), one column per
    #: property; with several identifiers also ``_key_index`` (which identifier ``_key`` belongs to),
    #: ``_ident_<n>`` (the key's value of identifier n, last non-empty one) and ``_rows`` (root rows).
    records: pl.DataFrame
    group_type: str | None = None
    #: event type → event_id, _key, event_time, properties
    events: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    #: "event_type/nested_type" → event_id, item_key (the row's key within its event), item_index, properties
    items: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    product_store: list[ProductStoreSource] = field(default_factory=list)
    rejects: list[InputProblem] = field(default_factory=list)
    rows_read: int = 0
    warnings: list[str] = field(default_factory=list)
    #: every identifier property in declared order (matched in this order); empty = [identifier_property].
    identifiers: list[str] = field(default_factory=list)
    #: sum property → one row per source row that carries a value: ``_key``, ``_key_index``,
    #: ``_row_hash_hi``/``_row_hash_lo`` (the row's identity, see import_tables) and ``value``. The
    #: merge adds only rows whose identity was not counted before for the same root file (row delta).
    sum_rows: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    #: path of the reject report CSV written by ``stage_delivery`` (None until written).
    reject_report: str | None = None
    #: a key matching several stored profiles updates every one of them (SARE's duplicates_handling
    #: "default"); otherwise the smallest profile_id. Decided at merge time, so not saved.
    match_all: bool = False
    #: rows with any problem (left out, or with a value not imported), counted over the whole
    #: delivery (the listed problems are capped); None for tables staged without the count.
    rows_rejected: int | None = None
    #: cells that did not parse for their property and were not imported (the row's other values were).
    values_not_imported: int = 0
    #: the goal's ``nested: replace``: a re-delivered event's nested rows replace the stored ones.
    replace_nested: bool = False
    #: profiles: the domain group the records are matched in and created in.
    domain_group: str = DEFAULT_DOMAIN_GROUP
    #: bulk mapping ("add all detected fields"): profile properties (group properties of
    #: ``group_type`` for a group import) not in store.yaml that this delivery creates → the type
    #: inferred from the file (the merge adds their columns).
    detected_properties: dict[str, str] = field(default_factory=dict)
    #: the same for event properties: event type → property → inferred type.
    detected_event_properties: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def identifier_properties(self) -> list[str]:
        return self.identifiers or [self.identifier_property]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.records.write_parquet(directory / "records.parquet", compression=_HANDOVER_COMPRESSION)
        for name, frame in self.events.items():
            frame.write_parquet(directory / f"events__{name}.parquet", compression=_HANDOVER_COMPRESSION)
        for name, frame in self.items.items():
            frame.write_parquet(directory / f"items__{name.replace('/', '__')}.parquet", compression=_HANDOVER_COMPRESSION)
        for name, frame in self.sum_rows.items():
            frame.write_parquet(directory / f"sum_rows__{name}.parquet", compression=_HANDOVER_COMPRESSION)
        manifest = {
            "target": self.target,
            "identifier_property": self.identifier_property,
            "identifiers": self.identifiers,
            "allow_create": self.allow_create,
            "rules": self.rules,
            "group_type": self.group_type,
            "events": sorted(self.events),
            "items": sorted(self.items),
            "sum_rows": sorted(self.sum_rows),
            "product_store": [vars(source) for source in self.product_store],
            "rejects": [vars(problem) for problem in self.rejects],
            "rows_read": self.rows_read,
            "warnings": self.warnings,
            "reject_report": self.reject_report,
            "rows_rejected": self.rows_rejected,
            "values_not_imported": self.values_not_imported,
            "replace_nested": self.replace_nested,
            "domain_group": self.domain_group,
            "detected_properties": self.detected_properties,
            "detected_event_properties": self.detected_event_properties,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: Path) -> StagedImport:
        """The saved tables; events, nested rows and sum rows stay in their Parquet files
        (``ParquetFrames``): the merge reads them there in DuckDB, so the largest tables of a
        delivery (an orders file's lines) are never held in Python during the merge."""
        manifest = json.loads((directory / "manifest.json").read_text())
        return cls(
            target=manifest["target"],
            identifier_property=manifest["identifier_property"],
            identifiers=manifest.get("identifiers", []),
            allow_create=manifest["allow_create"],
            rules=manifest["rules"],
            records=pl.read_parquet(directory / "records.parquet"),
            group_type=manifest["group_type"],
            events=ParquetFrames({name: directory / f"events__{name}.parquet" for name in manifest["events"]}),
            items=ParquetFrames({name: directory / f"items__{name.replace('/', '__')}.parquet" for name in manifest["items"]}),
            sum_rows=ParquetFrames({name: directory / f"sum_rows__{name}.parquet" for name in manifest.get("sum_rows", [])}),
            product_store=[ProductStoreSource(**source) for source in manifest["product_store"]],
            rejects=[InputProblem(**problem) for problem in manifest["rejects"]],
            rows_read=manifest["rows_read"],
            warnings=manifest["warnings"],
            reject_report=manifest.get("reject_report"),
            rows_rejected=manifest.get("rows_rejected"),
            values_not_imported=manifest.get("values_not_imported", 0),
            replace_nested=manifest.get("replace_nested", False),
            domain_group=manifest.get("domain_group", DEFAULT_DOMAIN_GROUP),
            detected_properties=manifest.get("detected_properties", {}),
            detected_event_properties=manifest.get("detected_event_properties", {}),
        )


def write_reject_report(rejects: StagedImport | Sequence[InputProblem], path: Path) -> int:
    """Write the rejected rows and cells as a CSV (file, line, column, reason) and return how many
    entries it holds. The reason carries the fix, as in the ``rejects`` table. The file is written
    even when empty (header only), so "no rejects" is visible beside the run's other output."""
    problems = rejects.rejects if isinstance(rejects, StagedImport) else list(rejects)
    report = pl.DataFrame(
        {
            "file": [p.file for p in problems],
            "line": [p.line for p in problems],
            "column": [p.column for p in problems],
            "reason": [f"{p.reason}. {p.fix}".strip(". ") if p.fix else p.reason for p in problems],
        },
        schema={"file": pl.String, "line": pl.Int64, "column": pl.String, "reason": pl.String},
    )
    # File order within each file, so the report reads like the file; summaries (no line) last.
    report = report.sort(["file", "line"], nulls_last=True, maintain_order=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write_csv(path)
    return report.height


def records_as_stored(staged: StagedImport, rows: int) -> pl.DataFrame:
    """The first records in file order with the user's columns only (``preview``, the UI's
    preview): the identifier the record is keyed on under its property's name (``property=value``
    with several identifiers), then the mapped properties. The hand-over columns, and any other
    ``_`` column of the pipeline's, are not what a person configured."""
    records = staged.records.sort(LINE) if LINE in staged.records.columns else staged.records
    records = records.head(rows)
    identifiers = staged.identifier_properties
    if len(identifiers) == 1 or KEY_INDEX not in records.columns:
        key = pl.col(KEY).cast(pl.String).alias(identifiers[0])
    else:
        names = pl.col(KEY_INDEX).replace_strict(dict(enumerate(identifiers)), return_dtype=pl.String)
        key = pl.concat_str([names, pl.lit("="), pl.col(KEY).cast(pl.String)]).alias("identifier")
    columns = [c for c in records.columns if c not in HANDOVER_COLUMNS and not c.startswith("_") and c != key.meta.output_name()]
    return records.select(key, *columns)


class ParquetFrames(Mapping[str, pl.DataFrame]):
    """Staged tables left in their Parquet files: a frame is read when asked for (and not kept),
    and a reader that can scan the file itself (the merge, in DuckDB) takes ``path`` instead.
    Read-only: code that changes a table builds a plain dict of frames in its place."""

    def __init__(self, paths: Mapping[str, Path]):
        self._paths = dict(paths)

    def __getitem__(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(self._paths[name])

    def __contains__(self, name: object) -> bool:
        # Mapping's own ``in`` reads the frame (``self[name]``): the merge asked whether the order
        # lines were delivered and held the whole file as a frame for the answer.
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, name: str) -> Path:
        return self._paths[name]
