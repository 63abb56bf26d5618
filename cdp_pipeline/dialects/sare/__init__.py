"""SARE / Digitree SFTP drops: ``name.csv`` plus a ``name.import`` JSON sidecar, translated into the
same ProfileImportGoal, merge rules, ledger and store as every other delivery (no second pipeline).

Engine code: no Dagster import. The source is the seed ``004_*.txt`` (Digitree's Polish manual).

The package follows the pair's way through the pipeline: ``settings`` (the connection's side and
SARE's vocabulary), ``sidecar`` (parsing the ``.import`` file and the data file rules), ``scan``
(pairing a listing), ``goal`` (translating a sidecar into a goal and actions), ``staging``,
``store_actions`` and ``source`` (the ``DeliverySource`` the delivery flow calls).

The contract with the delivery flow (``cdp_pipeline.deliveries`` / ``importing.py``)
-----------------------------------------------------------------------------------

1. **Listing** (sensor and ``find_delivery``): ``scan_sare_deliveries(connection, listing, settings,
   is_ready, now)`` replaces ``scan_deliveries`` for a connection whose ``dialect.type`` is ``sare``.
   It returns the usual ``DeliveryScan``; each ``Delivery`` has two logical files, ``"data"`` (the
   root: ``name.csv``, or ``name.csv.gpg`` / ``name.csv.pgp``) and ``"sidecar"`` (``name.import``),
   so fetch → decrypt → ledger (both files' sha256 form the content identity) work unchanged.
   ``pair_files`` is the same as a plain ``(pairs, waiting, problems)`` tuple.
2. **Staging** (``stage_delivery``): instead of ``build_import_tables(connection goal ...)`` call
   ``stage_sare_pair(...)`` with the decrypted local paths of ``"sidecar"`` and ``"data"``. It
   parses and validates the sidecar, checks the file rules (UTF-8 without BOM, no NUL byte),
   reads the header, builds the goal with ``sare_goal`` and runs the ordinary
   ``build_import_tables`` on the data file only. It returns ``SareStaging(sidecar, goal,
   actions, staged)``; ``staged`` is ``None`` when the sidecar says ``"import": false`` (leave
   the pair where it is and report ``actions.skip_reason``).
3. **Merging** (``merge_staged``): in the writer connection, ``staged = resolve_duplicates(conn,
   staged, actions)``, then inside the delivery's transaction
   ``apply_store_actions(conn, catalog, actions, staged, phase="before", now=now)``,
   ``merge_delivery(...)``, ``apply_store_actions(..., phase="after", ...)``. The actions are
   set-based SQL and run in the caller's transaction (they never BEGIN/COMMIT themselves), so
   ``merge_delivery`` needs a before/after hook to keep "one delivery = one transaction".
4. **Finishing**: ``finish_remote_files`` with the generated goal (``goal.files.after_import`` is
   ``delete`` for ``autodelete: 1``, ``move_to_done`` into ``done/`` otherwise); both files of
   the pair move together because both are in the fetched manifest.
5. **Configuration**: ``Connection.dialect: cdp_pipeline.dialects.Dialect | None``. The import
   goal (``settings.goal_name``) is generated per pair, so it is not in ``connection.goals``:
   ``importing.source_for`` routes a partition ``<goal_name>:<name>.csv`` to ``SareSource``,
   ``goal_config_hash`` hashes the dialect settings instead of ``conn.goal(name)`` (the sidecar's
   bytes are already part of the content identity), and the sensor interval defaults to
   ``DEFAULT_POLL_SECONDS`` ("Import jest uruchamiany co 5 minut").

The ``overwrite`` parameter (SARE: "Nadpisywanie adresów", overwriting existing addresses)
------------------------------------------------------------------------------------------

"Data" = the columns of the file (after ``fields.map`` / ``fields.ignore``); "status" =
``dialect.status_property`` (the sidecar's ``status``); "type" = ``dialect.mail_type_property``
(the sidecar's ``mail_type``: SARE's "typ e-maila"). A new profile gets every value in every mode
(``set_if_empty`` on an empty profile is a write), so the modes differ only for existing profiles.

=====  ======================================  ============  ============  ============  ==========================
value  SARE (seed, translated)                 data          status        mail type     besides the merge
=====  ======================================  ============  ============  ============  ==========================
0      do not import                           –             –             –             nothing is written: no
                                                                                         mappings, no new profiles;
                                                                                         the file is still checked
                                                                                         and the pair finished
1      overwrite the status only               set_if_empty  set           set_if_empty  –
2      overwrite imported data only            set           set_if_empty  set_if_empty  –
3      overwrite all data (clear history)      set_or_clear  set           set           delete the profiles'
                                                                                         value history
                                                                                         (property_changes) and
                                                                                         their timeline events of
                                                                                         ``dialect.history_event_
                                                                                         types``
4      overwrite imported data, with type      set           set_if_empty  set           –
       change (default)
5      overwrite imported data, clear the      set           set_if_empty  set_if_empty  ``set_or_clear`` with an
       properties not imported                                                           empty value for every
                                                                                         profile property the file
                                                                                         does not import (not
                                                                                         identifiers, not the
                                                                                         sidecar's own; narrowed
                                                                                         by ``dialect.managed_
                                                                                         properties`` when set)
=====  ======================================  ============  ============  ============  ==========================

In every mode except 0 the group (when not 0) is ``add``-ed to ``dialect.groups_property`` and a
``consent`` with status 2 ("yes") is ``add``-ed to ``dialect.consent_property``; status 3 ("no")
removes it (an action after the merge: no merge rule removes a list item).
"""

from __future__ import annotations

from cdp_pipeline.dialects.sare.goal import (
    SCRIPT_OPERATIONS,
    SIDECAR_COLUMNS_FUNCTION,
    SareActions,
    SareScriptRecord,
    ScriptOperation,
    parse_sarescript,
    sare_goal,
    sidecar_columns,
)
from cdp_pipeline.dialects.sare.scan import (
    pair_files,
    scan_sare_deliveries,
    split_pair_name,
)
from cdp_pipeline.dialects.sare.settings import (
    BLOCKED_STATUS,
    CONSENT_MEANINGS,
    DATA,
    DEFAULT_POLL_SECONDS,
    ENCRYPTED_SUFFIXES,
    MAIL_TYPES,
    MAX_SIDECAR_BYTES,
    OVERWRITE_MEANINGS,
    OVERWRITE_RULES,
    PLAIN_SUFFIX,
    SIDECAR,
    SIDECAR_SUFFIX,
    STATUS_MEANINGS,
    SareSettings,
)
from cdp_pipeline.dialects.sare.sidecar import (
    SareConsent,
    SareCsv,
    SareFields,
    SareScripts,
    SareSidecar,
    check_data_file,
    pair_error,
    parse_sidecar,
    read_header,
)
from cdp_pipeline.dialects.sare.source import (
    SareSource,
    sare_listing_goal,
)
from cdp_pipeline.dialects.sare.staging import (
    SareStaging,
    check_encryption,
    drop_spamtraps,
    stage_sare_pair,
)
from cdp_pipeline.dialects.sare.store_actions import (
    apply_store_actions,
    drop_stored_spamtraps,
    resolve_duplicates,
)

__all__ = [
    "BLOCKED_STATUS",
    "CONSENT_MEANINGS",
    "DATA",
    "DEFAULT_POLL_SECONDS",
    "ENCRYPTED_SUFFIXES",
    "MAIL_TYPES",
    "MAX_SIDECAR_BYTES",
    "OVERWRITE_MEANINGS",
    "OVERWRITE_RULES",
    "PLAIN_SUFFIX",
    "SCRIPT_OPERATIONS",
    "SIDECAR",
    "SIDECAR_COLUMNS_FUNCTION",
    "SIDECAR_SUFFIX",
    "STATUS_MEANINGS",
    "SareActions",
    "SareConsent",
    "SareCsv",
    "SareFields",
    "SareScriptRecord",
    "SareScripts",
    "SareSettings",
    "SareSidecar",
    "SareSource",
    "SareStaging",
    "ScriptOperation",
    "apply_store_actions",
    "check_data_file",
    "check_encryption",
    "drop_spamtraps",
    "drop_stored_spamtraps",
    "pair_error",
    "pair_files",
    "parse_sarescript",
    "parse_sidecar",
    "read_header",
    "resolve_duplicates",
    "sare_goal",
    "sare_listing_goal",
    "scan_sare_deliveries",
    "sidecar_columns",
    "split_pair_name",
    "stage_sare_pair",
]
