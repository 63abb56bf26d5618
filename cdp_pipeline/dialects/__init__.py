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

from cdp_pipeline.config.connection import Connection
from cdp_pipeline.deliveries.sources import DeliverySource
from cdp_pipeline.dialects.netmera import NetmeraSettings, NetmeraSource, netmera_sources
from cdp_pipeline.dialects.sare import SareSettings, SareSource

Dialect = Annotated[SareSettings | NetmeraSettings, Field(discriminator="type")]


def dialect_sources(settings: SareSettings | NetmeraSettings) -> list[DeliverySource]:
    """The delivery sources a connection's ``dialect:`` settings stand for, in import order."""
    if isinstance(settings, SareSettings):
        return [SareSource(settings)]
    return list(netmera_sources(settings))


def sensor_interval_seconds(connection: Connection, dialect: SareSettings | NetmeraSettings | None) -> int:
    """How often the connection's sensor lists its folders. A value in the YAML always wins; without
    one a dialect's own documented interval applies (SARE: "Import jest uruchamiany co 5 minut"),
    else the sensor's default. Polling a SARE account every minute would be five times what its
    users expect from the product they know."""
    explicit = "minimum_interval_seconds" in connection.sensor.model_fields_set
    if not explicit and dialect is not None and dialect.default_poll_seconds is not None:
        return dialect.default_poll_seconds
    return connection.sensor.minimum_interval_seconds


__all__ = ["Dialect", "NetmeraSettings", "NetmeraSource", "SareSettings", "SareSource", "dialect_sources", "sensor_interval_seconds"]
