"""Foreign file conventions, translated into the pipeline's own goal model (no second pipeline).

* ``sare``: SARE/Digitree SFTP drops, ``name.csv`` + ``name.import`` JSON sidecar.
* ``netmera``: Netmera FTP push files, ``Profile/*.txt`` attribute files, nightly report names.

A dialect turns what arrives into a ``ProfileImportGoal`` per delivery; the ordinary engine
(``build_import_tables`` → ``merge_delivery`` → ledger) does the rest. ``Dialect`` is the
proposed type of a ``dialect:`` key on ``Connection`` (discriminated by ``type``); see each
module's docstring and docs/dialects.md for the exact contract.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from cdp_pipeline.dialects.netmera import NetmeraSettings
from cdp_pipeline.dialects.sare import SareSettings

Dialect = Annotated[SareSettings | NetmeraSettings, Field(discriminator="type")]

__all__ = ["Dialect", "NetmeraSettings", "SareSettings"]
