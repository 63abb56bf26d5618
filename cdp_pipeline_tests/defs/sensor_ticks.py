"""Evaluating a delivery sensor's tick in a test, the way the daemon would."""

from __future__ import annotations

import json

import dagster as dg

#: the demo delivery's partitions, in goal order
DEMO_DELIVERIES = ["households:households_20260115.csv", "customers:profiles_20260115.csv", "orders:orders_20260115.csv"]


def evaluate_tick(definitions: dg.Definitions, connection: str, cursor: str | None, instance: dg.DagsterInstance, partitions=()):
    """One tick of ``<connection>_deliveries``. The daemon applies a tick's partition additions
    before it checks the run requests; a test evaluating the tick alone adds them itself
    (as the daemon would), and outside the daemon Dagster checks partitioned run requests against
    the instance's partitions."""
    sensor = definitions.resolve_sensor_def(f"{connection}_deliveries")
    instance.add_dynamic_partitions(f"{connection}__deliveries", list(partitions))
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources=definitions.resources, definitions=definitions)
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return sensor.evaluate_tick(context)


def aged(cursor: str, seconds: float) -> str:
    """The cursor as if the previous tick happened ``seconds`` earlier (stability is measured on our clock)."""
    state = json.loads(cursor)
    for entry in state["seen"].values():
        entry[1] -= seconds
        if len(entry) > 3:
            entry[3] -= seconds
    return json.dumps(state)
