"""The names a delivery goes by outside the engine, defined once.

* partition key ``<goal>:<root file name>``: one partition per root file of a goal, so a new
  version of the same file is a new run of the same partition and its history stays together;
* run key ``<partition key>@<listing identity>``: a re-upload with changes (size, mtime, ETag)
  runs again, an unchanged file never does, whichever of sensor, schedule or "Run now" saw it;
* partition set ``<connection>__deliveries``: the dynamic partitions of a connection's deliveries.
"""

from __future__ import annotations


def partition_key(goal: str, root_name: str) -> str:
    return f"{goal}:{root_name}"


def split_partition_key(key: str) -> tuple[str, str]:
    """(goal name, root file name) of a partition key."""
    goal, _, root_name = key.partition(":")
    return goal, root_name


def run_key(partition_key: str, listing_identity: str) -> str:
    return f"{partition_key}@{listing_identity}"


def partition_set_name(connection: str) -> str:
    return f"{connection}__deliveries"
