"""A delivery's life before its import: which files form it (``grouping``), where deliveries come
from (``sources``), when its files are complete (``readiness``, with the sensor's ``cursor``),
which to import now (``discovery``) and the names it goes by (``keys``).

Engine code: no Dagster import. The Dagster sensor and schedules translate ``discover()``'s
result into run requests and nothing more.
"""

from cdp_pipeline.deliveries.cursor import SensorCursor, Sighting
from cdp_pipeline.deliveries.discovery import DeliveryRequest, Discovery, SourceScan, discover
from cdp_pipeline.deliveries.grouping import Delivery, DeliveryScan, ImportGoal, glob_escape, goal_claims, scan_deliveries
from cdp_pipeline.deliveries.keys import partition_key, partition_set_name, run_key, split_partition_key
from cdp_pipeline.deliveries.readiness import (
    ListedNow,
    MergedFiles,
    ReadinessPolicy,
    SightingsOnOurClock,
    SlicedListing,
    TwoListingsInTick,
)
from cdp_pipeline.deliveries.sources import (
    DeliverySource,
    GoalSource,
    LocalFile,
    MergeContext,
    MergeSteps,
    StagedDelivery,
    StagingInput,
)

__all__ = [
    "Delivery",
    "DeliveryRequest",
    "DeliveryScan",
    "DeliverySource",
    "Discovery",
    "GoalSource",
    "ImportGoal",
    "ListedNow",
    "LocalFile",
    "MergeContext",
    "MergeSteps",
    "MergedFiles",
    "ReadinessPolicy",
    "SensorCursor",
    "Sighting",
    "SightingsOnOurClock",
    "SlicedListing",
    "SourceScan",
    "StagedDelivery",
    "StagingInput",
    "TwoListingsInTick",
    "discover",
    "glob_escape",
    "goal_claims",
    "partition_key",
    "partition_set_name",
    "run_key",
    "scan_deliveries",
    "split_partition_key",
]
