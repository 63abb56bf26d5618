"""The import tables of one delivery, ready to merge: what ``import_tables`` produces and the
store consumes. Persisted as Parquet files plus a small JSON manifest so the Dagster steps hand
them over through the delivery's private work directory, not through pickled frames."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cdp_pipeline.errors import InputProblem


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
    #: the property identifiers link to ("profile_id", a unique property, or "group_id").
    identifier_property: str
    allow_create: bool
    #: property → merge rule, for the properties this delivery carries (absent ones stay untouched).
    rules: dict[str, str]
    #: one row per key: ``_key`` (identifier value), ``_line`` (last line of the key), one column per property.
    records: pl.DataFrame
    group_type: str | None = None
    #: event type → event_id, _key, event_time, properties
    events: dict[str, pl.DataFrame] = field(default_factory=dict)
    #: "event_type/nested_type" → event_id, item_index, properties
    items: dict[str, pl.DataFrame] = field(default_factory=dict)
    product_store: list[ProductStoreSource] = field(default_factory=list)
    rejects: list[InputProblem] = field(default_factory=list)
    rows_read: int = 0
    warnings: list[str] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.records.write_parquet(directory / "records.parquet")
        for name, frame in self.events.items():
            frame.write_parquet(directory / f"events__{name}.parquet")
        for name, frame in self.items.items():
            frame.write_parquet(directory / f"items__{name.replace('/', '__')}.parquet")
        manifest = {
            "target": self.target,
            "identifier_property": self.identifier_property,
            "allow_create": self.allow_create,
            "rules": self.rules,
            "group_type": self.group_type,
            "events": sorted(self.events),
            "items": sorted(self.items),
            "product_store": [vars(source) for source in self.product_store],
            "rejects": [vars(problem) for problem in self.rejects],
            "rows_read": self.rows_read,
            "warnings": self.warnings,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: Path) -> "StagedImport":
        manifest = json.loads((directory / "manifest.json").read_text())
        return cls(
            target=manifest["target"],
            identifier_property=manifest["identifier_property"],
            allow_create=manifest["allow_create"],
            rules=manifest["rules"],
            records=pl.read_parquet(directory / "records.parquet"),
            group_type=manifest["group_type"],
            events={name: pl.read_parquet(directory / f"events__{name}.parquet") for name in manifest["events"]},
            items={name: pl.read_parquet(directory / f"items__{name.replace('/', '__')}.parquet") for name in manifest["items"]},
            product_store=[ProductStoreSource(**source) for source in manifest["product_store"]],
            rejects=[InputProblem(**problem) for problem in manifest["rejects"]],
            rows_read=manifest["rows_read"],
            warnings=manifest["warnings"],
        )
