"""Foreign file conventions, translated into the pipeline's own goal model (no second pipeline).

* ``sare``: SARE/Digitree SFTP drops, ``name.csv`` + ``name.import`` JSON sidecar.
* ``netmera``: Netmera FTP push files, ``Profile/*.txt`` attribute files, nightly report names.

A dialect is a ``DeliverySource`` (``cdp_pipeline.deliveries.sources``): it lists its files, turns
what arrives into a ``ProfileImportGoal`` per delivery and names its store steps around the
merge; the ordinary engine (``build_import_tables`` → ``merge_delivery`` → ledger) does the rest.
``Dialect`` is the type of a connection's ``dialect:`` key (discriminated by ``type``); see each
module's docstring and docs/dialects.md for the exact contract. A new dialect adds its settings
model to ``Dialect`` and its sources to ``dialect_sources``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cdp_pipeline.deliveries.sources import DeliverySource
from cdp_pipeline.dialects.netmera import NetmeraSettings, NetmeraSource, netmera_sources
from cdp_pipeline.dialects.sare import SareSettings, SareSource

Dialect = Annotated[SareSettings | NetmeraSettings, Field(discriminator="type")]


def dialect_sources(settings: SareSettings | NetmeraSettings) -> list[DeliverySource]:
    """The delivery sources a connection's ``dialect:`` settings stand for, in import order."""
    if isinstance(settings, SareSettings):
        return [SareSource(settings)]
    return list(netmera_sources(settings))


__all__ = ["Dialect", "NetmeraSettings", "NetmeraSource", "SareSettings", "SareSource", "dialect_sources"]
